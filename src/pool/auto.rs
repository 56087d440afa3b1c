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
//! * when the input's length is known (`map`), a chunk never holds more than
//!   `remaining / (2 × processes)` items, so the last chunks are small and every worker finishes at
//!   about the same time.
//!
//! A chunk of `TARGET_CHUNK_NS` amortizes the per-chunk dispatch cost (a few µs) to a few percent,
//! and is short enough that a window of chunks keeps every worker busy. Tiny items therefore
//! travel in chunks of thousands, 100 µs items in chunks of 2.

/// Worker time one automatic chunk aims for.
pub(crate) const TARGET_CHUNK_NS: f64 = 200_000.0;
/// Largest automatic chunksize.
pub(crate) const MAX_AUTO_CHUNK: usize = 1 << 16;

/// The measured state of an automatic chunksize.
#[derive(Debug, Clone)]
pub(crate) struct AutoChunk {
    /// Average cost per item (ns), 0 until a chunk has been measured.
    per_item_ns: f64,
    /// Chunksize to use next, before the remaining-items cap.
    size: usize,
}

impl AutoChunk {
    pub(crate) fn new() -> Self {
        AutoChunk {
            per_item_ns: 0.0,
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

    /// Learns from a finished chunk of `items` items that took the worker `elapsed_ns`.
    pub(crate) fn learn(&mut self, items: usize, elapsed_ns: u64) {
        if items == 0 || elapsed_ns == 0 {
            return;
        }
        let sample = elapsed_ns as f64 / items as f64;
        self.per_item_ns = if self.per_item_ns == 0.0 {
            sample
        } else {
            0.7 * self.per_item_ns + 0.3 * sample
        };
        let want = (TARGET_CHUNK_NS / self.per_item_ns.max(1.0)) as usize;
        self.size = want
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
            a.learn(n, (n as u64) * 1_000); // 1 µs per item
            sizes.push(a.next(None, 2));
        }
        assert_eq!(&sizes[..4], &[2, 4, 8, 16]);
        assert_eq!(*sizes.last().unwrap(), 200); // 200 µs / 1 µs
    }

    #[test]
    fn slow_items_go_one_by_one_and_tiny_items_are_capped() {
        let mut slow = AutoChunk::new();
        slow.learn(1, 5_000_000);
        assert_eq!(slow.next(None, 2), 1);
        let mut tiny = AutoChunk::new();
        for _ in 0..40 {
            let n = tiny.next(None, 2);
            tiny.learn(n, n as u64);
        }
        assert_eq!(tiny.next(None, 2), MAX_AUTO_CHUNK);
    }

    #[test]
    fn the_tail_of_a_known_input_is_split_across_workers() {
        let mut a = AutoChunk::new();
        for _ in 0..40 {
            let n = a.next(None, 2);
            a.learn(n, n as u64 * 10);
        }
        assert_eq!(a.next(Some(100), 2), 25);
        assert_eq!(a.next(Some(1), 2), 1);
    }
}
