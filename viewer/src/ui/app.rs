//! The app: a source, the UI state, and the frame layout. Panels draw from the [`View`] and
//! return what the user asked for; the app applies it after drawing.

use eframe::egui::{self, Color32, RichText};

use super::learn::{self, TourState};
use super::{
    event_log, heaps, inspector, occupancy, overview, segment_map, sites, style, timeline,
};
use crate::model::Metrics;
use crate::source::{Live, Replay, Status, View};

/// What the viewer shows.
pub enum Source {
    /// A trace file.
    Replay(Box<Replay>),
    /// Events arriving now.
    Live(Live),
}

/// The tabs of the central area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    /// Time series.
    Overview,
    /// Segments and their pages.
    Segments,
    /// Per-thread heaps.
    Heaps,
    /// Free-list occupancy by size class.
    FreeLists,
    /// The event log.
    Events,
    /// Allocation sites: which code allocated the live blocks.
    Sites,
}

impl Tab {
    const ALL: [(Self, &'static str, &'static str); 6] = [
        (
            Self::Overview,
            "Overview",
            "Memory, fragmentation, rates and threads over time",
        ),
        (
            Self::Segments,
            "Segment map",
            "Every segment with its pages as tiles; click a page to inspect it",
        ),
        (
            Self::Heaps,
            "Heaps",
            "One panel per thread's heap: its pages by size class",
        ),
        (
            Self::FreeLists,
            "Free lists",
            "Per size class: blocks in use and on each of the three free lists",
        ),
        (
            Self::Events,
            "Events",
            "The events around the replay position (live: the latest), in words; filter them, \
             follow a block, click one to see its page",
        ),
        (
            Self::Sites,
            "Sites",
            "Which code allocated the live blocks: top allocation sites and a flame graph",
        ),
    ];
}

/// UI state (kept apart from the model).
#[derive(Debug)]
pub struct UiState {
    /// The open tab.
    pub tab: Tab,
    /// The page the inspector shows (its start address).
    pub selected_page: Option<u64>,
    /// The heap the heaps tab scrolls to.
    pub selected_heap: Option<u32>,
    /// Segment map tile width in points (zoom).
    pub tile: f32,
    /// The last error to show (a damaged trace, a failed seek).
    pub error: Option<String>,
    /// Whether the Learn panel is open.
    pub learn_open: bool,
    /// The Events tab: its filters and the history it holds.
    pub events: event_log::EventLog,
    /// The Sites tab's sort column and symbols.
    pub sites: sites::SitesState,
}

impl Default for UiState {
    fn default() -> Self {
        Self {
            tab: Tab::Overview,
            selected_page: None,
            selected_heap: None,
            tile: 12.0,
            error: None,
            learn_open: false,
            events: event_log::EventLog::default(),
            sites: sites::SitesState::default(),
        }
    }
}

/// The heaplens viewer.
pub struct App {
    source: Source,
    /// What the title bar and header say is shown ("trace.hltrace", "python3 script.py").
    what: String,
    /// The UI state.
    pub state: UiState,
    /// The guided tour being taken.
    pub tour: Option<TourState>,
    /// Stories of workloads that announce themselves with a marker of their name (the demo):
    /// `(name, title, story)`.
    stories: Vec<(String, String, String)>,
}

impl App {
    /// A viewer on `source`; `what` names it in the header.
    pub fn new(source: Source, what: impl Into<String>) -> Self {
        let mut state = UiState::default();
        if let Source::Replay(r) = &source {
            state.error = r.damage().map(|d| format!("damaged trace: {d}"));
        }
        Self {
            source,
            what: what.into(),
            state,
            tour: None,
            stories: Vec::new(),
        }
    }

    /// Shows the story of the workload running now: the last marker naming one of `stories`
    /// `(name, title, story)` says which. Opens the Learn panel, where it is shown.
    pub fn with_stories(mut self, stories: Vec<(String, String, String)>) -> Self {
        self.stories = stories;
        self.state.learn_open = true;
        self
    }

    /// Offers the tour of `scenario` (when the source is its recording) and opens the Learn
    /// panel on it.
    pub fn with_tour(mut self, scenario: &str) -> Self {
        self.tour = crate::teach::tour(scenario).map(|tour| TourState { tour, step: None });
        self.state.learn_open = true;
        self
    }

    /// The window title.
    pub fn title(&self) -> String {
        format!("heaplens — {}", self.what)
    }

    /// The source (tests read the model through it).
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The source, to drive it (tests, the command line).
    pub fn source_mut(&mut self) -> &mut Source {
        &mut self.source
    }

    /// Draws one frame into `ui` (the whole window).
    pub fn draw(&mut self, ui: &mut egui::Ui) {
        // egui's frame time: real in a window, fixed in tests.
        let dt = f64::from(ui.input(|i| i.stable_dt)).clamp(0.0, 0.25);
        self.state.sites.symbols.begin_frame(SYMBOL_BUDGET);
        let mut action = None;
        let learn_action;
        match &mut self.source {
            Source::Replay(r) => {
                let next_step = next_step_time(r, self.tour);
                let was_playing = r.is_playing();
                if let Err(e) = r.tick(dt, next_step) {
                    self.state.error = Some(e.to_string());
                }
                if was_playing {
                    pause_at_step(r, &mut self.tour, &mut self.state);
                }
                if r.is_playing() {
                    ui.ctx().request_repaint();
                }
                if self.state.tab == Tab::Events
                    && let Err(e) = event_log::refresh(&mut self.state.events, r)
                {
                    self.state.error = Some(e.to_string());
                }
                let (view, full) = (r.view(), r.full_metrics());
                egui::Panel::bottom("timeline").show(ui, |ui| {
                    action = timeline::draw(ui, r);
                });
                let exited = r.exit().is_some() && r.position() >= r.total_events();
                let story = now_running(&self.stories, view);
                learn_action = draw_frame(
                    ui,
                    view,
                    Some((full, r.position())),
                    &self.what,
                    &mut self.state,
                    (self.tour, story),
                    exited,
                );
            }
            Source::Live(l) => {
                ui.ctx()
                    .request_repaint_after(std::time::Duration::from_millis(50));
                let view = l.view();
                let exited = matches!(view.status, crate::source::Status::Exited(_));
                let story = now_running(&self.stories, &view);
                learn_action = draw_frame(
                    ui,
                    &view,
                    None,
                    &self.what,
                    &mut self.state,
                    (self.tour, story),
                    exited,
                );
            }
        }
        if let (Some(a), Source::Replay(r)) = (action, &mut self.source)
            && let Err(e) = timeline::apply(r, a)
        {
            self.state.error = Some(e.to_string());
        }
        if let Some(a) = learn_action {
            self.learn(a);
        }
        if self.state.sites.symbols.unresolved() > 0 {
            // Names still opening or left for the next frame: show them as they come.
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_millis(15));
        }
    }

    /// Carries out a Learn panel action.
    pub fn learn(&mut self, a: learn::Action) {
        match a {
            learn::Action::OpenTour(scenario) => {
                match crate::teach::trace_file(scenario).and_then(|p| {
                    Replay::open(&p).map_err(|e| std::io::Error::other(e.to_string()))
                }) {
                    Ok(r) => {
                        self.source = Source::Replay(Box::new(r));
                        self.what = format!("tour: {scenario}");
                        self.state.selected_page = None;
                        self.tour =
                            crate::teach::tour(scenario).map(|tour| TourState { tour, step: None });
                        self.learn(learn::Action::Step(0));
                    }
                    Err(e) => self.state.error = Some(e.to_string()),
                }
            }
            learn::Action::Step(i) => {
                let (Some(t), Source::Replay(r)) = (self.tour.as_mut(), &mut self.source) else {
                    return;
                };
                let Some(step) = t.tour.steps.get(i) else {
                    return;
                };
                t.step = Some(i);
                let at = learn::step_marker(r.markers(), step.marker).cloned();
                let moved = r.set_playing(false).and_then(|()| match at {
                    Some(m) => r.seek_marker(&m),
                    None => Ok(()),
                });
                if let Err(e) = moved {
                    self.state.error = Some(e.to_string());
                }
                learn::show(&mut self.state, r.view(), step.place, step.example);
            }
            learn::Action::PlayToNext => {
                if let Source::Replay(r) = &mut self.source
                    && let Err(e) = r.set_playing(true)
                {
                    self.state.error = Some(e.to_string());
                }
            }
            learn::Action::Show(place, example) => {
                let state = &mut self.state;
                match &self.source {
                    Source::Replay(r) => learn::show(state, r.view(), place, example),
                    Source::Live(l) => learn::show(state, &l.view(), place, example),
                }
            }
            learn::Action::Insight(target) => {
                use crate::insights::Target;
                match target {
                    Target::Page(p) => {
                        self.state.tab = Tab::Segments;
                        self.state.selected_page = Some(p);
                    }
                    Target::Heap(h) => {
                        self.state.tab = Tab::Heaps;
                        self.state.selected_heap = Some(h);
                    }
                    Target::FreeLists => self.state.tab = Tab::FreeLists,
                    Target::Overview => self.state.tab = Tab::Overview,
                }
            }
        }
    }
}

/// The time a frame may spend resolving new symbols (the rest waits for the next frame), so a
/// tab full of new sites never takes a frame past its 16 ms.
const SYMBOL_BUDGET: std::time::Duration = std::time::Duration::from_millis(4);

impl eframe::App for App {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.draw(ui);
    }
}

/// The story of the workload the last marker announced.
fn now_running<'a>(
    stories: &'a [(String, String, String)],
    view: &View,
) -> Option<(&'a str, &'a str)> {
    let markers = view.model.metrics().markers();
    markers.iter().rev().find_map(|m| {
        stories
            .iter()
            .find(|(name, _, _)| *name == m.label)
            .map(|(_, title, story)| (title.as_str(), story.as_str()))
    })
}

/// The time of the tour's next step, where play stops.
fn next_step_time(r: &Replay, tour: Option<TourState>) -> Option<u64> {
    let t = tour?;
    let step = t.tour.steps.get(t.step.map_or(0, |i| i + 1))?;
    learn::step_time(r.markers(), step.marker)
}

/// When play reached the tour's next step, pauses there and shows that step.
fn pause_at_step(r: &mut Replay, tour: &mut Option<TourState>, state: &mut UiState) {
    let Some(t) = tour.as_mut() else {
        return;
    };
    let next = t.step.map_or(0, |i| i + 1);
    let Some(step) = t.tour.steps.get(next) else {
        return;
    };
    let Some(m) = learn::step_marker(r.markers(), step.marker).cloned() else {
        return;
    };
    if r.time() >= m.time {
        let paused = r.set_playing(false).and_then(|()| r.seek_marker(&m));
        if let Err(e) = paused {
            state.error = Some(e.to_string());
        }
        t.step = Some(next);
        learn::show(state, r.view(), step.place, step.example);
    }
}

fn draw_frame(
    ui: &mut egui::Ui,
    view: &View,
    replay: Option<(&Metrics, u64)>,
    what: &str,
    state: &mut UiState,
    (tour, story): (Option<TourState>, Option<(&str, &str)>),
    exited: bool,
) -> Option<learn::Action> {
    let mut action = None;
    egui::Panel::top("header").show(ui, |ui| {
        ui.horizontal(|ui| {
            ui.label(RichText::new("heaplens").size(20.0).strong());
            ui.label(RichText::new(what).weak())
                .on_hover_text("What is shown: a trace file, or the program being watched");
            ui.separator();
            for (tab, name, help) in Tab::ALL {
                ui.selectable_value(&mut state.tab, tab, name)
                    .on_hover_text(help);
            }
            ui.separator();
            ui.toggle_value(&mut state.learn_open, "Learn")
                .on_hover_text(
                    "Guided tours of the scenarios, the glossary, and insights found in this heap",
                );
        });
    });
    egui::Panel::bottom("status").show(ui, |ui| status_line(ui, view, state));
    if state.learn_open {
        egui::Panel::left("learn")
            .default_size(330.0)
            .min_size(260.0)
            .show(ui, |ui| {
                action = learn::draw(ui, view, tour, story, exited);
            });
    }
    if let Some(addr) = state.selected_page {
        egui::Panel::right("inspector")
            .default_size(340.0)
            .min_size(300.0)
            .show(ui, |ui| {
                if inspector::draw(ui, &view.model, addr, &mut state.sites) {
                    state.selected_page = None;
                }
            });
    }
    let full = replay.map(|(m, _)| m);
    egui::CentralPanel::default().show(ui, |ui| match state.tab {
        Tab::Overview => overview::draw(ui, view, full),
        Tab::Segments => segment_map::draw(ui, &view.model, state),
        Tab::Heaps => heaps::draw(ui, &view.model, state),
        Tab::FreeLists => occupancy::draw(ui, view, full),
        Tab::Events => event_log::draw(
            ui,
            view,
            &mut state.events,
            &mut state.selected_page,
            (
                replay.map(|(_, p)| p),
                full.unwrap_or_else(|| view.model.metrics()).markers(),
            ),
        ),
        Tab::Sites => sites::draw(ui, &view.model, &mut state.sites, &mut state.selected_page),
    });
    action
}

/// The longest source description the status line shows whole (hover shows all of it).
const STATUS_CHARS: usize = 60;

/// Lag from which the status line shows it in colour: the view is visibly behind.
const FAR_BEHIND_NS: u64 = 100_000_000;

/// The status line's lag: "12 ms behind", with the batches queued when there are any; `None`
/// when the source says nothing of it (a replay, a stream without a `ClockSync`, an ended one).
pub fn lag_text(view: &View) -> Option<String> {
    if !matches!(view.status, Status::Connected { .. }) {
        return None;
    }
    let behind = view
        .behind_ns
        .map(|ns| format!("{} ms behind", ns / 1_000_000));
    let queued = (view.backlog > 0).then(|| format!("{} batches queued", view.backlog));
    match (behind, queued) {
        (Some(b), Some(q)) => Some(format!("{b}, {q}")),
        (b, q) => b.or(q),
    }
}

/// What the status line says of lost events: how many, and where they were lost.
fn lost_text(lost: u64, reasons: u16) -> String {
    use heaplens_alloc::event::drop_reason;
    let mut where_: Vec<&str> = Vec::new();
    if reasons & drop_reason::SUBSCRIBER != 0 {
        where_.push("the view fell behind");
    }
    if reasons & drop_reason::CONSUMER != 0 {
        where_.push("the collector fell behind");
    }
    if reasons & (drop_reason::NESTED | drop_reason::NO_BUFFER) != 0 {
        where_.push("the program's hook had no room");
    }
    if where_.is_empty() {
        format!("{lost} events lost")
    } else {
        format!("{lost} events lost ({})", where_.join(", "))
    }
}

fn status_line(ui: &mut egui::Ui, view: &View, state: &mut UiState) {
    ui.horizontal(|ui| {
        let color = match view.status {
            Status::Connected { .. } => Color32::from_rgb(0x4c, 0xaf, 0x6a),
            Status::Waiting => Color32::from_rgb(0xe0, 0xc0, 0x40),
            Status::Exited(_) | Status::Ended(_) => Color32::from_rgb(0xe0, 0x8a, 0x3c),
            Status::Replaying { .. } => Color32::from_rgb(0x4f, 0x9d, 0xe0),
        };
        let (dot, _) = ui.allocate_exact_size(egui::vec2(10.0, 10.0), egui::Sense::hover());
        ui.painter().circle_filled(dot.center(), 5.0, color);
        // A long command line would push the rest of the line under the right-hand figure.
        let status = view.status.describe();
        let shown = if status.chars().count() > STATUS_CHARS {
            let cut: String = status.chars().take(STATUS_CHARS - 1).collect();
            format!("{cut}…")
        } else {
            status.clone()
        };
        ui.label(shown).on_hover_text(format!(
            "{status}\nWhat is shown now: connected, waiting, exited, or a replay position"
        ));
        ui.separator();
        ui.label(format!("{} events", view.applied))
            .on_hover_text("Events applied to the model so far");
        if let Some(text) = lag_text(view) {
            ui.separator();
            let behind = view.behind_ns.is_some_and(|ns| ns >= FAR_BEHIND_NS) || view.backlog > 0;
            let text = if behind {
                RichText::new(text).color(Color32::from_rgb(0xe0, 0x8a, 0x3c))
            } else {
                RichText::new(text)
            };
            ui.label(text).on_hover_text(
                "How far the view is behind the program: the program's clock at the last event \
                 shown, against the clock now when the model took it; and the batches received \
                 but not applied yet. While it is behind, the model catches up; when the viewer \
                 cannot keep up, batches are dropped for the view only and counted as lost",
            );
        }
        let totals = view.model.totals();
        if totals.dropped > 0 {
            ui.separator();
            let why: Vec<_> =
                heaplens_alloc::event::drop_reason::names(totals.drop_reasons).collect();
            ui.label(
                RichText::new(lost_text(totals.dropped, totals.drop_reasons))
                    .color(Color32::from_rgb(0xe0, 0x55, 0x55)),
            )
            .on_hover_text(format!(
                "The program produced events faster than they were taken ({}). Each heap's \
                 pages are set again from its next census part, the others from the next whole \
                 census; until then they are unsure, and which blocks are live in them is not \
                 known",
                why.join(", ")
            ));
            let unsure = view.model.unsure_pages();
            if unsure > 0 {
                ui.label(format!("{unsure} pages unsure")).on_hover_text(
                    "Pages whose counts may be wrong since events were lost, until their heap \
                     reports its next census part",
                );
            }
        }
        if let Some(c) = view.model.last_census_check() {
            ui.separator();
            let heaps = match c.heap_parts {
                1 => " (1 heap)".to_owned(),
                n => format!(" ({n} heaps)"),
            };
            let heaps = if c.by_heap { heaps.as_str() } else { "" };
            let text = if !c.compared() {
                format!("census {}: waiting for the heaps", c.number)
            } else if c.resynced && c.adopted_pages == 0 {
                // After lost events: the differences found, then the model set from it.
                let found = match c.mismatches {
                    0 => String::new(),
                    n => format!("{n} differences after lost events; "),
                };
                format!("census {}: {found}model reset from it{heaps}", c.number)
            } else if c.mismatches == 0 {
                format!("census {} agrees{heaps}", c.number)
            } else {
                format!("census {}: {} differences{heaps}", c.number, c.mismatches)
            };
            let mut help = "The allocator's periodic snapshot of every page, compared with the \
                model rebuilt from events. While the program runs, each thread's heap reports \
                its own pages at its next allocation, at that point of its own events"
                .to_owned();
            if c.adopted_pages > 0 {
                help.push_str(&format!(
                    "\nThe first census: {} pages existed before recording started; the model \
                     took them over",
                    c.adopted_pages
                ));
            }
            for m in &c.first {
                help.push_str(&format!("\n{m}"));
            }
            ui.label(text).on_hover_text(help);
        }
        if let Some(e) = &state.error {
            ui.separator();
            let r = ui.label(RichText::new(e).color(Color32::from_rgb(0xe0, 0x55, 0x55)));
            if r.on_hover_text("Click to dismiss").clicked() {
                state.error = None;
            }
        }
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            ui.label(
                RichText::new(format!(
                    "committed {}",
                    style::bytes(view.model.current().committed_bytes)
                ))
                .weak(),
            )
            .on_hover_text("Memory the allocator holds from the OS now");
        });
    });
}
