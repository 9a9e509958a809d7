//! Memory pools, VMM handles and mappings, and arrays.

use cuda_types::{CUresult, mempool_attr};

use super::{
    AllocKind, PTR_ALIGN, RESERVE_VA_END, Res, State, TAG_ARRAY, TAG_MIPMAP, TAG_POOL, VMM_GRANULARITY, round_up,
};

#[derive(Clone, Debug)]
pub struct Pool {
    /// `None`: a host-located pool, whose memory no device is charged for.
    pub dev: Option<usize>,
    pub default: bool,
    /// Bytes handed out and not yet freed. The fake releases freed pool memory at once, so
    /// this is also what the pool holds ("reserved").
    pub used: u64,
    pub high: u64,
    pub release_threshold: u64,
    pub flags: [i32; 3],
}

#[derive(Clone, Copy, Debug)]
pub struct VmmHandle {
    /// Where the memory is: `None` for host-located physical memory, charged to no device.
    pub dev: Option<usize>,
    pub size: u64,
    /// The shareable-handle types it may be exported as (`requestedHandleTypes`).
    pub handle_types: u32,
    /// Imported from a shareable handle: the memory is the exporter's, charged where it was
    /// created, and this process's devices are not charged for it again.
    pub imported: bool,
    /// cuMemRelease was called; the memory goes once the last mapping is unmapped, as in
    /// the driver, so "used" stays up while a released handle is still mapped.
    pub released: bool,
    pub maps: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct Array {
    pub dev: usize,
    pub size: u64,
    pub ctx: u64,
    pub mipmapped: bool,
}

impl State {
    // ---- pools ----

    pub fn pool_create(&mut self, dev: Option<usize>) -> u64 {
        let h = self.new_handle(TAG_POOL);
        let pool = Pool { dev, default: false, used: 0, high: 0, release_threshold: 0, flags: [0; 3] };
        self.pools.insert(h, pool);
        h
    }

    pub fn default_pool(&mut self, dev: usize) -> u64 {
        if let Some(h) = self.default_pools[dev] {
            return h;
        }
        let h = self.pool_create(Some(dev));
        if let Some(p) = self.pools.get_mut(&h) {
            p.default = true;
        }
        self.default_pools[dev] = Some(h);
        h
    }

    pub fn pool_destroy(&mut self, h: u64) -> Res<()> {
        match self.pools.get(&h) {
            Some(p) if !p.default => {
                self.pools.remove(&h);
                Ok(())
            }
            _ => Err(CUresult::ERROR_INVALID_VALUE),
        }
    }

    pub fn pool_alloc(&mut self, ctx: u64, pool: u64, size: u64) -> Res<u64> {
        let dev = self.pools.get(&pool).ok_or(CUresult::ERROR_INVALID_VALUE)?.dev;
        let kind = AllocKind::Async { pool };
        let ptr = match dev {
            Some(dev) => self.alloc(ctx, dev, size, kind)?,
            None => self.alloc_uncharged(ctx, size, kind)?,
        };
        if let Some(p) = self.pools.get_mut(&pool) {
            p.used += size;
            p.high = p.high.max(p.used);
        }
        Ok(ptr)
    }

    pub fn pool_set_attr(&mut self, h: u64, attr: u32, value: u64) -> Res<()> {
        let p = self.pools.get_mut(&h).ok_or(CUresult::ERROR_INVALID_VALUE)?;
        match attr {
            1..=3 => p.flags[attr as usize - 1] = value as i32,
            mempool_attr::RELEASE_THRESHOLD => p.release_threshold = value,
            // Only resetting the high-water marks to zero is allowed.
            mempool_attr::RESERVED_MEM_HIGH | mempool_attr::USED_MEM_HIGH if value == 0 => p.high = p.used,
            _ => return Err(CUresult::ERROR_INVALID_VALUE),
        }
        Ok(())
    }

    /// The value and whether it is an `int` (else a 64-bit integer).
    pub fn pool_get_attr(&self, h: u64, attr: u32) -> Res<(u64, bool)> {
        let p = self.pools.get(&h).ok_or(CUresult::ERROR_INVALID_VALUE)?;
        Ok(match attr {
            1..=3 => (p.flags[attr as usize - 1] as u64, true),
            mempool_attr::RELEASE_THRESHOLD => (p.release_threshold, false),
            mempool_attr::RESERVED_MEM_CURRENT | mempool_attr::USED_MEM_CURRENT => (p.used, false),
            mempool_attr::RESERVED_MEM_HIGH | mempool_attr::USED_MEM_HIGH => (p.high, false),
            _ => return Err(CUresult::ERROR_INVALID_VALUE),
        })
    }

    // ---- virtual memory management ----

    pub fn vmm_create(&mut self, size: u64, dev: Option<usize>, handle_types: u32) -> Res<u64> {
        if size == 0 || !size.is_multiple_of(VMM_GRANULARITY) {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        if let Some(dev) = dev {
            self.charge(dev, size)?;
        }
        Ok(self.vmm_insert(VmmHandle { dev, size, handle_types, imported: false, released: false, maps: 0 }))
    }

    pub(super) fn vmm_insert(&mut self, v: VmmHandle) -> u64 {
        // Generic allocation handles are plain integers in the API; small ones suit logs.
        self.next_id += 1;
        self.vmm.insert(self.next_id, v);
        self.next_id
    }

    pub fn vmm_release(&mut self, h: u64) -> Res<()> {
        let v = self.vmm.get_mut(&h).filter(|v| !v.released).ok_or(CUresult::ERROR_INVALID_VALUE)?;
        v.released = true;
        self.vmm_maybe_drop(h);
        Ok(())
    }

    fn vmm_maybe_drop(&mut self, h: u64) {
        if let Some(v) = self.vmm.get(&h).copied()
            && v.released
            && v.maps == 0
        {
            self.vmm.remove(&h);
            if let Some(dev) = v.dev.filter(|_| !v.imported) {
                self.uncharge(dev, v.size);
            }
        }
    }

    pub fn reserve_va(&mut self, size: u64, align: u64) -> Res<u64> {
        let align = align.max(PTR_ALIGN).next_power_of_two();
        let start = round_up(self.next_reserve, align);
        let end = start.checked_add(round_up(size.max(1), PTR_ALIGN));
        match end {
            Some(end) if end <= RESERVE_VA_END => {
                self.next_reserve = end;
                Ok(start)
            }
            _ => Err(CUresult::ERROR_OUT_OF_MEMORY),
        }
    }

    pub fn address_reserve(&mut self, size: u64, align: u64) -> Res<u64> {
        if size == 0 || !size.is_multiple_of(VMM_GRANULARITY) || (align != 0 && !align.is_power_of_two()) {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        let ptr = self.reserve_va(size, align.max(VMM_GRANULARITY))?;
        self.reservations.insert(ptr, size);
        Ok(ptr)
    }

    pub fn address_free(&mut self, ptr: u64, size: u64) -> Res<()> {
        match self.reservations.get(&ptr) {
            Some(&s) if s == size => {
                self.reservations.remove(&ptr);
                Ok(())
            }
            _ => Err(CUresult::ERROR_INVALID_VALUE),
        }
    }

    pub fn map(&mut self, ptr: u64, size: u64, offset: u64, h: u64) -> Res<()> {
        let invalid = Err(CUresult::ERROR_INVALID_VALUE);
        let end = ptr.checked_add(size).ok_or(CUresult::ERROR_INVALID_VALUE)?;
        let reserved = self.reservations.range(..=ptr).next_back().is_some_and(|(&s, &len)| end <= s + len);
        let fits =
            self.vmm.get(&h).is_some_and(|v| !v.released && offset.checked_add(size).is_some_and(|e| e <= v.size));
        let overlaps = self.mappings.range(..end).next_back().is_some_and(|(&s, &(_, len))| s + len > ptr);
        if size == 0 || !reserved || !fits || overlaps {
            return invalid;
        }
        self.mappings.insert(ptr, (h, size));
        if let Some(v) = self.vmm.get_mut(&h) {
            v.maps += 1;
        }
        Ok(())
    }

    /// Unmaps every mapping that starts inside [ptr, ptr+size).
    pub fn unmap(&mut self, ptr: u64, size: u64) -> Res<()> {
        let end = ptr.saturating_add(size);
        let starts: Vec<u64> = self.mappings.range(ptr..end).map(|(&s, _)| s).collect();
        if starts.is_empty() {
            return Err(CUresult::ERROR_INVALID_VALUE);
        }
        for s in starts {
            if let Some((h, _)) = self.mappings.remove(&s) {
                if let Some(v) = self.vmm.get_mut(&h) {
                    v.maps = v.maps.saturating_sub(1);
                }
                self.vmm_maybe_drop(h);
            }
        }
        Ok(())
    }

    /// Whether [ptr, ptr+size) is covered by mappings end to end (several handles mapped
    /// side by side count, as an expandable segment maps them).
    pub fn fully_mapped(&self, ptr: u64, size: u64) -> bool {
        let end = ptr.saturating_add(size);
        let mut cursor = ptr;
        while cursor < end {
            match self.mappings.range(..=cursor).next_back() {
                Some((&s, &(_, len))) if s + len > cursor => cursor = s + len,
                _ => return false,
            }
        }
        size > 0
    }

    // ---- arrays ----

    pub fn array_create(&mut self, ctx: u64, dev: usize, size: u64, mipmapped: bool) -> Res<u64> {
        self.charge(dev, size)?;
        let h = self.new_handle(if mipmapped { TAG_MIPMAP } else { TAG_ARRAY });
        self.arrays.insert(h, Array { dev, size, ctx, mipmapped });
        Ok(h)
    }

    pub fn array_destroy(&mut self, h: u64, mipmapped: bool) -> Res<()> {
        match self.arrays.get(&h) {
            Some(a) if a.mipmapped == mipmapped => {
                let a = *a;
                self.arrays.remove(&h);
                self.uncharge(a.dev, a.size);
                Ok(())
            }
            _ => Err(CUresult::ERROR_INVALID_HANDLE),
        }
    }
}

/// Bytes the fake charges for an array level: every texel of every channel, the whole
/// rounded up to 512 bytes (a stand-in for the driver's tiling overhead).
pub fn array_bytes(w: u64, h: u64, d: u64, channels: u64, format: u32) -> u64 {
    let texels = w.saturating_mul(h.max(1)).saturating_mul(d.max(1));
    let bytes = texels.saturating_mul(channels).saturating_mul(cuda_types::array_format::channel_bytes(format));
    round_up(bytes, PTR_ALIGN)
}

/// A mipmapped array: the sum of its levels, each halving every non-zero extent (never
/// below 1).
pub fn mipmap_bytes(w: u64, h: u64, d: u64, channels: u64, format: u32, levels: u32) -> u64 {
    let half = |v: u64, l: u32| if v == 0 { 0 } else { (v >> l.min(63)).max(1) };
    (0..levels)
        .map(|l| array_bytes(half(w, l), half(h, l), half(d, l), channels, format))
        .fold(0u64, |a, b| a.saturating_add(b))
}
