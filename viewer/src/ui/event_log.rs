//! The Events tab: the history around the replay position (or the latest events, live) in words,
//! filtered by thread, kind, size class, page and address, scrolled virtually (only the rows in
//! view are described). A search for an address lists the block's life story: who allocated it,
//! who freed it onto which list, the collects that moved it between lists while it was free.
//! Clicking an event selects its page (the segment map and the inspector follow).
//!
//! In replay the history is read from the trace around the position ([`WINDOW`] events each
//! side; the life story from the whole trace), never kept whole in memory; live it is the ring
//! of the last [`crate::source::recent::RECENT_EVENTS`] events.

use std::ops::Range;

use eframe::egui::{self, Color32, RichText};
use heaplens_alloc::event::{Event, EventKind, flags};
use heaplens_alloc::schema;

use crate::describe::{self, Namer};
use crate::model::{Marker, Model};
use crate::source::{Recent, Replay, View};
use crate::trace::TraceError;
use crate::units;

/// Events read each side of the replay position.
pub const WINDOW: u64 = 100_000;

/// Kinds of events, as the kind filter offers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindGroup {
    /// `malloc`, `realloc`.
    Allocations,
    /// `free`.
    Frees,
    /// Page set-up, extension, collects, full/unfull, retire, free, reclaim.
    Pages,
    /// Segments mapped, released, abandoned, reclaimed.
    Segments,
    /// Threads starting, exiting, named.
    Threads,
    /// Memory committed or purged.
    Os,
    /// User markers.
    Markers,
}

impl KindGroup {
    const ALL: [Self; 7] = [
        Self::Allocations,
        Self::Frees,
        Self::Pages,
        Self::Segments,
        Self::Threads,
        Self::Os,
        Self::Markers,
    ];

    /// Its name in the filter.
    pub fn name(self) -> &'static str {
        match self {
            Self::Allocations => "allocations",
            Self::Frees => "frees",
            Self::Pages => "pages",
            Self::Segments => "segments",
            Self::Threads => "threads",
            Self::Os => "OS commit and purge",
            Self::Markers => "markers",
        }
    }

    fn of(kind: EventKind) -> Option<Self> {
        use EventKind as K;
        Some(match kind {
            K::Alloc | K::Resize | K::Realloc => Self::Allocations,
            K::Free => Self::Frees,
            K::PageInit
            | K::PageExtend
            | K::PageCollect
            | K::PageFull
            | K::PageUnfull
            | K::PageRetire
            | K::PageFree
            | K::PageReclaim => Self::Pages,
            K::SegmentAlloc | K::SegmentFree | K::SegmentAbandon | K::SegmentReclaim => {
                Self::Segments
            }
            K::ThreadStart | K::ThreadExit | K::ThreadName => Self::Threads,
            K::OsCommit | K::OsPurge => Self::Os,
            K::Mark => Self::Markers,
            _ => return None,
        })
    }
}

/// What the log shows: every field set narrows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Events of this heap (thread) only.
    pub thread: Option<u32>,
    /// Events of this kind only.
    pub kind: Option<KindGroup>,
    /// Events about blocks or pages of this size class (bin) only.
    pub bin: Option<u16>,
    /// Events about this page (its start) only.
    pub page: Option<u64>,
    /// The life story of the block at this address instead of the history.
    pub address: Option<u64>,
}

/// The event log's state, kept in the UI state.
#[derive(Debug, Default)]
pub struct EventLog {
    /// The filters.
    pub filter: Filter,
    /// The address search box's text.
    pub address_text: String,
    /// The event clicked last (its trace position).
    pub selected: Option<u64>,
    /// Replay: the events read around the position.
    window: Option<(Range<u64>, Vec<Entry>)>,
    /// Replay: the life story of the searched address, from the whole trace.
    story: Option<(u64, Vec<Entry>)>,
    /// Rows shown (indices into the source), and what they were computed for.
    rows: Vec<usize>,
    rows_for: Option<(u64, Filter)>,
    /// The position the view was last scrolled to, and the rows it was scrolled in.
    scrolled_to: Option<(u64, u64, Filter)>,
    /// Frames left to bring the position into view (a new scroll area learns its content's
    /// height only once drawn, and clamps an offset asked for before).
    scroll_tries: u8,
}

/// One event of the history: trace position, heap, event.
pub type Entry = (u64, u32, Event);

impl EventLog {
    /// The rows shown now: `(trace position, heap, event)` (tests read what the log shows).
    pub fn shown<'a>(&'a self, view: &'a View) -> impl Iterator<Item = &'a Entry> + 'a {
        let source = source(&self.filter, &self.window, &self.story, view);
        self.rows.iter().filter_map(move |&i| source.get(i))
    }
}

/// Where the rows come from: the life story of the searched address, the window read around
/// the replay position, or the live ring (which also serves a live search).
fn source<'a>(
    filter: &Filter,
    window: &'a Option<(Range<u64>, Vec<Entry>)>,
    story: &'a Option<(u64, Vec<Entry>)>,
    view: &'a View,
) -> Source<'a> {
    if let (Some(a), Some((at, story))) = (filter.address, story)
        && a == *at
    {
        return Source::Slice(story);
    }
    match window {
        Some((_, events)) if filter.address.is_none() => Source::Slice(events),
        _ => Source::Ring(&view.recent),
    }
}

/// Where the rows come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    Slice(&'a [Entry]),
    Ring(&'a Recent),
}

impl<'a> Source<'a> {
    fn len(self) -> usize {
        match self {
            Self::Slice(s) => s.len(),
            Self::Ring(r) => r.len(),
        }
    }

    fn get(self, i: usize) -> Option<&'a Entry> {
        match self {
            Self::Slice(s) => s.get(i),
            Self::Ring(r) => r.get(i),
        }
    }

    /// Changes whenever the contents change.
    fn generation(self) -> u64 {
        match self {
            Self::Slice(s) => s.first().map_or(0, |e| e.0) ^ (s.len() as u64) << 40,
            Self::Ring(r) => r.next_index(),
        }
    }
}

/// Replay: reads the history around the position, and the searched block's life story, from
/// the trace when what is held does not cover them.
pub fn refresh(log: &mut EventLog, r: &mut Replay) -> Result<(), TraceError> {
    let pos = r.position();
    let total = r.total_events();
    let near = pos.saturating_sub(WINDOW / 2)..pos.saturating_add(WINDOW / 2).min(total);
    let covered = log
        .window
        .as_ref()
        .is_some_and(|(w, _)| w.start <= near.start && near.end <= w.end);
    if !covered {
        let range = pos.saturating_sub(WINDOW)..pos.saturating_add(WINDOW).min(total);
        let events = r.read_events(range.clone())?;
        log.window = Some((
            range,
            events.into_iter().filter(|e| !is_census(&e.2)).collect(),
        ));
    }
    if let Some(a) = log.filter.address
        && log.story.as_ref().is_none_or(|(at, _)| *at != a)
    {
        let page = r.view().model.page_at(a).map(|p| p.page.start);
        let found = r.find_events(|_, e| touches(e, a, page))?;
        log.story = Some((a, life_story(found, a)));
    }
    Ok(())
}

fn is_census(e: &Event) -> bool {
    matches!(
        e.event_kind(),
        Some(
            EventKind::CensusBegin
                | EventKind::CensusPage
                | EventKind::CensusPage2
                | EventKind::CensusSegment
                | EventKind::CensusEnd
        )
    )
}

/// Whether `e` is about the block at `a` or, when given, the page holding it.
fn touches(e: &Event, a: u64, page: Option<u64>) -> bool {
    match e.event_kind() {
        Some(EventKind::Alloc | EventKind::Free | EventKind::Resize) => e.addr == a,
        Some(EventKind::Realloc) => {
            let r = schema::Realloc::from_event(e);
            r.ptr == a || r.old == a
        }
        Some(k) if KindGroup::of(k) == Some(KindGroup::Pages) => Some(e.addr) == page,
        _ => false,
    }
}

/// The events of the block at `a` (from [`touches`]), with the page's events kept only while
/// the block is free: how it moved between the free lists and what became of its page.
fn life_story(found: Vec<Entry>, a: u64) -> Vec<Entry> {
    let mut free = false;
    let mut story = Vec::new();
    for entry in found {
        let e = &entry.2;
        match e.event_kind() {
            Some(EventKind::Alloc) if e.addr == a => free = false,
            Some(EventKind::Free) if e.addr == a => free = true,
            Some(EventKind::Alloc | EventKind::Free | EventKind::Resize | EventKind::Realloc) => {}
            _ if !free => continue,
            _ => {}
        }
        story.push(entry);
    }
    story
}

/// The size class an event is about: its block's or its page's, as the model has them now
/// (else, for an allocation, the class of its request).
fn bin_of(model: &Model, e: &Event) -> Option<u16> {
    match e.event_kind()? {
        EventKind::PageInit => return Some(schema::PageInit::from_event(e).bin),
        EventKind::Alloc | EventKind::Free | EventKind::Resize | EventKind::Realloc => {}
        k if KindGroup::of(k) == Some(KindGroup::Pages) => {}
        _ => return None,
    }
    model.page_at(e.addr).map(|r| r.page.bin).or_else(|| {
        (e.event_kind() == Some(EventKind::Alloc))
            .then(|| {
                let size = schema::Alloc::from_event(e).size;
                u16::try_from(heaplens_alloc::bin::bin_of(size as usize)).ok()
            })
            .flatten()
    })
}

fn matches(model: &Model, f: &Filter, (_, heap, e): &Entry) -> bool {
    // A marker's label comes in pieces of 16 bytes: the log shows it once, at its last piece.
    let piece = e.event_kind() == Some(EventKind::Mark) && e.flags & flags::MORE != 0;
    !piece
        && f.thread.is_none_or(|t| t == *heap)
        && f.kind
            .is_none_or(|k| e.event_kind().and_then(KindGroup::of) == Some(k))
        && f.page.is_none_or(|p| {
            e.event_kind().and_then(KindGroup::of).is_some_and(|k| {
                matches!(
                    k,
                    KindGroup::Allocations | KindGroup::Frees | KindGroup::Pages
                )
            }) && model.page_at(e.addr).is_some_and(|r| r.page.start == p)
        })
        && f.bin.is_none_or(|b| bin_of(model, e) == Some(b))
        && f.address
            .is_none_or(|a| touches(e, a, model.page_at(a).map(|r| r.page.start)))
}

/// One event in words; a marker with its whole label (`markers`: the recording's, by position).
fn words(model: &Model, names: &Namer, markers: &[Marker], (index, heap, ev): &Entry) -> String {
    if ev.event_kind() == Some(EventKind::Mark) {
        let i = markers.partition_point(|m| m.event <= *index);
        if let Some(m) = markers.get(i).filter(|m| m.event == index + 1) {
            return format!(
                "marker \"{}\" from {}",
                m.label,
                describe::thread(model, *heap)
            );
        }
    }
    describe::describe(model, names, *heap, ev)
}

/// Draws the log; `position` is the replay position (None: live), `markers` the recording's
/// (replay) or the model's. Clicking an event selects its page (`selected_page`).
pub fn draw(
    ui: &mut egui::Ui,
    view: &View,
    log: &mut EventLog,
    selected_page: &mut Option<u64>,
    (position, markers): (Option<u64>, &[Marker]),
) {
    let model = &view.model;
    filters(ui, model, log, *selected_page);
    let source = source(&log.filter, &log.window, &log.story, view);
    let generation = source.generation();
    if log.rows_for.as_ref() != Some(&(generation, log.filter.clone())) {
        let mut rows: Vec<usize> = (0..source.len())
            .filter(|&i| {
                source
                    .get(i)
                    .is_some_and(|e| matches(model, &log.filter, e))
            })
            .collect();
        if log.filter.address.is_some() && matches!(source, Source::Ring(_)) {
            let story: Vec<Entry> = rows
                .iter()
                .filter_map(|&i| source.get(i).copied())
                .collect();
            let kept = life_story(story.clone(), log.filter.address.unwrap_or(0));
            rows.retain(|&i| source.get(i).is_some_and(|e| kept.contains(e)));
        }
        log.rows = rows;
        log.rows_for = Some((generation, log.filter.clone()));
    }
    let rows = &log.rows;
    ui.label(summary(log, position, source.len(), rows.len()))
        .on_hover_text(
            "Census records are left out. Names, sizes and owners are as the model has them \
             at the replay position. Click an event to select its page.",
        );
    // A row is a selectable label: its text, its padding, at least the interactive height.
    let row_h = (ui.text_style_height(&egui::TextStyle::Body)
        + 2.0 * ui.spacing().button_padding.y)
        .max(ui.spacing().interact_size.y);
    let row_pitch = row_h + ui.spacing().item_spacing.y;
    // The first row at or after the position (the next event to apply).
    let at = position.map(|p| rows.partition_point(|&i| source.get(i).is_some_and(|e| e.0 < p)));
    let mut area = egui::ScrollArea::vertical()
        .auto_shrink(false)
        .stick_to_bottom(position.is_none());
    if let Some(p) = position
        && log.scrolled_to.as_ref() != Some(&(p, generation, log.filter.clone()))
    {
        log.scrolled_to = Some((p, generation, log.filter.clone()));
        log.scroll_tries = 3;
    }
    let mut wanted = None;
    if let Some(at) = at
        && log.scroll_tries > 0
    {
        let visible = ui.available_height();
        // As show_rows lays it out; an offset past its end would spring back, frame by frame.
        let content = rows.len() as f32 * row_pitch - ui.spacing().item_spacing.y - 1.0;
        let offset =
            (at as f32 * row_pitch - visible / 2.0).clamp(0.0, (content - visible).max(0.0));
        area = area.vertical_scroll_offset(offset);
        wanted = Some(offset);
    }
    let names = Namer::new(model);
    let mut clicked = None;
    let out = area.show_rows(ui, row_h, rows.len(), |ui, range| {
        for k in range {
            let Some(&(index, heap, ev)) = source.get(rows[k]) else {
                continue;
            };
            let future = position.is_some_and(|p| index >= p);
            ui.horizontal(|ui| {
                let marker = if at == Some(k) { "▶" } else { " " };
                ui.label(
                    RichText::new(format!(
                        "{marker}{index:>10}  {:>10}",
                        units::seconds(ev.time)
                    ))
                    .monospace()
                    .weak(),
                );
                let mut text = RichText::new(words(model, &names, markers, &(index, heap, ev)));
                if future {
                    text = text.color(Color32::GRAY);
                }
                let r = ui.selectable_label(log.selected == Some(index), text);
                if r.clicked() {
                    clicked = Some((index, ev));
                }
                if future {
                    r.on_hover_text("Not applied yet: after the replay position");
                }
            });
        }
    });
    if let Some(offset) = wanted {
        log.scroll_tries = if (out.state.clamped_offset().y - offset).abs() <= 1.0 {
            0
        } else {
            ui.ctx().request_repaint();
            log.scroll_tries - 1
        };
    }
    if let Some((index, ev)) = clicked {
        log.selected = Some(index);
        if let Some(r) = model.page_at(ev.addr) {
            *selected_page = Some(r.page.start);
        }
    }
}

fn summary(log: &EventLog, position: Option<u64>, held: usize, shown: usize) -> String {
    let what = match (log.filter.address, position, &log.window) {
        (Some(a), Some(_), _) => {
            format!("the life story of the block at {a:#x}, from the whole trace")
        }
        (Some(a), None, _) => {
            format!("the life story of the block at {a:#x}, among the last {held} events")
        }
        (None, Some(p), Some((w, _))) => format!(
            "events {}–{} around the replay position (event {p})",
            w.start, w.end
        ),
        _ => format!(
            "the last {held} events (up to {} are kept)",
            crate::source::recent::RECENT_EVENTS
        ),
    };
    if shown == held && log.filter == Filter::default() {
        what
    } else {
        format!("{what} · {shown} match")
    }
}

/// The filter bar.
fn filters(ui: &mut egui::Ui, model: &Model, log: &mut EventLog, selected_page: Option<u64>) {
    let f = &mut log.filter;
    ui.horizontal_wrapped(|ui| {
        // Threads may share a name (a pool): the heap id tells them apart.
        let heap_name = |h: u32| match h {
            0 => describe::thread(model, 0),
            h => format!("{} (heap {h})", describe::thread(model, h)),
        };
        let thread_name = |t: Option<u32>| t.map_or("all threads".to_owned(), heap_name);
        egui::ComboBox::from_label("thread")
            .selected_text(thread_name(f.thread))
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut f.thread, None, "all threads");
                ui.selectable_value(&mut f.thread, Some(0), heap_name(0));
                for h in model.heaps().iter() {
                    ui.selectable_value(&mut f.thread, Some(h.id), heap_name(h.id));
                }
            })
            .response
            .on_hover_text("Events of one thread (its heap); the process: segments, OS, names");
        egui::ComboBox::from_label("kind")
            .selected_text(f.kind.map_or("all kinds", KindGroup::name))
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut f.kind, None, "all kinds");
                for k in KindGroup::ALL {
                    ui.selectable_value(&mut f.kind, Some(k), k.name());
                }
            })
            .response
            .on_hover_text("Events of one kind");
        let bins = model.bins(None);
        let bin_name = |b: u16| {
            let size = bins.iter().find(|g| g.bin == b).map_or_else(
                || heaplens_alloc::bin::block_size(usize::from(b)) as u64,
                |g| g.block_size,
            );
            format!("{} blocks (bin {b})", units::bytes(size))
        };
        egui::ComboBox::from_label("size class")
            .selected_text(f.bin.map_or("all sizes".to_owned(), bin_name))
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut f.bin, None, "all sizes");
                for g in &bins {
                    ui.selectable_value(&mut f.bin, Some(g.bin), bin_name(g.bin));
                }
            })
            .response
            .on_hover_text("Events about blocks or pages of one size class (in use now)");
        let mut on_page = f.page.is_some();
        let page_box = ui
            .add_enabled(
                selected_page.is_some() || on_page,
                egui::Checkbox::new(&mut on_page, "selected page only"),
            )
            .on_hover_text("Events about the page selected in the segment map");
        if page_box.changed() || (on_page && f.page != selected_page && selected_page.is_some()) {
            f.page = if on_page { selected_page } else { None };
        }
        ui.separator();
        ui.label("Block at");
        let edit = ui
            .add(
                egui::TextEdit::singleline(&mut log.address_text)
                    .hint_text("0x7f…")
                    .desired_width(150.0),
            )
            .on_hover_text(
                "An address (hex with 0x, or decimal): every event of that block, from its \
                 allocation to its free and the collects that moved it between lists",
            );
        if edit.changed() {
            f.address = parse_address(&log.address_text);
        }
        if (f.address.is_some() || !log.address_text.is_empty()) && ui.button("Clear").clicked() {
            log.address_text.clear();
            f.address = None;
        }
        if *f != Filter::default() && ui.button("Show all").clicked() {
            *f = Filter::default();
            log.address_text.clear();
        }
    });
}

/// `0x7f12…` or decimal.
fn parse_address(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, addr: u64) -> Event {
        Event {
            kind: kind as u8,
            addr,
            ..Event::default()
        }
    }

    #[test]
    fn a_life_story_keeps_the_pages_events_only_while_the_block_is_free() {
        let (a, page) = (0x1040, 0x1000);
        let found = vec![
            (1, 1, ev(EventKind::PageCollect, page)),
            (2, 1, ev(EventKind::Alloc, a)),
            (3, 1, ev(EventKind::PageFull, page)),
            (4, 2, ev(EventKind::Free, a)),
            (5, 1, ev(EventKind::PageCollect, page)),
            (6, 1, ev(EventKind::Alloc, a)),
            (7, 1, ev(EventKind::PageCollect, page)),
        ];
        assert!(found.iter().all(|e| touches(&e.2, a, Some(page))));
        let story: Vec<u64> = life_story(found, a).iter().map(|e| e.0).collect();
        assert_eq!(story, [2, 4, 5, 6]);
    }

    #[test]
    fn addresses_parse_in_hex_and_decimal() {
        assert_eq!(parse_address(" 0x1f "), Some(31));
        assert_eq!(parse_address("31"), Some(31));
        assert_eq!(parse_address("zz"), None);
    }
}
