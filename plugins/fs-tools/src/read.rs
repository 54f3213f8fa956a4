//! Read: a file's lines, numbered from 1, a window at a time.

use serde::Deserialize;
use yoi_plugin_sdk::{ToolError, ToolOutput, parse_input};
use yoi_scope_rules::Access;

use crate::scope::{Context, io_error};
use crate::{numbered, plural, tracker, wasi_fs};

/// Lines shown when the model gives no limit.
const DEFAULT_LIMIT: usize = 2000;
/// Longer lines are cut, so one minified line cannot flood the output.
const MAX_LINE_CHARS: usize = 2000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    file_path: String,
    offset: Option<usize>,
    limit: Option<usize>,
}

pub fn run(ctx: &Context, input: &str) -> Result<ToolOutput, ToolError> {
    let input: Input = parse_input(input)?;
    let path = ctx.resolve_file(&input.file_path, Access::Read)?;
    let bytes = wasi_fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::IsADirectory => {
            ToolError::InvalidInput(format!("{} is a directory, not a file: use Glob to list it", path.display()))
        }
        _ => io_error(path.display(), e),
    })?;
    tracker::record(&path, &bytes);

    let text = String::from_utf8_lossy(&bytes);
    let body = text.strip_suffix('\n').unwrap_or(&text);
    let total = if text.is_empty() { 0 } else { body.split('\n').count() };
    let offset = input.offset.unwrap_or(0);
    let limit = input.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 {
        return Err(ToolError::InvalidInput("limit must be at least 1".into()));
    }
    if total == 0 {
        return Ok(ToolOutput {
            summary: format!("Read 0 lines of 0 from {} (empty file)", path.display()),
            content: None,
        });
    }
    if offset >= total {
        return Err(ToolError::InvalidInput(format!(
            "offset {offset} is past the end of {}, which has {total} lines",
            path.display()
        )));
    }
    let shown: Vec<String> = body.split('\n').skip(offset).take(limit).map(cut_line).collect();
    let n = shown.len();
    let content = numbered(offset + 1, shown.iter().map(String::as_str));
    let more = if offset + n < total { format!("; pass offset={} for more", offset + n) } else { String::new() };
    Ok(ToolOutput {
        summary: format!(
            "Read {} [{}..{}] of {total} from {}{more}",
            plural(n, "line"),
            offset + 1,
            offset + n,
            path.display()
        ),
        content: Some(content),
    })
}

fn cut_line(line: &str) -> String {
    let line = line.strip_suffix('\r').unwrap_or(line);
    match line.char_indices().nth(MAX_LINE_CHARS) {
        Some((at, _)) => format!("{}... [line cut: {} more bytes]", &line[..at], line.len() - at),
        None => line.to_string(),
    }
}
