//! Findings in plain words, computed from the model: size classes whose pages are mostly empty
//! yet pinned, threads that mostly free other threads' blocks, memory held by abandoned heaps,
//! empty memory waiting to be purged, and blocks never freed by a program that exited. Each
//! points at the place in the viewer that shows it. With stacks in the trace, the pinned pages
//! and the leaks name the code that allocated their blocks (symbolised once per thread and pc).
//! No egui here; `heaplens stats` prints them too.

use std::cell::RefCell;
use std::collections::HashMap;

use heaplens_alloc::bin::PageKind;
use heaplens_alloc::stats::Bytes;

use crate::model::{Model, Page};
use crate::symbols::Symbolizer;

thread_local! {
    /// Symbols of the sites named, kept from one call to the next (files are opened once).
    static SYMBOLS: RefCell<Symbolizer> = RefCell::new(Symbolizer::new());
}

/// Sites told apart among this many of the largest when one of them is named.
const NAMED_AMONG: usize = 20;

/// The site allocating most bytes of the live blocks with a stack on `pages`: its name (told
/// apart from the next largest ones that share it, [`crate::symbols::apart`]), its blocks and
/// its bytes (weighted).
fn top_site<'a>(
    model: &Model,
    pages: impl Iterator<Item = &'a Page>,
) -> Option<(String, f64, f64)> {
    let ranked = sites_on(model, pages);
    let &(_, (n, bytes)) = ranked.first()?;
    let leaves: Vec<u32> = ranked.iter().take(NAMED_AMONG).map(|r| r.0).collect();
    let (name, _) = SYMBOLS
        .with(|s| s.borrow_mut().site_names(model.sites(), &leaves))
        .into_iter()
        .next()?;
    Some((name, n, bytes))
}

/// [`top_site`] with the name made by `name` (a chain of callers, say).
pub(crate) fn top_site_with<'a>(
    model: &Model,
    pages: impl Iterator<Item = &'a Page>,
    name: impl FnOnce(&mut Symbolizer, &crate::model::Sites, u32) -> String,
) -> Option<(String, f64, f64)> {
    let &(leaf, (n, bytes)) = sites_on(model, pages).first()?;
    let name = SYMBOLS.with(|s| name(&mut s.borrow_mut(), model.sites(), leaf));
    Some((name, n, bytes))
}

/// The sites of the live blocks with a stack on `pages`, with their blocks and bytes
/// (weighted), most bytes first; none without stacks.
fn sites_on<'a>(model: &Model, pages: impl Iterator<Item = &'a Page>) -> Vec<(u32, (f64, f64))> {
    let sites = model.sites();
    if !sites.is_on() {
        return Vec::new();
    }
    let mut by: HashMap<u32, (f64, f64)> = HashMap::new();
    for p in pages {
        for i in 0..u64::from(p.capacity) {
            let addr = p.block_addr(i);
            if let Some(b) = sites.block(addr) {
                let e = by.entry(b.stack).or_default();
                e.0 += b.weight;
                e.1 += b.size as f64 * b.weight;
            }
        }
    }
    let mut ranked: Vec<(u32, (f64, f64))> = by.into_iter().collect();
    ranked.sort_by(|a, b| b.1.1.total_cmp(&a.1.1).then(a.0.cmp(&b.0)));
    ranked
}

/// What an insight is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A size class whose pages are mostly empty but pinned by a few live blocks.
    MostlyEmptyPages,
    /// A thread whose frees are mostly of other threads' blocks.
    CrossThreadFrees,
    /// Blocks still live in segments whose thread exited.
    AbandonedMemory,
    /// Committed memory in no page in use: empty pages and segments waiting for purge.
    PurgePending,
    /// Blocks the program never freed before it exited.
    LeaksAtExit,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Self; 5] = [
        Self::MostlyEmptyPages,
        Self::CrossThreadFrees,
        Self::AbandonedMemory,
        Self::PurgePending,
        Self::LeaksAtExit,
    ];

    /// A short title.
    pub fn title(self) -> &'static str {
        match self {
            Self::MostlyEmptyPages => "mostly empty pages",
            Self::CrossThreadFrees => "cross-thread frees",
            Self::AbandonedMemory => "memory of exited threads",
            Self::PurgePending => "empty memory not yet purged",
            Self::LeaksAtExit => "blocks never freed",
        }
    }
}

/// Where the viewer shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A page (its start): the segment map with the inspector open on it.
    Page(u64),
    /// A heap: the heaps tab.
    Heap(u32),
    /// The free-list occupancy tab.
    FreeLists,
    /// The overview.
    Overview,
}

/// One finding.
#[derive(Clone, Debug, PartialEq)]
pub struct Insight {
    /// What it is about.
    pub kind: Kind,
    /// It, in words.
    pub text: String,
    /// Where to look.
    pub target: Target,
}

fn bytes(n: i64) -> Bytes {
    Bytes(usize::try_from(n.max(0)).unwrap_or(usize::MAX))
}

/// The findings for the model as it is now. `exited` says whether the program has exited (leaks
/// are only leaks then).
pub fn insights(model: &Model, exited: bool) -> Vec<Insight> {
    let mut out = Vec::new();
    mostly_empty(model, &mut out);
    cross_thread(model, &mut out);
    abandoned(model, &mut out);
    purge_pending(model, &mut out);
    if exited {
        leaks(model, &mut out);
    }
    out
}

/// Pages that hold something but less than a fifth of their capacity, when they are most of
/// the small and medium pages in use.
fn mostly_empty(model: &Model, out: &mut Vec<Insight>) {
    let mut pages_in_use = 0u64;
    let mut pinned_total = 0u64;
    let mut classes = Vec::new();
    for g in model.bins(None) {
        let mut pinned = 0u64;
        let mut held = 0i64;
        let mut capacity = 0i64;
        let mut first = None;
        for &start in &g.pages {
            let Some(r) = model.page_at(start) else {
                continue;
            };
            let p = r.page;
            if matches!(p.page_kind(), PageKind::Huge | PageKind::Large) || p.capacity == 0 {
                continue;
            }
            pages_in_use += 1;
            if p.held() > 0 && p.held() * 5 < i64::from(p.capacity) {
                pinned += 1;
                held += p.held_bytes();
                capacity += p.capacity_bytes();
                first.get_or_insert(start);
            }
        }
        if pinned > 0 {
            pinned_total += pinned;
            classes.push((g.block_size, pinned, held, capacity, first, g.pages.clone()));
        }
    }
    if pinned_total < 24 || pinned_total * 2 < pages_in_use {
        return;
    }
    classes.sort_by_key(|c| std::cmp::Reverse(c.1));
    for (block_size, pinned, held, capacity, first, pages) in classes.into_iter().take(3) {
        // The sites of the survivors on the pinned pages.
        let pinned_pages = pages
            .iter()
            .filter_map(|&start| model.page_at(start))
            .map(|r| r.page)
            .filter(|p| p.held() > 0 && p.held() * 5 < i64::from(p.capacity));
        let survivors = top_site(model, pinned_pages).map_or(String::new(), |(name, n, b)| {
            format!(
                " Most of the survivors ({n:.0} blocks, {}) were allocated at {name}.",
                Bytes(b.max(0.0) as usize)
            )
        });
        out.push(Insight {
            kind: Kind::MostlyEmptyPages,
            text: format!(
                "{} blocks: {pinned} pages are pinned by a few live blocks, holding {} of {} \
                 they could ({:.0} %). A page is reused only by its own size class and freed \
                 only when empty, so long-lived objects scattered among short-lived ones keep \
                 it.{survivors}",
                Bytes(usize::try_from(block_size).unwrap_or(0)),
                bytes(held),
                bytes(capacity),
                100.0 * held as f64 / capacity.max(1) as f64
            ),
            target: first.map_or(Target::FreeLists, Target::Page),
        });
    }
}

fn cross_thread(model: &Model, out: &mut Vec<Insight>) {
    for h in model.heaps().iter() {
        if h.frees >= 1000 && h.cross_frees * 2 > h.frees {
            out.push(Insight {
                kind: Kind::CrossThreadFrees,
                text: format!(
                    "thread {} freed {} blocks, {:.0} % of them owned by other threads: each \
                     is pushed onto its owner page's thread_free with an atomic operation and \
                     waits there until the owner collects it.",
                    if h.name.is_empty() {
                        format!("heap {}", h.id)
                    } else {
                        h.name.clone()
                    },
                    h.frees,
                    100.0 * h.cross_frees as f64 / h.frees as f64
                ),
                target: Target::Heap(h.id),
            });
        }
    }
}

fn abandoned(model: &Model, out: &mut Vec<Insight>) {
    let orphaned = model.page_totals(Some(0));
    let all = model.page_totals(None);
    let held = orphaned.held_bytes;
    if held >= 32 * 1024 && held * 10 >= all.held_bytes * 9 {
        out.push(Insight {
            kind: Kind::AbandonedMemory,
            text: format!(
                "{} in {} live blocks ({:.0} % of the memory in use) sit on {} pages of threads \
                 that exited. Their segments were abandoned; another thread reclaims one when \
                 it needs a segment or frees a block into it.",
                bytes(held),
                orphaned.held,
                100.0 * held as f64 / all.held_bytes.max(1) as f64,
                orphaned.pages
            ),
            target: Target::Heap(0),
        });
    }
}

fn purge_pending(model: &Model, out: &mut Vec<Insight>) {
    let mut pages = 0u64;
    let mut idle = 0u64;
    for seg in model.segments().iter() {
        // A freed large page's span held its one block.
        let page_bytes = if seg.is_spans() {
            u64::MAX
        } else {
            seg.bytes / seg.pages.len().max(1) as u64
        };
        for p in seg.pages.iter().filter(|p| p.awaiting_purge && !p.in_use) {
            pages += 1;
            idle += page_bytes.min(u64::from(p.reserved) * p.block_size.max(1));
        }
    }
    let cached = model.cached_segments();
    let cached_bytes: u64 = cached.iter().map(|(_, b)| b).sum();
    let waiting = idle + cached_bytes;
    let in_use = model.page_totals(None).held_bytes.max(0) as u64;
    // Worth saying when it is a lot, and more than the program holds.
    if waiting >= 20 * 1024 * 1024 && waiting > in_use {
        let b = |n: u64| Bytes(usize::try_from(n).unwrap_or(usize::MAX));
        out.push(Insight {
            kind: Kind::PurgePending,
            text: format!(
                "{} of freed memory is still mapped: {pages} empty pages ({}) waiting to be \
                 purged and {} freed segments ({}) in the segment cache, more than the \
                 program holds ({}). heaplens returns it to the OS after a short delay \
                 (HEAPLENS_PURGE_DELAY_MS, longer for a thread that takes it back soon; cached \
                 segments ten delays), so memory that is \
                 reused at once is not returned and faulted in again.",
                b(waiting),
                b(idle),
                cached.len(),
                b(cached_bytes),
                b(in_use)
            ),
            target: Target::Overview,
        });
    }
}

fn leaks(model: &Model, out: &mut Vec<Insight>) {
    let live = model.live();
    if live.len() < 500 {
        return;
    }
    let top = model
        .bins(None)
        .into_iter()
        .max_by_key(|g| g.totals.held)
        .filter(|g| g.totals.held > 0);
    let largest = top.as_ref().map_or(String::new(), |g| {
        format!(
            "; most are {} blocks ({} of them)",
            Bytes(usize::try_from(g.block_size).unwrap_or(0)),
            g.totals.held
        )
    });
    let sites = model.sites();
    let leaking = sites.live_by_stack();
    let leaves: Vec<u32> = leaking.iter().take(NAMED_AMONG).map(|g| g.0).collect();
    let names = SYMBOLS.with(|s| s.borrow_mut().site_names(sites, &leaves));
    let site =
        leaking
            .first()
            .zip(names.first())
            .map_or(String::new(), |(&(_, n, b), (name, _))| {
                format!(
                    " The site leaking most is {name} ({n:.0} blocks, {}).",
                    Bytes(b.max(0.0) as usize)
                )
            });
    out.push(Insight {
        kind: Kind::LeaksAtExit,
        text: format!(
            "{} blocks ({} requested) were never freed before the program exited{largest}.{site}",
            live.len(),
            Bytes(usize::try_from(live.requested_bytes()).unwrap_or(usize::MAX))
        ),
        target: top
            .and_then(|g| g.pages.first().copied())
            .map_or(Target::FreeLists, Target::Page),
    });
}
