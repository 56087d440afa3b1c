//! The automatic chunksize of `map`, `map_async`, `starmap` and `imap` without `.chunksize(n)`.
//!
//! # The rule
//!
//! Python guesses (`map`: `ceil(len / (4 × processes))`, `imap`: 1). We measure instead. Every
//! chunk's result carries the time the worker spent on it; from that we keep an average cost per
//! item, and the next chunk holds enough items to take about [`TARGET_CHUNK_NS`] of worker time:
//!
//! * the first chunks hold 1 item (nothing is known yet);
//! * afterwards `size = TARGET_CHUNK_NS / cost per item`, but at most twice the previous size (so
//!   one fast outlier cannot make a huge chunk), and between 1 and [`MAX_AUTO_CHUNK`];
//! * and at most [`TARGET_CHUNK_BYTES`] of encoded arguments and results together (also averaged
//!   per item), so that a chunk of tiny items stays in the CPU's cache: the parent encodes,
//!   copies and decodes every chunk, and when the work per item is near zero that traffic *is* the
//!   cost. Measured on the 2-core dev machine (512 KiB of L2 per core), `imap` over `u64` with no
//!   work ran at ~105 M items/s with chunks of 4096–8192 items (32–64 KiB each way) and ~52 M/s with
//!   chunks of 65,536 (512 KiB each way);
//! * when the input's length is known (`map`), a chunk never holds more than
//!   `remaining / (2 × processes)` items, so the last chunks are small and every worker finishes at
//!   about the same time.
//!
//! A chunk of `TARGET_CHUNK_NS` amortizes the per-chunk dispatch cost (a few µs) to a few percent,
//! and is short enough that a window of chunks keeps every worker busy; a chunk of
//! `TARGET_CHUNK_BYTES` holds enough items that the parent's per-chunk cost stays a few percent of
//! its per-item cost. Tiny items therefore travel in chunks of thousands (8192 `u64`s), 100 µs items
//! in chunks of 2.

/// Worker time one automatic chunk aims for.
pub(crate) const TARGET_CHUNK_NS: f64 = 200_000.0;
/// Most encoded bytes (arguments plus results) one automatic chunk aims for.
pub(crate) const TARGET_CHUNK_BYTES: f64 = 128.0 * 1024.0;
/// Largest automatic chunksize.
pub(crate) const MAX_AUTO_CHUNK: usize = 1 << 16;

/// The measured state of an automatic chunksize.
#[derive(Debug, Clone)]
pub(crate) struct AutoChunk {
    /// Average cost per item (ns), 0 until a chunk has been measured.
    per_item_ns: f64,
    /// Average encoded bytes per item (arguments plus results), 0 until a chunk has been measured.
    per_item_bytes: f64,
    /// Chunksize to use next, before the remaining-items cap.
    size: usize,
}

impl AutoChunk {
    pub(crate) fn new() -> Self {
        AutoChunk {
            per_item_ns: 0.0,
            per_item_bytes: 0.0,
            size: 1,
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
        self.per_item_ns * self.size as f64
    }

    /// Learns from a finished chunk of `items` items that took the worker `elapsed_ns` and whose
    /// arguments and results encoded to `bytes` together.
    pub(crate) fn learn(&mut self, items: usize, elapsed_ns: u64, bytes: usize) {
        if items == 0 || elapsed_ns == 0 {
            return;
        }
        let per_item = |total: f64, average: f64| {
            let sample = total / items as f64;
            if average == 0.0 {
                sample
            } else {
                0.7 * average + 0.3 * sample
            }
        };
        self.per_item_ns = per_item(elapsed_ns as f64, self.per_item_ns);
        self.per_item_bytes = per_item(bytes as f64, self.per_item_bytes);
        let for_time = TARGET_CHUNK_NS / self.per_item_ns.max(1.0);
        let for_bytes = TARGET_CHUNK_BYTES / self.per_item_bytes.max(1.0);
        self.size = (for_time.min(for_bytes) as usize)
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
