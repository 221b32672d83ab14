//! Keyframes a replay makes itself, on its first pass through a trace that has too few.
//!
//! `heaplens record` writes events only: applying every event to a model as it records cost as
//! much CPU as encoding them (about 9 ns an event), and a recording of an allocation-heavy
//! program waited for it. The first replay of a trace goes through every event anyway (it opens
//! at the end), so it takes a snapshot of its model every so often on the way
//! ([`Spacing`]); seeks use them at once, and `heaplens view` stores them in the trace
//! ([`crate::trace::append_keyframes`]) so the next opening starts from the last of them.

use crate::model::Model;
use crate::trace::writer::KEYFRAME_ZSTD_LEVEL;

/// A keyframe every this many events at least: where replay can start from.
pub const KEYFRAME_EVERY: u64 = 500_000;

/// Keyframes take at most about this share of a trace's bytes: a large model (many live blocks,
/// many stack nodes) gets keyframes further apart. Every 500 k events, the 15 MB snapshots of a
/// binary-trees program recorded with `--stacks all` made 97 % of its trace (58.6 MiB against
/// 2.0 MB of events, and heaptrack's 2.8 MB file).
const KEYFRAME_SHARE: f64 = 0.125;

/// Where keyframes go: one every [`KEYFRAME_EVERY`] events at most, and only where the events
/// since the last take at least 1 / [`KEYFRAME_SHARE`] times its bytes, so that keyframes stay
/// about an eighth of the file. (A binary-trees recording with `--stacks all` has 0.13 bytes
/// an event and a model of 3 MB: a keyframe at 500 k events would have made the file twice
/// as large, to save the replay of 500 k events.)
#[derive(Clone, Copy, Debug)]
pub struct Spacing {
    last: u64,
    next: u64,
    bytes_per_event: f64,
}

impl Spacing {
    /// Keyframes after the one at `last` (0: none yet) in a trace of `bytes_per_event`.
    pub fn after(last: u64, bytes_per_event: f64) -> Self {
        Self {
            last,
            next: last + KEYFRAME_EVERY,
            bytes_per_event: bytes_per_event.max(0.01),
        }
    }

    /// The event index the next keyframe is due at.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Events a keyframe of `bytes` must be apart from the one before.
    fn worth(&self, bytes: usize) -> u64 {
        (bytes as f64 / KEYFRAME_SHARE / self.bytes_per_event) as u64
    }

    /// A keyframe of `bytes` (as stored) is at event `at` (one the file has).
    pub fn made(&mut self, at: u64, bytes: usize) {
        self.last = at;
        self.next = at + self.worth(bytes).max(KEYFRAME_EVERY);
    }

    /// Whether a keyframe of `bytes` made at `at` (when it was due) is worth keeping; either
    /// way, the next is due where one of that size would be, and [`KEYFRAME_EVERY`] events on
    /// at least (a model that grows as it goes would otherwise be offered again and again just
    /// short of where it is worth it).
    pub fn offer(&mut self, at: u64, bytes: usize) -> bool {
        let worth = self.worth(bytes);
        if at.saturating_sub(self.last) >= worth {
            self.made(at, bytes);
            true
        } else {
            self.next = (self.last + worth).max(at + KEYFRAME_EVERY);
            false
        }
    }
}

/// A snapshot of the model after the first `event_index` events, compressed as a trace stores
/// it (zstd at [`KEYFRAME_ZSTD_LEVEL`]).
#[derive(Clone, Debug)]
pub struct BuiltKeyframe {
    /// The snapshot is the state after this many events.
    pub event_index: u64,
    /// The model's time then (ns).
    pub time: u64,
    /// The snapshot's length before compression.
    pub raw_len: usize,
    /// The snapshot, compressed.
    pub zstd: Vec<u8>,
}

impl BuiltKeyframe {
    /// `model`, which has applied the first `event_index` events.
    pub fn of(model: &Model, event_index: u64) -> Result<Self, String> {
        let raw = model.to_keyframe()?;
        let zstd = zstd::bulk::compress(&raw, KEYFRAME_ZSTD_LEVEL)
            .map_err(|e| format!("cannot compress a keyframe: {e}"))?;
        Ok(Self {
            event_index,
            time: model.time(),
            raw_len: raw.len(),
            zstd,
        })
    }

    /// The model it holds.
    pub fn model(&self) -> Result<Model, String> {
        let raw = zstd::bulk::decompress(&self.zstd, self.raw_len)
            .map_err(|e| format!("a keyframe made on opening does not decompress: {e}"))?;
        Model::from_keyframe(&raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframes_come_every_500k_events_and_further_apart_when_they_are_large() {
        let mut s = Spacing::after(0, 1.0);
        assert_eq!(s.next(), 500_000);
        assert!(s.offer(500_000, 1000));
        assert_eq!(s.next(), 1_000_000);
        // A keyframe of 1 MiB in a trace of 1 byte per event: the next waits for 8 Mi events.
        s.made(1_000_000, 1 << 20);
        assert_eq!(s.next(), 1_000_000 + 8 * (1 << 20));
        assert_eq!(Spacing::after(3_000_000, 2.0).next(), 3_500_000);
    }

    #[test]
    fn a_keyframe_larger_than_an_eighth_of_the_events_before_it_is_dropped() {
        // 1 MiB after 500 k events of 1 byte: dropped, and the next is due 8 Mi events after
        // the start, where one of that size is worth it.
        let mut s = Spacing::after(0, 1.0);
        assert!(!s.offer(500_000, 1 << 20));
        assert_eq!(s.next(), 8 << 20);
        assert!(s.offer(8 << 20, 1 << 20));
        assert_eq!(s.next(), 16 << 20);
        // A model that grew meanwhile: dropped again, due where it would be worth it.
        assert!(!s.offer(16 << 20, 2 << 20));
        assert_eq!(s.next(), 24 << 20);
        // Just short of that: offered again no sooner than 500 k events on.
        assert!(!s.offer(24 << 20, (2 << 20) + 4096));
        assert_eq!(s.next(), (24 << 20) + KEYFRAME_EVERY);
        // After a keyframe the file has, counted from it.
        let mut s = Spacing::after(0, 1.0);
        s.made(2_000_000, 100);
        assert_eq!(s.next(), 2_500_000);
    }

    #[test]
    fn a_built_keyframe_gives_back_the_model_it_was_made_of() {
        let mut model = Model::new();
        let mut synth = crate::model::synth::Synth::new(crate::model::synth::SynthConfig {
            seed: 7,
            ..Default::default()
        });
        synth.run_events(20_000);
        for (heap, e) in synth.events() {
            model.apply(*heap, e);
        }
        let k = BuiltKeyframe::of(&model, 20_000).unwrap();
        assert!(k.zstd.len() < k.raw_len, "compressed");
        let back = k.model().unwrap();
        assert_eq!(back.to_keyframe().unwrap(), model.to_keyframe().unwrap());
        assert_eq!(k.time, model.time());
    }
}
