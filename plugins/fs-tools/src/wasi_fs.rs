//! Whole-file reads and writes, and directory walks, through
//! `wasi:filesystem` descriptors.
//!
//! std's file I/O on WASI goes through streams, which the host serves on a
//! thread pool (a thread hop per chunk); the descriptor's own `read` and
//! `write` run inline in the host. For the small files a coding agent reads
//! all day this is several times faster, so the tools read and write whole
//! files here and use std for everything else.
//!
//! Paths must be canonical: the final component is opened without following
//! symlinks, so a file swapped for a link after the scope check fails to
//! open instead of redirecting the read or write.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasip2::filesystem::preopens::get_directories;
use wasip2::filesystem::types::{Descriptor, DescriptorFlags, DescriptorType, ErrorCode, OpenFlags, PathFlags};
use yoi_scope_rules::relative;

/// Largest read asked of the host at once.
const CHUNK: u64 = 4 << 20;
/// Largest read asked of the host by a reader that keeps little of the
/// file: the memory a call touches is what it pays for in page faults.
const STREAM_CHUNK: u64 = 256 << 10;
/// The piece asked for at a time from a file whose size says nothing.
const UNSIZED_PIECE: u64 = 64 << 10;

thread_local! {
    // Each call runs in a fresh instance, so this lives for one call.
    static PREOPENS: Vec<(Descriptor, PathBuf)> =
        get_directories().into_iter().map(|(d, p)| (d, PathBuf::from(p))).collect();
}

/// Runs `f` with the preopen that holds `path` and the path relative to it.
fn with_dir<R>(path: &Path, f: impl FnOnce(&Descriptor, &str) -> io::Result<R>) -> io::Result<R> {
    PREOPENS.with(|preopens| {
        let (dir, rel) = preopens
            .iter()
            .filter_map(|(dir, root)| Some((dir, root, relative(path, root)?)))
            .max_by_key(|(_, root, _)| root.as_os_str().len())
            .map(|(dir, _, rel)| (dir, rel))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not under any preopened directory"))?;
        f(dir, if rel.is_empty() { "." } else { rel })
    })
}

/// An open regular file and its size.
pub struct OpenFile {
    file: Descriptor,
    /// Size in bytes when opened.
    pub size: u64,
}

impl OpenFile {
    /// Opens `path` for reading; a directory is an `IsADirectory` error.
    pub fn open(path: &Path) -> io::Result<OpenFile> {
        let file = with_dir(path, |dir, rel| {
            dir.open_at(PathFlags::empty(), rel, OpenFlags::empty(), DescriptorFlags::READ).map_err(to_io)
        })?;
        let stat = file.stat().map_err(to_io)?;
        if stat.type_ == DescriptorType::Directory {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"));
        }
        Ok(OpenFile { file, size: stat.size })
    }

    /// The whole content.
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.size as usize);
        self.read_in(CHUNK, |chunk| out.extend_from_slice(chunk))?;
        Ok(out)
    }

    /// The content a piece at a time, for a reader that keeps little of it.
    pub fn read_chunks(&self, f: impl FnMut(&[u8])) -> io::Result<()> {
        self.read_in(STREAM_CHUNK, f)
    }

    /// Calls `f` with the content from the start, in pieces of at most
    /// `most` bytes, up to the size the file had when opened (to the end,
    /// for a file whose size says nothing, such as a pipe).
    fn read_in(&self, most: u64, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        let mut at = 0;
        loop {
            // Exactly what is left: the host zeroes a buffer of the size
            // asked for before it reads into it.
            let left = self.size.saturating_sub(at);
            let want = if left > 0 { left.min(most) } else { UNSIZED_PIECE.min(most) };
            let (chunk, end) = self.file.read(want, at).map_err(to_io)?;
            at += chunk.len() as u64;
            f(&chunk);
            if end || chunk.is_empty() || (self.size > 0 && at >= self.size) {
                return Ok(());
            }
        }
    }
}

/// The whole content of the file at `path`.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    OpenFile::open(path)?.read_all()
}

/// Whether `path` is a symbolic link (a final link is not followed).
/// Asked of the preopen directly: one host call, without std's path lookup.
pub fn is_symlink(path: &Path) -> io::Result<bool> {
    with_dir(path, |dir, rel| {
        let stat = dir.stat_at(PathFlags::empty(), rel).map_err(to_io)?;
        Ok(stat.type_ == DescriptorType::SymbolicLink)
    })
}

/// The target of the symbolic link at `path`.
pub fn read_link(path: &Path) -> io::Result<PathBuf> {
    with_dir(path, |dir, rel| dir.readlink_at(rel).map(PathBuf::from).map_err(to_io))
}

/// Creates `path`, which must not exist, with `content`.
pub fn write_new(path: &Path, content: &[u8]) -> io::Result<()> {
    let file = with_dir(path, |dir, rel| {
        dir.open_at(PathFlags::empty(), rel, OpenFlags::CREATE | OpenFlags::EXCLUSIVE, DescriptorFlags::WRITE)
            .map_err(to_io)
    })?;
    let mut written = 0;
    while written < content.len() {
        let end = content.len().min(written + CHUNK as usize);
        written += file.write(&content[written..end], written as u64).map_err(to_io)? as usize;
    }
    Ok(())
}

/// A file met by [`walk_files`].
pub struct Walked<'a> {
    /// Its absolute path.
    pub path: &'a str,
    /// Its path relative to the walk's root.
    pub relative: &'a str,
    dir: &'a Descriptor,
    name: &'a str,
}

impl Walked<'_> {
    /// Its modification time (the epoch if it cannot be read), asked of the
    /// host only when wanted.
    pub fn modified(&self) -> SystemTime {
        self.dir
            .stat_at(PathFlags::empty(), self.name)
            .ok()
            .and_then(|s| s.data_modification_timestamp)
            .map_or(UNIX_EPOCH, |t| UNIX_EPOCH + Duration::new(t.seconds, t.nanoseconds))
    }
}

/// Walks the tree below the directory `root` without following symlinks,
/// calling `on_file` with each regular file or symlink. Directories are
/// entered when `enter` says so; unreadable ones are skipped.
///
/// Unlike std's `read_dir`, which looks up every entry's inode, this reads
/// each directory once and stats only the files asked about. One path
/// buffer grows and shrinks as the walk goes, so an entry costs no
/// allocation and no path parsing.
pub fn walk_files(root: &Path, enter: &dyn Fn(&Path) -> bool, on_file: &mut dyn FnMut(&Walked)) -> io::Result<()> {
    let dir = with_dir(root, |dir, rel| {
        dir.open_at(PathFlags::empty(), rel, OpenFlags::DIRECTORY, DescriptorFlags::READ).map_err(to_io)
    })?;
    let mut path = root.to_str().ok_or_else(|| io::Error::other("the path is not UTF-8"))?.to_string();
    let relative_from = if path.ends_with('/') { path.len() } else { path.len() + 1 };
    walk_dir(&dir, &mut path, relative_from, enter, on_file)
}

fn walk_dir(
    dir: &Descriptor,
    path: &mut String,
    relative_from: usize,
    enter: &dyn Fn(&Path) -> bool,
    on_file: &mut dyn FnMut(&Walked),
) -> io::Result<()> {
    let at = path.len();
    let mut subdirs = Vec::new();
    let entries = dir.read_directory().map_err(to_io)?;
    while let Some(entry) = entries.read_directory_entry().map_err(to_io)? {
        push_name(path, at, &entry.name);
        match entry.type_ {
            DescriptorType::Directory if enter(Path::new(path.as_str())) => subdirs.push(entry.name),
            DescriptorType::RegularFile | DescriptorType::SymbolicLink => {
                on_file(&Walked { path, relative: &path[relative_from..], dir, name: &entry.name })
            }
            _ => {}
        }
    }
    drop(entries);
    for name in subdirs {
        if let Ok(sub) = dir.open_at(PathFlags::empty(), &name, OpenFlags::DIRECTORY, DescriptorFlags::READ) {
            push_name(path, at, &name);
            walk_dir(&sub, path, relative_from, enter, on_file)?;
        }
    }
    path.truncate(at);
    Ok(())
}

/// Makes `path` its first `at` bytes (a directory) joined with `name`.
fn push_name(path: &mut String, at: usize, name: &str) {
    path.truncate(at);
    if !path.ends_with('/') {
        path.push('/');
    }
    path.push_str(name);
}

fn to_io(e: ErrorCode) -> io::Error {
    let kind = match e {
        ErrorCode::NoEntry => io::ErrorKind::NotFound,
        ErrorCode::Access | ErrorCode::NotPermitted => io::ErrorKind::PermissionDenied,
        ErrorCode::ReadOnly => io::ErrorKind::ReadOnlyFilesystem,
        ErrorCode::Exist => io::ErrorKind::AlreadyExists,
        ErrorCode::IsDirectory => io::ErrorKind::IsADirectory,
        ErrorCode::NotDirectory => io::ErrorKind::NotADirectory,
        ErrorCode::NameTooLong => io::ErrorKind::InvalidFilename,
        ErrorCode::Loop => return io::Error::other("is a symbolic link (or a loop of them)"),
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("{e:?}").to_lowercase())
}
