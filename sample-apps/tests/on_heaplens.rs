//! Every scenario does to heaplens what its story says: run in-process over heaplens as the global
//! allocator, with a snapshot of the allocator (`heaplens_alloc::stats`) taken at every marker.
//!
//! One test, so no other test allocates while a scenario's snapshots are compared.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use heaplens_alloc::bin::{BIN_HUGE, bin_of};
use heaplens_alloc::{HeapLens, MEDIUM_OBJ_SIZE_MAX, Stats};
use heaplens_sample_apps::{Params, find};

#[global_allocator]
static GLOBAL: HeapLens = HeapLens;

/// The markers of one run of `name`'s short form, each with the allocator's state at that moment.
fn run(name: &str) -> Vec<(String, Stats)> {
    let scenario = find(name).expect(name);
    let snaps = Mutex::new(Vec::new());
    let mark = |label: &str| {
        let st = heaplens_alloc::stats();
        snaps.lock().unwrap().push((label.to_owned(), st));
    };
    let t = Instant::now();
    (scenario.run)(&Params {
        short: true,
        mark: &mark,
        pace: Duration::ZERO,
    });
    eprintln!("{name}: {:.3} s on heaplens", t.elapsed().as_secs_f64());
    snaps.into_inner().unwrap()
}

/// The snapshot at the first marker that starts with `prefix`.
fn at<'a>(snaps: &'a [(String, Stats)], prefix: &str) -> &'a Stats {
    &snaps
        .iter()
        .find(|(l, _)| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no marker {prefix:?} in {:?}", labels(snaps)))
        .1
}

fn labels(snaps: &[(String, Stats)]) -> Vec<&str> {
    snaps.iter().map(|(l, _)| l.as_str()).collect()
}

/// (pages, blocks used, blocks carved) over the bins `bins`.
fn sum(st: &Stats, bins: impl IntoIterator<Item = usize>) -> (usize, usize, usize) {
    bins.into_iter().fold((0, 0, 0), |(p, u, c), b| {
        let b = &st.bins[b];
        (p + b.pages, u + b.blocks_used, c + b.blocks_capacity)
    })
}

fn fragmentation() {
    let snaps = run("fragmentation");
    let small = bin_of(48)..=bin_of(112);
    let filled = sum(at(&snaps, "phase: free 90%"), small.clone());
    let thinned = sum(at(&snaps, "phase: 4000 kept"), small.clone());
    // 90% freed, yet not one page retired: every page holds a kept object.
    assert!(filled.1 >= 40_000, "{filled:?}");
    assert!(
        thinned.1 <= filled.1 / 10 + 200,
        "{thinned:?} after {filled:?}"
    );
    assert_eq!(thinned.0, filled.0, "pinned pages were retired");
    // The other size class needs pages of its own (11238 blocks of 256 B: 44 pages or more).
    let other = bin_of(256);
    let before = at(&snaps, "phase: allocate").bins[other].pages;
    let after_other = at(&snaps, "phase: refill");
    assert!(
        after_other.bins[other].pages >= before + 44,
        "{} -> {}",
        before,
        after_other.bins[other].pages
    );
    assert_eq!(sum(after_other, small.clone()).0, filled.0);
    // The same sizes again fill the holes: no new pages.
    let refilled = sum(at(&snaps, "phase: free all"), small.clone());
    assert_eq!(refilled.0, filled.0, "refill took new pages");
    assert!(refilled.1 >= filled.1, "{refilled:?}");
    // Everything freed: the pages retire and their memory is purged.
    let done = at(&snaps, "phase: done");
    let left = sum(done, small);
    assert!(
        left.0 <= 10 && left.0 * 4 < filled.0,
        "{left:?} of {filled:?}"
    );
    assert!(
        done.committed_bytes + 4 * 1024 * 1024 <= at(&snaps, "phase: free all").committed_bytes,
        "nothing purged"
    );
}

fn producer_consumer() {
    let snaps = run("producer-consumer");
    let msgs = bin_of(16)..=bin_of(4096);
    let mut pages = Vec::new();
    for round in 1..=3 {
        // 2 producers x 4000 messages a round.
        let st = at(&snaps, &format!("round {round}: {} freed", round * 8000));
        let (p, used, carved) = sum(st, msgs.clone());
        // Every message was freed by a consumer, but the producers have not collected yet: their
        // pages stay in use with (almost) nothing live in them.
        assert!(p >= 10, "round {round}: {p} pages");
        assert!(used * 4 < carved, "round {round}: {used} of {carved} used");
        pages.push(p);
    }
    // Collected and reused: later rounds need no more pages than the first.
    assert!(
        pages[2] <= pages[0] + pages[0] / 4,
        "pages per round {pages:?}"
    );
}

fn thread_churn() {
    let snaps = run("thread-churn");
    for round in 1..=3 {
        let exited = at(&snaps, &format!("round {round}: threads exited"));
        let freed = at(&snaps, &format!("round {round}: main freed"));
        assert!(
            exited.abandoned_segments >= 1,
            "round {round}: nothing abandoned"
        );
        // Main's frees into abandoned segments reclaim them.
        assert!(
            freed.abandoned_segments < exited.abandoned_segments,
            "round {round}: {} -> {}",
            exited.abandoned_segments,
            freed.abandoned_segments
        );
    }
    assert_eq!(at(&snaps, "phase: done").abandoned_segments, 0);
}

fn server() {
    let snaps = run("server");
    // The scenario's own thread, plus two workers while serving.
    let serving = at(&snaps, "phase: shutdown").threads;
    assert!(serving >= 3, "{serving}");
    // Workers retire one at a time while the others serve: at each handover the retired
    // worker is gone and its successor not started, but the pool still has workers (their
    // first terms are staggered, so they do not all retire at once).
    for (label, st) in snaps.iter().filter(|(l, _)| l.contains(" exited: ")) {
        assert!(st.threads < serving, "{label}: {} threads", st.threads);
        assert!(st.threads >= 2, "{label}: {} threads", st.threads);
    }
    // Every slot was freed before the last workers exited, so nothing was left abandoned.
    let done = at(&snaps, "phase: done");
    assert_eq!(done.abandoned_segments, 0);
    assert!(done.threads < serving, "{}", done.threads);
}

fn leak() {
    let snaps = run("leak");
    let bin = bin_of(200);
    let half = at(&snaps, "round 5:").bins[bin].blocks_used;
    let end = at(&snaps, "phase: exit").bins[bin].blocks_used;
    assert!((500..520).contains(&half), "{half}");
    assert!((1000..1020).contains(&end), "{end}");
}

fn large() {
    let snaps = run("large");
    let large_bins = bin_of(MEDIUM_OBJ_SIZE_MAX) + 1..BIN_HUGE;
    for wave in 1..=2 {
        let larges = sum(
            at(&snaps, &format!("wave {wave}: 2 huge")),
            large_bins.clone(),
        );
        // 4 blocks; a large page (a whole segment) may hold two of one size class.
        assert!(larges.0 >= 2 && larges.1 == 4, "wave {wave}: {larges:?}");
        let huge = at(&snaps, &format!("wave {wave}: free the large")).bins[BIN_HUGE];
        assert!(huge.pages >= 2, "wave {wave}: {huge:?}");
        let freed = at(&snaps, &format!("wave {wave}: free the huge"));
        assert_eq!(sum(freed, large_bins.clone()).1, 0, "wave {wave}");
    }
    let peak = snaps.iter().map(|(_, s)| s.committed_bytes).max().unwrap();
    let done = at(&snaps, "phase: done");
    assert!(
        done.committed_bytes + 16 * 1024 * 1024 <= peak,
        "committed {} at the end, {peak} at the peak",
        done.committed_bytes
    );
    assert_eq!(done.bins[BIN_HUGE].pages, 0);
}

#[test]
fn scenarios_do_what_their_stories_say() {
    fragmentation();
    producer_consumer();
    thread_churn();
    server();
    leak();
    large();
}
