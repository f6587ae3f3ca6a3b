//! PNG plots like the paper's figure: precision@1 and surprisal per layer for each method,
//! and a heatmap for (source layer, target layer) grids. Text is drawn with DejaVu Sans,
//! embedded, so plots render the same on any machine. A plot is drawn in memory and
//! written whole ([`super::atomic`]).

use super::summary::{LayerSummary, METHODS};
use crate::error::{Error, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use std::sync::Once;

type Metric = fn(&LayerSummary) -> f64;

const LABELS: [&str; 3] = [
    "token identity (patchscope)",
    "logit lens",
    "tuned lens (affine)",
];
const COLORS: [RGBColor; 3] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
];

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| ())
            .expect("embedded DejaVu Sans is a valid font");
    });
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("cannot draw {}: {e}", path.display()))
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Draws a `width` x `height` picture in memory with `draw`, then writes it to `path` as a
/// PNG, whole or not at all.
fn save_png(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> Result<()>,
) -> Result<()> {
    register_font();
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // what image's PNG encoder (plotters' own file writer) chose: adaptive filtering
    encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    encoder.set_compression(png::Compression::Best);
    encoder
        .write_header()
        .and_then(|mut w| w.write_image_data(&rgb))
        .map_err(|e| plot_err(path, e))?;
    super::atomic::write(path, &bytes)
}

/// Same-layer curves: one panel for precision@1, one for surprisal.
pub fn layer_curves(path: &Path, title: &str, summary: &[LayerSummary]) -> Result<()> {
    save_png(path, (1400, 560), |root| {
        layer_curves_on(root, path, title, summary)
    })
}

fn layer_curves_on(
    root: &Area<'_>,
    path: &Path,
    title: &str,
    summary: &[LayerSummary],
) -> Result<()> {
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let root = root
        .titled(title, ("sans-serif", 26))
        .map_err(|e| plot_err(path, e))?;
    let panels = root.split_evenly((1, 2));
    let num_layers = summary
        .iter()
        .map(|s| s.source_layer + 1)
        .max()
        .unwrap_or(1);
    let curve = |m: &str, f: fn(&LayerSummary) -> f64| -> Vec<(f64, f64)> {
        summary
            .iter()
            .filter(|s| s.method == m && (m != METHODS[0] || s.source_layer == s.target_layer))
            .map(|s| (s.source_layer as f64, f(s)))
            .collect()
    };
    let metrics: [(&str, Metric); 2] = [
        ("precision@1", |s| s.precision_at_1),
        ("surprisal (nats)", |s| s.surprisal),
    ];
    for (panel, (name, f)) in panels.iter().zip(metrics) {
        let y_max = METHODS
            .iter()
            .flat_map(|m| curve(m, f))
            .map(|p| p.1)
            .fold(1.0f64, f64::max);
        let y_max = if name.starts_with("precision") {
            1.0
        } else {
            y_max * 1.05
        };
        let mut chart = ChartBuilder::on(panel)
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..(num_layers - 1).max(1) as f64, 0f64..y_max)
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc("layer")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc(name)
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        for ((m, label), color) in METHODS.iter().zip(LABELS).zip(COLORS) {
            let points = curve(m, f);
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))
                .map_err(|e| plot_err(path, e))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 4, color.filled())),
                )
                .map_err(|e| plot_err(path, e))?;
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| plot_err(path, e))?;
    }
    Ok(())
}

/// Heatmap over (source layer, target layer) of a value in [0, 1]; cells not given stay
/// white.
pub fn heatmap(
    path: &Path,
    title: &str,
    num_layers: usize,
    cells: &[(usize, usize, f64)],
) -> Result<()> {
    save_png(path, (840, 700), |root| {
        heatmap_on(root, path, title, num_layers, cells)
    })
}

fn heatmap_on(
    root: &Area<'_>,
    path: &Path,
    title: &str,
    num_layers: usize,
    cells: &[(usize, usize, f64)],
) -> Result<()> {
    let n = num_layers.max(1);
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let (main, scale) = root.split_horizontally(760);
    let mut chart = ChartBuilder::on(&main)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0..n, 0..n)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("target layer")
        .y_desc("source layer")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(|e| plot_err(path, e))?;
    chart
        .draw_series(cells.iter().map(|&(source, target, v)| {
            Rectangle::new(
                [(target, source), (target + 1, source + 1)],
                heat(v).filled(),
            )
        }))
        .map_err(|e| plot_err(path, e))?;
    // the values themselves, where the cells are large enough to hold them
    let sides = cells
        .iter()
        .map(|c| c.1)
        .collect::<std::collections::BTreeSet<_>>();
    if sides.len() <= 16 {
        let (w, _) = chart.plotting_area().dim_in_pixel();
        let size = (w as f64 / n as f64 * 0.9).clamp(8.0, 14.0) as u32;
        chart
            .draw_series(cells.iter().map(|&(source, target, v)| {
                let color: &RGBColor = if v > 0.6 { &WHITE } else { &BLACK };
                let style = TextStyle::from(("sans-serif", size).into_font())
                    .color(color)
                    .pos(Pos::new(HPos::Left, VPos::Top));
                Text::new(format!("{:.0}", v * 100.0), (target, source + 1), style)
            }))
            .map_err(|e| plot_err(path, e))?;
    }
    // the colour scale, in percent
    let mut bar = ChartBuilder::on(&scale)
        .margin_top(60)
        .margin_bottom(65)
        .margin_right(10)
        .y_label_area_size(40)
        .build_cartesian_2d(0..1, 0..100)
        .map_err(|e| plot_err(path, e))?;
    bar.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_desc("accuracy %")
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| plot_err(path, e))?;
    bar.draw_series(
        (0..100).map(|p| Rectangle::new([(0, p), (1, p + 1)], heat(p as f64 / 100.0).filled())),
    )
    .map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// White (0) to dark red (1).
fn heat(v: f64) -> RGBColor {
    let v = v.clamp(0.0, 1.0);
    RGBColor(
        255 - (v * 120.0) as u8,
        255 - (v * 235.0) as u8,
        255 - (v * 225.0) as u8,
    )
}
