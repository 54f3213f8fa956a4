//! MCP as a service: `yoi-host mcp` on stdio and the pods' endpoints of a
//! real `yoi-host serve` process, driven by the official Python SDK's
//! client (`tests/mcp/client.py`) in both protocol eras, and by the
//! official conformance suite. The clients are installed by
//! `scripts/mcp-clients` (pinned in tests/mcp/toolchain).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use reqwest::StatusCode;
use serde_json::{Value, json};

use common::api::{Api, tenant_add, upload_plugin};
use common::builds::repo;
use common::server_process::{BIN, ServerProcess as Server, write_config};

/// The MCP clients' directories, installed once per test process.
fn clients() -> &'static [PathBuf] {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let out = Command::new(repo().join("scripts/mcp-clients")).output().unwrap();
        assert!(out.status.success(), "installing the MCP clients failed: {}", String::from_utf8_lossy(&out.stderr));
        std::str::from_utf8(&out.stdout).unwrap().lines().map(PathBuf::from).collect()
    })
}

/// PATH with the MCP clients in front.
fn clients_path() -> String {
    let dirs: Vec<String> = clients().iter().map(|d| d.display().to_string()).collect();
    format!("{}:{}", dirs.join(":"), std::env::var("PATH").unwrap_or_default())
}

/// Runs `tests/mcp/client.py ARGS` and checks it passed every check.
fn python_client(args: &[&str], env: &[(&str, &Path)]) -> String {
    let python = clients()[0].join("python");
    let mut command = Command::new(python);
    command.arg(repo().join("tests/mcp/client.py")).args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the MCP client failed with {}:\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The scripted model of every fixture pod: a first run reads and
/// answers; a second one writes (a `pause_before` tool) and answers; a
/// third takes a minute (to be cancelled), and a fourth answers at once.
const SCRIPT: &str = r#"{"turns": [
  {"text": "Let me read the file.\n", "tool_calls": [{"name": "Read", "arguments": {"file_path": "${cwd}/hello.txt"}}]},
  {"text": "It says hello from the project."},
  {"tool_calls": [{"name": "Write", "arguments": {"file_path": "${cwd}/note.txt", "content": "note"}}]},
  {"text": "The note is written."},
  {"delay_ms": 60000, "text": "Too late."},
  {"text": "Back again."}
]}"#;

/// The manifest of a fixture pod: `project` in scope (`permission`),
/// Write only with the user's approval, one call at a time.
fn manifest(name: &str, permission: &str) -> String {
    format!(
        "[pod]\nname = \"{name}\"\n\n[provider]\nkind = \"scripted\"\nmodel = \"script\"\nscript = \"script.json\"\n\n\
         [agent]\npause_before = [\"Write\"]\n\n[limits]\ntool_timeout_ms = 3000\ntool_memory_mb = 64\n\
         concurrent_tool_calls = 1\n\n[[scope.allow]]\ntarget = \"project\"\npermission = \"{permission}\"\n"
    )
}

/// A directory with `project/hello.txt` (the scope), `elsewhere/secret.txt`
/// (outside it), the script and the manifest, in canonical form.
fn fixture(name: &str, permission: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    std::fs::create_dir_all(dir.join("project")).unwrap();
    std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
    std::fs::write(dir.join("project/hello.txt"), "hello from the project\n").unwrap();
    std::fs::write(dir.join("elsewhere/secret.txt"), "top secret\n").unwrap();
    std::fs::write(dir.join("script.json"), SCRIPT).unwrap();
    std::fs::write(dir.join("pod.toml"), manifest(name, permission)).unwrap();
    (tmp, dir)
}

const ALL_CHECKS: &str = "list,call,refusal,errors,timeout,cancel,ask,approve,ask_approve,ask_cancel";

/// Every check over stdio, in `mode`: `yoi-host mcp` started by the client.
fn stdio_session(mode: &str) {
    let (_tmp, dir) = fixture(&format!("mcp-{mode}"), "write");
    let plugins = common::plugin_dir(&["probe"]);
    let home = dir.join("home");
    let manifest = dir.join("pod.toml");
    let out = python_client(
        &[
            "--mode",
            mode,
            "--checks",
            ALL_CHECKS,
            "--dir",
            dir.to_str().unwrap(),
            "--timeout-s",
            "3",
            "--stdio",
            BIN,
            "mcp",
            "--manifest",
            manifest.to_str().unwrap(),
            "--plugins",
            plugins.path().to_str().unwrap(),
        ],
        &[("YOI_HOME", &home), ("YOI_RUNTIME_DIR", &dir.join("run"))],
    );
    assert!(out.contains("ok ask_cancel"), "{out}");
    // The pod's runs went to its session log like any pod's, the cancelled
    // one as cancelled.
    let logs: Vec<_> = std::fs::read_dir(home.join("sessions")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(logs.len(), 1, "one session log: {logs:?}");
    let log = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(log.contains(r#""outcome":"cancelled""#), "{log}");
}

/// `yoi-host mcp --manifest MANIFEST` with its stdin and stdout piped.
fn spawn_mcp(manifest: &Path, home: &Path) -> std::process::Child {
    Command::new(BIN)
        .args(["mcp", "--manifest"])
        .arg(manifest)
        .env("YOI_HOME", home)
        .env("YOI_RUNTIME_DIR", home.join("run"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends `initialize` on the child's stdin and reads the answer line.
fn initialize_over_stdio(child: &mut std::process::Child) -> Value {
    use std::io::{BufRead, Write};
    let stdin = child.stdin.as_mut().unwrap();
    writeln!(stdin, "{}", initialize()).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or(Value::String(line))
}

/// While `yoi-host mcp` runs, its pod's write scope is claimed: another
/// pod writing the same tree cannot start; once the client leaves, it can.
#[test]
fn the_stdio_server_holds_the_scope_claim_while_it_runs() {
    let (_tmp, dir) = fixture("first", "write");
    std::fs::write(dir.join("second.toml"), manifest("second", "write")).unwrap();
    let home = dir.join("home");
    let mut first = spawn_mcp(&dir.join("pod.toml"), &home);
    let answer = initialize_over_stdio(&mut first);
    assert_eq!(answer["result"]["protocolVersion"], "2025-11-25", "{answer}");

    let second = spawn_mcp(&dir.join("second.toml"), &home).wait_with_output().unwrap();
    assert_eq!(second.status.code(), Some(2), "the overlapping pod is refused");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("first"), "the refusal names the pod holding the scope: {stderr}");

    drop(first.stdin.take()); // the client leaves
    assert!(first.wait().unwrap().success());
    let mut second = spawn_mcp(&dir.join("second.toml"), &home);
    let answer = initialize_over_stdio(&mut second);
    assert!(answer["result"]["serverInfo"]["name"].as_str().unwrap().contains("second"), "{answer}");
    drop(second.stdin.take());
    assert!(second.wait().unwrap().success());
}

#[test]
fn stdio_in_the_2025_11_25_era_with_initialize() {
    stdio_session("legacy");
}

#[test]
fn stdio_in_the_stateless_2026_07_28_era() {
    stdio_session("2026-07-28");
}

/// A client that cannot elicit gets `pause_before` tools refused with the
/// reason, in both eras; the other tools work.
#[test]
fn a_client_without_elicitation_cannot_run_pause_before_tools() {
    let (_tmp, dir) = fixture("mcp-unasked", "write");
    let manifest = dir.join("pod.toml");
    for mode in ["legacy", "2026-07-28"] {
        python_client(
            &[
                "--mode",
                mode,
                "--checks",
                "call,no_elicitation",
                "--no-elicitation",
                "--dir",
                dir.to_str().unwrap(),
                "--stdio",
                BIN,
                "mcp",
                "--manifest",
                manifest.to_str().unwrap(),
            ],
            &[("YOI_HOME", &dir.join("home")), ("YOI_RUNTIME_DIR", &dir.join("run"))],
        );
    }
}

/// A tenant's pod on the server: its workspace laid out like the fixture,
/// the probe plugin uploaded, the pod made from the fixture's manifest.
async fn tenant_pod(server: &Server, api: &Api, name: &str, permission: &str, probe: bool) -> PathBuf {
    assert_eq!(api.put_bytes("/v1/files/project/hello.txt", "hello from the project\n").await.0, StatusCode::CREATED);
    assert_eq!(api.put_bytes("/v1/files/elsewhere/secret.txt", "top secret\n").await.0, StatusCode::CREATED);
    assert_eq!(api.put_bytes("/v1/files/script.json", SCRIPT).await.0, StatusCode::CREATED);
    if probe && api.get("/v1/plugins/probe").await.0 != StatusCode::OK {
        let (status, body) = upload_plugin(api, "probe", std::fs::read(common::guest("probe")).unwrap(), None).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = api.put_pod(name, &manifest(name, permission)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let tenant = api.token.split('_').nth(1).unwrap();
    let config_dir = server.config.parent().unwrap();
    config_dir.join("data/tenants").join(tenant).join("workspace").canonicalize().unwrap()
}

/// Both eras against a pod of a real server, with the tenant's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_endpoint_speaks_both_eras_with_the_tenants_token() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(tmp.path(), ""), true);
    let acme = Api::new(&server, &tenant_add(&server, "acme", &[]));
    // Two pods that may write (and ask before Write), one after the other
    // since they write the same tree, then one that only reads.
    let eras = [
        ("legacy", "legacy", "write", ALL_CHECKS),
        ("stateless", "2026-07-28", "write", ALL_CHECKS),
        ("reader", "2026-07-28", "read", "list,refusal"),
    ];
    for (pod, mode, permission, checks) in eras {
        let workspace = tenant_pod(&server, &acme, pod, permission, true).await;
        let url = format!("{}/v1/pods/{pod}/mcp", server.url);
        let token = acme.token.clone();
        let mut args = vec!["--mode", mode, "--checks", checks, "--timeout-s", "3", "--url", &url, "--token", &token]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.extend(["--dir".to_string(), workspace.display().to_string()]);
        if permission == "read" {
            args.push("--read-only".into());
        }
        let out = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            python_client(&args, &[])
        })
        .await
        .unwrap();
        let last = checks.rsplit(',').next().unwrap();
        assert!(out.contains(&format!("ok {last}\n")), "{out}");
        // Its files go, so that the next pod finds the tree as new.
        assert_eq!(acme.delete(&format!("/v1/pods/{pod}")).await.0, StatusCode::NO_CONTENT);
        let _ = acme.delete("/v1/files/project?recursive=true").await;
    }
    server.stop();
}

/// The JSON-RPC `initialize` of a 2025-11-25 client.
fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}})
}

fn mcp_post(api: &Api, pod: &str, body: &Value) -> reqwest::RequestBuilder {
    api.request(reqwest::Method::POST, &format!("/v1/pods/{pod}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(body)
}

/// Nothing of one tenant is reachable with another's token, or with a
/// session id of another pod; requests from a browser page of another
/// origin, or through a DNS-rebound host name, are refused; a pod's
/// sessions are capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_host_or_origin_reaches_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(tmp.path(), "[mcp]\nmax_sessions_per_pod = 3\n"), true);
    let acme = Api::new(&server, &tenant_add(&server, "acme", &[]));
    let globex = Api::new(&server, &tenant_add(&server, "globex", &[]));
    tenant_pod(&server, &acme, "a", "read", true).await;
    tenant_pod(&server, &acme, "b", "read", true).await;
    tenant_pod(&server, &globex, "a", "read", false).await;

    // acme's session on its pod `a`.
    let response = mcp_post(&acme, "a", &initialize()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let session = response.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let with_session = |api: &Api, pod: &str| {
        mcp_post(api, pod, &list).header("mcp-session-id", &session).header("mcp-protocol-version", "2025-11-25")
    };
    let own = with_session(&acme, "a").send().await.unwrap();
    assert_eq!(own.status(), StatusCode::OK);
    let own_text = own.text().await.unwrap();
    assert!(own_text.contains("\"Spin\""), "acme's pod lists its plugin's tools: {own_text}");

    // Another tenant: its token cannot reach acme's pod, even with the session id.
    let other = with_session(&globex, "b").send().await.unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    let missing = mcp_post(&globex, "b", &initialize()).send().await.unwrap();
    let (status, body) = (missing.status(), missing.json::<Value>().await.unwrap());
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found", "acme's pod is simply not there for globex: {body}");
    // globex's own pod `a` does not know acme's session.
    let crossed = with_session(&globex, "a").send().await.unwrap();
    assert_eq!(crossed.status(), StatusCode::NOT_FOUND, "a session of acme's pod on globex's pod");
    // Nor does acme's own pod `b`: sessions belong to one pod.
    let crossed = with_session(&acme, "b").send().await.unwrap();
    assert_eq!(crossed.status(), StatusCode::NOT_FOUND, "a session of pod a on pod b");
    // globex's pod lists none of acme's plugins.
    let response = mcp_post(&globex, "a", &initialize()).send().await.unwrap();
    let globex_session = response.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let listed = mcp_post(&globex, "a", &list)
        .header("mcp-session-id", globex_session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listed.contains("\"Read\"") && !listed.contains("\"Spin\""), "{listed}");

    // No token: the API's one 401.
    let anonymous = Api { token: String::new(), ..acme.clone() };
    assert_eq!(mcp_post(&anonymous, "a", &initialize()).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // A page of another origin, and a rebound host name.
    let origin = mcp_post(&acme, "a", &initialize()).header("origin", "https://evil.example").send().await.unwrap();
    assert_eq!(origin.status(), StatusCode::FORBIDDEN);
    let host = mcp_post(&acme, "a", &initialize()).header("host", "evil.example").send().await.unwrap();
    assert_eq!(host.status(), StatusCode::FORBIDDEN, "a foreign Host");
    // A message over 1 MiB (on a connection of its own: the server answers
    // before the body ends, then closes it).
    let big = json!({"jsonrpc": "2.0", "id": 9, "method": "initialize", "params": {"pad": "x".repeat(2 << 20)}});
    let alone = Api { http: reqwest::Client::new(), ..acme.clone() };
    assert_eq!(mcp_post(&alone, "a", &big).send().await.unwrap().status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Pages on this machine may call (with the token).
    let local = mcp_post(&acme, "b", &initialize()).header("origin", "http://localhost:3000").send().await.unwrap();
    assert_eq!(local.status(), StatusCode::OK);

    // acme's pod `a` has one session; two more fit, a fourth does not
    // until one is closed.
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let response = mcp_post(&acme, "a", &initialize()).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        sessions.push(response.headers()["mcp-session-id"].to_str().unwrap().to_string());
    }
    let refused = mcp_post(&acme, "a", &initialize()).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.text().await.unwrap().contains("3 MCP sessions"));
    let closed = acme
        .request(reqwest::Method::DELETE, "/v1/pods/a/mcp")
        .header("mcp-session-id", &sessions[0])
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert!(closed.status().is_success(), "{}", closed.status());
    assert_eq!(mcp_post(&acme, "a", &initialize()).send().await.unwrap().status(), StatusCode::OK);
    server.stop();
}

/// A reverse proxy in front of `target` that adds `token` to every request
/// (the conformance suite cannot send credentials); returns its URL.
async fn token_proxy(target: String, token: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let forward = move |request: axum::extract::Request| {
        let (client, target, token) = (client.clone(), target.clone(), token.clone());
        async move {
            let (parts, body) = request.into_parts();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut headers = parts.headers;
            headers.remove("content-length");
            headers.remove("transfer-encoding");
            let response = client
                .request(parts.method, format!("{target}{path}"))
                .headers(headers)
                .bearer_auth(token)
                .body(reqwest::Body::wrap_stream(body.into_data_stream()))
                .send()
                .await
                .unwrap();
            let mut answer = axum::http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                if !matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection") {
                    answer = answer.header(name, value);
                }
            }
            answer.body(axum::body::Body::from_stream(response.bytes_stream())).unwrap()
        }
    };
    let app = axum::Router::new().fallback(forward);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// The official conformance suite's required scenarios of both eras against
/// a pod whose plugin offers the suite's text fixtures. What a tool host
/// does not offer (prompts, resources, completion, non-text content, tools
/// that ask the client) is listed with its reason in
/// tests/mcp/expected-failures.*.yml; the suite fails on anything else, and
/// on a listed failure that passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_but_for_the_listed_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&write_config(tmp.path(), ""), false);
    let api = Api::new(&server, &tenant_add(&server, "acme", &[]));
    let component = std::fs::read(common::guest("conformance")).unwrap();
    let (status, body) = upload_plugin(&api, "conformance", component, None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(api.put_bytes("/v1/files/project/.keep", "").await.0, StatusCode::CREATED);
    let pod = "[pod]\nname = \"c\"\n\n[[scope.allow]]\ntarget = \"project\"\npermission = \"read\"\n";
    let (status, body) = api.put_pod("c", pod).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let proxy = token_proxy(server.url.clone(), api.token.clone()).await;
    let url = format!("{proxy}/v1/pods/c/mcp");

    let path = clients_path();
    for revision in ["2025-11-25", "2026-07-28"] {
        let expected = repo().join(format!("tests/mcp/expected-failures.{revision}.yml"));
        let results = tmp.path().join(format!("results-{revision}"));
        let (url, path) = (url.clone(), path.clone());
        let out = tokio::task::spawn_blocking(move || {
            Command::new("conformance")
                .env("PATH", path)
                .args(["server", "--url", &url, "--requirements", revision, "--expected-failures"])
                .arg(&expected)
                .arg("--output-dir")
                .arg(&results)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary = stdout.find("=== SUMMARY ===").map_or(&stdout[..], |i| &stdout[i..]);
        eprintln!("conformance {revision}:\n{summary}");
        assert!(
            out.status.success(),
            "conformance {revision} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    server.stop();
}
