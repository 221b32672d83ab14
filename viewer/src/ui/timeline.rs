//! The replay timeline: scrub, play/pause, speed, step to the next or previous event, jump to
//! the next or previous marker. Seeking goes through the trace's keyframes.

use eframe::egui::{self, RichText};

use super::{markers, style};
use crate::source::{Replay, seconds};
use crate::trace::TraceError;

/// What the user asked the timeline for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// Play or pause.
    Play(bool),
    /// Move to a time (ns).
    Seek(u64),
    /// Move by this many events.
    Step(i64),
    /// Jump to the next (true) or previous marker.
    Marker(bool),
    /// Jump to this marker (its index among the replay's markers), at its own event.
    GoToMarker(usize),
    /// Change the play speed.
    Speed(f64),
}

const SPEEDS: [f64; 7] = [0.01, 0.1, 0.25, 1.0, 4.0, 10.0, 100.0];

/// Draws the timeline; returns what the user asked for.
pub fn draw(ui: &mut egui::Ui, r: &Replay) -> Option<Action> {
    let mut action = None;
    ui.add_space(4.0);
    ui.horizontal(|ui| {
        let playing = r.is_playing();
        if ui
            .button(if playing { "Pause" } else { "Play" })
            .on_hover_text("Play the recording at the chosen speed (space)")
            .clicked()
            || ui.input(|i| i.key_pressed(egui::Key::Space))
        {
            action = Some(Action::Play(!playing));
        }
        if ui
            .button("|< Marker")
            .on_hover_text("Jump to the previous user marker")
            .clicked()
        {
            action = Some(Action::Marker(false));
        }
        if ui
            .button("< Event")
            .on_hover_text("Step back one event (left arrow)")
            .clicked()
            || ui.input(|i| i.key_pressed(egui::Key::ArrowLeft))
        {
            action = Some(Action::Step(-1));
        }
        if ui
            .button("Event >")
            .on_hover_text("Step forward one event (right arrow)")
            .clicked()
            || ui.input(|i| i.key_pressed(egui::Key::ArrowRight))
        {
            action = Some(Action::Step(1));
        }
        if ui
            .button("Marker >|")
            .on_hover_text("Jump to the next user marker")
            .clicked()
        {
            action = Some(Action::Marker(true));
        }
        ui.separator();
        let mut speed = r.speed();
        egui::ComboBox::from_label("speed")
            .selected_text(format!("{speed}×"))
            .show_ui(ui, |ui| {
                for s in SPEEDS {
                    ui.selectable_value(&mut speed, s, format!("{s}×"));
                }
            })
            .response
            .on_hover_text("Recording seconds per second of replay");
        if speed != r.speed() {
            action = Some(Action::Speed(speed));
        }
        ui.separator();
        ui.label(
            RichText::new(format!(
                "{} / {} · event {} of {}",
                seconds(r.time()),
                seconds(r.duration()),
                r.position(),
                r.total_events()
            ))
            .monospace(),
        )
        .on_hover_text("Replay position: time since recording started, and event index");
        if let Some(exit) = r.exit() {
            ui.separator();
            ui.label(crate::source::Status::Exited(exit).describe())
                .on_hover_text("How the recorded program ended");
        }
    });
    let duration = r.duration().max(1);
    let before = r.time().min(duration) as f64 / 1e9;
    let mut t = before;
    // Room beside the slider for its value box ("12.34567 s") and its label.
    ui.spacing_mut().slider_width = (ui.available_width() - 150.0).max(200.0);
    let resp = ui
        .add(
            egui::Slider::new(&mut t, 0.0..=duration as f64 / 1e9)
                .text("time")
                .suffix(" s")
                .smart_aim(false),
        )
        .on_hover_text("Drag to scrub through the recording");
    if resp.changed() && (t - before).abs() > 1e-9 {
        action = Some(Action::Seek((t * 1e9) as u64));
    }
    if let Some(i) = markers_strip(ui, r, duration) {
        action = Some(Action::GoToMarker(i));
    }
    action
}

/// The markers under the slider, as ticks with labels in as many rows as they need; the
/// marker whose label was clicked.
fn markers_strip(ui: &mut egui::Ui, r: &Replay, duration: u64) -> Option<usize> {
    let markers = r.markers();
    if markers.is_empty() {
        return None;
    }
    let width = ui.spacing().slider_width;
    let left = ui.cursor().left();
    let x_of =
        move |m: &crate::model::Marker| Some(left + width * (m.time as f32 / duration as f32));
    let rows = markers::rows_needed(ui, left..=left + width, markers, &x_of, markers::ROWS);
    let (rect, resp) = ui.allocate_exact_size(
        egui::vec2(width, 6.0 + markers::row_height() * rows as f32),
        egui::Sense::hover(),
    );
    // Every marker a tick at the top; its label (below, in its row) carries its own bar.
    let p = ui.painter();
    for m in markers {
        let x = x_of(m).unwrap_or(rect.left());
        p.line_segment(
            [egui::pos2(x, rect.top()), egui::pos2(x, rect.top() + 4.0)],
            egui::Stroke::new(1.5, style::MARKER),
        );
    }
    let list: Vec<String> = markers
        .iter()
        .map(|m| format!("{}  {}", seconds(m.time), m.label))
        .collect();
    resp.on_hover_text(format!(
        "User markers (heaplens_alloc::hook::mark, hl_mark); click a label to go to it:\n{}",
        list.join("\n")
    ));
    markers::draw(
        ui,
        rect.translate(egui::vec2(0.0, 4.0)),
        markers,
        &x_of,
        markers::ROWS,
    )
}

/// Carries out `a`.
pub fn apply(r: &mut Replay, a: Action) -> Result<(), TraceError> {
    match a {
        Action::Play(on) => r.set_playing(on),
        Action::Seek(t) => {
            r.set_playing(false)?;
            r.seek_time(t)
        }
        Action::Step(n) => {
            r.set_playing(false)?;
            r.step(n)
        }
        Action::Marker(fwd) => {
            r.set_playing(false)?;
            r.jump_marker(fwd).map(|_| ())
        }
        Action::GoToMarker(i) => {
            r.set_playing(false)?;
            match r.markers().get(i).cloned() {
                Some(m) => r.seek_marker(&m),
                None => Ok(()),
            }
        }
        Action::Speed(s) => {
            r.set_speed(s);
            Ok(())
        }
    }
}
