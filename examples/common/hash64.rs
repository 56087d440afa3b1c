//! The 64-bit chunk hash shared by `bulk_compare`, `crunch` and `benches/bulk.rs`, so their
//! figures measure the same work. Included with `#[path]` (each is its own crate).

/// A fast 64-bit hash over 8-byte words (plus the tail), order-sensitive.
pub(crate) fn hash64(bytes: &[u8]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64 ^ bytes.len() as u64;
    let words = bytes.chunks_exact(8);
    let tail = words.remainder();
    for w in words {
        let x = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        h = (h ^ x).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    for &b in tail {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
