//! This process's place in the node table (`vgpu_region::node`), where containers sharing a GPU
//! meet: opened on the compute limiter's first need, never on a path without a limit or a
//! priority. A table that cannot be used costs one stderr line; the container then neither
//! sees nor is seen by its neighbours.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

use vgpu_core::MAX_DEVICES;
use vgpu_core::devices::format_uuid;
use vgpu_region::node::{self, GpuToken, Neighbours, NodeEntry, NodeTable};

use crate::driver;
use crate::state::state;

static TABLE: OnceLock<Option<NodeTable>> = OnceLock::new();
static OWNER: OnceLock<u64> = OnceLock::new();
static PLACES: [OnceLock<Option<Place>>; MAX_DEVICES] = [const { OnceLock::new() }; MAX_DEVICES];

/// The container's entry for one of its devices, and that GPU's token.
pub struct Place {
    pub gpu: u64,
    pub entry: &'static NodeEntry,
    /// The entry's index: how the token names its holder.
    pub index: usize,
    /// `None` when the table's tokens are all in use (the container then does not take turns).
    pub token: Option<&'static GpuToken>,
}

/// The table if it was opened already (no file system access).
pub fn opened() -> Option<&'static NodeTable> {
    TABLE.get().and_then(Option::as_ref)
}

pub fn table() -> Option<&'static NodeTable> {
    TABLE
        .get_or_init(|| {
            let _timed = crate::startup::OneTime::begin();
            let st = state();
            let path = st.config.node_file.as_deref()?;
            match NodeTable::open(Path::new(path), st.config.region_mode, Some(&st.config.trusted)) {
                Ok(t) => Some(t),
                Err(e) => {
                    // Only a container that limits itself or claims priority needs the table; for
                    // the others (the node's unlimited processes) it is not worth a line.
                    if st.config.sm_limit.iter().any(Option::is_some) || st.config.priority == 0 || st.config.sm_burst {
                        tracing::warn!(
                            "node table {e}; this container does not take turns with others on its GPUs (LIBVGPU_NODE_FILE)"
                        );
                    } else {
                        tracing::debug!("node table {e}");
                    }
                    None
                }
            }
        })
        .as_ref()
}

/// The container's key: its region file's identity (the same file is the same container, under
/// whatever path each container mounts it), or this process alone without a file.
pub fn owner() -> u64 {
    *OWNER.get_or_init(|| {
        let region = state().container().region();
        match region.file().and_then(|f| f.metadata().ok()) {
            Some(m) => node::key(&format!("region {}:{}", m.dev(), m.ino())),
            None => node::key(&format!("process {} {}", std::process::id(), crate::clock::now_ns())),
        }
    })
}

pub fn place(dev: usize) -> Option<&'static Place> {
    PLACES
        .get(dev)?
        .get_or_init(|| {
            let _timed = crate::startup::OneTime::begin();
            let table = table()?;
            let uuid = driver::device_uuid(dev).ok()?;
            let gpu = node::key(&format_uuid(&uuid));
            let priority = state().config.priority.clamp(0, 1) as u32;
            match table.entry(owner(), gpu, priority, crate::clock::now_ns()) {
                Ok(Some(entry)) => {
                    let index = table.index_of(entry)?;
                    let token = table.token(gpu);
                    if token.is_none() {
                        tracing::warn!(
                            "the node table has no token left for device {dev}; its containers do not take turns"
                        );
                    }
                    Some(Place { gpu, entry, index, token })
                }
                Ok(None) => {
                    tracing::warn!("the node table is full; this container does not coordinate on device {dev}");
                    None
                }
                Err(e) => {
                    tracing::warn!("node table: {e}; this container does not coordinate on device {dev}");
                    None
                }
            }
        })
        .as_ref()
}

/// The place of device `dev` if it was made already.
pub fn placed(dev: usize) -> Option<&'static Place> {
    PLACES.get(dev)?.get()?.as_ref()
}

pub fn neighbours(place: &Place, now: u64) -> Neighbours {
    table().map(|t| t.neighbours(owner(), place.gpu, now)).unwrap_or_default()
}
