//! The viewer's colours and units, in one place so every panel and the legends agree.

use eframe::egui::{self, Color32, RichText, Ui};
use heaplens_alloc::bin::PageKind;

use crate::model::BlockState;

/// Colour of a block state (page inspector, occupancy bars).
pub fn state_color(s: BlockState) -> Color32 {
    match s {
        BlockState::InUse => Color32::from_rgb(0xe8, 0x9f, 0x3c),
        BlockState::Free => Color32::from_rgb(0x4c, 0xaf, 0x6a),
        BlockState::LocalFree => Color32::from_rgb(0x4f, 0x9d, 0xe0),
        BlockState::ThreadFree => Color32::from_rgb(0xc8, 0x5c, 0xd6),
        BlockState::Delayed => Color32::from_rgb(0xe0, 0x55, 0x55),
        BlockState::Uncarved => Color32::from_rgb(0x3c, 0x40, 0x48),
    }
}

/// What a block state means, for tooltips.
pub fn state_help(s: BlockState) -> &'static str {
    match s {
        BlockState::InUse => "Held by the program.",
        BlockState::Free => "On the page's free list: the next allocations of this size pop it.",
        BlockState::LocalFree => {
            "On local_free: freed by the owning thread; moved to free at the next collect."
        }
        BlockState::ThreadFree => {
            "On thread_free: freed by another thread with an atomic push; the owner collects it."
        }
        BlockState::Delayed => {
            "Freed by another thread into a full page: on the owner heap's delayed list."
        }
        BlockState::Uncarved => "Not carved yet: pages extend their capacity lazily.",
    }
}

/// Colour of a page kind (segment map tiles, at full fill).
pub fn kind_color(k: PageKind) -> Color32 {
    match k {
        PageKind::Small => Color32::from_rgb(0x4f, 0x9d, 0xe0),
        PageKind::Medium => Color32::from_rgb(0x3f, 0xb8, 0xa8),
        PageKind::Large => Color32::from_rgb(0x9b, 0x7b, 0xe0),
        PageKind::Huge => Color32::from_rgb(0xe0, 0x8a, 0x3c),
    }
}

/// Page kind names.
pub fn kind_name(k: PageKind) -> &'static str {
    match k {
        PageKind::Small => "small",
        PageKind::Medium => "medium",
        PageKind::Large => "large",
        PageKind::Huge => "huge",
    }
}

/// Every page kind, in legend order.
pub const KINDS: [PageKind; 4] = [
    PageKind::Small,
    PageKind::Medium,
    PageKind::Large,
    PageKind::Huge,
];

/// A page tile: the kind's colour, darker the emptier the page; unused pages are dim grey.
pub fn tile_color(kind: PageKind, fill: f32, in_use: bool) -> Color32 {
    if !in_use {
        return Color32::from_gray(0x2a);
    }
    let base = kind_color(kind);
    let f = 0.35 + 0.65 * fill.clamp(0.0, 1.0);
    Color32::from_rgb(
        (f32::from(base.r()) * f) as u8,
        (f32::from(base.g()) * f) as u8,
        (f32::from(base.b()) * f) as u8,
    )
}

/// The time-series colours.
pub const COMMITTED: Color32 = Color32::from_rgb(0xe0, 0x55, 0x55);
/// Page capacity bytes.
pub const CAPACITY: Color32 = Color32::from_rgb(0xe0, 0x8a, 0x3c);
/// Block bytes.
pub const BLOCKS: Color32 = Color32::from_rgb(0x4f, 0x9d, 0xe0);
/// Requested bytes.
pub const REQUESTED: Color32 = Color32::from_rgb(0x4c, 0xaf, 0x6a);
/// Marker lines.
pub const MARKER: Color32 = Color32::from_rgb(0xd0, 0xd0, 0x60);
/// The replay cursor.
pub const CURSOR: Color32 = Color32::from_rgb(0xf0, 0xf0, 0xf0);

pub use crate::units::{bytes, percent};

/// A coloured square and a name, with a tooltip: one legend entry.
pub fn legend_entry(ui: &mut Ui, color: Color32, name: &str, help: &str) {
    ui.horizontal(|ui| {
        let (rect, _) = ui.allocate_exact_size(egui::vec2(12.0, 12.0), egui::Sense::hover());
        ui.painter().rect_filled(rect, 2.0, color);
        ui.label(name);
    })
    .response
    .on_hover_text(help);
}

/// A figure: a small caption above a large value, with a tooltip that explains it.
pub fn figure(ui: &mut Ui, caption: &str, value: &str, help: &str) {
    ui.vertical(|ui| {
        ui.label(RichText::new(caption).small().weak());
        ui.label(RichText::new(value).size(18.0).strong());
    })
    .response
    .on_hover_text(help);
}

/// Adds a time series to a plot. Our series are already bounded (the model decimates them), so
/// they are drawn as lines, never aggregated into bands.
pub fn add_line<'a>(p: &mut egui_plot::PlotUi<'a>, line: egui_plot::Line<'a>) {
    p.line(line.allow_band(false));
}

/// A plot over trace time (x in seconds): ticks in ms or s as the view is wide, y ticks through
/// `y_label` (which gives the unit), and hover labels with both.
pub fn time_axes<'a>(
    plot: egui_plot::Plot<'a>,
    y_label: impl Fn(f64) -> String + Clone + 'a,
) -> egui_plot::Plot<'a> {
    use crate::units;
    use egui_plot::HoverPosition;
    let hover_y = y_label.clone();
    let at = |x: f64| format!("at {}", units::seconds((x.max(0.0) * 1e9) as u64));
    plot.x_axis_formatter(|mark, range| units::time_tick(mark.value, range.end() - range.start()))
        .y_axis_formatter(move |mark, _| y_label(mark.value))
        .label_formatter(move |pos| {
            Some(match pos {
                HoverPosition::NearDataPoint {
                    plot_name,
                    position,
                    ..
                } => format!("{plot_name}\n{}\n{}", hover_y(position.y), at(position.x)),
                HoverPosition::Elsewhere { position } => at(position.x),
            })
        })
}
