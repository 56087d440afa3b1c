//! What the chunksize sweep concludes: crossover, best chunksize, automatic vs best; the table
//! on stdout and the CSV of every measurement.

use std::io::{self, Write};

use crate::measure::{Measurement, Mode};

/// Header of the CSV; one line per [`Measurement`].
pub(crate) const CSV_HEADER: &str = "implementation,mode,workers,work_ns,work_ns_actual,chunksize,\
items,median_items_per_s,min_items_per_s,max_items_per_s,reps";

/// Writes every measurement as CSV.
pub(crate) fn write_csv(w: &mut dyn Write, rows: &[Measurement]) -> io::Result<()> {
    writeln!(w, "{CSV_HEADER}")?;
    let opt = |v: Option<usize>| v.map_or(String::new(), |v| v.to_string());
    for r in rows {
        writeln!(
            w,
            "{},{},{},{},{:.1},{},{},{:.1},{:.1},{:.1},{}",
            r.implementation,
            r.mode.name(),
            opt(r.workers),
            r.work_ns,
            r.work_ns_actual,
            opt(r.chunksize),
            r.items,
            r.median,
            r.min,
            r.max,
            r.reps
        )?;
    }
    Ok(())
}

/// The conclusions for one implementation, work level and worker count.
#[derive(Debug, Clone)]
pub(crate) struct Summary<'a> {
    /// `shmpool` or `python`.
    pub(crate) implementation: &'a str,
    /// Work per item asked for, ns.
    pub(crate) work_ns: u64,
    /// Pool size.
    pub(crate) workers: usize,
    /// The single-process loop of the same implementation and work.
    pub(crate) single: &'a Measurement,
    /// Smallest chunksize whose median beats the single process's fastest run.
    pub(crate) crossover: Option<&'a Measurement>,
    /// Chunksize with the highest median.
    pub(crate) best: Option<&'a Measurement>,
    /// Largest chunksize measured (larger ones exceeded the item budget).
    pub(crate) largest_swept: Option<usize>,
    /// `map` with the automatic chunksize.
    pub(crate) map_auto: Option<&'a Measurement>,
    /// `imap` with the automatic chunksize.
    pub(crate) imap_auto: Option<&'a Measurement>,
    /// The best chunksize measured again, interleaved with the automatic modes.
    pub(crate) best_again: Option<&'a Measurement>,
}

impl Summary<'_> {
    /// Best pool throughput over single-process throughput.
    pub(crate) fn best_speedup(&self) -> Option<f64> {
        self.best.map(|b| b.median / self.single.median)
    }

    /// An automatic mode's throughput as a percentage of the best swept chunksize: of its runs
    /// interleaved with the automatic modes' when there are some (a comparison within the same
    /// stretch of time, and free of the bias of picking the highest of several noisy medians),
    /// else of the sweep's.
    pub(crate) fn percent_of_best(&self, auto: Option<&Measurement>) -> Option<f64> {
        let best = self.best_again.or(self.best)?;
        Some(100.0 * auto?.median / best.median)
    }
}

/// Summaries in the order: work level, implementation (as first seen), worker count.
pub(crate) fn summarize(rows: &[Measurement]) -> Vec<Summary<'_>> {
    let mut keys: Vec<(u64, &str, usize)> = Vec::new();
    let mut impls: Vec<&str> = Vec::new();
    for r in rows {
        if !impls.contains(&r.implementation.as_str()) {
            impls.push(&r.implementation);
        }
        if let Some(w) = r.workers {
            let k = (r.work_ns, r.implementation.as_str(), w);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let impl_rank = |name: &str| impls.iter().position(|i| *i == name);
    keys.sort_by_key(|&(work, name, w)| (work, impl_rank(name), w));

    let mut out = Vec::new();
    for (work_ns, implementation, workers) in keys {
        let of = |mode| {
            rows.iter().filter(move |r: &&Measurement| {
                r.mode == mode
                    && r.work_ns == work_ns
                    && r.implementation == implementation
                    && (mode == Mode::Single || r.workers == Some(workers))
            })
        };
        let Some(single) = of(Mode::Single).next() else {
            continue;
        };
        let mut chunked: Vec<&Measurement> = of(Mode::MapChunked).collect();
        chunked.sort_by_key(|r| r.chunksize);
        out.push(Summary {
            implementation,
            work_ns,
            workers,
            single,
            crossover: chunked.iter().copied().find(|r| r.median > single.max),
            // The first (smallest) chunksize of the highest median, as the sweep picks the one
            // it runs again.
            best: chunked
                .iter()
                .copied()
                .reduce(|b, r| if r.median > b.median { r } else { b }),
            largest_swept: chunked.last().and_then(|r| r.chunksize),
            map_auto: of(Mode::MapAuto).next(),
            imap_auto: of(Mode::ImapAuto).next(),
            best_again: of(Mode::BestAgain).next(),
        });
    }
    out
}

/// `1.23G`, `45.6M`, `789k`, `12.3`: a rate in items/s, short.
pub(crate) fn si(v: f64) -> String {
    let (x, unit) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    if x >= 100.0 {
        format!("{x:.0}{unit}")
    } else if x >= 10.0 {
        format!("{x:.1}{unit}")
    } else {
        format!("{x:.2}{unit}")
    }
}

/// `0 ns`, `100 ns`, `1 µs`, `2.5 ms`.
pub(crate) fn duration(ns: f64) -> String {
    let (x, unit) = if ns >= 1e9 {
        (ns / 1e9, "s")
    } else if ns >= 1e6 {
        (ns / 1e6, "ms")
    } else if ns >= 1e3 {
        (ns / 1e3, "µs")
    } else {
        (ns, "ns")
    };
    let s = format!("{x:.1}");
    let s = s.strip_suffix(".0").unwrap_or(&s);
    format!("{s} {unit}")
}

/// Writes the table: one line per implementation × work level × worker count.
pub(crate) fn write_table(w: &mut dyn Write, summaries: &[Summary<'_>]) -> io::Result<()> {
    let pct = |p: Option<f64>| p.map_or("-".to_string(), |p| format!("{p:.0}%"));
    let cs = |m: Option<&Measurement>| {
        m.and_then(|m| m.chunksize)
            .map_or("none".to_string(), |c| c.to_string())
    };
    writeln!(
        w,
        "{:<9} {:<8} {:>9} {:>7} {:>9} {:>7} {:>8} {:>7} {:>8} {:>9} {:>6}",
        "work",
        "impl",
        "1-proc/s",
        "workers",
        "crossover",
        "best cs",
        "best/s",
        "speedup",
        "map auto",
        "imap auto",
        "swept"
    )?;
    let mut last_work = None;
    for s in summaries {
        if last_work.is_some_and(|w| w != s.work_ns) {
            writeln!(w)?;
        }
        last_work = Some(s.work_ns);
        writeln!(
            w,
            "{:<9} {:<8} {:>9} {:>7} {:>9} {:>7} {:>8} {:>7} {:>8} {:>9} {:>6}",
            duration(s.work_ns as f64),
            s.implementation,
            si(s.single.median),
            s.workers,
            cs(s.crossover),
            cs(s.best),
            s.best.map_or("-".into(), |b| si(b.median)),
            s.best_speedup().map_or("-".into(), |x| format!("{x:.2}x")),
            pct(s.percent_of_best(s.map_auto)),
            pct(s.percent_of_best(s.imap_auto)),
            s.largest_swept.map_or("-".into(), |c| format!("≤{}", c)),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(
        implementation: &str,
        mode: Mode,
        workers: Option<usize>,
        cs: Option<usize>,
        rate: f64,
    ) -> Measurement {
        Measurement {
            implementation: implementation.into(),
            mode,
            workers,
            work_ns: 1000,
            work_ns_actual: 1001.0,
            chunksize: cs,
            items: 100,
            median: rate,
            min: rate * 0.9,
            max: rate * 1.1,
            reps: 3,
        }
    }

    #[test]
    fn crossover_is_the_first_chunksize_beating_the_single_process() {
        let rows = vec![
            m("shmpool", Mode::Single, None, None, 100.0),
            m("shmpool", Mode::MapChunked, Some(2), Some(1), 50.0),
            // 105 is within the single process's spread (max 110): not a win.
            m("shmpool", Mode::MapChunked, Some(2), Some(4), 105.0),
            m("shmpool", Mode::MapChunked, Some(2), Some(16), 150.0),
            m("shmpool", Mode::MapChunked, Some(2), Some(64), 190.0),
            m("shmpool", Mode::MapAuto, Some(2), Some(13), 95.0),
            m("shmpool", Mode::ImapAuto, Some(2), None, 190.0),
        ];
        let s = summarize(&rows);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].crossover.and_then(|c| c.chunksize), Some(16));
        assert_eq!(s[0].best.and_then(|c| c.chunksize), Some(64));
        assert_eq!(s[0].largest_swept, Some(64));
        assert!((s[0].best_speedup().unwrap() - 1.9).abs() < 1e-9);
        assert!((s[0].percent_of_best(s[0].map_auto).unwrap() - 50.0).abs() < 1e-9);
        assert!((s[0].percent_of_best(s[0].imap_auto).unwrap() - 100.0).abs() < 1e-9);
        let mut table = Vec::new();
        write_table(&mut table, &s).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains("1 µs"), "{table}");
        assert!(table.contains("1.90x"), "{table}");
        assert!(table.contains("50%"), "{table}");
    }

    #[test]
    fn a_tie_for_best_goes_to_the_smaller_chunksize() {
        let rows = vec![
            m("shmpool", Mode::Single, None, None, 100.0),
            m("shmpool", Mode::MapChunked, Some(2), Some(4), 150.0),
            m("shmpool", Mode::MapChunked, Some(2), Some(16), 150.0),
        ];
        assert_eq!(summarize(&rows)[0].best.and_then(|c| c.chunksize), Some(4));
    }

    #[test]
    fn automatic_is_compared_with_the_best_run_again_alongside_it() {
        let rows = vec![
            m("shmpool", Mode::Single, None, None, 100.0),
            m("shmpool", Mode::MapChunked, Some(2), Some(4), 150.0),
            m("shmpool", Mode::MapChunked, Some(2), Some(16), 200.0),
            m("shmpool", Mode::BestAgain, Some(2), Some(16), 160.0),
            m("shmpool", Mode::MapAuto, Some(2), None, 120.0),
        ];
        let s = summarize(&rows);
        // The sweep's best still names the best chunksize and its speedup...
        assert_eq!(s[0].best.and_then(|c| c.chunksize), Some(16));
        assert!((s[0].best_speedup().unwrap() - 2.0).abs() < 1e-9);
        // ...but the automatic mode is judged against the interleaved runs.
        assert!((s[0].percent_of_best(s[0].map_auto).unwrap() - 75.0).abs() < 1e-9);
    }

    #[test]
    fn no_crossover_when_the_pool_never_wins() {
        let rows = vec![
            m("python", Mode::Single, None, None, 100.0),
            m("python", Mode::MapChunked, Some(1), Some(1), 50.0),
        ];
        let s = summarize(&rows);
        assert!(s[0].crossover.is_none());
        assert!(s[0].imap_auto.is_none());
    }

    #[test]
    fn csv_has_one_line_per_measurement() {
        let rows = vec![
            m("shmpool", Mode::Single, None, None, 100.0),
            m("shmpool", Mode::MapChunked, Some(2), Some(4), 150.0),
        ];
        let mut out = Vec::new();
        write_csv(&mut out, &rows).unwrap();
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(
            lines[1],
            "shmpool,single,,1000,1001.0,,100,100.0,90.0,110.0,3"
        );
        assert_eq!(
            lines[2],
            "shmpool,map_chunked,2,1000,1001.0,4,100,150.0,135.0,165.0,3"
        );
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(si(1.234e9), "1.23G");
        assert_eq!(si(45.67e6), "45.7M");
        assert_eq!(si(789e3), "789k");
        assert_eq!(si(12.0), "12.0");
        assert_eq!(duration(0.0), "0 ns");
        assert_eq!(duration(1000.0), "1 µs");
        assert_eq!(duration(2.5e6), "2.5 ms");
    }
}
