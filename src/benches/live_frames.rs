//! `heaplens run` on real programs, headless: the program runs with `libheaplens.so` preloaded
//! and streams over the socket as under `heaplens run`; its batches reach a live source through
//! the same bounded channel (dropped and counted when full); the viewer draws frames in
//! egui_kittest at 60 per second, cycling through the tabs (a click on the next tab's button
//! spread over three frames, one input event each, as in a window). Printed against the 16 ms
//! frame budget: frame time p50/p99/max (all frames and per tab), the part of it spent waiting
//! for the ingest thread's slice of the model, events ingested per second, how far the view was
//! behind the program (the status line's lag), and events lost.
//!
//! Programs: `c/live_heavy.c` (a million live blocks, 4 M events/s for 6 s) and an
//! allocation-heavy Python script (`PYTHONMALLOC=malloc`, so every object is a `malloc`), or the
//! command in `HEAPLENS_BENCH_LIVE_CMD` (split at spaces).
//!
//! `cargo bench -p heaplens --bench live_frames` (needs `cargo build --release -p
//! heaplens-preload` first for `libheaplens.so`).

use heaplens_viewer::backlog;
#[path = "../launch.rs"]
#[allow(dead_code)]
mod launch;
#[path = "../packed.rs"]
mod packed;
#[path = "../quiet.rs"]
#[allow(dead_code)]
mod quiet;
#[path = "../reap.rs"]
mod reap;
#[path = "../slab.rs"]
mod slab;
#[path = "../tap.rs"]
#[allow(dead_code)]
mod tap;
#[path = "../wake.rs"]
mod wake;

use std::ffi::OsString;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use heaplens_viewer::source::{Feed, Live, Status};
use heaplens_viewer::ui::{App, Source, WINDOW_SIZE};

const FRAME_BUDGET_MS: f64 = 16.0;
/// Frames per tab before the next.
const FRAMES_PER_TAB: usize = 30;
/// Batches the viewer may fall behind by (as `heaplens run`).
const VIEWER_BACKLOG: usize = 1024;
const TABS: [&str; 6] = [
    "Overview",
    "Segment map",
    "Heaps",
    "Free lists",
    "Events",
    "Sites",
];

const PYTHON: &str = r"
import random, time
random.seed(7)
live = [(i, str(i)) for i in range(500000)]
end = time.monotonic() + 6
n = 0
while time.monotonic() < end:
    for _ in range(20000):
        k = random.randrange(len(live))
        live[k] = (k, str(k))
    n += 20000
print(n)
";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn summary(times: &mut [f64]) -> String {
    times.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        percentile(times, 0.5),
        percentile(times, 0.99),
        times.last().copied().unwrap_or(0.0),
    );
    format!(
        "p50 {p50:5.2} ms, p99 {p99:6.2} ms, max {max:6.2} ms ({} frames) -> p99 {:.2} of the \
         {FRAME_BUDGET_MS} ms budget",
        times.len(),
        p99 / FRAME_BUDGET_MS
    )
}

fn watch(name: &str, command: &[OsString], env: &[(&str, String)]) {
    println!("{name}: {}", command_line(command));
    let launched = match launch::launch(
        command,
        Duration::from_secs(30),
        env,
        launch::BACKLOG_BYTES,
        false,
    ) {
        Ok(l) => l,
        Err(e) => {
            println!("  cannot start it: {e}");
            return;
        }
    };
    let started = Instant::now();
    let (tx, rx) = bounded(VIEWER_BACKLOG);
    let live = Live::start(rx, name);
    let pid = launched.pid;
    let frames = launched.frames;
    let exit = launched.exit;
    let pump = std::thread::spawn(move || {
        // As `heaplens run` has it: the program's latest connection (the real interpreter
        // after a pyenv shim's `exec`s), copied out of the frame for the viewer.
        let mut tap = tap::Tap::new(&tx);
        let mut program = tap::Program::new(pid);
        let mut events = 0u64;
        for frame in &frames {
            if let Some((heap, e)) = program.batch(&frame) {
                events += e.len() as u64;
                tap.send(heap, e.clone());
            }
        }
        let status = exit
            .join()
            .ok()
            .and_then(Result::ok)
            .and_then(|(s, _)| s.code())
            .unwrap_or(-1);
        let _ = tx.send(Feed::Status(Status::Exited(
            heaplens_viewer::trace::ExitStatus::Code(status),
        )));
        events
    });
    let mut h = Harness::builder()
        .with_size(WINDOW_SIZE)
        .build_eframe(|_| App::new(Source::Live(live), name));
    let live_of = |h: &Harness<'_, App>| -> (u64, Option<u64>, u64, u64, bool) {
        match h.state().source() {
            Source::Live(l) => {
                let v = l.view();
                let exited = matches!(v.status, Status::Exited(_) | Status::Ended(_));
                (
                    v.applied,
                    v.behind_ns,
                    v.model.totals().dropped,
                    v.model.current().live_blocks,
                    exited && l.is_finished(),
                )
            }
            Source::Replay(_) => (0, None, 0, 0, true),
        }
    };
    let mut all = Vec::new();
    let mut per_tab: Vec<Vec<f64>> = vec![Vec::new(); TABS.len()];
    let mut lags = Vec::new();
    let mut waits = Vec::new();
    let mut peak_live = 0;
    let mut frame = 0usize;
    let (mut first_applied, mut first_at) = (None, started);
    let mut last = (0u64, started);
    loop {
        let tab = (frame / FRAMES_PER_TAB) % TABS.len();
        // The next tab's button is clicked over three frames, one input event each: the pointer
        // arrives, presses, and (on this tab's first frame) releases, which switches the tab.
        // `Harness::step` runs a whole frame per queued event, so `Node::click` (all three at
        // once) would time three frames as one: the new tab's first frame counted with the two
        // before it, which draw the old tab (for the Heaps tab: two Segment map frames). In a
        // window, too, the press and the release of a click come in different frames.
        let next = (tab + 1) % TABS.len();
        match frame % FRAMES_PER_TAB {
            n if n == FRAMES_PER_TAB - 2 => h.get_by_label(TABS[next]).hover(),
            n if n == FRAMES_PER_TAB - 1 => press(&h, TABS[next], true),
            0 if frame > 0 => press(&h, TABS[tab], false),
            _ => {}
        }
        let due = Instant::now() + Duration::from_secs_f64(1.0 / 60.0);
        // The part of a frame spent waiting for the ingest thread's slice: taking the lock as
        // the frame does, and letting it go at once.
        if let Source::Live(l) = h.state().source() {
            let start = Instant::now();
            drop(l.view());
            waits.push(start.elapsed().as_secs_f64() * 1e3);
        }
        let start = Instant::now();
        h.step();
        let ms = start.elapsed().as_secs_f64() * 1e3;
        frame += 1;
        let (applied, behind, _, live_blocks, done) = live_of(&h);
        peak_live = peak_live.max(live_blocks);
        if applied > 0 {
            all.push(ms);
            per_tab[tab].push(ms);
            if let Some(ns) = behind {
                lags.push(ns as f64 / 1e6);
            }
            if first_applied.is_none() {
                first_applied = Some(applied);
                first_at = Instant::now();
            }
            if applied > last.0 {
                last = (applied, Instant::now());
            }
        }
        if done || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    let sent = pump.join().unwrap_or(0);
    let (applied, _, dropped, _, _) = live_of(&h);
    let span = last.1.duration_since(first_at).as_secs_f64().max(1e-3);
    let rate = (last.0 - first_applied.unwrap_or(0)) as f64 / span;
    println!(
        "  program streamed {sent} events; the view applied {applied} ({:.2} M events/s while it \
         ran), lost {dropped}; up to {peak_live} live blocks",
        rate / 1e6
    );
    println!("  all tabs       {}", summary(&mut all));
    for (name, times) in TABS.iter().zip(per_tab.iter_mut()) {
        println!("  {name:<14} {}", summary(times));
    }
    waits.sort_by(f64::total_cmp);
    println!(
        "  of which waiting for the model's lock (an ingest slice): p50 {:.2} ms, p99 {:.2} ms, \
         max {:.2} ms",
        percentile(&waits, 0.5),
        percentile(&waits, 0.99),
        waits.last().copied().unwrap_or(0.0)
    );
    lags.sort_by(f64::total_cmp);
    println!(
        "  behind the program: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0.0)
    );
}

/// Presses or releases the primary button on the widget labelled `label`.
fn press(h: &Harness<'_, App>, label: &str, pressed: bool) {
    h.event(egui::Event::PointerButton {
        pos: h.get_by_label(label).rect().center(),
        button: egui::PointerButton::Primary,
        pressed,
        modifiers: egui::Modifiers::default(),
    });
}

fn command_line(c: &[OsString]) -> String {
    c.iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    if std::env::var_os("HEAPLENS_PRELOAD").is_none() {
        // The benchmark runs from target/release/deps; the library is one level up.
        let lib = std::env::current_exe()
            .ok()
            .and_then(|e| Some(e.parent()?.parent()?.join("libheaplens.so")));
        if let Some(lib) = lib.filter(|l| l.is_file()) {
            // SAFETY: no other thread exists yet.
            #[allow(unsafe_code)]
            unsafe {
                std::env::set_var("HEAPLENS_PRELOAD", lib);
            }
        } else {
            println!("libheaplens.so not found: cargo build --release -p heaplens-preload");
            return;
        }
    }
    if let Ok(cmd) = std::env::var("HEAPLENS_BENCH_LIVE_CMD") {
        let command: Vec<OsString> = cmd.split_whitespace().map(OsString::from).collect();
        watch("command", &command, &[]);
        return;
    }
    match heaplens_sample_apps::c_live_heavy() {
        Some(exe) => watch(
            "c/live_heavy.c",
            &[exe.into(), "1000000".into(), "6".into(), "4000000".into()],
            &[],
        ),
        None => println!("c/live_heavy.c was not built (no C compiler)"),
    }
    let script = std::env::temp_dir().join(format!("heaplens-live-{}.py", std::process::id()));
    if std::fs::write(&script, PYTHON).is_ok() {
        watch(
            "python3",
            &["python3".into(), script.clone().into()],
            &[("PYTHONMALLOC", "malloc".to_owned())],
        );
        let _ = std::fs::remove_file(&script);
    }
}
