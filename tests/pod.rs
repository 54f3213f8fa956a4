//! Pods over their real Unix socket: every method in every state, malformed
//! lines, several clients, a slow client, reconnects, shutdown cleanup,
//! stale runtime directories, compaction, and resuming after `kill -9`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::mock_http::{MockServer, Reply};
use common::{Sandbox, shared_cache};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use yoi_host::history::Item;
use yoi_host::pod::PodHandle;
use yoi_host::scope_lock::ScopeLock;
use yoi_host::session::SessionStore;

/// A pod's files: a project, a manifest, a script, sessions and runtime dirs.
struct Setup {
    sb: Sandbox,
}

impl Setup {
    fn new(name: &str, script: Value, extra_toml: &str) -> Setup {
        let sb = Sandbox::new();
        sb.file("proj/notes.txt", "alpha\nbeta\n");
        sb.file("script.json", &json!({ "turns": script }).to_string());
        sb.file(
            "pod.toml",
            &format!(
                "[pod]\nname = \"{name}\"\n[provider]\nkind = \"scripted\"\nmodel = \"script\"\nscript = \"script.json\"\n\
                 [[scope.allow]]\ntarget = \"proj\"\npermission = \"write\"\n{extra_toml}"
            ),
        );
        Setup { sb }
    }

    fn manifest(&self) -> PathBuf {
        self.sb.root.join("pod.toml")
    }

    fn sessions(&self) -> SessionStore {
        SessionStore::new(self.sb.root.join("home/sessions"))
    }

    fn runtime_root(&self) -> PathBuf {
        self.sb.root.join("run")
    }

    /// `$YOI_HOME` for `yoi-host` processes, sharing the tests' compiled components.
    fn process_home(&self) -> PathBuf {
        let home = self.sb.root.join("home");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(shared_cache()).unwrap();
        let _ = std::os::unix::fs::symlink(shared_cache(), home.join("cache"));
        home
    }

    /// A `yoi-host` command using this setup's home and runtime dirs.
    fn yoi(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_yoi-host"));
        cmd.args(args)
            .env("YOI_HOME", self.process_home())
            .env("YOI_RUNTIME_DIR", self.runtime_root())
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("YOI_SCOPE_LOCK");
        cmd
    }

    /// Starts `yoi-host run` serving the manifest, and waits for its socket.
    /// The process is killed if the test ends without waiting for it.
    async fn serve_in_process(&self, manifest: &Path, pod: &str) -> (Served, PathBuf) {
        let child = self
            .yoi(&["run", "--manifest", manifest.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let socket = self.runtime_root().join(pod).join("sock");
        for _ in 0..1200 {
            if socket.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (Served(child), socket)
    }

    async fn start(&self, resume: Option<String>) -> anyhow::Result<PodHandle> {
        common::start_pod(&self.manifest(), &self.sb.root.join("home"), &[], resume).await
    }
}

/// A `yoi-host run` process of a test; killed if the test fails before
/// waiting for it, so no server outlives its test.
struct Served(std::process::Child);

impl std::ops::Deref for Served {
    type Target = std::process::Child;

    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Served {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A raw JSON-lines client.
struct Client {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Client {
    async fn connect(socket: &Path) -> Client {
        let (read, writer) = UnixStream::connect(socket).await.unwrap().into_split();
        Client { lines: BufReader::new(read).lines(), writer }
    }

    async fn line(&mut self, line: &str) {
        self.writer.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    }

    async fn send(&mut self, request: Value) {
        self.line(&request.to_string()).await;
    }

    /// The next event, within 10 s.
    async fn next(&mut self) -> Option<Value> {
        let line =
            tokio::time::timeout(Duration::from_secs(10), self.lines.next_line()).await.expect("no event in 10 s");
        line.unwrap().map(|l| serde_json::from_str(&l).unwrap())
    }

    /// Skips events until one of type `kind`.
    async fn expect(&mut self, kind: &str) -> Value {
        loop {
            let event = self.next().await.unwrap_or_else(|| panic!("closed while waiting for {kind}"));
            if event["type"] == kind {
                return event;
            }
        }
    }

    async fn expect_error(&mut self, code: &str) -> Value {
        let event = self.expect("error").await;
        assert_eq!(event["code"], code, "{event}");
        event
    }
}

/// Every method in each state, with the errors the states call for.
#[tokio::test]
async fn methods_in_every_state() {
    let setup = Setup::new(
        "states",
        json!([
            {"text": "first answer"},
            {"delay_ms": 1500, "text": "slow answer"},
            {"tool_calls": [{"name": "Write", "arguments": {"file_path": "${cwd}/new.txt", "content": "x"}}]},
            {"text": "written"},
            {"tool_calls": [{"name": "Write", "arguments": {"file_path": "${cwd}/other.txt", "content": "y"}}]}
        ]),
        "[agent]\npause_before = [\"Write\"]\n",
    );
    let pod = setup.start(None).await.unwrap();
    let mut c = Client::connect(pod.socket.as_deref().unwrap()).await;

    // Idle.
    c.send(json!({"method": "cancel", "id": 1})).await;
    assert_eq!(c.expect_error("not_running").await["id"], 1);
    c.send(json!({"method": "resume"})).await;
    c.expect_error("not_paused").await;
    c.send(json!({"method": "get_history"})).await;
    let history = c.expect("history").await;
    assert_eq!(history["greeting"]["pod"], "states");
    assert_eq!(history["greeting"]["state"], "idle");
    assert!(history["greeting"]["tools"].as_array().unwrap().iter().any(|t| t == "Read"));
    c.send(json!({"method": "run", "input": "hello"})).await;
    assert_eq!(c.expect("run_start").await["cause"], "run");
    assert_eq!(c.expect("text_done").await["text"], "first answer");
    assert_eq!(c.expect("run_end").await["outcome"], "finished");

    // Running.
    c.send(json!({"method": "run", "input": "slowly"})).await;
    c.expect("run_start").await;
    c.send(json!({"method": "run", "input": "again"})).await;
    c.expect_error("already_running").await;
    c.send(json!({"method": "resume"})).await;
    c.expect_error("not_paused").await;
    c.send(json!({"method": "get_history"})).await;
    assert_eq!(c.expect("history").await["greeting"]["state"], "running");
    c.send(json!({"method": "cancel"})).await;
    assert_eq!(c.expect("run_end").await["outcome"], "cancelled");

    // Paused before a Write, then resumed.
    c.send(json!({"method": "run", "input": "write it"})).await;
    assert_eq!(c.expect("run_end").await["outcome"], "paused");
    assert!(!setup.sb.root.join("proj/new.txt").exists());
    c.send(json!({"method": "run", "input": "more"})).await;
    c.expect_error("already_running").await;
    c.send(json!({"method": "resume"})).await;
    assert_eq!(c.expect("run_start").await["cause"], "resume");
    assert_eq!(c.expect("tool_result").await["is_error"], false);
    assert_eq!(c.expect("run_end").await["outcome"], "finished");
    assert_eq!(setup.sb.read("proj/new.txt").as_deref(), Some("x"));

    // Paused, then cancelled: the pending call is answered.
    c.send(json!({"method": "run", "input": "write another"})).await;
    assert_eq!(c.expect("run_end").await["outcome"], "paused");
    c.send(json!({"method": "cancel"})).await;
    assert_eq!(c.expect("run_end").await["outcome"], "cancelled");
    c.send(json!({"method": "get_history"})).await;
    let items = c.expect("history").await["items"].as_array().unwrap().clone();
    let last = items.last().unwrap();
    assert_eq!(last["type"], "tool_result");
    assert_eq!(last["is_error"], true);
    assert!(!setup.sb.root.join("proj/other.txt").exists());

    c.send(json!({"method": "shutdown"})).await;
    c.expect("shutdown").await;
    pod.wait().await;
}

/// `notify` while idle starts a run whose request carries the note, which
/// never enters the history as a user message.
#[tokio::test]
async fn notify_while_idle_starts_a_turn() {
    let setup = Setup::new("notify", json!([{"text": "noted"}]), "");
    let pod = setup.start(None).await.unwrap();
    let mut c = Client::connect(pod.socket.as_deref().unwrap()).await;
    c.send(json!({"method": "notify", "message": "the build finished"})).await;
    assert_eq!(c.expect("notification").await["message"], "the build finished");
    assert_eq!(c.expect("run_start").await["cause"], "notify");
    assert_eq!(c.expect("run_end").await["outcome"], "finished");
    c.send(json!({"method": "get_history"})).await;
    let items = c.expect("history").await["items"].clone();
    assert_eq!(items, json!([{"type": "assistant", "text": "noted"}]));
    c.send(json!({"method": "shutdown"})).await;
    pod.wait().await;
}

/// Malformed lines get `invalid_request` on their own connection, which
/// stays usable; other clients see nothing of it.
#[tokio::test]
async fn malformed_lines_are_answered_and_the_connection_lives() {
    let setup = Setup::new("malformed", json!([]), "");
    let pod = setup.start(None).await.unwrap();
    let mut a = Client::connect(pod.socket.as_deref().unwrap()).await;
    let mut b = Client::connect(pod.socket.as_deref().unwrap()).await;
    for bad in
        ["not json", "[1,2]", "{}", r#"{"method":"fly"}"#, r#"{"method":"run"}"#, r#"{"method":"run","input":5}"#]
    {
        a.line(bad).await;
        let e = a.expect_error("invalid_request").await;
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    a.line(&"x".repeat(2 << 20)).await;
    a.expect_error("invalid_request").await;
    a.send(json!({"method": "get_history"})).await;
    a.expect("history").await;
    b.send(json!({"method": "get_history"})).await;
    let first = b.next().await.unwrap();
    assert_eq!(first["type"], "history", "b saw only its own answer: {first}");
    a.send(json!({"method": "shutdown"})).await;
    pod.wait().await;
}

/// Two clients both see a run; a client that reconnects mid-run sees the
/// rest of it and can ask for the history.
#[tokio::test]
async fn two_clients_and_a_reconnect() {
    let setup = Setup::new(
        "clients",
        json!([{"text": "one two three four five six seven eight nine ten", "chunk_delay_ms": 100}]),
        "",
    );
    let pod = setup.start(None).await.unwrap();
    let mut a = Client::connect(pod.socket.as_deref().unwrap()).await;
    let mut b = Client::connect(pod.socket.as_deref().unwrap()).await;
    a.send(json!({"method": "run", "input": "count"})).await;
    b.expect("run_start").await;
    b.expect("text_delta").await;
    drop(b);
    let mut c = Client::connect(pod.socket.as_deref().unwrap()).await;
    assert_eq!(c.expect("text_done").await["text"], "one two three four five six seven eight nine ten");
    c.expect("run_end").await;
    assert_eq!(a.expect("run_end").await["outcome"], "finished");
    c.send(json!({"method": "get_history"})).await;
    assert_eq!(c.expect("history").await["items"].as_array().unwrap().len(), 2);
    a.send(json!({"method": "shutdown"})).await;
    pod.wait().await;
}

/// A client that never reads cannot stall the pod: the others finish the
/// run at full speed and the slow one is disconnected.
#[tokio::test]
async fn a_slow_client_is_dropped_without_stalling_the_pod() {
    // 3000 deltas of 150 bytes, one a millisecond: far more than a socket
    // buffer plus the pod's per-client buffer, at a pace a reader keeps up with.
    let words = format!("{} ", "w".repeat(150)).repeat(3000);
    let setup = Setup::new("slow", json!([{"text": words, "chunk_delay_ms": 1}]), "");
    let pod = setup.start(None).await.unwrap();
    let mut slow = Client::connect(pod.socket.as_deref().unwrap()).await;
    let mut fast = Client::connect(pod.socket.as_deref().unwrap()).await;
    fast.send(json!({"method": "run", "input": "talk a lot"})).await;
    let started = std::time::Instant::now();
    assert_eq!(fast.expect("run_end").await["outcome"], "finished");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    // Now read what reached the slow client: it ends before the run does.
    let mut seen = 0;
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(15), slow.lines.next_line()).await.unwrap() {
        let event: Value = serde_json::from_str(&line).unwrap();
        // A `slow_client` notice may or may not fit into its full socket.
        assert_ne!(event["type"], "run_end", "the slow client was never dropped");
        seen += 1;
    }
    assert!(seen < 3000, "the slow client saw {seen} events");
    fast.send(json!({"method": "shutdown"})).await;
    pod.wait().await;
}

/// Shutdown during a run cancels it, flushes the session, says `shutdown`,
/// and removes the socket and the runtime directory.
#[tokio::test]
async fn shutdown_cancels_and_cleans_up() {
    let setup = Setup::new("shut", json!([{"delay_ms": 5000, "text": "never"}]), "");
    let pod = setup.start(None).await.unwrap();
    let dir = setup.runtime_root().join("shut");
    assert!(dir.join("sock").exists() && dir.join("status.json").exists() && dir.join("manifest.toml").exists());
    let mut c = Client::connect(pod.socket.as_deref().unwrap()).await;
    c.send(json!({"method": "run", "input": "wait"})).await;
    c.expect("run_start").await;
    c.send(json!({"method": "shutdown"})).await;
    assert_eq!(c.expect("run_end").await["outcome"], "cancelled");
    c.expect("shutdown").await;
    pod.wait().await;
    assert!(c.next().await.is_none(), "the connection closes");
    assert!(!dir.exists(), "runtime dir removed");
    let id = setup.sessions().resolve("latest", "shut").unwrap();
    let loaded = setup.sessions().load(&id).unwrap();
    assert_eq!(loaded.items, vec![Item::User { text: "wait".into() }]);
}

/// A runtime dir left by a dead process is replaced; a live pod of the same
/// name is a clear error.
#[tokio::test]
async fn stale_runtime_dir_is_replaced_and_a_live_one_refused() {
    let setup = Setup::new("stale", json!([]), "");
    let dir = setup.runtime_root().join("stale");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("sock"), "").unwrap();
    std::fs::write(dir.join("status.json"), r#"{"pod":"stale","pid":999999}"#).unwrap();
    std::fs::write(dir.join("lock"), "").unwrap();
    let pod = setup.start(None).await.unwrap();
    let mut c = Client::connect(pod.socket.as_deref().unwrap()).await;
    c.send(json!({"method": "get_history"})).await;
    c.expect("history").await;
    let err = setup.start(None).await.err().unwrap();
    assert!(err.to_string().contains("already running"), "{err}");
    c.send(json!({"method": "shutdown"})).await;
    pod.wait().await;
}

/// Above the threshold, older turns become a summary, the last turn stays,
/// the summary request names the files the pod touched, and the pod goes on
/// in a new session that records where it came from.
#[tokio::test]
async fn compaction_summarises_into_a_new_session() {
    let sb = Sandbox::new();
    let file = sb.file("proj/data.txt", "numbers\n");
    let chunk = |delta: Value, finish: Option<&str>| {
        format!("data: {}\n\n", json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))
    };
    let reply = |parts: Vec<String>| {
        let mut events = parts;
        events.push(format!(
            "data: {}\n\n",
            json!({"choices": [], "usage": {"prompt_tokens": 5000, "completion_tokens": 10}})
        ));
        events.push("data: [DONE]\n\n".into());
        Reply::events(events)
    };
    let read = json!({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
        "function": {"name": "Read", "arguments": json!({"file_path": file}).to_string()}}]});
    let server = MockServer::start(vec![
        reply(vec![chunk(read, None), chunk(json!({}), Some("tool_calls"))]),
        reply(vec![chunk(json!({"content": "it says numbers"}), Some("stop"))]),
        reply(vec![chunk(json!({"content": "SUMMARY: the user asked about data.txt"}), Some("stop"))]),
        reply(vec![chunk(json!({"content": "second answer"}), Some("stop"))]),
    ])
    .await;
    sb.file(
        "pod.toml",
        &format!(
            "[pod]\nname = \"compact\"\n[provider]\nkind = \"openai\"\nmodel = \"m\"\nbase_url = \"{}\"\nmax_retries = 0\n\
             [[scope.allow]]\ntarget = \"proj\"\npermission = \"write\"\n[compaction]\nthreshold_tokens = 1000\nkeep_turns = 1\n",
            server.url
        ),
    );
    let sessions = SessionStore::new(sb.root.join("sessions"));
    let pod = common::start_pod(&sb.root.join("pod.toml"), &sb.root, &[], None).await.unwrap();
    let mut c = Client::connect(pod.socket.as_deref().unwrap()).await;
    c.send(json!({"method": "run", "input": "what is in data.txt?"})).await;
    assert_eq!(c.expect("run_end").await["outcome"], "finished");
    let first_session = sessions.resolve("latest", "compact").unwrap();
    c.send(json!({"method": "run", "input": "and now?"})).await;
    let note = c.expect("notification").await;
    assert!(note["message"].as_str().unwrap().contains("compacted"), "{note}");
    assert_eq!(c.expect("run_end").await["outcome"], "finished");

    let summary_request = &server.requests()[2].body;
    let asked = summary_request["messages"][1]["content"].as_str().unwrap();
    assert!(asked.contains(file.to_str().unwrap()), "touched files named: {asked}");
    assert!(asked.contains("what is in data.txt?"));

    c.send(json!({"method": "get_history"})).await;
    let history = c.expect("history").await;
    let items = history["items"].as_array().unwrap();
    assert_eq!(items[0]["type"], "system");
    assert!(items[0]["text"].as_str().unwrap().contains("SUMMARY"));
    assert_eq!(items[1], json!({"type": "user", "text": "and now?"}));
    let new_session = history["greeting"]["session"].as_str().unwrap().to_string();
    assert_ne!(new_session, first_session);
    let loaded = sessions.load(&new_session).unwrap();
    assert_eq!(loaded.continues.as_deref(), Some(first_session.as_str()));
    assert_eq!(loaded.items.len(), items.len());
    c.send(json!({"method": "shutdown"})).await;
    pod.wait().await;
}

/// `kill -9` in the middle of a run: the session log loads and `--resume
/// latest` continues with everything that was completed.
#[tokio::test]
async fn kill_9_then_resume() {
    let setup = Setup::new(
        "crash",
        json!([
            {"text": "Reading.", "tool_calls": [{"name": "Read", "arguments": {"file_path": "${cwd}/notes.txt"}}]},
            {"delay_ms": 60000, "text": "never finished"},
            {"text": "resumed fine"}
        ]),
        "",
    );
    let home = setup.process_home();
    let (mut child, socket) = setup.serve_in_process(&setup.manifest(), "crash").await;
    let mut c = Client::connect(&socket).await;
    c.send(json!({"method": "run", "input": "read the notes"})).await;
    c.expect("tool_result").await;
    c.expect("turn_start").await; // the second, slow request is under way
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // A new process plays its script from the start: give it the rest.
    setup.sb.file("script.json", &json!({"turns": [{"text": "resumed fine"}]}).to_string());

    let manifest = setup.manifest();
    let out = setup
        .yoi(&["run", "--manifest", manifest.to_str().unwrap(), "--resume", "latest", "--once", "go on"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("resumed fine"));
    let sessions = SessionStore::new(home.join("sessions"));
    let loaded = sessions.load(&sessions.resolve("latest", "crash").unwrap()).unwrap();
    let texts: Vec<String> =
        loaded.items.iter().map(|i| serde_json::to_value(i).unwrap()["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(texts, ["user", "assistant", "tool_call", "tool_result", "user", "assistant"], "{:#?}", loaded.items);
    assert!(matches!(&loaded.items[3], Item::ToolResult { content, .. } if content.contains("alpha")));
}

/// Two yoi-host processes cannot hand out overlapping write scopes; the
/// claims of a killed process, its child pod's included, are reclaimed by
/// the next one.
#[tokio::test]
async fn write_scopes_of_live_pods_never_overlap_across_processes() {
    let setup = Setup::new("holder", json!([]), "");
    setup.sb.dir("proj/sub");
    let spawn = json!({"name": "kid", "task": "wait", "scope": [{"target": "sub", "permission": "write"}]});
    let script = json!({
        "turns": [{"tool_calls": [{"name": "SpawnPod", "arguments": spawn}]}, {"text": "spawned"}],
        "pods": {"holder.kid": [{"delay_ms": 60000, "text": "never"}]}
    });
    setup.sb.file("script.json", &script.to_string());
    setup.sb.file(
        "second.toml",
        "[pod]\nname = \"second\"\n[provider]\nkind = \"scripted\"\nmodel = \"s\"\nscript = \"script.json\"\n\
         [[scope.allow]]\ntarget = \"proj/sub\"\npermission = \"write\"\n",
    );
    let home = setup.process_home();
    let (mut holder, socket) = setup.serve_in_process(&setup.manifest(), "holder").await;
    let mut c = Client::connect(&socket).await;
    c.send(json!({"method": "run", "input": "spawn the kid"})).await;
    assert_eq!(c.expect("run_end").await["outcome"], "finished");
    let lock = ScopeLock::new(home.join("run/scope.lock"));
    let claims = lock.claims().unwrap();
    let kid = claims.iter().find(|c| c.pod == "holder.kid").expect("the child's claim");
    let holder_claim = claims.iter().find(|c| c.pod == "holder").expect("the holder's claim");
    // Claims are keyed by pod id; the parent link names the holder's.
    assert_eq!(kid.parent.as_deref(), Some(holder_claim.id.as_str()));
    assert_ne!(kid.id, holder_claim.id);
    assert_eq!(kid.write, [setup.sb.root.join("proj/sub")]);

    let second = setup.sb.root.join("second.toml");
    let refused = setup.yoi(&["run", "--once", "--manifest", second.to_str().unwrap(), "hi"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("overlaps") && stderr.contains("\"holder"), "{stderr}");

    holder.kill().unwrap(); // SIGKILL: its claim stays in the file
    holder.wait().unwrap();
    let after = setup.yoi(&["run", "--once", "--manifest", second.to_str().unwrap(), "hi"]).output().unwrap();
    assert!(after.status.success(), "{}", String::from_utf8_lossy(&after.stderr));
    assert!(lock.claims().unwrap().is_empty(), "all claims are gone");
}

/// SIGTERM and SIGHUP take the shutdown path in a real `yoi-host run`: the
/// run is cancelled and logged, the scope claim released and the runtime
/// dir removed, and the process exits cleanly.
#[tokio::test]
async fn sigterm_and_sighup_shut_the_pod_down_cleanly() {
    for signal in ["TERM", "HUP"] {
        let setup = Setup::new("signalled", json!([{"delay_ms": 60000, "text": "never"}]), "");
        let home = setup.process_home();
        let (mut process, socket) = setup.serve_in_process(&setup.manifest(), "signalled").await;
        let mut c = Client::connect(&socket).await;
        c.send(json!({"method": "run", "input": "wait for me"})).await;
        c.expect("run_start").await;
        let lock = ScopeLock::new(home.join("run/scope.lock"));
        assert_eq!(lock.claims().unwrap().len(), 1);

        let pid = process.id().to_string();
        assert!(std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap().success());
        assert_eq!(c.expect("run_end").await["outcome"], "cancelled", "SIG{signal}");
        c.expect("shutdown").await;
        let status = process.wait().unwrap();
        assert!(status.success(), "SIG{signal}: {status:?}");
        assert!(!setup.runtime_root().join("signalled").exists(), "SIG{signal}: runtime dir removed");
        assert!(lock.claims().unwrap().is_empty(), "SIG{signal}: claim released");
        let sessions = SessionStore::new(home.join("sessions"));
        let text = std::fs::read_to_string(
            home.join("sessions").join(format!("{}.jsonl", sessions.resolve("latest", "signalled").unwrap())),
        )
        .unwrap();
        assert!(text.contains("wait for me") && text.contains(r#""outcome":"cancelled""#), "SIG{signal}: {text}");
    }
}
