//! What the host asks of the operating system at start: as many open files
//! as the hard limit allows (a process holding thousands of pods holds a
//! session log per pod, plus a socket and a lock for each pod on a socket).

/// Raises the soft limit on open files to the hard limit; returns the
/// limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = open_file_limits()?;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

/// The soft limit on open files now in force.
pub fn open_file_limit() -> std::io::Result<u64> {
    Ok(open_file_limits()?.rlim_cur)
}

fn open_file_limits() -> std::io::Result<libc::rlimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit)
}

/// Opens the directory at `path` (absolute) without following any symlink
/// on the way: a scope's directories are canonical when a pod starts, so a
/// symlink in one later means the tree was rearranged under the pod (a pod
/// that may write a parent swapped a directory for a link), and following
/// it could lead anywhere. `openat2` with `RESOLVE_NO_SYMLINKS` where the
/// kernel has it (Linux 5.6); else one `openat(O_NOFOLLOW)` per component.
pub fn open_dir_no_symlinks(path: &std::path::Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{CWD, Mode, OFlags, ResolveFlags, openat, openat2};
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    match openat2(CWD, path, flags, Mode::empty(), ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS) {
        Ok(fd) => return Ok(fd),
        Err(rustix::io::Errno::NOSYS) => {}
        Err(e) => return Err(e.into()),
    }
    let mut dir = openat(CWD, "/", flags, Mode::empty())?;
    for part in path.components() {
        match part {
            std::path::Component::RootDir => {}
            std::path::Component::Normal(name) => dir = openat(&dir, name, flags | OFlags::NOFOLLOW, Mode::empty())?,
            _ => return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a canonical path")),
        }
    }
    Ok(dir)
}

/// Reads the regular file at `path`, at most `max` bytes (more is an error).
/// With `root`, the file must lie inside `root` once symlinks are resolved
/// (a tenant's workspace): the path is made canonical, checked, and the file
/// is then opened by that canonical path without following any link, so a
/// link swapped in after the check is not followed either. Devices and
/// fifos are refused, so a read cannot block or run on without end.
pub fn read_file(path: &std::path::Path, root: Option<&std::path::Path>, max: u64) -> std::io::Result<Vec<u8>> {
    use rustix::fs::{CWD, Mode, OFlags, ResolveFlags, openat2};
    use std::io::Read;
    let denied = |why: &str| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why.to_string());
    let canonical = std::fs::canonicalize(path)?;
    if let Some(root) = root
        && !canonical.starts_with(root)
    {
        return Err(denied("it lies outside the workspace"));
    }
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    let fd = match openat2(CWD, &canonical, flags, Mode::empty(), ResolveFlags::NO_SYMLINKS) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOSYS) => rustix::fs::openat(CWD, &canonical, flags, Mode::empty())?,
        Err(e) => return Err(e.into()),
    };
    let file = std::fs::File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(denied("it is not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("it is larger than {max} bytes")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_only_inside_its_root_and_only_if_it_is_a_bounded_regular_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap().join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("ok.txt"), "fine").unwrap();
        std::fs::write(tmp.path().join("secret.txt"), "secret").unwrap();
        std::os::unix::fs::symlink("../secret.txt", root.join("out")).unwrap();
        std::os::unix::fs::symlink("ok.txt", root.join("in")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("zero")).unwrap();
        let fifo = std::ffi::CString::new(root.join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

        assert_eq!(read_file(&root.join("ok.txt"), Some(&root), 100).unwrap(), b"fine");
        assert_eq!(read_file(&root.join("in"), Some(&root), 100).unwrap(), b"fine");
        assert_eq!(read_file(&root.join("out"), None, 100).unwrap(), b"secret", "no root: the operator's own links");
        for refused in ["out", "zero", "fifo"] {
            assert!(read_file(&root.join(refused), Some(&root), 100).is_err(), "{refused}");
        }
        assert!(read_file(&root.join("zero"), None, 100).is_err(), "a device is never read");
        assert!(read_file(&root.join("ok.txt"), Some(&root), 3).is_err(), "past the size cap");
    }
}
