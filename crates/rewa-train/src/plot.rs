//! `training.png`: loss (left) and recall (right) per epoch, drawn with plotters' bitmap
//! backend and the built-in pixel font (no system fonts needed).

use crate::font::{draw_text, text_width};
use crate::train::EpochLog;
use crate::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

type Series = (String, Vec<(f64, f64)>);

fn series(log: &[EpochLog], name: &str, f: impl Fn(&EpochLog) -> Option<f64>) -> Option<Series> {
    let pts: Vec<(f64, f64)> = log
        .iter()
        .filter_map(|e| f(e).filter(|v| v.is_finite()).map(|v| (e.epoch as f64, v)))
        .collect();
    (!pts.is_empty()).then(|| (name.to_string(), pts))
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    all: &[Series],
    epochs: f64,
    y_range: Option<(f64, f64)>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| Error::Plot(e.to_string());
    let (lo, hi) = y_range.unwrap_or_else(|| {
        let ys = all.iter().flat_map(|s| s.1.iter().map(|p| p.1));
        let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
        let pad = ((hi - lo) * 0.05).max(1e-3);
        (lo - pad, hi + pad)
    });
    let (w, h) = area.dim_in_pixel();
    let (left, top, right, bottom) = (60i32, 30i32, 15i32, 40i32);
    let inner = area.margin(top as u32, bottom as u32, left as u32, right as u32);
    let mut chart = ChartBuilder::on(&inner)
        .build_cartesian_2d(1f64..epochs.max(2.0), lo..hi)
        .map_err(err)?;
    let black = RGBColor(0, 0, 0);
    // chart coordinates are the backend's; text is drawn relative to `area`
    let (bx, by) = area.get_base_pixel();
    let grey = RGBColor(220, 220, 220);
    // grid and ticks
    for i in 0..=4 {
        let y = lo + (hi - lo) * i as f64 / 4.0;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(1.0, y), (epochs.max(2.0), y)],
                grey,
            )))
            .map_err(err)?;
        let (_, py) = chart.backend_coord(&(1.0, y));
        let t = fmt_tick(y);
        draw_text(
            area,
            &t,
            (left - 6 - text_width(&t, 2), py - by - 5),
            2,
            &black,
        );
    }
    let n_ticks = (epochs as usize).clamp(1, 10);
    for i in 0..=n_ticks {
        let x = 1.0 + (epochs.max(2.0) - 1.0) * i as f64 / n_ticks as f64;
        let (px, _) = chart.backend_coord(&(x, lo));
        let t = format!("{:.0}", x);
        draw_text(
            area,
            &t,
            (px - bx - text_width(&t, 2) / 2, h as i32 - bottom + 6),
            2,
            &black,
        );
    }
    draw_text(area, "epoch", (w as i32 / 2 - 20, h as i32 - 14), 2, &black);
    draw_text(area, title, (left, 8), 3, &black);
    // frame
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![
                (1.0, lo),
                (epochs.max(2.0), lo),
                (epochs.max(2.0), hi),
                (1.0, hi),
                (1.0, lo),
            ],
            black,
        )))
        .map_err(err)?;
    for (i, (name, pts)) in all.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(err)?;
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(err)?;
        // legend, top right
        let (lx, ly) = (w as i32 - right - 150, top + 8 + i as i32 * 16);
        area.draw(&Rectangle::new(
            [(lx, ly + 3), (lx + 16, ly + 6)],
            c.filled(),
        ))
        .map_err(err)?;
        draw_text(area, name, (lx + 22, ly), 2, &black);
    }
    Ok(())
}

/// Draws the curves of `log` into `path` (PNG, 1000 x 420).
pub fn draw(path: &Path, log: &[EpochLog]) -> Result<()> {
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| Error::Plot(e.to_string()))?;
    let (l, r) = root.split_horizontally(500);
    let epochs = log.iter().map(|e| e.epoch).max().unwrap_or(1) as f64;
    let losses: Vec<Series> = [
        series(log, "train loss", |e| Some(e.train_loss)),
        series(log, "val loss", |e| Some(e.val_loss)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let recalls: Vec<Series> = [
        series(log, "train recall@10", |e| Some(e.train_recall)),
        series(log, "val recall@10", |e| Some(e.val_recall)),
        series(log, "val label p@10", |e| e.val_label_precision),
        series(log, "val qrels r@10", |e| e.val_qrels_recall),
        series(log, "val quantized r@10", |e| e.val_recall_quantized),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !losses.is_empty() {
        panel(&l, "loss", &losses, epochs, None)?;
    }
    if !recalls.is_empty() {
        panel(&r, "recall", &recalls, epochs, Some((0.0, 1.0)))?;
    }
    root.present().map_err(|e| Error::Plot(e.to_string()))?;
    Ok(())
}
