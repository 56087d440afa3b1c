//! A task's encoded argument, checked against the arena it must fit.

use std::sync::Arc;

use crate::encoding::bigpayload::SpareArgs;
use crate::error::{Error, Result};
use crate::shm::channel::SegmentShare;

/// Encodes a chunk of items for a task in the chunk wire format (`payload::encode_list`), checking
/// it fits the arena.
pub(crate) fn encode_items<T: serde::Serialize + 'static>(
    items: &[T],
    cap: usize,
    spares: &Arc<SpareArgs>,
) -> Result<EncodedArg> {
    let mut bytes = Vec::with_capacity(std::mem::size_of_val(items).saturating_add(16).min(cap));
    crate::encoding::payload::encode_list(items, &mut bytes).map_err(Error::codec)?;
    fits(bytes, cap, spares)
}

/// An encoded task argument: its bytes for the arena, or, when they do not fit, the small record
/// that names the segment holding them (`bigpayload`).
#[derive(Debug)]
pub(crate) struct EncodedArg {
    pub(super) payload: Vec<u8>,
    pub(super) segment: Option<SegmentShare>,
    /// Encoded size of the argument itself (in the arena or in its segment).
    len: usize,
}

impl EncodedArg {
    /// Encoded size of the argument (what the automatic chunksize learns from).
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl From<Vec<u8>> for EncodedArg {
    fn from(payload: Vec<u8>) -> Self {
        EncodedArg {
            len: payload.len(),
            payload,
            segment: None,
        }
    }
}

/// Encoded bytes as a task argument: in the arena if they fit, in a segment of their own if not.
fn fits(bytes: Vec<u8>, cap: usize, spares: &Arc<SpareArgs>) -> Result<EncodedArg> {
    if bytes.len() > cap {
        let (payload, share) = crate::encoding::bigpayload::argument(&[], &bytes, spares)?;
        return Ok(EncodedArg {
            payload,
            segment: Some(share),
            len: bytes.len(),
        });
    }
    Ok(bytes.into())
}

/// Encodes a payload for a task, checking it fits the arena.
/// An argument too large for the arena goes into a spare segment of `spares` if one is left.
pub(crate) fn encode<T: serde::Serialize + 'static>(
    value: &T,
    cap: usize,
    spares: &Arc<SpareArgs>,
) -> Result<EncodedArg> {
    // A byte vector too large for the arena goes to its segment straight from its own buffer.
    if let Some(b) = crate::encoding::payload::byte_payload(value)
        && b.len() + 10 > cap
    {
        let mut prefix = [0u8; 10];
        let n = crate::encoding::payload::varint(b.len() as u64, &mut prefix);
        let (payload, share) = crate::encoding::bigpayload::argument(&prefix[..n], b, spares)?;
        return Ok(EncodedArg {
            payload,
            segment: Some(share),
            len: n + b.len(),
        });
    }
    // Sized for the common case (fixed-size items encode to at most their in-memory size plus a
    // few bytes), so encoding rarely reallocates.
    let hint = std::mem::size_of_val(value).saturating_add(16).min(cap);
    let bytes = crate::encoding::payload::encode_value(value, Vec::with_capacity(hint))
        .map_err(|e| Error::codec(crate::encoding::ser_probe::serialize_error(&e, value)))?;
    fits(bytes, cap, spares)
}
