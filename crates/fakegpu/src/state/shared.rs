//! Memory shared between processes and between devices: CUDA IPC handles
//! (cuIpcGetMemHandle, cuIpcOpenMemHandle), VMM shareable handles (cuMemExportToShareableHandle,
//! cuMemImportFromShareableHandle as a POSIX file descriptor) and peer access between contexts.
//!
//! The fake's memory is per process, so a handle carries what an importer needs to know about
//! the exporter's allocation: the physical device (by UUID, since the importer may number the
//! devices differently), the size, and for IPC the exporting process and its pointer. The
//! importer gets a mapping of its own, charged to none of its devices: the memory is the
//! exporter's, and stays charged to the exporter until the exporter frees it.

use cuda_types::CUresult;

use super::{AllocKind, Res, State, VmmHandle};

pub const ERROR_PEER_ACCESS_ALREADY_ENABLED: CUresult = CUresult(704);
pub const ERROR_PEER_ACCESS_NOT_ENABLED: CUresult = CUresult(705);

/// `sizeof(CUipcMemHandle)`: 64 opaque bytes.
pub const IPC_HANDLE_SIZE: usize = 64;
const IPC_MAGIC: &[u8; 8] = b"fakeIPC1";

/// What a fake `CUipcMemHandle` says: magic, exporter pid, device UUID, the exporter's base
/// pointer and the allocation's size (little-endian), the rest zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpcHandle {
    pub pid: u32,
    pub uuid: [u8; 16],
    pub ptr: u64,
    pub size: u64,
}

impl IpcHandle {
    pub fn encode(&self) -> [u8; IPC_HANDLE_SIZE] {
        let mut b = [0u8; IPC_HANDLE_SIZE];
        b[..8].copy_from_slice(IPC_MAGIC);
        b[8..12].copy_from_slice(&self.pid.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        b[32..40].copy_from_slice(&self.ptr.to_le_bytes());
        b[40..48].copy_from_slice(&self.size.to_le_bytes());
        b
    }

    /// `None` for bytes no fake exporter wrote (another driver's handle, garbage, zeros).
    pub fn decode(b: &[u8; IPC_HANDLE_SIZE]) -> Option<IpcHandle> {
        if &b[..8] != IPC_MAGIC || b[12..16] != [0; 4] || b[48..] != [0; 16] {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let h = IpcHandle {
            pid: u32::from_le_bytes(b[8..12].try_into().unwrap_or_default()),
            uuid: b[16..32].try_into().unwrap_or_default(),
            ptr: u64_at(32),
            size: u64_at(40),
        };
        (h.pid != 0 && h.size != 0).then_some(h)
    }
}

/// `CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR`: the only shareable type the fake exports (the
/// Win32 types do not exist on Linux; fabric handles need an IMEX daemon).
pub const HANDLE_TYPE_POSIX_FD: u32 = 1;

/// Bytes of the record a shareable file descriptor holds.
pub const SHAREABLE_RECORD_SIZE: usize = 48;
const VMM_MAGIC: &[u8; 8] = b"fakeVMM1";

/// What the file behind an exported file descriptor holds: magic, location (0 host,
/// 1 device), the requested handle types, the device UUID (zero for host memory) and the
/// size, little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareableRecord {
    /// `None`: host-located memory.
    pub uuid: Option<[u8; 16]>,
    pub size: u64,
    pub handle_types: u32,
}

impl ShareableRecord {
    pub fn encode(&self) -> [u8; SHAREABLE_RECORD_SIZE] {
        let mut b = [0u8; SHAREABLE_RECORD_SIZE];
        b[..8].copy_from_slice(VMM_MAGIC);
        b[8..12].copy_from_slice(&u32::from(self.uuid.is_some()).to_le_bytes());
        b[12..16].copy_from_slice(&self.handle_types.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid.unwrap_or_default());
        b[32..40].copy_from_slice(&self.size.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<ShareableRecord> {
        let b: &[u8; SHAREABLE_RECORD_SIZE] = b.try_into().ok()?;
        if &b[..8] != VMM_MAGIC {
            return None;
        }
        let uuid = match u32::from_le_bytes(b[8..12].try_into().ok()?) {
            0 => None,
            1 => Some(b[16..32].try_into().ok()?),
            _ => return None,
        };
        let handle_types = u32::from_le_bytes(b[12..16].try_into().ok()?);
        let size = u64::from_le_bytes(b[32..40].try_into().ok()?);
        (size != 0).then_some(ShareableRecord { uuid, size, handle_types })
    }
}

impl State {
    /// The physical device with these UUID bytes.
    pub fn device_by_uuid(&self, uuid: &[u8; 16]) -> Option<usize> {
        self.devices.iter().position(|d| &d.uuid_bytes == uuid)
    }

    /// cuIpcGetMemHandle: the handle of the allocation holding `ptr`. Only memory from
    /// cuMemAlloc/cuMemAllocPitch can be exported this way: managed memory cannot be, pool
    /// memory goes through cuMemPoolExportPointer, and a mapping opened from another process
    /// is not this process's to export.
    pub fn ipc_export(&self, ptr: u64, pid: u32) -> Res<IpcHandle> {
        let (&base, a) = self.allocs.range(..=ptr).next_back().ok_or(CUresult::ERROR_INVALID_VALUE)?;
        let inside = ptr < base + a.size.max(1);
        match (inside, a.kind, a.dev) {
            (true, AllocKind::Linear | AllocKind::Pitch, Some(dev)) => {
                Ok(IpcHandle { pid, uuid: self.devices[dev].uuid_bytes, ptr: base, size: a.size })
            }
            _ => Err(CUresult::ERROR_INVALID_VALUE),
        }
    }

    /// cuIpcOpenMemHandle in context `ctx` of process `own_pid`. A handle the process made
    /// itself is refused (`CUDA_ERROR_INVALID_CONTEXT`, as the driver does); one already open
    /// in this context gets the same pointer and one more reference. The device may be any
    /// physical one, visible to this process or not, as with the driver.
    pub fn ipc_open(&mut self, ctx: u64, h: &IpcHandle, own_pid: u32) -> Res<u64> {
        if h.pid == own_pid {
            return Err(CUresult::ERROR_INVALID_CONTEXT);
        }
        if self.device_by_uuid(&h.uuid).is_none() {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        let open = self.allocs.iter_mut().find(|(_, a)| {
            a.ctx == ctx
                && matches!(a.kind, AllocKind::Ipc { exporter, remote, .. } if exporter == h.pid && remote == h.ptr)
        });
        if let Some((&ptr, a)) = open {
            if let AllocKind::Ipc { refs, .. } = &mut a.kind {
                *refs += 1;
            }
            return Ok(ptr);
        }
        self.alloc_uncharged(ctx, h.size, AllocKind::Ipc { exporter: h.pid, remote: h.ptr, refs: 1 })
    }

    /// cuIpcCloseMemHandle: drops one reference; the last one unmaps.
    pub fn ipc_close(&mut self, ptr: u64) -> Res<()> {
        let a = self.allocs.get_mut(&ptr).ok_or(CUresult::ERROR_INVALID_VALUE)?;
        let AllocKind::Ipc { refs, .. } = &mut a.kind else {
            return Err(CUresult::ERROR_INVALID_VALUE);
        };
        *refs -= 1;
        if *refs == 0 {
            self.free(ptr)?;
        }
        Ok(())
    }

    /// cuMemExportToShareableHandle's record of a physical handle. The handle must be live
    /// and created with the type among its `requestedHandleTypes`.
    pub fn vmm_export(&self, h: u64, handle_type: u32) -> Res<ShareableRecord> {
        let v = self.vmm.get(&h).filter(|v| !v.released).ok_or(CUresult::ERROR_INVALID_VALUE)?;
        if handle_type != HANDLE_TYPE_POSIX_FD {
            return Err(CUresult::ERROR_NOT_SUPPORTED);
        }
        if v.handle_types & handle_type == 0 {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        let uuid = v.dev.map(|d| self.devices[d].uuid_bytes);
        Ok(ShareableRecord { uuid, size: v.size, handle_types: v.handle_types })
    }

    /// cuMemImportFromShareableHandle: a new handle to the exporter's memory, mappable like
    /// any other and released with cuMemRelease, charged to no device of this process.
    pub fn vmm_import(&mut self, rec: &ShareableRecord) -> Res<u64> {
        let dev = match rec.uuid {
            Some(u) => Some(self.device_by_uuid(&u).ok_or(CUresult::ERROR_INVALID_VALUE)?),
            None => None,
        };
        let v =
            VmmHandle { dev, size: rec.size, handle_types: rec.handle_types, imported: true, released: false, maps: 0 };
        Ok(self.vmm_insert(v))
    }

    /// cuCtxEnablePeerAccess from `ctx` to `peer`: both live, on different devices, once.
    pub fn peer_enable(&mut self, ctx: u64, peer: u64) -> Res<()> {
        let (dev, peer_dev) = (self.ctx_device(ctx)?, self.ctx_device(peer)?);
        if dev == peer_dev {
            return Err(CUresult::ERROR_INVALID_DEVICE);
        }
        if !self.peers.insert((ctx, peer)) {
            return Err(ERROR_PEER_ACCESS_ALREADY_ENABLED);
        }
        Ok(())
    }

    pub fn peer_disable(&mut self, ctx: u64, peer: u64) -> Res<()> {
        self.ctx_device(ctx)?;
        if self.peers.remove(&(ctx, peer)) { Ok(()) } else { Err(ERROR_PEER_ACCESS_NOT_ENABLED) }
    }
}
