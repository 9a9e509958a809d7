//! Open-file-description byte locks (`F_OFD_SETLK`). A lock belongs to the open file description,
//! not to a PID: the kernel drops it when the description's last fd closes — when the process
//! dies, whatever the PID namespace, and without PID-reuse confusion. Two separate `open()`s of
//! the same file conflict even inside one process, which makes the protocol testable in-process.
//! A forked child shares its parent's description, hence its locks: it must open its own.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

fn ofd(file: &File, cmd: libc::c_int, kind: libc::c_short, offset: u64) -> io::Result<()> {
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = offset as libc::off_t;
    fl.l_len = 1;
    fl.l_pid = 0; // required for OFD locks
    loop {
        // SAFETY: fcntl on a valid fd with a fully initialised `flock`.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Takes the write lock on one byte without waiting; `Ok(false)` when someone else holds it.
pub fn try_lock(file: &File, offset: u64) -> io::Result<bool> {
    match ofd(file, libc::F_OFD_SETLK, libc::F_WRLCK as libc::c_short, offset) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits for the write lock on one byte (held only for microseconds by its owners; a dead
/// owner's lock is released by the kernel, so this cannot hang on a crash).
pub fn lock(file: &File, offset: u64) -> io::Result<()> {
    ofd(file, libc::F_OFD_SETLKW, libc::F_WRLCK as libc::c_short, offset)
}

/// Takes the write lock on one byte, waiting at most `wait` (polling): `Ok(false)` when its
/// holder did not let go in time. For locks another container may hold: a `docker pause`d
/// process keeps its locks, and nobody may wait on it unboundedly.
pub fn lock_within(file: &File, offset: u64, wait: std::time::Duration) -> io::Result<bool> {
    let start = std::time::Instant::now();
    let mut nap = std::time::Duration::from_micros(20);
    loop {
        if try_lock(file, offset)? {
            return Ok(true);
        }
        if start.elapsed() >= wait {
            return Ok(false);
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(std::time::Duration::from_millis(2));
    }
}

pub fn unlock(file: &File, offset: u64) -> io::Result<()> {
    ofd(file, libc::F_OFD_SETLK, libc::F_UNLCK as libc::c_short, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separate_opens_conflict_and_closing_releases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [0u8; 16]).unwrap();
        let a = File::options().read(true).write(true).open(&path).unwrap();
        let b = File::options().read(true).write(true).open(&path).unwrap();
        assert!(try_lock(&a, 3).unwrap());
        assert!(try_lock(&a, 3).unwrap(), "re-locking our own byte is fine");
        assert!(!try_lock(&b, 3).unwrap());
        assert!(try_lock(&b, 4).unwrap(), "byte ranges are independent");
        drop(a);
        assert!(try_lock(&b, 3).unwrap(), "the kernel released the closed description's lock");
        unlock(&b, 3).unwrap();
    }
}
