//! Read: a file's lines, numbered from 1, a window at a time.

use serde::Deserialize;
use yoi_plugin_sdk::{ToolError, ToolOutput, parse_input};
use yoi_scope_rules::Access;

use crate::lines::{Found, Window};
use crate::scope::{Context, io_error};
use crate::wasi_fs::OpenFile;
use crate::{plural, tracker};

/// Lines shown when the model gives no limit.
const DEFAULT_LIMIT: usize = 2000;

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
    let offset = input.offset.unwrap_or(0);
    let limit = input.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 {
        return Err(ToolError::InvalidInput("limit must be at least 1".into()));
    }
    let failed = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::IsADirectory => {
            ToolError::InvalidInput(format!("{} is a directory, not a file: use Glob to list it", path.display()))
        }
        _ => io_error(path.display(), e),
    };
    // The file is read a chunk at a time: only the window is kept, the rest
    // is counted and hashed as it passes.
    let mut window = Window::new(offset, limit);
    let mut seen = tracker::Seen::new();
    OpenFile::open(&path)
        .and_then(|file| {
            file.read_chunks(|chunk| {
                seen.update(chunk);
                window.feed(chunk);
            })
        })
        .map_err(failed)?;
    seen.record(&path);

    let Found { text, shown: n, total } = window.finish();
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
    let more = if offset + n < total { format!("; pass offset={} for more", offset + n) } else { String::new() };
    Ok(ToolOutput {
        summary: format!(
            "Read {} [{}..{}] of {total} from {}{more}",
            plural(n, "line"),
            offset + 1,
            offset + n,
            path.display()
        ),
        content: Some(text),
    })
}
