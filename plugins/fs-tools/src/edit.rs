//! Edit: an exact string replacement in a file the pod has read.

use serde::Deserialize;
use yoi_plugin_sdk::{ToolError, ToolOutput, parse_input};
use yoi_scope_rules::Access;

use crate::lines::Numbered;
use crate::scope::{Context, io_error};
use crate::write::atomic_write;
use crate::{tracker, wasi_fs};

/// Lines of context shown around the change.
const CONTEXT_LINES: usize = 3;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    file_path: String,
    old_string: String,
    new_string: String,
    #[serde(default)]
    replace_all: bool,
}

pub fn run(ctx: &Context, input: &str) -> Result<ToolOutput, ToolError> {
    let input: Input = parse_input(input)?;
    if input.old_string.is_empty() {
        return Err(ToolError::InvalidInput("old_string is empty: use Write to create or replace a whole file".into()));
    }
    if input.old_string == input.new_string {
        return Err(ToolError::InvalidInput("old_string and new_string are the same: nothing to change".into()));
    }
    let path = ctx.resolve_file(&input.file_path, Access::Write)?;
    let bytes = wasi_fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            ToolError::NotFound(format!("{} does not exist: use Write to create it", path.display()))
        }
        _ => io_error(path.display(), e),
    })?;
    tracker::check(&path, &bytes)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| ToolError::InvalidInput(format!("{} is not UTF-8 text and cannot be edited", path.display())))?;

    // Files with CRLF line ends: the model writes `\n`; match the file's style.
    let (old, new) = if !text.contains(&input.old_string) && text.contains("\r\n") && input.old_string.contains('\n') {
        (input.old_string.replace('\n', "\r\n"), input.new_string.replace('\n', "\r\n"))
    } else {
        (input.old_string.clone(), input.new_string.clone())
    };
    let count = text.matches(&old).count();
    if count == 0 {
        return Err(ToolError::InvalidInput(format!(
            "old_string was not found in {}; Read the file and copy the text exactly, including whitespace",
            path.display()
        )));
    }
    if count > 1 && !input.replace_all {
        return Err(ToolError::InvalidInput(format!(
            "old_string matches {count} times in {}; add surrounding text to make it unique, or set replace_all",
            path.display()
        )));
    }
    let first = text.find(&old).unwrap_or(0);
    let updated = if input.replace_all { text.replace(&old, &new) } else { text.replacen(&old, &new, 1) };
    atomic_write(&path, updated.as_bytes())?;
    tracker::record(&path, updated.as_bytes());

    let replaced = if count == 1 { "1 replacement".to_string() } else { format!("{count} replacements") };
    Ok(ToolOutput {
        summary: format!("Edited {} ({replaced})", path.display()),
        content: Some(snippet(&updated, first, new.len())),
    })
}

/// The numbered lines around the (first) replacement, which starts at byte
/// `at` of `text` and is `len` bytes long.
fn snippet(text: &str, at: usize, len: usize) -> String {
    let first_line = text[..at].matches('\n').count();
    let last_line = first_line + text[at..at + len].matches('\n').count();
    let start = first_line.saturating_sub(CONTEXT_LINES);
    let end = last_line + CONTEXT_LINES;
    let mut shown = Numbered::new(start + 1);
    for line in text.split('\n').skip(start).take(end - start + 1) {
        shown.push(line.as_bytes());
    }
    shown.into_text()
}
