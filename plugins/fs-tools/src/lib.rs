//! The builtin file tools, Read, Write, Edit, Glob and Grep, as one
//! component loaded like any third-party plugin.
//!
//! Two layers keep them inside the pod's scope. The host's WASI preopens are
//! the only files this component can reach at all. On top of that every path
//! the model sends is resolved to its canonical form and judged by the pod's
//! rules ([`scope`]), which is what enforces deny rules inside an allowed tree
//! and non-recursive rules. Writes and edits need a prior Read of an
//! unchanged file ([`tracker`]).

mod edit;
mod glob;
mod grep;
mod lines;
mod read;
mod scope;
mod tracker;
mod wasi_fs;
mod write;

use serde_json::json;
use yoi_plugin_sdk::{Guest, ToolError, ToolInfo, ToolOutput, tool_info};

struct FsTools;

impl Guest for FsTools {
    fn describe() -> Vec<ToolInfo> {
        vec![
            tool_info(
                "Read",
                "Reads a text file. Lines are numbered from 1 (`   N<TAB>text`). Use offset (0-based line) and \
                 limit (default 2000 lines) to page through long files. file_path must be absolute.",
                json!({
                    "type": "object",
                    "properties": {
                        "file_path": {"type": "string", "description": "Absolute path of the file"},
                        "offset": {"type": "integer", "minimum": 0, "description": "Lines to skip (0-based)"},
                        "limit": {"type": "integer", "minimum": 1, "description": "Most lines to show (default 2000)"}
                    },
                    "required": ["file_path"],
                    "additionalProperties": false
                }),
            ),
            tool_info(
                "Write",
                "Writes a file, creating missing parent directories; the write is atomic. Overwriting an existing \
                 file requires that you Read it first in this pod and that it has not changed since.",
                json!({
                    "type": "object",
                    "properties": {
                        "file_path": {"type": "string", "description": "Absolute path of the file"},
                        "content": {"type": "string", "description": "The whole new content"}
                    },
                    "required": ["file_path", "content"],
                    "additionalProperties": false
                }),
            ),
            tool_info(
                "Edit",
                "Replaces old_string with new_string in a file you have Read. old_string must match exactly once \
                 unless replace_all is true; include enough surrounding text to make it unique.",
                json!({
                    "type": "object",
                    "properties": {
                        "file_path": {"type": "string", "description": "Absolute path of the file"},
                        "old_string": {"type": "string", "description": "Exact text to replace"},
                        "new_string": {"type": "string", "description": "Replacement text (must differ)"},
                        "replace_all": {"type": "boolean", "description": "Replace every match (default false)"}
                    },
                    "required": ["file_path", "old_string", "new_string"],
                    "additionalProperties": false
                }),
            ),
            tool_info(
                "Glob",
                "Lists files whose path relative to `path` matches a glob pattern (`**/*.rs`, `src/*.{js,ts}`), \
                 newest first, at most 1000. Includes hidden files; skips .git directories.",
                json!({
                    "type": "object",
                    "properties": {
                        "pattern": {"type": "string", "description": "Glob pattern"},
                        "path": {"type": "string", "description": "Absolute directory to search (default: working directory)"}
                    },
                    "required": ["pattern"],
                    "additionalProperties": false
                }),
            ),
            tool_info(
                "Grep",
                "Searches file contents with a regular expression (ripgrep syntax). Honours .gitignore and .ignore, \
                 skips hidden and binary files. output_mode: files_with_matches (default), content \
                 (path:line:text), count (path:n). Paginate with head_limit (default 250) and offset.",
                json!({
                    "type": "object",
                    "properties": {
                        "pattern": {"type": "string", "description": "Regular expression"},
                        "path": {"type": "string", "description": "Absolute file or directory (default: working directory)"},
                        "glob": {"type": "string", "description": "Only files matching this glob (`*.rs`, `!*.min.js`)"},
                        "type": {"type": "string", "description": "Only files of this type (rs, py, js, ...)"},
                        "output_mode": {"type": "string", "enum": ["files_with_matches", "content", "count"]},
                        "-i": {"type": "boolean", "description": "Case insensitive"},
                        "-n": {"type": "boolean", "description": "Line numbers in content mode (default true)"},
                        "-A": {"type": "integer", "minimum": 0, "description": "Lines of context after each match"},
                        "-B": {"type": "integer", "minimum": 0, "description": "Lines of context before each match"},
                        "-C": {"type": "integer", "minimum": 0, "description": "Lines of context around each match"},
                        "multiline": {"type": "boolean", "description": "Let patterns span lines; `.` matches newlines"},
                        "head_limit": {"type": "integer", "minimum": 1, "description": "Most entries to return (default 250)"},
                        "offset": {"type": "integer", "minimum": 0, "description": "Entries to skip first"}
                    },
                    "required": ["pattern"],
                    "additionalProperties": false
                }),
            ),
        ]
    }

    fn call(tool: String, input: String) -> Result<ToolOutput, ToolError> {
        let ctx = scope::Context::current();
        match tool.as_str() {
            "Read" => read::run(&ctx, &input),
            "Write" => write::run(&ctx, &input),
            "Edit" => edit::run(&ctx, &input),
            "Glob" => glob::run(&ctx, &input),
            "Grep" => grep::run(&ctx, &input),
            other => Err(ToolError::InvalidInput(format!("fs-tools has no tool named {other}"))),
        }
    }
}

/// `1 line`, `2 lines`.
pub(crate) fn plural(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

yoi_plugin_sdk::export_plugin!(FsTools);
