//! The 64-byte descriptor that travels through the rings.

use bytemuck::{Pod, Zeroable};

/// One task or one result. `#[repr(C)]`, `Pod`, exactly one cache line.
///
/// Payloads are referred to by `(offset, len)` inside the sending side's arena, never by pointer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Descriptor {
    /// Task id, echoed back in the result.
    pub task_id: u64,
    /// Task: address of the monomorphized trampoline. Result: unused (0).
    pub call: u64,
    /// Payload offset in the sender's arena.
    pub offset: u64,
    /// Payload length in bytes.
    pub len: u64,
    /// Result: the worker's arena allocation position after this payload (what the parent may free).
    pub arena_end: u64,
    /// Task: the task's time limit in nanoseconds, 0 for none (the worker arms a timer that
    /// SIGKILLs it when the limit passes). Result: nanoseconds the worker spent running the task.
    pub elapsed_ns: u64,
    /// Result status (`STATUS_*`) in a result descriptor; 0 in a task descriptor.
    pub status: u32,
    /// Reserved flags, zero.
    pub flags: u32,
    /// Reserved, zero.
    pub reserved: u64,
}

const _: () = assert!(size_of::<Descriptor>() == 64);

/// Descriptor flag (result): the worker found its task ring empty and waited before it got this
/// task (the dispatcher's queue-depth signal, `DepthBudget`). Only a hint: a worker that sets it
/// falsely can only make its own queue deeper, up to the dispatcher's caps.
pub const FLAG_WAITED: u32 = 8;

/// The task ran and its encoded result is the payload.
pub const STATUS_OK: u32 = 0;
/// The task panicked; the payload is the UTF-8 panic message.
pub const STATUS_PANICKED: u32 = 1;
/// The worker could not run the task or ship its result; the payload is a UTF-8 message.
pub const STATUS_ERROR: u32 = 2;
