//! How values cross between processes.
//!
//! Arguments and results are encoded with [postcard](https://docs.rs/postcard) (a compact,
//! maintained serde format; bincode is unmaintained, RUSTSEC-2025-0141) straight into the shared
//! arenas and decoded on the other side: integers, floats, `bool`, `char`, `String`, `Vec<u8>`,
//! `PathBuf`, `Vec<T>`, arrays, tuples, `Option` and any `Serialize + DeserializeOwned` type.
//! Bulk numeric data that should not be encoded at all belongs in a shared segment instead.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value that can be an argument or a result of a task. Implemented for every
/// `Serialize + DeserializeOwned + Send + 'static` type.
///
/// # Examples
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Job { name: String, weights: Vec<f64> }
///
/// let pool = shmpool::Pool::new(1)?;
/// let total = pool.apply(|j: Job| j.weights.iter().sum::<f64>(), Job { name: "a".into(), weights: vec![1.5, 2.5] })?;
/// assert_eq!(total, 4.0);
/// # Ok::<(), shmpool::Error>(())
/// ```
pub trait Payload: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> Payload for T {}

/// Whether `T` is a primitive number: no padding, every bit pattern valid, so a slice of it can
/// cross as its raw bytes.
fn is_plain_number<T: 'static>() -> bool {
    use std::any::TypeId;
    let t = TypeId::of::<T>();
    [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<u128>(),
        TypeId::of::<usize>(),
        TypeId::of::<i8>(),
        TypeId::of::<i16>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
        TypeId::of::<i128>(),
        TypeId::of::<isize>(),
        TypeId::of::<f32>(),
        TypeId::of::<f64>(),
    ]
    .contains(&t)
}

/// Appends a sequence of items in the chunk wire format: the raw bytes of the slice when `T` is
/// a primitive number (one `memcpy`; this is what makes `map` over numbers fast), postcard
/// otherwise. Both sides of a chunk are monomorphized for the same `T`, so they agree.
pub(crate) fn encode_seq<T: Serialize + 'static>(
    items: &[T],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    if is_plain_number::<T>() {
        // SAFETY: `T` is a primitive number (checked above): no padding bytes, so the slice's
        // memory is `size_of_val(items)` initialized bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(items.as_ptr().cast::<u8>(), std::mem::size_of_val(items))
        };
        out.extend_from_slice(bytes);
        return Ok(());
    }
    let taken = std::mem::take(out);
    *out = postcard::to_extend(items, taken).map_err(|e| e.to_string())?;
    Ok(())
}

/// Decodes what [`encode_seq`] wrote (the whole of `bytes`).
pub(crate) fn decode_seq<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<Vec<T>, String> {
    if is_plain_number::<T>() {
        let size = size_of::<T>();
        if !bytes.len().is_multiple_of(size) {
            return Err(format!(
                "{} bytes is not a whole number of {size}-byte items",
                bytes.len()
            ));
        }
        let n = bytes.len() / size;
        let mut v: Vec<T> = Vec::with_capacity(n);
        // SAFETY: `v` has room for `n` items = `bytes.len()` bytes; the regions cannot overlap (a
        // fresh allocation); every bit pattern is a valid primitive number, so after the copy the
        // first `n` items are initialized and `set_len` is sound.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr().cast::<u8>(), bytes.len());
            v.set_len(n);
        }
        return Ok(v);
    }
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}

/// A chunk's results in the wire format: `[len of values: u64 LE][values (encode_seq)]
/// [postcard failures]`.
pub(crate) fn encode_chunk_out<R: Serialize + 'static>(
    values: &[R],
    failures: &[(u32, String)],
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(8 + std::mem::size_of_val(values) + 16);
    out.extend_from_slice(&[0u8; 8]);
    encode_seq(values, &mut out)?;
    let len = (out.len() - 8) as u64;
    out[..8].copy_from_slice(&len.to_le_bytes());
    postcard::to_extend(failures, out).map_err(|e| e.to_string())
}

/// Decodes what [`encode_chunk_out`] wrote.
pub(crate) fn decode_chunk_out<R: DeserializeOwned + 'static>(
    bytes: &[u8],
) -> Result<crate::task::ChunkOut<R>, String> {
    let Some((len, rest)) = bytes.split_first_chunk::<8>() else {
        return Err("chunk result shorter than its header".into());
    };
    let len = u64::from_le_bytes(*len);
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= rest.len())
        .ok_or("chunk result length out of range")?;
    let values = decode_seq(&rest[..len])?;
    let failures = postcard::from_bytes(&rest[len..]).map_err(|e| e.to_string())?;
    Ok((values, failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + 'static>(
        v: Vec<T>,
    ) {
        let mut bytes = Vec::new();
        encode_seq(&v, &mut bytes).unwrap();
        assert_eq!(decode_seq::<T>(&bytes).unwrap(), v);
        let failures = vec![(3u32, "boom".to_string())];
        let out = encode_chunk_out(&v, &failures).unwrap();
        assert_eq!(decode_chunk_out::<T>(&out).unwrap(), (v, failures));
    }

    #[test]
    fn sequences_round_trip_raw_and_encoded() {
        round_trip(vec![0u64, 1, u64::MAX]);
        round_trip(vec![-1.5f64, f64::INFINITY, 0.0]);
        round_trip(vec![1u8, 2, 3]);
        round_trip(vec![i128::MIN, 7]);
        round_trip(Vec::<u32>::new());
        round_trip(vec!["a".to_string(), String::new()]);
        round_trip(vec![(1u8, true), (2, false)]);
        round_trip(vec![Some('x'), None]);
    }

    #[test]
    fn numbers_cross_as_their_raw_bytes() {
        let mut bytes = Vec::new();
        encode_seq(&[1u32, 2], &mut bytes).unwrap();
        assert_eq!(bytes, [1, 0, 0, 0, 2, 0, 0, 0]);
        assert!(decode_seq::<u32>(&bytes[..7]).is_err());
    }

    #[test]
    fn a_broken_chunk_result_is_an_error_not_a_panic() {
        assert!(decode_chunk_out::<u64>(&[1, 2]).is_err());
        assert!(decode_chunk_out::<u64>(&[255, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
    }
}
