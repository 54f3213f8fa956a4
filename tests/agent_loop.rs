//! The conversation loop: the model's tool calls run through the real plugin
//! runtime, bad calls become error results, runs stop at their limits, and
//! cancellation, hooks and concurrency behave as the pod layer needs.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mock_http::{MockServer, Reply};
use common::{Sandbox, host_with, pod, rule};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use yoi_host::agent::{Agent, AgentConfig, Event, Hooks, NoHooks, Outcome, PluginTools, ToolDecision, ToolRunner};
use yoi_host::history::{Item, pending_calls};
use yoi_host::manifest::{ProviderKind, ProviderSection};
use yoi_host::plugin::{CallLimits, ToolError, ToolInfo, ToolOutput};
use yoi_host::provider::scripted::{Script, Scripted};
use yoi_host::provider::{RetryPolicy, Usage, from_manifest};
use yoi_host::scope::Permission::Write;

fn scripted(turns: Value, cwd: &std::path::Path) -> Scripted {
    let script: Script = serde_json::from_value(json!({ "turns": turns })).unwrap();
    Scripted::new("script", script, cwd)
}

fn config(max_turns: u32) -> AgentConfig {
    AgentConfig {
        system: "You are a test.".into(),
        max_tokens: 1000,
        max_turns,
        temperature: None,
        retry: RetryPolicy { max_retries: 2, base_delay: Duration::from_millis(5), ..RetryPolicy::default() },
    }
}

fn user(text: &str) -> Vec<Item> {
    vec![Item::User { text: text.into() }]
}

/// Checks the invariants the loop promises about a history.
fn assert_consistent(history: &[Item]) {
    for (i, item) in history.iter().enumerate() {
        if let Item::ToolCall { id, .. } = item {
            let results =
                history[i..].iter().filter(|r| matches!(r, Item::ToolResult { id: rid, .. } if rid == id)).count();
            assert_eq!(results, 1, "call {id} has {results} results: {history:#?}");
        }
    }
    let json = serde_json::to_string(history).unwrap();
    assert!(!json.contains("\"arguments\":null"), "{json}");
}

/// The model reads a file, edits it through the real fs-tools component, and
/// the edit is on disk.
#[tokio::test]
async fn read_then_edit_lands_on_disk() {
    let sb = Sandbox::new();
    let file = sb.file("proj/greet.txt", "hello world\n");
    let host = host_with(&[]).await;
    let tools =
        PluginTools { host: &host, pod: pod(&[rule(&sb.root.join("proj"), Write)], &[], CallLimits::default()) };
    let provider = scripted(
        json!([
            {"text": "Let me read it.", "tool_calls": [{"name": "Read", "arguments": {"file_path": "${cwd}/greet.txt"}}]},
            {"tool_calls": [{"name": "Edit", "arguments": {"file_path": "${cwd}/greet.txt", "old_string": "world", "new_string": "pods"}}]},
            {"text": "Done: it now greets pods."}
        ]),
        &sb.root.join("proj"),
    );
    let cfg = config(10);
    let agent = Agent { provider: &provider, tools: &tools, config: &cfg };
    let mut history = user("change world to pods");
    let mut events = Vec::new();
    let outcome =
        agent.run(&mut history, &mut NoHooks, &mut |e| events.push(e), &CancellationToken::new()).await.unwrap();
    assert_eq!(outcome, Outcome::Finished);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "hello pods\n");
    assert_consistent(&history);
    let kinds: Vec<&str> = history
        .iter()
        .map(|i| match i {
            Item::User { .. } => "user",
            Item::Assistant { .. } => "assistant",
            Item::ToolCall { .. } => "call",
            Item::ToolResult { is_error: false, .. } => "result",
            Item::ToolResult { is_error: true, .. } => "error",
            Item::System { .. } => "system",
        })
        .collect();
    assert_eq!(kinds, ["user", "assistant", "call", "result", "call", "result", "assistant"]);
    if let Item::ToolResult { content, .. } = &history[3] {
        assert!(content.contains("     1\thello world"), "{content}");
    }

    // The events tell the story in order, streamed as deltas.
    let names: Vec<String> = events
        .iter()
        .filter(|e| {
            !matches!(e, Event::ItemAppended { .. } | Event::TextDelta { .. } | Event::ToolCallArgsDelta { .. })
        })
        .map(|e| serde_json::to_value(e).unwrap()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        &names[..8],
        [
            "turn_start",
            "tool_call_start",
            "usage",
            "text_done",
            "tool_call_done",
            "tool_result",
            "turn_end",
            "turn_start"
        ]
        .map(String::from),
        "{names:?}"
    );
    assert!(events.iter().filter(|e| matches!(e, Event::TextDelta { .. })).count() > 3);
    assert!(events.iter().any(|e| matches!(e, Event::ToolCallArgsDelta { .. })));
}

/// Unknown tools, arguments that are not JSON, not an object or empty, and
/// failing tools all come back as error results; the loop carries on and
/// nothing `null` enters the history.
#[tokio::test]
async fn bad_tool_calls_become_error_results() {
    let sb = Sandbox::new();
    sb.dir("proj");
    let host = host_with(&[]).await;
    let tools =
        PluginTools { host: &host, pod: pod(&[rule(&sb.root.join("proj"), Write)], &[], CallLimits::default()) };
    let provider = scripted(
        json!([
            {"tool_calls": [
                {"name": "NoSuchTool", "arguments": {}},
                {"name": "Read", "arguments_raw": "{\"file_path\": "},
                {"name": "Read", "arguments_raw": ""},
                {"name": "Read", "arguments_raw": "null"},
                {"name": "Read", "arguments": {"file_path": "/etc/passwd"}}
            ]},
            {"text": "I see, those failed."}
        ]),
        &sb.root,
    );
    let cfg = config(10);
    let agent = Agent { provider: &provider, tools: &tools, config: &cfg };
    let mut history = user("try things");
    let outcome = agent.run(&mut history, &mut NoHooks, &mut |_| {}, &CancellationToken::new()).await.unwrap();
    assert_eq!(outcome, Outcome::Finished);
    assert_consistent(&history);
    let errors: Vec<&str> = history
        .iter()
        .filter_map(|i| match i {
            Item::ToolResult { content, is_error: true, .. } => Some(content.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 5, "{history:#?}");
    assert!(errors[0].contains("unknown_tool"), "{}", errors[0]);
    assert!(errors[1].contains("not valid JSON"), "{}", errors[1]);
    assert!(errors[2].contains("empty"), "{}", errors[2]);
    assert!(errors[3].contains("null"), "{}", errors[3]);
    assert!(errors[4].contains("permission_denied"), "{}", errors[4]);
    assert!(matches!(history.last(), Some(Item::Assistant { .. })));
}

/// A model that keeps calling tools stops at max_turns, with every call answered.
#[tokio::test]
async fn max_turns_stops_the_run() {
    let sb = Sandbox::new();
    let turn = json!({"tool_calls": [{"name": "Glob", "arguments": {"pattern": "*"}}]});
    let provider = scripted(json!([turn, turn, turn, turn]), &sb.root);
    let host = host_with(&[]).await;
    let tools = PluginTools { host: &host, pod: pod(&[rule(&sb.root, Write)], &[], CallLimits::default()) };
    let cfg = config(2);
    let agent = Agent { provider: &provider, tools: &tools, config: &cfg };
    let mut history = user("loop");
    let outcome = agent.run(&mut history, &mut NoHooks, &mut |_| {}, &CancellationToken::new()).await.unwrap();
    assert_eq!(outcome, Outcome::LimitReached);
    assert_eq!(provider.played(), 2);
    assert_consistent(&history);
}

/// Cancelling while a tool runs returns promptly and answers the call with a
/// `cancelled` error result.
#[tokio::test]
async fn cancel_during_a_tool_call() {
    let sb = Sandbox::new();
    let host = host_with(&["probe"]).await;
    let tools = PluginTools { host: &host, pod: pod(&[], &[], CallLimits::default()) };
    let provider = scripted(
        json!([{"tool_calls": [{"name": "Spin", "arguments": {}}, {"name": "Noop", "arguments": {}}]}, {"text": "never"}]),
        &sb.root,
    );
    let cfg = config(10);
    let agent = Agent { provider: &provider, tools: &tools, config: &cfg };
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let signalled = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
        Instant::now()
    });
    let mut history = user("spin");
    let outcome = agent.run(&mut history, &mut NoHooks, &mut |_| {}, &cancel).await.unwrap();
    let lag = Instant::now() - signalled.await.unwrap();
    assert_eq!(outcome, Outcome::Cancelled);
    assert!(lag < Duration::from_millis(100), "{lag:?}");
    assert_consistent(&history);
    let results: Vec<(&str, bool)> = history
        .iter()
        .filter_map(|i| match i {
            Item::ToolResult { name, is_error, .. } => Some((name.as_str(), *is_error)),
            _ => None,
        })
        .collect();
    assert_eq!(results, [("Spin", true), ("Noop", false)], "the finished call keeps its result");
}

/// A fake tool that sleeps, to observe concurrency.
struct Sleepy {
    log: Arc<Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl ToolRunner for Sleepy {
    fn tools(&self) -> Vec<ToolInfo> {
        vec![ToolInfo { name: "Sleep".into(), description: "sleeps".into(), input_schema: json!({"type": "object"}) }]
    }
    async fn call(&self, name: &str, input: &str) -> Result<ToolOutput, ToolError> {
        self.log.lock().unwrap().push(format!("{name} {input}"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(ToolOutput { summary: format!("slept {input}"), content: None })
    }
}

/// Independent calls of one response run concurrently; results keep call
/// order. The clock is paused: three 300 ms sleeps in a row would take
/// 900 ms of it, at once they take 300 ms.
#[tokio::test(start_paused = true)]
async fn tool_calls_of_one_response_run_concurrently() {
    let sb = Sandbox::new();
    let calls: Vec<Value> = (0..3).map(|i| json!({"name": "Sleep", "arguments": {"n": i}})).collect();
    let provider = scripted(json!([{"tool_calls": calls}, {"text": "rested"}]), &sb.root);
    let tools = Sleepy { log: Arc::default() };
    let cfg = config(10);
    let agent = Agent { provider: &provider, tools: &tools, config: &cfg };
    let mut history = user("sleep");
    let started = tokio::time::Instant::now();
    agent.run(&mut history, &mut NoHooks, &mut |_| {}, &CancellationToken::new()).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    let order: Vec<&str> = history
        .iter()
        .filter_map(|i| match i {
            Item::ToolResult { content, .. } => Some(content.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(order, [r#"slept {"n":0}"#, r#"slept {"n":1}"#, r#"slept {"n":2}"#]);
}

/// Hooks that inject a note once, deny one tool, and pause on another.
#[derive(Default)]
struct TestHooks {
    requests: u32,
    pause_on: Option<String>,
    usages: Vec<Usage>,
}

#[async_trait::async_trait]
impl Hooks for TestHooks {
    async fn before_request(&mut self, _items: &mut Vec<Item>, _last: Option<Usage>) -> Vec<String> {
        self.requests += 1;
        if self.requests == 1 { vec!["child pod finished".into()] } else { vec![] }
    }
    async fn before_tool_call(&mut self, _id: &str, name: &str, _arguments: &Map<String, Value>) -> ToolDecision {
        match name {
            "Write" => ToolDecision::Deny("writes are off today".into()),
            n if Some(n) == self.pause_on.as_deref() => ToolDecision::Pause,
            _ => ToolDecision::Allow,
        }
    }
    async fn after_turn(&mut self, _items: &[Item], usage: &Usage) {
        self.usages.push(*usage);
    }
}

/// A note from `before_request` reaches that request only (seen on the
/// wire) and never enters the history; a denied call gets an error result.
#[tokio::test]
async fn notes_are_transient_and_denials_are_answered() {
    let openai = |parts: Vec<Value>| -> Vec<String> {
        let mut out: Vec<String> = parts
            .into_iter()
            .map(|delta| {
                format!("data: {}\n\n", json!({"choices": [{"index": 0, "delta": delta, "finish_reason": null}]}))
            })
            .collect();
        out.push(format!("data: {}\n\n", json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})));
        out.push("data: [DONE]\n\n".into());
        out
    };
    let call = json!({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
        "function": {"name": "Write", "arguments": "{\"file_path\": \"/x\", \"content\": \"y\"}"}}]});
    let server = MockServer::start(vec![
        Reply::events(openai(vec![call])),
        Reply::events(openai(vec![json!({"content": "Understood."})])),
    ])
    .await;
    let section = ProviderSection {
        kind: ProviderKind::Openai,
        model: "m".into(),
        base_url: Some(server.url.clone()),
        api_key_env: None,
        script: None,
        connect_timeout_ms: 2000,
        first_event_timeout_ms: 2000,
        idle_timeout_ms: 2000,
        max_retries: 0,
        retry_base_ms: 10,
    };
    let provider = from_manifest(&section, "/".as_ref(), "/".as_ref(), "p", &|_| None, None).unwrap();
    let tools = Sleepy { log: Arc::default() };
    let cfg = config(10);
    let agent = Agent { provider: provider.as_ref(), tools: &tools, config: &cfg };
    let mut hooks = TestHooks::default();
    let mut history = user("write something");
    let outcome = agent.run(&mut history, &mut hooks, &mut |_| {}, &CancellationToken::new()).await.unwrap();
    assert_eq!(outcome, Outcome::Finished);
    let requests = server.requests();
    let system = |i: usize| requests[i].body["messages"][0]["content"].as_str().unwrap().to_string();
    assert!(system(0).contains("child pod finished"), "{}", system(0));
    assert!(!system(1).contains("child pod finished"));
    assert!(!serde_json::to_string(&history).unwrap().contains("child pod finished"));
    assert!(tools.log.lock().unwrap().is_empty(), "the denied call did not run");
    assert!(
        matches!(&history[2], Item::ToolResult { is_error: true, content, .. } if content.contains("writes are off"))
    );
    assert_eq!(hooks.usages.len(), 2, "after_turn saw both turns");
}

/// A pause leaves the calls pending; running again resumes with them.
#[tokio::test]
async fn pause_then_resume_runs_the_pending_calls() {
    let sb = Sandbox::new();
    let provider = scripted(json!([{"tool_calls": [{"name": "Sleep", "arguments": {}}]}, {"text": "done"}]), &sb.root);
    let tools = Sleepy { log: Arc::default() };
    let cfg = config(10);
    let agent = Agent { provider: &provider, tools: &tools, config: &cfg };
    let mut hooks = TestHooks { pause_on: Some("Sleep".into()), ..TestHooks::default() };
    let mut history = user("sleep");
    let outcome = agent.run(&mut history, &mut hooks, &mut |_| {}, &CancellationToken::new()).await.unwrap();
    assert_eq!(outcome, Outcome::Paused);
    assert_eq!(pending_calls(&history).len(), 1);
    assert!(tools.log.lock().unwrap().is_empty());

    hooks.pause_on = None;
    let outcome = agent.run(&mut history, &mut hooks, &mut |_| {}, &CancellationToken::new()).await.unwrap();
    assert_eq!(outcome, Outcome::Finished);
    assert_eq!(tools.log.lock().unwrap().len(), 1);
    assert_consistent(&history);
    assert!(matches!(history.last(), Some(Item::Assistant { text }) if text == "done"));
}

/// A provider failure ends the run with the error and leaves the history as
/// it was before the failed request; transient failures are retried first.
#[tokio::test]
async fn provider_errors_leave_the_history_intact() {
    let sb = Sandbox::new();
    let provider = scripted(
        json!([
            {"error": {"message": "overloaded", "retryable": true, "status": 529}},
            {"tool_calls": [{"name": "Sleep", "arguments": {}}]},
            {"error": {"message": "invalid request", "status": 400}}
        ]),
        &sb.root,
    );
    let tools = Sleepy { log: Arc::default() };
    let cfg = config(10);
    let agent = Agent { provider: &provider, tools: &tools, config: &cfg };
    let mut history = user("go");
    let error = agent.run(&mut history, &mut NoHooks, &mut |_| {}, &CancellationToken::new()).await.unwrap_err();
    assert!(error.to_string().contains("invalid request"), "{error}");
    assert_consistent(&history);
    assert_eq!(history.len(), 3, "user, call, result: {history:#?}");
    assert!(matches!(history.last(), Some(Item::ToolResult { .. })));
}
