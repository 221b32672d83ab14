//! Every term the viewer uses, with where to see a live example.

use super::{Example as E, Place as P};

/// A glossary entry.
#[derive(Debug)]
pub struct Term {
    /// The term.
    pub name: &'static str,
    /// What it means, in two or three sentences.
    pub text: &'static str,
    /// Where an example is shown.
    pub place: P,
    /// Which example.
    pub example: E,
}

macro_rules! term {
    ($name:expr, $place:expr, $example:expr, $text:expr) => {
        Term {
            name: $name,
            text: $text,
            place: $place,
            example: $example,
        }
    };
}

/// The glossary, alphabetical.
pub static GLOSSARY: [Term; 24] = [
    term!(
        "abandon",
        P::Heaps,
        E::AbandonedPage,
        "When a thread exits, its heap goes away but blocks on its pages may still be in use. \
         Its segments are abandoned: they keep their blocks and wait for another thread to \
         reclaim them."
    ),
    term!(
        "bin (size class)",
        P::FreeLists,
        E::Nothing,
        "Requests are rounded up to a size class: exact up to 64 bytes, then four classes per \
         power of two, so at most 12.5 % is lost to rounding (plus alignment). A page serves one \
         class only."
    ),
    term!(
        "block",
        P::Segments,
        E::FullestPage,
        "One allocation's memory: a slot of its page's block size. The program asks for some \
         bytes and gets a block of its size class."
    ),
    term!(
        "capacity (carving)",
        P::Segments,
        E::FullestPage,
        "A page is carved into blocks a few KiB at a time, as they are needed: blocks past the \
         capacity are not carved yet (dark grey in the inspector), and their memory is not \
         touched."
    ),
    term!(
        "census",
        P::Overview,
        E::Nothing,
        "A periodic snapshot of every page the allocator takes while recording. The viewer \
         compares it with the model it rebuilt from events; the status line says whether they \
         agree."
    ),
    term!(
        "collect",
        P::FreeLists,
        E::LocalFreePage,
        "What the owner of a page does when its free list is empty: it takes thread_free with \
         one atomic swap and local_free, and they become the page's new free list."
    ),
    term!(
        "delayed free",
        P::Segments,
        E::FullPage,
        "A free from another thread into a page in the full queue goes onto the owner heap's \
         delayed list instead, so the owner notices the page has room again."
    ),
    term!(
        "free (list)",
        P::Segments,
        E::FreeListPage,
        "The list allocation pops blocks from: a pointer pop, no lock, no atomic. It is refilled \
         from local_free and thread_free when it runs out."
    ),
    term!(
        "full queue",
        P::Segments,
        E::FullPage,
        "Pages with no free block move to their heap's full queue, so allocation does not \
         search them. A free into one brings it back."
    ),
    term!(
        "heap",
        P::Heaps,
        E::Nothing,
        "Each thread's own allocator state: its pages by size class, a full queue and direct \
         slots for small sizes. No other thread touches it, so the fast paths need no lock."
    ),
    term!(
        "huge page",
        P::Segments,
        E::HugePage,
        "A block over 2 MiB gets a segment of its own, as large as the block: one page, one \
         block."
    ),
    term!(
        "internal fragmentation",
        P::Overview,
        E::Nothing,
        "Block bytes the program did not ask for: a 100-byte request gets a 112-byte block. \
         The overview plots it as a share of block bytes."
    ),
    term!(
        "large page",
        P::Segments,
        E::LargePage,
        "For blocks over 128 KiB up to 2 MiB: one block a page, the page a span of 64 KiB \
         slots of a large segment. A freed span's slots serve a block of any size."
    ),
    term!(
        "local_free",
        P::Segments,
        E::LocalFreePage,
        "Where the owning thread's frees go (blue in the inspector). Kept apart from free so \
         that allocation can run through a page's free list while frees accumulate."
    ),
    term!(
        "marker",
        P::Overview,
        E::Nothing,
        "A label the program puts on the timeline (heaplens_alloc::hook::mark, hl_mark in C): \
         yellow lines in the plots and on the timeline."
    ),
    term!(
        "medium page",
        P::Segments,
        E::MediumPage,
        "512 KiB pages, eight to a segment, for blocks over 16 KiB up to 128 KiB."
    ),
    term!(
        "page",
        P::Segments,
        E::FullestPage,
        "A part of a segment holding blocks of one size class: 64 KiB for small blocks, 512 \
         KiB for medium ones. It belongs to one heap and has its own three free lists."
    ),
    term!(
        "page fragmentation",
        P::Overview,
        E::PinnedPage,
        "Capacity of in-use pages not held in blocks: free blocks on pages. High when a few \
         survivors pin mostly-empty pages."
    ),
    term!(
        "purge",
        P::Overview,
        E::Nothing,
        "Giving an empty page's memory back to the OS (madvise), a short delay after it \
         emptied, so memory that is reused at once is not returned and faulted in again. Each \
         thread lengthens its delay while most of what it gave back is taken again soon after \
         (up to 16 times HEAPLENS_PURGE_DELAY_MS), and shortens it when it is not."
    ),
    term!(
        "reclaim",
        P::Heaps,
        E::Nothing,
        "Taking an abandoned segment into a heap: by a thread that needs a segment, or one \
         that frees a block into it."
    ),
    term!(
        "segment",
        P::Segments,
        E::Nothing,
        "4 MiB of memory aligned to 4 MiB, holding pages and, at its start, their metadata. \
         Because of the alignment, a pointer finds its segment (and page) by masking bits."
    ),
    term!(
        "segment cache",
        P::Overview,
        E::Nothing,
        "Freed segments are kept mapped a little while, so the next segment needs no system \
         call; unused ones are unmapped after ten purge delays."
    ),
    term!(
        "segment fragmentation",
        P::Overview,
        E::Nothing,
        "Pages of small and medium segments not in use: segments kept by a few busy pages."
    ),
    term!(
        "thread_free",
        P::Segments,
        E::ThreadFreePage,
        "Where other threads' frees go (purple in the inspector): pushed with one atomic \
         compare-and-swap, collected by the owner in one swap."
    ),
];
