//! Where the viewer's events come from, and the state it draws: a [`View`] (the model, the last
//! events in order, and a status line) kept up to date by one of three sources:
//! - [`Replay`]: a trace file, with seeking through keyframes;
//! - [`Live`]: events arriving over a channel, applied on a thread of their own, from a program
//!   launched with heaplens preloaded (the socket) or from this very process (the collector's
//!   in-process subscription). Both reach it as the collector's
//!   [`Message`](heaplens_alloc::batch::Message)s.
//!
//! No egui here: the UI only reads a `View`.

pub mod keyframes;
pub mod live;
pub mod prefetch;
pub mod recent;
pub mod replay;

use heaplens_alloc::event::Event;

use crate::model::Model;
use crate::trace::ExitStatus;

pub use live::{Feed, Live};
pub use recent::Recent;
pub use replay::{Replay, Resumed, replay_all};

pub use crate::units::seconds;

/// What the status line says about the source.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    /// Live: the program has not connected yet.
    Waiting,
    /// Live: events are arriving from `what` (a command line, or "this process").
    Connected {
        /// What is being watched.
        what: String,
    },
    /// Live: the program exited; everything it sent is shown.
    Exited(ExitStatus),
    /// Live: the stream ended or broke without an exit status (the reason).
    Ended(String),
    /// Replay at time `t` (ns since the trace started) of `duration` ns.
    Replaying {
        /// Current time.
        t: u64,
        /// The trace's length.
        duration: u64,
        /// Whether the replay is advancing by itself.
        playing: bool,
    },
}

impl Status {
    /// The status line's words.
    pub fn describe(&self) -> String {
        match self {
            Self::Waiting => "waiting for the program to connect".to_owned(),
            Self::Connected { what } => format!("connected: {what}"),
            Self::Exited(ExitStatus::Code(c)) => format!("process exited (code {c})"),
            Self::Exited(ExitStatus::Signal(s)) => format!("process exited (signal {s})"),
            Self::Exited(ExitStatus::Unknown) => "process exited".to_owned(),
            Self::Ended(why) => format!("stream ended: {why}"),
            Self::Replaying {
                t,
                duration,
                playing,
            } => format!(
                "{} at {} of {}",
                if *playing {
                    "replaying"
                } else {
                    "replay paused"
                },
                seconds(*t),
                seconds(*duration)
            ),
        }
    }
}

/// What the UI draws from.
#[derive(Debug)]
pub struct View {
    /// The rebuilt allocator state.
    pub model: Model,
    /// Live: the last events applied, oldest first (a replay's event log reads the trace).
    pub recent: Recent,
    /// What the status line says.
    pub status: Status,
    /// Events applied so far.
    pub applied: u64,
    /// Events received but not applied yet (live: the channel's backlog).
    pub backlog: u64,
    /// Live: how far the model was behind the program when it last took events, in ns: the
    /// machine's clock then, less the program's clock at the latest event applied (through the
    /// trace's `ClockSync`). `None` until the stream says how its clock relates to the machine's.
    pub behind_ns: Option<u64>,
}

impl View {
    /// An empty view with `status`.
    pub fn new(status: Status) -> Self {
        Self {
            model: Model::new(),
            recent: Recent::default(),
            status,
            applied: 0,
            backlog: 0,
            behind_ns: None,
        }
    }

    /// Applies one heap's events.
    pub fn apply_batch(&mut self, heap: u32, events: &[Event]) {
        self.model.apply_batch(heap, events);
        self.recent.push_batch(heap, events);
        self.applied += events.len() as u64;
    }

    /// Notes how far the model is behind the program at `now_ns` (`CLOCK_MONOTONIC`), when the
    /// stream carried a `ClockSync`: live sources call it as they apply events.
    pub fn note_lag(&mut self, now_ns: u64) {
        self.behind_ns = self.model.clock_sync().map(|(trace, monotonic)| {
            let program = monotonic.saturating_add(self.model.time().saturating_sub(trace));
            now_ns.saturating_sub(program)
        });
    }
}
