//! The model's invariants (`heaplens_viewer::model::invariants`) hold at every sample of a live
//! demo run: the scenarios of `heaplens-sample-apps` run one after another on a traced thread of
//! this process, on the heaplens allocator, with the collector's in-process subscription set up
//! as `heaplens demo` (`cargo run --release`) sets it up (lossless; but a census every 20 ms), and
//! the model takes the events as they arrive, as the viewer's ingest thread does. Checked at every
//! sample (the invariants that hold in any event order), at each census that agrees with the
//! model and at the end (all of them).

use std::time::Duration;

use heaplens_alloc::batch::{Batch, Message};
use heaplens_alloc::collector::{self, Config};
use heaplens_alloc::event::{Event, EventKind, drop_reason, flags};
use heaplens_alloc::hook;
use heaplens_sample_apps::{Params, scenarios};
use heaplens_viewer::model::{Model, Point};

#[global_allocator]
static GLOBAL: heaplens_alloc::HeapLens = heaplens_alloc::HeapLens;

/// The demo takes a census every 500 ms; the short forms of the scenarios run in about a
/// second here, so the test takes them more often to check more points of the run.
const CENSUS_EVERY_MS: u64 = 20;

/// What one live demo run found: the violations at samples and at settled points.
struct Found {
    at_samples: Vec<String>,
    at_settled: Vec<String>,
    /// The censuses that disagreed with the model, with their first differences.
    disagreeing: Vec<String>,
    /// Censuses compared, and of them the ones that agreed.
    tally: heaplens_viewer::model::CensusTally,
    /// Every batch as the model took it: (heap, events).
    stream: Vec<(u32, Vec<Event>)>,
}

/// The live demo run, once per process (the collector runs once), shared by the tests.
fn live_demo_run() -> &'static Found {
    static FOUND: std::sync::OnceLock<Found> = std::sync::OnceLock::new();
    FOUND.get_or_init(run)
}

fn run() -> Found {
    // As `heaplens demo`: only the scenarios' threads are traced, and nothing is dropped on
    // the way to the model (the threads wait for the collector, the collector for the model).
    hook::trace_new_threads(false);
    hook::set_thread_traced(false);
    let rx = collector::subscribe_lossless(
        Config {
            lossless: true,
            census_every_ms: CENSUS_EVERY_MS,
            channel_buffers: 64,
        },
        4096,
    )
    .expect("the collector starts");
    let workload = std::thread::Builder::new()
        .name("demo".into())
        .spawn(|| {
            hook::set_thread_traced(true);
            let mark = |label: &str| hook::mark(label);
            for s in scenarios() {
                hook::mark(s.name);
                (s.run)(&Params {
                    short: true,
                    mark: &mark,
                    pace: Duration::ZERO,
                });
            }
            // Idle past a census request, as the demo's thread can be when it stops: the part
            // it owes comes before its pages leave the picture.
            std::thread::sleep(Duration::from_millis(3 * CENSUS_EVERY_MS));
            hook::set_thread_traced(false);
        })
        .unwrap();
    let mut m = Model::new();
    m.set_auto_resync(true);
    let (mut samples, mut settled, mut censuses) = (0u64, 0u64, 0u64);
    let (mut report, mut settled_report) = (Vec::new(), Vec::new());
    let mut shut = false;
    let mut stream = Vec::new();
    let mut disagreeing = Vec::new();
    let mut last_check: Option<heaplens_viewer::model::CensusCheck> = None;
    let mut note = |c: Option<heaplens_viewer::model::CensusCheck>| {
        if let Some(c) = c
            && c.compared()
            && c.mismatches > 0
        {
            let first: Vec<String> = c.first.iter().take(4).map(ToString::to_string).collect();
            disagreeing.push(format!(
                "census {}: {} differences ({} heap parts): {}",
                c.number,
                c.mismatches,
                c.heap_parts,
                first.join("; ")
            ));
        }
    };
    loop {
        // Censuses keep coming after the scenarios end: stop once they have.
        if workload.is_finished() && !shut {
            shut = true;
            std::thread::spawn(collector::shutdown);
        }
        let msg = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(msg) => msg,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        let (heap, events) = match msg {
            Message::Batch(Batch { heap, events }) => (heap, events),
            Message::Meta(_) | Message::Exit(_) => continue,
            Message::End => break,
        };
        stream.push((heap, events.clone()));
        for e in &events {
            if m.sample_due(e.time) {
                samples += 1;
                for v in m.check_invariants(Point::AnySample).into_iter().take(3) {
                    report.push(format!("at {} ns: {v}", m.time()));
                }
            }
            m.apply(heap, e);
            if e.kind == EventKind::CensusEnd as u8
                && let Some(c) = m.last_census_check()
                && last_check.as_ref().is_some_and(|l| l.number != c.number)
            {
                note(last_check.take());
            }
            if e.kind == EventKind::CensusEnd as u8 {
                last_check = m.last_census_check().cloned();
            }
            if e.kind == EventKind::CensusEnd as u8 && m.totals().censuses != censuses {
                censuses = m.totals().censuses;
                // A census the collector read whole, at a quiet point, is a settled point; one
                // the heaps take in parts while the others run on is not (another thread's
                // free of a block collected before the part can still be on its way).
                if m.last_census_check()
                    .is_some_and(|c| c.mismatches == 0 && !c.by_heap)
                {
                    settled += 1;
                    for v in m.check_invariants(Point::Settled).into_iter().take(3) {
                        settled_report.push(format!("at census {censuses}: {v}"));
                    }
                }
            }
        }
    }
    workload.join().expect("the scenarios ran");
    note(last_check.take());
    m.finish();
    for v in m.check_invariants(Point::Settled).into_iter().take(3) {
        settled_report.push(format!("at the end: {v}"));
    }
    let tally = m.census_tally();
    eprintln!(
        "live demo run: {} events, {samples} samples, {censuses} censuses ({settled} agreeing \
         checked; {} compared, {} agreeing, {} by heap), {} events dropped",
        m.totals().events,
        tally.censuses,
        tally.agreeing,
        tally.by_heap,
        m.totals().dropped
    );
    assert_eq!(m.totals().dropped, 0, "a lossless run lost events");
    assert!(samples >= 10, "only {samples} samples checked");
    assert!(censuses >= 2, "only {censuses} censuses");
    Found {
        at_samples: report,
        at_settled: settled_report,
        disagreeing,
        tally: m.census_tally(),
        stream,
    }
}

#[test]
fn invariants_hold_at_every_sample_of_a_live_demo_run() {
    let found = live_demo_run();
    assert!(
        found.at_samples.is_empty(),
        "{}",
        found.at_samples.join("\n")
    );
}

/// At every whole census that agrees (read by the collector at a quiet point) and at the end,
/// all the invariants hold. (It once failed about one run in three: a page ended with
/// `thread_free` at -12, frees of its blocks by threads the trace did not follow, now
/// reported. It also checked at the censuses the heaps take in parts, which are not settled
/// points: 4 runs in 6 failed there with `thread_free` at -1, a collect applied before the
/// cross-thread free it collected.)
#[test]
fn all_invariants_hold_at_settled_points_of_a_live_demo_run() {
    let found = live_demo_run();
    assert!(
        found.at_settled.is_empty(),
        "{}",
        found.at_settled.join("\n")
    );
}

/// Every census of the run, those taken by the heaps while the scenarios ran and the
/// collector's first and last, agrees with the model exactly (issue 12, item 1).
#[test]
fn every_census_of_a_live_demo_run_agrees() {
    let found = live_demo_run();
    assert!(
        found.disagreeing.is_empty(),
        "{} of {} censuses disagree:\n{}",
        found.disagreeing.len(),
        found.tally.censuses,
        found.disagreeing.join("\n")
    );
    assert!(
        found.tally.by_heap >= 2,
        "only {} censuses taken by the heaps were compared",
        found.tally.by_heap
    );
}

/// The same run as `heaplens run` shows it when the viewer falls behind: a stretch of batches
/// is lost (the reader drops them and sends a `Dropped` note before the next one that fits).
/// Each heap's next census part resets its pages; from the census at which every heap has
/// reported on, the model agrees with every census again.
struct AfterLoss {
    /// Census checks after the loss that disagreed (after a reset, for a whole census).
    disagreeing: Vec<String>,
    /// Differences between the last census and the model just before it, on pages the model
    /// was sure of (set from their heap's part since the loss).
    sure_but_wrong: Vec<String>,
    /// Invariants of a settled point that failed just before the last census, on pages the
    /// model was sure of (and the whole-model ones, if it was sure of every page).
    settled_violations: Vec<String>,
    /// Invariants that hold in any event order, failed at a sample after the loss.
    at_samples: Vec<String>,
}

/// Replays the run with a stretch of batches lost, once.
fn after_loss() -> &'static AfterLoss {
    static AFTER: std::sync::OnceLock<AfterLoss> = std::sync::OnceLock::new();
    AFTER.get_or_init(replay_with_loss)
}

fn replay_with_loss() -> AfterLoss {
    let found = live_demo_run();
    let n = found.stream.len();
    let (from, to) = (n / 3, n / 3 + n / 20 + 1);
    let loss_time = found.stream[from].1.first().map_or(0, |e| e.time);
    let mut m = Model::new();
    m.set_auto_resync(true);
    let (mut missed, mut missed_until, mut lost_batches) = (0u64, 0u64, 0usize);
    let mut after_loss: Vec<String> = Vec::new();
    let mut at_samples: Vec<String> = Vec::new();
    let (mut checked, mut resynced) = (0usize, 0usize);
    let mut last: Option<(u32, u32)> = None;
    // Heaps that sent a census part since the loss (their pages are set from it).
    let mut reported: std::collections::HashSet<u32> = std::collections::HashSet::new();
    // The model just before the last whole census was applied.
    let mut before_last: Option<Model> = None;
    for (i, (heap, events)) in found.stream.iter().enumerate() {
        if (from..to).contains(&i) {
            missed += events.len() as u64;
            missed_until = events.iter().map(|e| e.time).fold(missed_until, u64::max);
            lost_batches += 1;
            continue;
        }
        if missed > 0 {
            let note = Event {
                kind: EventKind::Dropped as u8,
                aux: drop_reason::SUBSCRIBER,
                arg: missed,
                // As `heaplens run`'s tap stamps it: the latest time among the lost events.
                time: missed_until,
                ..Event::default()
            };
            m.apply(0, &note);
            (missed, missed_until) = (0, 0);
        }
        for e in events {
            if i >= to && m.sample_due(e.time) {
                for v in m.check_invariants(Point::AnySample).into_iter().take(3) {
                    at_samples.push(format!("at {} ns (batch {i}, heap {heap}): {v}", m.time()));
                }
            }
            let census_end = e.kind == EventKind::CensusEnd as u8;
            let part = e.flags & flags::HEAP_PART != 0;
            if census_end && *heap == 0 && !part && i >= to {
                before_last = Some(m.clone());
            }
            m.apply(*heap, e);
            if !census_end || i < to {
                continue;
            }
            if part {
                reported.insert(*heap);
            }
            let Some(c) = m.last_census_check() else {
                continue;
            };
            if last == Some((c.number, c.heap_parts)) || !c.compared() {
                continue;
            }
            last = Some((c.number, c.heap_parts));
            resynced += usize::from(c.resynced);
            checked += 1;
            // A whole census that found pages still unsure (of threads gone since the loss,
            // which sent no part) resets the model: it must agree after that. Each heap's
            // first part after the loss resets its pages: the part agrees.
            let reset_by_whole = c.resynced && !c.by_heap;
            let after_reset = if reset_by_whole {
                m.compare(m.last_census().expect("the whole census")).len()
            } else {
                c.mismatches
            };
            if after_reset > 0 {
                let first: Vec<String> = c.first.iter().take(3).map(ToString::to_string).collect();
                after_loss.push(format!(
                    "census {} ({} parts): {} differences: {}",
                    c.number,
                    c.heap_parts,
                    c.mismatches,
                    first.join("; ")
                ));
            }
        }
    }
    m.finish();
    eprintln!(
        "lost {lost_batches} of {n} batches; after: {checked} census checks, {resynced} of \
         them resynced; {} pages unsure at the end",
        m.unsure_pages()
    );
    assert!(m.totals().dropped > 0);
    assert!(
        resynced > 0,
        "no census part reset the model after the loss"
    );
    assert!(
        checked >= 2,
        "only {checked} censuses checked after the resync"
    );
    let end = m.last_census().expect("a last census");
    assert_eq!(m.compare(end), Vec::new(), "the last census");
    assert_eq!(m.unsure_pages(), 0);
    let pre = before_last.expect("a whole census after the loss");
    let (sure_but_wrong, settled_violations) = judge_before_last(&pre, end, &reported, loss_time);
    AfterLoss {
        disagreeing: after_loss,
        sure_but_wrong,
        settled_violations,
        at_samples,
    }
}

/// What the model `pre`, just before the last whole census `end` (a settled point: every event
/// before it applied), got wrong on what it was sure of.
///
/// Excused, because nothing after the loss told the model of them: a page still unsure (its
/// heap sent no part since the loss: its thread ended in the lost stretch, or its segment was
/// abandoned), a census page of such a heap (`reported` lists the heaps that did report) or
/// of no heap, and a segment announced before the loss (its free may have been lost).
fn judge_before_last(
    pre: &Model,
    end: &heaplens_viewer::model::Census,
    reported: &std::collections::HashSet<u32>,
    loss_time: u64,
) -> (Vec<String>, Vec<String>) {
    use heaplens_viewer::model::Mismatch;
    let unsure = |start: u64| {
        pre.page_at(start)
            .is_some_and(|r| r.page.in_use && r.page.unsure && r.page.start == start)
    };
    let unreported = |start: u64| {
        end.pages
            .iter()
            .find(|cp| cp.start == start)
            .is_some_and(|cp| cp.owner == 0 || !reported.contains(&cp.owner))
    };
    let excused_page = |start: u64| unsure(start) || unreported(start);
    let excused_segment = |base: u64| {
        pre.segment(base)
            .is_some_and(|s| s.allocated_at < loss_time)
            || end
                .pages
                .iter()
                .filter(|cp| heaplens_viewer::model::segment_base(cp.start) == base)
                .all(|cp| excused_page(cp.start))
    };
    let wrong: Vec<String> = pre
        .compare(end)
        .into_iter()
        .filter(|d| match *d {
            Mismatch::PageMissingInModel { start }
            | Mismatch::PageMissingInCensus { start, .. }
            | Mismatch::PageField { start, .. } => !excused_page(start),
            Mismatch::SegmentMissingInCensus { base }
            | Mismatch::SegmentMissingInModel { base }
            | Mismatch::SegmentField { base, .. } => !excused_segment(base),
        })
        .map(|d| d.to_string())
        .collect();
    let whole_model = pre.unsure_pages() == 0;
    let violations = pre
        .check_invariants(Point::Settled)
        .into_iter()
        .filter(|v| whole_model || matches!(v, heaplens_viewer::model::Violation::Page { .. }))
        .map(|v| v.to_string())
        .collect();
    (wrong, violations)
}

/// After a loss, the invariants that hold in any event order hold at every sample: a page the
/// loss left the model unsure of is not judged (see `Page::unsure`), every other one is.
#[test]
fn after_lost_batches_the_invariants_hold_at_every_sample() {
    let found = after_loss();
    assert!(
        found.at_samples.is_empty(),
        "{}",
        found.at_samples.join("\n")
    );
}

#[test]
fn after_lost_batches_the_model_resyncs_and_agrees_again() {
    let found = after_loss();
    assert!(
        found.disagreeing.is_empty(),
        "{}",
        found.disagreeing.join("\n")
    );
}

/// After a loss, a page set from its heap's census part is exact again: at the last census
/// (every event in), the model, before that census resets it, differs from it only on what
/// nothing after the loss told it of, and the invariants of a settled point hold on every
/// page it is sure of. (This failed until cross-thread frees carried the page's census epoch:
/// a free pushed before a heap's part but reported after it was counted twice, its block
/// bytes taken twice, and live blocks kept of pages or segments whose end was lost stayed
/// live outside any page: internal fragmentation down to -1234 %.)
#[test]
fn after_lost_batches_pages_set_from_a_heap_part_are_exact() {
    let found = after_loss();
    assert!(
        found.sure_but_wrong.is_empty(),
        "{} differences on pages the model was sure of:\n{}",
        found.sure_but_wrong.len(),
        found.sure_but_wrong.join("\n")
    );
    assert!(
        found.settled_violations.is_empty(),
        "{}",
        found.settled_violations.join("\n")
    );
}
