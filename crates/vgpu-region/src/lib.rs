//! The container-wide shared region: one file mapped by every process of a container, in
//! HAMi-core's v1.2 layout (so HAMi's device plugin and monitor read it unchanged) plus our
//! versioned extension. Slots are claimed and kept alive by OFD locks; usage is reserved
//! atomically across processes. The `vgpu` command and the preloaded library both use it.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod accounting;
pub mod layout;
pub mod limits;
pub mod lock;
pub mod map;
pub mod node;
pub mod open;
pub mod slots;
pub mod token;

pub use accounting::RegionAccounting;
pub use limits::{Limit, LimitChange};
pub use map::{InitParams, Region, RegionError};
pub use slots::SlotState;
