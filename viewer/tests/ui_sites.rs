//! The Sites tab, driven as a user would with egui_kittest, on a trace with three known sites:
//! the table lists them in order of live bytes, and clicking a column header re-sorts it. With a
//! baseline (`heaplens view B --diff A`) the tab lists the sites that grew and shrank, and the
//! icicle colours them (rendered to `tests/snapshots/sites-diff.png`).

use std::path::{Path, PathBuf};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use heaplens_alloc::event::{Event, EventKind, flags, module_text, stack_mode};
use heaplens_viewer::export::diff::Snapshot;
use heaplens_viewer::source::Replay;
use heaplens_viewer::symbols::Symbolizer;
use heaplens_viewer::trace::{EndInfo, Metadata, TraceWriter};
use heaplens_viewer::ui::{App, Source, Tab, WINDOW_SIZE};

fn e(kind: EventKind, f: u8, aux: u16, arg32: u32, addr: u64, arg: u64) -> Event {
    Event {
        kind: kind as u8,
        flags: f,
        aux,
        arg32,
        addr,
        arg,
        time: 1_000_000,
    }
}

/// Sites A (`app+0x1001`: 4 blocks of 1000 B, live), B (`app+0x2001`: 100 of 10 B, 10 live) and
/// C (`app+0x3001`: one of 2000 B, live), called from `app+0x501`. The module's file does not
/// exist, so sites show as module and offset.
fn write_trace(path: &Path) {
    write_trace_with(path, 4, 1);
}

/// The trace of [`write_trace`] with `a` blocks of site A and `c` of site C.
fn write_trace_with(path: &Path, a: u64, c: u64) {
    let mut w = TraceWriter::create(path, &Metadata::with_allocator_constants()).unwrap();
    let mut process = vec![
        e(EventKind::StackMode, 0, stack_mode::ALL, 0, 0, 0),
        e(EventKind::Module, 0, 0, 1, 0, 0),
        e(EventKind::ModuleRange, 0, 0, 1, 0, 1 << 20),
    ];
    let (addr, arg) = Event::pack_text(b"/nonexistent/app");
    process.push(e(EventKind::ModuleText, 0, module_text::PATH, 1, addr, arg));
    w.write_batch(0, &process).unwrap();
    let mut ev = vec![
        e(EventKind::StackFrame, 0, 0, 1, 0x501, 0),
        e(EventKind::StackFrame, 0, 0, 2, 0x1001, 1),
        e(EventKind::StackFrame, 0, 0, 3, 0x2001, 1),
        e(EventKind::StackFrame, flags::TRUNCATED, 0, 4, 0x3001, 1),
    ];
    let base = 0x7f00_0000_0000u64;
    for i in 0..a {
        ev.push(e(EventKind::Alloc, 0, 0, 2, base + i * 0x1000, 1000));
    }
    for i in 0..100 {
        let a = base + 0x10_0000 + i * 0x10;
        ev.push(e(EventKind::Alloc, 0, 0, 3, a, 10));
        if i >= 10 {
            ev.push(e(EventKind::Free, 0, 0, 0, a, 0));
        }
    }
    for i in 0..c {
        ev.push(e(
            EventKind::Alloc,
            0,
            0,
            4,
            base + 0x20_0000 + i * 0x1000,
            2000,
        ));
    }
    w.write_batch(1, &ev).unwrap();
    w.finish(EndInfo::clean(0)).unwrap();
}

fn harness(name: &str) -> (Harness<'static, App>, PathBuf) {
    let dir = std::env::temp_dir().join(format!("heaplens-ui-sites-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sites.hltrace");
    write_trace(&path);
    (harness_on(&path, "sites"), dir)
}

/// The viewer on the trace at `path`, called `title`.
fn harness_on(path: &Path, title: &'static str) -> Harness<'static, App> {
    let replay = Replay::open(path).expect("the trace opens");
    let mut h = Harness::builder()
        .with_size(WINDOW_SIZE)
        .wgpu()
        .build_eframe(|_cc| App::new(Source::Replay(Box::new(replay)), title));
    h.run();
    h
}

fn has(h: &Harness<'_, App>, text: &str) -> bool {
    h.query_all_by_label_contains(text).next().is_some()
}

#[test]
fn the_sites_table_lists_the_sites_in_order_and_re_sorts() {
    let (mut h, dir) = harness("order");
    h.get_by_label("Sites").click();
    h.run();
    assert_eq!(h.state().state.tab, Tab::Sites);
    assert!(has(&h, "stacks of every allocation"));
    // By live bytes: A (4000 B), C (2000 B), B (100 B).
    for row in ["1. app+0x1001", "2. app+0x3001", "3. app+0x2001"] {
        assert!(has(&h, row), "{row}");
    }
    // By allocations: B (100), A (4), C (1).
    h.get_by_label("Allocations").click();
    h.run();
    for row in ["1. app+0x2001", "2. app+0x1001", "3. app+0x3001"] {
        assert!(has(&h, row), "{row}");
    }
    // By temporary allocations: only B has some (each freed before the next allocation).
    h.get_by_label("Temporary").click();
    h.run();
    assert!(has(&h, "1. app+0x2001"));
    assert!(!has(&h, "2. app+"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn with_a_baseline_the_sites_tab_lists_growth_and_shrinkage_and_colours_the_icicle() {
    let dir = std::env::temp_dir().join(format!("heaplens-ui-sites-{}-diff", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Baseline: A 4 x 1000 B, C 1 x 2000 B. Now: A 2 x 1000 B (shrank), C 3 x 2000 B (grew).
    let (base, now) = (dir.join("base.hltrace"), dir.join("now.hltrace"));
    write_trace_with(&base, 4, 1);
    write_trace_with(&now, 2, 3);
    let base_model = Replay::open(&base).unwrap().view().model.clone();
    let snapshot = Snapshot::take(&base_model, &mut Symbolizer::new());
    let replay = Replay::open(&now).unwrap();
    let mut h = Harness::builder()
        .with_size(WINDOW_SIZE)
        .wgpu()
        .build_eframe(|_cc| App::new(Source::Replay(Box::new(replay)), "now"));
    h.state_mut()
        .state
        .sites
        .set_baseline("base.hltrace", snapshot);
    h.run();
    h.get_by_label("Sites").click();
    h.run();
    assert_eq!(h.state().state.sites.baseline(), Some("base.hltrace"));
    assert!(has(&h, "Compared with base.hltrace"));
    assert!(has(&h, "(+2 blocks): app+0x3001"), "C grew");
    assert!(has(&h, "(-2 blocks): app+0x1001"), "A shrank");
    assert!(!has(&h, "blocks): app+0x2001"), "B did not change");
    h.snapshot("sites-diff");
    let _ = std::fs::remove_dir_all(dir);
}

/// From a site to its pages, as a new user would go: on a recorded scenario with every stack
/// (`assets/traces/fragmentation.hltrace`), clicking the top site lists the pages its live
/// blocks are on, and clicking the first of them opens it in the inspector.
#[test]
fn clicking_a_site_lists_its_pages_and_a_page_opens_in_the_inspector() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/traces/fragmentation.hltrace");
    let mut h = harness_on(&path, "fragmentation");
    h.get_by_label("Sites").click();
    h.run();
    let (top, pages) = {
        let Source::Replay(r) = h.state().source() else {
            unreachable!("opened on a trace")
        };
        let model = &r.view().model;
        let (leaf, _) = model
            .sites()
            .ranked(heaplens_viewer::model::SiteKey::LiveBytes)[0];
        (
            leaf,
            heaplens_viewer::ui::site_pages::pages_of_site(model, leaf),
        )
    };
    assert!(!pages.is_empty(), "the top site has live blocks on pages");
    assert!(!has(&h, "Pages holding live blocks of"));
    h.query_all_by_label_contains("1. ")
        .next()
        .expect("the top row")
        .click();
    h.run();
    assert_eq!(h.state().state.sites.pages.chosen(), Some(top));
    assert!(has(&h, "Pages holding live blocks of"));
    assert!(has(&h, &format!(": {}", pages.len())));
    // The pages its blocks are on, the most of its bytes first, with the site's blocks there.
    let first = &pages[0];
    assert!(has(&h, &format!("{} of the site's", first.blocks)));
    h.get_by_label(&format!("page at {:#x}", first.start))
        .click();
    h.run();
    assert_eq!(h.state().state.selected_page, Some(first.start));
    assert!(
        has(&h, "Allocation sites on this page"),
        "the inspector is open"
    );
    // Clicking the site again stops listing its pages.
    h.query_all_by_label_contains("1. ")
        .next()
        .expect("the top row")
        .click();
    h.run();
    assert_eq!(h.state().state.sites.pages.chosen(), None);
}
