//! Replaying a trace file: the model at any point of the recording.
//!
//! The position is an event index. Moving forward applies the events in between; moving back
//! (or far forward) restarts from the latest keyframe at or before the target, a model snapshot
//! the recorder stored every 500 000 events, so a seek applies at most that many events
//! whatever the trace's length. Play advances model time by wall time times the speed.

use std::path::Path;

use heaplens_alloc::event::Event;

use super::{Status, View};
use crate::model::{Marker, Metrics, Model};
use crate::trace::{ExitStatus, TraceError, TraceReader};

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
        let reader = TraceReader::open(path)?;
        Self::from_reader(reader)
    }

    /// Replays what `reader` reads.
    pub fn from_reader(reader: TraceReader) -> Result<Self, TraceError> {
        let total = reader.total_events();
        let duration = reader.duration_ns();
        let exit = reader.end_info().map(|e| e.status);
        let damage = reader.damage().map(|e| e.to_string());
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
            damage,
        };
        r.seek_event(total)?;
        r.view.model.finish();
        r.full = r.view.model.metrics().clone();
        Ok(r)
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

    /// What is wrong with the file, if anything (everything before the damage is shown).
    pub fn damage(&self) -> Option<&str> {
        self.damage.as_deref()
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
        let events = self.chunk_events(i)?;
        let within = events.partition_point(|(_, e)| e.time <= time);
        Ok(info.first_event + within as u64)
    }

    /// Moves to just after `index` events (clamped to the trace).
    pub fn seek_event(&mut self, index: u64) -> Result<(), TraceError> {
        let target = index.min(self.total);
        let here = self.position();
        if target < here || target - here > FORWARD_LIMIT {
            let restart = self.reader.keyframe_before_event(target).copied();
            let use_keyframe = restart.is_some_and(|k| target < here || k.event_index > here);
            if target < here || use_keyframe {
                self.restart_from(restart.filter(|_| use_keyframe).map(|k| k.event_index))?;
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
            && let Some((info, bytes)) = self.reader.keyframe_for_event(at)?
        {
            match Model::from_keyframe(&bytes) {
                Ok(model) => {
                    self.view.model = model;
                    self.view.applied = info.event_index;
                }
                Err(_) => self.view.model = Model::new(), // a bad keyframe: replay from the start
            }
        }
        self.view.recent.reset(self.view.applied);
        Ok(())
    }

    /// Applies events up to index `target`.
    fn apply_until(&mut self, target: u64) -> Result<(), TraceError> {
        let log_from = target.saturating_sub(super::recent::RECENT_EVENTS as u64 * 2);
        while self.view.applied < target {
            let pos = self.view.applied;
            let chunks = self.reader.chunks();
            let i = chunks.partition_point(|c| c.first_event + u64::from(c.events) <= pos);
            let Some(info) = chunks.get(i).copied() else {
                break; // past the readable events
            };
            self.load_chunk(i)?;
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
            for (k, (heap, e)) in events[from..to].iter().enumerate() {
                self.view.model.apply(*heap, e);
                let index = pos + k as u64;
                if index >= log_from {
                    self.view.recent.push_one(index, *heap, e);
                }
            }
            self.view.applied = info.first_event + to as u64;
        }
        Ok(())
    }

    fn load_chunk(&mut self, i: usize) -> Result<(), TraceError> {
        if self.chunk.as_ref().is_none_or(|(c, _)| *c != i) {
            let events = self.reader.read_chunk(i)?;
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
