//! Heaps (one per thread) and the views that group pages by heap and bin.
//!
//! A heap is known from the first event in its buffer, or from `ThreadStart`/`ThreadExit`/
//! `ThreadName` naming its id. Which pages a heap owns is not stored twice: each page carries its
//! owner, and [`super::Model::bins`] groups them when asked.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Model;
use super::hash::FastMap;
use super::page::Page;

/// One heap (thread).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heap {
    /// Heap id (> 0).
    pub id: u32,
    /// Thread name (from `ThreadName`), empty until known.
    pub name: String,
    /// OS thread id (from `ThreadStart`), 0 until known.
    pub os_tid: u64,
    /// Time of the first event seen for it.
    pub first_seen: u64,
    /// Time of its `ThreadStart`.
    pub started_at: Option<u64>,
    /// Time of its `ThreadExit`.
    pub exited_at: Option<u64>,
    /// `Alloc` events in its buffer.
    pub allocs: u64,
    /// Program `Free` events in its buffer.
    pub frees: u64,
    /// Of those, frees of blocks of pages another heap owns (cross-thread).
    pub cross_frees: u64,
    /// A marker label still being assembled (`MORE`).
    #[serde(skip)]
    pub(crate) pending_mark: Vec<u8>,
}

impl Heap {
    /// Alive: seen and not exited.
    pub fn is_alive(&self) -> bool {
        self.exited_at.is_none()
    }

    /// A thread of the program as the trace follows it: started (`ThreadStart`) or seen
    /// allocating. A heap seen only freeing without a start ([`Heap::only_frees`]: an untraced
    /// thread, whose exit the trace never reports) is not one.
    pub fn is_thread(&self) -> bool {
        self.started_at.is_some() || self.allocs > 0
    }

    /// Seen only freeing, never allocating, while the trace ran: a thread the trace does not
    /// follow (an untraced one, whose frees into traced pages are reported so the pages' counts
    /// stay exact), or one that has not allocated since recording began.
    pub fn only_frees(&self) -> bool {
        self.allocs == 0 && self.frees > 0
    }

    /// A label for the UI: `name (heap N)`, or `heap N` without a name; `heap N, frees only`
    /// for a heap seen only freeing (see [`Heap::only_frees`]).
    pub fn label(&self) -> String {
        let heap = if self.only_frees() {
            format!("heap {}, frees only", self.id)
        } else {
            format!("heap {}", self.id)
        };
        if self.name.is_empty() {
            heap
        } else {
            format!("{} ({heap})", self.name)
        }
    }
}

const NO_SLOT: u32 = u32::MAX;
/// Heap ids below this find their slot by direct indexing (ids count up from 1).
const DIRECT_IDS: usize = 1 << 16;

/// The heaps by id, with the slot of the heap of the current batch cached.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Heaps {
    list: Vec<Heap>,
    index: FastMap<u32, u32>,
    /// `direct[id]` is the slot of heap `id` (`NO_SLOT` if unknown), for small ids.
    #[serde(skip)]
    direct: Vec<u32>,
    alive: u32,
    #[serde(skip)]
    current: Option<(u32, u32)>,
    /// A thread name being assembled from heap 0's `ThreadName` events: (heap id, bytes).
    #[serde(skip)]
    pending_name: Option<(u32, Vec<u8>)>,
}

impl Heaps {
    /// Every heap seen, in order of first sight.
    pub fn iter(&self) -> std::slice::Iter<'_, Heap> {
        self.list.iter()
    }

    /// The heap with `id`.
    pub fn get(&self, id: u32) -> Option<&Heap> {
        self.index.get(&id).map(|&i| &self.list[i as usize])
    }

    /// Threads alive: heaps that are threads ([`Heap::is_thread`]) and have not exited.
    pub fn alive(&self) -> u32 {
        self.alive
    }

    /// Threads seen: heaps that are threads ([`Heap::is_thread`]), one per OS thread (a thread
    /// that frees after its heap is gone, in the C library's cleanup, gets a second heap for
    /// those frees).
    pub fn threads_seen(&self) -> u64 {
        let mut tids = std::collections::HashSet::new();
        let mut unknown = 0u64;
        for h in self.list.iter().filter(|h| h.is_thread()) {
            if h.os_tid == 0 {
                unknown += 1;
            } else {
                tids.insert(h.os_tid);
            }
        }
        tids.len() as u64 + unknown
    }

    /// Counts [`Heaps::alive`] anew (a keyframe written before it left out heaps seen only
    /// freeing).
    pub(crate) fn recount_alive(&mut self) {
        self.alive = self
            .list
            .iter()
            .filter(|h| h.is_thread() && h.is_alive())
            .count() as u32;
    }

    /// An `Alloc` of the current heap: counted, and the heap becomes a thread alive at its
    /// first one (unless started or exited already).
    #[inline(always)]
    pub(crate) fn count_alloc(&mut self) {
        if let Some((_, slot)) = self.current
            && slot != NO_SLOT
        {
            let h = &mut self.list[slot as usize];
            h.allocs += 1;
            if h.allocs == 1 && h.started_at.is_none() && h.exited_at.is_none() {
                self.alive += 1;
            }
        }
    }

    /// Heap `id`'s thread started at `time` (OS thread id `os_tid`): a thread alive, unless
    /// its exit came first (the collector's `ThreadStart` can follow it in the same tick).
    pub(crate) fn start(&mut self, id: u32, time: u64, os_tid: u64) {
        let Some((h, _)) = self.touch(id, time) else {
            return;
        };
        let newly = !h.is_thread() && h.is_alive();
        h.started_at.get_or_insert(time);
        h.os_tid = os_tid;
        if newly {
            self.alive += 1;
        }
    }

    /// Number of heaps seen.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// No heap seen.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Slot of heap `id`, made on first sight (`NO_SLOT` for heap 0, the process).
    fn slot(&mut self, id: u32, time: u64) -> u32 {
        if id == 0 {
            return NO_SLOT;
        }
        let d = id as usize;
        if let Some(&i) = self.direct.get(d)
            && i != NO_SLOT
        {
            return i;
        }
        let i = match self.index.get(&id) {
            Some(&i) => i,
            None => {
                let i = self.list.len() as u32;
                self.list.push(Heap {
                    id,
                    first_seen: time,
                    ..Heap::default()
                });
                self.index.insert(id, i);
                i
            }
        };
        if d < DIRECT_IDS {
            if self.direct.len() <= d {
                self.direct.resize(d + 1, NO_SLOT);
            }
            self.direct[d] = i;
        }
        i
    }

    /// Heap `id` (> 0), made on first sight; true if it is new.
    pub(crate) fn touch(&mut self, id: u32, time: u64) -> Option<(&mut Heap, bool)> {
        let n = self.list.len();
        let i = self.slot(id, time);
        if i == NO_SLOT {
            return None;
        }
        let new = self.list.len() > n;
        Some((&mut self.list[i as usize], new))
    }

    /// Makes `id` the heap whose events are being applied; true if it was new.
    #[inline(always)]
    pub(crate) fn set_current(&mut self, id: u32, time: u64) -> bool {
        if matches!(self.current, Some((c, _)) if c == id) {
            return false;
        }
        let n = self.list.len();
        let slot = self.slot(id, time);
        self.current = Some((id, slot));
        self.list.len() > n
    }

    /// The current heap's record (none for heap 0).
    #[inline(always)]
    pub(crate) fn current_mut(&mut self) -> Option<&mut Heap> {
        match self.current {
            Some((_, slot)) if slot != NO_SLOT => Some(&mut self.list[slot as usize]),
            _ => None,
        }
    }

    /// Heap `id` exited; true if it was new.
    pub(crate) fn exit(&mut self, id: u32, time: u64) -> bool {
        let Some((h, new)) = self.touch(id, time) else {
            return false;
        };
        if h.exited_at.is_none() {
            h.exited_at = Some(time);
            if h.is_thread() {
                self.alive -= 1;
            }
        }
        new
    }

    /// Appends name bytes for heap `id`; sets the name when `done`.
    pub(crate) fn name_part(&mut self, id: u32, text: &[u8], done: bool, time: u64) -> bool {
        let mut buf = match self.pending_name.take() {
            Some((pid, b)) if pid == id => b,
            _ => Vec::new(),
        };
        if buf.len() < 4096 {
            buf.extend_from_slice(text);
        }
        if !done {
            self.pending_name = Some((id, buf));
            return false;
        }
        let Some((h, new)) = self.touch(id, time) else {
            return false;
        };
        h.name = String::from_utf8_lossy(&buf).into_owned();
        new
    }
}

/// Sums over a set of pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageTotals {
    /// Pages.
    pub pages: u64,
    /// Pages in their heap's full queue.
    pub full_pages: u64,
    /// Blocks the pages can hold.
    pub reserved: i64,
    /// Blocks carved.
    pub capacity: i64,
    /// Blocks not on `free`/`local_free` (mimalloc's `used`).
    pub used: i64,
    /// Blocks the program holds (`used − thread_free − delayed`).
    pub held: i64,
    /// Blocks on `free`.
    pub free: i64,
    /// Blocks on `local_free`.
    pub local_free: i64,
    /// Blocks on `thread_free`.
    pub thread_free: i64,
    /// Blocks on the owner heap's delayed list.
    pub delayed: i64,
    /// Bytes of held blocks.
    pub held_bytes: i64,
    /// Bytes the pages can hold.
    pub capacity_bytes: i64,
}

impl PageTotals {
    /// Adds one page.
    pub fn add(&mut self, p: &Page) {
        fn add(a: &mut i64, b: i64) {
            *a = a.wrapping_add(b);
        }
        self.pages += 1;
        self.full_pages += u64::from(p.in_full);
        add(&mut self.reserved, p.reserved.into());
        add(&mut self.capacity, p.capacity.into());
        add(&mut self.used, p.used);
        add(&mut self.held, p.held());
        add(&mut self.free, p.free_len());
        add(&mut self.local_free, p.local_free);
        add(&mut self.thread_free, p.thread_free);
        add(&mut self.delayed, p.delayed);
        add(&mut self.held_bytes, p.held_bytes());
        add(&mut self.capacity_bytes, p.capacity_bytes());
    }
}

/// The in-use pages of one bin (of one heap, or of all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BinGroup {
    /// Size class.
    pub bin: u16,
    /// Block size of the class.
    pub block_size: u64,
    /// Start addresses of its pages (use [`Model::page_at`] for the page), by address.
    pub pages: Vec<u64>,
    /// Sums over those pages.
    pub totals: PageTotals,
}

impl Model {
    /// The heaps.
    pub fn heaps(&self) -> &Heaps {
        &self.heaps
    }

    /// In-use pages grouped by bin, ascending: of heap `owner` (0: abandoned pages), or of every
    /// heap when `None` (per-bin occupancy).
    pub fn bins(&self, owner: Option<u32>) -> Vec<BinGroup> {
        let mut groups: BTreeMap<u16, BinGroup> = BTreeMap::new();
        for seg in self.segs.iter() {
            for p in seg.pages.iter().filter(|p| p.in_use) {
                if owner.is_some_and(|o| o != p.owner) {
                    continue;
                }
                let g = groups.entry(p.bin).or_insert_with(|| BinGroup {
                    bin: p.bin,
                    block_size: p.block_size,
                    ..BinGroup::default()
                });
                g.pages.push(p.start);
                g.totals.add(p);
            }
        }
        let mut v: Vec<BinGroup> = groups.into_values().collect();
        for g in &mut v {
            g.pages.sort_unstable();
        }
        v
    }

    /// Sums over every in-use page of heap `owner`, or of all heaps.
    pub fn page_totals(&self, owner: Option<u32>) -> PageTotals {
        let mut t = PageTotals::default();
        for seg in self.segs.iter() {
            for p in seg.pages.iter().filter(|p| p.in_use) {
                if owner.is_none_or(|o| o == p.owner) {
                    t.add(p);
                }
            }
        }
        t
    }
}
