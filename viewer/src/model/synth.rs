//! Synthetic event streams: a small simulation of the allocator that emits the events its hook
//! would, for tests, benchmarks and demos without a live process.
//!
//! It follows the allocator's design closely enough that the model must agree with it exactly:
//! pages carved a few KiB at a time, three free lists, a full queue with delayed frees, retire and
//! page free, segment cache reuse of addresses, thread exit with abandon, and reclaim (by a thread
//! that needs a segment or that frees into an abandoned one). Like the real hook it reports a
//! cross-thread free only after the block was pushed, sometimes late (after the owner collected
//! it), and moves the clock on after it abandons or frees a segment. [`Synth::census`] gives its
//! true state, [`Synth::live_blocks`] its live blocks.
//!
//! With stacks (`SynthConfig::stacks`) each allocation comes from one of a few dozen call sites,
//! each thread interns the frames of a site before its first use (ids from one counter), and
//! [`Synth::site_live_bytes`] gives the exact live bytes per site.
//!
//! Events come out in true order with coarse tick times; [`shuffle_within_ticks`] reorders them the
//! way the collector may deliver them.

use std::collections::{BTreeMap, HashMap};

use heaplens_alloc::bin::{BIN_HUGE, PageKind, bin_of, block_size};
use heaplens_alloc::event::{Event, flags, stack_mode};
use heaplens_alloc::schema;
use heaplens_alloc::segment::INFO_SIZE;
use heaplens_alloc::{
    LARGE_OBJ_SIZE_MAX, MEDIUM_PAGE_SIZE, SEGMENT_SIZE, SMALL_PAGE_SIZE, SMALL_PAGES_PER_SEGMENT,
};

use super::census::{Census, CensusPage, CensusSegment};
use super::segment::segment_base;

/// Nanoseconds per clock tick.
pub const TICK_NS: u64 = 1_000_000;
const EXTEND_BYTES: u64 = 4096;
const FIRST_BASE: u64 = 0x7f00_0000_0000;

/// A small, fast, seedable random source (xorshift64*).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u32) -> bool {
        self.below(100) < u64::from(percent)
    }
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SynthConfig {
    /// Seed.
    pub seed: u64,
    /// Threads running at once.
    pub threads: usize,
    /// Live blocks a thread aims to hold.
    pub live_per_thread: usize,
    /// Percent of frees that free another thread's block.
    pub cross_thread_percent: u32,
    /// Percent of cross-thread frees reported late (after the freeing thread's next operation).
    pub late_free_percent: u32,
    /// Chance per million operations that a thread exits (abandoning its pages) and a new one
    /// starts.
    pub churn_per_million: u32,
    /// Operations per clock tick, on average.
    pub ops_per_tick: u64,
    /// Percent of allocations of 4 KiB..128 KiB (medium pages).
    pub medium_percent: u32,
    /// Per-mille of allocations of large and huge blocks.
    pub large_per_mille: u32,
    /// Percent of operations that resize or move a block (`realloc`).
    pub realloc_percent: u32,
    /// Percent of freed segments whose address the next new segment reuses (the segment cache).
    pub reuse_percent: u32,
    /// Request sizes to pick from instead of the default spread (few sizes fill pages: full
    /// queues and delayed frees).
    pub sizes: Vec<u64>,
    /// Stack capture ([`stack_mode`]): off, sampled, all.
    pub stacks: u16,
    /// Mean sampling interval in bytes when sampled.
    pub sample_bytes: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            threads: 4,
            live_per_thread: 200,
            cross_thread_percent: 20,
            late_free_percent: 30,
            churn_per_million: 2_000,
            ops_per_tick: 50,
            medium_percent: 3,
            large_per_mille: 2,
            realloc_percent: 3,
            reuse_percent: 70,
            sizes: Vec::new(),
            stacks: stack_mode::OFF,
            sample_bytes: 512 << 10,
        }
    }
}

type PageId = (u64, usize);

#[derive(Clone, Debug, Default)]
struct SPage {
    start: u64,
    end: u64,
    in_use: bool,
    block_size: u64,
    bin: u16,
    reserved: u32,
    capacity: u32,
    owner: u32,
    used: u32,
    free: Vec<u64>,
    local_free: Vec<u64>,
    thread_free: Vec<u64>,
    in_full: bool,
    use_delayed: bool,
}

#[derive(Clone, Debug)]
struct SSegment {
    base: u64,
    kind: PageKind,
    bytes: u64,
    shift: u32,
    owner: u32,
    pages: Vec<SPage>,
    used_pages: usize,
}

#[derive(Clone, Debug, Default)]
struct SThread {
    heap: u32,
    live: Vec<(u64, u64)>,
    queues: BTreeMap<u16, Vec<PageId>>,
    full: Vec<PageId>,
    delayed: Vec<u64>,
    deferred: Vec<Event>,
    segments: Vec<u64>,
    /// Leaf node of each call site in this thread's tree (0: not interned yet).
    leaves: Vec<u32>,
    /// Interned nodes: (parent, pc) -> id.
    nodes: HashMap<(u32, u64), u32>,
    /// Bytes until the next sampled allocation.
    countdown: f64,
}

/// The simulation.
#[derive(Clone, Debug)]
pub struct Synth {
    cfg: SynthConfig,
    rng: Rng,
    time: u64,
    out: Vec<(u32, Event)>,
    segments: HashMap<u64, SSegment>,
    threads: Vec<SThread>,
    orphans: Vec<(u64, u64)>,
    abandoned: Vec<u64>,
    free_bases: Vec<u64>,
    next_base: u64,
    next_heap: u32,
    census_number: u32,
    marks: u32,
    /// Drawn from only with stacks, so the allocator's stream does not change with them.
    stack_rng: Rng,
    next_node: u32,
    /// The site of every block allocated with a stack, by address (the latest allocation).
    block_site: HashMap<u64, u32>,
    /// The call site of every leaf node.
    leaf_site: HashMap<u32, usize>,
}

/// Call sites of the synthetic program.
pub const SYNTH_SITES: usize = 48;

/// The pcs of call site `i`, leaf first: `main`, then one of four request handlers, then deeper
/// frames particular to the site.
pub fn site_pcs(i: usize) -> Vec<u64> {
    let i = i as u64;
    let mut outer_first = vec![0x40_1000, 0x40_2000 + (i % 4) * 0x100];
    for level in 0..(1 + i % 5) {
        outer_first.push(0x41_0000 + level * 0x1_0000 + i * 0x40);
    }
    outer_first.reverse();
    outer_first
}

impl Synth {
    /// A simulation with `cfg.threads` threads started.
    pub fn new(cfg: SynthConfig) -> Self {
        let mut s = Self {
            rng: Rng::new(cfg.seed),
            cfg,
            time: TICK_NS,
            out: Vec::new(),
            segments: HashMap::new(),
            threads: Vec::new(),
            orphans: Vec::new(),
            abandoned: Vec::new(),
            free_bases: Vec::new(),
            next_base: FIRST_BASE,
            next_heap: 1,
            census_number: 0,
            marks: 0,
            stack_rng: Rng::new(0),
            next_node: 0,
            block_site: HashMap::new(),
            leaf_site: HashMap::new(),
        };
        s.stack_rng = Rng::new(s.cfg.seed ^ 0x5ca1_ab1e);
        if s.cfg.stacks != stack_mode::OFF {
            let interval = if s.cfg.stacks == stack_mode::SAMPLED {
                s.cfg.sample_bytes
            } else {
                0
            };
            s.emit(
                0,
                schema::StackMode {
                    interval,
                    mode: s.cfg.stacks,
                    flags: 0,
                }
                .into_event(),
            );
        }
        for _ in 0..s.cfg.threads.max(1) {
            s.start_thread();
        }
        s
    }

    /// The events so far, in true order, as `(heap, event)`.
    pub fn events(&self) -> &[(u32, Event)] {
        &self.out
    }

    /// Takes the events so far.
    pub fn take_events(&mut self) -> Vec<(u32, Event)> {
        std::mem::take(&mut self.out)
    }

    fn emit(&mut self, heap: u32, mut e: Event) {
        e.time = self.time;
        self.out.push((heap, e));
    }

    /// The allocator's `bump_clock`: what follows sorts after what came before.
    fn bump(&mut self) {
        self.time += 1;
    }

    fn start_thread(&mut self) {
        let heap = self.next_heap;
        self.next_heap += 1;
        self.threads.push(SThread {
            heap,
            ..SThread::default()
        });
        self.emit(
            heap,
            schema::ThreadStart {
                os_tid: 1000 + u64::from(heap),
                heap,
                flags: 0,
            }
            .into_event(),
        );
        let name = format!("synthetic-worker-{heap}");
        let chunks: Vec<&[u8]> = name.as_bytes().chunks(16).collect();
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            let (addr, arg) = Event::pack_text(c);
            let more = if i + 1 < n { flags::MORE } else { 0 };
            self.emit(
                0,
                schema::ThreadName {
                    text_lo: addr,
                    text_hi: arg,
                    heap,
                    flags: more,
                }
                .into_event(),
            );
        }
    }

    /// Runs `ops` operations (allocations, frees, reallocs, thread churn, markers).
    pub fn run(&mut self, ops: usize) {
        for _ in 0..ops {
            self.step();
        }
    }

    /// Runs until at least `n` events were emitted in total.
    pub fn run_events(&mut self, n: usize) {
        while self.out.len() < n {
            self.step();
        }
    }

    fn step(&mut self) {
        if self.rng.below(self.cfg.ops_per_tick.max(1)) == 0 {
            self.time = (self.time / TICK_NS + 1) * TICK_NS;
        }
        let t = self.rng.below(self.threads.len() as u64) as usize;
        let pending = std::mem::take(&mut self.threads[t].deferred);
        if self.rng.below(1_000_000) < u64::from(self.cfg.churn_per_million) {
            self.threads[t].deferred = pending;
            self.exit_thread(t);
            self.start_thread();
            return;
        }
        if self.rng.below(5_000) == 0 {
            self.marks += 1;
            let label = format!("phase {} of the synthetic run", self.marks);
            let heap = self.threads[t].heap;
            let chunks: Vec<&[u8]> = label.as_bytes().chunks(16).collect();
            let n = chunks.len();
            for (i, c) in chunks.into_iter().enumerate() {
                let (addr, arg) = Event::pack_text(c);
                let more = if i + 1 < n { flags::MORE } else { 0 };
                self.emit(
                    heap,
                    schema::Mark {
                        text_lo: addr,
                        text_hi: arg,
                        flags: more,
                    }
                    .into_event(),
                );
            }
        }
        let live = self.threads[t].live.len();
        let target = self.cfg.live_per_thread.max(1);
        if self.rng.percent(self.cfg.realloc_percent) && live > 0 {
            self.realloc(t);
        } else if live < target / 2 || (live < target * 2 && self.rng.percent(50)) {
            let size = self.size();
            self.malloc(t, size);
        } else {
            self.free_some(t);
        }
        // Late cross-thread frees of this thread come out now.
        let heap = self.threads[t].heap;
        for e in pending {
            self.emit(heap, e);
        }
    }

    /// The stack id of thread `t`'s next allocation of `size` bytes (0: none), its frames
    /// interned and sent first.
    fn stack_for(&mut self, t: usize, size: u64) -> u32 {
        match self.cfg.stacks {
            stack_mode::ALL => {}
            stack_mode::SAMPLED => {
                let th = &mut self.threads[t];
                th.countdown -= size as f64;
                if th.countdown > 0.0 {
                    return 0;
                }
                let mean = self.cfg.sample_bytes.max(1) as f64;
                while self.threads[t].countdown <= 0.0 {
                    let u = (self.stack_rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                    self.threads[t].countdown += (-(1.0 - u).ln() * mean).max(1.0);
                }
            }
            _ => return 0,
        }
        // Sites by size, so each has its own spread of sizes, and a little at random.
        let site = ((size.trailing_zeros() as u64 * 7 + size % 5 + self.stack_rng.below(3))
            % SYNTH_SITES as u64) as usize;
        let heap = self.threads[t].heap;
        if self.threads[t].leaves.len() < SYNTH_SITES {
            self.threads[t].leaves.resize(SYNTH_SITES, 0);
        }
        if self.threads[t].leaves[site] != 0 {
            return self.threads[t].leaves[site];
        }
        let mut parent = 0u32;
        for pc in site_pcs(site).into_iter().rev() {
            let id = match self.threads[t].nodes.get(&(parent, pc)) {
                Some(&id) => id,
                None => {
                    self.next_node += 1;
                    let id = self.next_node;
                    self.threads[t].nodes.insert((parent, pc), id);
                    self.emit(
                        heap,
                        schema::StackFrame {
                            pc,
                            parent: u64::from(parent),
                            id,
                            flags: 0,
                        }
                        .into_event(),
                    );
                    id
                }
            };
            parent = id;
        }
        self.threads[t].leaves[site] = parent;
        self.leaf_site.insert(parent, site);
        parent
    }

    /// Exact live bytes per site of the live blocks allocated with a stack, by the site's
    /// pcs (leaf first): thread trees differ in ids, not in pcs.
    pub fn site_live_bytes(&self) -> BTreeMap<Vec<u64>, u64> {
        let mut out = BTreeMap::new();
        for (addr, size) in self.live_blocks() {
            if let Some(leaf) = self.block_site.get(&addr)
                && let Some(&site) = self.leaf_site.get(leaf)
            {
                *out.entry(site_pcs(site)).or_insert(0) += size;
            }
        }
        out
    }

    fn size(&mut self) -> u64 {
        if !self.cfg.sizes.is_empty() {
            let i = self.rng.below(self.cfg.sizes.len() as u64) as usize;
            return self.cfg.sizes[i];
        }
        if self.rng.below(1000) < u64::from(self.cfg.large_per_mille) {
            if self.rng.percent(80) {
                return 128 * 1024 + self.rng.below(LARGE_OBJ_SIZE_MAX as u64 - 128 * 1024);
            }
            return LARGE_OBJ_SIZE_MAX as u64 + 1 + self.rng.below(3 << 20);
        }
        if self.rng.percent(self.cfg.medium_percent) {
            return 4096 + self.rng.below(124 * 1024);
        }
        if self.rng.percent(80) {
            1 + self.rng.below(256)
        } else {
            257 + self.rng.below(4096 - 257)
        }
    }

    fn page(&mut self, id: PageId) -> &mut SPage {
        &mut self.segments.get_mut(&id.0).expect("segment").pages[id.1]
    }

    fn page_id_of(&self, addr: u64) -> PageId {
        let base = segment_base(addr);
        let seg = &self.segments[&base];
        let i = ((addr - base) >> seg.shift) as usize;
        (base, i.min(seg.pages.len() - 1))
    }

    // -----------------------------------------------------------------------------------------
    // malloc

    fn malloc(&mut self, t: usize, size: u64) -> u64 {
        self.process_delayed(t);
        let heap = self.threads[t].heap;
        let id = if size > LARGE_OBJ_SIZE_MAX as u64 {
            self.huge_page(t, size)
        } else {
            let bin = bin_of(size as usize) as u16;
            self.page_with_free(t, bin)
        };
        let stack = self.stack_for(t, size);
        let p = self.page(id);
        let addr = p.free.pop().expect("a page with a free block");
        p.used += 1;
        self.emit(
            heap,
            schema::Alloc {
                ptr: addr,
                size,
                stack,
                bin: 0,
                flags: 0,
            }
            .into_event(),
        );
        if stack != 0 {
            self.block_site.insert(addr, stack);
        } else if self.cfg.stacks != stack_mode::OFF {
            self.block_site.remove(&addr);
        }
        self.threads[t].live.push((addr, size));
        addr
    }

    fn page_with_free(&mut self, t: usize, bin: u16) -> PageId {
        let heap = self.threads[t].heap;
        let queue = self.threads[t]
            .queues
            .get(&bin)
            .cloned()
            .unwrap_or_default();
        for id in queue {
            if !self.page(id).free.is_empty() {
                return id;
            }
            self.collect(heap, id);
            if !self.page(id).free.is_empty() {
                return id;
            }
            if self.extend(heap, id) {
                return id;
            }
            // Full: to the full queue, with delayed frees.
            let p = self.page(id);
            p.in_full = true;
            p.use_delayed = true;
            let th = &mut self.threads[t];
            th.queues.get_mut(&bin).expect("queue").retain(|&q| q != id);
            th.full.push(id);
            self.emit(
                heap,
                schema::PageFull {
                    start: self.segments[&id.0].pages[id.1].start,
                    flags: 0,
                }
                .into_event(),
            );
        }
        let bs = block_size(bin as usize) as u64;
        let id = self.new_page(t, bin, bs);
        self.threads[t].queues.entry(bin).or_default().insert(0, id);
        id
    }

    fn collect(&mut self, heap: u32, id: PageId) {
        let p = self.page(id);
        let n = p.thread_free.len() as u32;
        let tf = std::mem::take(&mut p.thread_free);
        p.local_free.extend(tf);
        p.used -= n;
        let mut m = 0;
        if p.free.is_empty() && !p.local_free.is_empty() {
            m = p.local_free.len() as u64;
            let lf = std::mem::take(&mut p.local_free);
            p.free = lf;
        }
        let start = p.start;
        if n > 0 || m > 0 {
            self.emit(
                heap,
                schema::PageCollect {
                    start,
                    to_free: m,
                    from_thread_free: n,
                    flags: 0,
                }
                .into_event(),
            );
        }
    }

    fn extend(&mut self, heap: u32, id: PageId) -> bool {
        let p = self.page(id);
        if p.capacity >= p.reserved {
            return false;
        }
        let n = (p.reserved - p.capacity).min((EXTEND_BYTES / p.block_size).max(1) as u32);
        for i in (p.capacity..p.capacity + n).rev() {
            p.free.push(p.start + u64::from(i) * p.block_size);
        }
        p.capacity += n;
        let (cap, start) = (p.capacity, p.start);
        self.emit(
            heap,
            schema::PageExtend {
                start,
                capacity: cap,
                flags: 0,
            }
            .into_event(),
        );
        true
    }

    fn init_page(&mut self, heap: u32, id: PageId, bin: u16, bs: u64) {
        let kind = self.segments[&id.0].kind as u8;
        let p = self.page(id);
        p.in_use = true;
        p.block_size = bs;
        p.bin = bin;
        p.reserved = ((p.end - p.start) / bs).min(u64::from(u32::MAX)) as u32;
        p.capacity = 0;
        p.used = 0;
        p.owner = heap;
        p.free.clear();
        p.local_free.clear();
        p.in_full = false;
        p.use_delayed = false;
        debug_assert!(p.thread_free.is_empty());
        let (start, reserved) = (p.start, p.reserved);
        self.segments.get_mut(&id.0).expect("segment").used_pages += 1;
        self.emit(
            heap,
            schema::PageInit {
                start,
                block_size: bs,
                reserved,
                bin,
                flags: kind,
            }
            .into_event(),
        );
        self.extend(heap, id);
    }

    fn new_page(&mut self, t: usize, bin: u16, bs: u64) -> PageId {
        let heap = self.threads[t].heap;
        let kind = PageKind::for_block_size(bs as usize);
        if kind == PageKind::Large {
            // A span of slots, in a large segment of the thread's or a new one (as the allocator).
            let k = heaplens_alloc::segment::span_slots(bs as usize);
            let found = self.threads[t]
                .segments
                .iter()
                .find_map(|&b| self.free_span_in(b, k).map(|i| (b, i)));
            let id =
                found.unwrap_or_else(|| (self.new_segment(t, kind, SEGMENT_SIZE as u64, bs), 1));
            let p = self.page(id);
            p.end = p.start + k as u64 * SMALL_PAGE_SIZE as u64;
            self.init_page(heap, id, bin, bs);
            return id;
        }
        if !self.threads[t]
            .segments
            .iter()
            .any(|b| self.free_page_in(*b, kind).is_some())
        {
            self.reclaim_abandoned(t);
        }
        let found = self.threads[t]
            .segments
            .iter()
            .find_map(|&b| self.free_page_in(b, kind).map(|i| (b, i)));
        let id = match found {
            Some(id) => id,
            None => (self.new_segment(t, kind, SEGMENT_SIZE as u64, bs), 0),
        };
        self.init_page(heap, id, bin, bs);
        id
    }

    /// The first run of `k` free slots (from slot 1) of large segment `base`.
    fn free_span_in(&self, base: u64, k: usize) -> Option<usize> {
        let s = self.segments.get(&base)?;
        if s.kind != PageKind::Large {
            return None;
        }
        let (mut i, mut run) = (1, 0);
        while i < s.pages.len() {
            let p = &s.pages[i];
            if p.in_use {
                run = 0;
                // over its span (at least its own slot, so a broken span cannot stall the walk)
                i += (((p.end - p.start) / SMALL_PAGE_SIZE as u64) as usize).max(1);
            } else {
                run += 1;
                i += 1;
                if run == k {
                    return Some(i - k);
                }
            }
        }
        None
    }

    fn free_page_in(&self, base: u64, kind: PageKind) -> Option<usize> {
        let s = self.segments.get(&base)?;
        if s.kind != kind {
            return None;
        }
        s.pages.iter().position(|p| !p.in_use)
    }

    fn huge_page(&mut self, t: usize, size: u64) -> PageId {
        let heap = self.threads[t].heap;
        let bytes = (INFO_SIZE as u64 + size).next_multiple_of(4096);
        let base = self.new_segment(t, PageKind::Huge, bytes, size);
        let id = (base, 0);
        let area = self.segments[&base].pages[0].end - self.segments[&base].pages[0].start;
        self.init_page(heap, id, BIN_HUGE as u16, area);
        self.threads[t]
            .queues
            .entry(BIN_HUGE as u16)
            .or_default()
            .insert(0, id);
        id
    }

    fn new_segment(&mut self, t: usize, kind: PageKind, bytes: u64, _bs: u64) -> u64 {
        let heap = self.threads[t].heap;
        let reuse = kind != PageKind::Huge
            && !self.free_bases.is_empty()
            && self.rng.percent(self.cfg.reuse_percent);
        let base = if reuse {
            let i = self.rng.below(self.free_bases.len() as u64) as usize;
            self.free_bases.swap_remove(i)
        } else {
            let b = self.next_base;
            self.next_base += bytes.next_multiple_of(SEGMENT_SIZE as u64);
            b
        };
        let (count, page_size, shift) = match kind {
            // a large segment's pages are its slots
            PageKind::Small | PageKind::Large => {
                (SMALL_PAGES_PER_SEGMENT, SMALL_PAGE_SIZE as u64, 16)
            }
            PageKind::Medium => (SEGMENT_SIZE / MEDIUM_PAGE_SIZE, MEDIUM_PAGE_SIZE as u64, 19),
            _ => (1, bytes, 63),
        };
        let pages = (0..count)
            .map(|i| {
                let pb = base + i as u64 * page_size;
                SPage {
                    start: if i == 0 { base + INFO_SIZE as u64 } else { pb },
                    end: pb + page_size,
                    ..SPage::default()
                }
            })
            .collect();
        self.segments.insert(
            base,
            SSegment {
                base,
                kind,
                bytes,
                shift,
                owner: heap,
                pages,
                used_pages: 0,
            },
        );
        self.threads[t].segments.push(base);
        self.emit(
            heap,
            schema::SegmentAlloc {
                base,
                bytes,
                pages: count as u32,
                flags: kind as u8,
            }
            .into_event(),
        );
        base
    }

    // -----------------------------------------------------------------------------------------
    // free

    fn free_some(&mut self, t: usize) {
        let cross = self.rng.percent(self.cfg.cross_thread_percent);
        // Blocks of exited threads are freed by the others, soon.
        let (addr, from) = if !self.orphans.is_empty() && self.rng.percent(50) {
            let i = self.rng.below(self.orphans.len() as u64) as usize;
            (self.orphans.swap_remove(i).0, None)
        } else {
            let owner = if cross {
                self.rng.below(self.threads.len() as u64) as usize
            } else {
                t
            };
            let th = &mut self.threads[owner];
            if th.live.is_empty() {
                return;
            }
            // Mostly recent blocks (a stack-like lifetime), sometimes any.
            let n = th.live.len() as u64;
            let i = if self.rng.percent(70) {
                n - 1 - self.rng.below(n.min(8))
            } else {
                self.rng.below(n)
            } as usize;
            (th.live.swap_remove(i).0, Some(owner))
        };
        let _ = from;
        self.free(t, addr, 0);
    }

    fn free(&mut self, t: usize, addr: u64, extra: u8) {
        let heap = self.threads[t].heap;
        let id = self.page_id_of(addr);
        let owner = self.page(id).owner;
        if owner == heap {
            self.emit(
                heap,
                schema::Free {
                    ptr: addr,
                    flags: extra,
                }
                .into_event(),
            );
            self.free_local(t, id, addr);
            return;
        }
        // Cross-thread.
        let p = self.page(id);
        let delayed = p.in_full && p.use_delayed && owner != 0;
        let fl = if delayed {
            p.use_delayed = false;
            if let Some(o) = self.threads.iter_mut().find(|th| th.heap == owner) {
                o.delayed.push(addr);
            }
            flags::TO_DELAYED
        } else {
            p.thread_free.push(addr);
            flags::CROSS_THREAD
        };
        let e = schema::Free {
            ptr: addr,
            flags: fl | extra,
        }
        .into_event();
        if self.rng.percent(self.cfg.late_free_percent) {
            self.threads[t].deferred.push(e);
        } else {
            self.emit(heap, e);
        }
        if owner == 0 {
            self.reclaim(t, id.0);
        }
    }

    fn free_local(&mut self, t: usize, id: PageId, addr: u64) {
        let heap = self.threads[t].heap;
        let p = self.page(id);
        p.local_free.push(addr);
        p.used -= 1;
        let (in_full, used, start, bin) = (p.in_full, p.used, p.start, p.bin);
        if in_full {
            let p = self.page(id);
            p.in_full = false;
            p.use_delayed = false;
            let th = &mut self.threads[t];
            th.full.retain(|&q| q != id);
            th.queues.entry(bin).or_default().push(id);
            self.emit(heap, schema::PageUnfull { start, flags: 0 }.into_event());
        }
        if used == 0 {
            self.retire(t, id);
        }
    }

    /// An empty page: kept a while if it is the only page of its bin, else back to its segment.
    fn retire(&mut self, t: usize, id: PageId) {
        let heap = self.threads[t].heap;
        let (bin, start) = {
            let p = self.page(id);
            (p.bin, p.start)
        };
        let only = self.threads[t]
            .queues
            .get(&bin)
            .is_some_and(|q| q.len() == 1 && q[0] == id);
        if only && bin != BIN_HUGE as u16 && self.rng.percent(50) {
            self.emit(heap, schema::PageRetire { start, flags: 0 }.into_event());
            return;
        }
        if let Some(q) = self.threads[t].queues.get_mut(&bin) {
            q.retain(|&x| x != id);
        }
        self.page_free(t, id);
    }

    fn page_free(&mut self, t: usize, id: PageId) {
        let heap = self.threads[t].heap;
        let large = self.segments[&id.0].kind == PageKind::Large;
        let p = self.page(id);
        debug_assert_eq!(p.used, 0);
        let start = p.start;
        let tf = std::mem::take(&mut p.thread_free);
        // A large page's span ends: its slots are free again.
        let end = if large {
            (start + 1).next_multiple_of(SMALL_PAGE_SIZE as u64)
        } else {
            p.end
        };
        *p = SPage {
            start: p.start,
            end,
            thread_free: tf,
            ..SPage::default()
        };
        self.emit(heap, schema::PageFree { start, flags: 0 }.into_event());
        let seg = self.segments.get_mut(&id.0).expect("segment");
        seg.used_pages -= 1;
        if seg.used_pages == 0 {
            let (base, bytes, kind) = (seg.base, seg.bytes, seg.kind);
            self.segments.remove(&base);
            for th in &mut self.threads {
                th.segments.retain(|&b| b != base);
            }
            self.abandoned.retain(|&b| b != base);
            let cached = kind != PageKind::Huge;
            self.emit(
                heap,
                schema::SegmentFree {
                    base,
                    bytes,
                    flags: if cached { flags::CACHED } else { 0 },
                }
                .into_event(),
            );
            self.bump();
            if cached {
                self.free_bases.push(base);
            }
        }
    }

    fn process_delayed(&mut self, t: usize) {
        let heap = self.threads[t].heap;
        let blocks = std::mem::take(&mut self.threads[t].delayed);
        for b in blocks {
            let id = self.page_id_of(b);
            self.collect(heap, id);
            self.emit(
                heap,
                schema::Free {
                    ptr: b,
                    flags: flags::FROM_DELAYED,
                }
                .into_event(),
            );
            self.free_local(t, id, b);
        }
    }

    fn realloc(&mut self, t: usize) {
        let heap = self.threads[t].heap;
        let i = self.rng.below(self.threads[t].live.len() as u64) as usize;
        let (addr, old) = self.threads[t].live[i];
        let bs = self.page(self.page_id_of(addr)).block_size;
        let new = if self.rng.percent(50) {
            (old / 2).max(1) + self.rng.below(old.max(2) / 2)
        } else {
            old + 1 + self.rng.below(old.max(16))
        };
        if new <= bs && new >= bs / 2 && new <= LARGE_OBJ_SIZE_MAX as u64 {
            self.threads[t].live[i].1 = new;
            self.emit(
                heap,
                schema::Resize {
                    ptr: addr,
                    size: new,
                    flags: 0,
                }
                .into_event(),
            );
            return;
        }
        self.threads[t].live.swap_remove(i);
        let q = self.malloc(t, new);
        self.free(t, addr, flags::REALLOC);
        let size32 = u32::try_from(new).unwrap_or(u32::MAX);
        self.emit(
            heap,
            schema::Realloc {
                ptr: q,
                old: addr,
                size: size32,
                flags: 0,
            }
            .into_event(),
        );
    }

    // -----------------------------------------------------------------------------------------
    // Threads: exit, abandon, reclaim

    fn exit_thread(&mut self, t: usize) {
        let heap = self.threads[t].heap;
        let pending = std::mem::take(&mut self.threads[t].deferred);
        for e in pending {
            self.emit(heap, e);
        }
        self.process_delayed(t);
        let mut pages: Vec<PageId> = self.threads[t].queues.values().flatten().copied().collect();
        pages.extend(self.threads[t].full.iter().copied());
        self.threads[t].queues.clear();
        self.threads[t].full.clear();
        for id in pages {
            self.collect(heap, id);
            if self.page(id).used == 0 {
                self.page_free(t, id);
            } else {
                let p = self.page(id);
                p.owner = 0;
                p.in_full = false;
                p.use_delayed = false;
            }
        }
        let segs = std::mem::take(&mut self.threads[t].segments);
        for base in segs {
            let Some(seg) = self.segments.get_mut(&base) else {
                continue;
            };
            if seg.used_pages == 0 {
                continue;
            }
            seg.owner = 0;
            self.abandoned.push(base);
            self.emit(heap, schema::SegmentAbandon { base, flags: 0 }.into_event());
            self.bump();
        }
        self.emit(heap, schema::ThreadExit { heap, flags: 0 }.into_event());
        let th = self.threads.swap_remove(t);
        self.orphans.extend(th.live);
        // Delayed frees aimed at the exited heap cannot exist: its full pages were abandoned
        // after its delayed list was drained, and abandoned pages never use delayed frees.
    }

    fn reclaim_abandoned(&mut self, t: usize) {
        if let Some(base) = self.abandoned.first().copied() {
            self.reclaim(t, base);
        }
    }

    fn reclaim(&mut self, t: usize, base: u64) {
        let Some(pos) = self.abandoned.iter().position(|&b| b == base) else {
            return;
        };
        self.abandoned.remove(pos);
        let heap = self.threads[t].heap;
        self.segments.get_mut(&base).expect("segment").owner = heap;
        self.threads[t].segments.push(base);
        self.emit(
            heap,
            schema::SegmentReclaim {
                base,
                owner: heap,
                flags: 0,
            }
            .into_event(),
        );
        let n = self.segments[&base].pages.len();
        for i in 0..n {
            let id = (base, i);
            if !self.segments.contains_key(&base) {
                return; // freed when its last page went
            }
            if !self.page(id).in_use {
                continue;
            }
            let p = self.page(id);
            p.owner = heap;
            p.use_delayed = false;
            let start = p.start;
            self.emit(
                heap,
                schema::PageReclaim {
                    start,
                    owner: heap,
                    flags: 0,
                }
                .into_event(),
            );
            self.collect(heap, id);
            let p = self.page(id);
            p.in_full = false;
            if p.used == 0 {
                self.page_free(t, id);
            } else {
                let bin = p.bin;
                self.threads[t].queues.entry(bin).or_default().push(id);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Truth

    /// Emits every late free still held back (a quiet point).
    pub fn quiesce(&mut self) {
        for t in 0..self.threads.len() {
            let heap = self.threads[t].heap;
            let pending = std::mem::take(&mut self.threads[t].deferred);
            for e in pending {
                self.emit(heap, e);
            }
        }
        self.time = (self.time / TICK_NS + 1) * TICK_NS;
    }

    /// The true state as the allocator's census would report it (after [`Self::quiesce`]).
    pub fn census(&mut self) -> Census {
        self.census_number += 1;
        let mut c = Census {
            number: self.census_number,
            time: self.time,
            ..Census::default()
        };
        let mut bases: Vec<u64> = self.segments.keys().copied().collect();
        bases.sort_unstable();
        for base in bases {
            let s = &self.segments[&base];
            c.segments.push(CensusSegment {
                base,
                bytes: s.bytes,
                page_count: s.pages.len() as u32,
                kind: s.kind as u8,
            });
            for p in s.pages.iter().filter(|p| p.in_use) {
                c.pages.push(CensusPage {
                    start: p.start,
                    block_size: p.block_size,
                    capacity: p.capacity,
                    bin: p.bin,
                    kind: s.kind as u8,
                    owner: p.owner,
                    used: p.used,
                    local_free: p.local_free.len() as u32,
                    thread_free: p.thread_free.len() as u32,
                    in_full: p.in_full,
                    // The generator reads its own state at quiet points: no free is on its way.
                    epoch: false,
                });
            }
        }
        c
    }

    /// The census as heap-0 events appended to the stream.
    pub fn emit_census(&mut self) -> Census {
        let c = self.census();
        for e in c.to_events() {
            self.out.push((0, e));
        }
        c
    }

    /// Live blocks: address -> requested size.
    pub fn live_blocks(&self) -> BTreeMap<u64, u64> {
        self.threads
            .iter()
            .flat_map(|t| t.live.iter())
            .chain(self.orphans.iter())
            .map(|&(a, s)| (a, s))
            .collect()
    }

    /// Blocks on each page's owner's delayed list, by page start.
    pub fn delayed(&self) -> BTreeMap<u64, i64> {
        let mut m = BTreeMap::new();
        for t in &self.threads {
            for &b in &t.delayed {
                let id = self.page_id_of(b);
                *m.entry(self.segments[&id.0].pages[id.1].start).or_insert(0) += 1;
            }
        }
        m
    }

    /// Heap ids of the threads running now.
    pub fn running_heaps(&self) -> Vec<u32> {
        self.threads.iter().map(|t| t.heap).collect()
    }
}

/// Orders `events` as the collector delivers them: merged by time, and within one tick each heap's
/// events in one run (heaps in an arbitrary order).
pub fn merge_like_collector(events: &[(u32, Event)], seed: u64) -> Vec<(u32, Event)> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(events.len());
    let mut i = 0;
    while i < events.len() {
        let t = events[i].1.time;
        let mut j = i;
        while j < events.len() && events[j].1.time == t {
            j += 1;
        }
        let mut per_heap: BTreeMap<u32, Vec<(u32, Event)>> = BTreeMap::new();
        for e in &events[i..j] {
            per_heap.entry(e.0).or_default().push(*e);
        }
        let mut runs: Vec<_> = per_heap.into_values().collect();
        while !runs.is_empty() {
            let k = rng.below(runs.len() as u64) as usize;
            out.extend(runs.swap_remove(k));
        }
        i = j;
    }
    out
}

/// Reorders `events` as the collector may deliver them at worst: events of one tick (equal time)
/// from different heaps interleave at random, each heap's own order kept.
pub fn shuffle_within_ticks(events: &[(u32, Event)], seed: u64) -> Vec<(u32, Event)> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(events.len());
    let mut i = 0;
    while i < events.len() {
        let t = events[i].1.time;
        let mut j = i;
        while j < events.len() && events[j].1.time == t {
            j += 1;
        }
        let mut per_heap: BTreeMap<u32, std::collections::VecDeque<(u32, Event)>> = BTreeMap::new();
        for e in &events[i..j] {
            per_heap.entry(e.0).or_default().push_back(*e);
        }
        let mut queues: Vec<_> = per_heap.into_values().collect();
        let mut left = j - i;
        while left > 0 {
            let mut k = rng.below(left as u64) as usize;
            for q in &mut queues {
                if k < q.len() {
                    out.push(q.pop_front().expect("non-empty"));
                    break;
                }
                k -= q.len();
            }
            left -= 1;
        }
        i = j;
    }
    out
}
