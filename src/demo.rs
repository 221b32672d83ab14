//! `heaplens` / `heaplens demo [NAME]`: the live demo. The scenarios of heaplens-sample-apps run
//! on threads of this process, on the heaplens allocator (this program's global allocator); the
//! collector's in-process subscription feeds the viewer. The viewer's own threads are left
//! untraced, so what the window shows is the workload.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use heaplens_alloc::collector::{self, Config};
use heaplens_alloc::hook;
use heaplens_sample_apps::{Params, Scenario, find, scenarios};
use heaplens_viewer::source::Live;
use heaplens_viewer::ui::{self, App, Source};

static STOP: AtomicBool = AtomicBool::new(false);

/// Runs the demo until the window closes.
pub fn run(
    name: Option<&str>,
    stacks: &crate::sites::StackArgs,
) -> Result<i32, Box<dyn std::error::Error>> {
    if name == Some("c-program") {
        // The C scenario runs as its own process, preloaded, watched over the socket.
        let exe = heaplens_sample_apps::c_workload()
            .ok_or("the C scenario was not built (no C compiler when heaplens was built)")?;
        return crate::run::run(None, &[exe.into(), "400000".into()], stacks, false);
    }
    // In this process stacks are switched on through `heaplens_alloc::set_stack_mode`, which
    // the allocator's stack capture adds (issue 11); until it exists the in-process scenarios
    // run without stacks, whatever `--stacks` says.
    let _ = stacks;
    let chosen: Vec<&'static Scenario> = match name {
        Some(n) => vec![find(n).ok_or_else(|| {
            let names: Vec<_> = scenarios().iter().map(|s| s.name).collect();
            format!(
                "no scenario named '{n}'; there are: {}, c-program",
                names.join(", ")
            )
        })?],
        None => scenarios().iter().collect(),
    };
    if !ui::display_available() {
        return Err(crate::NO_DISPLAY.into());
    }
    // Only the scenarios' threads are watched: they opt in (heaplens_sample_apps spawns its
    // threads traced); the UI's threads, the toolkit's and ours stay out of the picture.
    // Nothing is dropped on the way to the model (the scenarios wait for the viewer when it
    // falls behind), so every census of the demo can agree with it.
    hook::trace_new_threads(false);
    hook::set_thread_traced(false);
    let rx = collector::subscribe_lossless(
        Config {
            lossless: true,
            census_every_ms: 500,
            channel_buffers: 64,
        },
        4096,
    )
    .map_err(|e| format!("cannot start the event collector: {e}"))?;
    let what = match name {
        Some(n) => format!("demo: {n}"),
        None => "demo: every scenario in turn".to_owned(),
    };
    std::thread::Builder::new().name("demo".into()).spawn({
        let chosen = chosen.clone();
        move || workload(&chosen)
    })?;
    let stories = chosen
        .iter()
        .map(|s| (s.name.to_owned(), s.title.to_owned(), s.story.to_owned()))
        .collect();
    let app = App::new(Source::Live(Live::start(rx, "this process")), what).with_stories(stories);
    ui::run(app)?;
    STOP.store(true, Ordering::Relaxed);
    Ok(0)
}

/// Runs the scenarios one after another, over and over, until the window closes.
fn workload(chosen: &[&'static Scenario]) {
    hook::set_thread_traced(true);
    let mark = |label: &str| hook::mark(label);
    while !STOP.load(Ordering::Relaxed) {
        for s in chosen {
            if STOP.load(Ordering::Relaxed) {
                return;
            }
            hook::mark(s.name);
            (s.run)(&Params {
                short: false,
                mark: &mark,
                pace: Duration::from_millis(300),
            });
        }
    }
}
