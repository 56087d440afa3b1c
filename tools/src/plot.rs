//! The chunksize sweep as an SVG: throughput against chunksize, log-log, one panel per work level.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use crate::measure::{Measurement, Mode};
use crate::report::{Summary, duration, si};

/// One color per worker count (by position in the sweep), cycling.
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
];
const GREY: RGBColor = RGBColor(120, 120, 120);
const PANEL: (u32, u32) = (600, 420);

/// A dashed line's look, shared by the panels and the legend so the two cannot drift apart.
#[derive(Clone, Copy)]
struct Dash {
    size: u32,
    spacing: u32,
    width: u32,
}

/// Python's lines (its single process and its `map` with a chunksize).
const PYTHON_DASH: Dash = Dash {
    size: 8,
    spacing: 5,
    width: 2,
};
/// shmpool's automatic `map`: a level line.
const MAP_AUTO_DASH: Dash = Dash {
    size: 12,
    spacing: 4,
    width: 1,
};
/// shmpool's automatic `imap`: a dotted level line.
const IMAP_AUTO_DASH: Dash = Dash {
    size: 2,
    spacing: 4,
    width: 2,
};
/// The outline marking Python's automatic `map` at its chunksize, in pixels around the point.
const TRIANGLE: [(i32, i32); 4] = [(0, -8), (7, 4), (-7, 4), (0, -8)];

fn color_of(workers: &[usize], w: usize) -> RGBColor {
    let i = workers.iter().position(|&x| x == w).unwrap_or(0);
    COLORS[i % COLORS.len()]
}

/// Writes the plot of `rows` (with their `summaries`) to `path`.
pub(crate) fn write_svg(
    path: &Path,
    rows: &[Measurement],
    summaries: &[Summary<'_>],
) -> Result<()> {
    let mut levels: Vec<u64> = rows.iter().map(|r| r.work_ns).collect();
    levels.sort_unstable();
    levels.dedup();
    let mut workers: Vec<usize> = rows.iter().filter_map(|r| r.workers).collect();
    workers.sort_unstable();
    workers.dedup();
    let has_python = rows.iter().any(|r| r.implementation == "python");

    // One cell per work level plus one for the legend.
    let cells = levels.len() + 1;
    let cols = (cells as f64).sqrt().ceil() as usize;
    let grid_rows = cells.div_ceil(cols);
    let size = (PANEL.0 * cols as u32, PANEL.1 * grid_rows as u32 + 40);
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let title = if has_python {
        "Throughput vs chunksize: shmpool (solid) and Python multiprocessing.Pool (dashed)"
    } else {
        "Throughput vs chunksize: shmpool"
    };
    let body = root.titled(title, ("sans-serif", 22)).map_err(plot_err)?;
    let areas = body.split_evenly((grid_rows, cols));
    for (area, &level) in areas.iter().zip(&levels) {
        panel(area, rows, summaries, level, &workers)?;
    }
    legend(&areas[levels.len()], &workers, has_python)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn plot_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

/// One work level.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    rows: &[Measurement],
    summaries: &[Summary<'_>],
    level: u64,
    workers: &[usize],
) -> Result<()> {
    let here: Vec<&Measurement> = rows.iter().filter(|r| r.work_ns == level).collect();
    let xs = here.iter().filter_map(|r| r.chunksize).map(|c| c as f64);
    let (x_lo, x_hi) = xs.fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let (x_lo, x_hi) = if x_hi > 0.0 {
        (x_lo / 1.6, x_hi * 1.6)
    } else {
        (0.5, 2.0)
    };
    let (y_lo, y_hi) = here.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), r| {
        (lo.min(r.min.max(1e-3)), hi.max(r.max))
    });
    let (y_lo, y_hi) = (y_lo / 1.5, y_hi * 1.5);
    let shm_actual = here
        .iter()
        .find(|r| r.implementation == "shmpool")
        .map(|r| r.work_ns_actual);
    let caption = match shm_actual {
        Some(a) if level > 0 => format!(
            "work {} per item (busy loop: {})",
            duration(level as f64),
            duration(a)
        ),
        _ => format!("work {} per item", duration(level as f64)),
    };

    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 17))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("chunksize (items per task)")
        .y_desc("items/s")
        .x_label_formatter(&|x| format!("{}", x.round() as u64))
        .y_label_formatter(&|y| si(*y))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(plot_err)?;

    // The single process: a horizontal line per implementation.
    for s in here.iter().filter(|r| r.mode == Mode::Single) {
        let line = [(x_lo, s.median), (x_hi, s.median)];
        if s.implementation == "shmpool" {
            chart
                .draw_series(LineSeries::new(line, BLACK.stroke_width(2)))
                .map_err(plot_err)?;
        } else {
            chart
                .draw_series(dashed(line, PYTHON_DASH, GREY))
                .map_err(plot_err)?;
        }
    }

    for s in summaries.iter().filter(|s| s.work_ns == level) {
        let color = color_of(workers, s.workers);
        let python = s.implementation != "shmpool";
        let mut pts: Vec<&&Measurement> = here
            .iter()
            .filter(|r| {
                r.mode == Mode::MapChunked
                    && r.implementation == s.implementation
                    && r.workers == Some(s.workers)
            })
            .collect();
        pts.sort_by_key(|r| r.chunksize);
        let xy = |r: &Measurement| (r.chunksize.unwrap_or(1) as f64, r.median);
        let line: Vec<(f64, f64)> = pts.iter().map(|r| xy(r)).collect();
        if python {
            chart
                .draw_series(dashed(line.clone(), PYTHON_DASH, color))
                .map_err(plot_err)?;
        } else {
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
                .map_err(plot_err)?;
        }
        // Points, with the min–max of the repetitions as a thin vertical bar.
        chart
            .draw_series(pts.iter().map(|r| {
                let x = r.chunksize.unwrap_or(1) as f64;
                PathElement::new([(x, r.min), (x, r.max)], color.mix(0.6).stroke_width(1))
            }))
            .map_err(plot_err)?;
        let style = if python {
            color.stroke_width(2)
        } else {
            color.filled()
        };
        chart
            .draw_series(line.iter().map(|&p| Circle::new(p, 3, style)))
            .map_err(plot_err)?;
        if let Some(c) = s.crossover {
            chart
                .draw_series([Cross::new(xy(c), 9, color.stroke_width(3))])
                .map_err(plot_err)?;
        }
        // Python's automatic `map` uses one chunksize (`len / (4 × processes)`): a marker at it.
        // shmpool's adapts chunk by chunk, like its `imap`: a level line across the panel.
        if let Some(a) = s.map_auto {
            if python {
                let (x, y) = xy(a);
                let outline =
                    EmptyElement::at((x, y)) + PathElement::new(TRIANGLE, color.stroke_width(2));
                chart.draw_series([outline]).map_err(plot_err)?;
            } else {
                chart
                    .draw_series(dashed(
                        [(x_lo, a.median), (x_hi, a.median)],
                        MAP_AUTO_DASH,
                        color,
                    ))
                    .map_err(plot_err)?;
            }
        }
        if let Some(a) = s.imap_auto {
            chart
                .draw_series(dashed(
                    [(x_lo, a.median), (x_hi, a.median)],
                    IMAP_AUTO_DASH,
                    color,
                ))
                .map_err(plot_err)?;
        }
    }
    Ok(())
}

/// A dashed line through `points` in chart coordinates.
fn dashed<I: Iterator<Item = (f64, f64)> + Clone>(
    points: impl IntoIterator<IntoIter = I>,
    dash: Dash,
    color: RGBColor,
) -> DashedLineSeries<I, u32> {
    DashedLineSeries::new(
        points,
        dash.size,
        dash.spacing,
        color.stroke_width(dash.width),
    )
}

/// The legend's sample of a dashed line, at height `y`.
fn legend_dash(
    y: i32,
    dash: Dash,
    color: RGBColor,
) -> DashedPathElement<std::array::IntoIter<(i32, i32), 2>, u32> {
    DashedPathElement::new(
        [(20, y), (70, y)],
        dash.size,
        dash.spacing,
        color.stroke_width(dash.width),
    )
}

/// The legend, drawn in its own cell.
fn legend(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    workers: &[usize],
    has_python: bool,
) -> Result<()> {
    let font = ("sans-serif", 15).into_font();
    let mut y = 30;
    let mut entry = |draw: &dyn Fn(i32) -> Result<()>, label: String| -> Result<()> {
        draw(y)?;
        area.draw(&Text::new(label, (90, y - 8), font.clone()))
            .map_err(plot_err)?;
        y += 26;
        Ok(())
    };
    for &w in workers {
        let c = color_of(workers, w);
        entry(
            &|y| {
                area.draw(&PathElement::new([(20, y), (70, y)], c.stroke_width(2)))
                    .map_err(plot_err)?;
                area.draw(&Circle::new((45, y), 3, c.filled()))
                    .map_err(plot_err)
            },
            format!(
                "shmpool map_chunked, {w} worker{}",
                if w == 1 { "" } else { "s" }
            ),
        )?;
        if has_python {
            entry(
                &|y| {
                    area.draw(&legend_dash(y, PYTHON_DASH, c))
                        .map_err(plot_err)?;
                    area.draw(&Circle::new((45, y), 3, c.stroke_width(2)))
                        .map_err(plot_err)
                },
                format!(
                    "Python Pool.map(f, items, chunksize), {w} worker{}",
                    if w == 1 { "" } else { "s" }
                ),
            )?;
        }
    }
    entry(
        &|y| {
            area.draw(&PathElement::new([(20, y), (70, y)], BLACK.stroke_width(2)))
                .map_err(plot_err)
        },
        "single process, Rust loop".into(),
    )?;
    if has_python {
        entry(
            &|y| {
                area.draw(&legend_dash(y, PYTHON_DASH, GREY))
                    .map_err(plot_err)
            },
            "single process, Python loop".into(),
        )?;
        entry(
            &|y| {
                let outline =
                    EmptyElement::at((45, y)) + PathElement::new(TRIANGLE, GREY.stroke_width(2));
                area.draw(&outline).map_err(plot_err)
            },
            "Python map, automatic chunksize (len / 4 x workers)".into(),
        )?;
    }
    entry(
        &|y| {
            area.draw(&legend_dash(y, MAP_AUTO_DASH, BLACK))
                .map_err(plot_err)
        },
        "shmpool map, automatic chunksize".into(),
    )?;
    entry(
        &|y| {
            area.draw(&legend_dash(y, IMAP_AUTO_DASH, BLACK))
                .map_err(plot_err)
        },
        "shmpool imap, automatic chunksize".into(),
    )?;
    entry(
        &|y| {
            area.draw(&Cross::new((45, y), 9, BLACK.stroke_width(3)))
                .map_err(plot_err)
        },
        "crossover: smallest chunksize beating 1 process".into(),
    )?;
    entry(
        &|y| {
            area.draw(&PathElement::new(
                [(45, y - 9), (45, y + 9)],
                BLACK.stroke_width(1),
            ))
            .map_err(plot_err)
        },
        "min-max of the repetitions".into(),
    )?;
    Ok(())
}
