//! `yoi-host serve` as a service: a real server process on 127.0.0.1, real
//! HTTP clients, two real tenants made with `yoi-host tenant add`.

use std::path::Path;
use std::time::Duration;

mod common;

use reqwest::StatusCode;
use serde_json::{Value, json};

use common::api::{Api, tenant_add, upload_plugin};
use common::server_process::{ServerProcess as Server, write_config};

fn pod_toml(name: &str, extra: &str) -> String {
    format!("[pod]\nname = \"{name}\"\n{extra}\n[[scope.allow]]\ntarget = \"proj\"\npermission = \"write\"\n")
}

/// A 404 that says no more than that the thing is not there.
fn assert_not_found(answer: &(StatusCode, Value), what: &str) {
    assert_eq!(answer.0, StatusCode::NOT_FOUND, "{what}: {answer:?}");
    assert_eq!(answer.1["error"]["code"], "not_found", "{what}: {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_and_one_tenant_cannot_see_anothers_things() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "");
    let server = Server::start(&config, true);
    let acme = Api::new(&server, &tenant_add(&server, "acme", &[]));
    let globex = Api::new(&server, &tenant_add(&server, "globex", &[]));

    // Missing, malformed, wrong and unknown-tenant tokens get one answer.
    let anonymous = Api { token: String::new(), ..acme.clone() };
    // The real token with its last character changed (to one it does not already have).
    let (kept, last) = acme.token.split_at(acme.token.len() - 1);
    let wrong = Api { token: format!("{kept}{}", if last == "0" { "1" } else { "0" }), ..acme.clone() };
    let unknown = Api { token: acme.token.replace("yoi_acme_", "yoi_nobody_"), ..acme.clone() };
    let mut answers = Vec::new();
    for api in [&anonymous, &wrong, &unknown] {
        let answer = api.get("/v1/pods").await;
        assert_eq!(answer.0, StatusCode::UNAUTHORIZED, "{answer:?}");
        answers.push(answer.1);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert_eq!(acme.get("/v1/pods").await.0, StatusCode::OK);

    // Each tenant makes a pod `a` and a file at the same path.
    let mut cwds = Vec::new();
    for (api, text) in [(&acme, "acme's notes"), (&globex, "globex's notes")] {
        assert_eq!(api.put_bytes("/v1/files/proj/notes.txt", text).await.0, StatusCode::CREATED);
        let (status, body) = api.put_pod("a", &pod_toml("a", "")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["pod"]["state"], "idle");
        cwds.push(body["greeting"]["cwd"].as_str().unwrap().to_string());
    }
    assert_ne!(cwds[0], cwds[1]);
    let read = |api: &Api, cwd: &str| {
        let api = api.clone();
        let file_path = format!("{cwd}/notes.txt");
        async move { api.post("/v1/pods/a/tools/Read", json!({ "file_path": file_path })).await }
    };
    let (status, body) = read(&acme, &cwds[0]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["ok"]["content"].as_str().unwrap().contains("acme's notes"), "{body}");
    assert!(read(&globex, &cwds[1]).await.1["ok"]["content"].as_str().unwrap().contains("globex's notes"));
    // A pod of globex cannot read acme's file, even by its full path.
    let (status, body) = read(&globex, &cwds[0]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["error"]["kind"], "permission_denied", "{body}");

    // acme's things are "not found" for globex, through every endpoint.
    // (Its scope is read-only: acme's `a` holds `proj` for writing.)
    let (status, body) = acme.put_pod("only-acme", &pod_toml("only-acme", "").replace("\"write\"", "\"read\"")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = acme.put_pod("writer", &pod_toml("writer", "")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "two pods cannot both write proj: {body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("proj"), "{body}");
    acme.put_bytes("/v1/files/proj/acme-only.txt", "x").await;
    let (status, _) = acme
        .request(reqwest::Method::PUT, "/v1/secrets/KEY")
        .json(&json!({"value": "s3cret"}))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
    for path in ["/v1/pods/only-acme", "/v1/pods/only-acme/history", "/v1/pods/only-acme/events"] {
        assert_not_found(&globex.get(path).await, path);
        assert_not_found(&globex.get(&path.replace("only-acme", "never-was")).await, path);
    }
    for path in ["/v1/pods/only-acme/messages", "/v1/pods/only-acme/cancel", "/v1/pods/only-acme/resume"] {
        assert_not_found(&globex.post(path, json!({"input": "hi"})).await, path);
    }
    assert_not_found(&globex.post("/v1/pods/only-acme/notify", json!({"message": "hi"})).await, "notify");
    assert_not_found(&globex.post("/v1/pods/only-acme/tools/Read", json!({"file_path": "x"})).await, "tool");
    assert_not_found(&globex.delete("/v1/pods/only-acme").await, "delete pod");
    assert_not_found(&globex.get("/v1/files/proj/acme-only.txt").await, "file");
    assert_not_found(&globex.delete("/v1/files/proj/acme-only.txt").await, "delete file");
    assert_not_found(&globex.delete("/v1/secrets/KEY").await, "secret");
    assert_eq!(globex.get("/v1/secrets").await.1["secrets"], json!([]));
    assert_eq!(acme.get("/v1/secrets").await.1["secrets"], json!(["KEY"]));
    let names = |v: Value| {
        v["pods"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(names(globex.get("/v1/pods").await.1), ["a"]);
    assert_eq!(names(acme.get("/v1/pods").await.1), ["a", "only-acme"]);

    // Usage: each tenant sees its own pods' calls only.
    let usage = |api: &Api| {
        let api = api.clone();
        async move { api.get("/v1/usage").await.1 }
    };
    let (acme_usage, globex_usage) = (usage(&acme).await, usage(&globex).await);
    assert_eq!(acme_usage["pods"]["a"]["tool_calls"], 1, "{acme_usage}");
    assert_eq!(globex_usage["pods"]["a"]["tool_calls"], 2, "{globex_usage}");
    assert!(globex_usage["pods"].get("only-acme").is_none(), "{globex_usage}");

    // Names are per tenant: deleting globex's `a` leaves acme's.
    assert_eq!(globex.delete("/v1/pods/a").await.0, StatusCode::NO_CONTENT);
    assert_eq!(acme.get("/v1/pods/a").await.0, StatusCode::OK);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_targets_and_file_paths_cannot_leave_the_workspace() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "");
    let server = Server::start(&config, true);
    let acme = Api::new(&server, &tenant_add(&server, "acme", &[]));
    let _globex = Api::new(&server, &tenant_add(&server, "globex", &[]));
    let data = tmp.path().join("data/tenants");
    std::fs::create_dir_all(data.join("globex/workspace/private")).unwrap();
    std::fs::write(data.join("globex/workspace/private/secret.txt"), "globex's secret").unwrap();
    acme.put_bytes("/v1/files/proj/ok.txt", "fine").await;
    // Links planted in acme's workspace (as a tool could make them).
    let ws = data.join("acme/workspace");
    std::os::unix::fs::symlink("../../globex/workspace/private", ws.join("to-globex")).unwrap();
    std::os::unix::fs::symlink("/etc", ws.join("to-etc")).unwrap();

    for (target, what) in [
        ("/etc", "absolute"),
        ("../../globex/workspace", "dot-dot"),
        ("proj/../../../globex/workspace", "dot-dot inside"),
        ("to-globex", "symlink to another tenant"),
        ("to-etc", "symlink to the server's files"),
    ] {
        let toml = format!("[pod]\nname = \"p\"\n[[scope.allow]]\ntarget = \"{target}\"\npermission = \"read\"\n");
        let (status, body) = acme.put_pod("p", &toml).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("workspace"), "{what}: {body}");
    }
    let script =
        "[provider]\nkind = \"scripted\"\nmodel = \"m\"\nscript = \"../../globex/workspace/private/secret.txt\"\n";
    let (status, body) = acme.put_pod("p", &pod_toml("p", script)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(acme.get("/v1/pods").await.1["pods"], json!([]));

    // The files API: `..` is refused, and links lead nowhere outside.
    for path in ["/v1/files/../globex/workspace/private/secret.txt", "/v1/files/proj/%2E%2E/%2E%2E/x"] {
        let (status, body) = acme.get(path).await;
        assert!(status.is_client_error(), "{path}: {status} {body}");
    }
    for path in ["/v1/files/to-globex/secret.txt", "/v1/files/to-etc/passwd"] {
        let (status, body) = acme.get(path).await;
        assert!(status.is_client_error(), "{path}: {status} {body}");
        assert!(!body.to_string().contains("globex's secret") && !body.to_string().contains("root:"), "{body}");
        let (status, _) = acme.put_bytes(path, "overwrite").await;
        assert!(status.is_client_error(), "{path}: {status}");
    }
    assert_eq!(std::fs::read_to_string(data.join("globex/workspace/private/secret.txt")).unwrap(), "globex's secret");
    let (status, listing) = acme.get("/v1/files/proj").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listing["entries"], json!([{"name": "ok.txt", "kind": "file", "size": 4}]));
    assert_eq!(acme.get("/v1/files/proj/ok.txt").await.1, json!("fine"));
    assert_eq!(acme.delete("/v1/files/proj").await.0, StatusCode::CONFLICT);
    assert_eq!(acme.delete("/v1/files/proj?recursive=true").await.0, StatusCode::NO_CONTENT);
    assert_not_found(&acme.get("/v1/files/proj/ok.txt").await, "deleted");
    server.stop();
}

/// Reads one Server-Sent Events stream: (id, event) pairs.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(api: &Api, pod: &str, last_id: Option<&str>) -> Events {
        let mut request = api.request(reqwest::Method::GET, &format!("/v1/pods/{pod}/events"));
        if let Some(id) = last_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        Events { response, buffer: String::new() }
    }

    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return (id, serde_json::from_str(&data).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.response.chunk())
                .await
                .expect("no event within 30 s")
                .unwrap()
                .expect("the stream ended");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Events up to and including the next `run_end`.
    async fn run(&mut self) -> Vec<(String, Value)> {
        let mut events = Vec::new();
        loop {
            let event = self.next().await;
            let end = event.1["type"] == "run_end";
            events.push(event);
            if end {
                return events;
            }
        }
    }
}

fn types(events: &[(String, Value)]) -> Vec<String> {
    events.iter().map(|(_, e)| e["type"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_stream_events_and_a_reconnecting_client_misses_nothing_even_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "");
    let server = Server::start(&config, true);
    let acme = Api::new(&server, &tenant_add(&server, "acme", &[]));
    let script = json!({"turns": [
        {"text": "first answer", "chunk_delay_ms": 5},
        {"text": "second answer", "delay_ms": 600},
        {"text": "third answer"},
        {"text": "after the restart"},
    ]});
    acme.put_bytes("/v1/files/script.json", script.to_string()).await;
    acme.put_bytes("/v1/files/proj/.keep", "").await;
    let provider = "[provider]\nkind = \"scripted\"\nmodel = \"m\"\nscript = \"script.json\"\n";
    assert_eq!(acme.put_pod("coder", &pod_toml("coder", provider)).await.0, StatusCode::CREATED);

    let mut events = Events::open(&acme, "coder", None).await;
    assert_eq!(acme.post("/v1/pods/coder/messages", json!({"input": "one"})).await.0, StatusCode::ACCEPTED);
    let first = events.run().await;
    assert!(types(&first).contains(&"text_delta".to_string()), "{:?}", types(&first));
    assert_eq!(first.last().unwrap().1["outcome"], "finished");
    let ids: Vec<&String> = first.iter().map(|(id, _)| id).collect();
    assert!(ids.iter().all(|id| !id.is_empty()));
    let after_first = first.last().unwrap().0.clone();

    // A second run while the first is going: already_running.
    assert_eq!(acme.post("/v1/pods/coder/messages", json!({"input": "two"})).await.0, StatusCode::ACCEPTED);
    let busy = acme.post("/v1/pods/coder/messages", json!({"input": "again"})).await;
    assert_eq!(busy.0, StatusCode::CONFLICT, "{busy:?}");
    assert_eq!(busy.1["error"]["code"], "already_running");
    // The client drops mid-run and comes back: it gets exactly what it missed.
    let seen = events.next().await;
    drop(events);
    let mut resumed = Events::open(&acme, "coder", Some(&seen.0)).await;
    let second = resumed.run().await;
    assert!(!second.iter().any(|(id, _)| *id == seen.0), "the last seen event came again");
    assert_eq!(second.last().unwrap().1["outcome"], "finished");
    let text: String =
        second.iter().filter(|(_, e)| e["type"] == "text_delta").map(|(_, e)| e["text"].as_str().unwrap()).collect();
    assert_eq!(text, "second answer");
    drop(resumed);

    // A restart: the pod comes back idle with its history, and a client
    // that last saw the end of the first run gets the second from the log.
    server.stop();
    let server = Server::start(&config, true);
    let acme = Api { base: server.url.clone(), ..acme };
    let (status, pod) = acme.get("/v1/pods/coder").await;
    assert_eq!(status, StatusCode::OK, "{pod}");
    assert_eq!(pod["pod"]["state"], "idle");
    let history = acme.get("/v1/pods/coder/history").await.1;
    let texts: Vec<&str> = history["items"].as_array().unwrap().iter().filter_map(|i| i["text"].as_str()).collect();
    assert_eq!(texts, ["one", "first answer", "two", "second answer"]);

    let mut from_log = Events::open(&acme, "coder", Some(&after_first)).await;
    let replayed = from_log.run().await;
    let items: Vec<&str> = replayed
        .iter()
        .filter(|(_, e)| e["type"] == "item_appended")
        .map(|(_, e)| e["item"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(items, ["two", "second answer"]);
    assert_eq!(acme.post("/v1/pods/coder/messages", json!({"input": "three"})).await.0, StatusCode::ACCEPTED);
    let third = from_log.run().await;
    let items: Vec<&str> = third
        .iter()
        .filter(|(_, e)| e["type"] == "item_appended")
        .map(|(_, e)| e["item"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(items, ["three", "first answer"], "the script starts over in a new process");
    // Stopping the server ends the open event stream.
    server.stop();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = from_log.response.chunk().await {}
    });
    end.await.expect("the event stream stayed open after the server stopped");
}

/// A tenant's own plugins (a Rust one and the Python example) are checked
/// when uploaded, offered to that tenant's pods only, granted the tenant's
/// secrets (never the server's environment), and called through a pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_plugins_load_for_its_pods_only_and_see_only_its_secrets() {
    let python = tempfile::tempdir().unwrap();
    common::builds::run_build(&common::builds::repo().join("plugins/examples/csv-stats/build.sh"), &[python.path()]);
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "");
    let server = Server::start(&config, true);
    let acme = Api::new(&server, &tenant_add(&server, "acme", &[]));
    let globex = Api::new(&server, &tenant_add(&server, "globex", &[]));

    let (status, body) = upload_plugin(&acme, "probe", b"not a component".to_vec(), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_plugin");
    let probe = std::fs::read(common::guest("probe")).unwrap();
    let (status, body) = upload_plugin(&acme, "probe", probe, Some("env = [\"API_KEY\", \"HOME\"]\n")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body["tools"].as_array().unwrap().iter().any(|t| t["name"] == "Echo"), "{body}");
    let csv = std::fs::read(python.path().join("csv_stats.wasm")).unwrap();
    let (status, body) = upload_plugin(&acme, "csv_stats", csv, None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = upload_plugin(&acme, "fs_tools", std::fs::read(common::guest("probe")).unwrap(), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a builtin's name or tools cannot be taken: {body}");

    assert_eq!(acme.get("/v1/plugins/probe").await.0, StatusCode::OK);
    assert_not_found(&globex.get("/v1/plugins/probe").await, "plugin");
    assert_not_found(&globex.delete("/v1/plugins/probe").await, "delete plugin");
    let names = |v: &Value| {
        v["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert!(!names(&globex.get("/v1/plugins").await.1).contains(&"probe".to_string()));

    let put = |api: &Api, name: &str, value: &str| {
        let request =
            api.request(reqwest::Method::PUT, &format!("/v1/secrets/{name}")).json(&json!({ "value": value }));
        async move { assert_eq!(request.send().await.unwrap().status(), StatusCode::NO_CONTENT) }
    };
    put(&acme, "API_KEY", "acme-key").await;
    put(&globex, "API_KEY", "globex-key").await;
    acme.put_bytes("/v1/files/proj/sales.csv", "region;units\nnorth;10\nsouth;30\n").await;
    let script = json!({"turns": [
        {"tool_calls": [{"name": "Echo", "arguments": {"text": "through the model"}}]},
        {"text": "done"},
    ]});
    acme.put_bytes("/v1/files/script.json", script.to_string()).await;
    let grant = "[provider]\nkind = \"scripted\"\nmodel = \"m\"\nscript = \"script.json\"\n\
                 [[plugins.grant]]\nplugin = \"probe\"\nenv = [\"API_KEY\", \"HOME\"]\n";
    let (status, body) = acme.put_pod("p", &pod_toml("p", grant)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body["greeting"]["tools"].as_array().unwrap().contains(&json!("CsvStats")), "{body}");

    let (_, env) = acme.post("/v1/pods/p/tools/Env", json!({})).await;
    let vars: Value = serde_json::from_str(env["ok"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(vars["vars"], json!({"API_KEY": "acme-key"}), "only granted secrets, never the server's HOME");
    let (_, stats) = acme.post("/v1/pods/p/tools/CsvStats", json!({"path": "sales.csv"})).await;
    assert!(stats["ok"]["summary"].as_str().unwrap().contains("2 rows"), "{stats}");

    let mut events = Events::open(&acme, "p", None).await;
    acme.post("/v1/pods/p/messages", json!({"input": "go"})).await;
    let run = events.run().await;
    let result = run.iter().find(|(_, e)| e["type"] == "tool_result").expect("a tool result");
    assert_eq!(result.1["is_error"], false, "{run:?}");
    assert_eq!(run.last().unwrap().1["outcome"], "finished");

    // globex has neither the plugin nor, therefore, its tools.
    globex.put_bytes("/v1/files/proj/x", "x").await;
    assert_eq!(globex.put_pod("p", &pod_toml("p", "")).await.0, StatusCode::CREATED);
    let (_, echo) = globex.post("/v1/pods/p/tools/Echo", json!({"text": "x"})).await;
    assert_eq!(echo["error"]["kind"], "unknown_tool", "{echo}");
    let grant_missing = "[[plugins.grant]]\nplugin = \"probe\"\n";
    let (status, body) = globex.put_pod("q", &format!("[pod]\nname = \"q\"\n{grant_missing}")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    assert_eq!(acme.delete("/v1/plugins/probe").await.0, StatusCode::NO_CONTENT);
    assert_not_found(&acme.get("/v1/plugins/probe").await, "deleted plugin");
    server.stop();
}

/// Every quota: over it, `429` with `Retry-After` (or `507` for storage)
/// naming the quota, a tool error `quota_exceeded` inside a run, and
/// nothing already stored lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_quota_refuses_naming_itself_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "");
    let server = Server::start(&config, true);
    let probe = std::fs::read(common::guest("probe")).unwrap();
    let quota_named = |answer: &(StatusCode, Value), quota: &str| {
        assert_eq!(answer.1["error"]["code"], "quota_exceeded", "{answer:?}");
        assert!(answer.1["error"]["message"].as_str().unwrap().contains(quota), "{answer:?}");
    };

    // live_pods
    let pods = Api::new(&server, &tenant_add(&server, "pods", &["live_pods=1"]));
    assert_eq!(pods.put_pod("one", "[pod]\nname = \"one\"\n").await.0, StatusCode::CREATED);
    let answer = pods.put_pod("two", "[pod]\nname = \"two\"\n").await;
    assert_eq!(answer.0, StatusCode::TOO_MANY_REQUESTS);
    quota_named(&answer, "live_pods");
    assert_eq!(pods.delete("/v1/pods/one").await.0, StatusCode::NO_CONTENT);
    assert_eq!(pods.put_pod("two", "[pod]\nname = \"two\"\n").await.0, StatusCode::CREATED);

    // live_pods counts child pods too.
    let kids = Api::new(&server, &tenant_add(&server, "kids", &["live_pods=2"]));
    kids.put_bytes("/v1/files/script.json", json!({"turns": []}).to_string()).await;
    kids.put_bytes("/v1/files/proj/a/.keep", "").await;
    kids.put_bytes("/v1/files/proj/b/.keep", "").await;
    let provider = "[provider]\nkind = \"scripted\"\nmodel = \"m\"\nscript = \"script.json\"\n";
    let (status, body) = kids.put_pod("lead", &pod_toml("lead", provider)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let cwd = body["greeting"]["cwd"].as_str().unwrap().to_string();
    let spawn = |name: &str, dir: &str| {
        let input =
            json!({"name": name, "task": "wait", "scope": [{"target": format!("{cwd}/{dir}"), "permission": "read"}]});
        let kids = kids.clone();
        async move { kids.post("/v1/pods/lead/tools/SpawnPod", input).await.1 }
    };
    let first = spawn("kid-a", "a").await;
    assert!(first["ok"].is_object(), "{first}");
    let second = spawn("kid-b", "b").await;
    assert!(second["error"]["message"].as_str().unwrap_or_default().contains("live_pods"), "{second}");
    let answer = kids.put_pod("other", "[pod]\nname = \"other\"\n").await;
    assert_eq!(answer.0, StatusCode::TOO_MANY_REQUESTS, "{answer:?}");
    quota_named(&answer, "live_pods");

    // requests_per_second: a burst past the rate gets 429 with Retry-After.
    let rate = Api::new(&server, &tenant_add(&server, "rate", &["requests_per_second=3"]));
    let mut limited = None;
    for _ in 0..10 {
        let response = rate.request(reqwest::Method::GET, "/v1/pods").send().await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((response.headers().get("retry-after").cloned(), response.json::<Value>().await.unwrap()));
            break;
        }
    }
    let (retry_after, body) = limited.expect("ten requests at once passed a rate of 3 per second");
    assert_eq!(retry_after.unwrap(), "1");
    quota_named(&(StatusCode::TOO_MANY_REQUESTS, body), "requests_per_second");

    // tool_cpu_ms_per_minute: an endless loop uses the minute's CPU; the
    // next call is refused until the minute turns.
    let cpu = Api::new(&server, &tenant_add(&server, "cpu", &["tool_cpu_ms_per_minute=300", "tool_timeout_ms=1000"]));
    assert_eq!(upload_plugin(&cpu, "probe", probe.clone(), None).await.0, StatusCode::CREATED);
    cpu.put_bytes("/v1/files/proj/.keep", "").await;
    assert_eq!(cpu.put_pod("p", &pod_toml("p", "")).await.0, StatusCode::CREATED);
    let mut spins = 0;
    let response = loop {
        let (_, spin) = cpu.post("/v1/pods/p/tools/Spin", json!({})).await;
        assert_eq!(spin["error"]["kind"], "timeout", "{spin}");
        spins += 1;
        let response =
            cpu.request(reqwest::Method::POST, "/v1/pods/p/tools/Noop").json(&json!({})).send().await.unwrap();
        // The minute may have turned between the two calls: spin again.
        if response.status() == StatusCode::TOO_MANY_REQUESTS || spins == 3 {
            break response;
        }
    };
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let body: Value = response.json().await.unwrap();
    quota_named(&(StatusCode::TOO_MANY_REQUESTS, body), "tool_cpu_ms_per_minute");
    let usage = cpu.get("/v1/usage").await.1;
    assert!(usage["minute"]["tool_cpu_ms"].as_u64().unwrap() >= 300, "{usage}");
    let noops = (spins - 1) + 1;
    assert_eq!(usage["pods"]["p"]["tool_calls"], spins + noops, "the refused call is counted too: {usage}");

    // concurrent_tool_calls: one call runs; a second is refused.
    let conc = Api::new(&server, &tenant_add(&server, "conc", &["concurrent_tool_calls=1", "tool_timeout_ms=3000"]));
    assert_eq!(upload_plugin(&conc, "probe", probe.clone(), None).await.0, StatusCode::CREATED);
    assert_eq!(conc.put_pod("p", "[pod]\nname = \"p\"\n").await.0, StatusCode::CREATED);
    let spinning = tokio::spawn({
        let conc = conc.clone();
        async move { conc.post("/v1/pods/p/tools/Spin", json!({})).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = conc.post("/v1/pods/p/tools/Noop", json!({})).await;
    assert_eq!(answer.0, StatusCode::TOO_MANY_REQUESTS, "{answer:?}");
    assert!(answer.1["error"]["message"].as_str().unwrap().contains("concurrent_tool_calls"), "{answer:?}");
    spinning.await.unwrap();
    assert_eq!(conc.post("/v1/pods/p/tools/Noop", json!({})).await.0, StatusCode::OK);

    // workspace_mb: an upload past it is 507 and the old file stays whole;
    // a plugin that writes in a loop is stopped soon after the quota.
    let disk = Api::new(&server, &tenant_add(&server, "disk", &["workspace_mb=1"]));
    assert_eq!(disk.put_bytes("/v1/files/proj/keep.txt", "kept").await.0, StatusCode::CREATED);
    let answer = disk.put_bytes("/v1/files/proj/keep.txt", vec![b'x'; 2 << 20]).await;
    assert_eq!(answer.0, StatusCode::INSUFFICIENT_STORAGE, "{answer:?}");
    quota_named(&answer, "workspace_mb");
    assert_eq!(disk.get("/v1/files/proj/keep.txt").await.1, json!("kept"));
    assert_eq!(upload_plugin(&disk, "probe", probe.clone(), None).await.0, StatusCode::CREATED);
    let (status, body) = disk.put_pod("w", &pod_toml("w", "")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let cwd = body["greeting"]["cwd"].as_str().unwrap().to_string();
    let chunk = "y".repeat(200 << 10);
    let mut written = 0;
    let mut stopped = None;
    for n in 0..60 {
        let input = json!({"op": "write", "path": format!("{cwd}/f{n}"), "content": chunk});
        let (status, body) = disk.post("/v1/pods/w/tools/Fs", input).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            stopped = Some(body);
            break;
        }
        assert!(body["ok"].is_object(), "{body}");
        written += chunk.len();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let body = stopped.expect("the workspace quota never stopped the writes");
    assert!(body["error"]["message"].as_str().unwrap().contains("workspace_mb"), "{body}");
    // The bound in docs/serve.md: what about one second of calls writes.
    assert!(written <= (1 << 20) + 8 * chunk.len(), "{written} bytes were written");
    assert_eq!(disk.get("/v1/files/proj/keep.txt").await.1, json!("kept"));
    for n in 0..60 {
        disk.delete(&format!("/v1/files/proj/f{n}")).await;
    }
    let input = json!({"op": "write", "path": format!("{cwd}/again"), "content": "ok"});
    assert_eq!(disk.post("/v1/pods/w/tools/Fs", input).await.0, StatusCode::OK, "freeing space lets writes in again");

    // model_tokens_per_day: a run past it fails naming the quota; the
    // history so far is kept.
    let tokens = Api::new(&server, &tenant_add(&server, "tokens", &["model_tokens_per_day=1"]));
    let script = json!({"turns": [{"text": "first"}, {"text": "second"}]});
    tokens.put_bytes("/v1/files/script.json", script.to_string()).await;
    let provider = "[provider]\nkind = \"scripted\"\nmodel = \"m\"\nscript = \"script.json\"\n";
    assert_eq!(tokens.put_pod("t", &format!("[pod]\nname = \"t\"\n{provider}")).await.0, StatusCode::CREATED);
    let mut events = Events::open(&tokens, "t", None).await;
    tokens.post("/v1/pods/t/messages", json!({"input": "one"})).await;
    assert_eq!(events.run().await.last().unwrap().1["outcome"], "finished");
    tokens.post("/v1/pods/t/messages", json!({"input": "two"})).await;
    let run = events.run().await;
    assert_eq!(run.last().unwrap().1["outcome"], "failed");
    let error = run.iter().find(|(_, e)| e["type"] == "error").expect("an error event");
    assert!(error.1["message"].as_str().unwrap().contains("model_tokens_per_day"), "{error:?}");
    let history = tokens.get("/v1/pods/t/history").await.1;
    let texts: Vec<&str> = history["items"].as_array().unwrap().iter().filter_map(|i| i["text"].as_str()).collect();
    assert_eq!(texts, ["one", "first", "two"]);
    let usage = tokens.get("/v1/usage").await.1;
    assert!(usage["total"]["tokens_in"].as_u64().unwrap() > 0, "{usage}");

    // The operator's metrics, per tenant, on the admin token only.
    let admin = Api { token: server.tenant(&["admin-token"]), ..tokens.clone() };
    assert_eq!(tokens.get("/metrics").await.0, StatusCode::UNAUTHORIZED);
    let response = admin.request(reqwest::Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let spun = format!("yoi_tool_calls_total{{tenant=\"cpu\",outcome=\"timeout\"}} {spins}");
    for line in [
        spun.as_str(),
        "yoi_tool_calls_total{tenant=\"cpu\",outcome=\"quota_exceeded\"} 1",
        "yoi_model_requests_total{tenant=\"tokens\",outcome=\"ok\"} 1",
        "yoi_tool_call_seconds_count{tenant=\"conc\"}",
        "yoi_tool_cpu_seconds_total{tenant=\"cpu\"}",
        "yoi_model_tokens_total{tenant=\"tokens\",direction=\"out\"}",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    server.stop();
}

/// A tar entry with any name, however bad (the tar crate's own builder
/// refuses to write the dangerous ones).
fn raw_entry(archive: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, link: &str, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    archive.append(&header, data).unwrap();
}

fn archive(entries: &[(tar::EntryType, &str, &str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (kind, name, link, data) in entries {
        raw_entry(&mut builder, *kind, name, link, data);
    }
    builder.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tar_upload_is_extracted_whole_inside_the_workspace_or_not_at_all() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "");
    let server = Server::start(&config, true);
    let acme = Api::new(&server, &tenant_add(&server, "acme", &["workspace_mb=1"]));
    let globex = Api::new(&server, &tenant_add(&server, "globex", &[]));
    assert_eq!(globex.put_bytes("/v1/files/secret.txt", "globex's").await.0, StatusCode::CREATED);
    let tenants = tmp.path().join("data/tenants");

    let good = archive(&[
        (Directory, "src", "", b""),
        (Regular, "src/main.rs", "", b"fn main() {}"),
        (Symlink, "latest", "src/main.rs", b""),
        (Link, "copy.rs", "src/main.rs", b""),
    ]);
    let (status, body) = acme.put_bytes("/v1/files/proj?extract=tar", good.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body, json!({"entries": 4, "bytes": 12}));
    assert_eq!(acme.get("/v1/files/proj/latest").await.1, json!("fn main() {}"));
    assert_eq!(acme.get("/v1/files/proj/copy.rs").await.1, json!("fn main() {}"));
    let (status, _) = acme.put_bytes("/v1/files/proj?extract=tar", good).await;
    assert_eq!(status, StatusCode::CONFLICT, "an archive does not overwrite a directory that has files");

    for (what, bad) in [
        ("absolute name", archive(&[(Regular, "/tmp/evil", "", b"x")])),
        ("dot-dot name", archive(&[(Regular, "../../globex/workspace/secret.txt", "", b"overwritten")])),
        ("dot-dot inside", archive(&[(Regular, "a/../../x", "", b"x")])),
        ("link up", archive(&[(Symlink, "up", "../../globex/workspace", b"")])),
        ("absolute link", archive(&[(Symlink, "etc", "/etc", b"")])),
        ("link, then a file through it", archive(&[(Symlink, "l", "..", b""), (Regular, "l/x", "", b"x")])),
        ("hard link out", archive(&[(Link, "passwd", "/etc/passwd", b"")])),
        ("hard link up", archive(&[(Link, "s", "../../globex/workspace/secret.txt", b"")])),
        ("a device", archive(&[(tar::EntryType::Char, "null", "", b"")])),
        ("a file first, then a bad one", archive(&[(Regular, "fine.txt", "", b"fine"), (Regular, "../x", "", b"x")])),
    ] {
        let (status, body) = acme.put_bytes("/v1/files/bad?extract=tar", bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
        assert_eq!(body["error"]["code"], "unsafe_archive", "{what}: {body}");
        assert_not_found(&acme.get("/v1/files/bad").await, what);
    }
    let big = vec![b'z'; 600 << 10];
    let bomb = archive(&[(Regular, "a", "", &big), (Regular, "b", "", &big)]);
    let (status, body) = acme.put_bytes("/v1/files/bomb?extract=tar", bomb).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("workspace_mb"), "{body}");
    assert_not_found(&acme.get("/v1/files/bomb").await, "bomb");
    assert_eq!(std::fs::read_to_string(tenants.join("globex/workspace/secret.txt")).unwrap(), "globex's");
    assert!(!tmp.path().join("tmp/evil").exists() && !Path::new("/tmp/evil").exists());
    let (status, body) =
        acme.put_bytes("/v1/files/x?extract=tar", b"not a tar archive at all, just text".to_vec()).await;
    assert!(status.is_client_error(), "{status} {body}");
    server.stop();
}

/// `kill -9` of the server loses no completed item; the run it cut is
/// marked `interrupted` in the log, and the pod comes back idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_no_completed_item_and_marks_the_cut_run() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "");
    let server = Server::start(&config, true);
    let acme = Api::new(&server, &tenant_add(&server, "acme", &[]));
    let script = json!({"turns": [
        {"text": "first answer"},
        {"text": "never said", "delay_ms": 60000},
    ]});
    acme.put_bytes("/v1/files/script.json", script.to_string()).await;
    let provider = "[provider]\nkind = \"scripted\"\nmodel = \"m\"\nscript = \"script.json\"\n";
    assert_eq!(acme.put_pod("coder", &format!("[pod]\nname = \"coder\"\n{provider}")).await.0, StatusCode::CREATED);
    let mut events = Events::open(&acme, "coder", None).await;
    acme.post("/v1/pods/coder/messages", json!({"input": "zero"})).await;
    let first = events.run().await;
    acme.post("/v1/pods/coder/messages", json!({"input": "one"})).await;
    loop {
        if events.next().await.1["type"] == "turn_start" {
            break;
        }
    }
    drop(events);
    drop(server); // SIGKILL

    let server = Server::start(&config, true);
    let acme = Api { base: server.url.clone(), ..acme };
    let (_, pod) = acme.get("/v1/pods/coder").await;
    assert_eq!(pod["pod"]["state"], "idle", "{pod}");
    let history = acme.get("/v1/pods/coder/history").await.1;
    let texts: Vec<&str> = history["items"].as_array().unwrap().iter().filter_map(|i| i["text"].as_str()).collect();
    assert_eq!(texts, ["zero", "first answer", "one"]);
    // Resuming after the first run's end: the cut run's message and its mark.
    let mut replay = Events::open(&acme, "coder", Some(&first.last().unwrap().0)).await;
    let cut = replay.run().await;
    assert_eq!(types(&cut), ["item_appended", "run_end"], "{cut:?}");
    assert_eq!(cut[1].1["outcome"], "interrupted");
    server.stop();
}

/// A tenant's two pods: W may write `proj`, R may read `proj/sub`. W swaps
/// `proj/sub` for a symlink to another tenant's workspace; R's next call
/// must not follow it (the scope's directories are opened without
/// following links).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_swapped_for_a_symlink_does_not_redirect_another_pods_scope() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "");
    let server = Server::start(&config, true);
    let acme = Api::new(&server, &tenant_add(&server, "acme", &[]));
    let globex = Api::new(&server, &tenant_add(&server, "globex", &[]));
    globex.put_bytes("/v1/files/secret.txt", "globex's secret").await;
    assert_eq!(
        upload_plugin(&acme, "probe", std::fs::read(common::guest("probe")).unwrap(), None).await.0,
        StatusCode::CREATED
    );
    acme.put_bytes("/v1/files/proj/sub/mine.txt", "acme's").await;
    let (status, body) = acme.put_pod("w", &pod_toml("w", "")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let proj = body["greeting"]["cwd"].as_str().unwrap().to_string();
    let reader = "[pod]\nname = \"r\"\n[[scope.allow]]\ntarget = \"proj/sub\"\npermission = \"read\"\n";
    let (status, body) = acme.put_pod("r", reader).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let sub = body["greeting"]["cwd"].as_str().unwrap().to_string();
    let read = |path: String| {
        let acme = acme.clone();
        async move { acme.post("/v1/pods/r/tools/Fs", json!({"op": "read", "path": path})).await.1 }
    };
    assert_eq!(read(format!("{sub}/mine.txt")).await["ok"]["content"], "acme's");

    let fs = |input: Value| {
        let acme = acme.clone();
        async move { acme.post("/v1/pods/w/tools/Fs", input).await.1 }
    };
    let moved = fs(json!({"op": "rename", "path": format!("{proj}/sub"), "to": format!("{proj}/old")})).await;
    assert!(moved["ok"].is_object(), "{moved}");
    let linked =
        fs(json!({"op": "symlink", "path": format!("{proj}/sub"), "content": "../../../globex/workspace"})).await;
    assert!(linked["ok"].is_object(), "{linked}");
    let stolen = read(format!("{sub}/secret.txt")).await;
    assert!(!stolen.to_string().contains("globex's secret"), "{stolen}");
    assert!(stolen["error"].is_object(), "{stolen}");
    server.stop();
}

/// Errors made before a handler runs have the API's error shape too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_outside_the_handlers_have_the_one_error_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), "[http]\nmax_body_mb = 1\n");
    let server = Server::start(&config, true);
    let acme = Api::new(&server, &tenant_add(&server, "acme", &[]));
    // (On a client of its own: the server closes a connection whose body it refused.)
    let once = Api { http: reqwest::Client::new(), ..acme.clone() };
    let (status, body) = once.put_bytes("/v1/files/big", vec![b'x'; (1 << 20) + 1]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "too_large", "{body}");
    let (status, body) = acme.send(reqwest::Method::PATCH, "/v1/pods", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    let (status, body) = acme.delete("/v1/files/x?recursive=maybe").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("recursive"), "{body}");
    let (status, body) = acme.get("/v1/nowhere").await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::NOT_FOUND, &json!("not_found")));
    server.stop();
}
