//! What the host asks of the operating system at start: as many open files
//! as the hard limit allows (a process holding thousands of pods holds a
//! session log per pod, plus a socket and a lock for each pod on a socket).

/// Raises the soft limit on open files to the hard limit; returns the
/// limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
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
