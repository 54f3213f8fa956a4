//! Write: a whole file, atomically, creating missing parent directories.
//! Also home of [`atomic_write`], which Edit shares.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use yoi_plugin_sdk::{ToolError, ToolOutput, parse_input};
use yoi_scope_rules::Access;

use crate::scope::{Context, io_error};
use crate::{tracker, wasi_fs};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    file_path: String,
    content: String,
}

pub fn run(ctx: &Context, input: &str) -> Result<ToolOutput, ToolError> {
    let input: Input = parse_input(input)?;
    let path = ctx.resolve_file(&input.file_path, Access::Write)?;
    let existed = match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_dir() => {
            return Err(ToolError::InvalidInput(format!("{} is a directory", path.display())));
        }
        Ok(_) => {
            let current = wasi_fs::read(&path).map_err(|e| io_error(path.display(), e))?;
            tracker::check(&path, &current)?;
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_parents(ctx, &path)?;
            false
        }
        Err(e) => return Err(io_error(path.display(), e)),
    };
    atomic_write(&path, input.content.as_bytes())?;
    tracker::record(&path, input.content.as_bytes());
    let verb = if existed { "Overwrote" } else { "Created" };
    Ok(ToolOutput { summary: format!("{verb} {} ({} bytes)", path.display(), input.content.len()), content: None })
}

/// Creates the missing ancestors of `path`, each of which must be writable
/// under the pod's rules (a non-recursive or deny rule may forbid making a
/// directory even where the file itself would be allowed).
fn create_parents(ctx: &Context, path: &Path) -> Result<(), ToolError> {
    let Some(parent) = path.parent() else { return Ok(()) };
    let missing: Vec<&Path> = parent.ancestors().take_while(|p| !p.exists()).collect();
    for dir in missing.into_iter().rev() {
        if ctx.rules.access(dir) < Access::Write {
            return Err(ToolError::PermissionDenied(format!(
                "cannot create directory {}: the pod's scope does not allow writing there",
                dir.display()
            )));
        }
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(dir.display(), e)),
        }
    }
    Ok(())
}

/// Writes `content` to a new file beside `path` and renames it into place,
/// so readers see the old file or the new one, never half of it.
pub fn atomic_write(path: &Path, content: &[u8]) -> Result<(), ToolError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().ok_or_else(|| ToolError::InvalidInput(format!("{} has no parent", path.display())))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    for attempt in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.yoi-{nanos:x}-{n}-{attempt}.tmp"));
        let renamed = match wasi_fs::write_new(&tmp, content) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            written => written.and_then(|()| std::fs::rename(&tmp, path)),
        };
        return renamed.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_error(path.display(), e)
        });
    }
    Err(ToolError::Failed(format!("could not create a temporary file beside {}", path.display())))
}
