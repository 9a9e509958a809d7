//! Opening a shared file (the region, the node table) without being turned against ourselves.
//!
//! The files live in directories other users can write (`/tmp` by default), so the path may be
//! a planted link or FIFO, or a file another user created with numbers of their choosing:
//! - never follow a symbolic link (`O_NOFOLLOW`), never take over an existing path when creating
//!   (`O_EXCL`), and never block on a FIFO (`O_NONBLOCK` for the open itself);
//! - after opening, `fstat` the descriptor (not the path, which may have changed): only a
//!   regular file with one link (a hard link can point a shared path at someone's file) is used;
//! - trust the file only if its owner is our own effective uid or root, or a uid the caller
//!   explicitly allows ([`TrustedOwners`], `LIBVGPU_TRUSTED_UIDS`).
//!
//! The operator's `vgpu` command passes `trust: None`: it reads tenants' files on purpose (and
//! only through copies, see `Region::open_copy`).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use vgpu_core::config::TrustedOwners;

/// Why a shared file was not opened; `Display` names the path and what to do.
#[derive(Debug)]
pub enum OpenError {
    Io(PathBuf, io::Error),
    Missing(PathBuf),
    /// A symbolic link, FIFO, device, directory or a file with several hard links.
    Unsafe(PathBuf, String),
    /// Owned by a uid we do not trust.
    Untrusted {
        path: PathBuf,
        owner: u32,
        me: u32,
    },
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            OpenError::Missing(p) => write!(f, "{} does not exist", p.display()),
            OpenError::Unsafe(p, why) => write!(f, "{} is {why}; it is not used", p.display()),
            OpenError::Untrusted { path, owner, me } => write!(
                f,
                "{} is owned by uid {owner}, not by this process's uid {me} or root; it is not trusted \
                 (set LIBVGPU_TRUSTED_UIDS={owner} to join it)",
                path.display()
            ),
        }
    }
}

/// The process's effective uid.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Opens `path` read-write for sharing. With `create`, a missing file is created with `mode`
/// (applied with `fchmod`, never through the umask); returns whether we created it. `trust`:
/// `Some` applies the owner rule, `None` skips it (operator tools).
pub fn open_shared(
    path: &Path,
    create: bool,
    mode: u32,
    trust: Option<&TrustedOwners>,
) -> Result<(File, bool), OpenError> {
    let io_err = |e: io::Error| match e.raw_os_error() {
        Some(libc::ELOOP) => OpenError::Unsafe(path.to_path_buf(), "a symbolic link".into()),
        Some(libc::ENXIO) => OpenError::Unsafe(path.to_path_buf(), "not a regular file".into()),
        _ if e.kind() == io::ErrorKind::NotFound => OpenError::Missing(path.to_path_buf()),
        _ => OpenError::Io(path.to_path_buf(), e),
    };
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let mut created = false;
    let file = if create {
        // O_EXCL: fails on any existing entry, a dangling symbolic link included.
        match File::options().read(true).write(true).create_new(true).mode(mode).custom_flags(flags).open(path) {
            Ok(f) => {
                created = true;
                f
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                File::options().read(true).write(true).custom_flags(flags).open(path).map_err(io_err)?
            }
            Err(e) => return Err(io_err(e)),
        }
    } else {
        File::options().read(true).write(true).custom_flags(flags).open(path).map_err(io_err)?
    };
    // The descriptor's own status: what the path names now does not matter any more.
    let meta = file.metadata().map_err(|e| OpenError::Io(path.to_path_buf(), e))?;
    if !meta.file_type().is_file() {
        return Err(OpenError::Unsafe(path.to_path_buf(), "not a regular file".into()));
    }
    if meta.nlink() > 1 {
        return Err(OpenError::Unsafe(path.to_path_buf(), format!("a file with {} hard links", meta.nlink())));
    }
    if let Some(trust) = trust {
        let me = effective_uid();
        if !trust.allows(meta.uid(), me) {
            return Err(OpenError::Untrusted { path: path.to_path_buf(), owner: meta.uid(), me });
        }
    }
    clear_nonblock(&file);
    if created {
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| OpenError::Io(path.to_path_buf(), e))?;
    }
    Ok((file, created))
}

/// `O_NONBLOCK` only guarded the open against a FIFO; a regular file ignores it, but the flag
/// stays on the description, so take it off for tidiness.
fn clear_nonblock(file: &File) {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust() -> TrustedOwners {
        TrustedOwners::default()
    }

    #[test]
    fn creates_new_files_with_the_mode_and_reopens_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let (_, created) = open_shared(&p, true, 0o640, Some(&trust())).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o640);
        let (_, created) = open_shared(&p, true, 0o640, Some(&trust())).unwrap();
        assert!(!created);
        assert!(matches!(open_shared(&dir.path().join("none"), false, 0, None), Err(OpenError::Missing(_))));
    }

    #[test]
    fn never_follows_a_link_nor_opens_a_fifo_or_a_hard_linked_file() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        for create in [true, false] {
            let e = open_shared(&link, create, 0o600, Some(&trust())).unwrap_err();
            assert!(matches!(e, OpenError::Unsafe(..)), "{e}");
            assert!(e.to_string().contains("symbolic link"), "{e}");
        }
        // A dangling link is not created through either.
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("target"), &dangling).unwrap();
        assert!(open_shared(&dangling, true, 0o600, None).is_err());
        assert!(!dir.path().join("target").exists());
        assert_eq!(std::fs::metadata(&victim).unwrap().len(), 0);

        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open_shared(&fifo, true, 0o600, None).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");

        let hard = dir.path().join("hard");
        std::fs::hard_link(&victim, &hard).unwrap();
        let e = open_shared(&hard, true, 0o600, None).unwrap_err();
        assert!(e.to_string().contains("2 hard links"), "{e}");
    }

    #[test]
    fn owner_rule() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"").unwrap();
        // Our own file is trusted; whether someone else's is depends only on `allows`, which
        // vgpu-core's config tests cover (a test cannot chown without root).
        assert!(open_shared(&p, false, 0, Some(&trust())).is_ok());
        let me = effective_uid();
        assert!(trust().allows(me, me) && trust().allows(0, me) && !trust().allows(me + 1, me));
        if me == 0 {
            // As root the test can plant another user's file, as `nobody` would in /tmp.
            let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
            let e = open_shared(&p, true, 0o600, Some(&trust())).unwrap_err();
            assert!(matches!(e, OpenError::Untrusted { owner: 65534, .. }), "{e}");
            let allowed = TrustedOwners { any: false, uids: vec![65534] };
            assert!(open_shared(&p, true, 0o600, Some(&allowed)).is_ok());
            assert!(open_shared(&p, true, 0o600, None).is_ok(), "operator tools skip the rule");
        }
        let e = OpenError::Untrusted { path: p.clone(), owner: 65534, me: 0 };
        assert!(e.to_string().contains("LIBVGPU_TRUSTED_UIDS=65534"), "{e}");
    }
}
