//! The HTTP API (axum): routes, authentication, and the handlers of the
//! tenant and admin endpoints. docs/api.md is the reference.
//!
//! Every tenant endpoint looks things up by (tenant, name): another
//! tenant's pod, file, plugin or secret is `404`, exactly as one that does
//! not exist.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::Server;
use super::error::ApiError;
use super::files;
use super::tenant::Tenant;
use super::tenants::Caller;
use crate::pod::{Answer, EventId, PodError, PodHandle, Stamped};
use crate::protocol::{ErrorCode, Method};

/// Largest body of the endpoints that take JSON (or a manifest).
const MAX_JSON_BODY: usize = 1 << 20;

/// The API's routes on `server`.
pub fn router(server: Arc<Server>) -> Router {
    let max_body = usize::try_from(server.config.http.max_body_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    let timeout = Duration::from_secs(server.config.http.request_timeout_s);
    // Event streams last as long as the client wants; everything else is
    // bounded in time.
    let bounded = Router::new()
        .route("/v1/pods", get(list_pods))
        .route("/v1/pods/{name}", put(create_pod).get(show_pod).delete(delete_pod))
        .route("/v1/pods/{name}/messages", post(send_message))
        .route("/v1/pods/{name}/cancel", post(cancel))
        .route("/v1/pods/{name}/resume", post(resume))
        .route("/v1/pods/{name}/notify", post(notify))
        .route("/v1/pods/{name}/history", get(history))
        .route("/v1/pods/{name}/tools/{tool}", post(call_tool))
        .route("/v1/files", get(get_root))
        .route("/v1/files/", get(get_root))
        .route("/v1/plugins", get(list_plugins))
        .route("/v1/secrets", get(list_secrets))
        .route("/v1/secrets/{name}", put(put_secret).delete(delete_secret))
        .route("/v1/admin/tenants", get(admin_list).post(admin_add))
        .route("/v1/admin/tenants/{name}", get(admin_show).delete(admin_remove))
        .route("/v1/admin/tenants/{name}/token", post(admin_rotate))
        .route("/v1/admin/tenants/{name}/quotas", axum::routing::patch(admin_quotas))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/usage", get(usage))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_JSON_BODY));
    // Files and plugins may be large: they take bodies up to `max_body_mb`.
    let uploads = Router::new()
        .route("/v1/files/{*path}", put(put_file).get(get_file).delete(delete_file))
        .route("/v1/plugins/{name}", put(put_plugin).get(show_plugin).delete(delete_plugin))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body));
    Router::new()
        .route("/v1/pods/{name}/events", get(events))
        .merge(
            bounded
                .merge(uploads)
                .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout)),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        // Outside the limits, so that their answers get the JSON shape too.
        .layer(axum::middleware::map_response(json_errors))
        // MCP answers in its own shapes (JSON-RPC errors, SSE streams of any
        // length) and bounds its own bodies.
        .route("/v1/pods/{name}/mcp", axum::routing::any(mcp))
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(|request: &axum::extract::Request| {
            // The tenant is filled in once its token is checked.
            tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), tenant = tracing::field::Empty)
        }))
        .with_state(server)
}

/// Errors made outside the handlers (a body over the limit, a timeout, a
/// wrong method, a path or query that does not parse) come as plain text;
/// they get the API's one error shape too, with their text as the message.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "invalid_request",
    };
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
    let message = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_lowercase(),
        text => text.to_string(),
    };
    ApiError::new(status, code, message).into_response()
}

async fn healthz(State(server): State<Arc<Server>>) -> Json<Value> {
    Json(json!({"status": "ok", "tenants": server.live_tenants(), "pods": server.live_pods()}))
}

async fn metrics(State(server): State<Arc<Server>>, _: AdminCall) -> Response {
    metrics_text(&server)
}

/// The metrics in Prometheus' text format.
pub fn metrics_text(server: &Server) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], server.pods.metrics.encode()).into_response()
}

/// What the tenant used in the current quota windows: today (UTC) per pod
/// and in total, and the current minute's tool CPU.
async fn usage(State(server): State<Arc<Server>>, TenantCall(tenant): TenantCall) -> Json<Value> {
    let (day, total, pods) = tenant.usage.today();
    let (minute, cpu_ms) = tenant.usage.this_minute();
    let quotas = tenant.quotas(&server.config.quotas);
    let workspace = tenant.workspace_used(&server.config.quotas).await;
    Json(json!({
        "day": day,
        "total": total,
        "pods": pods,
        "minute": {"start": minute, "tool_cpu_ms": cpu_ms},
        "workspace_bytes": workspace,
        "quotas": quotas,
    }))
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A request from a tenant with a valid token, within its request rate.
struct TenantCall(Arc<Tenant>);

impl FromRequestParts<Arc<Server>> for TenantCall {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, server: &Arc<Server>) -> Result<TenantCall, ApiError> {
        let Some(Caller::Tenant(record)) = bearer(parts).and_then(|t| server.registry.authenticate(t)) else {
            return Err(ApiError::unauthorized());
        };
        tracing::Span::current().record("tenant", record.name.as_str());
        let tenant = server.tenant(record).await?;
        let quotas = tenant.quotas(&server.config.quotas);
        if let Err(wait) = tenant.limiter.take(quotas.requests_per_second) {
            let message = format!("more than {} requests per second", quotas.requests_per_second);
            return Err(ApiError::quota("requests_per_second", message, Some(wait)));
        }
        Ok(TenantCall(tenant))
    }
}

/// A request with the admin token.
struct AdminCall;

impl FromRequestParts<Arc<Server>> for AdminCall {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, server: &Arc<Server>) -> Result<AdminCall, ApiError> {
        match bearer(parts).and_then(|t| server.registry.authenticate(t)) {
            Some(Caller::Admin) => Ok(AdminCall),
            _ => Err(ApiError::unauthorized()),
        }
    }
}

fn pod_of(tenant: &Tenant, name: &str) -> Result<PodHandle, ApiError> {
    tenant.pod(name).ok_or_else(|| ApiError::not_found("pod", name))
}

fn pod_json(pod: &PodHandle) -> Value {
    json!({"name": pod.name, "id": pod.id.as_str(), "state": pod.lifecycle().as_str()})
}

async fn list_pods(TenantCall(tenant): TenantCall) -> Json<Value> {
    let pods: Vec<Value> = tenant.pods().iter().map(pod_json).collect();
    Json(json!({ "pods": pods }))
}

async fn create_pod(
    State(server): State<Arc<Server>>,
    TenantCall(tenant): TenantCall,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let pod = tenant.create_pod(&server.pods, &name, &body, json).await?;
    let greeting = greeting_of(&pod).await?;
    Ok((StatusCode::CREATED, Json(json!({"pod": pod_json(&pod), "greeting": greeting}))).into_response())
}

async fn greeting_of(pod: &PodHandle) -> Result<Value, ApiError> {
    match pod.request(Method::GetHistory {}).await.map_err(stopped)? {
        Answer::History { greeting, .. } => Ok(serde_json::to_value(greeting).unwrap_or_default()),
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

async fn show_pod(TenantCall(tenant): TenantCall, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let pod = pod_of(&tenant, &name)?;
    Ok(Json(json!({"pod": pod_json(&pod), "greeting": greeting_of(&pod).await?})))
}

async fn delete_pod(TenantCall(tenant): TenantCall, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    match tenant.delete_pod(&name).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::not_found("pod", &name)),
    }
}

fn stopped(e: PodError) -> ApiError {
    ApiError::conflict("pod_stopped", e.to_string())
}

/// The controller's answer as an HTTP answer.
fn answer(answer: Answer) -> Result<Response, ApiError> {
    match answer {
        Answer::Accepted => Ok((StatusCode::ACCEPTED, Json(json!({"accepted": true}))).into_response()),
        Answer::History { items, greeting } => Ok(Json(json!({"items": items, "greeting": greeting})).into_response()),
        Answer::Refused { code, message } => {
            let code_text = match code {
                ErrorCode::AlreadyRunning => "already_running",
                ErrorCode::NotRunning => "not_running",
                ErrorCode::NotPaused => "not_paused",
                ErrorCode::ProviderError => "no_provider",
                ErrorCode::InvalidRequest => "invalid_request",
                _ => "refused",
            };
            Err(ApiError::conflict(code_text, message))
        }
    }
}

async fn ask(tenant: &Tenant, name: &str, method: Method) -> Result<Response, ApiError> {
    let pod = pod_of(tenant, name)?;
    answer(pod.request(method).await.map_err(stopped)?)
}

/// The JSON body of a request, with a clear error when it is not.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("the body is not what this endpoint takes: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    input: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Note {
    message: String,
}

async fn send_message(
    TenantCall(tenant): TenantCall,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Input { input } = json_body(&body)?;
    ask(&tenant, &name, Method::Run { input }).await
}

async fn cancel(TenantCall(tenant): TenantCall, Path(name): Path<String>) -> Result<Response, ApiError> {
    ask(&tenant, &name, Method::Cancel {}).await
}

async fn resume(TenantCall(tenant): TenantCall, Path(name): Path<String>) -> Result<Response, ApiError> {
    ask(&tenant, &name, Method::Resume {}).await
}

async fn notify(TenantCall(tenant): TenantCall, Path(name): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let Note { message } = json_body(&body)?;
    ask(&tenant, &name, Method::Notify { message }).await
}

async fn history(TenantCall(tenant): TenantCall, Path(name): Path<String>) -> Result<Response, ApiError> {
    ask(&tenant, &name, Method::GetHistory {}).await
}

async fn call_tool(
    TenantCall(tenant): TenantCall,
    Path((name, tool)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let pod = pod_of(&tenant, &name)?;
    let input =
        std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("invalid_body", "the input is not UTF-8"))?;
    match serde_json::from_str::<Value>(input) {
        Ok(v) if v.is_object() => {}
        _ => return Err(ApiError::bad_request("invalid_body", "the input must be a JSON object")),
    }
    match pod.call_tool(&tool, input).await {
        Ok(output) => Ok(Json(json!({ "ok": output })).into_response()),
        // A quota's refusal is the API's too: 429 with Retry-After.
        Err(error) if error.kind == crate::plugin::ToolErrorKind::QuotaExceeded => Err(ApiError {
            retry_after: error.retry_after_ms.map(Duration::from_millis),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", error.message)
        }),
        Err(error) => Ok(Json(json!({ "error": error })).into_response()),
    }
}

/// A pod's MCP endpoint: its tools and `ask_pod` over Streamable HTTP, in
/// both protocol eras (docs/mcp.md).
async fn mcp(
    State(server): State<Arc<Server>>,
    TenantCall(tenant): TenantCall,
    Path(name): Path<String>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let pod = pod_of(&tenant, &name)?;
    let body_timeout = Duration::from_secs(server.config.http.request_timeout_s);
    Ok(tenant.mcp.handle(&server.config.mcp, &pod, request, body_timeout).await.map(Body::new))
}

/// The event stream of a pod, as Server-Sent Events. Each event's id
/// places it in the pod's session log; a client that reconnects with
/// `Last-Event-ID` gets what it missed: from the pod's replay buffer when
/// the gap is short, else the durable events from the session log, then
/// the live stream without repeats.
async fn events(
    State(server): State<Arc<Server>>,
    TenantCall(tenant): TenantCall,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let pod = pod_of(&tenant, &name)?;
    let last = match headers.get("last-event-id").map(|v| v.to_str().unwrap_or_default()) {
        None => None,
        Some(text) => Some(text.parse::<EventId>().map_err(|e| ApiError::bad_request("invalid_event_id", e))?),
    };
    let (replay, live, after) = match &last {
        None => (Vec::new(), pod.subscribe(), None),
        Some(last) => {
            let resumed = pod.resume_events(last);
            if resumed.complete {
                (resumed.missed, resumed.live, None)
            } else {
                let view = pod.clone();
                let from = last.clone();
                let logged = tokio::task::spawn_blocking(move || view.events_in_log_after(Some(&from)))
                    .await
                    .map_err(|e| ApiError::internal(e.to_string()))??;
                // Live events already covered by the log are skipped.
                let after = logged.last().map(|e| e.id.clone()).or(Some(last.clone()));
                (logged, resumed.live, after)
            }
        }
    };
    let replayed = futures::stream::iter(replay);
    // A client that fell behind gets a `slow_client` notice and the stream
    // ends: it reconnects with its last id and misses nothing.
    let live = futures::stream::unfold((Some(live), after), |(live, after)| async move {
        let mut live = live?;
        loop {
            match live.recv().await {
                Ok(event) => {
                    if let Some(after) = &after
                        && event.id.session == after.session
                        && !event.id.after(after.line, after.seq)
                    {
                        continue;
                    }
                    return Some((Ok(event), (Some(live), after)));
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Some((Err(missed), (None, after)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let stopping = server.stopping.clone().cancelled_owned();
    let stream = replayed.map(Ok).chain(live).take_until(stopping).map(|event: Result<Stamped, u64>| {
        Ok(match event {
            Ok(event) => SseEvent::default().id(event.id.to_string()).data(event.event.to_line()),
            Err(missed) => {
                // The client fell behind: it reconnects with its last id.
                let notice = crate::protocol::error(
                    ErrorCode::SlowClient,
                    format!("this client fell {missed} events behind; reconnect with Last-Event-ID"),
                    None,
                );
                SseEvent::default().data(notice.to_line())
            }
        })
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

async fn get_root(state: State<Arc<Server>>, tenant: TenantCall) -> Result<Response, ApiError> {
    get_file(state, tenant, Path(String::new())).await
}

async fn get_file(
    State(server): State<Arc<Server>>,
    TenantCall(tenant): TenantCall,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let path = files::workspace_path(&path)?;
    let root = tenant.workspace();
    let max = server.config.http.max_body_mb.saturating_mul(1 << 20);
    let found = tokio::task::spawn_blocking(move || files::get(&files::open_workspace(&root)?, &path, max))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(match found {
        files::Found::File(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        files::Found::Dir(entries) => Json(json!({ "entries": entries })).into_response(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutQuery {
    /// `tar`: the body is an archive to extract into the path.
    extract: Option<String>,
}

async fn put_file(
    State(server): State<Arc<Server>>,
    TenantCall(tenant): TenantCall,
    Path(path): Path<String>,
    Query(query): Query<PutQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let path = files::workspace_path(&path)?;
    match query.extract.as_deref() {
        None => {}
        Some("tar") => return extract(&server, &tenant, path, body).await,
        Some(other) => {
            return Err(ApiError::bad_request("invalid_query", format!("extract={other:?}: only `tar` is known")));
        }
    }
    let workspace = files::open_workspace(&tenant.workspace())?;
    let _writing = tenant.uploads.lock().await;
    let quota = tenant.quotas(&server.config.quotas).workspace_bytes();
    let used = tenant.workspace_used(&server.config.quotas).await;
    let (written, old) = files::put(&workspace, &path, body, quota.saturating_sub(used)).await?;
    tenant.charge_workspace(written, old, &server.config.quotas);
    Ok((StatusCode::CREATED, Json(json!({"path": path, "size": written}))).into_response())
}

/// Extracts a tar archive into `target`, a directory that must not exist
/// yet (or be empty): the archive is unpacked beside the workspace first and
/// moved into place whole, so a refused archive leaves nothing behind.
async fn extract(
    server: &Server,
    tenant: &Arc<Tenant>,
    target: std::path::PathBuf,
    body: Body,
) -> Result<Response, ApiError> {
    use tokio_util::io::{StreamReader, SyncIoBridge};
    if target.as_os_str().is_empty() {
        return Err(ApiError::bad_request("invalid_path", "extract into a directory of the workspace, not its root"));
    }
    let _writing = tenant.uploads.lock().await;
    let quota = tenant.quotas(&server.config.quotas).workspace_bytes();
    let budget = quota.saturating_sub(tenant.workspace_used(&server.config.quotas).await);
    let staging_root = tenant.dir().join("staging");
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&staging_root)
        .map_err(|e| ApiError::internal(format!("cannot stage: {e}")))?;
    let staging = files::open_workspace(&staging_root)?;
    let workspace = files::open_workspace(&tenant.workspace())?;
    let staged = format!("extract-{:016x}", fastrand::u64(..));
    let stream = body.into_data_stream().map(|chunk| chunk.map_err(std::io::Error::other));
    let mut reader = SyncIoBridge::new(StreamReader::new(stream));
    let name = staged.clone();
    let usage = tenant.usage.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        // Runs to its end even if the client goes away: it cleans up itself,
        // and has the workspace measured again.
        usage.workspace_stale.store(true, std::sync::atomic::Ordering::Relaxed);
        let extracted = files::extract_tar(&staging, &name, &mut reader, budget);
        // What a refused archive has left unread is read and dropped, so
        // that the client, still sending, gets the answer.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
        let placed = extracted.and_then(|extracted| {
            if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
                workspace
                    .create_dir_all(parent)
                    .map_err(|e| ApiError::conflict("cannot_extract", format!("{}: {e}", target.display())))?;
            }
            staging.rename(&name, &workspace, &target).map_err(|e| {
                let shown = target.display();
                ApiError::conflict(
                    "target_exists",
                    format!("{shown}: the target must be a new or empty directory ({e})"),
                )
            })?;
            Ok(extracted)
        });
        // Whatever is left of a refused archive goes.
        if placed.is_err() {
            let _ = staging.remove_dir_all(&name);
        }
        placed
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let extracted = outcome?;
    tenant.charge_workspace(extracted.bytes, 0, &server.config.quotas);
    Ok((StatusCode::CREATED, Json(json!(extracted))).into_response())
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    recursive: bool,
}

async fn delete_file(
    State(server): State<Arc<Server>>,
    TenantCall(tenant): TenantCall,
    Path(path): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let path = files::workspace_path(&path)?;
    let root = tenant.workspace();
    let freed =
        tokio::task::spawn_blocking(move || files::delete(&files::open_workspace(&root)?, &path, query.recursive))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
    tenant.charge_workspace(0, freed, &server.config.quotas);
    Ok(StatusCode::NO_CONTENT)
}

async fn list_plugins(TenantCall(tenant): TenantCall) -> Json<Value> {
    let set = tenant.plugins();
    let plugins: Vec<Value> = set.plugins().iter().map(|p| super::plugins::describe(&set, p.name())).collect();
    Json(json!({ "plugins": plugins }))
}

async fn show_plugin(TenantCall(tenant): TenantCall, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    match super::plugins::describe(&tenant.plugins(), &name) {
        Value::Null => Err(ApiError::not_found("plugin", &name)),
        found => Ok(Json(found)),
    }
}

/// Uploads a plugin: either `multipart/form-data` with a `component` part
/// (the `.wasm`) and an optional `capabilities` part (its TOML), or the
/// component alone as the body.
async fn put_plugin(
    State(server): State<Arc<Server>>,
    TenantCall(tenant): TenantCall,
    Path(name): Path<String>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    use axum::extract::FromRequest;
    super::plugins::validate_name(&name)?;
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let (component, capabilities) = if multipart {
        let mut form = axum::extract::Multipart::from_request(request, &server)
            .await
            .map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))?;
        let (mut component, mut capabilities) = (None, None);
        while let Some(field) =
            form.next_field().await.map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))?
        {
            let part = field.name().unwrap_or_default().to_string();
            let bytes = field.bytes().await.map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))?;
            match part.as_str() {
                "component" => component = Some(bytes.to_vec()),
                "capabilities" => {
                    let text = String::from_utf8(bytes.to_vec())
                        .map_err(|_| ApiError::bad_request("invalid_body", "the capabilities part is not UTF-8"))?;
                    capabilities = Some(text);
                }
                other => {
                    return Err(ApiError::bad_request(
                        "invalid_body",
                        format!("unknown part {other:?} (send `component` and `capabilities`)"),
                    ));
                }
            }
        }
        (
            component.ok_or_else(|| ApiError::bad_request("invalid_body", "the `component` part is missing"))?,
            capabilities,
        )
    } else {
        let bytes = Bytes::from_request(request, &server)
            .await
            .map_err(|e| ApiError::bad_request("invalid_body", e.body_text()))?;
        (bytes.to_vec(), None)
    };
    let _changing = tenant.plugin_changes.lock().await;
    let quotas = tenant.quotas(&server.config.quotas);
    let plugin =
        super::plugins::install(&tenant, &server.pods.runtime, &quotas, &name, component, capabilities).await?;
    Ok((StatusCode::CREATED, Json(plugin)).into_response())
}

async fn delete_plugin(
    State(server): State<Arc<Server>>,
    TenantCall(tenant): TenantCall,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let _changing = tenant.plugin_changes.lock().await;
    match super::plugins::remove(&tenant, &server.pods.runtime, &name).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::not_found("plugin", &name)),
    }
}

async fn list_secrets(TenantCall(tenant): TenantCall) -> Json<Value> {
    let names: Vec<String> = tenant.secrets().read().keys().cloned().collect();
    Json(json!({ "secrets": names }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretValue {
    value: String,
}

async fn put_secret(
    TenantCall(tenant): TenantCall,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    super::secrets::validate_name(&name).map_err(|e| ApiError::bad_request("invalid_name", e))?;
    let SecretValue { value } = json_body(&body)?;
    if value.len() > super::secrets::MAX_SECRET_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a secret holds at most {} bytes", super::secrets::MAX_SECRET_BYTES),
        ));
    }
    let _changing = tenant.secret_changes.lock().await;
    let mut secrets = tenant.secrets().read().clone();
    if !secrets.contains_key(&name) && secrets.len() >= super::secrets::MAX_SECRETS {
        let message = format!("a tenant keeps at most {} secrets", super::secrets::MAX_SECRETS);
        return Err(ApiError::conflict("too_many_secrets", message));
    }
    secrets.insert(name, value);
    super::secrets::write(tenant.dir(), &secrets)?;
    *tenant.secrets().write() = secrets;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_secret(TenantCall(tenant): TenantCall, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    let _changing = tenant.secret_changes.lock().await;
    let mut secrets = tenant.secrets().read().clone();
    if secrets.remove(&name).is_none() {
        return Err(ApiError::not_found("secret", &name));
    }
    super::secrets::write(tenant.dir(), &secrets)?;
    *tenant.secrets().write() = secrets;
    Ok(StatusCode::NO_CONTENT)
}

fn tenant_json(server: &Server, record: &super::tenants::TenantRecord) -> Value {
    let quotas = server.config.quotas.with(&record.quotas);
    json!({"name": record.name, "created": record.created, "quotas": quotas, "overrides": record.quotas})
}

async fn admin_list(State(server): State<Arc<Server>>, _: AdminCall) -> Json<Value> {
    let tenants: Vec<Value> = server.registry.tenants().iter().map(|r| tenant_json(&server, r)).collect();
    Json(json!({ "tenants": tenants }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
    #[serde(default)]
    quotas: std::collections::BTreeMap<String, u64>,
}

fn overrides(values: &std::collections::BTreeMap<String, u64>) -> Result<super::quota::Overrides, ApiError> {
    let mut overrides = super::quota::Overrides::default();
    for (key, value) in values {
        overrides.insert(key, *value).map_err(|e| ApiError::bad_request("invalid_quota", format!("{e:#}")))?;
    }
    Ok(overrides)
}

async fn admin_add(State(server): State<Arc<Server>>, _: AdminCall, body: Bytes) -> Result<Response, ApiError> {
    let NewTenant { name, quotas } = json_body(&body)?;
    super::tenants::validate_tenant_name(&name).map_err(|e| ApiError::bad_request("invalid_name", format!("{e:#}")))?;
    let overrides = overrides(&quotas)?;
    let store = server.registry.store().clone();
    let token = tokio::task::spawn_blocking(move || store.add(&name, overrides))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::conflict("cannot_add", format!("{e:#}")))?;
    Ok((StatusCode::CREATED, Json(json!({ "token": token }))).into_response())
}

async fn admin_show(
    State(server): State<Arc<Server>>,
    _: AdminCall,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = server.registry.tenant(&name).ok_or_else(|| ApiError::not_found("tenant", &name))?;
    Ok(Json(tenant_json(&server, &record)))
}

async fn admin_remove(
    State(server): State<Arc<Server>>,
    _: AdminCall,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    server.registry.tenant(&name).ok_or_else(|| ApiError::not_found("tenant", &name))?;
    server.forget_tenant(&name).await;
    let store = server.registry.store().clone();
    tokio::task::spawn_blocking(move || store.remove(&name)).await.map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}

async fn admin_rotate(
    State(server): State<Arc<Server>>,
    _: AdminCall,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    server.registry.tenant(&name).ok_or_else(|| ApiError::not_found("tenant", &name))?;
    let store = server.registry.store().clone();
    let token = tokio::task::spawn_blocking(move || store.rotate(&name))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(json!({ "token": token })))
}

async fn admin_quotas(
    State(server): State<Arc<Server>>,
    _: AdminCall,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    server.registry.tenant(&name).ok_or_else(|| ApiError::not_found("tenant", &name))?;
    let values: std::collections::BTreeMap<String, u64> = json_body(&body)?;
    let assignments: Vec<String> = overrides(&values)?.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let store = server.registry.store().clone();
    let target = name.clone();
    tokio::task::spawn_blocking(move || store.set_quotas(&target, &assignments))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    let record = server.registry.tenant(&name).ok_or_else(|| ApiError::not_found("tenant", &name))?;
    Ok(Json(tenant_json(&server, &record)))
}
