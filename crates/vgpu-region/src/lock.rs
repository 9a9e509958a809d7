//! Open-file-description byte locks (`F_OFD_SETLK`). A lock belongs to the open file description,
//! not to a PID: the kernel drops it when the description's last fd closes — when the process
//! dies, whatever the PID namespace, and without PID-reuse confusion. Two separate `open()`s of
//! the same file conflict even inside one process, which makes the protocol testable in-process.
//! A forked child shares its parent's description, hence its locks: it must open its own.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

fn ofd(file: &File, cmd: libc::c_int, kind: libc::c_short, offset: u64) -> io::Result<()> {
    // SAFETY: flock is plain old data, for which all zeroes is a valid value; the fields that matter are set below.
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

/// Takes the write lock on one byte, waiting at most `within`: `Ok(false)` if it is still held
/// then. The owners of our locks hold them for microseconds, but an owner can be stopped
/// (`SIGSTOP`, `docker pause`, a debugger) while holding one, and the kernel releases a lock
/// only when its owner dies: a blocking wait (`F_OFD_SETLKW`) would then hang every new process.
/// Polls the non-blocking `F_OFD_SETLK`: first by yielding, then with sleeps growing from 50 µs
/// to 2 ms, so an uncontended or briefly contended lock costs no more than one `F_OFD_SETLK`.
pub fn lock_within(file: &File, offset: u64, within: std::time::Duration) -> io::Result<bool> {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_micros(50);
    for round in 0u32.. {
        if try_lock(file, offset)? {
            return Ok(true);
        }
        let waited = start.elapsed();
        if waited >= within {
            return Ok(false);
        }
        if round < 16 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(pause.min(within - waited));
            pause = (pause * 2).min(std::time::Duration::from_millis(2));
        }
    }
    Ok(false)
}

/// How long the libraries wait for a shared file's initialisation or claim lock before going on
/// without the file: far above the microseconds it is held for (a creator prefilling the region
/// on a loaded host included), far below anything a user would call a hang.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

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

    #[test]
    fn bounded_wait_gives_up_on_a_held_lock_and_takes_a_released_one() {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [0u8; 16]).unwrap();
        let holder = File::options().read(true).write(true).open(&path).unwrap();
        let waiter = File::options().read(true).write(true).open(&path).unwrap();
        assert!(try_lock(&holder, 0).unwrap());
        let t = Instant::now();
        assert!(!lock_within(&waiter, 0, Duration::from_millis(30)).unwrap());
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(30) && waited < Duration::from_secs(2), "{waited:?}");
        assert!(lock_within(&waiter, 1, Duration::from_millis(30)).unwrap(), "other bytes are free");
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(holder);
        });
        assert!(lock_within(&waiter, 0, Duration::from_secs(5)).unwrap());
        releaser.join().unwrap();
    }
}
