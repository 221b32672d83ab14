//! Heaps: one panel per thread's heap (name, id, live or exited), its pages grouped by size
//! class with fill bars and byte totals; then the abandoned pages, and who reclaimed pages.

use eframe::egui::{self, Color32, RichText, Sense, vec2};
use heaplens_alloc::event::EventKind;

use super::app::UiState;
use super::style;
use crate::model::{BinGroup, BlockState, Model};

/// Draws the heaps tab.
pub fn draw(ui: &mut egui::Ui, model: &Model, state: &mut UiState) {
    let heaps = model.heaps();
    ui.horizontal(|ui| {
        ui.label(format!(
            "{} heaps, {} alive",
            heaps.len(),
            heaps.alive()
        ))
        .on_hover_text(
            "Every thread that allocates gets its own heap: no locks on the fast path. A thread \
             that exits abandons its heap's segments; other threads reclaim them.",
        );
        ui.separator();
        for s in [BlockState::InUse, BlockState::Free] {
            style::legend_entry(ui, style::state_color(s), s.name(), style::state_help(s));
        }
    });
    let reclaimed = reclaims(model);
    egui::ScrollArea::vertical()
        .auto_shrink(false)
        .show(ui, |ui| {
            for h in heaps.iter() {
                let totals = model.page_totals(Some(h.id));
                let status = if h.is_alive() { "alive" } else { "exited" };
                let title = format!(
                    "{} — {} — {} pages, {} in blocks of {} capacity",
                    h.label(),
                    status,
                    totals.pages,
                    style::bytes(totals.held_bytes.max(0)),
                    style::bytes(totals.capacity_bytes.max(0)),
                );
                let open = state.selected_heap == Some(h.id);
                let resp = egui::CollapsingHeader::new(title)
                    .id_salt(("heap", h.id))
                    .default_open(open || heaps.len() <= 4)
                    .show(ui, |ui| {
                        if h.only_frees() {
                            ui.label(
                                RichText::new(
                                    "Seen only freeing, never allocating: a thread the trace \
                                     does not follow (its frees into traced pages are reported, \
                                     so those pages' counts stay exact), or one that has not \
                                     allocated since recording began.",
                                )
                                .weak(),
                            );
                        }
                        ui.label(format!(
                            "thread id {} · {} allocations · {} frees{}",
                            h.os_tid,
                            h.allocs,
                            h.frees,
                            match reclaimed.iter().find(|(id, _)| *id == h.id) {
                                Some((_, n)) => format!(" · reclaimed {n} abandoned pages"),
                                None => String::new(),
                            }
                        ));
                        bins(ui, model, &model.bins(Some(h.id)), state);
                    });
                if open {
                    resp.header_response.scroll_to_me(Some(egui::Align::TOP));
                    state.selected_heap = None;
                }
            }
            let abandoned = model.bins(Some(0));
            ui.separator();
            ui.label(RichText::new("Abandoned pages").strong())
                .on_hover_text(
                    "Pages of threads that exited while blocks were still in use. Another thread \
             reclaims the segment when it needs one, or when it frees into it.",
                );
            if abandoned.is_empty() {
                ui.label(RichText::new("none").weak());
            } else {
                bins(ui, model, &abandoned, state);
            }
        });
}

/// Pages whose last event is a reclaim, by the heap that reclaimed them.
fn reclaims(model: &Model) -> Vec<(u32, usize)> {
    let mut by: Vec<(u32, usize)> = Vec::new();
    for seg in model.segments().iter() {
        for p in seg.pages.iter().filter(|p| p.in_use) {
            if p.last.kind == EventKind::PageReclaim as u8 {
                match by.iter_mut().find(|(id, _)| *id == p.owner) {
                    Some((_, n)) => *n += 1,
                    None => by.push((p.owner, 1)),
                }
            }
        }
    }
    by
}

fn bins(ui: &mut egui::Ui, model: &Model, groups: &[BinGroup], state: &mut UiState) {
    egui::Grid::new(ui.scope_id().with("bins"))
        .num_columns(4)
        .striped(true)
        .show(ui, |ui| {
            for g in groups {
                let t = &g.totals;
                let label = format!("{} blocks (bin {})", style::bytes(g.block_size), g.bin);
                let resp = ui
                    .add(egui::Button::new(label.as_str()).small())
                    .on_hover_text("Open this size class's first page in the inspector");
                if resp.clicked() {
                    state.selected_page = g.pages.first().copied();
                }
                ui.label(format!("{} pages", t.pages))
                    .on_hover_text("Pages of this size class owned by the heap");
                let fill = if t.capacity > 0 {
                    (t.held.max(0) as f32 / t.capacity as f32).min(1.0)
                } else {
                    0.0
                };
                fill_bar(ui, fill).on_hover_text(format!(
                    "{} of {} carved blocks in use; {} on free lists",
                    t.held,
                    t.capacity,
                    t.free + t.local_free + t.thread_free + t.delayed
                ));
                ui.label(format!(
                    "{} of {}",
                    style::bytes(t.held_bytes.max(0)),
                    style::bytes(t.capacity_bytes.max(0))
                ))
                .on_hover_text("Bytes in blocks in use, of the bytes the pages can hold");
                ui.end_row();
            }
        });
    let _ = model;
}

fn fill_bar(ui: &mut egui::Ui, fill: f32) -> egui::Response {
    let (rect, resp) = ui.allocate_exact_size(vec2(160.0, 12.0), Sense::hover());
    let p = ui.painter();
    p.rect_filled(rect, 2.0, style::state_color(BlockState::Free));
    let mut used = rect;
    used.set_width(rect.width() * fill);
    p.rect_filled(used, 2.0, style::state_color(BlockState::InUse));
    p.text(
        rect.center(),
        egui::Align2::CENTER_CENTER,
        format!("{:.0} %", fill * 100.0),
        egui::FontId::proportional(10.0),
        Color32::BLACK,
    );
    resp
}
