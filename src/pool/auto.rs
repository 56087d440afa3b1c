//! The automatic chunksize of `map`, `map_async`, `starmap` and `imap` without `.chunksize(n)`.
//!
//! # The rule
//!
//! Python guesses (`map`: `ceil(len / (4 × processes))`, `imap`: 1). We measure instead. Every
//! chunk's result carries the time the worker spent on it; from that we keep an average cost per
//! item (recent chunks' time over their items, see [`AutoChunk`]), and the next chunk holds
//! enough items to take about [`TARGET_CHUNK_NS`] of worker time:
//!
//! * the first chunks hold 1 item (nothing is known yet);
//! * afterwards `size = TARGET_CHUNK_NS / cost per item`, but at most twice the previous size (so
//!   one fast outlier cannot make a huge chunk), and between 1 and [`MAX_AUTO_CHUNK`];
//! * and at most [`TARGET_CHUNK_BYTES`] of encoded arguments and results together (measured like
//!   the time), so that a chunk of tiny items stays in the CPU's cache: the parent encodes,
//!   copies and decodes every chunk, and when the work per item is near zero that traffic *is* the
//!   cost. Measured on the 2-core dev machine (512 KiB of L2 per core), `imap` over `u64` with
//!   no work ran at ~105 M items/s with chunks of 4096–8192 items (32–64 KiB each way) and
//!   ~52 M/s with chunks of 65,536 (512 KiB each way);
//! * when the input's length is known (`map`), a chunk never holds more than
//!   `remaining / (2 × processes)` items, so the last chunks are small and every worker finishes at
//!   about the same time.
//!
//! A chunk of `TARGET_CHUNK_NS` amortizes the per-chunk dispatch cost (a few µs) to a few percent,
//! and is short enough that a window of chunks keeps every worker busy; a chunk of
//! `TARGET_CHUNK_BYTES` holds enough items that the parent's per-chunk cost stays a few percent of
//! its per-item cost. Tiny items therefore travel in chunks of thousands (8192 `u64`s), 100 µs
//! items in chunks of 2.

/// Worker time one automatic chunk aims for.
pub(crate) const TARGET_CHUNK_NS: f64 = 200_000.0;
/// Most encoded bytes (arguments plus results) one automatic chunk aims for.
pub(crate) const TARGET_CHUNK_BYTES: f64 = 128.0 * 1024.0;
/// Largest automatic chunksize.
pub(crate) const MAX_AUTO_CHUNK: usize = 1 << 16;

/// The measured state of an automatic chunksize.
///
/// Costs per item are ratios of moving averages of whole chunks (time over items), not averages of
/// per-item samples: a chunk's fixed cost (a microsecond or so) makes the first one-item chunks
/// look a thousand times dearer per item than tiny items are, and averaging those samples kept
/// chunks small for a dozen chunks after the truth was known. Weighted by size, the latest (and
/// largest) chunks dominate at once.
#[derive(Debug, Clone)]
pub(crate) struct AutoChunk {
    /// Moving averages of a chunk's items, worker time (ns) and encoded bytes; 0 until a chunk
    /// has been measured.
    items: f64,
    ns: f64,
    bytes: f64,
    /// Chunksize to use next, before the remaining-items cap.
    size: usize,
}

/// Weight of the newest chunk in the moving averages.
const NEWEST: f64 = 0.3;

impl AutoChunk {
    pub(crate) fn new() -> Self {
        AutoChunk {
            items: 0.0,
            ns: 0.0,
            bytes: 0.0,
            size: 1,
        }
    }

    /// Average worker time per item (ns), 0 until a chunk has been measured.
    fn per_item_ns(&self) -> f64 {
        if self.items > 0.0 {
            self.ns / self.items
        } else {
            0.0
        }
    }

    /// Items for the next chunk, given how many remain (if known) and the pool's size.
    pub(crate) fn next(&self, remaining: Option<usize>, processes: usize) -> usize {
        let mut n = self.size;
        if let Some(r) = remaining {
            n = n.min(r.div_ceil(2 * processes.max(1)));
        }
        n.max(1)
    }

    /// Worker time the next chunk is expected to take (ns), 0 until a chunk has been measured.
    pub(crate) fn chunk_ns(&self) -> f64 {
        self.per_item_ns() * self.size as f64
    }

    /// Learns from a finished chunk of `items` items that took the worker `elapsed_ns` and whose
    /// arguments and results encoded to `bytes` together.
    pub(crate) fn learn(&mut self, items: usize, elapsed_ns: u64, bytes: usize) {
        if items == 0 || elapsed_ns == 0 {
            return;
        }
        let first = self.items == 0.0;
        let average = |old: f64, new: f64| {
            if first {
                new
            } else {
                (1.0 - NEWEST) * old + NEWEST * new
            }
        };
        self.items = average(self.items, items as f64);
        self.ns = average(self.ns, elapsed_ns as f64);
        self.bytes = average(self.bytes, bytes as f64);
        let for_time = TARGET_CHUNK_NS / self.per_item_ns().max(1.0);
        let for_bytes = TARGET_CHUNK_BYTES / (self.bytes / self.items).max(1.0);
        self.size = (for_time.min(for_bytes).round() as usize)
            .min(self.size.saturating_mul(2))
            .clamp(1, MAX_AUTO_CHUNK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_doubling_towards_the_target_and_stops_there() {
        let mut a = AutoChunk::new();
        assert_eq!(a.next(None, 2), 1);
        let mut sizes = vec![];
        for _ in 0..20 {
            let n = a.next(None, 2);
            a.learn(n, (n as u64) * 1_000, n * 16); // 1 µs per item
            sizes.push(a.next(None, 2));
        }
        assert_eq!(&sizes[..4], &[2, 4, 8, 16]);
        assert_eq!(*sizes.last().unwrap(), 200); // 200 µs / 1 µs
    }

    #[test]
    fn slow_items_go_one_by_one_and_tiny_items_are_capped() {
        let mut slow = AutoChunk::new();
        slow.learn(1, 5_000_000, 16);
        assert_eq!(slow.next(None, 2), 1);
        let mut tiny = AutoChunk::new();
        for _ in 0..40 {
            let n = tiny.next(None, 2);
            tiny.learn(n, n as u64, n);
        }
        assert_eq!(tiny.next(None, 2), MAX_AUTO_CHUNK);
    }

    #[test]
    fn tiny_items_are_capped_by_their_bytes() {
        // 0.5 ns and 16 bytes per item (a `u64` each way): time alone would allow 65,536 items.
        let mut words = AutoChunk::new();
        // 100 ns and 1000 bytes per item: time alone would allow 2000 items.
        let mut records = AutoChunk::new();
        for _ in 0..40 {
            let n = words.next(None, 2);
            words.learn(n, n as u64 / 2 + 1, n * 16);
            let n = records.next(None, 2);
            records.learn(n, n as u64 * 100, n * 1000);
        }
        assert_eq!(words.next(None, 2), 8192);
        assert_eq!(records.next(None, 2), 131);
    }

    #[test]
    fn a_chunks_fixed_cost_does_not_hold_back_growth() {
        // 10 µs per chunk plus 1 ns per item: one-item chunks look like 10 µs per item, but
        // once chunks are large the cost per item is known to be tiny, and growth is limited only
        // by doubling: 13 doublings from 1 to the byte cap of 8192 `u64`s.
        let mut a = AutoChunk::new();
        for _ in 0..13 {
            let n = a.next(None, 2);
            a.learn(n, 10_000 + n as u64, n * 16);
        }
        assert_eq!(a.next(None, 2), 8192);
    }

    #[test]
    fn the_tail_of_a_known_input_is_split_across_workers() {
        let mut a = AutoChunk::new();
        for _ in 0..40 {
            let n = a.next(None, 2);
            a.learn(n, n as u64 * 10, n * 16);
        }
        assert_eq!(a.next(Some(100), 2), 25);
        assert_eq!(a.next(Some(1), 2), 1);
    }
}
