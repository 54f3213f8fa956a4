//! HttpGet: fetches a URL through `wasi:http` and hands the model the status,
//! the interesting headers and the start of the body.
//!
//! Every request, including each redirect it follows, is checked by the
//! host against the origins the plugin declared and the pod granted; a
//! refused one comes back as `http-request-denied`, which this tool reports
//! as a permission error naming the URL.

use serde::Deserialize;
use wstd::http::BodyExt;
use wstd::http::{Client, ErrorCode, Request, Response, Uri};
use yoi_plugin_sdk::{Guest, ToolError, ToolInfo, ToolOutput, parse_input, tool_info};

/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 5;
/// Body bytes kept by default, and at most.
const DEFAULT_MAX_BYTES: usize = 64 * 1024;
const LIMIT_MAX_BYTES: usize = 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    url: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    max_bytes: Option<usize>,
    #[serde(default = "yes")]
    follow_redirects: bool,
}

fn yes() -> bool {
    true
}

struct HttpGet;

impl Guest for HttpGet {
    fn describe() -> Vec<ToolInfo> {
        vec![tool_info(
            "HttpGet",
            "Fetches a URL with GET and returns the status, content type and the start of the body as text. \
             Follows up to 5 redirects. Only origins the operator granted to this pod can be reached.",
            serde_json::json!({
                "type": "object",
                "properties": {
                    "url": {"type": "string", "description": "Absolute http:// or https:// URL"},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"},
                                "description": "Extra request headers"},
                    "max_bytes": {"type": "integer", "minimum": 1, "maximum": LIMIT_MAX_BYTES,
                                  "description": "Body bytes to return (default 65536)"},
                    "follow_redirects": {"type": "boolean", "description": "Default true"}
                },
                "required": ["url"],
                "additionalProperties": false
            }),
        )]
    }

    fn call(tool: String, input: String) -> Result<ToolOutput, ToolError> {
        if tool != "HttpGet" {
            return Err(ToolError::InvalidInput(format!("this plugin has no tool `{tool}`")));
        }
        let input: Input = parse_input(&input)?;
        let max_bytes = input.max_bytes.unwrap_or(DEFAULT_MAX_BYTES).clamp(1, LIMIT_MAX_BYTES);
        wstd::runtime::block_on(fetch(input, max_bytes))
    }
}

async fn fetch(input: Input, max_bytes: usize) -> Result<ToolOutput, ToolError> {
    let mut url = parse_url(&input.url)?;
    let mut chain = Vec::new();
    let response = loop {
        let response = send(&url, &input.headers).await?;
        let location = response.headers().get("location").and_then(|v| v.to_str().ok());
        match location {
            Some(location) if input.follow_redirects && response.status().is_redirection() => {
                if chain.len() == MAX_REDIRECTS {
                    return Err(ToolError::Failed(format!("more than {MAX_REDIRECTS} redirects, last to {location}")));
                }
                let next = resolve(&url, location)?;
                chain.push(format!("{} {url} -> {next}", response.status().as_u16()));
                url = next;
            }
            _ => break response,
        }
    };
    let status = response.status();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("unknown type").to_string();
    let (body, complete) = read_body(response, max_bytes).await?;
    let text = String::from_utf8_lossy(&body);
    let kept = if complete { format!("{} bytes", body.len()) } else { format!("first {} bytes", body.len()) };
    let summary = format!("GET {url}: {status}, {kept}, {content_type}");
    let mut content = String::new();
    for hop in &chain {
        content.push_str(&format!("redirect: {hop}\n"));
    }
    content.push_str(&format!("status: {status}\ncontent-type: {content_type}\n\n{text}"));
    if !complete {
        content.push_str(&format!("\n[body cut at {} bytes]", body.len()));
    }
    Ok(ToolOutput { summary, content: Some(content) })
}

fn parse_url(text: &str) -> Result<Uri, ToolError> {
    let url: Uri = text.parse().map_err(|e| ToolError::InvalidInput(format!("{text:?} is not a URL: {e}")))?;
    match (url.scheme_str(), url.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(url),
        _ => Err(ToolError::InvalidInput(format!("{text:?} is not an absolute http:// or https:// URL"))),
    }
}

/// Resolves a `Location` header against the URL that returned it.
fn resolve(base: &Uri, location: &str) -> Result<Uri, ToolError> {
    if location.contains("://") {
        return parse_url(location);
    }
    let origin = format!("{}://{}", base.scheme_str().unwrap_or("https"), base.authority().unwrap());
    let path = if location.starts_with('/') {
        location.to_string()
    } else {
        let dir = base.path().rsplit_once('/').map(|(dir, _)| dir).unwrap_or("");
        format!("{dir}/{location}")
    };
    parse_url(&format!("{origin}{path}"))
}

async fn send(
    url: &Uri,
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<Response<wstd::http::Body>, ToolError> {
    let mut request = Request::get(url.clone()).header("user-agent", "yoi-http-get/0.1");
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    // An empty body that writes nothing: a zero-length write into a request
    // body the server has stopped reading would fail.
    let body = wstd::http::Body::from_http_body(http_body_util::Empty::<bytes::Bytes>::new());
    let request = request.body(body).map_err(|e| ToolError::InvalidInput(format!("bad header: {e}")))?;
    Client::new().send(request).await.map_err(|e| match e.downcast_ref::<ErrorCode>() {
        Some(ErrorCode::HttpRequestDenied) => ToolError::PermissionDenied(format!(
            "the host refused a request to {url}: this pod has not granted that origin to the plugin \
             (see [[plugins.grant]] `http` in the pod manifest)"
        )),
        Some(code) => ToolError::Failed(format!("GET {url} failed: {code:?}")),
        None => ToolError::Failed(format!("GET {url} failed: {e:#}")),
    })
}

/// Reads at most `max` bytes of the body; `true` when that was all of it.
async fn read_body(response: Response<wstd::http::Body>, max: usize) -> Result<(Vec<u8>, bool), ToolError> {
    let mut body = response.into_body().into_boxed_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ToolError::Failed(format!("reading the body failed: {e:#}")))?;
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
            if bytes.len() > max {
                bytes.truncate(max);
                return Ok((bytes, false));
            }
        }
    }
    Ok((bytes, true))
}

yoi_plugin_sdk::export_plugin!(HttpGet);
