//! The guided tours, one per scenario. Each step's `marker` is a piece of a marker label in the
//! scenario's trace; the step shows the state at that marker.

use super::{Example as E, Place as P, Step, Tour};

/// Every tour.
pub static TOURS: [Tour; 7] = [
    Tour {
        scenario: "fragmentation",
        title: "Fragmentation: why freed memory does not always come back",
        steps: &[
            Step {
                marker: "phase: fill",
                title: "Pages per size class",
                text: "The program is about to allocate 40 000 small objects of five sizes. Each \
                       size class gets pages of its own, and a page holds blocks of one size \
                       only, carved a few KiB at a time as they are needed. The thread's heap \
                       hands blocks out with a pointer pop, no lock.",
                place: P::Segments,
                example: E::FullestPage,
            },
            Step {
                marker: "kept objects pin",
                title: "A few survivors pin each page",
                text: "Nine in ten objects were freed, but every page kept a few survivors, so \
                       none can be given back or used for another size: the tiles are nearly \
                       empty. The allocator never moves live objects, so one long-lived block \
                       keeps its whole page. Open the inspector: a few orange blocks among green \
                       and blue free ones.",
                place: P::Segments,
                example: E::PinnedPage,
            },
            Step {
                marker: "(other class)",
                title: "Another size cannot use the holes",
                text: "Now 256-byte objects arrive. They get fresh pages: the holes on the pinned \
                       pages are the wrong size. Keeping sizes apart makes allocation a pointer \
                       pop and frees cheap, at the price of holes only their own class can fill.",
                place: P::FreeLists,
                example: E::Nothing,
            },
            Step {
                marker: "holes reused",
                title: "The same size fills them again",
                text: "Allocating the original sizes again reuses the holes first: each page's \
                       free list hands out its own free blocks before any new page is touched. \
                       Reuse stays on pages that are already in the cache.",
                place: P::Segments,
                example: E::FullestPage,
            },
            Step {
                marker: "phase: done",
                title: "Empty pages go back to the OS",
                text: "Everything was freed. Empty pages were retired, then purged after a short \
                       delay, and empty segments went to a small cache before being unmapped: \
                       committed memory fell in the overview.",
                place: P::Overview,
                example: E::Nothing,
            },
        ],
    },
    Tour {
        scenario: "producer-consumer",
        title: "Cross-thread frees: thread_free and collect",
        steps: &[
            Step {
                marker: "round 1: produce",
                title: "Producers allocate from their own heaps",
                text: "Two producer threads allocate messages, each from its own heap and its own \
                       pages, and send them to two consumers. Every thread has a heap, so \
                       allocation never takes a lock.",
                place: P::Heaps,
                example: E::Heap("producer"),
            },
            Step {
                marker: "round 1: 8000 freed",
                title: "Frees from other threads go to thread_free",
                text: "The consumers freed every message, but the blocks belong to the \
                       producers' pages. A thread never touches another heap's lists: it pushes \
                       the block onto the page's thread_free with one atomic compare-and-swap. \
                       The blocks wait there (purple) until the owner collects them.",
                place: P::Segments,
                example: E::ThreadFreePage,
            },
            Step {
                marker: "round 2: produce",
                title: "The owner collects",
                text: "When a producer's page runs out of free blocks it collects: it takes the \
                       whole thread_free list with one atomic swap and makes it the page's free \
                       list. A cross-thread free costs the freeing thread one CAS, and the owner \
                       nothing per block.",
                place: P::FreeLists,
                example: E::Nothing,
            },
            Step {
                marker: "phase: done",
                title: "The same pages, round after round",
                text: "Across the rounds the same pages serve again and again: collected blocks \
                       are reused. Memory stays flat in the overview even though every free \
                       happened on another thread.",
                place: P::Overview,
                example: E::Nothing,
            },
        ],
    },
    Tour {
        scenario: "thread-churn",
        title: "Thread exit: abandon and reclaim",
        steps: &[
            Step {
                marker: "round 1: 3 threads start",
                title: "Three threads, three heaps",
                text: "Three threads start; each gets a heap at its first allocation. They \
                       allocate blocks, and keep some of them in a list that outlives them.",
                place: P::Heaps,
                example: E::Nothing,
            },
            Step {
                marker: "round 1: threads exited",
                title: "Abandoned segments",
                text: "The threads exited with blocks still in use. A heap cannot outlive its \
                       thread, so its segments were abandoned: the pages keep their blocks but \
                       have no owner, listed under Abandoned pages.",
                place: P::Heaps,
                example: E::AbandonedPage,
            },
            Step {
                marker: "round 1: main freed",
                title: "Reclaimed by the thread that frees",
                text: "Main freed half of the survivors. Freeing into an abandoned segment makes \
                       the freeing thread reclaim it: its pages join main's heap, so later frees \
                       there are local again.",
                place: P::Heaps,
                example: E::Heap("thread-churn"),
            },
            Step {
                marker: "round 2: 3 threads start",
                title: "New threads reuse old segments",
                text: "A new thread that needs a segment reclaims an abandoned one before asking \
                       the OS for fresh memory. That is why thread churn does not grow the heap: \
                       the segments of the dead threads are reused by the living.",
                place: P::Segments,
                example: E::FullestPage,
            },
            Step {
                marker: "phase: done",
                title: "All gone",
                text: "The last survivors were freed; empty pages were purged. Committed memory \
                       fell back in the overview.",
                place: P::Overview,
                example: E::Nothing,
            },
        ],
    },
    Tour {
        scenario: "server",
        title: "A server: mixed sizes, lifetimes and threads",
        steps: &[
            Step {
                marker: "phase: open",
                title: "Requests of every size",
                text: "Worker threads allocate requests from 16 bytes to 8 KiB and free them at \
                       random times, many on other threads. Each size rounds up to its size \
                       class: exact up to 64 bytes, then four classes per power of two.",
                place: P::FreeLists,
                example: E::Nothing,
            },
            Step {
                marker: "worker-1 exited",
                title: "A worker retires",
                text: "worker-1 exited while its blocks still sat in shared slots, so its heap \
                       could not give its segments back: they were abandoned, owned by no \
                       thread. A thread that frees a block into an abandoned segment, or needs \
                       a fresh one, takes it over; the heaps panel counts the pages each heap \
                       reclaimed.",
                place: P::Heaps,
                example: E::Heap("worker-2"),
            },
            Step {
                marker: "worker-3 exited",
                title: "Free lists of many classes",
                text: "Each page keeps three lists: free (popped by allocation), local_free (the \
                       owner's frees) and thread_free (other threads' frees). Keeping them apart \
                       means allocation and local frees need no atomics.",
                place: P::Segments,
                example: E::LocalFreePage,
            },
            Step {
                marker: "phase: shutdown",
                title: "Shutdown",
                text: "The last workers stop serving and free every slot, most of them blocks \
                       of other threads, which go onto their pages' thread_free lists. No worker \
                       exits before every slot is free, so each heap ends with empty pages that \
                       are retired and freed, and nothing is left abandoned.",
                place: P::Segments,
                example: E::FullestPage,
            },
            Step {
                marker: "phase: done",
                title: "Memory goes back",
                text: "Every slot is free and the workers are gone. Empty pages are purged \
                       after a short delay, and freed segments wait a little longer in the \
                       segment cache before they go back to the OS, so committed memory falls \
                       in steps in the overview.",
                place: P::Overview,
                example: E::Nothing,
            },
        ],
    },
    Tour {
        scenario: "leak",
        title: "A leak: blocks that are never freed",
        steps: &[
            Step {
                marker: "phase: churn",
                title: "Churn with a leak",
                text: "The program allocates and frees in rounds, but keeps 100 blocks of 200 \
                       bytes each round and never frees them. The allocator cannot tell a leak \
                       from a long-lived object; the pattern over time can.",
                place: P::FreeLists,
                example: E::Nothing,
            },
            Step {
                marker: "round 5:",
                title: "One class only grows",
                text: "The 224-byte class (200-byte requests round up to it) grows by 100 live \
                       blocks a round while the others stay flat. A leak shows as a class whose \
                       live blocks only grow.",
                place: P::FreeLists,
                example: E::FullestPage,
            },
            Step {
                marker: "phase: exit",
                title: "Still live at exit",
                text: "At exit 1000 blocks are still live. heaplens stats lists them as live at \
                       exit, and the insights point at their size class.",
                place: P::Segments,
                example: E::FullestPage,
            },
        ],
    },
    Tour {
        scenario: "large",
        title: "Large and huge blocks: segments come and go",
        steps: &[
            Step {
                marker: "wave 1: 2 huge",
                title: "Large pages",
                text: "Blocks over 128 KiB and up to 2 MiB live on large pages: one block a \
                       page, each page a span of 64 KiB slots in a large segment. A freed \
                       span's slots serve a block of any size next. Their memory is committed \
                       as it is touched.",
                place: P::Segments,
                example: E::LargePage,
            },
            Step {
                marker: "wave 1: free the large",
                title: "Huge segments",
                text: "Blocks over 2 MiB get a huge segment of their own, as big as the block. \
                       It is aligned like every segment, so a pointer still finds its header \
                       with a mask.",
                place: P::Segments,
                example: E::HugePage,
            },
            Step {
                marker: "wave 1: free the huge",
                title: "Freed segments are cached",
                text: "The large blocks were freed. Their segments went to the segment cache \
                       instead of straight back to the OS, so the next large allocation is cheap.",
                place: P::Overview,
                example: E::Nothing,
            },
            Step {
                marker: "phase: done",
                title: "Back to the OS",
                text: "After a delay the cached segments were unmapped and the empty pages \
                       purged: committed memory fell. The delay keeps memory that is reused at \
                       once from being returned and faulted in again.",
                place: P::Overview,
                example: E::Nothing,
            },
        ],
    },
    Tour {
        scenario: "c-program",
        title: "A C program under LD_PRELOAD",
        steps: &[
            Step {
                marker: "threads start",
                title: "heaplens in front of glibc",
                text: "A plain C program: LD_PRELOAD puts heaplens's malloc and free in front of \
                       glibc's. Four threads start; each gets its own heap at its first malloc.",
                place: P::Heaps,
                example: E::Nothing,
            },
            Step {
                marker: "threads joined",
                title: "Mixed sizes, hand-offs",
                text: "Every thread allocated and freed 20 000 blocks of mixed sizes and handed \
                       some to its neighbour, whose frees went to thread_free. The threads are \
                       gone; what they left is listed under Abandoned pages until reclaimed.",
                place: P::FreeLists,
                example: E::Nothing,
            },
        ],
    },
];

/// The tour of `scenario`.
pub fn tour(scenario: &str) -> Option<&'static Tour> {
    TOURS.iter().find(|t| t.scenario == scenario)
}
