//! The overview: headline figures now, and plots over time of memory, fragmentation, rates and
//! threads, with user markers as labelled vertical lines (and the replay position).

use eframe::egui::{self, Color32};
use egui_plot::{Legend, Line, Plot, PlotPoint, PlotPoints, Text, VLine};

use super::style;
use crate::model::{Metrics, Sample};
use crate::source::View;

const MIB: f64 = 1024.0 * 1024.0;

/// Draws the overview. `full` is the whole recording's series (replay), else the live model's.
pub fn draw(ui: &mut egui::Ui, view: &View, full: Option<&Metrics>) {
    let now = view.model.current();
    figures(ui, &now);
    ui.separator();
    let metrics = full.unwrap_or_else(|| view.model.metrics());
    let cursor = full.map(|_| view.model.time() as f64 / 1e9);
    let samples = metrics.samples();
    let t = |s: &Sample| s.time as f64 / 1e9;
    let series = |f: &dyn Fn(&Sample) -> f64| -> PlotPoints<'static> {
        samples.iter().map(|s| [t(s), f(s)]).collect()
    };
    let markers = metrics.markers();
    let h = ((ui.available_height() - 30.0) / 2.0).max(120.0);
    let w = (ui.available_width() / 2.0 - 8.0).max(200.0);
    let link = ui.make_persistent_id("overview-time");
    let span = samples
        .last()
        .map_or(1.0, |s| s.time as f64 / 1e9)
        .max(1e-9);
    let decorate = |plot_ui: &mut egui_plot::PlotUi<'_>, top: f64| {
        // Labels are kept apart (a fifth of the time axis) and short; every marker keeps its
        // line, and the timeline lists them all.
        let mut last_label = f64::NEG_INFINITY;
        for m in markers {
            let x = m.time as f64 / 1e9;
            plot_ui.vline(VLine::new("", x).color(style::MARKER));
            if x - last_label < span / 5.0 {
                continue;
            }
            last_label = x;
            plot_ui.text(
                Text::new("", PlotPoint::new(x, top), short_label(&m.label))
                    .color(style::MARKER)
                    .anchor(egui::Align2::LEFT_TOP),
            );
        }
        if let Some(c) = cursor {
            plot_ui.vline(
                VLine::new("replay position", c)
                    .color(style::CURSOR)
                    .width(2.0),
            );
        }
    };
    let max_of = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(f).fold(0.0, f64::max);
    egui::Grid::new("plots").num_columns(2).show(ui, |ui| {
        let top = max_of(&|s| s.committed_bytes as f64 / MIB) * 1.05;
        ui.vertical(|ui| {
            ui.label("Memory (MiB)").on_hover_text(
                "committed: what the allocator holds from the OS · page capacity: what the \
                 in-use pages can hold · blocks: the blocks handed out · requested: what the \
                 program asked for",
            );
            time_plot("memory", h, w, link).show(ui, |p| {
                let mib = |b: u64| b as f64 / MIB;
                style::add_line(
                    p,
                    Line::new("committed", series(&|s| mib(s.committed_bytes)))
                        .color(style::COMMITTED),
                );
                style::add_line(
                    p,
                    Line::new("page capacity", series(&|s| mib(s.page_capacity_bytes)))
                        .color(style::CAPACITY),
                );
                style::add_line(
                    p,
                    Line::new("blocks", series(&|s| mib(s.block_bytes))).color(style::BLOCKS),
                );
                style::add_line(
                    p,
                    Line::new("requested", series(&|s| mib(s.requested_bytes)))
                        .color(style::REQUESTED),
                );
                decorate(p, top);
            });
        });
        ui.vertical(|ui| {
            ui.label("Fragmentation (%)").on_hover_text(
                "internal: block bytes not requested · page: page capacity not in blocks · \
                 segment: pages of small and medium segments not in use",
            );
            time_plot("fragmentation", h, w, link)
                .include_y(100.0)
                .show(ui, |p| {
                    let pc = |f: f64| f * 100.0;
                    style::add_line(
                        p,
                        Line::new("internal", series(&|s| pc(s.internal_fragmentation())))
                            .color(style::REQUESTED),
                    );
                    style::add_line(
                        p,
                        Line::new("page", series(&|s| pc(s.page_fragmentation())))
                            .color(style::BLOCKS),
                    );
                    style::add_line(
                        p,
                        Line::new("segment", series(&|s| pc(s.segment_fragmentation())))
                            .color(style::CAPACITY),
                    );
                    decorate(p, 100.0);
                });
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
        let top = rates.iter().map(|r| r[1].max(r[2])).fold(0.0, f64::max) * 1.05;
        ui.vertical(|ui| {
            ui.label("Allocations and frees per second")
                .on_hover_text("Rates between consecutive samples");
            time_plot("rates", h, w, link).show(ui, |p| {
                let pts = |i: usize| -> PlotPoints<'static> {
                    rates.iter().map(|r| [r[0], r[i]]).collect()
                };
                style::add_line(p, Line::new("allocs/s", pts(1)).color(style::BLOCKS));
                style::add_line(p, Line::new("frees/s", pts(2)).color(style::REQUESTED));
                decorate(p, top);
            });
        });
        let top = max_of(&|s| f64::from(s.threads)) + 1.0;
        ui.vertical(|ui| {
            ui.label("Threads")
                .on_hover_text("Heaps alive: one per thread that allocated");
            time_plot("threads", h, w, link).show(ui, |p| {
                style::add_line(
                    p,
                    Line::new("threads", series(&|s| f64::from(s.threads)))
                        .color(Color32::from_rgb(0xc8, 0x5c, 0xd6)),
                );
                decorate(p, top);
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

/// One of the overview's plots: time on x (shared by all four), from zero on y, with a legend.
fn time_plot(id: &str, h: f32, w: f32, link: egui::Id) -> Plot<'static> {
    Plot::new(id)
        .height(h)
        .width(w)
        .legend(Legend::default())
        .link_axis(link, [true, false])
        .include_y(0.0)
}

/// A marker label cut to fit beside its line.
fn short_label(label: &str) -> String {
    const MAX: usize = 28;
    if label.chars().count() <= MAX {
        label.to_owned()
    } else {
        let cut: String = label.chars().take(MAX - 3).collect();
        format!("{cut}...")
    }
}
