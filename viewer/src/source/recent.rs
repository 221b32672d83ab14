//! The last events applied, for the event log of a live view (a replay reads its history from
//! the trace instead).

use std::collections::VecDeque;

use heaplens_alloc::event::{Event, EventKind};

/// How many events a live view keeps for its log: about 2.4 MB.
pub const RECENT_EVENTS: usize = 50_000;

/// The last [`RECENT_EVENTS`] events (census records left out: they restate state, and a
/// census would push everything else out), with their heap ids and trace positions.
#[derive(Clone, Debug, Default)]
pub struct Recent {
    events: VecDeque<(u64, u32, Event)>,
    next_index: u64,
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

impl Recent {
    /// Starts counting positions at `index` (after a seek), forgetting what was kept.
    pub fn reset(&mut self, index: u64) {
        self.events.clear();
        self.next_index = index;
    }

    /// Keeps the tail of `events` of `heap`.
    pub fn push_batch(&mut self, heap: u32, events: &[Event]) {
        let skip = events.len().saturating_sub(RECENT_EVENTS * 4);
        self.next_index += skip as u64;
        for e in &events[skip..] {
            let i = self.next_index;
            self.next_index += 1;
            if is_census(e) {
                continue;
            }
            if self.events.len() == RECENT_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back((i, heap, *e));
        }
    }

    /// Keeps one event at trace position `index` (positions must increase).
    pub fn push_one(&mut self, index: u64, heap: u32, e: &Event) {
        self.next_index = index + 1;
        if is_census(e) {
            return;
        }
        if self.events.len() == RECENT_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back((index, heap, *e));
    }

    /// Oldest first: `(trace position, heap, event)`.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &(u64, u32, Event)> {
        self.events.iter()
    }

    /// The `i`th kept, oldest first.
    pub fn get(&self, i: usize) -> Option<&(u64, u32, Event)> {
        self.events.get(i)
    }

    /// The trace position the next event will have: changes whenever an event arrives.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// How many are kept.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}
