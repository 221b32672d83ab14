//! The event log: the latest events in words, newest at the bottom.

use eframe::egui::{self, RichText};

use crate::describe::{self, Namer};
use crate::source::{View, seconds};

/// Draws the log.
pub fn draw(ui: &mut egui::Ui, view: &View) {
    let names = Namer::new(&view.model);
    ui.label(format!("the last {} events", view.recent.len()))
        .on_hover_text(
            "Census records are left out. Names, sizes and owners are as the model has them now.",
        );
    let row_h = ui.text_style_height(&egui::TextStyle::Body) + 2.0;
    let events: Vec<_> = view.recent.iter().collect();
    egui::ScrollArea::vertical()
        .auto_shrink(false)
        .stick_to_bottom(true)
        .show_rows(ui, row_h, events.len(), |ui, rows| {
            for &&(index, heap, ev) in &events[rows] {
                ui.horizontal(|ui| {
                    ui.label(
                        RichText::new(format!("{index:>10}  {:>10}", seconds(ev.time)))
                            .monospace()
                            .weak(),
                    );
                    ui.label(describe::describe(&view.model, &names, heap, &ev));
                });
            }
        });
}
