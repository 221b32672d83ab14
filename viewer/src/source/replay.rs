//! Replaying a trace file: the model at any point of the recording.
//!
//! The position is an event index. Moving forward applies the events in between; moving back
//! (or far forward) restarts from the latest keyframe at or before the target, a model snapshot
//! every 500 000 events or more, so a seek applies at most that many events whatever the
//! trace's length. A trace recorded by `heaplens record` has none at first: opening it goes
//! through every event once and makes them on the way ([`super::keyframes`]), and
//! [`Replay::store_keyframes`] adds them to the file. Play advances model time by wall time
//! times the speed.
//!
//! A damaged chunk costs its own events only ([`Resumed`]): past it the model goes on from the
//! next keyframe after the damage when there is one (exact again), otherwise with the events
//! after the damage, and the next census that disagrees resynchronises it.

use std::fmt;
use std::io::{Read, Seek};
use std::ops::Range;
use std::path::Path;

use heaplens_alloc::event::{Event, EventKind};

use super::keyframes::{BuiltKeyframe, Spacing};
use super::prefetch::Prefetch;
use super::{Status, View};
use crate::model::geometry::Geometry;
use crate::model::{CensusCheck, Marker, Metrics, Model};
use crate::trace::{
    Appended, Damage, ExitStatus, NewKeyframe, TraceError, TraceReader, append_keyframes,
};

/// How the model went on past a damaged chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resumed {
    /// From the keyframe after `event_index` events, the first after the damage: the model is
    /// exact again from there.
    Keyframe(u64),
    /// With the events after the damage, no keyframe being there; the model misses the lost
    /// events until a census that disagrees resynchronises its pages.
    AfterGap,
    /// Nothing readable follows the damage.
    NothingAfter,
    /// The damaged chunk held no events (a keyframe, say): the model lost nothing.
    NothingLost,
}

impl fmt::Display for Resumed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Keyframe(k) => write!(f, "the model resumed exact at the keyframe at event {k}"),
            Self::AfterGap => f.write_str(
                "no keyframe follows: the model went on without them until a census resynchronises it",
            ),
            Self::NothingAfter => f.write_str("nothing readable follows"),
            Self::NothingLost => f.write_str("the model lost nothing"),
        }
    }
}

/// Where the model goes on after events `from..end` were lost (`until`: no keyframe past it
/// is used): restores the first keyframe at or after `end` if there is one and it reads,
/// otherwise tells the model what it lost. Returns how, and the event index to go on from.
fn resume_after_damage<R: Read + Seek>(
    reader: &mut TraceReader<R>,
    model: &mut Model,
    from: u64,
    end: u64,
    until: u64,
) -> (Resumed, u64) {
    let k = reader
        .keyframes()
        .iter()
        .position(|k| k.event_index >= end && k.event_index <= until);
    if let Some(k) = k {
        let at = reader.keyframes()[k].event_index;
        let restored = reader
            .read_keyframe(k)
            .ok()
            .and_then(|bytes| Model::from_keyframe(&bytes).ok());
        if let Some(m) = restored {
            *model = m;
            return (Resumed::Keyframe(at), at);
        }
    }
    model.events_lost(end.saturating_sub(from));
    (Resumed::AfterGap, end)
}

/// Applies every readable event of `reader` to `model` in order, going on past damaged chunks
/// (see [`Resumed`]), and calls `on_census` with the model's check of each census as it
/// completes. Returns each damage met and how the model went on after it. Fails only if reading
/// the file fails.
pub fn replay_all<R: Read + Seek>(
    reader: &mut TraceReader<R>,
    model: &mut Model,
    on_census: &mut dyn FnMut(&CensusCheck),
) -> Result<Vec<(Damage, Resumed)>, TraceError> {
    const CENSUS_END: u8 = EventKind::CensusEnd as u8;
    let mut met = Vec::new();
    let mut buf = Vec::new();
    let mut pos = 0u64;
    let mut censuses = model.totals().censuses;
    while let Some(i) = reader.index().chunk_of_event(pos) {
        let info = reader.chunks()[i];
        let lost_until = if pos < info.first_event {
            Some(info.first_event) // a damaged stretch the scan skipped
        } else {
            match reader.read_chunk_into(i, &mut buf) {
                Ok(()) => {
                    let from = usize::try_from(pos - info.first_event).unwrap_or(usize::MAX);
                    for (heap, e) in buf.get(from..).unwrap_or(&[]) {
                        model.apply(*heap, e);
                        if e.kind == CENSUS_END && model.totals().censuses != censuses {
                            censuses = model.totals().censuses;
                            if let Some(c) = model.last_census_check() {
                                on_census(c);
                            }
                        }
                    }
                    pos = info.event_range().end;
                    None
                }
                Err(TraceError::CorruptChunk { .. }) => Some(info.event_range().end),
                Err(e) => return Err(e),
            }
        };
        if let Some(end) = lost_until {
            let (how, next) = resume_after_damage(reader, model, pos, end, u64::MAX);
            pos = next;
            censuses = model.totals().censuses;
            if let Some(d) = reader.damaged().iter().rev().find(|d| d.at <= info.offset) {
                met.push((d.clone(), how));
            }
        }
    }
    if pos < reader.total_events() {
        model.events_lost(reader.total_events() - pos);
    }
    // Damage the events never ran into: chunks without events (keyframes), or damage with
    // nothing readable after it.
    for d in reader.damaged() {
        if !met.iter().any(|(m, _)| m.at == d.at) {
            let how = if d.events_lost() == 0 {
                Resumed::NothingLost
            } else {
                Resumed::NothingAfter
            };
            met.push((d.clone(), how));
        }
    }
    met.sort_by_key(|(d, _)| d.at);
    Ok(met)
}

/// Moving forward by more than this many events goes through a keyframe if one is nearer.
const FORWARD_LIMIT: u64 = 1_000_000;

/// A trace being replayed.
pub struct Replay {
    reader: TraceReader,
    view: View,
    /// The whole recording's time series and markers (the model at the end), for the overview.
    full: Metrics,
    total: u64,
    duration: u64,
    exit: Option<ExitStatus>,
    chunk: Option<(usize, Vec<(u32, Event)>)>,
    playing: bool,
    speed: f64,
    damage: Option<String>,
    damaged: Vec<(Damage, Resumed)>,
    /// The keyframe (its event index) the model was last restored from.
    restored_from: Option<u64>,
    /// Keyframes made on opening, past the file's own (see [`Replay::first_pass`]).
    built: Vec<BuiltKeyframe>,
    /// Chunks decoded ahead during the first pass.
    prefetch: Option<Prefetch>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("position", &self.view.applied)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl Replay {
    /// Opens a trace and moves to its end (the whole recording is visible first).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, TraceError> {
        let reader = TraceReader::open(&path)?;
        Self::open_reader(reader, Some(path.as_ref()))
    }

    /// Replays what `reader` reads. Every chunk's checksum is verified first, so that what damage
    /// costs is known before the replay meets it. A trace recorded with an allocator geometry
    /// the model does not read is refused ([`TraceError::Geometry`]).
    pub fn from_reader(reader: TraceReader) -> Result<Self, TraceError> {
        Self::open_reader(reader, None)
    }

    /// [`Replay::from_reader`]; with the file's `path`, its first pass decodes chunks ahead on
    /// a thread of its own ([`Prefetch`]).
    fn open_reader(mut reader: TraceReader, path: Option<&Path>) -> Result<Self, TraceError> {
        Geometry::of(reader.metadata())?;
        reader.verify_all()?;
        let total = reader.total_events();
        let duration = reader.duration_ns();
        let exit = reader.end_info().map(|e| e.status);
        let mut r = Self {
            reader,
            view: View::new(Status::Replaying {
                t: 0,
                duration,
                playing: false,
            }),
            full: Metrics::default(),
            total,
            duration,
            exit,
            chunk: None,
            playing: false,
            speed: 1.0,
            damage: None,
            damaged: Vec::new(),
            restored_from: None,
            built: Vec::new(),
            prefetch: None,
        };
        r.describe_damage();
        r.first_pass(path)?;
        r.view.model.finish();
        r.full = r.view.model.metrics().clone();
        Ok(r)
    }

    /// Moves to the end of the trace from its last keyframe (or its start), and on the way makes
    /// keyframes where the file has none ([`Spacing`]): every 500 000 events or more, as long as
    /// the file has no damage (a model past damage is not exact, and its keyframes would say it
    /// is). A keyframe that cannot be made stops the making, not the replay. With the file's
    /// `path` (and no damage), chunks are decoded ahead on a thread of their own.
    fn first_pass(&mut self, path: Option<&Path>) -> Result<(), TraceError> {
        let total = self.total;
        let last = self.reader.keyframes().last().copied();
        // As a seek to the end from the start would: a short trace is applied whole (and meets
        // any damage in it).
        self.restart_from(
            last.map(|k| k.event_index)
                .filter(|_| total > FORWARD_LIMIT),
        )?;
        let event_bytes: u64 = self
            .reader
            .chunks()
            .iter()
            .map(|c| u64::from(c.stored_len))
            .sum();
        let per_event = event_bytes as f64 / total.max(1) as f64;
        // Past the file's last keyframe, as far from it as the pass that made it put the next.
        let mut spacing = Spacing::after(0, per_event);
        if let Some(k) = last {
            spacing.made(k.event_index, k.stored_len as usize);
        }
        // A file cut off at its end is exact up to the cut; damage inside it is not.
        let corrupt = matches!(self.reader.status(), crate::trace::Status::Corrupt { .. });
        let mut build = self.reader.damaged().is_empty() && !corrupt;
        if build
            && let Some(path) = path
            && let Some(first) = self.reader.index().chunk_of_event(self.view.applied)
        {
            self.prefetch = Prefetch::start(path, first);
        }
        while self.view.applied < total {
            let target = if build {
                spacing.next().min(total)
            } else {
                total
            };
            let before = self.view.applied;
            self.apply_until(target)?;
            if self.view.applied == before || !self.damaged.is_empty() {
                build = false;
            }
            if self.view.applied == before {
                break; // past the readable events
            }
            if build && self.view.applied == spacing.next() && self.view.applied < total {
                match BuiltKeyframe::of(&self.view.model, self.view.applied) {
                    Ok(k) => {
                        if spacing.offer(k.event_index, k.zstd.len()) {
                            self.built.push(k);
                        }
                    }
                    Err(_) => build = false,
                }
            }
        }
        self.prefetch = None;
        self.update_status();
        Ok(())
    }

    /// The keyframes made on opening (none when the file had them all).
    pub fn built_keyframes(&self) -> &[BuiltKeyframe] {
        &self.built
    }

    /// Adds the keyframes made on opening to the trace file at `path` (the file this replay
    /// reads), so the next opening starts from the last of them. Only a finished trace takes
    /// them (see [`append_keyframes`]).
    pub fn store_keyframes(&self, path: &Path) -> std::io::Result<Appended> {
        let keyframes: Vec<NewKeyframe<'_>> = self
            .built
            .iter()
            .map(|k| NewKeyframe {
                event_index: k.event_index,
                time: k.time,
                raw_len: k.raw_len,
                zstd: &k.zstd,
            })
            .collect();
        append_keyframes(path, &keyframes)
    }

    /// The event index of the latest keyframe at or before `target`, the file's or one made on
    /// opening.
    fn keyframe_before(&self, target: u64) -> Option<u64> {
        let file = self
            .reader
            .keyframe_before_event(target)
            .map(|k| k.event_index);
        let built = self
            .built
            .iter()
            .rev()
            .find(|k| k.event_index <= target)
            .map(|k| k.event_index);
        file.max(built)
    }

    /// The current state.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The whole recording's time series and markers.
    pub fn full_metrics(&self) -> &Metrics {
        &self.full
    }

    /// Events in the trace.
    pub fn total_events(&self) -> u64 {
        self.total
    }

    /// Time of the last event (ns).
    pub fn duration(&self) -> u64 {
        self.duration
    }

    /// How the recorded program ended, if the trace says.
    pub fn exit(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// What is wrong with the file, if anything: where it stops, and each damaged chunk met so
    /// far with what it cost and how the model went on (everything else is shown).
    pub fn damage(&self) -> Option<&str> {
        self.damage.as_deref()
    }

    /// The damaged chunks met so far and how the model went on after each.
    pub fn damaged(&self) -> &[(Damage, Resumed)] {
        &self.damaged
    }

    /// The event index of the keyframe the model was last restored from (by a seek back or
    /// far forward, or past damage); `None` if it never was.
    pub fn restored_from(&self) -> Option<u64> {
        self.restored_from
    }

    /// Composes [`Replay::damage`] from the reader's status, the damaged chunks it found and how
    /// the model went on past those it met.
    fn describe_damage(&mut self) {
        let mut parts: Vec<String> = self
            .reader
            .damage()
            .map(|e| e.to_string())
            .into_iter()
            .collect();
        for d in self.reader.damaged() {
            match self.damaged.iter().find(|(m, _)| m.at == d.at) {
                Some((_, how)) => parts.push(format!("{d}; {how}")),
                None => parts.push(d.to_string()),
            }
        }
        self.damage = (!parts.is_empty()).then(|| parts.join("; "));
    }

    /// Events applied: the position.
    pub fn position(&self) -> u64 {
        self.view.applied
    }

    /// The model's time at the position (ns).
    pub fn time(&self) -> u64 {
        self.view.model.time()
    }

    /// Whether play is on.
    pub fn is_playing(&self) -> bool {
        self.playing
    }

    /// Play speed (model seconds per wall second).
    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// Sets the play speed.
    pub fn set_speed(&mut self, speed: f64) {
        self.speed = speed.clamp(0.001, 1000.0);
    }

    /// Starts or stops play; play from the end starts over.
    pub fn set_playing(&mut self, on: bool) -> Result<(), TraceError> {
        if on && self.position() >= self.total {
            self.seek_event(0)?;
        }
        self.playing = on;
        self.update_status();
        Ok(())
    }

    /// Advances play by `wall_seconds`, but not past `until` (a time to stop at, if any).
    pub fn tick(&mut self, wall_seconds: f64, until: Option<u64>) -> Result<(), TraceError> {
        if !self.playing {
            return Ok(());
        }
        let step = (wall_seconds * self.speed * 1e9) as u64;
        let target = self
            .time()
            .saturating_add(step.max(1))
            .min(until.unwrap_or(u64::MAX));
        self.seek_time(target)?;
        if self.position() >= self.total {
            self.playing = false;
        }
        self.update_status();
        Ok(())
    }

    /// Moves by `n` events (negative: back).
    pub fn step(&mut self, n: i64) -> Result<(), TraceError> {
        let to = self.position().saturating_add_signed(n);
        self.seek_event(to)
    }

    /// The markers of the whole recording.
    pub fn markers(&self) -> &[Marker] {
        self.full.markers()
    }

    /// Moves to the next marker after the current time (`forward`), or the one before it.
    pub fn jump_marker(&mut self, forward: bool) -> Result<Option<String>, TraceError> {
        let t = self.time();
        let m = if forward {
            self.full.markers().iter().find(|m| m.time > t)
        } else {
            self.full.markers().iter().rev().find(|m| m.time < t)
        };
        let Some(m) = m.cloned() else {
            return Ok(None);
        };
        self.seek_marker(&m)?;
        Ok(Some(m.label))
    }

    /// Moves to just after the event of marker `m`: the state the program marked.
    pub fn seek_marker(&mut self, m: &Marker) -> Result<(), TraceError> {
        if m.event > 0 && m.event <= self.total {
            self.seek_event(m.event)
        } else {
            self.seek_time(m.time)
        }
    }

    /// Moves to the first event at or after `time` (ns), inclusive of every event before it.
    pub fn seek_time(&mut self, time: u64) -> Result<(), TraceError> {
        let index = self.event_at_time(time)?;
        self.seek_event(index)
    }

    /// The index just past the last event with a time at most `time`.
    fn event_at_time(&mut self, time: u64) -> Result<u64, TraceError> {
        let chunks = self.reader.chunks();
        let i = chunks.partition_point(|c| c.end_time <= time);
        let Some(info) = chunks.get(i).copied() else {
            return Ok(self.total);
        };
        let events = match self.chunk_events(i) {
            Ok(events) => events,
            // A damaged chunk: its events' times are unknown; before it, or past it.
            Err(TraceError::CorruptChunk { .. }) if time < info.start_time => {
                return Ok(info.first_event);
            }
            Err(TraceError::CorruptChunk { .. }) => return Ok(info.event_range().end),
            Err(e) => return Err(e),
        };
        let within = events.partition_point(|(_, e)| e.time <= time);
        Ok(info.first_event + within as u64)
    }

    /// Moves to just after `index` events (clamped to the trace).
    pub fn seek_event(&mut self, index: u64) -> Result<(), TraceError> {
        let target = index.min(self.total);
        let here = self.position();
        if target < here || target - here > FORWARD_LIMIT {
            let restart = self.keyframe_before(target);
            let use_keyframe = restart.is_some_and(|k| target < here || k > here);
            if target < here || use_keyframe {
                self.restart_from(restart.filter(|_| use_keyframe))?;
            }
        }
        self.apply_until(target)?;
        self.update_status();
        Ok(())
    }

    /// Resets the model to the keyframe at `event_index` (None: the start of the trace).
    fn restart_from(&mut self, event_index: Option<u64>) -> Result<(), TraceError> {
        let status = self.view.status.clone();
        self.view = View::new(status);
        if let Some(at) = event_index
            && let Some(k) = self.built.iter().find(|k| k.event_index == at)
        {
            if let Ok(model) = k.model() {
                self.view.model = model;
                self.view.applied = at;
                self.restored_from = Some(at);
            }
            return Ok(());
        }
        // A damaged keyframe: replay from the start.
        if let Some(at) = event_index
            && let Some((info, bytes)) = self.reader.keyframe_for_event(at).ok().flatten()
        {
            match Model::from_keyframe(&bytes) {
                Ok(model) => {
                    self.view.model = model;
                    self.view.applied = info.event_index;
                    self.restored_from = Some(info.event_index);
                }
                Err(_) => self.view.model = Model::new(), // a bad keyframe: replay from the start
            }
        }
        Ok(())
    }

    /// Applies events up to index `target`.
    fn apply_until(&mut self, target: u64) -> Result<(), TraceError> {
        while self.view.applied < target {
            let pos = self.view.applied;
            let chunks = self.reader.chunks();
            let i = chunks.partition_point(|c| c.first_event + u64::from(c.events) <= pos);
            let Some(info) = chunks.get(i).copied() else {
                break; // past the readable events
            };
            let lost_until = if pos < info.first_event {
                Some(info.first_event) // a damaged stretch the scan skipped
            } else {
                match self.load_chunk(i) {
                    Ok(()) => None,
                    Err(TraceError::CorruptChunk { .. }) => Some(info.event_range().end),
                    Err(e) => return Err(e),
                }
            };
            if let Some(end) = lost_until {
                let (how, next) =
                    resume_after_damage(&mut self.reader, &mut self.view.model, pos, end, target);
                self.view.applied = next;
                self.view.recent.reset(next);
                if let Resumed::Keyframe(k) = how {
                    self.restored_from = Some(k);
                }
                let d = self
                    .reader
                    .damaged()
                    .iter()
                    .rev()
                    .find(|d| d.at <= info.offset);
                if let Some(d) = d.filter(|d| !self.damaged.iter().any(|(m, _)| m.at == d.at)) {
                    self.damaged.push((d.clone(), how));
                    self.describe_damage();
                }
                continue;
            }
            let Some((_, events)) = self.chunk.as_ref() else {
                break;
            };
            let from = usize::try_from(pos - info.first_event).unwrap_or(usize::MAX);
            let to = usize::try_from(target - info.first_event)
                .unwrap_or(usize::MAX)
                .min(events.len());
            if from >= to {
                break;
            }
            for (heap, e) in &events[from..to] {
                self.view.model.apply(*heap, e);
            }
            self.view.applied = info.first_event + to as u64;
        }
        Ok(())
    }

    /// Events `range` of the trace as `(position, heap, event)`, read through the reader
    /// without touching the model: the event log's history around the position.
    pub fn read_events(&mut self, range: Range<u64>) -> Result<Vec<(u64, u32, Event)>, TraceError> {
        let chunks = self.reader.chunks();
        let first = chunks.partition_point(|c| c.first_event + u64::from(c.events) <= range.start);
        let wanted: Vec<(usize, u64)> = chunks[first..]
            .iter()
            .take_while(|c| c.first_event < range.end)
            .enumerate()
            .map(|(k, c)| (first + k, c.first_event))
            .collect();
        let mut out = Vec::new();
        for (i, first_event) in wanted {
            let events = self.reader.read_chunk(i)?;
            out.extend(
                events
                    .into_iter()
                    .enumerate()
                    .map(|(j, (heap, e))| (first_event + j as u64, heap, e))
                    .filter(|(index, _, _)| range.contains(index)),
            );
        }
        Ok(out)
    }

    /// Every event of the whole trace that `keep` accepts, as `(position, heap, event)`, read
    /// chunk by chunk (the event log's search for a block's life story).
    pub fn find_events(
        &mut self,
        mut keep: impl FnMut(u32, &Event) -> bool,
    ) -> Result<Vec<(u64, u32, Event)>, TraceError> {
        let starts: Vec<u64> = self.reader.chunks().iter().map(|c| c.first_event).collect();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for (i, first_event) in starts.into_iter().enumerate() {
            self.reader.read_chunk_into(i, &mut buf)?;
            out.extend(
                buf.iter()
                    .enumerate()
                    .filter(|(_, (heap, e))| keep(*heap, e))
                    .map(|(j, &(heap, e))| (first_event + j as u64, heap, e)),
            );
        }
        Ok(out)
    }

    /// Reads chunk `i` into the chunk kept (its vector reused: a chunk of 2^20 events takes
    /// 40 MB, and a fresh one for each chunk was faulted in and unmapped again, a third of a
    /// first opening's time).
    fn load_chunk(&mut self, i: usize) -> Result<(), TraceError> {
        if self.chunk.as_ref().is_none_or(|(c, _)| *c != i) {
            if let Some(p) = &self.prefetch {
                // Decoded ahead: taken as it is, the vector before it goes back to the thread.
                // Otherwise (an error, or the thread is past it) read here as always.
                if let Some(Ok(events)) = p.take(i) {
                    if let Some((_, old)) = self.chunk.replace((i, events)) {
                        p.give_back(old);
                    }
                    return Ok(());
                }
                self.prefetch = None;
            }
            let mut events = self.chunk.take().map(|(_, e)| e).unwrap_or_default();
            self.reader.read_chunk_into(i, &mut events)?;
            self.chunk = Some((i, events));
        }
        Ok(())
    }

    fn chunk_events(&mut self, i: usize) -> Result<&[(u32, Event)], TraceError> {
        self.load_chunk(i)?;
        Ok(self.chunk.as_ref().map_or(&[], |(_, e)| e.as_slice()))
    }

    fn update_status(&mut self) {
        self.view.status = Status::Replaying {
            t: self.time(),
            duration: self.duration,
            playing: self.playing,
        };
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[ignore = "debugging aid: HEAPLENS_TRACE=file cargo test -- --ignored --nocapture"]
    fn print_census_checks() {
        let Some(path) = std::env::var_os("HEAPLENS_TRACE") else {
            return;
        };
        let r = super::Replay::open(path).unwrap();
        if let Some(c) = r.view().model.last_census_check() {
            println!(
                "census {} at {}: {} mismatches",
                c.number, c.time, c.mismatches
            );
            for m in &c.first {
                println!("  {m}");
            }
        }
        for h in r.view().model.heaps().iter() {
            println!("heap {} {:?} exited {:?}", h.id, h.name, h.exited_at);
        }
    }
}
