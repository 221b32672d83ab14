//! Workloads that tell a story about an allocator: fragmentation, cross-thread frees, thread
//! churn, a server simulation, leaks, large and huge blocks.
//!
//! Each [`Scenario`] is a plain function over the global allocator, so it shows whatever allocator
//! the process runs with: the binaries in `src/bin/` use the system allocator and are meant to be
//! run under `LD_PRELOAD=libheaplens.so` (`heaplens record -- target/release/fragmentation`);
//! the viewer's demo runs the same functions in-process over heaplens as `#[global_allocator]`.
//!
//! A scenario calls its [`Params`]' `mark` at every phase boundary and sleeps its `pace` between
//! phases, so a live viewer can follow it; its short form (tests) runs in well under a second.
//! Every block it allocates is written (so its memory is touched) and, where cheap, checked
//! before it is freed.
#![allow(unsafe_code)] // only `marker`: looking up `hl_mark` with dlsym; every block says why it holds.

mod fragmentation;
mod large;
mod leak;
mod marker;
mod producer_consumer;
mod server;
mod thread_churn;
mod util;

use std::process::ExitCode;
use std::time::{Duration, Instant};

pub use marker::{hl_mark, preloaded};

/// The C scenario (`c/alloc_workload.c`, built by this crate's build script with the system C
/// compiler): threads allocating mixed sizes and handing blocks to each other, run under
/// `LD_PRELOAD`. Its argument is the steps per thread. None if no C compiler was found.
pub fn c_workload() -> Option<&'static str> {
    option_env!("HEAPLENS_C_WORKLOAD")
}

/// The live-viewing workload (`c/live_heavy.c`, built like [`c_workload`]): a million live
/// blocks replaced at a steady rate (arguments: live blocks, seconds, events per second). None if
/// no C compiler was found.
pub fn c_live_heavy() -> Option<&'static str> {
    option_env!("HEAPLENS_C_LIVE_HEAVY")
}

/// One scenario.
pub struct Scenario {
    /// Short name, also the binary's name: `"fragmentation"`, `"producer-consumer"`, ...
    pub name: &'static str,
    /// One line: `"Fragmentation: long-lived objects pin mostly-empty pages"`.
    pub title: &'static str,
    /// A few sentences: what happens and what to watch in the viewer.
    pub story: &'static str,
    /// Runs the scenario on the calling thread (it starts and joins its own threads).
    pub run: fn(&Params),
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .field("title", &self.title)
            .finish_non_exhaustive()
    }
}

/// How to run a scenario.
pub struct Params<'a> {
    /// The short form for tests: well under a second, fewer threads and iterations.
    pub short: bool,
    /// Called with a user marker at every phase boundary (`"phase: fill"`, ...), possibly from
    /// several threads. Labels are at most 64 bytes.
    pub mark: &'a (dyn Fn(&str) + Sync),
    /// Sleep between phases so a live viewer can follow (`Duration::ZERO` in tests). With a pace
    /// of a few hundred milliseconds the long form of a scenario takes 10 to 30 seconds.
    pub pace: Duration,
}

impl Params<'_> {
    /// Emits the marker `label`.
    pub(crate) fn mark(&self, label: &str) {
        (self.mark)(label);
    }

    /// Sleeps `factor` times the pace (nothing when the pace is zero).
    pub(crate) fn pause(&self, factor: f64) {
        if !self.pace.is_zero() {
            std::thread::sleep(self.pace.mul_f64(factor));
        }
    }

    /// Lets the event clock move past the marker just set, even at a pace of zero, so that the
    /// state it names lasts beyond the marker's clock tick (the collector moves the clock on
    /// every millisecond): a viewer that seeks to the marker's time shows that state, not what
    /// the next events of the same tick made of it.
    pub(crate) fn hold(&self) {
        std::thread::sleep(Duration::from_millis(2));
    }

    /// Waits until the allocator's deferred work (purging empty pages, ~10 ms; unmapping cached
    /// segments, ~100 ms) is due, at least `at_least` and at least the pace, then calls the
    /// allocator so that it runs.
    pub(crate) fn settle(&self, at_least: Duration) {
        std::thread::sleep(at_least.max(self.pace));
        util::nudge();
    }
}

/// The pace of the binaries' long form.
pub const DEFAULT_PACE: Duration = Duration::from_millis(500);

static SCENARIOS: [Scenario; 6] = [
    Scenario {
        name: "fragmentation",
        title: "Fragmentation: long-lived objects pin mostly-empty pages",
        story: fragmentation::STORY,
        run: fragmentation::run,
    },
    Scenario {
        name: "producer-consumer",
        title: "Producer-consumer: every free is a cross-thread free",
        story: producer_consumer::STORY,
        run: producer_consumer::run,
    },
    Scenario {
        name: "thread-churn",
        title: "Thread churn: exiting threads abandon their segments, others reclaim them",
        story: thread_churn::STORY,
        run: thread_churn::run,
    },
    Scenario {
        name: "server",
        title: "Server: worker threads with mixed sizes and lifetimes hand blocks around",
        story: server::STORY,
        run: server::run,
    },
    Scenario {
        name: "leak",
        title: "Leak: 1000 blocks of 200 B are never freed",
        story: leak::STORY,
        run: leak::run,
    },
    Scenario {
        name: "large",
        title: "Large and huge blocks: segments come and go, memory returns to the OS",
        story: large::STORY,
        run: large::run,
    },
];

/// Every scenario, in teaching order.
pub fn scenarios() -> &'static [Scenario] {
    &SCENARIOS
}

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

const USAGE: &str = "options: --short (quick form, no pauses)  --pace MS (sleep between phases)";

/// The `main` of a scenario binary: parses `--short` and `--pace MS`, prints the title and story,
/// runs the scenario with markers going to heaplens's `hl_mark` (when `libheaplens.so` is
/// preloaded) and to stdout. The pace is [`DEFAULT_PACE`], or zero with `--short`.
pub fn main_for(name: &str) -> ExitCode {
    let Some(scenario) = find(name) else {
        eprintln!("{name}: no such scenario");
        return ExitCode::from(2);
    };
    let mut short = false;
    let mut pace = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--short" => short = true,
            "--pace" => match args.next().and_then(|ms| ms.parse().ok()) {
                Some(ms) => pace = Some(Duration::from_millis(ms)),
                None => {
                    eprintln!("{name}: --pace needs a number of milliseconds\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!(
                    "{}\n\n{}\n\n{USAGE}",
                    scenario.title,
                    wrap(scenario.story, 96)
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("{name}: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let pace = pace.unwrap_or(if short { Duration::ZERO } else { DEFAULT_PACE });
    println!("{}\n\n{}\n", scenario.title, wrap(scenario.story, 96));
    if !preloaded() {
        println!("(libheaplens.so is not preloaded: markers go to stdout only)\n");
    }
    let start = Instant::now();
    let mark = |label: &str| {
        hl_mark(label);
        println!("[{:7.3} s] {label}", start.elapsed().as_secs_f64());
    };
    (scenario.run)(&Params {
        short,
        mark: &mark,
        pace,
    });
    println!("[{:7.3} s] {name}: done", start.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}

/// `text` with its words wrapped at `width` columns.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / width + 1);
    let mut col = 0;
    for word in text.split_whitespace() {
        if col > 0 && col + 1 + word.len() > width {
            out.push('\n');
            col = 0;
        } else if col > 0 {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += word.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn wrap_keeps_words_and_width() {
        let text = "one two three four five six seven eight nine ten";
        let w = wrap(text, 12);
        assert!(w.lines().all(|l| l.len() <= 12), "{w}");
        assert_eq!(w.split_whitespace().collect::<Vec<_>>().join(" "), text);
    }
}
