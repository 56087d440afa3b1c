//! How fast a large `memcpy` is as a function of where source and destination sit in their
//! pages. On the AMD EPYC guests these benchmarks ran on, a copy whose source and destination
//! have different offsets within a page is ~3x slower than one whose offsets match (whatever
//! they are); see BENCHMARKS.md, "Where a copy's bytes sit in their pages".
//!
//! `cargo run --release --example copy_offset [MiB]` (default 300): prints each (destination
//! offset, source offset) pair's time, twice, both buffers warm.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::time::Instant;

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .map_or(300, |a| a.parse().expect("MiB: a number"));
    let n = mib << 20;
    let layout = Layout::from_size_align(n + 8192, 4096).expect("layout");
    // SAFETY: the layout has a non-zero size; both pointers are checked for null.
    let (src, dst) = unsafe { (alloc_zeroed(layout), alloc_zeroed(layout)) };
    assert!(!src.is_null() && !dst.is_null(), "out of memory");
    // SAFETY: both allocations are `n + 8192` bytes; every access below stays within
    // `offset + n` with offsets under 8192, and the two allocations do not overlap.
    unsafe {
        std::ptr::write_bytes(src, 1, n + 8192);
        std::ptr::write_bytes(dst, 2, n + 8192);
        for round in 1..=2 {
            for (d, s) in [
                (0, 0),
                (16, 16),
                (16, 0),
                (0, 16),
                (64, 0),
                (16, 48),
                (4096, 0),
            ] {
                let t = Instant::now();
                let (from, to) = std::hint::black_box((src.add(s), dst.add(d)));
                std::ptr::copy_nonoverlapping(from, to, n);
                std::hint::black_box(to);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                println!(
                    "round {round}: dst +{d:4}, src +{s:2} (relative {:4}): {ms:6.1} ms, {:.1} GB/s",
                    (d + 4096 - s) % 4096,
                    n as f64 / ms / 1e6
                );
            }
        }
        dealloc(src, layout);
        dealloc(dst, layout);
    }
}
