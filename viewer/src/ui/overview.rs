//! The overview: headline figures now, and plots over time of memory, fragmentation, rates and
//! threads, with user markers as labelled vertical lines (and the replay position). Axes and
//! hover labels carry their units (MiB, M/s, ms).

use eframe::egui::{self, Color32};
use egui_plot::{Legend, Line, Plot, PlotPoints, VLine};

use super::{markers, style};
use crate::model::{Metrics, Sample};
use crate::source::View;
use crate::units;

/// Draws the overview. `full` is the whole recording's series (replay), else the live model's.
pub fn draw(ui: &mut egui::Ui, view: &View, full: Option<&Metrics>) {
    let now = view.model.current();
    figures(ui, &now);
    ui.separator();
    let metrics = full.unwrap_or_else(|| view.model.metrics());
    let cursor = full.map(|_| view.model.time() as f64 / 1e9);
    let samples = metrics.samples();
    let t = |s: &Sample| s.time as f64 / 1e9;
    let markers = metrics.markers();
    let h = ((ui.available_height() - 30.0) / 2.0).max(120.0);
    let w = (ui.available_width() / 2.0 - 8.0).max(200.0);
    let link = ui.make_persistent_id("overview-time");
    // Marker lines in every plot; their labels in the top two, in rows above the data.
    let decorate = |plot_ui: &mut egui_plot::PlotUi<'_>| {
        for m in markers {
            plot_ui.vline(VLine::new("", m.time as f64 / 1e9).color(style::MARKER));
        }
        if let Some(c) = cursor {
            plot_ui.vline(
                VLine::new("replay position", c)
                    .color(style::CURSOR)
                    .width(2.0),
            );
        }
    };
    let label_markers = |ui: &mut egui::Ui, transform: &egui_plot::PlotTransform| {
        let x_of =
            |m: &crate::model::Marker| Some(transform.position_from_point_x(m.time as f64 / 1e9));
        let _ = markers::draw(ui, *transform.frame(), markers, &x_of, markers::ROWS);
    };
    // Room above the data for the label rows.
    let headroom = if markers.is_empty() { 1.05 } else { 1.3 };
    let max_of = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(f).fold(0.0, f64::max);
    egui::Grid::new("plots").num_columns(2).show(ui, |ui| {
        let unit = units::byte_scale(max_of(&|s| s.committed_bytes as f64));
        let series = |f: &dyn Fn(&Sample) -> u64| -> PlotPoints<'static> {
            samples
                .iter()
                .map(|s| [t(s), unit.of(f(s) as f64)])
                .collect()
        };
        ui.vertical(|ui| {
            ui.label(format!("Memory ({})", unit.suffix)).on_hover_text(
                "committed: what the allocator holds from the OS · page capacity: what the \
                 in-use pages can hold · blocks: the blocks handed out · requested: what the \
                 program asked for",
            );
            let top = unit.of(max_of(&|s| s.committed_bytes as f64)) * headroom;
            let r = time_plot("memory", (h, w), link, move |v| unit.label(v))
                .include_y(top)
                .show(ui, |p| {
                    style::add_line(
                        p,
                        Line::new("committed", series(&|s| s.committed_bytes))
                            .color(style::COMMITTED),
                    );
                    style::add_line(
                        p,
                        Line::new("page capacity", series(&|s| s.page_capacity_bytes))
                            .color(style::CAPACITY),
                    );
                    style::add_line(
                        p,
                        Line::new("blocks", series(&|s| s.block_bytes)).color(style::BLOCKS),
                    );
                    style::add_line(
                        p,
                        Line::new("requested", series(&|s| s.requested_bytes))
                            .color(style::REQUESTED),
                    );
                    decorate(p);
                });
            label_markers(ui, &r.transform);
        });
        ui.vertical(|ui| {
            ui.label("Fragmentation (%)").on_hover_text(
                "internal: block bytes not requested · page: page capacity not in blocks · \
                 segment: pages of small and medium segments not in use",
            );
            let pc = |f: &dyn Fn(&Sample) -> f64| -> PlotPoints<'static> {
                samples.iter().map(|s| [t(s), f(s) * 100.0]).collect()
            };
            let r = time_plot("fragmentation", (h, w), link, |v| {
                format!("{} %", units::number(v))
            })
            .include_y(100.0 * headroom)
            .show(ui, |p| {
                style::add_line(
                    p,
                    Line::new("internal", pc(&Sample::internal_fragmentation))
                        .color(style::REQUESTED),
                );
                style::add_line(
                    p,
                    Line::new("page", pc(&Sample::page_fragmentation)).color(style::BLOCKS),
                );
                style::add_line(
                    p,
                    Line::new("segment", pc(&Sample::segment_fragmentation)).color(style::CAPACITY),
                );
                decorate(p);
            });
            label_markers(ui, &r.transform);
        });
        ui.end_row();
        let rates: Vec<[f64; 3]> = samples
            .windows(2)
            .map(|w| {
                [
                    t(&w[1]),
                    w[1].alloc_rate_since(&w[0]),
                    w[1].free_rate_since(&w[0]),
                ]
            })
            .collect();
        let unit = units::rate_scale(rates.iter().map(|r| r[1].max(r[2])).fold(0.0, f64::max));
        ui.vertical(|ui| {
            ui.label(format!(
                "Allocations and frees per second ({})",
                unit.suffix
            ))
            .on_hover_text("Rates between consecutive samples");
            time_plot("rates", (h, w), link, move |v| unit.label(v)).show(ui, |p| {
                let pts = |i: usize| -> PlotPoints<'static> {
                    rates.iter().map(|r| [r[0], unit.of(r[i])]).collect()
                };
                style::add_line(p, Line::new("allocs", pts(1)).color(style::BLOCKS));
                style::add_line(p, Line::new("frees", pts(2)).color(style::REQUESTED));
                decorate(p);
            });
        });
        ui.vertical(|ui| {
            ui.label("Threads")
                .on_hover_text("Heaps alive: one per thread that allocated");
            time_plot("threads", (h, w), link, units::number)
                .include_y(max_of(&|s| f64::from(s.threads)) + 1.0)
                .show(ui, |p| {
                    style::add_line(
                        p,
                        Line::new(
                            "threads",
                            samples
                                .iter()
                                .map(|s| [t(s), f64::from(s.threads)])
                                .collect::<PlotPoints<'static>>(),
                        )
                        .color(Color32::from_rgb(0xc8, 0x5c, 0xd6)),
                    );
                    decorate(p);
                });
        });
        ui.end_row();
    });
}

fn figures(ui: &mut egui::Ui, s: &Sample) {
    ui.horizontal(|ui| {
        style::figure(
            ui,
            "committed",
            &style::bytes(s.committed_bytes),
            "Memory the allocator holds from the OS (segments, less purged pages)",
        );
        ui.add_space(16.0);
        style::figure(
            ui,
            "requested",
            &style::bytes(s.requested_bytes),
            "Bytes the program asked for, over its live blocks",
        );
        ui.add_space(16.0);
        style::figure(
            ui,
            "live blocks",
            &s.live_blocks.to_string(),
            "Blocks allocated and not freed",
        );
        ui.add_space(16.0);
        style::figure(
            ui,
            "internal frag.",
            &style::percent(s.internal_fragmentation()),
            "Share of block bytes the program did not ask for (size-class rounding)",
        );
        ui.add_space(16.0);
        style::figure(
            ui,
            "page frag.",
            &style::percent(s.page_fragmentation()),
            "Share of in-use pages' capacity not held in blocks (free blocks on pages)",
        );
        ui.add_space(16.0);
        style::figure(
            ui,
            "segment frag.",
            &style::percent(s.segment_fragmentation()),
            "Share of small/medium segment pages not in use",
        );
        ui.add_space(16.0);
        style::figure(
            ui,
            "threads",
            &s.threads.to_string(),
            "Threads with a live heap",
        );
    });
}

/// One of the overview's plots: time on x (shared by all four), from zero on y with `y_label`
/// giving the y unit, and a legend.
fn time_plot<'a>(
    id: &str,
    (h, w): (f32, f32),
    link: egui::Id,
    y_label: impl Fn(f64) -> String + Clone + 'a,
) -> Plot<'a> {
    style::time_axes(
        Plot::new(id)
            .height(h)
            .width(w)
            .legend(Legend::default().position(egui_plot::Corner::RightBottom))
            .link_axis(link, [true, false])
            .include_y(0.0),
        y_label,
    )
}
