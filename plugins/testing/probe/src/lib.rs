//! Test plugin for the host's runtime tests and benchmarks.
//!
//! Well-behaved tools (`Noop`, `Echo`, `Print`, `State`, `Context`, `Env`), tools
//! that misbehave on purpose (`Spin`, `Hog`, `Panic`, `Flood`, `BadUtf8`,
//! `EmptySummary`), and `Fs`, which performs one raw `wasi:filesystem`
//! operation with exactly the flags a hostile plugin would use, so the sandbox
//! tests can attack the preopens directly.

use serde::Deserialize;
use serde_json::json;
use wasi::filesystem::types::{Descriptor, DescriptorFlags, ErrorCode, OpenFlags, PathFlags};
use yoi_plugin_sdk::{Guest, ToolError, ToolInfo, ToolOutput, context, log, parse_input, state, summary, tool_info};

struct Probe;

fn object(properties: serde_json::Value) -> serde_json::Value {
    json!({"type": "object", "properties": properties})
}

impl Guest for Probe {
    fn describe() -> Vec<ToolInfo> {
        vec![
            tool_info("Noop", "Does nothing.", object(json!({}))),
            tool_info("Echo", "Returns `text` as content.", object(json!({"text": {"type": "string"}}))),
            tool_info(
                "Print",
                "Writes `text` to stdout and stderr and logs it.",
                object(json!({"text": {"type": "string"}})),
            ),
            tool_info(
                "State",
                "Operates on the per-pod state store.",
                object(json!({"op": {"type": "string"}, "key": {"type": "string"}, "value": {"type": "string"}})),
            ),
            tool_info("Context", "Returns the pod context as JSON.", object(json!({}))),
            tool_info(
                "Env",
                "Reports environment variables, the argument count and a TCP connect attempt.",
                object(json!({"connect": {"type": "string"}})),
            ),
            tool_info("Spin", "Loops forever.", object(json!({}))),
            tool_info("Hog", "Allocates memory until it runs out.", object(json!({}))),
            tool_info("Panic", "Panics with `message`.", object(json!({"message": {"type": "string"}}))),
            tool_info(
                "Flood",
                "Returns `bytes` bytes of content made of two-byte characters.",
                object(json!({"bytes": {"type": "integer"}})),
            ),
            tool_info("BadUtf8", "Returns a summary that is not valid UTF-8.", object(json!({}))),
            tool_info("EmptySummary", "Returns an empty summary.", object(json!({}))),
            tool_info(
                "Fs",
                "Performs one raw filesystem operation.",
                object(json!({
                    "op": {"type": "string"}, "path": {"type": "string"}, "to": {"type": "string"}, "content": {"type": "string"}
                })),
            ),
        ]
    }

    fn call(tool: String, input: String) -> Result<ToolOutput, ToolError> {
        match tool.as_str() {
            "Noop" => Ok(summary("ok")),
            "Echo" => {
                let text: Text = parse_input(&input)?;
                Ok(ToolOutput { summary: "echoed".into(), content: Some(text.text) })
            }
            "Print" => {
                let text: Text = parse_input(&input)?;
                println!("stdout: {}", text.text);
                eprintln!("stderr: {}", text.text);
                log::log(log::Level::Info, &format!("log: {}", text.text));
                Ok(summary("printed"))
            }
            "State" => state_op(&input),
            "Context" => {
                let pod = context::pod();
                let rules = |rules: Vec<context::ScopeRule>| -> Vec<serde_json::Value> {
                    rules
                        .into_iter()
                        .map(|r| json!({"target": r.target, "write": matches!(r.permission, context::Permission::Write), "recursive": r.recursive}))
                        .collect()
                };
                let value = json!({"name": pod.name, "working_dir": pod.working_dir, "allow": rules(pod.allow), "deny": rules(pod.deny)});
                Ok(ToolOutput { summary: "context".into(), content: Some(value.to_string()) })
            }
            "Env" => {
                #[derive(Deserialize)]
                struct EnvInput {
                    connect: Option<String>,
                }
                let env: EnvInput = parse_input(&input)?;
                let connect = env.connect.map(|addr| match std::net::TcpStream::connect(&addr) {
                    Ok(_) => "connected".to_string(),
                    Err(e) => format!("refused: {e}"),
                });
                let value = json!({
                    "vars": std::env::vars().collect::<std::collections::BTreeMap<_, _>>(),
                    "args": std::env::args().count(),
                    "connect": connect,
                });
                Ok(ToolOutput { summary: "env".into(), content: Some(value.to_string()) })
            }
            "Spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "Hog" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "Panic" => {
                let text: Message = parse_input(&input)?;
                panic!("{}", text.message)
            }
            "Flood" => {
                #[derive(Deserialize)]
                struct Flood {
                    bytes: usize,
                }
                let flood: Flood = parse_input(&input)?;
                Ok(ToolOutput { summary: "flooded".into(), content: Some("é".repeat(flood.bytes / 2)) })
            }
            "BadUtf8" => {
                // Deliberately breaks the string invariant so the host sees
                // bytes that are not UTF-8 when it lifts the result.
                let bytes = vec![b'o', b'k', 0xff, 0xfe];
                Ok(summary(unsafe { String::from_utf8_unchecked(bytes) }))
            }
            "EmptySummary" => Ok(summary("")),
            "Fs" => fs_op(&input),
            other => Err(ToolError::InvalidInput(format!("unknown tool {other}"))),
        }
    }
}

#[derive(Deserialize)]
struct Text {
    text: String,
}

#[derive(Deserialize)]
struct Message {
    message: String,
}

fn state_op(input: &str) -> Result<ToolOutput, ToolError> {
    #[derive(Deserialize)]
    struct StateInput {
        op: String,
        #[serde(default)]
        key: String,
        value: Option<String>,
    }
    let req: StateInput = parse_input(input)?;
    let content = match req.op.as_str() {
        "get" => state::get(&req.key).map(|v| String::from_utf8_lossy(&v).into_owned()),
        "set" => {
            state::set(&req.key, req.value.unwrap_or_default().as_bytes()).map_err(ToolError::Failed)?;
            None
        }
        "fill" => {
            // Writes 512 KiB values until the store refuses.
            let chunk = vec![b'x'; 512 * 1024];
            let mut n = 0;
            let refusal = loop {
                if let Err(e) = state::set(&format!("{}{n}", req.key), &chunk) {
                    break e;
                }
                n += 1;
            };
            Some(format!("{n} values stored; then: {refusal}"))
        }
        "delete" => {
            state::delete(&req.key);
            None
        }
        "list" => Some(state::list_keys(&req.key).join(",")),
        other => return Err(ToolError::InvalidInput(format!("unknown op {other}"))),
    };
    Ok(ToolOutput { summary: format!("state {}", req.op), content })
}

#[derive(Deserialize)]
struct FsInput {
    op: String,
    path: String,
    to: Option<String>,
    content: Option<String>,
}

/// Finds the preopen with the longest prefix of `path` and returns it with
/// the rest of the path, relative to it.
fn resolve(path: &str) -> Result<(Descriptor, String), ToolError> {
    let mut best: Option<(Descriptor, String, usize)> = None;
    for (dir, root) in wasi::filesystem::preopens::get_directories() {
        let rest = if path == root {
            Some(".".to_string())
        } else {
            path.strip_prefix(&format!("{}/", root.trim_end_matches('/')))
                .map(|rest| if rest.is_empty() { ".".to_string() } else { rest.to_string() })
        };
        if let Some(rest) = rest
            && best.as_ref().is_none_or(|(_, _, len)| root.len() > *len)
        {
            best = Some((dir, rest, root.len()));
        }
    }
    best.map(|(d, r, _)| (d, r)).ok_or_else(|| ToolError::NotFound(format!("{path}: not under any preopen")))
}

fn fs_err(what: &str, e: ErrorCode) -> ToolError {
    match e {
        ErrorCode::NotPermitted | ErrorCode::Access | ErrorCode::ReadOnly => {
            ToolError::PermissionDenied(format!("{what}: {e:?}"))
        }
        ErrorCode::NoEntry => ToolError::NotFound(format!("{what}: {e:?}")),
        _ => ToolError::Failed(format!("{what}: {e:?}")),
    }
}

fn read_all(file: &Descriptor) -> Result<Vec<u8>, ErrorCode> {
    let mut out = Vec::new();
    loop {
        let (chunk, end) = file.read(65536, out.len() as u64)?;
        out.extend_from_slice(&chunk);
        if end || chunk.is_empty() {
            return Ok(out);
        }
    }
}

fn fs_op(input: &str) -> Result<ToolOutput, ToolError> {
    let req: FsInput = parse_input(input)?;
    let (dir, rel) = resolve(&req.path)?;
    let what = format!("{} {}", req.op, req.path);
    let e = |err| fs_err(&what, err);
    let target = || -> Result<(Descriptor, String), ToolError> {
        resolve(req.to.as_deref().ok_or_else(|| ToolError::InvalidInput("`to` is required".into()))?)
    };
    let content = match req.op.as_str() {
        "read" => {
            let file =
                dir.open_at(PathFlags::SYMLINK_FOLLOW, &rel, OpenFlags::empty(), DescriptorFlags::READ).map_err(e)?;
            Some(String::from_utf8_lossy(&read_all(&file).map_err(e)?).into_owned())
        }
        "write" => {
            let file = dir
                .open_at(
                    PathFlags::SYMLINK_FOLLOW,
                    &rel,
                    OpenFlags::CREATE | OpenFlags::TRUNCATE,
                    DescriptorFlags::WRITE,
                )
                .map_err(e)?;
            file.write(req.content.unwrap_or_default().as_bytes(), 0).map_err(e)?;
            None
        }
        "open_truncate_readonly" => {
            // Truncate through a descriptor opened only for reading.
            dir.open_at(PathFlags::SYMLINK_FOLLOW, &rel, OpenFlags::TRUNCATE, DescriptorFlags::READ).map_err(e)?;
            None
        }
        "set_size" => {
            let file =
                dir.open_at(PathFlags::SYMLINK_FOLLOW, &rel, OpenFlags::empty(), DescriptorFlags::READ).map_err(e)?;
            file.set_size(0).map_err(e)?;
            None
        }
        "list" => {
            let d =
                dir.open_at(PathFlags::SYMLINK_FOLLOW, &rel, OpenFlags::DIRECTORY, DescriptorFlags::READ).map_err(e)?;
            let stream = d.read_directory().map_err(e)?;
            let mut names = Vec::new();
            while let Some(entry) = stream.read_directory_entry().map_err(e)? {
                names.push(entry.name);
            }
            names.sort();
            Some(names.join("\n"))
        }
        "stat" => {
            let st = dir.stat_at(PathFlags::SYMLINK_FOLLOW, &rel).map_err(e)?;
            Some(format!("{:?} {}", st.type_, st.size))
        }
        "mkdir" => {
            dir.create_directory_at(&rel).map_err(e)?;
            None
        }
        "remove" => {
            dir.unlink_file_at(&rel).map_err(e)?;
            None
        }
        "symlink" => {
            // Creates a symlink at `path` whose text is `content` verbatim.
            dir.symlink_at(req.content.as_deref().unwrap_or_default(), &rel).map_err(e)?;
            None
        }
        "link" => {
            let (to_dir, to_rel) = target()?;
            dir.link_at(PathFlags::empty(), &rel, &to_dir, &to_rel).map_err(e)?;
            None
        }
        "rename" => {
            let (to_dir, to_rel) = target()?;
            dir.rename_at(&rel, &to_dir, &to_rel).map_err(e)?;
            None
        }
        other => return Err(ToolError::InvalidInput(format!("unknown op {other}"))),
    };
    Ok(ToolOutput { summary: format!("{what}: done"), content })
}

yoi_plugin_sdk::export_plugin!(Probe);
