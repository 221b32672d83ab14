//! heaplens against mimalloc, jemalloc and the system allocator (glibc), reported as ratios.
//!
//! Run: `cargo bench -p heaplens-alloc --bench alloc_ratios [-- --quick] [--rounds N]
//! [--workload NAME[,NAME]] [--alloc NAME[,NAME]] [--scale F]`.
//!
//! Every workload is written once, generic over `A: GlobalAlloc`, and monomorphised for each
//! allocator; it calls `alloc`/`dealloc`/`realloc` directly with `Layout`s. Each measurement runs
//! in a fresh child process (this binary re-executes itself with `--child ALLOC WORKLOAD SCALE`),
//! so every allocator starts from a clean process and its peak RSS (`VmHWM`) is its own. In the
//! child, the process's global allocator (used by the workloads' bookkeeping: slot vectors,
//! channels, thread spawning) is the allocator under test as well, selected before the first
//! allocation from the `HEAPLENS_BENCH_ALLOC` environment variable the parent sets.
//!
//! Rounds are interleaved (for each round, each workload, each allocator in an order rotated per
//! round) so that drift in the machine's state spreads over all allocators. Per workload the
//! report gives the median time and peak RSS of each allocator, then heaplens's ratio to each of
//! the others, then the geometric means of those ratios. Every workload checks its results
//! (tree node counts, tags written into every block and read back before it is freed, full
//! contents of grown buffers), so a broken allocator fails instead of looking fast.
#![allow(unsafe_code)] // benchmarks call the raw allocator API

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::CStr;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use heaplens_alloc::HeapLens;
use mimalloc::MiMalloc;
use tikv_jemallocator::Jemalloc;

// ---------------------------------------------------------------------------------------------
// Allocators
// ---------------------------------------------------------------------------------------------

/// The allocators compared. heaplens comes first: every ratio is heaplens / other.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Alloc {
    HeapLens,
    MiMalloc,
    Jemalloc,
    System,
    /// heaplens built without the event hook (crate heaplens-alloc-nohook, same source).
    HeapLensNoHook,
    /// heaplens with the hook on: a collector runs and receives every event (stacks off).
    HeapLensHookOn,
    /// The hook on with stacks sampled (mean interval 512 KiB).
    HeapLensStacksSampled,
    /// The hook on with a stack for every allocation.
    HeapLensStacksAll,
}

const ALLOCS: [Alloc; 8] = [
    Alloc::HeapLens,
    Alloc::MiMalloc,
    Alloc::Jemalloc,
    Alloc::System,
    Alloc::HeapLensNoHook,
    Alloc::HeapLensHookOn,
    Alloc::HeapLensStacksSampled,
    Alloc::HeapLensStacksAll,
];

impl Alloc {
    fn name(self) -> &'static str {
        match self {
            Alloc::HeapLens => "heaplens",
            Alloc::MiMalloc => "mimalloc",
            Alloc::Jemalloc => "jemalloc",
            Alloc::System => "system",
            Alloc::HeapLensNoHook => "heaplens-nohook",
            Alloc::HeapLensHookOn => "heaplens-hook-on",
            Alloc::HeapLensStacksSampled => "heaplens-stacks-sampled",
            Alloc::HeapLensStacksAll => "heaplens-stacks-all",
        }
    }

    fn from_name(name: &str) -> Option<Alloc> {
        ALLOCS.into_iter().find(|a| a.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

static HEAPLENS: HeapLens = HeapLens;
static NOHOOK: heaplens_alloc_nohook::HeapLens = heaplens_alloc_nohook::HeapLens;
static MIMALLOC: MiMalloc = MiMalloc;
static JEMALLOC: Jemalloc = Jemalloc;
static SYSTEM: System = System;

/// Environment variable naming the allocator that serves this process's global allocations.
const ENV_ALLOC: &CStr = c"HEAPLENS_BENCH_ALLOC";
const UNSET: u8 = u8::MAX;
static PROCESS_ALLOC: AtomicU8 = AtomicU8::new(UNSET);

/// The process's global allocator: the system allocator in the parent, the allocator under test
/// in a child. Chosen once, at the first allocation (before `main`), and never changed, so every
/// block is freed by the allocator that made it.
struct ProcessAlloc;

impl ProcessAlloc {
    #[inline]
    fn which() -> u8 {
        match PROCESS_ALLOC.load(Ordering::Relaxed) {
            UNSET => Self::choose(),
            v => v,
        }
    }

    #[cold]
    fn choose() -> u8 {
        // SAFETY: `getenv` does not allocate; nothing in this program calls `setenv`, so the
        // environment is not modified concurrently. The name is a NUL-terminated literal.
        let value = unsafe { libc::getenv(ENV_ALLOC.as_ptr()) };
        let chosen = if value.is_null() {
            Alloc::System
        } else {
            // SAFETY: a non-null `getenv` result is a NUL-terminated string that lives as long
            // as the environment is not modified (never, see above).
            let value = unsafe { CStr::from_ptr(value) };
            value
                .to_str()
                .ok()
                .and_then(Alloc::from_name)
                .unwrap_or(Alloc::System)
        };
        // Racing first allocations compute the same value, so a plain store is enough.
        PROCESS_ALLOC.store(chosen as u8, Ordering::Relaxed);
        chosen as u8
    }

    fn current() -> Alloc {
        ALLOCS[usize::from(Self::which())]
    }
}

// SAFETY: every method forwards to one allocator chosen once per process and never changed, so
// each block is reallocated and freed by the allocator that made it, under the caller's contract.
unsafe impl GlobalAlloc for ProcessAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            match Self::which() {
                0 | 5..=7 => HEAPLENS.alloc(layout),
                4 => NOHOOK.alloc(layout),
                1 => MIMALLOC.alloc(layout),
                2 => JEMALLOC.alloc(layout),
                _ => SYSTEM.alloc(layout),
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            match Self::which() {
                0 | 5..=7 => HEAPLENS.alloc_zeroed(layout),
                4 => NOHOOK.alloc_zeroed(layout),
                1 => MIMALLOC.alloc_zeroed(layout),
                2 => JEMALLOC.alloc_zeroed(layout),
                _ => SYSTEM.alloc_zeroed(layout),
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees; `ptr` came from the same allocator.
        unsafe {
            match Self::which() {
                0 | 5..=7 => HEAPLENS.dealloc(ptr, layout),
                4 => NOHOOK.dealloc(ptr, layout),
                1 => MIMALLOC.dealloc(ptr, layout),
                2 => JEMALLOC.dealloc(ptr, layout),
                _ => SYSTEM.dealloc(ptr, layout),
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees; `ptr` came from the same allocator.
        unsafe {
            match Self::which() {
                0 | 5..=7 => HEAPLENS.realloc(ptr, layout, new_size),
                4 => NOHOOK.realloc(ptr, layout, new_size),
                1 => MIMALLOC.realloc(ptr, layout, new_size),
                2 => JEMALLOC.realloc(ptr, layout, new_size),
                _ => SYSTEM.realloc(ptr, layout, new_size),
            }
        }
    }
}

#[global_allocator]
static GLOBAL: ProcessAlloc = ProcessAlloc;

// ---------------------------------------------------------------------------------------------
// Helpers for workloads
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, fast, and the same sequence for every allocator.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    fn percent(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// Alignment of every workload layout but the large ones: what most Rust objects ask for.
const ALIGN: usize = 8;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, ALIGN).expect("benchmark sizes are valid layouts")
}

fn scaled(n: usize, scale: f64) -> usize {
    ((n as f64 * scale) as usize).max(1)
}

/// A live block of a workload: its address, size and the tag written into it.
#[derive(Clone, Copy)]
struct Block {
    ptr: usize,
    size: usize,
    tag: u64,
}

impl Block {
    const EMPTY: Block = Block {
        ptr: 0,
        size: 0,
        tag: 0,
    };
}

/// Allocates `size >= 8` bytes and writes `tag` into the first 8 bytes and (if there is one
/// more) into the last byte.
///
/// # Safety
/// `a` must be a working allocator; `size >= 8`.
#[inline(always)]
unsafe fn alloc_tagged<A: GlobalAlloc>(a: &A, size: usize, tag: u64) -> Block {
    // SAFETY: `size >= 8`, so the layout has a non-zero size.
    let ptr = unsafe { a.alloc(layout(size)) };
    assert!(!ptr.is_null(), "allocation of {size} bytes failed");
    // SAFETY: `ptr` points to `size >= 8` writable bytes.
    unsafe {
        ptr.cast::<u64>().write_unaligned(tag);
        if size > 8 {
            ptr.add(size - 1).write(tag as u8);
        }
    }
    Block {
        ptr: ptr as usize,
        size,
        tag,
    }
}

/// Checks the tags written by [`alloc_tagged`] and frees the block; returns the tag.
///
/// # Safety
/// `b` must come from `alloc_tagged` with the same allocator and not be freed yet.
#[inline(always)]
unsafe fn free_tagged<A: GlobalAlloc>(a: &A, b: Block) -> u64 {
    let ptr = b.ptr as *mut u8;
    // SAFETY: `b` is a live block of `b.size >= 8` bytes.
    let head = unsafe { ptr.cast::<u64>().read_unaligned() };
    let tail = if b.size > 8 {
        // SAFETY: `b.size - 1` is inside the block.
        unsafe { ptr.add(b.size - 1).read() }
    } else {
        b.tag as u8
    };
    assert!(
        head == b.tag && tail == b.tag as u8,
        "block {ptr:p} ({} bytes) corrupted: tag {head:#x}/{tail:#x}, expected {:#x}",
        b.size,
        b.tag
    );
    // SAFETY: allocated by `a` with this layout.
    unsafe { a.dealloc(ptr, layout(b.size)) };
    b.tag
}

// ---------------------------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------------------------

struct Workload {
    name: &'static str,
    about: &'static str,
}

const WORKLOADS: [Workload; 6] = [
    Workload {
        name: "churn",
        about: "small-object churn: 8..512 B, 10k live slots, each step frees a random slot and refills it",
    },
    Workload {
        name: "prodcons",
        about: "producer/consumer: one thread allocates 16..256 B, another frees every block (cross-thread)",
    },
    Workload {
        name: "trees",
        about: "binary trees (benchmarks game), depth 16: millions of 16 B nodes built and torn down",
    },
    Workload {
        name: "larson",
        about: "larson-like server: 4 threads x rounds, mixed sizes/lifetimes, slots handed to new threads",
    },
    Workload {
        name: "realloc",
        about: "realloc growth: 64 buffers grown by doubling (to 64 KiB) or by 1..64 B steps (to 4 KiB)",
    },
    Workload {
        name: "large",
        about: "mixed large: 64 KiB..4 MiB blocks, 24 live, every page touched",
    },
];

/// Runs workload `name` on `a` at `scale`; returns its duration and a checksum.
fn run_workload<A: GlobalAlloc + Sync>(a: &'static A, name: &str, scale: f64) -> (Duration, u64) {
    let start = Instant::now();
    let check = match name {
        "churn" => churn(a, scale),
        "prodcons" => producer_consumer(a, scale),
        "trees" => binary_trees(a, scale),
        "larson" => larson(a, scale),
        "realloc" => realloc_growth(a, scale),
        "large" => mixed_large(a, scale),
        other => panic!("unknown workload {other}"),
    };
    (start.elapsed(), check)
}

/// Small-object churn: a window of live blocks; each step frees a random one and allocates a
/// block of a random size in its place.
fn churn<A: GlobalAlloc>(a: &A, scale: f64) -> u64 {
    const WINDOW: usize = 10_000;
    let steps = scaled(2_000_000, scale);
    let mut rng = Rng::new(1);
    let mut live = vec![Block::EMPTY; WINDOW];
    let (mut allocated, mut freed) = (0u64, 0u64);
    for step in 0..steps {
        let slot = &mut live[rng.below(WINDOW)];
        if slot.ptr != 0 {
            // SAFETY: the slot holds a live block made by `a`.
            freed = freed.wrapping_add(unsafe { free_tagged(a, *slot) });
        }
        let tag = step as u64 * 0x9e37_79b9;
        allocated = allocated.wrapping_add(tag);
        // SAFETY: sizes are >= 8.
        *slot = unsafe { alloc_tagged(a, rng.range(8, 512), tag) };
    }
    for b in live.into_iter().filter(|b| b.ptr != 0) {
        // SAFETY: every remaining slot holds a live block made by `a`.
        freed = freed.wrapping_add(unsafe { free_tagged(a, b) });
    }
    assert_eq!(
        allocated, freed,
        "churn: freed tags differ from allocated tags"
    );
    allocated
}

/// Producer/consumer: one thread allocates and tags blocks, sends their addresses over a bounded
/// channel (in batches of 64, so the channel does not dominate), the other checks and frees them.
fn producer_consumer<A: GlobalAlloc + Sync>(a: &'static A, scale: f64) -> u64 {
    const BATCH: usize = 64;
    let batches = scaled(1_000_000, scale) / BATCH;
    let (tx, rx) = sync_channel::<[Block; BATCH]>(64);
    let producer = std::thread::spawn(move || {
        let mut rng = Rng::new(2);
        let mut seq = 0u64;
        for _ in 0..batches {
            let mut batch = [Block::EMPTY; BATCH];
            for b in &mut batch {
                seq += 1;
                // SAFETY: sizes are >= 16.
                *b = unsafe { alloc_tagged(a, rng.range(16, 256), seq) };
            }
            tx.send(batch).expect("consumer alive");
        }
        seq
    });
    let consumer = std::thread::spawn(move || {
        let mut expected = 0u64;
        for batch in rx {
            for b in batch {
                expected += 1;
                assert_eq!(b.tag, expected, "prodcons: blocks arrived out of order");
                // SAFETY: the producer made this block with `a` and handed it over.
                unsafe { free_tagged(a, b) };
            }
        }
        expected
    });
    let produced = producer.join().expect("producer panicked");
    let consumed = consumer.join().expect("consumer panicked");
    assert_eq!(produced, consumed, "prodcons: blocks lost");
    consumed
}

#[repr(C)]
struct Node {
    left: *mut Node,
    right: *mut Node,
}

fn node_layout() -> Layout {
    Layout::new::<Node>()
}

fn bottom_up_tree<A: GlobalAlloc>(a: &A, depth: u32) -> *mut Node {
    let (left, right) = if depth > 0 {
        (bottom_up_tree(a, depth - 1), bottom_up_tree(a, depth - 1))
    } else {
        (std::ptr::null_mut(), std::ptr::null_mut())
    };
    // SAFETY: `Node` has a non-zero size.
    let node = unsafe { a.alloc(node_layout()) }.cast::<Node>();
    assert!(!node.is_null(), "tree node allocation failed");
    // SAFETY: `node` is a fresh allocation with the size and alignment of `Node`.
    unsafe { node.write(Node { left, right }) };
    node
}

/// Counts the nodes of the tree (reading every node) and frees it.
fn item_check_and_free<A: GlobalAlloc>(a: &A, node: *mut Node) -> u64 {
    // SAFETY: `node` is a live node built by `bottom_up_tree`.
    let Node { left, right } = unsafe { node.read() };
    // SAFETY: allocated by `a` with this layout; its children were read above.
    unsafe { a.dealloc(node.cast(), node_layout()) };
    if left.is_null() {
        1
    } else {
        1 + item_check_and_free(a, left) + item_check_and_free(a, right)
    }
}

/// The benchmarks game's binary-trees: a stretch tree, a long-lived tree, and many short-lived
/// trees of every depth; each tree's node count is checked.
fn binary_trees<A: GlobalAlloc>(a: &A, scale: f64) -> u64 {
    const MIN_DEPTH: u32 = 4;
    let max_depth: u32 = if scale >= 1.0 { 16 } else { 15 };
    let nodes = |depth: u32| (1u64 << (depth + 1)) - 1;
    let stretch = bottom_up_tree(a, max_depth + 1);
    assert_eq!(
        item_check_and_free(a, stretch),
        nodes(max_depth + 1),
        "stretch tree"
    );
    let long_lived = bottom_up_tree(a, max_depth);
    let mut total = 0u64;
    for depth in (MIN_DEPTH..=max_depth).step_by(2) {
        let iterations = 1u64 << (max_depth - depth + MIN_DEPTH);
        for _ in 0..iterations {
            let tree = bottom_up_tree(a, depth);
            let n = item_check_and_free(a, tree);
            assert_eq!(n, nodes(depth), "tree of depth {depth}");
            total += n;
        }
    }
    assert_eq!(
        item_check_and_free(a, long_lived),
        nodes(max_depth),
        "long-lived tree"
    );
    total
}

/// Larson-like server: each round, 4 new threads each take a slot array (left by a thread of the
/// previous round, so most blocks are freed by a thread other than the one that made them, often
/// after it exited) and replace random slots: short-lived blocks in a hot tenth of the slots,
/// long-lived ones elsewhere; sizes mostly small, some medium, a few up to 32 KiB.
fn larson<A: GlobalAlloc + Sync>(a: &'static A, scale: f64) -> u64 {
    const THREADS: usize = 4;
    const SLOTS: usize = 4_000;
    const ROUNDS: usize = 8;
    let steps = scaled(100_000, scale);
    let mut arrays: Vec<Vec<Block>> = (0..THREADS).map(|_| vec![Block::EMPTY; SLOTS]).collect();
    let (mut allocated, mut freed) = (0u64, 0u64);
    for round in 0..ROUNDS {
        let handles: Vec<_> = arrays
            .into_iter()
            .enumerate()
            .map(|(t, mut slots)| {
                std::thread::spawn(move || {
                    let mut rng = Rng::new((round * THREADS + t) as u64 + 100);
                    let (mut allocated, mut freed) = (0u64, 0u64);
                    for step in 0..steps {
                        let i = if rng.percent(75) {
                            rng.below(SLOTS / 10)
                        } else {
                            rng.below(SLOTS)
                        };
                        if slots[i].ptr != 0 {
                            // SAFETY: the slot holds a live block made by `a`.
                            freed = freed.wrapping_add(unsafe { free_tagged(a, slots[i]) });
                        }
                        let size = match rng.below(100) {
                            0..80 => rng.range(16, 128),
                            80..95 => rng.range(129, 2048),
                            _ => rng.range(2049, 32 * 1024),
                        };
                        let tag = ((round * THREADS + t) as u64) << 40 | step as u64;
                        allocated = allocated.wrapping_add(tag);
                        // SAFETY: sizes are >= 16.
                        slots[i] = unsafe { alloc_tagged(a, size, tag) };
                    }
                    (slots, allocated, freed)
                })
            })
            .collect();
        let mut results: Vec<Vec<Block>> = Vec::with_capacity(THREADS);
        for h in handles {
            let (slots, a_sum, f_sum) = h.join().expect("larson thread panicked");
            allocated = allocated.wrapping_add(a_sum);
            freed = freed.wrapping_add(f_sum);
            results.push(slots);
        }
        results.rotate_left(1); // hand each array to another thread next round
        arrays = results;
    }
    for b in arrays.into_iter().flatten().filter(|b| b.ptr != 0) {
        // SAFETY: every remaining slot holds a live block made by `a`.
        freed = freed.wrapping_add(unsafe { free_tagged(a, b) });
    }
    assert_eq!(
        allocated, freed,
        "larson: freed tags differ from allocated tags"
    );
    allocated
}

fn pattern(id: usize, i: usize) -> u8 {
    id.wrapping_mul(31).wrapping_add(i) as u8
}

/// Realloc growth: 64 buffers in flight, each grown either by doubling up to 1..64 KiB or by
/// small steps (1..64 B, like a string being appended to) up to 256 B..4 KiB; new bytes are
/// filled with a pattern and every buffer is checked in full before it is freed.
fn realloc_growth<A: GlobalAlloc>(a: &A, scale: f64) -> u64 {
    struct Buf {
        ptr: *mut u8,
        cap: usize,
        target: usize,
        id: usize,
        doubling: bool,
    }
    fn fill(b: &Buf, from: usize, to: usize) {
        // SAFETY: `from <= to <= b.cap`, the buffer's allocated size.
        let bytes = unsafe { std::slice::from_raw_parts_mut(b.ptr.add(from), to - from) };
        for (i, v) in bytes.iter_mut().enumerate() {
            *v = pattern(b.id, from + i);
        }
    }
    fn check(b: &Buf, len: usize) -> u64 {
        // SAFETY: `len <= b.cap`.
        let bytes = unsafe { std::slice::from_raw_parts(b.ptr, len) };
        let ok = bytes
            .iter()
            .enumerate()
            .fold(true, |ok, (i, &v)| ok & (v == pattern(b.id, i)));
        if !ok {
            let i = (0..len)
                .find(|&i| bytes[i] != pattern(b.id, i))
                .unwrap_or(0);
            panic!("realloc: buffer {} byte {i} of {len} changed", b.id);
        }
        bytes.iter().map(|&v| u64::from(v)).sum()
    }
    fn new_buf<A: GlobalAlloc>(a: &A, rng: &mut Rng, id: usize) -> Buf {
        let cap = rng.range(8, 64);
        let doubling = rng.percent(40);
        let target = if doubling {
            1 << rng.range(10, 16)
        } else {
            rng.range(256, 4096)
        };
        // SAFETY: `cap >= 8`.
        let ptr = unsafe { a.alloc(layout(cap)) };
        assert!(!ptr.is_null(), "allocation failed");
        let b = Buf {
            ptr,
            cap,
            target,
            id,
            doubling,
        };
        fill(&b, 0, cap);
        b
    }

    const LIVE: usize = 64;
    let buffers = scaled(16_000, scale);
    let mut rng = Rng::new(3);
    let mut bufs: Vec<Buf> = (0..LIVE).map(|id| new_buf(a, &mut rng, id)).collect();
    let mut next_id = LIVE;
    let mut sum = 0u64;
    while next_id < buffers + LIVE {
        let b = &mut bufs[rng.below(LIVE)];
        let new_cap = if b.doubling {
            b.cap * 2
        } else {
            b.cap + rng.range(1, 64)
        }
        .min(b.target);
        // SAFETY: `b.ptr` is live, allocated by `a` with `layout(b.cap)`; `new_cap > 0`.
        let p = unsafe { a.realloc(b.ptr, layout(b.cap), new_cap) };
        assert!(!p.is_null(), "realloc to {new_cap} failed");
        b.ptr = p;
        // spot check: the old end survived the move
        // SAFETY: `b.cap - 1 < new_cap`.
        let last = unsafe { p.add(b.cap - 1).read() };
        assert_eq!(last, pattern(b.id, b.cap - 1), "realloc: old end lost");
        let old = b.cap;
        b.cap = new_cap;
        fill(b, old, new_cap);
        if b.cap >= b.target {
            sum += check(b, b.cap);
            // SAFETY: allocated by `a` with `layout(b.cap)`.
            unsafe { a.dealloc(b.ptr, layout(b.cap)) };
            *b = new_buf(a, &mut rng, next_id);
            next_id += 1;
        }
    }
    for b in bufs {
        sum += check(&b, b.cap);
        // SAFETY: allocated by `a` with `layout(b.cap)`.
        unsafe { a.dealloc(b.ptr, layout(b.cap)) };
    }
    sum
}

/// Mixed large: a window of 24 live blocks of 64 KiB..4 MiB (log-uniform), every page written.
fn mixed_large<A: GlobalAlloc>(a: &A, scale: f64) -> u64 {
    const WINDOW: usize = 24;
    const PAGE: usize = 4096;
    let steps = scaled(1_000, scale);
    let layout = |size: usize| Layout::from_size_align(size, 64).expect("valid layout");
    let mut rng = Rng::new(4);
    let mut live: [(usize, usize, u64); WINDOW] = [(0, 0, 0); WINDOW];
    let mut sum = 0u64;
    let release = |(ptr, size, tag): (usize, usize, u64)| {
        let p = ptr as *mut u8;
        let mut s = 0u64;
        for off in (0..size).step_by(PAGE) {
            // SAFETY: `off < size`; a page tag was written at every `off`.
            let v = unsafe { p.add(off).read() };
            assert_eq!(
                v,
                (tag as usize + off / PAGE) as u8,
                "large: page at {off} of {size} changed"
            );
            s += u64::from(v);
        }
        // SAFETY: allocated by `a` with `layout(size)`.
        unsafe { a.dealloc(p, layout(size)) };
        s
    };
    for step in 0..steps {
        let slot = rng.below(WINDOW);
        if live[slot].0 != 0 {
            sum += release(live[slot]);
        }
        let exp = rng.range(16, 21);
        let size = (1 << exp) + rng.below(1 << exp);
        // SAFETY: `size > 0`.
        let p = unsafe { a.alloc(layout(size)) };
        assert!(!p.is_null(), "large allocation of {size} failed");
        for off in (0..size).step_by(PAGE) {
            // SAFETY: `off < size`.
            unsafe { p.add(off).write((step + off / PAGE) as u8) };
        }
        live[slot] = (p as usize, size, step as u64);
    }
    for b in live.into_iter().filter(|b| b.0 != 0) {
        sum += release(b);
    }
    sum
}

// ---------------------------------------------------------------------------------------------
// Child: one measurement
// ---------------------------------------------------------------------------------------------

const RESULT_PREFIX: &str = "alloc_ratios-result";

fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

fn child(args: &[String]) -> ExitCode {
    let [alloc, workload, scale] = args else {
        eprintln!("usage: alloc_ratios --child ALLOC WORKLOAD SCALE");
        return ExitCode::FAILURE;
    };
    let Some(alloc) = Alloc::from_name(alloc) else {
        eprintln!("unknown allocator {alloc}");
        return ExitCode::FAILURE;
    };
    let scale: f64 = scale.parse().expect("scale is a number");
    assert_eq!(
        ProcessAlloc::current(),
        alloc,
        "the process allocator must be the one under test: set {ENV_ALLOC:?}={}",
        alloc.name()
    );
    let start_rss = proc_status_kib("VmRSS");
    let (time, check) = match alloc {
        Alloc::HeapLens => run_workload(&HEAPLENS, workload, scale),
        Alloc::HeapLensNoHook => run_workload(&NOHOOK, workload, scale),
        Alloc::HeapLensHookOn | Alloc::HeapLensStacksSampled | Alloc::HeapLensStacksAll => {
            // Every event goes to the collector, which counts it: what streaming costs the
            // program, without a socket's or a disk's speed in the measurement.
            let mode = match alloc {
                Alloc::HeapLensStacksSampled => heaplens_alloc::StackMode::Sampled,
                Alloc::HeapLensStacksAll => heaplens_alloc::StackMode::All,
                _ => heaplens_alloc::StackMode::Off,
            };
            heaplens_alloc::set_stack_mode(mode, heaplens_alloc::sample::DEFAULT_INTERVAL);
            static EVENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let config = heaplens_alloc::collector::Config {
                lossless: true,
                census_every_ms: 1000,
                channel_buffers: 64,
            };
            heaplens_alloc::collector::start(
                config,
                Box::new(|batch| {
                    if let heaplens_alloc::collector::Handed::Batch(b) = batch {
                        EVENTS.fetch_add(b.events.len() as u64, Ordering::Relaxed);
                    }
                    true
                }),
            )
            .expect("collector starts");
            let result = run_workload(&HEAPLENS, workload, scale);
            heaplens_alloc::collector::shutdown();
            assert!(
                EVENTS.load(Ordering::Relaxed) > 0,
                "the hook delivered no events"
            );
            result
        }
        Alloc::MiMalloc => run_workload(&MIMALLOC, workload, scale),
        Alloc::Jemalloc => run_workload(&JEMALLOC, workload, scale),
        Alloc::System => run_workload(&SYSTEM, workload, scale),
    };
    let peak = proc_status_kib("VmHWM");
    println!(
        "{RESULT_PREFIX} {} {start_rss} {peak} {check}",
        time.as_nanos()
    );
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------------
// Parent: orchestration and report
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Sample {
    ms: f64,
    start_rss_mib: f64,
    peak_rss_mib: f64,
    check: u64,
}

fn measure(
    exe: &std::path::Path,
    alloc: Alloc,
    workload: &str,
    scale: f64,
) -> Result<Sample, String> {
    let out = Command::new(exe)
        .args(["--child", alloc.name(), workload, &scale.to_string()])
        .env(ENV_ALLOC.to_str().expect("ascii"), alloc.name())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("spawn: {e}"))?;
    if !out.status.success() {
        return Err(format!("child failed: {}", out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(RESULT_PREFIX))
        .ok_or_else(|| format!("no result line in {stdout:?}"))?;
    let v: Vec<u128> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let [ns, start_kib, peak_kib, check] = v[..] else {
        return Err(format!("bad result line {line:?}"));
    };
    Ok(Sample {
        ms: ns as f64 / 1e6,
        start_rss_mib: start_kib as f64 / 1024.0,
        peak_rss_mib: peak_kib as f64 / 1024.0,
        check: check as u64,
    })
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn geomean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
}

struct Options {
    rounds: usize,
    scale: f64,
    workloads: Vec<&'static Workload>,
    allocs: Vec<Alloc>,
}

const USAGE: &str = "usage: alloc_ratios [--quick] [--rounds N] [--scale F] [--workload NAME[,NAME..]] \
                     [--alloc NAME[,NAME..]]\n  workloads: churn prodcons trees larson realloc large\n  \
                     allocators: heaplens mimalloc jemalloc system heaplens-nohook heaplens-hook-on \
                     heaplens-stacks-sampled heaplens-stacks-all";

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        rounds: 5,
        scale: 1.0,
        workloads: WORKLOADS.iter().collect(),
        allocs: ALLOCS.to_vec(),
    };
    let mut rounds = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => {} // passed by `cargo bench`
            "--quick" => {
                o.scale = 0.5;
                o.rounds = 1;
            }
            "--rounds" => rounds = Some(value()?.parse().map_err(|e| format!("--rounds: {e}"))?),
            "--scale" => o.scale = value()?.parse().map_err(|e| format!("--scale: {e}"))?,
            "--workload" => {
                let names = value()?;
                o.workloads = names
                    .split(',')
                    .map(|n| {
                        WORKLOADS
                            .iter()
                            .find(|w| w.name == n)
                            .ok_or_else(|| format!("unknown workload {n}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--alloc" => {
                let names = value()?;
                let mut chosen: Vec<Alloc> = names
                    .split(',')
                    .map(|n| Alloc::from_name(n).ok_or_else(|| format!("unknown allocator {n}")))
                    .collect::<Result<_, _>>()?;
                chosen.sort_by_key(|a| a.index());
                chosen.dedup();
                o.allocs = chosen;
            }
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if let Some(r) = rounds {
        o.rounds = r;
    }
    if o.rounds == 0 || o.scale <= 0.0 {
        return Err("--rounds and --scale must be positive".into());
    }
    Ok(o)
}

/// Per workload, per allocator: the samples of every round.
type Results = Vec<Vec<Vec<Sample>>>;

fn parent(args: &[String]) -> ExitCode {
    let o = match parse_options(args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("alloc_ratios: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
    };
    let exe = std::env::current_exe().expect("current_exe");
    let mut results: Results = vec![vec![Vec::new(); ALLOCS.len()]; o.workloads.len()];
    let mut failures = Vec::new();
    eprintln!(
        "alloc_ratios: {} round(s) x {} workload(s) x {} allocator(s), scale {}, one child process each",
        o.rounds,
        o.workloads.len(),
        o.allocs.len(),
        o.scale
    );
    for round in 1..=o.rounds {
        for (wi, w) in o.workloads.iter().enumerate() {
            let mut order = o.allocs.clone();
            let n = order.len();
            order.rotate_left(round % n);
            let mut line = format!("round {round}/{} {:<9}", o.rounds, w.name);
            for alloc in order {
                match measure(&exe, alloc, w.name, o.scale) {
                    Ok(s) => {
                        let _ = write!(
                            line,
                            " {} {:.1} ms {:.1} MiB |",
                            alloc.name(),
                            s.ms,
                            s.peak_rss_mib
                        );
                        results[wi][alloc.index()].push(s);
                    }
                    Err(e) => {
                        let _ = write!(line, " {} FAILED |", alloc.name());
                        failures.push(format!(
                            "{} on {} (round {round}): {e}",
                            w.name,
                            alloc.name()
                        ));
                    }
                }
            }
            eprintln!("{}", line.trim_end_matches(" |"));
        }
    }
    let report = report(&o, &results);
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(report.as_bytes());
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        let _ = writeln!(stdout, "\nFAILED measurements:");
        for f in &failures {
            let _ = writeln!(stdout, "  {f}");
        }
        ExitCode::FAILURE
    }
}

fn report(o: &Options, results: &Results) -> String {
    let others: Vec<Alloc> = o
        .allocs
        .iter()
        .copied()
        .filter(|&a| a != Alloc::HeapLens)
        .collect();
    let has_heaplens = o.allocs.contains(&Alloc::HeapLens);
    let mut r = String::new();
    let _ = writeln!(
        r,
        "\nheaplens alloc_ratios: {} round(s), scale {}, median of rounds; peak RSS = the child's VmHWM, \
         which includes its RSS before the workload ({:.1}..{:.1} MiB here)\n",
        o.rounds,
        o.scale,
        results
            .iter()
            .flatten()
            .flatten()
            .map(|s| s.start_rss_mib)
            .fold(f64::INFINITY, f64::min),
        results
            .iter()
            .flatten()
            .flatten()
            .map(|s| s.start_rss_mib)
            .fold(0.0, f64::max)
    );
    // per-workload median (time, rss) per allocator
    let med: Vec<Vec<Option<(f64, f64)>>> = results
        .iter()
        .map(|per_alloc| {
            per_alloc
                .iter()
                .map(|s| {
                    (!s.is_empty()).then(|| {
                        let t: Vec<f64> = s.iter().map(|x| x.ms).collect();
                        let m: Vec<f64> = s.iter().map(|x| x.peak_rss_mib).collect();
                        (median(&t), median(&m))
                    })
                })
                .collect()
        })
        .collect();
    for (wi, w) in o.workloads.iter().enumerate() {
        let _ = writeln!(r, "{} - {}", w.name, w.about);
        let _ = writeln!(
            r,
            "  {:<10} {:>10} {:>19} {:>13}",
            "allocator", "time ms", "(min..max)", "peak RSS MiB"
        );
        for &alloc in &o.allocs {
            let samples = &results[wi][alloc.index()];
            match med[wi][alloc.index()] {
                Some((t, m)) => {
                    let lo = samples.iter().map(|s| s.ms).fold(f64::INFINITY, f64::min);
                    let hi = samples.iter().map(|s| s.ms).fold(0.0, f64::max);
                    let _ = writeln!(
                        r,
                        "  {:<10} {t:>10.1} {:>19} {m:>13.1}",
                        alloc.name(),
                        format!("{lo:.1}..{hi:.1}")
                    );
                }
                None => {
                    let _ = writeln!(r, "  {:<10} {:>10}", alloc.name(), "FAILED");
                }
            }
            if samples.windows(2).any(|p| p[0].check != p[1].check) {
                let _ = writeln!(
                    r,
                    "  WARNING: {} computed different checksums in different rounds",
                    alloc.name()
                );
            }
        }
        // every allocator must compute the same checksum
        let checks: Vec<u64> = o
            .allocs
            .iter()
            .filter_map(|a| results[wi][a.index()].first().map(|s| s.check))
            .collect();
        if checks.windows(2).any(|c| c[0] != c[1]) {
            let _ = writeln!(
                r,
                "  WARNING: allocators computed different checksums: {checks:?}"
            );
        }
        if has_heaplens {
            for &other in &others {
                if let (Some((ht, hm)), Some((ot, om))) = (med[wi][0], med[wi][other.index()]) {
                    let _ = writeln!(
                        r,
                        "  heaplens/{:<9} time {:>5.2}x   peak RSS {:>5.2}x",
                        other.name(),
                        ht / ot,
                        hm / om
                    );
                }
            }
        }
        r.push('\n');
    }
    if !has_heaplens || others.is_empty() {
        stack_ratios(o, &med, &mut r);
        return r;
    }
    // summary: ratios per workload and geomeans
    let _ = write!(
        r,
        "summary: heaplens / other (time | peak RSS)\n  {:<10}",
        "workload"
    );
    for other in &others {
        let _ = write!(r, " {:>19}", format!("vs {}", other.name()));
    }
    r.push('\n');
    // (workload, time ratio): the budgets that name workloads look them up
    let mut time_ratios: Vec<Vec<(&str, f64)>> = vec![Vec::new(); others.len()];
    let mut rss_ratios = vec![Vec::new(); others.len()];
    for (wi, w) in o.workloads.iter().enumerate() {
        let _ = write!(r, "  {:<10}", w.name);
        for (oi, other) in others.iter().enumerate() {
            if let (Some((ht, hm)), Some((ot, om))) = (med[wi][0], med[wi][other.index()]) {
                time_ratios[oi].push((w.name, ht / ot));
                rss_ratios[oi].push(hm / om);
                let _ = write!(r, " {:>19}", format!("{:.2}x | {:.2}x", ht / ot, hm / om));
            } else {
                let _ = write!(r, " {:>19}", "-");
            }
        }
        r.push('\n');
    }
    let _ = write!(r, "  {:<10}", "geomean");
    let mut geo = Vec::new();
    for oi in 0..others.len() {
        let times: Vec<f64> = time_ratios[oi].iter().map(|&(_, t)| t).collect();
        let (t, m) = (geomean(&times), geomean(&rss_ratios[oi]));
        geo.push((t, m));
        let cell = match (t, m) {
            (Some(t), Some(m)) => format!("{t:.2}x | {m:.2}x"),
            _ => "-".into(),
        };
        let _ = write!(r, " {cell:>19}");
    }
    r.push('\n');
    // DESIGN.md budgets, for information (never a pass/fail of the benchmark)
    let _ = writeln!(r, "\nbudgets (DESIGN.md), for information:");
    for (oi, other) in others.iter().enumerate() {
        let (Some(t), Some(m)) = geo[oi] else {
            continue;
        };
        let worst = time_ratios[oi].iter().map(|&(_, t)| t).fold(0.0, f64::max);
        let verdict = |ok: bool| if ok { "ok" } else { "OVER" };
        match other {
            Alloc::MiMalloc => {
                let worst_rss = rss_ratios[oi].iter().copied().fold(0.0, f64::max);
                let _ = writeln!(
                    r,
                    "  vs mimalloc: geomean time {t:.2}x <= 1.00x {}; worst workload {worst:.2}x <= 1.10x {}; \
                     worst peak RSS {worst_rss:.2}x <= 1.10x {} (geomean {m:.2}x)",
                    verdict(t <= 1.00),
                    verdict(worst <= 1.10),
                    verdict(worst_rss <= 1.10)
                );
            }
            Alloc::Jemalloc => {
                let _ = writeln!(
                    r,
                    "  vs jemalloc: geomean time {t:.2}x <= 0.80x {}",
                    verdict(t <= 0.80)
                );
            }
            Alloc::System => {
                let _ = writeln!(
                    r,
                    "  vs glibc:    geomean time {t:.2}x <= 0.80x {}",
                    verdict(t <= 0.80)
                );
            }
            Alloc::HeapLensNoHook => {
                let _ = writeln!(
                    r,
                    "  hook compiled in, off, vs compiled out: geomean time {t:.3}x <= 1.03x {}",
                    verdict(t <= 1.03)
                );
            }
            Alloc::HeapLensHookOn => {
                // The budget names the churn, cross-thread and trees workloads.
                let on = 1.0 / t;
                let worst = time_ratios[oi]
                    .iter()
                    .filter(|(w, _)| HOOK_BUDGET_WORKLOADS.contains(w))
                    .map(|&(w, x)| (w, 1.0 / x))
                    .fold(("-", 0.0), |a, b| if b.1 > a.1 { b } else { a });
                let _ = writeln!(
                    r,
                    "  hook on (events streamed) vs off: geomean time {on:.2}x; on {}: worst {:.2}x ({}) <= 2x {}",
                    HOOK_BUDGET_WORKLOADS.join(", "),
                    worst.1,
                    worst.0,
                    verdict(worst.1 <= 2.0)
                );
            }
            _ => {}
        }
    }
    stack_ratios(o, &med, &mut r);
    r
}

/// Stacks sampled and all against stacks off (the hook on in every case), per workload.
fn stack_ratios(o: &Options, med: &[Vec<Option<(f64, f64)>>], r: &mut String) {
    let off = Alloc::HeapLensHookOn.index();
    if o.allocs.contains(&Alloc::HeapLensHookOn) {
        let _ = writeln!(
            r,
            "
stacks (the hook on in every case), for information:"
        );
    }
    for (alloc, budget) in [
        (Alloc::HeapLensStacksSampled, Some(1.1)),
        (Alloc::HeapLensStacksAll, None),
    ] {
        if !o.allocs.contains(&alloc) || !o.allocs.contains(&Alloc::HeapLensHookOn) {
            continue;
        }
        let ratios: Vec<(&str, f64)> = o
            .workloads
            .iter()
            .enumerate()
            .filter_map(|(wi, w)| Some((w.name, med[wi][alloc.index()]?.0 / med[wi][off]?.0)))
            .collect();
        let Some(g) = geomean(&ratios.iter().map(|&(_, t)| t).collect::<Vec<_>>()) else {
            continue;
        };
        let worst = ratios
            .iter()
            .copied()
            .fold(("-", 0.0), |a, b| if b.1 > a.1 { b } else { a });
        let each: Vec<String> = ratios.iter().map(|(w, t)| format!("{w} {t:.2}x")).collect();
        let verdict = budget.map_or(String::new(), |b: f64| {
            format!(" <= {b}x {}", if worst.1 <= b { "ok" } else { "OVER" })
        });
        let _ = writeln!(
            r,
            "  {} vs stacks off (hook on): geomean time {g:.2}x; worst {:.2}x ({}){verdict}; {}",
            alloc.name(),
            worst.1,
            worst.0,
            each.join(", ")
        );
    }
}

/// The workloads the hook-on budget names: churn, cross-thread frees, binary trees.
const HOOK_BUDGET_WORKLOADS: [&str; 3] = ["churn", "prodcons", "trees"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--child") => child(&args[1..]),
        _ => parent(&args),
    }
}
