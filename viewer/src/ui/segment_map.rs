//! The segment map: one row per segment, its pages as tiles whose width is proportional to
//! their size (every segment row is as wide as 64 small pages), coloured by page kind and filled
//! from the bottom by the share of blocks in use. Hover a tile for the page's summary, click it to open the page inspector; zoom with
//! the slider or ctrl + scroll, pan by scrolling.

use eframe::egui::{self, Color32, RichText, Sense, Stroke, StrokeKind, vec2};
use heaplens_alloc::SMALL_PAGES_PER_SEGMENT;

use super::app::UiState;
use super::style;
use crate::describe;
use crate::model::{Model, Page, Segment};

const HEADER: f32 = 190.0;

/// Draws the map.
pub fn draw(ui: &mut egui::Ui, model: &Model, state: &mut UiState) {
    let segments = model.segments_by_address();
    ui.horizontal(|ui| {
        ui.label(format!("{} segments", segments.len()))
            .on_hover_text("Segments are 4 MiB, aligned, so a pointer finds its segment by a mask");
        ui.separator();
        ui.add(egui::Slider::new(&mut state.tile, 4.0..=40.0).text("zoom"))
            .on_hover_text("Tile width of a 64 KiB page (ctrl + scroll also zooms)");
        ui.separator();
        for k in style::KINDS {
            style::legend_entry(
                ui,
                style::kind_color(k),
                style::kind_name(k),
                match k {
                    heaplens_alloc::bin::PageKind::Small => "64 KiB pages for blocks up to 16 KiB",
                    heaplens_alloc::bin::PageKind::Medium => {
                        "512 KiB pages for blocks up to 128 KiB"
                    }
                    heaplens_alloc::bin::PageKind::Large => {
                        "One block up to 2 MiB a page, each page a span of 64 KiB slots"
                    }
                    heaplens_alloc::bin::PageKind::Huge => "One block in a segment of its own",
                },
            );
        }
        style::legend_entry(
            ui,
            Color32::from_gray(0x2a),
            "unused",
            "A page no heap uses now",
        );
        ui.label(RichText::new("bright part = blocks in use").weak())
            .on_hover_text(
                "Each page tile fills from the bottom with the share of its blocks in use",
            );
    });
    let zoom = ui.input(|i| {
        if i.modifiers.ctrl {
            i.zoom_delta()
        } else {
            1.0
        }
    });
    if zoom != 1.0 {
        state.tile = (state.tile * zoom).clamp(4.0, 40.0);
    }
    let tile = state.tile;
    let row_h = (tile * 1.4).max(14.0);
    let names = describe::Namer::new(model);
    egui::ScrollArea::both().auto_shrink(false).show_rows(
        ui,
        row_h + 2.0,
        segments.len(),
        |ui, rows| {
            for i in rows {
                let seg = segments[i];
                ui.horizontal(|ui| {
                    let owner = if seg.abandoned {
                        "abandoned".to_owned()
                    } else if seg.owner == 0 {
                        "no owner".to_owned()
                    } else {
                        describe::thread(model, seg.owner)
                    };
                    ui.add_sized(
                        vec2(HEADER, row_h),
                        egui::Label::new(
                            RichText::new(format!(
                                "{} · {} · {}",
                                names.segment(seg.base),
                                style::kind_name(seg.page_kind()),
                                owner
                            ))
                            .small(),
                        )
                        .truncate(),
                    )
                    .on_hover_text(format!(
                        "{} at {:#x}: {}, {} committed, {} of {} pages in use, owner {}",
                        names.segment(seg.base),
                        seg.base,
                        style::bytes(seg.bytes),
                        style::bytes(seg.committed()),
                        seg.used_pages(),
                        seg.pages.len(),
                        owner
                    ));
                    tiles(ui, model, seg, &names, tile, row_h, state);
                });
            }
        },
    );
}

fn fill(p: &Page) -> f32 {
    if p.reserved == 0 {
        return if p.used > 0 { 1.0 } else { 0.0 };
    }
    (p.held().max(0) as f32 / p.reserved as f32).min(1.0)
}

fn tiles(
    ui: &mut egui::Ui,
    model: &Model,
    seg: &Segment,
    names: &describe::Namer,
    tile: f32,
    row_h: f32,
    state: &mut UiState,
) {
    let full_width = tile * SMALL_PAGES_PER_SEGMENT as f32;
    let n = seg.pages.len().max(1);
    let w = full_width / n as f32;
    let (rect, _) = ui.allocate_exact_size(vec2(full_width, row_h), Sense::hover());
    let painter = ui.painter_at(rect);
    let mut next = 0;
    while next < seg.pages.len() {
        let (i, p) = (next, &seg.pages[next]);
        let slots = seg.page_slots(i); // a large page's tile covers its span
        next += slots;
        let r = egui::Rect::from_min_size(
            rect.min + vec2(i as f32 * w, 0.0),
            vec2((slots as f32 * w - 1.0).max(1.0), row_h),
        );
        painter.rect_filled(
            r,
            1.0,
            style::tile_color(seg.page_kind(), fill(p), p.in_use),
        );
        let selected = state.selected_page == Some(p.start);
        if selected {
            painter.rect_stroke(r, 1.0, Stroke::new(2.0, Color32::WHITE), StrokeKind::Inside);
        }
        if !p.in_use {
            continue;
        }
        // The label is made only when asked for (hover, accessibility): a frame shows
        // thousands of tiles.
        let label = || format!("page {} in {}", p.index, names.segment(seg.base));
        let resp = ui
            .interact(r, ui.scope_id().with((seg.base, i)), Sense::click())
            .on_hover_ui(|ui| page_summary(ui, model, p, &label()));
        resp.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, label()));
        if resp.clicked() {
            state.selected_page = Some(p.start);
        }
    }
}

/// The hover summary of a page.
fn page_summary(ui: &mut egui::Ui, model: &Model, p: &Page, label: &str) {
    ui.label(RichText::new(label).strong());
    ui.label(format!(
        "{} blocks of {} (bin {})",
        p.reserved,
        style::bytes(p.block_size),
        p.bin
    ));
    ui.label(format!(
        "in use {} · free {} · local_free {} · thread_free {} · not carved {}",
        p.held(),
        p.free_len(),
        p.local_free,
        p.thread_free + p.delayed,
        i64::from(p.reserved) - i64::from(p.capacity)
    ));
    ui.label(format!("owner: {}", describe::thread(model, p.owner)));
    if p.in_full {
        ui.label("in the heap's full queue");
    }
    ui.label(RichText::new("click to inspect").weak());
}
