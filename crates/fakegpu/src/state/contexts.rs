//! Primary and created contexts. A context lives on a physical device; the CUDA entry
//! points translate ordinals before they get here.

use cuda_types::CUresult;

use super::{Ctx, Res, State, TAG_CTX};

impl State {
    /// The device of a usable (live, active) context.
    pub fn ctx_device(&self, ctx: u64) -> Res<usize> {
        match self.ctxs.get(&ctx) {
            Some(c) if c.active => Ok(c.dev),
            _ => Err(CUresult::ERROR_INVALID_CONTEXT),
        }
    }

    pub fn ctx_is_primary(&self, ctx: u64) -> bool {
        self.ctxs.get(&ctx).is_some_and(|c| c.primary)
    }

    pub fn primary_retain(&mut self, dev: usize) -> Res<u64> {
        let (handle, refs) = (self.primaries[dev].handle, self.primaries[dev].refcount);
        if refs == 0 {
            self.charge(dev, self.cfg.context_overhead)?;
            if let Some(c) = self.ctxs.get_mut(&handle) {
                c.active = true;
            }
        }
        self.primaries[dev].refcount += 1;
        Ok(handle)
    }

    pub fn primary_release(&mut self, dev: usize) -> Res<()> {
        let p = &mut self.primaries[dev];
        if p.refcount == 0 {
            return Err(CUresult::ERROR_INVALID_CONTEXT);
        }
        p.refcount -= 1;
        if p.refcount == 0 {
            let handle = p.handle;
            self.deactivate(handle);
        }
        Ok(())
    }

    /// Frees everything made under the primary context and drops it to inactive whatever
    /// its retain count; the next retain starts it afresh.
    pub fn primary_reset(&mut self, dev: usize) {
        let handle = self.primaries[dev].handle;
        if self.primaries[dev].refcount > 0 {
            self.deactivate(handle);
        }
        self.primaries[dev].refcount = 0;
        self.primaries[dev].flags = 0;
    }

    pub fn primary_state(&self, dev: usize) -> (u32, bool) {
        let p = &self.primaries[dev];
        (p.flags, p.refcount > 0)
    }

    pub fn primary_handle(&self, dev: usize) -> u64 {
        self.primaries[dev].handle
    }

    pub fn ctx_create(&mut self, dev: usize) -> Res<u64> {
        self.charge(dev, self.cfg.context_overhead)?;
        let handle = self.new_handle(TAG_CTX);
        self.ctxs.insert(handle, Ctx { dev, primary: false, active: true });
        Ok(handle)
    }

    pub fn ctx_destroy(&mut self, ctx: u64) -> Res<()> {
        match self.ctxs.get(&ctx) {
            Some(c) if !c.primary => {}
            _ => return Err(CUresult::ERROR_INVALID_CONTEXT),
        }
        self.deactivate(ctx);
        self.ctxs.remove(&ctx);
        Ok(())
    }

    /// A context going away takes its allocations (IPC mappings included), arrays and peer
    /// access with it, as in the driver.
    /// VMM handles and pools belong to the device, not a context, and stay.
    fn deactivate(&mut self, ctx: u64) {
        let Some(c) = self.ctxs.get_mut(&ctx) else {
            return;
        };
        if !c.active {
            return;
        }
        c.active = false;
        let dev = c.dev;
        self.uncharge(dev, self.cfg.context_overhead);
        self.forget_ctx_work(ctx);
        self.peers.retain(|&(a, b)| a != ctx && b != ctx);
        let doomed: Vec<u64> = self.allocs.iter().filter(|(_, a)| a.ctx == ctx).map(|(&p, _)| p).collect();
        for ptr in doomed {
            let _ = self.free(ptr);
        }
        let arrays: Vec<u64> = self.arrays.iter().filter(|(_, a)| a.ctx == ctx).map(|(&h, _)| h).collect();
        for h in arrays {
            if let Some(a) = self.arrays.remove(&h) {
                self.uncharge(a.dev, a.size);
            }
        }
    }
}
