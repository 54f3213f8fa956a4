//! The pod tools end to end: scripted pods spawn, message, read, list and
//! stop child pods through the real `pod-tools` component, and the scope a
//! child holds is taken from its parent's tools, at the capability level
//! too, until the child stops.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Sandbox, plugin_dir};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use yoi_host::history::Item;
use yoi_host::pod::{Answer, PodHandle, Stamped};
use yoi_host::protocol::{Method, PodEvent, WireEvent};
use yoi_host::scope_lock::ScopeLock;
use yoi_host::session::SessionStore;

/// A pod named `lead` over `proj/` (write), with a script for it and its
/// children, the builtin plugins and the probe.
struct Tree {
    sb: Sandbox,
    lead: PodHandle,
    events: broadcast::Receiver<Stamped>,
    /// Every event of the lead seen so far.
    seen: Vec<PodEvent>,
    _plugins: tempfile::TempDir,
}

/// One scripted turn calling `tool` with `arguments`.
fn call(tool: &str, arguments: Value) -> Value {
    json!({"tool_calls": [{"name": tool, "arguments": arguments}]})
}

impl Tree {
    async fn start(lead: Value, children: Value) -> Tree {
        Tree::start_with(lead, children, "").await
    }

    /// As [`Tree::start`], with more manifest text for the lead (its
    /// children inherit it).
    async fn start_with(lead: Value, children: Value, extra_toml: &str) -> Tree {
        let sb = Sandbox::new();
        sb.file("proj/README", "top\n");
        sb.file("proj/sub/x.txt", "old\n");
        sb.dir("proj/sub/inner");
        sb.file("proj/docs/a.md", "doc\n");
        sb.dir("other");
        sb.file("script.json", &json!({"turns": lead, "pods": children}).to_string());
        sb.file(
            "pod.toml",
            ("[pod]\nname = \"lead\"\n[provider]\nkind = \"scripted\"\nmodel = \"script\"\nscript = \"script.json\"\n\
             [[scope.allow]]\ntarget = \"proj\"\npermission = \"write\"\n"
                .to_string()
                + extra_toml)
                .as_str(),
        );
        let plugins = plugin_dir(&["probe"]);
        let lead = common::start_pod(&sb.root.join("pod.toml"), &sb.root, &[plugins.path().to_path_buf()], None)
            .await
            .unwrap();
        let events = lead.subscribe();
        Tree { sb, lead, events, seen: Vec::new(), _plugins: plugins }
    }

    fn proj(&self, rel: &str) -> PathBuf {
        self.sb.root.join("proj").join(rel)
    }

    /// Runs the lead on `input` and waits for that run to end.
    async fn run(&mut self, input: &str) {
        assert_eq!(self.lead.request(Method::Run { input: input.into() }).await.unwrap(), Answer::Accepted);
        self.until(|e| matches!(e, PodEvent::RunEnd { .. })).await;
    }

    /// Waits (up to 20 s) for an event of the lead that `pick` accepts.
    async fn until(&mut self, pick: impl Fn(&PodEvent) -> bool) -> PodEvent {
        let wait = async {
            loop {
                match self.events.recv().await.map(|e| e.event) {
                    Ok(WireEvent::Pod(event)) => {
                        self.seen.push(event.clone());
                        if pick(&event) {
                            return event;
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(e) => panic!("lead's events ended: {e}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait).await.expect("the lead never got there")
    }

    /// The lead's tool results so far, in order: (tool, content, is_error).
    async fn results(&self) -> Vec<(String, String, bool)> {
        let Ok(Answer::History { items, .. }) = self.lead.request(Method::GetHistory {}).await else {
            panic!("no history")
        };
        items
            .into_iter()
            .filter_map(|item| match item {
                Item::ToolResult { name, content, is_error, .. } => Some((name, content, is_error)),
                _ => None,
            })
            .collect()
    }

    async fn shutdown(self) {
        self.lead.request(Method::Shutdown { detach_children: false }).await.unwrap();
        self.lead.wait().await;
        let claims = ScopeLock::new(self.sb.root.join("run/scope.lock")).claims().unwrap();
        assert!(claims.is_empty(), "claims left behind: {claims:?}");
    }
}

#[track_caller]
fn assert_result(result: &(String, String, bool), tool: &str, is_error: bool, needle: &str) {
    assert_eq!(result.0, tool, "{result:?}");
    assert_eq!(result.2, is_error, "{result:?}");
    assert!(result.1.contains(needle), "{needle:?} not in {result:?}");
}

#[tokio::test]
async fn spawn_checks_scope_and_lends_the_write_scope_until_the_child_stops() {
    let write = |path: &str| call("Write", json!({"file_path": format!("${{cwd}}/{path}"), "content": "new\n"}));
    let raw_write = |path: &str| call("Fs", json!({"op": "write", "path": format!("${{cwd}}/{path}"), "content": "x"}));
    let spawn = |name: &str, target: &str, permission: &str| {
        call("SpawnPod", json!({"name": name, "task": "wait", "scope": [{"target": target, "permission": permission}]}))
    };
    let lead = json!([
        spawn("out", "${cwd}/../other", "read"),
        spawn("bad name", "${cwd}/sub", "read"),
        spawn("worker", "sub", "write"),
        write("sub/x.txt"),
        raw_write("sub/y.txt"),
        call("Fs", json!({"op": "rename", "path": "${cwd}/sub", "to": "${cwd}/moved"})),
        write("README"),
        write("docs/b.md"),
        spawn("sib", "${cwd}/sub/inner", "write"),
        spawn("around", "${cwd}", "write"),
        spawn("reader", "${cwd}/sub", "read"),
        call("ListPods", json!({})),
        call("StopPod", json!({"name": "worker"})),
        call("StopPod", json!({"name": "worker"})),
        call("Read", json!({"file_path": "${cwd}/sub/x.txt"})),
        write("sub/x.txt"),
        raw_write("sub/y.txt"),
        call("ListPods", json!({})),
        {"text": "done"},
        {"text": "noted"},
        {"text": "noted"}
    ]);
    // The worker and the reader wait long enough to be alive throughout.
    let children = json!({
        "lead.worker": [{"delay_ms": 20000, "text": "never"}],
        "lead.reader": [{"delay_ms": 20000, "text": "never"}]
    });
    let mut tree = Tree::start(lead, children).await;
    tree.run("go").await;
    let r = tree.results().await;
    let sub = tree.proj("sub");
    assert_result(&r[0], "SpawnPod", true, "is outside your scope");
    assert_result(&r[1], "SpawnPod", true, "not a valid child name");
    assert_result(&r[2], "SpawnPod", false, &format!("Until it stops, {} is read-only for you", sub.display()));
    // The lent tree: refused by the file tools and by the capability itself.
    assert_result(&r[3], "Write", true, "allows only reading it");
    assert_result(&r[4], "Fs", true, "");
    assert_result(&r[5], "Fs", true, "");
    assert!(sub.exists());
    // The way down to it is read-only; the rest stays writable.
    assert_result(&r[6], "Write", true, "allows only reading it");
    assert_result(&r[7], "Write", false, "");
    assert_result(&r[8], "SpawnPod", true, "child pod \"worker\" writes there");
    assert_result(&r[9], "SpawnPod", true, "is read-only for you");
    assert_result(&r[10], "SpawnPod", false, "read");
    assert_result(&r[11], "ListPods", false, &format!("worker [running] write {}", sub.display()));
    assert!(r[11].1.contains("reader [running] read"), "{:?}", r[11]);
    assert_result(&r[12], "StopPod", false, &format!("write scope given back to you: {}", sub.display()));
    assert_result(&r[13], "StopPod", false, "already stopped");
    // Given back: writable again, by the tools and the capability.
    assert_result(&r[15], "Write", false, "");
    assert_result(&r[16], "Fs", false, "");
    assert_eq!(tree.sb.read("proj/sub/x.txt").unwrap(), "new\n");
    assert_eq!(tree.sb.read("proj/sub/y.txt").unwrap(), "x");
    assert_result(&r[17], "ListPods", false, "worker [stopped]");
    tree.shutdown().await;
}

#[tokio::test]
async fn read_output_keeps_a_cursor_across_runs_and_mid_run() {
    let read = || call("ReadPodOutput", json!({"name": "worker"}));
    let lead = json!([
        call("SpawnPod", json!({"name": "worker", "task": "count", "scope": [{"target": "docs", "permission": "read"}]})),
        // The worker streams a word every 100 ms: this read lands mid-run.
        {"delay_ms": 350, "tool_calls": [{"name": "ReadPodOutput", "arguments": {"name": "worker"}}]},
        {"delay_ms": 2500, "tool_calls": [{"name": "ReadPodOutput", "arguments": {"name": "worker"}}]},
        read(),
        call("SendToPod", json!({"name": "worker", "message": "again"})),
        call("SendToPod", json!({"name": "worker", "message": "too soon"})),
        {"delay_ms": 1500, "tool_calls": [{"name": "ReadPodOutput", "arguments": {"name": "worker"}}]},
        {"text": "done"},
        {"text": "noted"},
        {"text": "noted"}
    ]);
    let children = json!({"lead.worker": [
        {"chunk_delay_ms": 100, "text": "one two three four five six seven eight nine ten"},
        {"delay_ms": 300, "text": "second answer"}
    ]});
    let mut tree = Tree::start(lead, children).await;
    tree.run("go").await;
    let r = tree.results().await;
    assert_result(&r[0], "SpawnPod", false, "Started child pod \"worker\"");
    assert_result(&r[1], "ReadPodOutput", false, "it is running");
    assert_result(&r[2], "ReadPodOutput", false, "it is idle");
    let body = |r: &(String, String, bool)| r.1.split_once("\n\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    let first = format!("{}{}", body(&r[1]), body(&r[2]));
    assert_eq!(first.trim_end(), "one two three four five six seven eight nine ten");
    assert!(!body(&r[2]).is_empty(), "{r:?}");
    assert_result(&r[3], "ReadPodOutput", false, "No new output from \"worker\"");
    assert_result(&r[4], "SendToPod", false, "Sent");
    assert_result(&r[5], "SendToPod", true, "busy");
    assert_eq!(body(&r[6]).trim_end(), "second answer");
    // The end of each child run reached the lead as a note, mid-run.
    let notes = tree
        .seen
        .iter()
        .filter(|e| matches!(e, PodEvent::Notification { message } if message.contains("child pod \"worker\" finished its run")))
        .count();
    assert_eq!(notes, 2, "{:?}", tree.seen);
    tree.shutdown().await;
}

#[tokio::test]
async fn grandchildren_are_reachable_and_stop_with_their_parent() {
    let lead = json!([
        call("SpawnPod", json!({"name": "mid", "task": "delegate", "scope": [{"target": "sub", "permission": "write"}]})),
        {"delay_ms": 1500, "tool_calls": [{"name": "ListPods", "arguments": {}}]},
        call("ReadPodOutput", json!({"name": "mid.leaf"})),
        call("ReadPodOutput", json!({"name": "leaf"})),
        call("StopPod", json!({"name": "mid"})),
        call("ListPods", json!({})),
        {"text": "done"},
        {"text": "noted"},
        {"text": "noted"}
    ]);
    let children = json!({
        "lead.mid": [
            call("SpawnPod", json!({"name": "leaf", "task": "wait", "scope": [{"target": "${cwd}/deep", "permission": "write"}]})),
            call("StopPod", json!({"name": "lead"})),
            call("ReadPodOutput", json!({"name": "lead.mid"})),
            {"delay_ms": 20000, "text": "never"}
        ],
        "lead.mid.leaf": [{"delay_ms": 20000, "text": "never"}]
    });
    let mut tree = Tree::start(lead, children).await;
    std::fs::create_dir_all(tree.proj("sub/deep")).unwrap();
    tree.run("go").await;
    let r = tree.results().await;
    assert_result(&r[0], "SpawnPod", false, "Started");
    assert_result(&r[1], "ListPods", false, "mid [running]");
    assert!(r[1].1.contains(&format!("mid.leaf [running] write {}", tree.proj("sub/deep").display())), "{r:?}");
    assert_result(&r[2], "ReadPodOutput", false, "No new output from \"mid.leaf\"");
    assert_result(&r[3], "ReadPodOutput", true, "no such pod");
    assert_result(&r[4], "StopPod", false, "and its descendants mid.leaf");
    assert_result(&r[5], "ListPods", false, "mid [stopped]");
    assert!(r[5].1.contains("mid.leaf [stopped]"), "{r:?}");
    let claims = ScopeLock::new(tree.sb.root.join("run/scope.lock")).claims().unwrap();
    assert!(claims.iter().all(|c| !c.pod.starts_with("lead.mid")), "{claims:?}");
    // The middle pod reached its child, but not its parent, nor itself by a full name.
    let sessions = SessionStore::new(tree.sb.root.join("sessions"));
    let mid = sessions.load(&sessions.resolve("latest", "lead.mid").unwrap()).unwrap();
    let results: Vec<&Item> = mid.items.iter().filter(|i| matches!(i, Item::ToolResult { .. })).collect();
    let texts: Vec<String> = results.iter().map(|i| serde_json::to_string(i).unwrap()).collect();
    assert!(texts[0].contains("Started child pod") && texts[1].contains("no such pod"), "{texts:?}");
    assert!(texts[2].contains("no such pod"), "{texts:?}");
    tree.shutdown().await;
}

#[tokio::test]
async fn a_child_edits_its_slice_and_the_parent_reads_the_result() {
    let lead = json!([
        call(
            "SpawnPod",
            json!({
                "name": "fixer",
                "task": "Change the greeting in greet.txt to goodbye.",
                "scope": [{"target": "${cwd}/sub", "permission": "write"}],
                "instruction": "Report the change in one line."
            })
        ),
        {"text": "Waiting for fixer."},
        call("ReadPodOutput", json!({"name": "fixer"})),
        call("Read", json!({"file_path": "${cwd}/sub/greet.txt"})),
        call("StopPod", json!({"name": "fixer"})),
        {"text": "fixer changed the greeting."}
    ]);
    let children = json!({"lead.fixer": [
        {"delay_ms": 300, "tool_calls": [{"name": "Read", "arguments": {"file_path": "${cwd}/greet.txt"}}]},
        call("Edit", json!({"file_path": "${cwd}/greet.txt", "old_string": "hello", "new_string": "goodbye"})),
        {"text": "Changed hello to goodbye in greet.txt."}
    ]});
    let mut tree = Tree::start(lead, children).await;
    tree.sb.file("proj/sub/greet.txt", "hello, world\n");
    tree.run("Get the greeting changed.").await;
    // The child's finished run wakes the idle lead (or waits for its run's end).
    tree.until(|e| matches!(e, PodEvent::RunStart { cause } if cause == "notify")).await;
    tree.until(|e| matches!(e, PodEvent::RunEnd { .. })).await;
    let r = tree.results().await;
    assert_result(&r[0], "SpawnPod", false, "Started");
    assert_result(&r[1], "ReadPodOutput", false, "Changed hello to goodbye in greet.txt.");
    assert_result(&r[2], "Read", false, "goodbye, world");
    assert_result(&r[3], "StopPod", false, "given back to you");
    assert_eq!(tree.sb.read("proj/sub/greet.txt").unwrap(), "goodbye, world\n");
    tree.shutdown().await;
}

#[tokio::test]
async fn detached_children_outlive_their_parent_and_keep_their_scope() {
    let lead = json!([
        call("SpawnPod", json!({"name": "worker", "task": "wait", "scope": [{"target": "sub", "permission": "write"}]})),
        {"text": "spawned"}
    ]);
    let children = json!({"lead.worker": [{"delay_ms": 20000, "text": "never"}]});
    let mut tree = Tree::start(lead, children).await;
    tree.run("go").await;
    tree.lead.request(Method::Shutdown { detach_children: true }).await.unwrap();
    tree.lead.wait().await;
    let lock = ScopeLock::new(tree.sb.root.join("run/scope.lock"));
    let claims = lock.claims().unwrap();
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert_eq!((claims[0].pod.as_str(), claims[0].parent.as_deref()), ("lead.worker", None));
    // The worker serves on its own socket until someone stops it.
    let socket = tree.sb.root.join("run/lead.worker/sock");
    let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"{\"method\": \"shutdown\"}\n").await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), tree.lead.wait_family()).await.expect("the worker stopped");
    assert!(lock.claims().unwrap().is_empty());
}

/// Sends `shutdown` to a pod's socket, as an operator would.
async fn stop_by_operator(socket: &std::path::Path) {
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"{\"method\": \"shutdown\"}\n").await.unwrap();
}

/// Every pod tool refuses bad and extra arguments, and names no pod it
/// does not have: unknown pods are "no such pod" for send, stop and read;
/// a pod without children lists none.
#[tokio::test]
async fn pod_tools_refuse_bad_arguments_and_unknown_pods() {
    let scope = json!([{"target": "sub", "permission": "read"}]);
    let lead = json!([
        call("ListPods", json!({})),
        call("SendToPod", json!({"name": "ghost", "message": "hi"})),
        call("StopPod", json!({"name": "ghost"})),
        call("ReadPodOutput", json!({"name": "ghost"})),
        call("SpawnPod", json!({})),
        call("SpawnPod", json!({"name": "a", "task": "t", "scope": scope, "bogus": 1})),
        call("SendToPod", json!({"name": "ghost"})),
        call("SendToPod", json!({"name": "ghost", "message": "m", "urgent": true})),
        call("ReadPodOutput", json!({})),
        call("StopPod", json!({"name": 5})),
        call("ListPods", json!({"all": true})),
        {"text": "done"}
    ]);
    let mut tree = Tree::start(lead, json!({})).await;
    tree.run("go").await;
    let r = tree.results().await;
    assert_eq!(r.len(), 11, "{r:#?}");
    assert_result(&r[0], "ListPods", false, "You have no child pods");
    for (i, tool) in [(1, "SendToPod"), (2, "StopPod"), (3, "ReadPodOutput")] {
        assert_result(&r[i], tool, true, "no such pod: \"ghost\"");
    }
    let bad = [(4, "SpawnPod", "missing field"), (5, "SpawnPod", "unknown field `bogus`")];
    let bad = bad.into_iter().chain([(6, "SendToPod", "missing field `message`"), (7, "SendToPod", "unknown field")]);
    let bad = bad.chain([(8, "ReadPodOutput", "missing field `name`"), (9, "StopPod", "invalid type")]);
    for (i, tool, needle) in bad.chain([(10, "ListPods", "unknown field `all`")]) {
        assert_result(&r[i], tool, true, needle);
        assert!(r[i].1.contains("bad arguments"), "{:?}", r[i]);
    }
    tree.shutdown().await;
}

/// A pod whose manifest does not grant child pods to the pod tools is not
/// offered them, and a call anyway is refused saying so.
#[tokio::test]
async fn child_pods_need_the_grant() {
    let spawn = json!({"name": "a", "task": "t", "scope": [{"target": "sub", "permission": "read"}]});
    let lead = json!([call("SpawnPod", spawn), call("ListPods", json!({})), {"text": "done"}]);
    let grant = "[[plugins.grant]]\nplugin = \"pod_tools\"\npods = false\n";
    let mut tree = Tree::start_with(lead, json!({}), grant).await;
    let Answer::History { greeting, .. } = tree.lead.request(Method::GetHistory {}).await.unwrap() else { panic!() };
    assert!(!greeting.tools.iter().any(|t| t == "SpawnPod"), "{:?}", greeting.tools);
    assert!(greeting.tools.iter().any(|t| t == "Read"), "{:?}", greeting.tools);
    tree.run("go").await;
    let r = tree.results().await;
    assert_result(&r[0], "SpawnPod", true, "was not granted child pods");
    assert_result(&r[1], "ListPods", false, "You have no child pods");
    tree.shutdown().await;
}

/// The limits on children: a second live child past `max_children` and a
/// grandchild past `max_depth` are refused, naming the limit.
#[tokio::test]
async fn children_and_depth_are_limited() {
    let spawn = |name: &str, target: &str| {
        call("SpawnPod", json!({"name": name, "task": "t", "scope": [{"target": target, "permission": "read"}]}))
    };
    let lead = json!([spawn("a", "sub"), spawn("b", "docs"), {"text": "done"}, {"text": "noted"}, {"text": "noted"}]);
    let children = json!({"lead.a": [spawn("deeper", "${cwd}"), {"delay_ms": 20000, "text": "never"}]});
    let limits = "[limits]\nmax_children = 1\nmax_depth = 1\n";
    let mut tree = Tree::start_with(lead, children, limits).await;
    tree.run("go").await;
    let r = tree.results().await;
    assert_result(&r[0], "SpawnPod", false, "Started child pod \"a\"");
    assert_result(&r[1], "SpawnPod", true, "[limits] max_children = 1");
    // The child's own attempt, read from its socket.
    let socket = tree.sb.root.join("run/lead.a/sock");
    let mut stream = tokio::io::BufReader::new(tokio::net::UnixStream::connect(&socket).await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let refusal = loop {
        tokio::io::AsyncWriteExt::write_all(stream.get_mut(), b"{\"method\": \"get_history\"}\n").await.unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            tokio::io::AsyncBufReadExt::read_line(&mut stream, &mut line).await.unwrap();
            if line.contains("\"history\"") {
                break;
            }
        }
        let event: Value = serde_json::from_str(&line).unwrap();
        let result = event["items"].as_array().unwrap().iter().find(|i| i["type"] == "tool_result").cloned();
        if let Some(result) = result {
            break result;
        }
        assert!(tokio::time::Instant::now() < deadline, "the child never tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(refusal["is_error"], true, "{refusal}");
    assert!(refusal["content"].as_str().unwrap().contains("max_depth = 1"), "{refusal}");
    tree.shutdown().await;
}

/// A parent hears of its children in notes: a failed run (with the error),
/// a pause before a tool call, a finished run, and a stop it did not ask
/// for (with the write scope it gets back).
#[tokio::test]
async fn child_notes_say_failed_paused_finished_and_stopped() {
    let spawn = |name: &str, target: &str, permission: &str| {
        let scope = json!([{"target": target, "permission": permission}]);
        call("SpawnPod", json!({"name": name, "task": "t", "scope": scope}))
    };
    let mut lead =
        vec![spawn("failer", "sub", "read"), spawn("pauser", "docs", "read"), spawn("quitter", "sub/inner", "write")];
    lead.push(json!({"text": "spawned"}));
    lead.extend((0..10).map(|_| json!({"text": "noted"})));
    let children = json!({
        "lead.failer": [{"error": {"message": "model exploded"}}],
        "lead.pauser": [call("Glob", json!({"pattern": "*"}))],
        "lead.quitter": [{"text": "bye"}]
    });
    let mut tree = Tree::start_with(json!(lead), children, "[agent]\npause_before = [\"Glob\"]\n").await;
    tree.run("go").await;
    let note = |who: &'static str, what: &'static str| move |e: &PodEvent| matches!(e, PodEvent::Notification { message } if message.contains(who) && message.contains(what));
    let seen_or_wait = async |tree: &mut Tree, who: &'static str, what: &'static str| {
        let pick = note(who, what);
        if !tree.seen.iter().any(&pick) {
            tree.until(pick).await;
        }
    };
    seen_or_wait(&mut tree, "\"failer\"", "model exploded").await;
    assert!(tree.seen.iter().any(note("\"failer\"", "failed its run")), "{:?}", tree.seen);
    seen_or_wait(&mut tree, "\"pauser\"", "paused before a tool call, waiting for an operator").await;
    seen_or_wait(&mut tree, "\"quitter\"", "finished its run; 5 bytes of its output are unread").await;
    stop_by_operator(&tree.sb.root.join("run/lead.quitter/sock")).await;
    let given_back = format!("child pod \"quitter\" stopped; {} is yours again", tree.proj("sub/inner").display());
    tree.until(|e| matches!(e, PodEvent::Notification { message } if *message == given_back)).await;
    tree.shutdown().await;
}

/// ReadPodOutput past the kept tail says how many bytes are gone, and a
/// stopped child's output can still be read, with its state; SendToPod to
/// it says it is stopped.
#[tokio::test]
async fn read_output_reports_lost_bytes_and_a_stopped_child() {
    let spawn = json!({"name": "talker", "task": "talk", "scope": [{"target": "docs", "permission": "read"}]});
    let read = call("ReadPodOutput", json!({"name": "talker"}));
    let send = call("SendToPod", json!({"name": "talker", "message": "more"}));
    let stop = call("StopPod", json!({"name": "talker"}));
    let lead = json!([call("SpawnPod", spawn), {"text": "wait"}, read, stop, read, send, {"text": "done"}]);
    let long = "x".repeat((1 << 20) + 5000);
    let mut tree = Tree::start(lead, json!({"lead.talker": [{"text": long}]})).await;
    tree.run("go").await;
    // The talker's finished run wakes the lead, which reads and stops it.
    tree.until(|e| matches!(e, PodEvent::RunEnd { .. })).await;
    let r = tree.results().await;
    assert_result(&r[1], "ReadPodOutput", false, "earlier bytes were no longer kept");
    assert!(r[1].1.contains("it is idle"), "{:?}", r[1]);
    assert_result(&r[2], "StopPod", false, "Stopped pod \"talker\"");
    assert_result(&r[3], "ReadPodOutput", false, "from \"talker\"; it is stopped");
    assert_result(&r[4], "SendToPod", true, "pod \"talker\" is stopped; spawn it again");
    tree.shutdown().await;
}

/// A pod that spawns and stops children for a long time keeps only its
/// last 16 stopped children (and their output); older ones are forgotten.
#[tokio::test]
async fn only_the_latest_stopped_children_are_kept() {
    let mut lead = Vec::new();
    for i in 0..18 {
        let scope = json!([{"target": "docs", "permission": "read"}]);
        lead.push(call("SpawnPod", json!({"name": format!("c{i}"), "task": "t", "scope": scope})));
        lead.push(call("StopPod", json!({"name": format!("c{i}")})));
    }
    lead.push(call("ListPods", json!({})));
    lead.push(call("ReadPodOutput", json!({"name": "c0"})));
    lead.push(json!({"text": "done"}));
    let children: serde_json::Map<String, Value> =
        (0..18).map(|i| (format!("lead.c{i}"), json!([{"delay_ms": 20000, "text": "never"}]))).collect();
    let mut tree = Tree::start(json!(lead), Value::Object(children)).await;
    tree.run("go").await;
    let r = tree.results().await;
    let listed = &r[36];
    assert_result(listed, "ListPods", false, "16 pods, 0 alive");
    // The result is the summary, a blank line, then one line per pod.
    let names: Vec<&str> = listed.1.lines().skip(2).map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(names.len(), 16, "{names:?}");
    assert!(!names.contains(&"c0") && !names.contains(&"c1") && names.contains(&"c17"), "{names:?}");
    assert_result(&r[37], "ReadPodOutput", true, "no such pod");
    tree.shutdown().await;
}

/// Two spawns of one name in one turn run at once; one child starts, the
/// other spawn is refused, and no pod is left behind unlisted.
#[tokio::test]
async fn concurrent_spawns_of_one_name_start_one_child() {
    let spawn = |target: &str| {
        let scope = json!([{"target": target, "permission": "read"}]);
        json!({"name": "SpawnPod", "arguments": {"name": "twin", "task": "t", "scope": scope}})
    };
    let lead = json!([{"tool_calls": [spawn("sub"), spawn("docs")]}, call("ListPods", json!({})), {"text": "done"}]);
    let mut tree = Tree::start(lead, json!({"lead.twin": [{"delay_ms": 20000, "text": "never"}]})).await;
    tree.run("go").await;
    let r = tree.results().await;
    let started = r[..2].iter().filter(|(_, _, is_error)| !is_error).count();
    assert_eq!(started, 1, "{r:#?}");
    let refused = r[..2].iter().find(|(_, _, is_error)| *is_error).unwrap();
    assert!(refused.1.contains("a child named \"twin\" is alive"), "{refused:?}");
    assert_result(&r[2], "ListPods", false, "1 pods, 1 alive");
    tree.shutdown().await;
}
