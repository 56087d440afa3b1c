//! How values and code cross to a worker: payload encodings ([`Payload`](crate::Payload), byte
//! payloads, lists of items), large payloads in sealed segments (`bigpayload`), the trampolines a
//! descriptor points at (`task`), and the serializer probe that names what failed to encode.

pub(crate) mod bigpayload;
pub(crate) mod payload;
pub(crate) mod ser_probe;
pub(crate) mod task;
