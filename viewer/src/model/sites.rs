//! Allocation sites: which code allocated the live blocks, rebuilt from the stack events.
//!
//! The hook interns each thread's stacks as a tree of frames (`StackFrame`: node id, pc, parent)
//! and tags an `Alloc` with its leaf node (`arg32`, 0: no stack). A *site* is a leaf node: one
//! call path to `malloc`. Per site the model keeps live bytes and blocks, total bytes and count
//! allocated, peak live bytes and temporary allocations (heaptrack's definition: freed by the
//! thread that allocated it before that thread's next allocation).
//!
//! Only blocks with a stack are kept here, in a side map keyed by address: the model's hot path
//! for blocks without one does not change, and with stacks off nothing here runs.
//!
//! **Order.** As in the rest of the model, a cross-thread free may come after the block was
//! allocated again at its address (it is then matched to the older block), and within one clock
//! tick before its allocation (with stacks `all`, where every block has a stack, it is then
//! kept until the allocation arrives).
//!
//! **Sampling.** In sampled mode (a Poisson process on bytes with mean interval `I`) an
//! allocation of `s` bytes is sampled with probability `1 − exp(−s / I)`, so each sample stands
//! for `1 / (1 − exp(−s / I))` allocations, as in pprof and Go's heap profiles: the estimates are
//! unbiased, and an allocation at or above the interval counts about once, not `s / I` times.
//! With stacks `all` every weight is 1 and the figures are exact.

use heaplens_alloc::event::{Event, EventKind, flags, module_text, stack_mode};
use heaplens_alloc::schema;
use serde::{Deserialize, Serialize};

use super::hash::FastMap;

/// Most frames a stack is followed for (a guard against a cycle in damaged input).
pub const MAX_DEPTH: usize = 1024;

/// Most heaps whose latest allocation is tracked (for temporary allocations).
const MAX_TRACKED_HEAPS: usize = 1 << 16;

/// Most addresses waiting for a late free (past it they are forgotten: frees were lost).
const MAX_DISPLACED: usize = 1 << 20;

/// Longest module path or build id kept.
const MAX_TEXT: usize = 4096;

/// One node of a stack tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The frame's pc (a return address, except for the leaf's caller of `malloc`).
    pub pc: u64,
    /// The node one frame outwards (0: this is the outermost frame known).
    pub parent: u32,
    /// The walk stopped here: frames beyond it are unknown.
    pub truncated: bool,
}

/// A loaded module (executable or shared library), for symbolisation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    /// Module id.
    pub id: u32,
    /// Path of the file, as the loader saw it.
    pub path: String,
    /// GNU build id (raw bytes; empty if unknown). Trailing zero bytes may be missing.
    pub build_id: Vec<u8>,
    /// Load bias: a pc minus the bias is an address in the ELF file.
    pub bias: u64,
    /// Executable ranges `(start, length)`.
    pub ranges: Vec<(u64, u64)>,
    /// Unloaded (`dlclose`).
    pub gone: bool,
}

impl Module {
    /// Whether `pc` is in one of the module's executable ranges.
    pub fn contains(&self, pc: u64) -> bool {
        self.ranges
            .iter()
            .any(|&(start, len)| pc >= start && pc - start < len)
    }
}

/// What is known of one site (weighted: estimates in sampled mode, exact with `all`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SiteStats {
    /// Bytes requested by the site's live blocks.
    pub live_bytes: f64,
    /// The site's live blocks.
    pub live_blocks: f64,
    /// The most `live_bytes` has been.
    pub peak_live_bytes: f64,
    /// Bytes requested by the site's allocations, in all (a `realloc` in place adds nothing).
    pub total_bytes: f64,
    /// Allocations, in all.
    pub allocs: f64,
    /// Allocations freed by their thread before its next allocation.
    pub temporary: f64,
}

/// What sites are ranked by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SiteKey {
    /// Bytes of the site's live blocks.
    LiveBytes,
    /// The most bytes the site had live at once.
    PeakBytes,
    /// Bytes allocated in all.
    TotalBytes,
    /// Allocations in all.
    Allocs,
    /// Temporary allocations (freed before the thread's next allocation).
    Temporary,
}

impl SiteKey {
    /// Every key, in the table's column order.
    pub const ALL: [SiteKey; 5] = [
        SiteKey::LiveBytes,
        SiteKey::PeakBytes,
        SiteKey::TotalBytes,
        SiteKey::Allocs,
        SiteKey::Temporary,
    ];

    /// The column title.
    pub fn title(self) -> &'static str {
        match self {
            SiteKey::LiveBytes => "Live bytes",
            SiteKey::PeakBytes => "Peak bytes",
            SiteKey::TotalBytes => "Allocated bytes",
            SiteKey::Allocs => "Allocations",
            SiteKey::Temporary => "Temporary",
        }
    }

    /// The figure of `s` this key ranks by.
    pub fn of(self, s: &SiteStats) -> f64 {
        match self {
            SiteKey::LiveBytes => s.live_bytes,
            SiteKey::PeakBytes => s.peak_live_bytes,
            SiteKey::TotalBytes => s.total_bytes,
            SiteKey::Allocs => s.allocs,
            SiteKey::Temporary => s.temporary,
        }
    }
}

/// A live block with a stack.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StackedBlock {
    /// Leaf node of its stack (the site).
    pub stack: u32,
    /// Requested size.
    pub size: u64,
    /// How many allocations it stands for (1 unless sampled).
    pub weight: f64,
    /// The heap that allocated it.
    pub heap: u32,
    /// Time of the allocation.
    pub time: u64,
    /// Where its site's figures are (the model's table, not for display).
    pub slot: u32,
}

/// Stacks, modules and per-site totals.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sites {
    /// Whether any stack or stack mode was seen (then allocations and frees come here too).
    on: bool,
    mode: u16,
    interval: u64,
    frames: FastMap<u32, Frame>,
    modules: Vec<Module>,
    /// Module text being assembled: (module id, what) -> bytes so far.
    text: Vec<(u32, u16, Vec<u8>)>,
    blocks: FastMap<u64, StackedBlock>,
    /// Addresses allocated again before the free of their previous block arrived: a
    /// cross-thread free is reported after the block was pushed, so the owner may reuse it
    /// first. The count of such late frees still to come, per address.
    displaced: FastMap<u64, u32>,
    /// With stacks `all`: cross-thread frees that came before their allocation (events of
    /// different threads within one clock tick come in any order), per address: how many, and
    /// the time of the latest.
    early: FastMap<u64, (u32, u64)>,
    /// Every site's figures: (leaf id, stats), in order of first allocation.
    stats: Vec<(u32, SiteStats)>,
    /// Where each site is in `stats`.
    index: FastMap<u32, u32>,
    /// Per heap id, the address of its latest allocation if it had a stack (else 0).
    last_alloc: Vec<u64>,
    /// A filter of the addresses with a stack: a free of a block without one (most of them
    /// when sampled) is answered here without the map. Rebuilt when empty or saturated.
    #[serde(skip)]
    filter: AddrFilter,
}

/// A bit per hash of an address: set for every address in the map, never cleared but by a
/// rebuild (a false positive only costs a map lookup).
#[derive(Clone, Debug, Default)]
struct AddrFilter {
    bits: Vec<u64>,
    /// How far a hash is shifted down to a bit's number: 64 − log2 of the bits.
    shift: u32,
    /// Bits set since the last rebuild.
    set: usize,
    /// Frees since the last rebuild that the filter let through and the map did not hold.
    misses: usize,
}

/// Bits of the filter, at the least (8 KiB: in the first-level cache, as it is read at every
/// free) and at the most (128 KiB); in between, 16 for each block live at a rebuild.
const FILTER_BITS: std::ops::RangeInclusive<usize> = 1 << 16..=1 << 20;

/// Frees the filter lets through in vain before it is rebuilt (at the least).
const FILTER_MISSES: usize = 1 << 12;

impl AddrFilter {
    #[inline(always)]
    fn slot(&self, addr: u64) -> usize {
        ((addr >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    #[inline(always)]
    fn may_hold(&self, addr: u64) -> bool {
        let i = self.slot(addr);
        self.bits
            .get(i / 64)
            .is_none_or(|w| w & (1 << (i % 64)) != 0)
    }

    fn insert(&mut self, addr: u64) {
        let i = self.slot(addr);
        if let Some(w) = self.bits.get_mut(i / 64) {
            *w |= 1 << (i % 64);
            self.set += 1;
        }
    }

    fn rebuild<'a>(&mut self, addrs: impl ExactSizeIterator<Item = &'a u64>) {
        let bits = (addrs.len() * 16)
            .next_power_of_two()
            .clamp(*FILTER_BITS.start(), *FILTER_BITS.end());
        self.shift = 64 - bits.trailing_zeros();
        self.bits.clear();
        self.bits.resize(bits / 64, 0);
        self.set = 0;
        self.misses = 0;
        for &a in addrs {
            self.insert(a);
        }
    }

    /// Whether it must be rebuilt: never built, or so full that it filters little.
    fn stale(&self) -> bool {
        self.bits.is_empty() || self.set > self.bits.len() * 64 / 8
    }

    /// A free it let through was of no block in the map: whether it has let through so many
    /// that it must be rebuilt from the blocks live now (`live` of them). Its bits are never
    /// cleared, and a program that reuses few addresses sets the bits of most of them: larson
    /// recorded with sampled stacks (9708 sampled blocks at 5619 bits) had 36 % of its 19 M frees
    /// looked up in vain. A rebuild costs a pass over the live blocks with a stack, so it waits
    /// for at least as many misses.
    fn missed(&mut self, live: usize) -> bool {
        self.misses += 1;
        self.misses > FILTER_MISSES.max(live)
    }
}

impl Sites {
    /// Whether the trace has stacks (a stack mode other than off, or a tagged allocation).
    #[inline(always)]
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// The stack mode ([`stack_mode`]) the trace announced.
    pub fn mode(&self) -> u16 {
        self.mode
    }

    /// The mean sampling interval in bytes (0 unless sampled).
    pub fn interval(&self) -> u64 {
        self.interval
    }

    /// How many allocations one sampled allocation of `size` bytes stands for.
    pub fn weight(&self, size: u64) -> f64 {
        if self.mode == stack_mode::SAMPLED && self.interval > 0 {
            let r = size.max(1) as f64 / self.interval as f64;
            1.0 / -(-r).exp_m1()
        } else {
            1.0
        }
    }

    /// A stack node.
    pub fn frame(&self, id: u32) -> Option<Frame> {
        self.frames.get(&id).copied()
    }

    /// The frames of the stack whose leaf is `id`, leaf first (stops at an unknown node).
    pub fn stack(&self, id: u32) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut cur = id;
        while cur != 0 && out.len() < MAX_DEPTH {
            let Some(f) = self.frame(cur) else { break };
            out.push(f);
            cur = f.parent;
        }
        out
    }

    /// Stack nodes known.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// The modules, by id.
    pub fn modules(&self) -> &[Module] {
        &self.modules
    }

    /// The module whose executable ranges hold `pc` (the latest loaded, if several did).
    pub fn module_of(&self, pc: u64) -> Option<&Module> {
        self.modules.iter().rev().find(|m| m.contains(pc))
    }

    /// The sites with what is known of them, in no particular order.
    pub fn sites(&self) -> impl Iterator<Item = (u32, &SiteStats)> + '_ {
        self.stats.iter().map(|(k, v)| (*k, v))
    }

    /// The sites by `key`, largest first (ties by id), leaving out those at 0.
    pub fn ranked(&self, key: SiteKey) -> Vec<(u32, SiteStats)> {
        let mut v: Vec<(u32, SiteStats)> = self
            .stats
            .iter()
            .filter(|(_, s)| key.of(s) > 0.0)
            .copied()
            .collect();
        v.sort_by(|a, b| key.of(&b.1).total_cmp(&key.of(&a.1)).then(a.0.cmp(&b.0)));
        v
    }

    /// The live blocks with a stack grouped by stack: (leaf id, blocks, bytes), weighted, by
    /// bytes, largest first.
    pub fn live_by_stack(&self) -> Vec<(u32, f64, f64)> {
        let mut by: FastMap<u32, (f64, f64)> = FastMap::default();
        for b in self.blocks.values() {
            let e = by.entry(b.stack).or_default();
            e.0 += b.weight;
            e.1 += b.size as f64 * b.weight;
        }
        let mut v: Vec<(u32, f64, f64)> = by.into_iter().map(|(k, (n, b))| (k, n, b)).collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
        v
    }

    /// One site.
    pub fn site(&self, id: u32) -> Option<&SiteStats> {
        let i = *self.index.get(&id)?;
        self.stats.get(i as usize).map(|e| &e.1)
    }

    /// The figures of the site at `slot` of the table.
    #[inline]
    fn at(&mut self, slot: u32) -> Option<&mut SiteStats> {
        self.stats.get_mut(slot as usize).map(|e| &mut e.1)
    }

    /// The live block with a stack at `addr`.
    pub fn block(&self, addr: u64) -> Option<&StackedBlock> {
        self.blocks.get(&addr)
    }

    /// Every live block with a stack, in no particular order.
    pub fn blocks(&self) -> impl Iterator<Item = (u64, &StackedBlock)> + '_ {
        self.blocks.iter().map(|(&k, v)| (k, v))
    }

    /// [`Sites::on_alloc`] of an allocation without a stack once sites are on (the common one
    /// when sampled): it only ends the heap's run of allocations since its last one with a stack.
    /// Inline, where the model applies every event.
    #[inline(always)]
    pub fn on_unstacked_alloc(&mut self, heap: u32) {
        let h = heap as usize;
        if let Some(l) = self.last_alloc.get_mut(h) {
            *l = 0;
        } else if h < MAX_TRACKED_HEAPS {
            self.last_alloc.resize(h + 1, 0);
        }
    }

    /// An allocation (any; one without a stack only ends the heap's temporary candidate).
    #[inline(never)]
    pub fn on_alloc(&mut self, heap: u32, ev: &Event) {
        self.on = true;
        let h = heap as usize;
        if h < MAX_TRACKED_HEAPS && self.last_alloc.len() <= h {
            self.last_alloc.resize(h + 1, 0);
        }
        let a = schema::Alloc::from_event(ev);
        if a.stack == 0 {
            if let Some(l) = self.last_alloc.get_mut(h) {
                *l = 0;
            }
            return;
        }
        let size = a.size;
        let weight = self.weight(size);
        let stats = &mut self.stats;
        let slot = *self.index.entry(a.stack).or_insert_with(|| {
            stats.push((a.stack, SiteStats::default()));
            (stats.len() - 1) as u32
        });
        if !self.early.is_empty()
            && let Some((n, t)) = self.early.get_mut(&a.ptr)
            && ev.time <= *t
        {
            // Its free came first (from the same tick or a later one): allocated and freed.
            *n -= 1;
            if *n == 0 {
                self.early.remove(&a.ptr);
            }
            if let Some(s) = self.at(slot) {
                s.total_bytes += size as f64 * weight;
                s.allocs += weight;
            }
            return;
        }
        let b = StackedBlock {
            stack: a.stack,
            size,
            weight,
            heap,
            time: ev.time,
            slot,
        };
        if self.mode != stack_mode::ALL {
            if self.filter.stale() {
                self.filter.rebuild(self.blocks.keys());
            }
            self.filter.insert(a.ptr);
        }
        if let Some(old) = self.blocks.insert(a.ptr, b) {
            // Its free comes late (or was lost): the old block is gone.
            self.unlive(&old);
            if self.displaced.len() >= MAX_DISPLACED {
                self.displaced.clear();
            }
            *self.displaced.entry(a.ptr).or_insert(0) += 1;
        }
        let Some(s) = self.at(slot) else { return };
        let bytes = size as f64 * weight;
        s.live_bytes += bytes;
        s.live_blocks += weight;
        s.total_bytes += bytes;
        s.allocs += weight;
        s.peak_live_bytes = s.peak_live_bytes.max(s.live_bytes);
        if let Some(l) = self.last_alloc.get_mut(heap as usize) {
            *l = a.ptr;
        }
    }

    /// Whether [`Sites::on_free`] has anything to do with `ev`: not for the common free of a
    /// sampled recording, a block without a stack, which the filter rules out here, where the
    /// model applies every event, without a call.
    #[inline(always)]
    pub fn wants_free(&self, ev: &Event) -> bool {
        self.mode == stack_mode::ALL
            || self.filter.bits.is_empty()
            || ev.flags & (flags::CROSS_THREAD | flags::TO_DELAYED) != 0
                && !self.displaced.is_empty()
            || self.filter.may_hold(schema::Free::from_event(ev).ptr)
    }

    /// A free by heap `heap`.
    #[inline(never)]
    pub fn on_free(&mut self, heap: u32, ev: &Event) {
        let f = schema::Free::from_event(ev);
        if f.flags & flags::FROM_DELAYED != 0 {
            // Not the program's free (that was the `TO_DELAYED` one).
            return;
        }
        if f.flags & (flags::CROSS_THREAD | flags::TO_DELAYED) != 0
            && !self.displaced.is_empty()
            && let Some(n) = self.displaced.get_mut(&f.ptr)
        {
            // The late free of a block already replaced at this address.
            *n -= 1;
            if *n == 0 {
                self.displaced.remove(&f.ptr);
            }
            return;
        }
        if self.mode != stack_mode::ALL {
            if self.filter.bits.is_empty() {
                // A model restored from a keyframe: the filter was not saved.
                self.filter.rebuild(self.blocks.keys());
            }
            if !self.filter.may_hold(f.ptr) {
                // The common case when sampled: a block without a stack.
                return;
            }
        }
        let Some(b) = self.blocks.remove(&f.ptr) else {
            if self.mode != stack_mode::ALL && self.filter.missed(self.blocks.len()) {
                self.filter.rebuild(self.blocks.keys());
            }
            if self.mode == stack_mode::ALL
                && f.flags & (flags::CROSS_THREAD | flags::TO_DELAYED) != 0
            {
                // Every block has a stack: its allocation, by another thread, has not
                // arrived yet.
                if self.early.len() >= MAX_DISPLACED {
                    self.early.clear();
                }
                let e = self.early.entry(f.ptr).or_insert((0, 0));
                e.0 += 1;
                e.1 = e.1.max(ev.time);
            }
            return;
        };
        self.unlive(&b);
        if let Some(l) = self.last_alloc.get_mut(heap as usize)
            && *l == f.ptr
            && b.heap == heap
        {
            *l = 0;
            if let Some(s) = self.at(b.slot) {
                s.temporary += b.weight;
            }
        }
    }

    /// A block resized in place.
    pub fn on_resize(&mut self, addr: u64, size: u64) {
        let Some(b) = self.blocks.get_mut(&addr) else {
            return;
        };
        let delta = (size as f64 - b.size as f64) * b.weight;
        b.size = size;
        let slot = b.slot;
        if let Some(s) = self.at(slot) {
            s.live_bytes += delta;
            s.peak_live_bytes = s.peak_live_bytes.max(s.live_bytes);
        }
    }

    fn unlive(&mut self, b: &StackedBlock) {
        if let Some(s) = self.at(b.slot) {
            s.live_bytes -= b.size as f64 * b.weight;
            s.live_blocks -= b.weight;
        }
    }

    /// A stack or module event (`StackFrame`, `StackMode`, `Module`, `ModuleRange`,
    /// `ModuleText`, `ModuleGone`); others are ignored.
    pub fn on_event(&mut self, ev: &Event) {
        match EventKind::from_u8(ev.kind) {
            Some(EventKind::StackFrame) => {
                let f = schema::StackFrame::from_event(ev);
                if f.id != 0 {
                    self.frames.insert(
                        f.id,
                        Frame {
                            pc: f.pc,
                            parent: u32::try_from(f.parent).unwrap_or(0),
                            truncated: f.flags & flags::TRUNCATED != 0,
                        },
                    );
                }
            }
            Some(EventKind::StackMode) => {
                let m = schema::StackMode::from_event(ev);
                self.mode = m.mode;
                self.interval = if m.mode == stack_mode::SAMPLED {
                    m.interval
                } else {
                    0
                };
                self.on |= m.mode != stack_mode::OFF;
            }
            Some(EventKind::Module) => {
                let new = schema::Module::from_event(ev);
                let m = self.module_mut(new.id);
                // A new module under an id once used: start afresh.
                *m = Module {
                    id: new.id,
                    bias: new.bias,
                    ..Module::default()
                };
            }
            Some(EventKind::ModuleRange) => {
                let r = schema::ModuleRange::from_event(ev);
                let m = self.module_mut(r.id);
                if m.ranges.len() < 64 {
                    m.ranges.push((r.start, r.len));
                }
            }
            Some(EventKind::ModuleText) => self.on_text(ev),
            Some(EventKind::ModuleGone) => {
                self.module_mut(schema::ModuleGone::from_event(ev).id).gone = true;
            }
            _ => {}
        }
    }

    fn module_mut(&mut self, id: u32) -> &mut Module {
        let i = match self.modules.binary_search_by_key(&id, |m| m.id) {
            Ok(i) => i,
            Err(i) => {
                self.modules.insert(
                    i,
                    Module {
                        id,
                        ..Module::default()
                    },
                );
                i
            }
        };
        &mut self.modules[i]
    }

    fn on_text(&mut self, ev: &Event) {
        let t = schema::ModuleText::from_event(ev);
        let (id, what) = (t.id, t.what);
        let i = match self.text.iter().position(|t| t.0 == id && t.1 == what) {
            Some(i) => i,
            None => {
                if self.text.len() >= 64 {
                    return;
                }
                self.text.push((id, what, Vec::new()));
                self.text.len() - 1
            }
        };
        if self.text[i].2.len() < MAX_TEXT {
            self.text[i].2.extend_from_slice(&ev.text());
        }
        if t.flags & flags::MORE != 0 {
            return;
        }
        let (_, _, mut bytes) = self.text.swap_remove(i);
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        let m = self.module_mut(id);
        match what {
            module_text::PATH => m.path = String::from_utf8_lossy(&bytes).into_owned(),
            module_text::BUILD_ID => m.build_id = bytes,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, f: u8, aux: u16, arg32: u32, addr: u64, arg: u64) -> Event {
        Event {
            kind: kind as u8,
            flags: f,
            aux,
            arg32,
            addr,
            arg,
            time: 0,
        }
    }

    #[test]
    fn weights_follow_pprof() {
        let mut s = Sites::default();
        assert_eq!(s.weight(100), 1.0);
        s.on_event(&ev(
            EventKind::StackMode,
            0,
            stack_mode::SAMPLED,
            0,
            0,
            1000,
        ));
        // Small allocations stand for about interval / size of them.
        assert!((s.weight(10) - 100.5).abs() < 0.1, "{}", s.weight(10));
        // At the interval and above, about once.
        assert!((s.weight(1000) - 1.582).abs() < 0.001);
        assert!((s.weight(100_000) - 1.0).abs() < 1e-9);
        s.on_event(&ev(EventKind::StackMode, 0, stack_mode::ALL, 0, 0, 0));
        assert_eq!(s.weight(10), 1.0);
    }

    #[test]
    fn sites_count_live_total_peak_and_temporary() {
        let mut s = Sites::default();
        s.on_event(&ev(EventKind::StackMode, 0, stack_mode::ALL, 0, 0, 0));
        s.on_event(&ev(EventKind::StackFrame, 0, 0, 1, 0x1000, 0));
        s.on_event(&ev(EventKind::StackFrame, 0, 0, 2, 0x2000, 1));
        s.on_event(&ev(
            EventKind::StackFrame,
            flags::TRUNCATED,
            0,
            3,
            0x3000,
            1,
        ));
        let alloc = |a, size, stack| ev(EventKind::Alloc, 0, 0, stack, a, size);
        let free = |a| ev(EventKind::Free, 0, 0, 0, a, 0);
        s.on_alloc(1, &alloc(0x10, 100, 2));
        s.on_alloc(1, &alloc(0x20, 50, 2));
        s.on_free(1, &free(0x20)); // temporary: no allocation of heap 1 in between
        s.on_alloc(1, &alloc(0x30, 10, 3));
        s.on_alloc(1, &alloc(0x40, 7, 0));
        s.on_free(1, &free(0x30)); // not temporary: heap 1 allocated since
        s.on_alloc(2, &alloc(0x50, 1, 3));
        s.on_free(1, &free(0x50)); // another heap's block: not temporary
        let a = *s.site(2).unwrap();
        assert_eq!(
            a,
            SiteStats {
                live_bytes: 100.0,
                live_blocks: 1.0,
                peak_live_bytes: 150.0,
                total_bytes: 150.0,
                allocs: 2.0,
                temporary: 1.0,
            }
        );
        let b = *s.site(3).unwrap();
        assert_eq!((b.live_bytes, b.allocs, b.temporary), (0.0, 2.0, 0.0));
        assert_eq!(s.blocks().count(), 1);
        assert_eq!(s.block(0x10).unwrap().stack, 2);
        let stack: Vec<u64> = s.stack(3).iter().map(|f| f.pc).collect();
        assert_eq!(stack, [0x3000, 0x1000]);
        assert!(s.stack(3)[0].truncated);
    }

    #[test]
    fn modules_assemble_from_events() {
        let mut s = Sites::default();
        s.on_event(&ev(EventKind::Module, 0, 0, 4, 0x5000_0000, 0));
        s.on_event(&ev(EventKind::ModuleRange, 0, 0, 4, 0x5000_1000, 0x2000));
        let path = b"/usr/lib/libsomething-long.so.1";
        let pieces: Vec<&[u8]> = path.chunks(16).collect();
        for (i, p) in pieces.iter().enumerate() {
            let (addr, arg) = Event::pack_text(p);
            let more = if i + 1 < pieces.len() { flags::MORE } else { 0 };
            s.on_event(&ev(
                EventKind::ModuleText,
                more,
                module_text::PATH,
                4,
                addr,
                arg,
            ));
        }
        let (addr, arg) = Event::pack_text(&[1, 2, 3]);
        s.on_event(&ev(
            EventKind::ModuleText,
            0,
            module_text::BUILD_ID,
            4,
            addr,
            arg,
        ));
        let m = s.module_of(0x5000_1fff).unwrap();
        assert_eq!(m.path, "/usr/lib/libsomething-long.so.1");
        assert_eq!(m.build_id, [1, 2, 3]);
        assert_eq!(m.bias, 0x5000_0000);
        assert!(s.module_of(0x5000_3000).is_none());
        s.on_event(&ev(EventKind::ModuleGone, 0, 0, 4, 0, 0));
        assert!(s.modules()[0].gone);
    }

    /// The filter has 16 bits for each block live when it is built, within its bounds, and
    /// holds every one of them.
    #[test]
    fn the_address_filter_is_sized_by_the_blocks_it_holds() {
        let mut f = AddrFilter::default();
        assert!(f.may_hold(0x1000), "not built: everything may be there");
        let few: Vec<u64> = (0..100).map(|i| 0x7f00_0000_0000 + i * 48).collect();
        f.rebuild(few.iter());
        assert_eq!(f.bits.len() * 64, *FILTER_BITS.start());
        assert!(few.iter().all(|&a| f.may_hold(a)));
        let many: Vec<u64> = (0..10_000).map(|i| 0x7f00_0000_0000 + i * 48).collect();
        f.rebuild(many.iter());
        assert_eq!(f.bits.len() * 64, 1 << 18);
        assert!(many.iter().all(|&a| f.may_hold(a)));
        let outside = (0..10_000)
            .filter(|i| f.may_hold(0x7e00_0000_0000 + i * 48))
            .count();
        assert!(outside < 1_000, "{outside} false positives of 10000");
        let all: Vec<u64> = (0..1_000_000).map(|i| 0x7f00_0000_0000 + i * 48).collect();
        f.rebuild(all.iter());
        assert_eq!(f.bits.len() * 64, *FILTER_BITS.end());
    }

    /// A program that reuses few addresses: once blocks sampled at most of them have gone, the
    /// frees of unsampled blocks there stop reaching the map after a rebuild, and a block
    /// sampled since is still found.
    #[test]
    fn the_address_filter_forgets_blocks_that_have_gone() {
        let mut s = Sites::default();
        s.on_event(&ev(
            EventKind::StackMode,
            0,
            stack_mode::SAMPLED,
            0,
            0,
            1 << 19,
        ));
        s.on_event(&ev(EventKind::StackFrame, 0, 0, 1, 0x1000, 0));
        let addr = |i: u64| 0x7f00_0000_0000 + i * 64;
        let alloc = |i, stack| ev(EventKind::Alloc, 0, 0, stack, addr(i), 64);
        let free = |i| ev(EventKind::Free, 0, 0, 0, addr(i), 0);
        // Every one of 1000 addresses once held a sampled block, now freed.
        for i in 0..1000 {
            s.on_alloc(1, &alloc(i, 1));
            s.on_free(1, &free(i));
        }
        let let_through = |s: &Sites| (0..1000).filter(|&i| s.wants_free(&free(i))).count();
        assert!(
            let_through(&s) > 900,
            "the bits stay set: {}",
            let_through(&s)
        );
        // One live sampled block; then unsampled blocks come and go at the same addresses.
        s.on_alloc(1, &alloc(5000, 1));
        for _ in 0..2 * FILTER_MISSES as u64 / 1000 + 1 {
            for i in 0..1000 {
                s.on_alloc(1, &alloc(i, 0));
                let f = free(i);
                if s.wants_free(&f) {
                    s.on_free(1, &f);
                }
            }
        }
        assert!(let_through(&s) < 50, "rebuilt: {}", let_through(&s));
        assert!(
            s.wants_free(&free(5000)),
            "the live sampled block is still let through"
        );
        s.on_free(1, &free(5000));
        assert!(s.blocks.is_empty());
    }

    #[test]
    fn sampled_estimates_are_unbiased_and_large_blocks_count_once() {
        // A million allocations from two sites: small ones, and blocks twice the interval.
        // Sampled as the hook does (an exponential countdown of bytes, fixed seed).
        let interval = 64 << 10;
        let mut s = Sites::default();
        s.on_event(&ev(
            EventKind::StackMode,
            0,
            stack_mode::SAMPLED,
            0,
            0,
            interval,
        ));
        let mut rng = crate::trace::synth::Rng::new(42);
        let mut countdown = rng.exponential(interval as f64);
        let mut exact = [0u64; 3];
        for i in 0..1_000_000u64 {
            let (site, size) = if i % 1000 == 0 {
                (2, 2 * interval)
            } else {
                (1, 16 + (i * 7919) % 240)
            };
            exact[site as usize] += size;
            countdown -= size as f64;
            if countdown > 0.0 {
                continue;
            }
            while countdown <= 0.0 {
                countdown += rng.exponential(interval as f64);
            }
            let a = ev(EventKind::Alloc, 0, 0, site, 0x1000 + i * 256, size);
            s.on_alloc(1, &a);
        }
        for site in [1u32, 2] {
            let est = s.site(site).unwrap().total_bytes;
            let want = exact[site as usize] as f64;
            assert!(
                (est - want).abs() / want < 0.05,
                "site {site}: estimate {est:.0}, exact {want}"
            );
        }
    }
}
