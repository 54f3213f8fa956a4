//! A tenant's workspace through the API: upload, download, list, delete.
//!
//! Every operation goes through a capability on the workspace directory
//! (cap-std): a path with `..`, an absolute path, or a symlink planted in
//! the workspace cannot lead outside it, whatever the name says. Uploads
//! are written to a temporary file beside the target and renamed into
//! place, so a failed or cut upload leaves the old file whole; their bytes
//! count against the workspace quota while they stream.

use std::path::{Component, Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use futures::StreamExt;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::error::ApiError;

/// A path inside the workspace, as the API names it: relative, no `..`,
/// no empty or `.` parts.
pub fn workspace_path(text: &str) -> Result<PathBuf, ApiError> {
    let path = Path::new(text.trim_matches('/'));
    let mut clean = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => clean.push(p),
            Component::CurDir => {}
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_path",
                    format!("{text:?}: paths are relative to the workspace, without `..`"),
                ));
            }
        }
    }
    Ok(clean)
}

/// The workspace as a capability.
pub fn open_workspace(root: &Path) -> Result<Dir, ApiError> {
    Dir::open_ambient_dir(root, ambient_authority())
        .map_err(|e| ApiError::internal(format!("cannot open the workspace: {e}")))
}

fn io_error(path: &Path, e: std::io::Error) -> ApiError {
    let shown = path.display();
    match e.kind() {
        std::io::ErrorKind::NotFound => ApiError::not_found("file", &shown.to_string()),
        std::io::ErrorKind::PermissionDenied => ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "outside_workspace",
            format!("{shown}: not reachable inside the workspace"),
        ),
        std::io::ErrorKind::DirectoryNotEmpty => {
            ApiError::conflict("not_empty", format!("{shown}: the directory is not empty (add ?recursive=true)"))
        }
        std::io::ErrorKind::IsADirectory => ApiError::conflict("is_a_directory", format!("{shown} is a directory")),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => ApiError::new(
            axum::http::StatusCode::INSUFFICIENT_STORAGE,
            "storage_full",
            format!("{shown}: the server's disk is full"),
        ),
        std::io::ErrorKind::NotADirectory => {
            ApiError::conflict("not_a_directory", format!("a part of {shown} is not a directory"))
        }
        _ => ApiError::new(axum::http::StatusCode::FORBIDDEN, "file_error", format!("{shown}: {e}")),
    }
}

/// One entry of a directory listing.
#[derive(Serialize)]
pub struct Entry {
    name: String,
    kind: &'static str,
    size: u64,
}

/// What a GET of a path finds.
pub enum Found {
    /// A file's bytes.
    File(Vec<u8>),
    /// A directory's entries, sorted by name.
    Dir(Vec<Entry>),
}

/// Reads a file or lists a directory (blocking).
pub fn get(workspace: &Dir, path: &Path, max_bytes: u64) -> Result<Found, ApiError> {
    let target = if path.as_os_str().is_empty() { Path::new(".") } else { path };
    let meta = workspace.metadata(target).map_err(|e| io_error(path, e))?;
    if meta.is_dir() {
        let dir = workspace.open_dir(target).map_err(|e| io_error(path, e))?;
        let mut entries = Vec::new();
        for entry in dir.entries().map_err(|e| io_error(path, e))? {
            let entry = entry.map_err(|e| io_error(path, e))?;
            let Ok(meta) = entry.metadata() else { continue };
            let kind = if meta.is_dir() {
                "dir"
            } else if meta.is_symlink() {
                "symlink"
            } else {
                "file"
            };
            entries.push(Entry { name: entry.file_name().to_string_lossy().into_owned(), kind, size: meta.len() });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        return Ok(Found::Dir(entries));
    }
    if meta.len() > max_bytes {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("{} is {} bytes; the most one request returns is {max_bytes}", path.display(), meta.len()),
        ));
    }
    let bytes = workspace.read(target).map_err(|e| io_error(path, e))?;
    Ok(Found::File(bytes))
}

/// Deletes a file, an empty directory, or (`recursive`) a whole tree
/// (blocking); returns the bytes freed.
pub fn delete(workspace: &Dir, path: &Path, recursive: bool) -> Result<u64, ApiError> {
    if path.as_os_str().is_empty() {
        return Err(ApiError::bad_request("invalid_path", "the workspace itself cannot be deleted"));
    }
    let meta = workspace.symlink_metadata(path).map_err(|e| io_error(path, e))?;
    if meta.is_dir() {
        let freed = tree_size(workspace, path);
        let removed = if recursive { workspace.remove_dir_all(path) } else { workspace.remove_dir(path) };
        removed.map_err(|e| io_error(path, e))?;
        Ok(freed)
    } else {
        workspace.remove_file(path).map_err(|e| io_error(path, e))?;
        Ok(meta.len())
    }
}

/// Bytes of the files under `path` (symlinks not followed).
pub fn tree_size(workspace: &Dir, path: &Path) -> u64 {
    let target = if path.as_os_str().is_empty() { Path::new(".") } else { path };
    match workspace.symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => {}
        Ok(meta) => return meta.len(),
        Err(_) => return 0,
    }
    let Ok(dir) = workspace.open_dir(target) else { return 0 };
    let mut total = 0;
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = dir.entries() else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_symlink() {
                continue;
            }
            if meta.is_dir() {
                if let Ok(sub) = entry.open_dir() {
                    stack.push(sub);
                }
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// Streams `body` into `path` (creating parent directories), charging its
/// bytes to `budget` (what the workspace may still grow by, plus what the
/// replaced file held). Returns the new file's size and the old one's.
pub async fn put(workspace: &Dir, path: &Path, body: axum::body::Body, budget: u64) -> Result<(u64, u64), ApiError> {
    let Some(name) = path.file_name() else {
        return Err(ApiError::bad_request("invalid_path", "a file needs a name"));
    };
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    workspace.create_dir_all(parent).map_err(|e| io_error(path, e))?;
    let dir = workspace.open_dir(parent).map_err(|e| io_error(path, e))?;
    let old = match dir.symlink_metadata(name) {
        Ok(meta) if meta.is_dir() => return Err(io_error(path, std::io::ErrorKind::IsADirectory.into())),
        Ok(meta) => meta.len(),
        Err(_) => 0,
    };
    let temp = format!(".upload-{}-{:016x}", std::process::id(), fastrand::u64(..));
    let file = dir.create(&temp).map_err(|e| io_error(path, e))?;
    // Removes the temporary file however the upload ends (a client that
    // goes away drops this future midway).
    let _leftover = Leftover { dir: dir.try_clone().map_err(|e| io_error(path, e))?, name: temp.clone() };
    let mut file = tokio::fs::File::from_std(file.into_std());
    let mut written: u64 = 0;
    let mut stream = body.into_data_stream();
    let outcome: Result<(), ApiError> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad_request("bad_body", format!("the upload was cut: {e}")))?;
            written += chunk.len() as u64;
            if written > budget.saturating_add(old) {
                // The rest of the body is read and dropped, so that the
                // client, still sending, gets the answer.
                while let Some(Ok(_)) = stream.next().await {}
                return Err(ApiError::new(
                    axum::http::StatusCode::INSUFFICIENT_STORAGE,
                    "quota_exceeded",
                    "quota `workspace_mb`: the workspace would grow past its quota".to_string(),
                ));
            }
            file.write_all(&chunk).await.map_err(|e| io_error(path, e))?;
        }
        file.flush().await.map_err(|e| io_error(path, e))?;
        Ok(())
    }
    .await;
    drop(file);
    outcome?;
    dir.rename(&temp, &dir, name).map_err(|e| io_error(path, e))?;
    Ok((written, old))
}

/// A temporary file removed when dropped (a no-op once it was renamed).
struct Leftover {
    dir: Dir,
    name: String,
}

impl Drop for Leftover {
    fn drop(&mut self) {
        let _ = self.dir.remove_file(&self.name);
    }
}

/// Most entries one archive may hold.
pub const MAX_ARCHIVE_ENTRIES: u64 = 100_000;

/// What an extraction wrote.
#[derive(Debug, Serialize)]
pub struct Extracted {
    /// Entries extracted.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// A link target an archive may carry: relative, and only going down
/// (no `..`, no root), so that it stays inside wherever it is followed
/// from.
fn link_stays_inside(target: &Path) -> bool {
    !target.as_os_str().is_empty() && target.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn refused(entry: &Path, why: &str) -> ApiError {
    ApiError::unprocessable(
        "unsafe_archive",
        format!("archive entry {}: {why}; nothing was extracted", entry.display()),
    )
}

/// Extracts a tar stream into a new directory `staged` (a name in
/// `staging`, which lies outside the workspace), counting file bytes
/// against `budget`; the caller moves it into place when it is whole.
/// Refused: absolute names and `..`, links that lead out (absolute or with
/// `..` in their target), hard links to anything outside the archive,
/// devices and fifos, more than [`MAX_ARCHIVE_ENTRIES`] entries, and more
/// bytes than the budget (blocking).
pub fn extract_tar(
    staging: &Dir,
    staged: &str,
    input: &mut impl std::io::Read,
    budget: u64,
) -> Result<Extracted, ApiError> {
    use std::io::Read;
    staging.create_dir(staged).map_err(|e| ApiError::internal(format!("cannot stage the archive: {e}")))?;
    let root = staging.open_dir(staged).map_err(|e| ApiError::internal(format!("cannot stage the archive: {e}")))?;
    let mut archive = tar::Archive::new(input);
    let mut done = Extracted { entries: 0, bytes: 0 };
    let entries =
        archive.entries().map_err(|e| ApiError::bad_request("bad_archive", format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| ApiError::bad_request("bad_archive", format!("the archive is damaged: {e}")))?;
        done.entries += 1;
        if done.entries > MAX_ARCHIVE_ENTRIES {
            return Err(ApiError::unprocessable("unsafe_archive", format!("more than {MAX_ARCHIVE_ENTRIES} entries")));
        }
        let name = entry
            .path()
            .map_err(|e| ApiError::bad_request("bad_archive", format!("an entry's name: {e}")))?
            .into_owned();
        let path = match workspace_path(&name.to_string_lossy()) {
            Ok(p) if !name.is_absolute() => p,
            _ => return Err(refused(&name, "names must be relative and without `..`")),
        };
        if path.as_os_str().is_empty() {
            continue;
        }
        let io = |e: std::io::Error| refused(&name, &format!("cannot be written: {e}"));
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            root.create_dir_all(parent).map_err(io)?;
        }
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => root.create_dir_all(&path).map_err(io)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut file = root.create(&path).map_err(io)?;
                let left = budget.saturating_sub(done.bytes);
                // One byte past the budget tells an archive that does not fit.
                let copied = std::io::copy(&mut (&mut entry).take(left.saturating_add(1)), &mut file).map_err(io)?;
                done.bytes += copied;
                if copied > left {
                    return Err(ApiError::new(
                        axum::http::StatusCode::INSUFFICIENT_STORAGE,
                        "quota_exceeded",
                        "quota `workspace_mb`: the archive does not fit in the workspace; nothing was extracted",
                    ));
                }
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name().ok().flatten().map(|t| t.into_owned()).unwrap_or_default();
                if !link_stays_inside(&target) {
                    return Err(refused(&name, &format!("a link to {} would lead out", target.display())));
                }
                root.symlink(&target, &path).map_err(io)?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name().ok().flatten().map(|t| t.into_owned()).unwrap_or_default();
                let Ok(source) = workspace_path(&target.to_string_lossy()) else {
                    return Err(refused(&name, "a hard link must name an entry of the archive"));
                };
                if target.is_absolute() || source.as_os_str().is_empty() {
                    return Err(refused(&name, "a hard link must name an entry of the archive"));
                }
                // Resolved inside the staged tree only: it cannot reach out.
                let meta = root
                    .symlink_metadata(&source)
                    .map_err(|_| refused(&name, "a hard link must name an earlier file of the archive"))?;
                if !meta.is_file() {
                    return Err(refused(&name, "a hard link must name an earlier file of the archive"));
                }
                root.hard_link(&source, &root, &path).map_err(io)?;
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => return Err(refused(&name, &format!("entries of type {other:?} are not extracted"))),
        }
    }
    Ok(done)
}
