//! Opening, creating, validating and mapping the region file.
//!
//! Safety contract, stated once: a [`Region`] owns a mapping of at least [`FILE_SIZE`] bytes
//! whose contents are only ever accessed through the atomics of [`SharedRegion`] and
//! [`Extension`]; every byte pattern is a valid value of those types, so a corrupt or hostile
//! file can make the numbers wrong (which validation catches where it can) but never causes
//! undefined behaviour. The mapping lives as long as the `Region`.

use std::fs::File;
use std::io;
use std::mem::offset_of;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};

use memmap2::{MmapMut, MmapOptions, MmapRaw};
use vgpu_core::MAX_DEVICES;

use crate::layout::*;
use crate::lock;
use crate::open::{OpenError, TrustedOwners, open_shared};

/// Why a region could not be used; `Display` is the one stderr line the user sees.
#[derive(Debug)]
pub enum RegionError {
    Io(PathBuf, io::Error),
    /// A file we did not write: HAMi-core's own (no extension), or something else entirely.
    Foreign(PathBuf, String),
    Corrupt(PathBuf, String),
    WrongVersion(PathBuf, String),
    Missing(PathBuf),
    /// A link, FIFO or hard-linked file, or a file owned by a user we do not trust.
    Refused(crate::open::OpenError),
    /// Another process holds the initialisation lock past [`lock::LOCK_WAIT`] (stopped?).
    Busy(PathBuf),
}

impl From<OpenError> for RegionError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Io(p, e) => RegionError::Io(p, e),
            OpenError::Missing(p) => RegionError::Missing(p),
            other => RegionError::Refused(other),
        }
    }
}

impl std::fmt::Display for RegionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegionError::Io(p, e) => write!(f, "region file {}: {e}", p.display()),
            RegionError::Foreign(p, why) => write!(f, "region file {} is not a libvgpu region ({why})", p.display()),
            RegionError::Corrupt(p, why) => write!(f, "region file {} is corrupt ({why})", p.display()),
            RegionError::WrongVersion(p, why) => {
                write!(f, "region file {} has an unsupported version ({why})", p.display())
            }
            RegionError::Missing(p) => write!(f, "region file {} does not exist", p.display()),
            RegionError::Refused(e) => write!(f, "region file {e}"),
            RegionError::Busy(p) => write!(
                f,
                "region file {}: another process has held its initialisation lock for over {} ms (stopped?)",
                p.display(),
                lock::LOCK_WAIT.as_millis()
            ),
        }
    }
}

/// What a new region starts with.
#[derive(Clone, Debug, Default)]
pub struct InitParams {
    pub limits: [Option<u64>; MAX_DEVICES],
    pub sm_limits: [Option<u8>; MAX_DEVICES],
    /// `GPU-…` per CUDA ordinal, as far as known.
    pub uuids: Vec<String>,
    /// HAMi's `CUDA_TASK_PRIORITY`: 0 high, 1 low.
    pub priority: i32,
}

enum Mapping {
    File(MmapRaw),
    Private(MmapMut),
    /// A copy of the file read with `pread` (operator tools): a tenant truncating its file
    /// cannot fault a copy. Writes go to the file with `pwrite` (see [`Region::write_back`]).
    Copy(MmapMut),
}

/// Writes zeros over the pages a new region's initialisation and first slot touch, through
/// `pwrite`. Through the mapping, the first write to each new page of a shared file mapping is a
/// fault the file system handles in `page_mkwrite`: on ext4, creating a region that way costs
/// a process's start ~0.5 ms, against ~0.1 ms through `pwrite` (measured with the fake driver).
fn prefill(file: &File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    const PAGE: usize = 4096;
    let zeros = [0u8; 4 * PAGE];
    // The header, device table and slot 0.
    let head = (offset_of!(SharedRegion, procs) + size_of::<ProcSlot>()).next_multiple_of(PAGE);
    // From `proc_num` on: the v1 tail and our extension.
    let tail = offset_of!(SharedRegion, proc_num) / PAGE * PAGE;
    for range in [0..head, tail..FILE_SIZE] {
        let mut at = range.start;
        while at < range.end {
            let n = (range.end - at).min(zeros.len());
            file.write_all_at(&zeros[..n], at as u64)?;
            at += n;
        }
    }
    Ok(())
}

pub struct Region {
    mapping: Mapping,
    file: Option<File>,
    path: Option<PathBuf>,
}

// SAFETY: the mapping is only accessed through atomics (see the module's contract).
unsafe impl Send for Region {}
// SAFETY: as for Send: every access to the mapping is an atomic operation.
unsafe impl Sync for Region {}

/// Byte whose lock serialises initialisation (held for microseconds; see `lock::lock`).
pub(crate) const INIT_LOCK: u64 = 0;

impl Region {
    /// Opens the region at `path`, creating and initialising it if it does not exist, trusting
    /// only files of our own uid or root (see [`open_or_create_trusting`](Self::open_or_create_trusting)).
    pub fn open_or_create(path: &Path, mode: u32, init: &InitParams) -> Result<Region, RegionError> {
        Self::open_or_create_trusting(path, mode, init, &TrustedOwners::default())
    }

    /// As [`open_or_create`](Self::open_or_create), joining files owned by `trust`'s uids too.
    /// Never follows a link or opens a non-regular file (see `open`). `mode` is applied with
    /// `fchmod` to a file we create (never through the umask). The initialisation lock is waited
    /// for at most [`lock::LOCK_WAIT`].
    pub fn open_or_create_trusting(
        path: &Path,
        mode: u32,
        init: &InitParams,
        trust: &TrustedOwners,
    ) -> Result<Region, RegionError> {
        let io = |e| RegionError::Io(path.to_path_buf(), e);
        let (file, _created) = open_shared(path, true, mode, Some(trust))?;
        if !lock::lock_within(&file, INIT_LOCK, lock::LOCK_WAIT).map_err(io)? {
            return Err(RegionError::Busy(path.to_path_buf()));
        }
        let result = Self::init_locked(file, path, init);
        if let Ok(r) = &result
            && let Some(f) = &r.file
        {
            let _ = lock::unlock(f, INIT_LOCK);
        }
        result
    }

    fn init_locked(file: File, path: &Path, init: &InitParams) -> Result<Region, RegionError> {
        let io = |e| RegionError::Io(path.to_path_buf(), e);
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            file.set_len(FILE_SIZE as u64).map_err(io)?;
            prefill(&file).map_err(io)?;
        } else if PREVIOUS_FILE_SIZES.contains(&(len as usize)) {
            // A region of a release before `driver_overhead` or `spilled` was appended: its new
            // tail reads as zeros, which is right (no overhead known yet, nothing spilled);
            // processes of the older release keep mapping their shorter view.
            file.set_len(FILE_SIZE as u64).map_err(io)?;
        }
        let region = Self::map_file(file, path)?;
        let x = region.extension();
        if PREVIOUS_FILE_SIZES.contains(&(len as usize)) && x.size.load(Acquire) as u64 == len - EXTENSION_OFFSET as u64
        {
            x.size.store(size_of::<Extension>() as u32, Release);
        }
        let s = region.shared();
        match s.initialized_flag.load(Acquire) {
            MAGIC => {}
            // New, or its creator died before finishing (the magic is written last, and we hold
            // the lock it held throughout): initialise it.
            0 => region.initialise(init),
            other => return Err(RegionError::Corrupt(path.to_path_buf(), format!("initialized_flag {other}"))),
        }
        region.validate()?;
        Ok(region)
    }

    /// Opens an existing, initialised region and maps it (tests; NVML-only processes). Never
    /// follows a link; no owner rule.
    pub fn open_existing(path: &Path) -> Result<Region, RegionError> {
        let (file, _) = open_shared(path, false, 0, None)?;
        let region = Self::map_file(file, path)?;
        if region.shared().initialized_flag.load(Acquire) != MAGIC {
            return Err(RegionError::Corrupt(path.to_path_buf(), "not initialised".into()));
        }
        region.validate()?;
        Ok(region)
    }

    /// A copy of an existing, initialised region, read with `pread` (the `vgpu` command and its
    /// exporter): nothing a tenant does to its file afterwards (truncating it) can fault the
    /// reader. Slot locks are still taken on the file; [`set_limit`](Self::set_limit),
    /// [`set_sm_limit`](Self::set_sm_limit) and [`reap`](Self::reap) write through to it.
    pub fn open_copy(path: &Path) -> Result<Region, RegionError> {
        use std::os::unix::fs::FileExt;
        let io = |e| RegionError::Io(path.to_path_buf(), e);
        let (file, _) = open_shared(path, false, 0, None)?;
        let len = file.metadata().map_err(io)?.len();
        check_size(path, len)?;
        let mut map = MmapOptions::new().len(FILE_SIZE).map_anon().map_err(io)?;
        let mut at = 0;
        while at < FILE_SIZE {
            match file.read_at(&mut map[at..], at as u64) {
                Ok(0) => return Err(check_size(path, at as u64).err().unwrap_or(RegionError::Missing(path.into()))),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        let region = Region { mapping: Mapping::Copy(map), file: Some(file), path: Some(path.to_path_buf()) };
        if region.shared().initialized_flag.load(Acquire) != MAGIC {
            return Err(RegionError::Corrupt(path.to_path_buf(), "not initialised".into()));
        }
        region.validate()?;
        Ok(region)
    }

    /// Replaces a file mapping, in place, with zero-filled private memory: after the file was
    /// truncated under us, touching the old pages would raise SIGBUS, and no signal handler may
    /// be installed in the host process. Every reference into the region stays valid (same
    /// addresses, every byte pattern is a valid atomic); the numbers become zeros, so the
    /// caller re-attaches right after. A no-op for private memory and copies.
    pub fn shield(&self) -> io::Result<()> {
        let Mapping::File(m) = &self.mapping else { return Ok(()) };
        // SAFETY: MAP_FIXED over exactly the range `m` owns (its own munmap on drop then unmaps
        // the anonymous pages instead); other threads' accesses see either the old or the new
        // pages, never unmapped memory, since the kernel replaces the range atomically.
        let p = unsafe {
            libc::mmap(
                m.as_ptr() as *mut libc::c_void,
                m.len(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Reads `N` bytes of the file at `offset` with `pread`, never through the mapping (a
    /// truncated file cannot fault it); `None` past the end or without a file.
    pub fn pread<const N: usize>(&self, offset: u64) -> Option<[u8; N]> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; N];
        self.file.as_ref()?.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }

    /// Writes bytes `range` of a copy back to its file (`pwrite`); nothing for a mapping.
    pub(crate) fn write_back(&self, range: std::ops::Range<usize>) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let (Mapping::Copy(_), Some(file)) = (&self.mapping, &self.file) else { return Ok(()) };
        let range = range.start.min(FILE_SIZE)..range.end.min(FILE_SIZE);
        // SAFETY: a copy is private memory of FILE_SIZE bytes that only this process writes,
        // through `&self`'s atomics; reading it as bytes races with nothing that could tear a
        // byte, and the range is within the mapping.
        let bytes = unsafe { std::slice::from_raw_parts(self.base().add(range.start), range.len()) };
        file.write_all_at(bytes, range.start as u64)
    }

    /// Sets device `dev`'s memory cap (bytes, 0 = none); returns the previous one.
    pub fn set_limit(&self, dev: usize, bytes: u64) -> io::Result<u64> {
        let old = self.shared().limit[dev].swap(bytes, SeqCst);
        self.write_back(field_range(offset_of!(SharedRegion, limit) + dev * 8, 8))?;
        Ok(old)
    }

    /// Sets device `dev`'s SM limit (percent, 0 = none); returns the previous one.
    pub fn set_sm_limit(&self, dev: usize, percent: u64) -> io::Result<u64> {
        let old = self.shared().sm_limit[dev].swap(percent, SeqCst);
        self.write_back(field_range(offset_of!(SharedRegion, sm_limit) + dev * 8, 8))?;
        Ok(old)
    }

    /// A region in private memory: the same protocol, for one process, when no file can be used.
    pub fn private(init: &InitParams) -> io::Result<Region> {
        let map = MmapOptions::new().len(FILE_SIZE).map_anon()?;
        let region = Region { mapping: Mapping::Private(map), file: None, path: None };
        region.initialise(init);
        Ok(region)
    }

    fn map_file(file: File, path: &Path) -> Result<Region, RegionError> {
        let len = file.metadata().map_err(|e| RegionError::Io(path.to_path_buf(), e))?.len();
        check_size(path, len)?;
        let map =
            MmapOptions::new().len(FILE_SIZE).map_raw(&file).map_err(|e| RegionError::Io(path.to_path_buf(), e))?;
        Ok(Region { mapping: Mapping::File(map), file: Some(file), path: Some(path.to_path_buf()) })
    }

    fn base(&self) -> *const u8 {
        match &self.mapping {
            Mapping::File(m) => m.as_ptr(),
            Mapping::Private(m) | Mapping::Copy(m) => m.as_ptr(),
        }
    }

    pub fn shared(&self) -> &SharedRegion {
        // SAFETY: the mapping is FILE_SIZE bytes, page-aligned, and only accessed via atomics.
        unsafe { &*(self.base() as *const SharedRegion) }
    }

    pub fn extension(&self) -> &Extension {
        // SAFETY: as above; EXTENSION_OFFSET is 8-aligned and the extension fits in FILE_SIZE.
        unsafe { &*(self.base().add(EXTENSION_OFFSET) as *const Extension) }
    }

    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn initialise(&self, init: &InitParams) {
        let s = self.shared();
        s.major_version.store(MAJOR, Relaxed);
        s.minor_version.store(MINOR, Relaxed);
        s.owner_pid.store(0, Relaxed);
        s.device_num.store(init.uuids.len().min(MAX_DEVICES) as u64, Relaxed);
        for (i, uuid) in init.uuids.iter().take(MAX_DEVICES).enumerate() {
            store_uuid(&s.uuids[i], uuid);
        }
        for i in 0..MAX_DEVICES {
            s.limit[i].store(init.limits[i].unwrap_or(0), Relaxed);
            s.sm_limit[i].store(init.sm_limits[i].map_or(0, u64::from), Relaxed);
        }
        s.proc_num.store(0, Relaxed);
        // HAMi: 1 = limit SM now; the monitor may turn it off (GPU_CORE_UTILIZATION_POLICY decides).
        s.utilization_switch.store(1, Relaxed);
        s.priority.store(init.priority, Relaxed);
        let x = self.extension();
        x.version.store(EXTENSION_VERSION, Relaxed);
        x.size.store(size_of::<Extension>() as u32, Relaxed);
        x.magic.store(EXTENSION_MAGIC, Relaxed);
        // Last: readers that see the magic see everything above.
        s.initialized_flag.store(MAGIC, Release);
    }

    fn validate(&self) -> Result<(), RegionError> {
        let p = || self.path.clone().unwrap_or_default();
        let s = self.shared();
        let (major, minor) = (s.major_version.load(Acquire), s.minor_version.load(Acquire));
        if major != MAJOR || minor < MINOR {
            return Err(RegionError::WrongVersion(p(), format!("v{major}.{minor}, expected v{MAJOR}.{MINOR}")));
        }
        let x = self.extension();
        if x.magic.load(Acquire) != EXTENSION_MAGIC {
            return Err(RegionError::Foreign(p(), "no libvgpu extension after the HAMi v1.2 struct".into()));
        }
        let (ver, size) = (x.version.load(Acquire), x.size.load(Acquire) as usize);
        if ver != EXTENSION_VERSION || size < size_of::<Extension>() {
            return Err(RegionError::WrongVersion(p(), format!("extension v{ver} of {size} bytes")));
        }
        let n = s.proc_num.load(Acquire);
        if !(0..=MAX_PROCS as i32).contains(&n) {
            return Err(RegionError::Corrupt(p(), format!("proc_num {n}")));
        }
        let d = s.device_num.load(Acquire);
        if d > MAX_DEVICES as u64 {
            return Err(RegionError::Corrupt(p(), format!("device_num {d}")));
        }
        Ok(())
    }

    /// The UUID recorded for device `i` (empty if none).
    pub fn uuid(&self, i: usize) -> String {
        let Some(words) = self.shared().uuids.get(i) else { return String::new() };
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.load(Acquire).to_le_bytes()).collect();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    }

    /// The index at which `uuid` is recorded, if it is.
    pub fn index_of_uuid(&self, uuid: &str) -> Option<usize> {
        position_of(&(0..MAX_DEVICES).map(|i| self.uuid(i)).collect::<Vec<_>>(), uuid)
    }

    /// Where each of this process's CUDA devices (`uuids`, by ordinal) lives in the region: the
    /// container's devices are its recorded UUIDs, so a process that sees them in another order or
    /// only some of them (`CUDA_VISIBLE_DEVICES=1` for one worker) is charged on the right one.
    /// A UUID not yet recorded takes the index of its ordinal if that is free, else the first free
    /// one; a device with no UUID keeps its ordinal; `None` where all are taken. Serialised by
    /// the initialisation lock, since two processes may record different devices at once.
    pub fn place_uuids(&self, uuids: &[String]) -> Vec<Option<usize>> {
        // Bounded: a stopped process holding the lock must not hang us; unlocked, two processes
        // recording different devices at once could pick the same free index (rare, visible).
        let locked = self.file().filter(|f| lock::lock_within(f, INIT_LOCK, lock::LOCK_WAIT).unwrap_or(false));
        let s = self.shared();
        let mut recorded: Vec<String> = (0..MAX_DEVICES).map(|i| self.uuid(i)).collect();
        let mut placed = Vec::with_capacity(uuids.len());
        for (ordinal, uuid) in uuids.iter().enumerate() {
            let found = position_of(&recorded, uuid);
            let free = || {
                (ordinal < MAX_DEVICES && recorded[ordinal].is_empty())
                    .then_some(ordinal)
                    .or_else(|| recorded.iter().position(String::is_empty))
            };
            let index = match found {
                Some(i) => Some(i),
                // Unnamed (the driver could not say): its ordinal, the one thing that names it.
                None if uuid.is_empty() => (ordinal < MAX_DEVICES).then_some(ordinal),
                None => free().inspect(|&i| {
                    store_uuid(&s.uuids[i], uuid);
                    recorded[i] = uuid.clone();
                }),
            };
            placed.push(index);
        }
        let named = recorded.iter().rposition(|r| !r.is_empty()).map_or(0, |i| i + 1);
        s.device_num.fetch_max(named as u64, SeqCst);
        if let Some(f) = locked {
            let _ = lock::unlock(f, INIT_LOCK);
        }
        placed
    }
}

fn field_range(offset: usize, len: usize) -> std::ops::Range<usize> {
    offset..offset + len
}

/// A file shorter than ours is not one of our regions (HAMi-core's own, or something else).
fn check_size(path: &Path, len: u64) -> Result<(), RegionError> {
    if len >= FILE_SIZE as u64 {
        return Ok(());
    }
    let why = if len == size_of::<SharedRegion>() as u64 + 1 || len == HAMI_V0_FILE_SIZE {
        format!("{len} bytes: a HAMi-core region without libvgpu's extension")
    } else {
        format!("{len} bytes, expected at least {FILE_SIZE}")
    };
    Err(RegionError::Foreign(path.to_path_buf(), why))
}

/// Where `uuid` is in `recorded` (UUIDs compare without case; an empty one matches nothing).
fn position_of(recorded: &[String], uuid: &str) -> Option<usize> {
    recorded.iter().position(|r| !uuid.is_empty() && r.eq_ignore_ascii_case(uuid))
}

fn store_uuid(words: &[std::sync::atomic::AtomicU64; UUID_LEN / 8], uuid: &str) {
    let mut bytes = [0u8; UUID_LEN];
    let n = uuid.len().min(UUID_LEN - 1);
    bytes[..n].copy_from_slice(&uuid.as_bytes()[..n]);
    for (w, chunk) in words.iter().zip(bytes.chunks_exact(8)) {
        w.store(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])), Release);
    }
}
