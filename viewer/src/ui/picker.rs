//! The process picker: a recording of many processes (`heaplens record --follow-fork`) opens on
//! the list of its processes, with pid, parent, command and event count; picking one replays its
//! trace in the usual viewer, and "All processes" goes back to the list.

use std::path::PathBuf;

use eframe::egui::{self, RichText};

use super::{App, Source};
use crate::source::Replay;

/// One process of a recording, as the picker lists it.
#[derive(Clone, Debug)]
pub struct ProcessRow {
    /// Its pid.
    pub pid: u32,
    /// Its parent's pid, when known.
    pub parent_pid: Option<u64>,
    /// Its command line.
    pub command: String,
    /// Events in its trace.
    pub events: u64,
    /// Its trace file.
    pub path: PathBuf,
}

/// The picker, and the viewer of the process picked.
pub struct Picker {
    what: String,
    rows: Vec<ProcessRow>,
    /// The row open in the viewer.
    open: Option<(usize, App)>,
    error: Option<String>,
}

impl Picker {
    /// A picker over `rows` (`what`: the recording, for the title).
    pub fn new(what: impl Into<String>, rows: Vec<ProcessRow>) -> Self {
        Self {
            what: what.into(),
            rows,
            open: None,
            error: None,
        }
    }

    /// The window title.
    pub fn title(&self) -> String {
        format!("heaplens — {} ({} processes)", self.what, self.rows.len())
    }

    /// The processes listed.
    pub fn rows(&self) -> &[ProcessRow] {
        &self.rows
    }

    /// The viewer of the process picked, and its pid.
    pub fn opened(&self) -> Option<(u32, &App)> {
        self.open
            .as_ref()
            .and_then(|(i, app)| self.rows.get(*i).map(|r| (r.pid, app)))
    }

    /// Opens row `i` in the viewer (an error is shown in the list).
    pub fn open(&mut self, i: usize) {
        let Some(row) = self.rows.get(i) else {
            return;
        };
        match Replay::open(&row.path) {
            Ok(replay) => {
                // Keyframes made on opening go into the file for the next opening; a file that
                // cannot take them still opens, only not at once.
                let _ = replay.store_keyframes(&row.path);
                let what = format!("pid {} · {}", row.pid, row.command);
                self.open = Some((i, App::new(Source::Replay(Box::new(replay)), what)));
                self.error = None;
            }
            Err(e) => self.error = Some(format!("{}: {e}", row.path.display())),
        }
    }

    /// Draws one frame into `ui` (the whole window).
    pub fn draw(&mut self, ui: &mut egui::Ui) {
        if let Some((i, app)) = &mut self.open {
            let mut back = false;
            egui::Panel::top("process").show(ui, |ui| {
                ui.horizontal(|ui| {
                    back = ui
                        .button("All processes")
                        .on_hover_text("Back to the list of the recording's processes")
                        .clicked();
                    if let Some(row) = self.rows.get(*i) {
                        ui.label(format!("pid {} · {}", row.pid, row.command));
                    }
                });
            });
            app.draw(ui);
            if back {
                self.open = None;
            }
            return;
        }
        let mut picked = None;
        egui::CentralPanel::default().show(ui, |ui| {
            ui.label(RichText::new("heaplens").size(20.0).strong());
            ui.label(format!(
                "{} holds {} processes. Pick one to replay it.",
                self.what,
                self.rows.len()
            ));
            if let Some(e) = &self.error {
                ui.colored_label(egui::Color32::LIGHT_RED, e);
            }
            ui.separator();
            egui::ScrollArea::vertical().show(ui, |ui| {
                egui::Grid::new("processes")
                    .striped(true)
                    .num_columns(4)
                    .show(ui, |ui| {
                        for h in ["pid", "parent", "events", "command"] {
                            ui.label(RichText::new(h).strong());
                        }
                        ui.end_row();
                        for (i, row) in self.rows.iter().enumerate() {
                            if ui
                                .button(format!("pid {}", row.pid))
                                .on_hover_text("Replay this process's trace")
                                .clicked()
                            {
                                picked = Some(i);
                            }
                            ui.label(row.parent_pid.map_or_else(|| "?".into(), |p| p.to_string()));
                            ui.label(row.events.to_string());
                            ui.add(egui::Label::new(&row.command).truncate())
                                .on_hover_text(&row.command);
                            ui.end_row();
                        }
                    });
            });
        });
        if let Some(i) = picked {
            self.open(i);
        }
    }
}

impl eframe::App for Picker {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.draw(ui);
    }
}
