//! Shared memory: the segment type, the control segment, the arenas, the rings, the futex wake,
//! the MPMC turn protocol and fd passing. Nothing here encodes or decodes a value.
//!
//! Only `ring`, `mpmc` and `wake` (with the crate's `sync` facade) are built under `--cfg loom`,
//! where they are public for the loom models in `tests/`.

#[cfg(not(loom))]
pub(crate) mod arena;
#[cfg(not(loom))]
pub(crate) mod channel;
#[cfg(not(loom))]
pub(crate) mod control;
#[cfg(loom)]
pub mod mpmc;
#[cfg(not(loom))]
pub(crate) mod mpmc;
#[cfg(loom)]
pub mod ring;
#[cfg(not(loom))]
pub(crate) mod ring;
#[cfg(not(loom))]
pub(crate) mod segment;
#[cfg(loom)]
pub mod wake;
#[cfg(not(loom))]
pub(crate) mod wake;
