//! The page inspector: one page's blocks as a strip, each coloured by what it is doing (in use,
//! on `free`, on `local_free`, on `thread_free`, delayed, not carved yet), with the counts, the
//! block size, bin, owner heap, the allocation sites of its live blocks (hover a block for its
//! stack), and the last thing that happened to the page.

use eframe::egui::{self, RichText, Sense, vec2};
use heaplens_alloc::event::EventKind;

use super::sites::{self, SitesState};
use super::style;
use crate::describe;
use crate::model::{BlockState, Model};

/// Draws the inspector for the page at `addr`; true when the user closed it.
pub fn draw(ui: &mut egui::Ui, model: &Model, addr: u64, sites_state: &mut SitesState) -> bool {
    let mut close = false;
    ui.horizontal(|ui| {
        ui.heading("Page inspector");
        if ui
            .button("Close")
            .on_hover_text("Close the inspector")
            .clicked()
        {
            close = true;
        }
    });
    let Some(r) = model.page_at(addr) else {
        ui.label("This page's segment is gone (it was freed).");
        return close;
    };
    let p = r.page;
    let names = describe::Namer::new(model);
    ui.label(
        RichText::new(format!(
            "page {} in {}",
            p.index,
            names.segment(r.segment.base)
        ))
        .strong(),
    );
    egui::Grid::new("page-facts").num_columns(2).show(ui, |ui| {
        let mut row = |k: &str, v: String, help: &str| {
            ui.label(k).on_hover_text(help);
            ui.label(v).on_hover_text(help);
            ui.end_row();
        };
        row(
            "kind",
            style::kind_name(p.page_kind()).to_owned(),
            "Small, medium, large or huge: which segment kind the page lives in",
        );
        row(
            "block size",
            style::bytes(p.block_size),
            "Every block on a page has the same size: its size class",
        );
        row(
            "bin",
            p.bin.to_string(),
            "The size class number: exact up to 64 B, then four per power of two",
        );
        row(
            "owner",
            if p.owner == 0 {
                "none (abandoned)".to_owned()
            } else {
                describe::thread(model, p.owner)
            },
            "The heap (thread) that allocates from this page; only it touches free and local_free",
        );
        row(
            "capacity",
            format!("{} of {} blocks carved", p.capacity, p.reserved),
            "Blocks are carved lazily as the page is used",
        );
        row(
            "page start",
            format!("{:#x}", p.start),
            "Address of the first block",
        );
        row(
            "full queue",
            if p.in_full { "yes" } else { "no" }.to_owned(),
            "A page with no free block waits in its heap's full queue until a block is freed",
        );
    });
    ui.separator();
    let states = p.block_states();
    let count = |s: BlockState| states.iter().filter(|x| **x == s).count();
    egui::Grid::new("page-counts")
        .num_columns(2)
        .show(ui, |ui| {
            for s in BlockState::ALL {
                style::legend_entry(ui, style::state_color(s), s.name(), style::state_help(s));
                ui.label(format!("{} {}", s.name(), count(s)))
                    .on_hover_text(style::state_help(s));
                ui.end_row();
            }
        });
    ui.separator();
    sites::page_sites(ui, model, p, sites_state);
    ui.label(RichText::new("Blocks").strong())
        .on_hover_text("One cell per block, in address order");
    strip(ui, &states, &mut |i| {
        let addr = p.block_addr(i as u64);
        sites::block_stack(model, addr, sites_state)
    });
    ui.separator();
    let last = p.last;
    if let Some(kind) = EventKind::from_u8(last.kind) {
        ui.label(format!(
            "last: {} by {} at {}",
            kind.name(),
            describe::thread(model, last.heap),
            crate::source::seconds(last.time)
        ))
        .on_hover_text("The last event that touched this page");
    }
    close
}

fn strip(
    ui: &mut egui::Ui,
    states: &[BlockState],
    stack_of: &mut dyn FnMut(usize) -> Option<String>,
) {
    let cell = if states.len() > 2048 { 5.0 } else { 8.0 };
    let per_row = ((ui.available_width() / cell).floor() as usize).max(8);
    let rows = states.len().div_ceil(per_row);
    egui::ScrollArea::vertical()
        .max_height(ui.available_height().max(60.0))
        .show(ui, |ui| {
            let (rect, resp) = ui.allocate_exact_size(
                vec2(per_row as f32 * cell, rows as f32 * cell),
                Sense::hover(),
            );
            let painter = ui.painter_at(rect);
            for (i, s) in states.iter().enumerate() {
                let (x, y) = ((i % per_row) as f32, (i / per_row) as f32);
                let r = egui::Rect::from_min_size(
                    rect.min + vec2(x * cell, y * cell),
                    vec2(cell - 1.0, cell - 1.0),
                );
                painter.rect_filled(r, 0.0, style::state_color(*s));
            }
            if let Some(pos) = resp.hover_pos() {
                let rel = pos - rect.min;
                let i = (rel.y / cell) as usize * per_row + (rel.x / cell) as usize;
                if let Some(s) = states.get(i) {
                    let text = match stack_of(i) {
                        Some(stack) => format!("block {i}: {}\n{stack}", s.name()),
                        None => format!("block {i}: {}", s.name()),
                    };
                    resp.on_hover_text(text);
                }
            }
        });
}
