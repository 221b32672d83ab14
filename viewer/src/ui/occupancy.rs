//! Free-list occupancy: per size class, the blocks in use and on each of the three free lists
//! (plus delayed), and the pages in the full queue, as bars now; and the list totals over time.

use eframe::egui::{self, RichText, Sense, vec2};
use egui_plot::{Legend, Line, Plot, PlotPoints, VLine};

use super::style;
use crate::model::{BlockState, Metrics, Sample};
use crate::source::View;

const SEGMENTS: [BlockState; 5] = [
    BlockState::InUse,
    BlockState::Free,
    BlockState::LocalFree,
    BlockState::ThreadFree,
    BlockState::Delayed,
];

/// Draws the tab.
pub fn draw(ui: &mut egui::Ui, view: &View, full: Option<&Metrics>) {
    let model = &view.model;
    ui.horizontal(|ui| {
        for s in SEGMENTS {
            style::legend_entry(ui, style::state_color(s), s.name(), style::state_help(s));
        }
    });
    let metrics = full.unwrap_or_else(|| model.metrics());
    let samples = metrics.samples();
    ui.label(RichText::new("Blocks on each list over time").strong())
        .on_hover_text("Totals over every page; thread_free includes delayed blocks");
    let plot = Plot::new("lists-over-time")
        .height(150.0)
        .legend(Legend::default())
        .include_y(0.0);
    style::time_axes(plot, crate::units::number).show(ui, |p| {
        let series = |f: &dyn Fn(&Sample) -> u64| -> PlotPoints<'static> {
            samples
                .iter()
                .map(|s| [s.time as f64 / 1e9, f(s) as f64])
                .collect()
        };
        let c = style::state_color;
        style::add_line(
            p,
            Line::new("free", series(&|s| s.free_blocks)).color(c(BlockState::Free)),
        );
        style::add_line(
            p,
            Line::new("local_free", series(&|s| s.local_free_blocks))
                .color(c(BlockState::LocalFree)),
        );
        style::add_line(
            p,
            Line::new("thread_free", series(&|s| s.thread_free_blocks))
                .color(c(BlockState::ThreadFree)),
        );
        style::add_line(
            p,
            Line::new("full pages", series(&|s| s.full_pages)).color(c(BlockState::Delayed)),
        );
        if full.is_some() {
            p.vline(VLine::new("now", model.time() as f64 / 1e9).color(style::CURSOR));
        }
    });
    ui.separator();
    ui.label(RichText::new("By size class, now").strong())
        .on_hover_text("Each bar is every carved block of the class's pages");
    let groups = model.bins(None);
    egui::ScrollArea::vertical()
        .auto_shrink(false)
        .show(ui, |ui| {
            egui::Grid::new("occupancy")
                .num_columns(4)
                .striped(true)
                .show(ui, |ui| {
                    ui.label(RichText::new("class").weak());
                    ui.label(RichText::new("pages (full)").weak())
                        .on_hover_text("Pages, and how many wait in the full queue");
                    ui.label(RichText::new("blocks").weak());
                    ui.label(RichText::new("counts").weak());
                    ui.end_row();
                    for g in &groups {
                        let t = &g.totals;
                        ui.label(format!("{} (bin {})", style::bytes(g.block_size), g.bin));
                        ui.label(format!("{} ({})", t.pages, t.full_pages));
                        let counts = [t.held, t.free, t.local_free, t.thread_free, t.delayed];
                        bar(ui, &counts);
                        ui.label(format!(
                            "in use {} · free {} · local {} · thread {} · delayed {}",
                            counts[0], counts[1], counts[2], counts[3], counts[4]
                        ));
                        ui.end_row();
                    }
                });
        });
}

fn bar(ui: &mut egui::Ui, counts: &[i64; 5]) {
    let total: i64 = counts.iter().map(|c| (*c).max(0)).sum();
    let (rect, resp) = ui.allocate_exact_size(vec2(260.0, 12.0), Sense::hover());
    let p = ui.painter();
    p.rect_filled(rect, 0.0, style::state_color(BlockState::Uncarved));
    let mut x = rect.left();
    for (s, c) in SEGMENTS.iter().zip(counts) {
        if total == 0 {
            break;
        }
        let w = rect.width() * (*c).max(0) as f32 / total as f32;
        let r = egui::Rect::from_min_size(egui::pos2(x, rect.top()), vec2(w, rect.height()));
        p.rect_filled(r, 0.0, style::state_color(*s));
        x += w;
    }
    resp.on_hover_text(
        SEGMENTS
            .iter()
            .zip(counts)
            .map(|(s, c)| format!("{}: {c}", s.name()))
            .collect::<Vec<_>>()
            .join("\n"),
    );
}
