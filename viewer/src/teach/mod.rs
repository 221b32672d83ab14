//! Teaching: guided tours of the scenarios' recorded traces, a glossary with a live example for
//! every term, and where those examples are in the model. No egui here: `ui::learn` draws it.
//!
//! A tour step is anchored at a user marker of its trace (by label prefix), so it pauses where
//! the scenario says the thing happens; a test checks every anchor exists in its trace.

mod glossary;
mod tours;

pub use glossary::{GLOSSARY, Term};
pub use tours::{TOURS, tour};

use crate::model::{Model, Page};

/// Where in the viewer something is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The overview plots.
    Overview,
    /// The segment map.
    Segments,
    /// The heaps tab.
    Heaps,
    /// Free-list occupancy.
    FreeLists,
    /// The event log.
    Events,
}

/// The structure a step or term points at, found in the model as it is at that moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Example {
    /// Nothing in particular.
    Nothing,
    /// The page holding the most blocks.
    FullestPage,
    /// A page pinned by few live blocks (under a fifth of its capacity).
    PinnedPage,
    /// The page with the longest `thread_free`.
    ThreadFreePage,
    /// The page with the longest `local_free`.
    LocalFreePage,
    /// The page with the longest `free` list.
    FreeListPage,
    /// A page in its heap's full queue.
    FullPage,
    /// A page of an abandoned segment.
    AbandonedPage,
    /// A page of a medium segment.
    MediumPage,
    /// A large page.
    LargePage,
    /// A huge page.
    HugePage,
    /// A heap whose thread name starts with this.
    Heap(&'static str),
}

/// A guided tour of one scenario.
#[derive(Debug)]
pub struct Tour {
    /// The scenario (and its trace in assets/traces).
    pub scenario: &'static str,
    /// The tour's title.
    pub title: &'static str,
    /// Its steps, in trace order.
    pub steps: &'static [Step],
}

/// One step of a tour.
#[derive(Debug)]
pub struct Step {
    /// The marker (a label prefix) the step pauses at.
    pub marker: &'static str,
    /// The step's title.
    pub title: &'static str,
    /// What just happened and why a mimalloc-style allocator does it that way (2-3 sentences).
    pub text: &'static str,
    /// Where to look.
    pub place: Place,
    /// What to highlight there.
    pub example: Example,
}

/// What an example resolves to now: a page (its start) and/or a heap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// A page to open in the inspector.
    pub page: Option<u64>,
    /// A heap to scroll to.
    pub heap: Option<u32>,
}

fn best_page(model: &Model, score: impl Fn(&Page) -> Option<i64>) -> Option<u64> {
    let mut best: Option<(i64, u64)> = None;
    for seg in model.segments_by_address() {
        for p in seg.pages.iter().filter(|p| p.in_use) {
            if let Some(s) = score(p)
                && best.is_none_or(|(b, _)| s > b)
            {
                best = Some((s, p.start));
            }
        }
    }
    best.map(|(_, start)| start)
}

/// The allocation sites behind `example` in the model as it is now, in a sentence, when the
/// recording has stacks: for pinned pages, the code whose survivors pin them; for abandoned
/// pages, the code that allocated what the exited threads left. (Blocks on free lists have no
/// site: the model keeps sites of live blocks only.) `None` for other examples,
/// without stacks, or when the recorded program's symbols cannot be read.
pub fn site_note(example: Example, model: &Model) -> Option<String> {
    let pinned = |p: &Page| p.held() > 0 && p.held() * 5 < i64::from(p.capacity);
    let pages = model.segments_by_address().into_iter().flat_map(|s| {
        let abandoned = s.abandoned;
        s.pages
            .iter()
            .filter(|p| p.in_use)
            .map(move |p| (abandoned, p))
    });
    let (what, pages): (&str, Vec<&Page>) = match example {
        Example::PinnedPage => (
            "The survivors pinning these pages were allocated by",
            pages.filter(|(_, p)| pinned(p)).map(|(_, p)| p).collect(),
        ),
        Example::AbandonedPage => (
            "What the exited threads left on their pages was allocated by",
            pages.filter(|(a, _)| *a).map(|(_, p)| p).collect(),
        ),
        _ => return None,
    };
    let (name, n, bytes) =
        crate::insights::top_site_with(model, pages.into_iter(), |s, sites, leaf| {
            s.site_chain(sites, leaf, 2)
        })?;
    if name.is_empty() {
        // No symbols: the recorded program's file is not where it was, or was rebuilt.
        return None;
    }
    Some(format!(
        "{what} {name}: {n:.0} blocks, {} (the most of any site).",
        crate::units::bytes(bytes as u64)
    ))
}

/// Finds `example` in the model as it is now.
pub fn resolve(example: Example, model: &Model) -> Selection {
    use heaplens_alloc::bin::PageKind;
    let page = match example {
        Example::Nothing | Example::Heap(_) => None,
        Example::FullestPage => best_page(model, |p| Some(p.held())),
        Example::PinnedPage => best_page(model, |p| {
            (p.held() > 0 && p.held() * 5 < i64::from(p.capacity)).then_some(p.capacity.into())
        }),
        Example::ThreadFreePage => {
            best_page(model, |p| (p.thread_free > 0).then_some(p.thread_free))
        }
        Example::LocalFreePage => best_page(model, |p| (p.local_free > 0).then_some(p.local_free)),
        Example::FreeListPage => best_page(model, |p| (p.free_len() > 0).then_some(p.free_len())),
        Example::FullPage => best_page(model, |p| p.in_full.then_some(p.held())),
        Example::AbandonedPage => best_page(model, |p| (p.owner == 0).then_some(p.held())),
        Example::MediumPage => best_page(model, |p| {
            (p.page_kind() == PageKind::Medium).then_some(p.held())
        }),
        Example::LargePage => best_page(model, |p| {
            (p.page_kind() == PageKind::Large).then_some(p.held())
        }),
        Example::HugePage => best_page(model, |p| {
            (p.page_kind() == PageKind::Huge).then_some(p.held())
        }),
    };
    let heap = match example {
        Example::Heap(prefix) => model
            .heaps()
            .iter()
            .find(|h| h.name.starts_with(prefix))
            .map(|h| h.id),
        _ => None,
    };
    Selection { page, heap }
}

/// The recorded trace of a scenario, built into the program so tours work without files.
pub fn trace_bytes(scenario: &str) -> Option<&'static [u8]> {
    Some(match scenario {
        "fragmentation" => include_bytes!("../../../assets/traces/fragmentation.hltrace"),
        "producer-consumer" => include_bytes!("../../../assets/traces/producer-consumer.hltrace"),
        "thread-churn" => include_bytes!("../../../assets/traces/thread-churn.hltrace"),
        "server" => include_bytes!("../../../assets/traces/server.hltrace"),
        "leak" => include_bytes!("../../../assets/traces/leak.hltrace"),
        "large" => include_bytes!("../../../assets/traces/large.hltrace"),
        "c-program" => include_bytes!("../../../assets/traces/c-program.hltrace"),
        _ => return None,
    })
}

/// Writes a scenario's built-in trace to a file of its own (the replay reads files) and returns
/// its path.
pub fn trace_file(scenario: &str) -> std::io::Result<std::path::PathBuf> {
    let bytes = trace_bytes(scenario).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no recorded trace for scenario '{scenario}'"),
        )
    })?;
    let dir = std::env::temp_dir().join(format!("heaplens-tours-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Written under a name of its own, then renamed: a reader never sees a partial file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{scenario}-{n}.part"));
    std::fs::write(&tmp, bytes)?;
    let path = dir.join(format!("{scenario}.hltrace"));
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}
