//! The Learn panel: the guided tour of the scenario being replayed (steps that pause at the
//! right marker and highlight the structure involved), tours of the other scenarios, the
//! glossary with a live example per term, and the insights computed from the model.

use std::cell::RefCell;

use eframe::egui::{self, RichText};

use crate::insights::{self, Target};
use crate::model::Model;
use crate::source::View;
use crate::teach::{self, Example, GLOSSARY, Place, TOURS, Tour};

/// The tour being taken.
#[derive(Clone, Copy, Debug)]
pub struct TourState {
    /// The tour.
    pub tour: &'static Tour,
    /// The step shown (None: not started).
    pub step: Option<usize>,
}

/// What the user asked the panel for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// Go to step `n` of the current tour.
    Step(usize),
    /// Play until the next step's moment.
    PlayToNext,
    /// Open a scenario's recorded trace with its tour.
    OpenTour(&'static str),
    /// Show an example.
    Show(Place, Example),
    /// Show what an insight points at.
    Insight(Target),
}

/// Draws the panel.
pub fn draw(
    ui: &mut egui::Ui,
    view: &View,
    tour: Option<TourState>,
    story: Option<(&str, &str)>,
    exited: bool,
) -> Option<Action> {
    let mut action = None;
    egui::ScrollArea::vertical()
        .auto_shrink(false)
        .show(ui, |ui| {
            ui.heading("Learn");
            if let Some((title, text)) = story {
                ui.label(RichText::new("Running now").weak());
                ui.label(RichText::new(title).strong().size(15.0));
                ui.label(text);
                ui.separator();
            }
            if let Some(t) = tour {
                tour_steps(ui, t, view, &mut action);
            } else {
                ui.label(
                    RichText::new("Open a scenario's recording to take its guided tour:").weak(),
                );
            }
            ui.separator();
            egui::CollapsingHeader::new("Tours")
                .default_open(tour.is_none())
                .show(ui, |ui| {
                    for t in &TOURS {
                        if ui
                            .button(t.title)
                            .on_hover_text(format!(
                                "Replay the recorded {} scenario with its tour ({} steps)",
                                t.scenario,
                                t.steps.len()
                            ))
                            .clicked()
                        {
                            action = Some(Action::OpenTour(t.scenario));
                        }
                    }
                });
            egui::CollapsingHeader::new("Insights")
                .default_open(true)
                .show(ui, |ui| {
                    let found = cached_insights(ui, view, exited);
                    if found.is_empty() {
                        ui.label(RichText::new("nothing stands out right now").weak());
                    }
                    for i in found.iter() {
                        ui.label(RichText::new(i.kind.title()).strong());
                        ui.label(&i.text);
                        if ui
                            .small_button("Show")
                            .on_hover_text("Open the place in the viewer that shows it")
                            .clicked()
                        {
                            action = Some(Action::Insight(i.target));
                        }
                        ui.add_space(4.0);
                    }
                });
            egui::CollapsingHeader::new("Glossary")
                .default_open(false)
                .show(ui, |ui| {
                    for term in &GLOSSARY {
                        ui.horizontal(|ui| {
                            ui.label(RichText::new(term.name).strong());
                            if ui
                                .small_button("Show me")
                                .on_hover_text("An example in the state shown now")
                                .clicked()
                            {
                                action = Some(Action::Show(term.place, term.example));
                            }
                        });
                        ui.label(term.text);
                        ui.add_space(4.0);
                    }
                });
        });
    action
}

fn tour_steps(ui: &mut egui::Ui, t: TourState, view: &View, action: &mut Option<Action>) {
    ui.label(RichText::new(t.tour.title).strong());
    let n = t.tour.steps.len();
    match t.step {
        None => {
            ui.label(format!(
                "{n} steps. Each one pauses the replay where it happens."
            ));
            if ui.button("Start the tour").clicked() {
                *action = Some(Action::Step(0));
            }
        }
        Some(i) => {
            let step = &t.tour.steps[i];
            ui.label(RichText::new(format!("Step {} of {n}: {}", i + 1, step.title)).size(16.0));
            ui.label(step.text);
            if let Some(note) = step_site_note(i, step.example, &view.model) {
                ui.label(RichText::new(note).italics())
                    .on_hover_text("From the recording's stacks: the Sites tab has them all");
            }
            ui.horizontal(|ui| {
                if i > 0 && ui.button("Previous step").clicked() {
                    *action = Some(Action::Step(i - 1));
                }
                if i + 1 < n {
                    if ui.button("Next step").clicked() {
                        *action = Some(Action::Step(i + 1));
                    }
                    if ui
                        .button("Play to it")
                        .on_hover_text("Replay until the next step's moment, then pause")
                        .clicked()
                    {
                        *action = Some(Action::PlayToNext);
                    }
                } else {
                    ui.label(RichText::new("The end of the tour.").weak());
                }
            });
        }
    }
    ui.add_space(4.0);
    for (k, s) in t.tour.steps.iter().enumerate() {
        let current = t.step == Some(k);
        if ui
            .selectable_label(current, format!("{}. {}", k + 1, s.title))
            .clicked()
        {
            *action = Some(Action::Step(k));
        }
    }
}

/// The marker a step pauses at: the first whose label contains `anchor`.
pub fn step_marker<'a>(
    markers: &'a [crate::model::Marker],
    anchor: &str,
) -> Option<&'a crate::model::Marker> {
    markers.iter().find(|m| m.label.contains(anchor))
}

/// The time of the marker a step pauses at.
pub fn step_time(markers: &[crate::model::Marker], anchor: &str) -> Option<u64> {
    step_marker(markers, anchor).map(|m| m.time)
}

/// Selects `example` in `state`, on its tab.
pub fn show(state: &mut super::UiState, view: &View, place: Place, example: Example) {
    state.tab = match place {
        Place::Overview => super::Tab::Overview,
        Place::Segments => super::Tab::Segments,
        Place::Heaps => super::Tab::Heaps,
        Place::FreeLists => super::Tab::FreeLists,
        Place::Events => super::Tab::Events,
    };
    let sel = teach::resolve(example, &view.model);
    if sel.page.is_some() {
        state.selected_page = sel.page;
    }
    if sel.heap.is_some() {
        state.selected_heap = sel.heap;
    }
}

/// The insights, computed again only when the model has moved on (and, while events stream in,
/// at most four times a second): they scan every page, which a frame should not do each time.
fn cached_insights(
    ui: &egui::Ui,
    view: &View,
    exited: bool,
) -> std::sync::Arc<Vec<insights::Insight>> {
    super::throttle::throttled(ui, "heaplens-insights", exited, view.applied, || {
        insights::insights(&view.model, exited)
    })
}

/// A step's site note for one model state: `((step, events applied), note)`.
type NoteCache = Option<((usize, u64), Option<String>)>;

/// The step's [`teach::site_note`], computed once per step and model state (it reads the live
/// blocks of many pages and resolves symbols).
fn step_site_note(step: usize, example: Example, model: &Model) -> Option<String> {
    thread_local! {
        static NOTE: RefCell<NoteCache> = const { RefCell::new(None) };
    }
    let key = (step, model.totals().events);
    NOTE.with(|n| {
        let mut n = n.borrow_mut();
        if let Some((k, note)) = n.as_ref()
            && *k == key
        {
            return note.clone();
        }
        let note = crate::teach::site_note(example, model);
        *n = Some((key, note.clone()));
        note
    })
}
