//! `--plot FILE`: two charts in one SVG, one line per transport: throughput (MB/s) against
//! record size, and round-trip p50 against record size, both log-log.

use std::path::Path;

use plotters::prelude::*;

use super::report::Report;
use super::transport::Transport;

/// One line: a name and its (record size, value) points.
type Series = (String, Vec<(f64, f64)>);

pub fn write(path: &Path, report: &Report) -> anyhow::Result<()> {
    let mut throughput: Vec<Series> = Vec::new();
    let add = |series: &mut Vec<Series>, name: &str, point: (f64, f64)| {
        if point.1 > 0.0 {
            match series.iter_mut().find(|(n, _)| n == name) {
                Some((_, points)) => points.push(point),
                None => series.push((name.to_owned(), vec![point])),
            }
        }
    };
    for m in &report.memcpy {
        add(&mut throughput, "memcpy", (m.size as f64, m.median_mb_per_s));
    }
    for t in report.throughput.iter().filter(|t| t.capacity == report.settings.capacity) {
        add(&mut throughput, &t.transport, (t.size as f64, t.median_mb_per_s));
    }
    let mut latency: Vec<Series> = Vec::new();
    for l in &report.latency {
        if let Some(m) = l.median {
            add(&mut latency, &l.transport, (l.size as f64, m.p50_ns / 1e3));
        }
    }

    let root = SVGBackend::new(path, (1000, 1300)).into_drawing_area();
    root.fill(&WHITE)?;
    let (upper, lower) = root.split_vertically(650);
    chart(&upper, "Throughput against record size", "MB/s (10^6 bytes/s)", &throughput)?;
    chart(&lower, "Round trip p50 against record size", "p50 round trip (µs)", &latency)?;
    root.present()?;
    Ok(())
}

/// Line colours: memcpy, then one per transport in [`Transport::ALL`] order. A batched
/// variant gets the light shade of its unbatched twin; the baseline is red.
const COLORS: [(u8, u8, u8); 17] = [
    (0x00, 0x00, 0x00), // memcpy
    (0x1f, 0x77, 0xb4), // shmring-spin
    (0xff, 0x7f, 0x0e), // shmring-hybrid
    (0x2c, 0xa0, 0x2c), // shmring-futex
    (0xae, 0xc7, 0xe8), // shmring-batch-spin
    (0xff, 0xbb, 0x78), // shmring-batch-hybrid
    (0x98, 0xdf, 0x8a), // shmring-batch-futex
    (0x17, 0xbe, 0xcf), // shmring-file
    (0xd6, 0x27, 0x28), // minimal-ring
    (0x94, 0x67, 0xbd), // pipe
    (0xc5, 0xb0, 0xd5), // pipe-batch
    (0x8c, 0x56, 0x4b), // unix-stream
    (0xc4, 0x9c, 0x94), // unix-stream-batch
    (0xe3, 0x77, 0xc2), // unix-seqpacket
    (0xf7, 0xb6, 0xd2), // unix-seqpacket-batch
    (0x7f, 0x7f, 0x7f), // tcp
    (0xbc, 0xbd, 0x22), // tcp-batch
];
const _: () = assert!(COLORS.len() == Transport::ALL.len() + 1);

/// The colour of a line: fixed per name, so a transport has the same colour in both charts.
fn color(name: &str) -> RGBAColor {
    let index = Transport::ALL.iter().position(|t| t.name() == name).map_or(0, |i| i + 1);
    let (r, g, b) = COLORS[index];
    RGBColor(r, g, b).to_rgba()
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn chart(area: &Area<'_>, title: &str, y_desc: &str, series: &[Series]) -> anyhow::Result<()> {
    let points = || series.iter().flat_map(|(_, p)| p.iter().copied());
    let (Some(x_min), Some(x_max)) = (points().map(|p| p.0).reduce(f64::min), points().map(|p| p.0).reduce(f64::max))
    else {
        area.titled(&format!("{title}: no data"), ("sans-serif", 22))?;
        return Ok(());
    };
    let y_min = points().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_max = points().map(|p| p.1).fold(0.0, f64::max);
    // The legend goes to the right of the chart, where it hides no line.
    let (plot_area, legend_area) = area.split_horizontally(area.dim_in_pixel().0 - 230);
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d((x_min / 2.0..x_max * 2.0).log_scale().base(2.0), (y_min / 3.0..y_max * 3.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("record size")
        .y_desc(y_desc)
        .x_label_formatter(&|&x| {
            let bytes = x.round() as u64;
            if bytes.is_power_of_two() { shm_core::units::format_size(bytes) } else { String::new() }
        })
        .y_label_formatter(&|&y| if y >= 1.0 { format!("{y:.0}") } else { format!("{y}") })
        .draw()?;
    for (name, points) in series {
        let color = color(name);
        chart.draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?;
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    for (i, (name, _)) in series.iter().enumerate() {
        let y = 60 + 22 * i as i32;
        let color = color(name);
        legend_area.draw(&PathElement::new(vec![(5, y), (35, y)], color.stroke_width(3)))?;
        legend_area.draw(&Text::new(name.as_str(), (42, y - 7), ("sans-serif", 15)))?;
    }
    Ok(())
}
