//! A deterministic synthetic event stream shaped like the allocator's, for tests, benchmarks and
//! the golden trace file.
//!
//! It plays a small mimalloc: several threads (heaps), segments of 64 KiB small pages and 512 KiB
//! medium pages, blocks carved sequentially per extension, LIFO free lists (`free`,
//! `local_free`, `thread_free`) with collects, full and retired pages, cross-thread frees,
//! reallocs, marks and a census every so often; requests are skewed small and repeat a few
//! favourite sizes, lifetimes are mostly short. With stacks on, the stream starts with the stack
//! mode and two modules, and allocations come from a few hundred call sites (deep stacks sharing
//! their outer frames), interned per thread and sent before their first use; sampled mode draws
//! a byte countdown from an exponential distribution, as the hook does. Times follow the hook's coarse clock: one tick a
//! millisecond, every event of a tick the same time, one batch per heap per tick. It aims at
//! realistic *bytes*, not at a stream the model must agree with to the last counter.

use heaplens_alloc::bin::{PageKind, bin_of, block_size};
use std::collections::HashMap;

use heaplens_alloc::event::{Event, flags, module_text, stack_mode};
use heaplens_alloc::schema;

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct SynthConfig {
    /// Traced threads (heaps 1..=threads).
    pub threads: u32,
    /// Stop after about this many events.
    pub events: usize,
    /// Random seed: the same seed gives the same stream.
    pub seed: u64,
    /// Fraction of allocations later freed by another thread.
    pub cross_thread: f64,
    /// A census every this many ticks (milliseconds); 0: none.
    pub census_every: u64,
    /// Stack capture ([`stack_mode`]): `OFF`, `SAMPLED` or `ALL`.
    pub stacks: u16,
    /// Mean sampling interval in bytes when `stacks` is `SAMPLED`.
    pub sample_bytes: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            threads: 4,
            events: 1_000_000,
            seed: 1,
            cross_thread: 0.04,
            census_every: 1000,
            stacks: stack_mode::OFF,
            sample_bytes: 512 << 10,
        }
    }
}

/// SplitMix64: small, fast and deterministic.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() <= p
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponentially distributed with mean `mean`.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -(1.0 - self.unit()).ln() * mean
    }
}

/// Load bias of the synthetic executable (module 1) and its library (module 2).
pub const SYNTH_EXE_BIAS: u64 = 0x5555_5555_0000;
/// Load bias of the synthetic library (module 2).
pub const SYNTH_LIB_BIAS: u64 = 0x7f00_1000_0000;
/// Length of each synthetic module's executable range.
pub const SYNTH_TEXT_LEN: u64 = 0x40_0000;
/// The path of the synthetic executable.
pub const SYNTH_EXE_PATH: &str = "/opt/synth/bin/synth-server";
/// The path of the synthetic library.
pub const SYNTH_LIB_PATH: &str = "/usr/lib/x86_64-linux-gnu/libsynth.so.1";

const SEGMENT: u64 = heaplens_alloc::SEGMENT_SIZE as u64;
const INFO: u64 = heaplens_alloc::segment::INFO_SIZE as u64;

struct Page {
    start: u64,
    bin: u16,
    block: u64,
    kind: PageKind,
    reserved: u32,
    capacity: u32,
    used: u32,
    free: Vec<u64>,
    local_free: Vec<u64>,
    thread_free: Vec<u64>,
    full: bool,
    owner: u32,
    segment: usize,
    slot: usize,
    live: bool,
}

struct Segment {
    base: u64,
    kind: PageKind,
    slots: Vec<Option<usize>>,
    owner: u32,
    live: bool,
}

struct Live {
    addr: u64,
    page: usize,
    size: u64,
}

#[derive(Default)]
struct Heap {
    id: u32,
    bins: Vec<Vec<usize>>,
    live: Vec<Live>,
    inbox: Vec<Live>,
    events: Vec<Event>,
    grow: f64,
    /// Interned stack nodes: (parent id, pc) -> id.
    tree: HashMap<(u32, u64), u32>,
    /// Leaf node id of each call site, 0 until interned.
    leaves: Vec<u32>,
    /// Bytes until the next sampled allocation.
    countdown: f64,
}

struct World {
    rng: Rng,
    time: u64,
    pages: Vec<Page>,
    segments: Vec<Segment>,
    next_segment: u64,
    sizes: Vec<u64>,
    /// Stack mode, sampling interval.
    stacks: u16,
    /// Draws for stacks only (sampling, sites), so that the allocator's stream is the same
    /// with stacks as without.
    stack_rng: Rng,
    sample_bytes: f64,
    /// Call sites: return addresses, leaf first.
    sites: Vec<Vec<u64>>,
    /// The next stack node id (one counter for every thread).
    next_node: u32,
}

/// Call sites: a few hundred stacks of 4 to 24 frames, sharing outer frames (a `main`, a
/// dozen top-level functions, and so on), leaves mostly in the executable, some in the library.
fn site_table(rng: &mut Rng) -> Vec<Vec<u64>> {
    let func = |m: u64, f: u64, off: u64| {
        if m == 0 {
            SYNTH_EXE_BIAS + 0x1000 + f * 0x180 + off
        } else {
            SYNTH_LIB_BIAS + 0x2000 + f * 0x140 + off
        }
    };
    (0..300)
        .map(|_| {
            let depth = 4 + rng.below(21) as usize;
            let mut outer_first: Vec<u64> = Vec::with_capacity(depth);
            for level in 0..depth {
                // Outer levels choose among few functions, inner levels among many.
                let choices = (2 + level as u64 * 6).min(400);
                let f = rng.below(choices) + level as u64 * 40;
                let in_lib = level + 2 >= depth && rng.chance(0.2);
                outer_first.push(func(u64::from(in_lib), f, 0x10 + rng.below(4) * 0x18));
            }
            outer_first.reverse();
            outer_first
        })
        .collect()
}

/// The process events that start a stream with stacks: the mode, then two modules.
fn stack_prelude(mode: u16, interval: u64, out: &mut Vec<Event>) {
    let interval = if mode == stack_mode::SAMPLED {
        interval
    } else {
        0
    };
    out.push(
        schema::StackMode {
            interval,
            mode,
            flags: 0,
        }
        .into_event(),
    );
    for (id, bias, path, build_id) in [
        (1u32, SYNTH_EXE_BIAS, SYNTH_EXE_PATH, &[0xab_u8; 20][..]),
        (2, SYNTH_LIB_BIAS, SYNTH_LIB_PATH, &[0xcd; 20][..]),
    ] {
        out.push(schema::Module { bias, id, flags: 0 }.into_event());
        out.push(
            schema::ModuleRange {
                start: bias + 0x1000,
                len: SYNTH_TEXT_LEN,
                id,
                flags: 0,
            }
            .into_event(),
        );
        for (what, text) in [
            (module_text::PATH, path.as_bytes()),
            (module_text::BUILD_ID, build_id),
        ] {
            let pieces: Vec<&[u8]> = text.chunks(16).collect();
            for (i, piece) in pieces.iter().enumerate() {
                let (addr, arg) = Event::pack_text(piece);
                let more = if i + 1 < pieces.len() { flags::MORE } else { 0 };
                out.push(
                    schema::ModuleText {
                        text_lo: addr,
                        text_hi: arg,
                        id,
                        what,
                        flags: more,
                    }
                    .into_event(),
                );
            }
        }
    }
}

/// Favourite request sizes, most common first.
fn size_table(rng: &mut Rng) -> Vec<u64> {
    (0..96)
        .map(|i| {
            let r = rng.below(1000);
            let base = match r {
                0..=549 => 8 + rng.below(57),
                550..=849 => 65 + rng.below(192),
                850..=969 => 257 + rng.below(1800),
                970..=996 => 2048 + rng.below(14_000),
                _ => 16_384 + rng.below(100_000),
            };
            // Many programs ask for round sizes.
            if i % 3 == 0 {
                base.next_multiple_of(8)
            } else {
                base
            }
        })
        .collect()
}

impl World {
    /// The stack id of an allocation of `size` bytes (0: none), interning its site's frames
    /// into `heap`'s tree (their events go out before the allocation's).
    fn stack_for(&mut self, heap: &mut Heap, size: u64) -> u32 {
        match self.stacks {
            stack_mode::ALL => {}
            stack_mode::SAMPLED => {
                heap.countdown -= size as f64;
                if heap.countdown > 0.0 {
                    return 0;
                }
                while heap.countdown <= 0.0 {
                    heap.countdown += self.stack_rng.exponential(self.sample_bytes).max(1.0);
                }
            }
            _ => return 0,
        }
        // A site, skewed: the first sites of the table allocate most.
        let n = self.sites.len() as u64;
        let site = ((self.stack_rng.below(n) * self.stack_rng.below(n)) / n) as usize;
        if heap.leaves.len() < self.sites.len() {
            heap.leaves.resize(self.sites.len(), 0);
        }
        if heap.leaves[site] != 0 {
            return heap.leaves[site];
        }
        let mut parent = 0u32;
        for (depth, &pc) in self.sites[site].iter().rev().enumerate() {
            let next = &mut self.next_node;
            let mut new = false;
            let id = *heap.tree.entry((parent, pc)).or_insert_with(|| {
                *next += 1;
                new = true;
                *next
            });
            if new {
                // The deepest stacks were cut by the depth limit.
                let truncated = depth == 0 && self.sites[site].len() >= 24;
                let f = if truncated { flags::TRUNCATED } else { 0 };
                heap.events.push(
                    schema::StackFrame {
                        pc,
                        parent: u64::from(parent),
                        id,
                        flags: f,
                    }
                    .into_event()
                    .at(self.time),
                );
            }
            parent = id;
        }
        heap.leaves[site] = parent;
        parent
    }

    fn size(&mut self) -> u64 {
        // Zipf-like: the first sizes of the table are asked for most.
        let n = self.sizes.len() as u64;
        let i = (self.rng.below(n) * self.rng.below(n)) / n;
        if self.rng.chance(0.03) {
            1 + self.rng.below(300)
        } else {
            self.sizes[i as usize]
        }
    }

    fn new_page(&mut self, heap: &mut Heap, bin: usize) -> usize {
        let block = block_size(bin) as u64;
        let kind = PageKind::for_block_size(block as usize);
        let (page_size, pages) = match kind {
            PageKind::Small => (heaplens_alloc::SMALL_PAGE_SIZE as u64, 64),
            PageKind::Medium => (heaplens_alloc::MEDIUM_PAGE_SIZE as u64, 8),
            // A large page is its segment's only page, as the allocator lays it out (the model
            // maps every address of such a segment to page 0).
            _ => (SEGMENT, 1),
        };
        let t = self.time;
        let found = self.segments.iter().position(|s| {
            s.live && s.owner == heap.id && s.kind == kind && s.slots.iter().any(Option::is_none)
        });
        let seg = found.unwrap_or_else(|| {
            let base = self.next_segment;
            self.next_segment += SEGMENT * (1 + u64::from(self.rng.chance(0.2)));
            heap.events.push(
                schema::SegmentAlloc {
                    base,
                    bytes: SEGMENT,
                    pages: pages as u32,
                    flags: kind as u8,
                }
                .into_event()
                .at(t),
            );
            self.segments.push(Segment {
                base,
                kind,
                slots: vec![None; pages],
                owner: heap.id,
                live: true,
            });
            self.segments.len() - 1
        });
        let slot = self.segments[seg]
            .slots
            .iter()
            .position(Option::is_none)
            .unwrap_or(0);
        let offset = if slot == 0 { INFO } else { 0 };
        let start = self.segments[seg].base + slot as u64 * page_size + offset;
        let reserved = ((page_size - offset) / block) as u32;
        heap.events.push(
            schema::PageInit {
                start,
                block_size: block,
                reserved,
                bin: bin as u16,
                flags: kind as u8,
            }
            .into_event()
            .at(t),
        );
        let id = self.pages.len();
        self.pages.push(Page {
            start,
            bin: bin as u16,
            block,
            kind,
            reserved,
            capacity: 0,
            used: 0,
            free: Vec::new(),
            local_free: Vec::new(),
            thread_free: Vec::new(),
            full: false,
            owner: heap.id,
            segment: seg,
            slot,
            live: true,
        });
        self.segments[seg].slots[slot] = Some(id);
        self.extend(heap, id);
        id
    }

    fn extend(&mut self, heap: &mut Heap, id: usize) -> bool {
        let p = &mut self.pages[id];
        if p.capacity >= p.reserved {
            return false;
        }
        let n = (u64::from(p.reserved - p.capacity)).min((4096 / p.block).max(1)) as u32;
        for i in (0..n).rev() {
            p.free.push(p.start + u64::from(p.capacity + i) * p.block);
        }
        p.capacity += n;
        heap.events.push(
            schema::PageExtend {
                start: p.start,
                capacity: p.capacity,
                flags: 0,
            }
            .into_event()
            .at(self.time),
        );
        true
    }

    /// A block from page `id`, making room on it if it can; `None` if the page is full.
    fn pop(&mut self, heap: &mut Heap, id: usize) -> Option<u64> {
        loop {
            if let Some(a) = self.pages[id].free.pop() {
                return Some(a);
            }
            let p = &mut self.pages[id];
            if !p.local_free.is_empty() || !p.thread_free.is_empty() {
                let (local, thread) = (p.local_free.len() as u64, p.thread_free.len() as u32);
                p.free.append(&mut p.thread_free);
                p.free.append(&mut p.local_free);
                heap.events.push(
                    schema::PageCollect {
                        start: p.start,
                        // Everything goes to `free`: the thread-free blocks by way of
                        // `local_free`, as the allocator's collect reports them.
                        to_free: local + u64::from(thread),
                        from_thread_free: thread,
                        flags: 0,
                    }
                    .into_event()
                    .at(self.time),
                );
                continue;
            }
            if !self.extend(heap, id) {
                return None;
            }
        }
    }

    fn alloc(&mut self, heap: &mut Heap, size: u64, flags: u8) -> Live {
        let stack = self.stack_for(heap, size);
        let bin = bin_of(size as usize);
        let t = self.time;
        let addr;
        let page;
        loop {
            if let Some(&id) = heap.bins[bin].last() {
                if let Some(a) = self.pop(heap, id) {
                    addr = a;
                    page = id;
                    break;
                }
                // Full: to the full queue.
                let p = &mut self.pages[id];
                p.full = true;
                heap.events.push(
                    schema::PageFull {
                        start: p.start,
                        flags: 0,
                    }
                    .into_event()
                    .at(t),
                );
                heap.bins[bin].pop();
            } else {
                let id = self.new_page(heap, bin);
                heap.bins[bin].push(id);
            }
        }
        self.pages[page].used += 1;
        heap.events.push(
            schema::Alloc {
                ptr: addr,
                size,
                stack,
                bin: 0,
                flags,
            }
            .into_event()
            .at(t),
        );
        Live { addr, page, size }
    }

    fn free(&mut self, heap: &mut Heap, b: &Live, flags: u8) {
        let t = self.time;
        let p = &mut self.pages[b.page];
        if p.owner != heap.id {
            p.thread_free.push(b.addr);
            p.used -= 1;
            heap.events.push(
                schema::Free {
                    ptr: b.addr,
                    flags: flags | flags::CROSS_THREAD,
                }
                .into_event()
                .at(t),
            );
            return;
        }
        p.local_free.push(b.addr);
        p.used -= 1;
        heap.events
            .push(schema::Free { ptr: b.addr, flags }.into_event().at(t));
        let bin = p.bin as usize;
        if p.full {
            p.full = false;
            heap.events.push(
                schema::PageUnfull {
                    start: p.start,
                    flags: 0,
                }
                .into_event()
                .at(t),
            );
            heap.bins[bin].insert(0, b.page);
        }
        let current = heap.bins[bin].last() == Some(&b.page);
        if p.used == 0 && p.thread_free.is_empty() && !current {
            self.retire(heap, b.page);
        }
    }

    fn retire(&mut self, heap: &mut Heap, id: usize) {
        let t = self.time;
        let p = &mut self.pages[id];
        p.live = false;
        let (start, seg, slot, bin) = (p.start, p.segment, p.slot, p.bin as usize);
        heap.bins[bin].retain(|&x| x != id);
        heap.events
            .push(schema::PageRetire { start, flags: 0 }.into_event().at(t));
        heap.events
            .push(schema::PageFree { start, flags: 0 }.into_event().at(t));
        let s = &mut self.segments[seg];
        s.slots[slot] = None;
        if s.slots.iter().all(Option::is_none) {
            s.live = false;
            heap.events.push(
                schema::SegmentFree {
                    base: s.base,
                    bytes: SEGMENT,
                    flags: flags::CACHED,
                }
                .into_event()
                .at(t),
            );
        }
    }

    fn census(&self, number: u32, out: &mut Vec<Event>) {
        let t = self.time;
        let begin = out.len();
        out.push(
            schema::CensusBegin {
                pages: 0,
                number,
                flags: 0,
            }
            .into_event()
            .at(t),
        );
        let mut pages = 0;
        for s in self.segments.iter().filter(|s| s.live) {
            let count = s.slots.len() as u32;
            out.push(
                schema::CensusSegment {
                    base: s.base,
                    bytes: SEGMENT,
                    pages: count,
                    flags: s.kind as u8,
                }
                .into_event()
                .at(t),
            );
            for &id in s.slots.iter().flatten() {
                let p = &self.pages[id];
                pages += 1;
                out.push(
                    schema::CensusPage {
                        start: p.start,
                        block_size: p.block,
                        capacity: p.capacity,
                        bin: p.bin,
                        flags: p.kind as u8,
                    }
                    .into_event()
                    .at(t),
                );
                out.push(
                    schema::CensusPage2 {
                        owner: u64::from(p.owner),
                        counts: u64::from(p.used) | ((p.local_free.len() as u64) << 32),
                        thread_free: p.thread_free.len() as u32,
                        flags: u8::from(p.full),
                    }
                    .into_event()
                    .at(t),
                );
            }
        }
        out[begin].arg = pages;
        out.push(schema::CensusEnd { number, flags: 0 }.into_event().at(t));
    }
}

/// Generates a stream: batches `(heap, events)` in the order a collector would hand them over.
pub fn generate(config: &SynthConfig) -> Vec<(u32, Vec<Event>)> {
    let mut rng = Rng::new(config.seed);
    let sizes = size_table(&mut rng);
    let stacks = config.stacks;
    // Drawn only with stacks, so a stream without them is the same as before they existed.
    let sites = if stacks == stack_mode::OFF {
        Vec::new()
    } else {
        site_table(&mut Rng::new(config.seed ^ 0x5eed))
    };
    let mut w = World {
        rng,
        time: 0,
        pages: Vec::new(),
        segments: Vec::new(),
        next_segment: 0x7f3a_0000_0000,
        sizes,
        stacks,
        stack_rng: Rng::new(config.seed ^ 0x57ac),
        sample_bytes: config.sample_bytes.max(1) as f64,
        sites,
        next_node: 0,
    };
    let threads = config.threads.max(1);
    let mut heaps: Vec<Heap> = (1..=threads)
        .map(|id| Heap {
            id,
            bins: vec![Vec::new(); heaplens_alloc::bin::BIN_COUNT],
            grow: 0.55,
            countdown: config.sample_bytes as f64,
            ..Heap::default()
        })
        .collect();
    let mut out: Vec<(u32, Vec<Event>)> = Vec::new();
    let mut total = 0usize;
    let mut process = Vec::new();
    if stacks != stack_mode::OFF {
        stack_prelude(stacks, config.sample_bytes, &mut process);
    }
    for h in &mut heaps {
        let name = format!("worker-{}", h.id);
        let (addr, arg) = Event::pack_text(name.as_bytes());
        h.events.push(
            schema::ThreadStart {
                os_tid: 1000 + u64::from(h.id),
                heap: h.id,
                flags: 0,
            }
            .into_event(),
        );
        process.push(
            schema::ThreadName {
                text_lo: addr,
                text_hi: arg,
                heap: h.id,
                flags: 0,
            }
            .into_event(),
        );
    }
    let mut census = 0u32;
    let mut tick = 0u64;
    while total < config.events {
        w.time = tick * 1_000_000;
        if tick > 0 && config.census_every > 0 && tick.is_multiple_of(config.census_every) {
            census += 1;
            w.census(census, &mut process);
        }
        if !process.is_empty() {
            total += process.len();
            out.push((0, std::mem::take(&mut process)));
        }
        for hi in 0..heaps.len() {
            let mut heap = std::mem::take(&mut heaps[hi]);
            if tick.is_multiple_of(200) {
                heap.grow = [0.45, 0.5, 0.53, 0.6][w.rng.below(4) as usize];
            }
            if heap.id == 1 && tick % 500 == 250 {
                let (addr, arg) = Event::pack_text(format!("phase {}", tick / 500).as_bytes());
                heap.events.push(
                    schema::Mark {
                        text_lo: addr,
                        text_hi: arg,
                        flags: 0,
                    }
                    .into_event()
                    .at(w.time),
                );
            }
            let ops = 100 + w.rng.below(1400);
            for _ in 0..ops {
                step(&mut w, &mut heap, &mut heaps, threads, config.cross_thread);
            }
            if !heap.events.is_empty() {
                total += heap.events.len();
                out.push((heap.id, std::mem::take(&mut heap.events)));
            }
            heaps[hi] = heap;
        }
        tick += 1;
    }
    out
}

fn step(w: &mut World, heap: &mut Heap, others: &mut [Heap], threads: u32, cross: f64) {
    let r = w.rng.below(1000);
    if r < 10 && !heap.live.is_empty() {
        // realloc
        let i = w.rng.below(heap.live.len() as u64) as usize;
        let old = heap.live.swap_remove(i);
        let size = old.size + old.size / 2 + 1;
        let owner = w.pages[old.page].owner == heap.id;
        if owner && size <= w.pages[old.page].block {
            heap.events.push(
                schema::Resize {
                    ptr: old.addr,
                    size,
                    flags: 0,
                }
                .into_event()
                .at(w.time),
            );
            heap.live.push(Live { size, ..old });
        } else {
            let new = w.alloc(heap, size, flags::REALLOC);
            w.free(heap, &old, flags::REALLOC);
            heap.events.push(
                schema::Realloc {
                    ptr: new.addr,
                    old: old.addr,
                    size: size.min(u64::from(u32::MAX)) as u32,
                    flags: 0,
                }
                .into_event()
                .at(w.time),
            );
            heap.live.push(new);
        }
    } else if !heap.inbox.is_empty() && r < 60 {
        let b = heap.inbox.swap_remove(0);
        w.free(heap, &b, 0);
    } else if heap.live.is_empty() || w.rng.chance(heap.grow) {
        let size = w.size();
        let b = w.alloc(heap, size, 0);
        if threads > 1 && w.rng.chance(cross) {
            // Handed to another thread, which frees it later.
            let to = w.rng.below(u64::from(threads - 1)) as usize;
            let to = if to + 1 >= heap.id as usize {
                to + 1
            } else {
                to
            };
            if let Some(o) = others.get_mut(to) {
                o.inbox.push(b);
            }
        } else {
            heap.live.push(b);
        }
    } else {
        // Mostly short lifetimes: one of the latest blocks, else any.
        let n = heap.live.len() as u64;
        let i = if w.rng.chance(0.6) {
            n - 1 - w.rng.below(n.min(8))
        } else {
            w.rng.below(n)
        };
        let b = heap.live.swap_remove(i as usize);
        w.free(heap, &b, 0);
    }
}

/// Every event of a stream with its heap, in order.
pub fn flatten(batches: &[(u32, Vec<Event>)]) -> Vec<(u32, Event)> {
    batches
        .iter()
        .flat_map(|(h, evs)| evs.iter().map(move |&e| (*h, e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use heaplens_alloc::event::EventKind;

    #[test]
    fn deterministic_and_varied() {
        let cfg = SynthConfig {
            events: 50_000,
            census_every: 10,
            ..SynthConfig::default()
        };
        let a = generate(&cfg);
        assert_eq!(flatten(&a), flatten(&generate(&cfg)));
        let all = flatten(&a);
        assert!(all.len() >= 50_000);
        let count = |k: EventKind| all.iter().filter(|(_, e)| e.kind == k as u8).count();
        for k in [
            EventKind::Alloc,
            EventKind::Free,
            EventKind::PageInit,
            EventKind::PageExtend,
            EventKind::PageCollect,
            EventKind::SegmentAlloc,
            EventKind::CensusPage,
            EventKind::Realloc,
            EventKind::Resize,
        ] {
            assert!(count(k) > 0, "{k:?}");
        }
        let cross = all
            .iter()
            .filter(|(_, e)| e.flags & flags::CROSS_THREAD != 0)
            .count();
        assert!(cross > 100);
        // Times never go backwards.
        assert!(all.windows(2).all(|w| w[0].1.time <= w[1].1.time));
    }

    #[test]
    fn stacks_are_interned_before_use() {
        for mode in [stack_mode::ALL, stack_mode::SAMPLED] {
            let cfg = SynthConfig {
                events: 60_000,
                stacks: mode,
                sample_bytes: 4096,
                ..SynthConfig::default()
            };
            let all = flatten(&generate(&cfg));
            assert_eq!(all[..], flatten(&generate(&cfg))[..]);
            let mut known: HashMap<u32, (u32, u64)> = HashMap::new();
            let (mut with, mut without) = (0usize, 0usize);
            for (heap, e) in &all {
                match EventKind::from_u8(e.kind) {
                    Some(EventKind::StackFrame) => {
                        let parent = e.arg as u32;
                        assert!(parent == 0 || known.contains_key(&parent));
                        assert!(known.insert(e.arg32, (*heap, e.addr)).is_none());
                    }
                    Some(EventKind::Alloc) if e.arg32 != 0 => {
                        // Interned by this heap before its first use.
                        assert_eq!(known[&e.arg32].0, *heap);
                        with += 1;
                    }
                    Some(EventKind::Alloc) => without += 1,
                    _ => {}
                }
            }
            assert!(with > 0);
            if mode == stack_mode::ALL {
                assert_eq!(without, 0);
            } else {
                assert!(without > with, "{without} unsampled, {with} sampled");
            }
            let kinds = |k: EventKind| all.iter().filter(|(_, e)| e.kind == k as u8).count();
            assert_eq!(kinds(EventKind::StackMode), 1);
            assert_eq!(kinds(EventKind::Module), 2);
        }
    }
}
