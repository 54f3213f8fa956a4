//! Glob: files under a directory whose relative path matches a pattern,
//! newest first.

use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use globset::{GlobBuilder, GlobSetBuilder};
use serde::Deserialize;
use yoi_plugin_sdk::{ToolError, ToolOutput, parse_input};
use yoi_scope_rules::Access;

use crate::scope::{Context, io_error};
use crate::wasi_fs;

/// Most files listed.
const MAX_RESULTS: usize = 1000;
/// Characters that make a path component a pattern.
const GLOB_META: [char; 4] = ['*', '?', '[', '{'];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    pattern: String,
    path: Option<String>,
}

pub fn run(ctx: &Context, input: &str) -> Result<ToolOutput, ToolError> {
    let input: Input = parse_input(input)?;
    // An absolute pattern is matched against absolute paths, from its
    // longest literal directory.
    let (root, pattern) = if input.pattern.starts_with('/') && input.path.is_none() {
        let parts: Vec<Component> = Path::new(&input.pattern).components().collect();
        let literal = parts.iter().take_while(|c| !c.as_os_str().to_string_lossy().contains(GLOB_META)).count();
        let split = if literal == parts.len() { literal - 1 } else { literal };
        let root: PathBuf = parts[..split].iter().collect();
        let rest: PathBuf = parts[split..].iter().collect();
        (ctx.resolve("pattern", &root.to_string_lossy(), Access::Read)?, rest.to_string_lossy().into_owned())
    } else {
        (ctx.resolve_dir_or_cwd(input.path.as_deref())?, input.pattern.clone())
    };
    let meta = std::fs::metadata(&root).map_err(|e| io_error(root.display(), e))?;
    if !meta.is_dir() {
        return Err(ToolError::InvalidInput(format!("{} is not a directory", root.display())));
    }
    let glob = GlobBuilder::new(&pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| ToolError::InvalidInput(format!("invalid glob pattern {pattern:?}: {e}")))?;
    // A set, even of one glob, matches by the cheapest test that decides
    // (`**/*.rs` compares the extension) where a lone matcher runs a regex
    // over every path.
    let matcher = GlobSetBuilder::new()
        .add(glob)
        .build()
        .map_err(|e| ToolError::InvalidInput(format!("invalid glob pattern {pattern:?}: {e}")))?;

    let rules = &ctx.rules;
    let mut found: Vec<(SystemTime, String)> = Vec::new();
    // Walks skip .git directories and those the rules leave nothing readable in.
    let enter = |dir: &Path| dir.file_name().is_none_or(|n| n != ".git") && rules.worth_entering(dir);
    wasi_fs::walk_files(&root, &enter, &mut |file| {
        if matcher.is_match(file.relative) && rules.access(Path::new(file.path)) >= Access::Read {
            found.push((file.modified(), file.path.to_string()));
        }
    })
    .map_err(|e| io_error(root.display(), e))?;
    // Newest first; equal times in path order (component by component, as
    // `Path` orders them: a separator sorts before any other byte).
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| path_order(&a.1).cmp(path_order(&b.1))));
    let total = found.len();
    found.truncate(MAX_RESULTS);
    let listing: Vec<&str> = found.iter().map(|(_, p)| p.as_str()).collect();
    let cut = if total > MAX_RESULTS {
        format!(" (showing the {MAX_RESULTS} newest; narrow the pattern or path)")
    } else {
        String::new()
    };
    Ok(ToolOutput {
        summary: format!(
            "Found {} matching {} in {}{cut}",
            crate::plural(total, "file"),
            input.pattern,
            root.display()
        ),
        content: (!listing.is_empty()).then(|| listing.join("\n")),
    })
}

/// The bytes of a path ordered as `Path` orders paths, component by
/// component: a separator sorts before any other byte.
fn path_order(path: &str) -> impl Iterator<Item = u8> + '_ {
    path.bytes().map(|b| if b == b'/' { 0 } else { b })
}
