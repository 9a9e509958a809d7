//! Watches the region file for changes made under this process (truncated, deleted, replaced,
//! re-initialised) and has the container re-attach. One thread per process that shares a
//! region file, blocked in `read` on an inotify descriptor (`O_CLOEXEC`),
//! started with the region on the first CUDA call, never at load; no signal handler is involved.
//!
//! The window no design closes: a truncation unmaps the file's pages from every mapping at
//! once; until this thread has replaced the mapping (inotify wake-up, `fstat`, `mmap`), a
//! thread of the application touching the region gets SIGBUS. docs/security.md gives the
//! measured figure.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::LedgerOf;

/// The process whose watcher runs (a forked child starts its own).
static WATCHER_PID: AtomicU32 = AtomicU32::new(0);

/// Starts this process's watcher if it has none.
pub fn ensure(ledger: LedgerOf) {
    let pid = std::process::id();
    if WATCHER_PID.swap(pid, Ordering::AcqRel) == pid {
        return;
    }
    if let Err(e) = std::thread::Builder::new().name("libvgpu-watch".into()).spawn(move || run(ledger)) {
        tracing::debug!("cannot start the region watcher: {e}");
        WATCHER_PID.store(0, Ordering::Release);
    }
}

fn run(ledger: LedgerOf) {
    let ledger = ledger();
    let acc = ledger.accounting();
    loop {
        let Some(path) = acc.watched_path() else { return };
        // Watch first, then look: a change between the two is seen by the look.
        let watch = Inotify::watch(path);
        if let Some(change) = acc.file_change() {
            acc.reattach(change);
            // A file that keeps changing must not keep this thread spinning.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match watch {
            Some(w) => w.wait(),
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// One inotify descriptor with one watch on a path (not following a link).
struct Inotify(OwnedFd);

impl Inotify {
    fn watch(path: &str) -> Option<Inotify> {
        let path = CString::new(path).ok()?;
        // SAFETY: no pointers; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mask = libc::IN_MODIFY | libc::IN_ATTRIB | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_DONT_FOLLOW;
        // SAFETY: a valid descriptor and a NUL-terminated path that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
        (wd >= 0).then_some(Inotify(fd))
    }

    /// Blocks until at least one event arrived (their content does not matter: the caller
    /// looks at the file itself).
    fn wait(&self) {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into a buffer of the length given, from a descriptor we own.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return;
            }
        }
    }
}
