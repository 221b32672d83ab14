//! `heaplens run [--record FILE] -- CMD [ARGS...]`: launch CMD with heaplens preloaded and watch
//! it live in the viewer; with `--record`, also write every event to a trace.
//!
//! The program's stream is read on a thread of its own: the trace (when recording) gets every
//! event; the viewer gets them through a bounded channel, and when it falls behind the batches
//! it misses are counted and shown as lost (the next census puts the model right), so a slow
//! window never slows the program. Closing the window never harms the program: without
//! `--record` heaplens exits and the program runs on untraced (its hook sees the socket close);
//! with it, heaplens keeps recording until the program exits.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{Sender, bounded};
use heaplens_alloc::stats::Bytes;
use heaplens_viewer::source::{Feed, Live, Status};
use heaplens_viewer::ui::picker::{Picker, ProcessRow};
use heaplens_viewer::ui::{self, App, Source};

use crate::launch::{self, Exit, Launched};
use crate::processes::{Finished, Processes};
use crate::quiet::say;
use crate::tap::{Program, Tap};

/// Batches the viewer may fall behind by before it misses some.
const VIEWER_BACKLOG: usize = 1024;

/// Runs; returns the exit code heaplens should end with. With `follow` (`--follow-fork`), every
/// process of the command is recorded into the folder `record`; the viewer watches the program.
pub fn run(
    record: Option<&Path>,
    command: &[OsString],
    stacks: &crate::sites::StackArgs,
    follow: bool,
) -> Result<i32, Box<dyn std::error::Error>> {
    if !ui::display_available() {
        return Err(crate::NO_DISPLAY.into());
    }
    if let Some(out) = record {
        crate::processes::prepare_output(out, follow)?;
    }
    let launched = launch::launch(
        command,
        Duration::from_secs(10),
        &stacks.env(),
        launch::BACKLOG_BYTES,
        follow,
    )?;
    let what = command
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let pid = launched.pid;
    let (tx, rx) = bounded(VIEWER_BACKLOG);
    let live = Live::start(rx, &format!("{what} (pid {pid})"));
    let processes = record.map(|out| Processes::new(out, follow, pid, launched.recycle.clone()));
    let output = record.map(Path::to_owned);
    let pump = std::thread::Builder::new()
        .name("heaplens-pump".into())
        .spawn(move || pump(launched, processes, &tx))?;
    ui::run(App::new(Source::Live(live), what))?;
    if !pump.is_finished() {
        if output.is_none() {
            say!("viewer closed; pid {pid} runs on without heaplens watching");
            return Ok(0);
        }
        say!("viewer closed; recording pid {pid} until it exits");
    }
    let (exit, finished) = pump.join().map_err(|_| "the stream reader failed")??;
    if let Some(finished) = finished {
        for w in &finished.written {
            say!(
                "pid {} ({}): {} events -> {}",
                w.pid,
                w.command,
                w.events,
                w.path.display()
            );
        }
        if let Some(note) = finished.unrecorded_note() {
            say!("{note}");
        }
    }
    Ok(exit.shell_code())
}

/// Reads the streams into the recorder and the program's into the viewer; returns how the
/// program ended and what was recorded.
fn pump(
    launched: Launched,
    mut processes: Option<Processes>,
    tx: &Sender<Feed>,
) -> Result<(Exit, Option<Finished>), String> {
    let mut tap = Tap::new(tx);
    let mut program = Program::new(launched.pid);
    let frames = &launched.frames;
    for frame in frames {
        if let Some((heap, events)) = program.batch(&frame) {
            tap.send(heap, events.clone());
        }
        if let Some(p) = processes.as_mut() {
            p.take(frame);
        }
    }
    finish(launched, processes, tx)
}

/// Once the streams have ended: waits for the program, tells the viewer how it ended, and
/// finishes the traces.
fn finish(
    launched: Launched,
    processes: Option<Processes>,
    tx: &Sender<Feed>,
) -> Result<(Exit, Option<Finished>), String> {
    let (status, _) = launched
        .exit
        .join()
        .map_err(|_| "waiting for the program failed".to_owned())?
        .map_err(|e| e.to_string())?;
    let exit = Exit::from_status(status);
    if let Some(note) = launched.frames.damage().note() {
        crate::quiet::say!("{note}");
    }
    let _ = tx.send(Feed::Status(Status::Exited(crate::record::exit_status(
        exit,
    ))));
    let finished = match processes {
        Some(p) => Some(p.finish(crate::record::exit_status(exit))?),
        None => None,
    };
    Ok((exit, finished))
}

/// `heaplens view FILE`, or a folder recorded with `--follow-fork`: the process picker, or with
/// `pid` that process.
pub fn view(
    file: &PathBuf,
    diff: Option<&std::path::Path>,
    pid: Option<u32>,
) -> Result<i32, Box<dyn std::error::Error>> {
    if file.is_dir() {
        let processes = crate::tracedir::select(file, pid)?;
        if let [one] = processes.as_slice() {
            return view(&one.path, diff, None);
        }
        if diff.is_some() {
            return Err("--diff compares two traces: pick the process with --pid".into());
        }
        if !ui::display_available() {
            return Err(crate::NO_DISPLAY.into());
        }
        let rows = processes
            .into_iter()
            .map(|p| ProcessRow {
                pid: p.pid,
                parent_pid: p.parent_pid,
                command: p.command_line(),
                events: p.events,
                path: p.path,
            })
            .collect();
        ui::run_picker(Picker::new(file.display().to_string(), rows))?;
        return Ok(0);
    }
    say_first_opening(file);
    let replay = heaplens_viewer::source::Replay::open(file)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    if let Err(e) = store_keyframes(&replay, file) {
        say!("{e}; seeking works, but its next opening goes through its events again");
    }
    let name_of = |p: &std::path::Path| {
        p.file_name().map_or_else(
            || p.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    };
    let baseline = match diff {
        Some(base) => {
            let mut sym = heaplens_viewer::symbols::Symbolizer::new();
            let snap =
                crate::diff::snapshot_at(base, &heaplens_viewer::export::Position::End, &mut sym)?;
            Some((name_of(base), snap))
        }
        None => None,
    };
    if !ui::display_available() {
        return Err(crate::NO_DISPLAY.into());
    }
    let mut app = App::new(Source::Replay(Box::new(replay)), name_of(file));
    if let Some((name, snap)) = baseline {
        app.state.sites.set_baseline(name, snap);
        app.state.tab = heaplens_viewer::ui::Tab::Sites;
    }
    ui::run(app)?;
    Ok(0)
}

/// Says, before a long opening, why it takes a while: a trace whose keyframes (none, as
/// `heaplens record` writes it) stop millions of events before its end.
fn say_first_opening(file: &Path) {
    let Ok(reader) = heaplens_viewer::trace::TraceReader::open(file) else {
        return; // the opening itself says what is wrong
    };
    let total = reader.total_events();
    let from = reader.keyframes().last().map_or(0, |k| k.event_index);
    if total - from.min(total) >= 4_000_000 {
        say!(
            "opening {}: replaying its {} events after its last keyframe (the first opening \
             of a recording adds keyframes to it for seeking)",
            file.display(),
            total - from.min(total)
        );
    }
}

/// `heaplens index FILE`: opens the trace as the viewer does (making the keyframes it lacks) and
/// adds them to it.
pub fn index(file: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let start = std::time::Instant::now();
    let replay = heaplens_viewer::source::Replay::open(file)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    if replay.built_keyframes().is_empty() {
        say!(
            "{}: {} events; no keyframes to add (it has them, or it is short, or its model is \
             too large against its events for one to pay: a keyframe takes at most an eighth of \
             the bytes of the events before it)",
            file.display(),
            replay.total_events()
        );
        return Ok(());
    }
    say!(
        "{}: went through {} events in {:.2} s",
        file.display(),
        replay.total_events(),
        start.elapsed().as_secs_f64()
    );
    store_keyframes(&replay, file).map_err(Into::into)
}

/// Adds the keyframes the replay made on opening to the trace, so that the next opening starts
/// from the last of them, and says so; an error says why it could not (read-only, not a
/// finished trace).
pub fn store_keyframes(
    replay: &heaplens_viewer::source::Replay,
    file: &Path,
) -> Result<(), String> {
    let built = replay.built_keyframes();
    let Some(last) = built.last() else {
        return Ok(());
    };
    match replay.store_keyframes(file) {
        Ok(heaplens_viewer::trace::Appended::Added { keyframes, bytes }) => {
            say!(
                "added {keyframes} keyframes (up to event {}, {}) to {} for seeking; it opens \
                 at once from now on",
                last.event_index,
                Bytes(usize::try_from(bytes).unwrap_or(usize::MAX)),
                file.display()
            );
            Ok(())
        }
        Ok(heaplens_viewer::trace::Appended::NothingToAdd) => Ok(()),
        Err(e) => Err(format!(
            "could not add the {} keyframes made on opening to {}: {e}",
            built.len(),
            file.display()
        )),
    }
}

/// `heaplens learn [SCENARIO]`: the recorded scenario with its guided tour, from the recordings
/// built into heaplens (no files, nothing to run).
pub fn learn(scenario: &str) -> Result<i32, Box<dyn std::error::Error>> {
    let Some(tour) = heaplens_viewer::teach::tour(scenario) else {
        let names: Vec<_> = heaplens_viewer::teach::TOURS
            .iter()
            .map(|t| t.scenario)
            .collect();
        return Err(format!(
            "no tour named '{scenario}'; there are: {}",
            names.join(", ")
        )
        .into());
    };
    if !ui::display_available() {
        return Err(crate::NO_DISPLAY.into());
    }
    let path = heaplens_viewer::teach::trace_file(scenario)?;
    let replay = heaplens_viewer::source::Replay::open(&path)?;
    let app = App::new(
        Source::Replay(Box::new(replay)),
        format!("tour: {}", tour.title),
    )
    .with_tour(scenario);
    ui::run(app)?;
    let _ = std::fs::remove_file(&path);
    Ok(0)
}
