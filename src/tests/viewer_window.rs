//! The viewer in a real window: `heaplens view`, `heaplens run` and `heaplens demo` under Xvfb
//! (a virtual X display; `.ci/run` installs it), and the one-sentence answer without a display.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Display, heaplens, known_counts, root, tempdir};

/// Runs `cmd` on `display` for `secs`; returns whether it was still running (the window stayed
/// open), and its stderr.
fn runs_for(mut cmd: Command, display: &Display, secs: u64) -> (bool, String) {
    let mut child = cmd
        .env("DISPLAY", &display.name)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut alive = true;
    while start.elapsed() < Duration::from_secs(secs) {
        if child.try_wait().unwrap().is_some() {
            alive = false;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (alive, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn trace(name: &str) -> PathBuf {
    root().join("assets/traces").join(name)
}

#[test]
fn without_a_display_heaplens_says_so_and_points_to_record_and_stats() {
    for args in [vec!["demo"], vec!["view", "assets/traces/leak.hltrace"]] {
        let out = heaplens()
            .args(&args)
            .current_dir(root())
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains("no display"), "{args:?}: {err}");
        assert!(err.contains("heaplens record") && err.contains("heaplens stats"));
        assert_eq!(err.lines().count(), 1, "one sentence: {err}");
    }
}

#[test]
fn view_opens_a_window_on_a_trace() {
    let display =
        Display::start().expect("Xvfb is installed (Debian package xvfb; .ci/run installs it)");
    let mut cmd = heaplens();
    cmd.arg("view").arg(trace("producer-consumer.hltrace"));
    // Without a session's runtime directory, as under a bare X server: the window libraries
    // probe for Wayland and complain unless heaplens keeps them quiet.
    cmd.env_remove("XDG_RUNTIME_DIR")
        .env_remove("WAYLAND_DISPLAY");
    let (alive, err) = runs_for(cmd, &display, 4);
    assert!(alive, "the viewer stays open: {err}");
    assert!(err.is_empty(), "nothing on stderr that says nothing: {err}");
}

#[test]
fn demo_opens_a_window_and_runs_the_scenarios() {
    let display =
        Display::start().expect("Xvfb is installed (Debian package xvfb; .ci/run installs it)");
    let mut cmd = heaplens();
    cmd.arg("demo").arg("leak");
    let (alive, err) = runs_for(cmd, &display, 5);
    assert!(alive, "the demo stays open: {err}");
}

#[test]
fn run_watches_a_program_and_records_it() {
    let dir = tempdir("run");
    let exe = known_counts(&dir);
    let out = dir.join("run.hltrace");
    let display =
        Display::start().expect("Xvfb is installed (Debian package xvfb; .ci/run installs it)");
    let mut cmd = heaplens();
    cmd.arg("run").arg("--record").arg(&out).arg("--").arg(&exe);
    // The program exits at once; the window stays open on what it did.
    let (alive, err) = runs_for(cmd, &display, 4);
    assert!(
        alive,
        "the viewer stays open after the program exits: {err}"
    );
    let stats = heaplens()
        .args(["stats", "--json"])
        .arg(&out)
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("a complete trace");
    assert_eq!(s["exit"]["code"], 3);
    assert_eq!(s["complete"], true);
    assert!(s["allocs"].as_u64().unwrap() >= 1200);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A named pipe at `path`.
fn fifo(path: &std::path::Path) -> PathBuf {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
    path.to_owned()
}

/// What the program writes to the named pipe `path`, waiting for it until `deadline`: the read
/// ends when the program has opened, written and closed the pipe. Fails if that never comes.
fn read_fifo(path: &std::path::Path, what: &str, deadline: Duration) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_to_string(p));
    });
    match rx.recv_timeout(deadline) {
        Ok(text) => text.unwrap(),
        Err(_) => panic!("{what} did not happen within {deadline:?}"),
    }
}

#[test]
fn the_program_runs_on_when_the_viewer_goes_away() {
    let dir = tempdir("away");
    let started = fifo(&dir.join("started"));
    let done = fifo(&dir.join("done"));
    let killed = dir.join("killed");
    let display =
        Display::start().expect("Xvfb is installed (Debian package xvfb; .ci/run installs it)");
    // The program (a shell, traced: it streams its allocations to the viewer) says when it
    // streams, goes on allocating until the test says the viewer is dead, then works on and
    // says it finished. Each step is an event the test waits for, not a time.
    let script = format!(
        "x=$(echo streaming); echo started > {started}; \
         i=0; while [ ! -e {killed} ] && [ $i -lt 100000 ]; do i=$((i+1)); x=$(echo $i); done; \
         i=0; while [ $i -lt 20 ]; do i=$((i+1)); x=$(echo $i); done; echo ok > {done}",
        started = started.display(),
        killed = killed.display(),
        done = done.display(),
    );
    let mut viewer = heaplens()
        .args(["run", "--", "sh", "-c", &script])
        .env("DISPLAY", &display.name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Duration::from_secs(60);
    assert_eq!(
        read_fifo(&started, "the program starting to stream", deadline).trim(),
        "started"
    );
    // Harsher than closing the window: the viewer dies while the program streams to it.
    viewer.kill().unwrap();
    viewer.wait().unwrap();
    std::fs::write(&killed, b"").unwrap();
    let out = read_fifo(
        &done,
        "the program finishing after the viewer died",
        deadline,
    );
    assert_eq!(
        out.trim(),
        "ok",
        "the program finished its work after the viewer went away"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_follow_fork_records_every_process_and_view_opens_the_picker_on_them() {
    let dir = tempdir("run-follow");
    known_counts(&dir);
    let out = dir.join("rec");
    let display =
        Display::start().expect("Xvfb is installed (Debian package xvfb; .ci/run installs it)");
    let mut viewer = heaplens()
        .current_dir(&dir)
        .args(["run", "--follow-fork", "--record"])
        .arg(&out)
        .args(["--", "sh", "-c", "./known_counts; true"])
        .env("DISPLAY", &display.name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The traces are finished once the command is over, while the window stays open on the
    // program: wait for the program's trace to be complete (or the deadline).
    let deadline = Instant::now() + Duration::from_secs(60);
    let programs = loop {
        let stats = heaplens()
            .args(["stats", "--json"])
            .arg(&out)
            .output()
            .unwrap();
        let all: Option<Vec<serde_json::Value>> = serde_json::from_slice(&stats.stdout).ok();
        let done = all.filter(|all| all.len() == 2 && all.iter().all(|s| s["complete"] == true));
        if let Some(all) = done {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "the traces were not finished: {}",
            String::from_utf8_lossy(&stats.stderr)
        );
        assert!(
            viewer.try_wait().unwrap().is_none(),
            "the viewer stays open"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = viewer.kill();
    let _ = viewer.wait();
    let prog = programs
        .iter()
        .find(|s| s["command"][0] == "./known_counts")
        .expect("the program run by the shell");
    assert!(prog["allocs"].as_u64().unwrap() >= 1200, "{prog}");

    let mut cmd = heaplens();
    cmd.arg("view").arg(&out);
    let (alive, err) = runs_for(cmd, &display, 4);
    assert!(alive, "the picker stays open: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}
