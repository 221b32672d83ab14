//! A thread's interned stacks: a tree of frames, each node `(parent id, return address)` with an
//! id from one process-wide counter, held in an open-addressing hash table in OS memory (never
//! the traced heap). A stack is interned from its outermost frame to its leaf; the nodes not yet
//! in the table are new, and each new node is reported once (a `StackFrame` event) before the
//! allocation that uses it. The table starts small and doubles when the new nodes would fill it
//! past three quarters; at its largest it starts afresh instead, and the nodes of later stacks
//! get new ids and are reported again.

use core::ptr;

use crate::os;

/// Slots in a table at its largest (16 bytes each: 64 MiB of address space). Recursive code makes
/// many distinct stacks (binary trees of depth 16, built from two call sites: 2^17 nodes per
/// tree, 3 * 10^5 for the trees benchmark), and a table that restarts often sends the same
/// frames again and again: with a fixed 2^18 slots the benchmark's trace under `--stacks all`
/// was 27x heaptrack's file and recording took 2.4x heaptrack's time.
pub const TABLE_SLOTS: usize = 1 << MAX_BITS;
const MAX_BITS: u32 = 22;
/// Slots when a table is first mapped (64 KiB: a thread with a few stacks keeps a few pages).
const FIRST_BITS: u32 = 12;
/// The table starts afresh beyond this many nodes.
pub const TABLE_MAX_NODES: usize = TABLE_SLOTS / 4 * 3;
/// The parent key of an outermost node whose walk was truncated (a node apart from the complete
/// outermost node with the same address).
const TRUNCATED_ROOT: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    pc: u64,
    parent: u32,
    /// 0: empty.
    id: u32,
}

/// A new node to report: its return address, its parent's id (0 for the outermost frame), its
/// id, and whether the walk was truncated beyond it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewNode {
    /// The frame's return address.
    pub pc: usize,
    /// The parent node's id (0: outermost).
    pub parent: u32,
    /// This node's id.
    pub id: u32,
    /// The frames beyond this one are unknown.
    pub truncated: bool,
}

/// One thread's table.
pub struct StackTable {
    slots: *mut Slot,
    /// log2 of the slots mapped (0: none).
    bits: u32,
    nodes: usize,
    /// The last stack interned and its leaf's id (0: none): a loop that allocates from one
    /// place finds its stack here without a lookup per frame.
    last: [usize; LAST_FRAMES],
    last_len: usize,
    last_truncated: bool,
    last_leaf: u32,
}

/// Frames of the last stack kept for comparison.
const LAST_FRAMES: usize = 64;

impl StackTable {
    /// An empty table (its memory is mapped at the first stack).
    pub const fn new() -> Self {
        Self {
            slots: ptr::null_mut(),
            bits: 0,
            nodes: 0,
            last: [0; LAST_FRAMES],
            last_len: 0,
            last_truncated: false,
            last_leaf: 0,
        }
    }

    /// Nodes in the table.
    pub fn len(&self) -> usize {
        self.nodes
    }

    /// Whether the table holds no node.
    pub fn is_empty(&self) -> bool {
        self.nodes == 0
    }

    /// Forgets every node (the next stacks are reported again, with new ids).
    pub fn clear(&mut self) {
        if !self.slots.is_null() && self.nodes > 0 {
            // SAFETY: the table's own private anonymous mapping: it reads back as zeros (empty
            // slots), and its memory goes back to the OS.
            unsafe { libc::madvise(self.slots.cast(), self.bytes(), libc::MADV_DONTNEED) };
        }
        self.nodes = 0;
        self.last_leaf = 0;
    }

    /// Returns the table's memory to the OS.
    pub fn release(&mut self) {
        if !self.slots.is_null() {
            // SAFETY: the whole mapping made in `ensure` or `grow`, no longer referenced.
            unsafe { os::unmap_internal(self.slots.cast(), self.bytes()) };
            self.slots = ptr::null_mut();
            self.bits = 0;
        }
        self.nodes = 0;
        self.last_leaf = 0;
    }

    /// Slots mapped.
    fn capacity(&self) -> usize {
        1 << self.bits
    }

    fn bytes(&self) -> usize {
        self.capacity() * core::mem::size_of::<Slot>()
    }

    /// Nodes the mapped slots take before the table must grow or start afresh.
    fn limit(&self) -> usize {
        self.capacity() / 4 * 3
    }

    fn ensure(&mut self) -> bool {
        if self.slots.is_null() {
            self.slots = os::map_internal((1 << FIRST_BITS) * core::mem::size_of::<Slot>()).cast();
            if !self.slots.is_null() {
                self.bits = FIRST_BITS;
            }
        }
        !self.slots.is_null()
    }

    /// Moves the nodes to a table large enough for `nodes` (at most [`TABLE_SLOTS`]); false if
    /// there is none (the table is at its largest, or no memory), and the table is unchanged.
    fn grow(&mut self, nodes: usize) -> bool {
        let mut bits = self.bits;
        while (1usize << bits) / 4 * 3 < nodes && bits < MAX_BITS {
            bits += 1;
        }
        if (1usize << bits) / 4 * 3 < nodes {
            return false;
        }
        let new = os::map_internal((1usize << bits) * core::mem::size_of::<Slot>()).cast::<Slot>();
        if new.is_null() {
            return false;
        }
        let old = (self.slots, self.bits);
        self.slots = new;
        self.bits = bits;
        self.nodes = 0;
        for i in 0..1usize << old.1 {
            // SAFETY: `i` lies within the old mapping, still mapped.
            let s = unsafe { *old.0.add(i) };
            if s.id != 0 {
                self.insert(s.pc as usize, s.parent, s.id);
            }
        }
        // SAFETY: the old mapping, made in `ensure` or an earlier `grow`, no longer referenced.
        unsafe {
            os::unmap_internal(
                old.0.cast(),
                (1usize << old.1) * core::mem::size_of::<Slot>(),
            );
        }
        true
    }

    fn home(&self, pc: usize, parent: u32) -> usize {
        let h = (pc as u64 ^ (u64::from(parent) << 40) ^ u64::from(parent))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> (64 - self.bits)) as usize
    }

    fn find(&self, pc: usize, parent: u32) -> Option<u32> {
        let mask = self.capacity() - 1;
        let mut i = self.home(pc, parent);
        loop {
            // SAFETY: `i` is masked into the table; the table is mapped.
            let s = unsafe { *self.slots.add(i) };
            if s.id == 0 {
                return None;
            }
            if s.pc == pc as u64 && s.parent == parent {
                return Some(s.id);
            }
            i = (i + 1) & mask;
        }
    }

    fn insert(&mut self, pc: usize, parent: u32, id: u32) {
        let mask = self.capacity() - 1;
        let mut i = self.home(pc, parent);
        // SAFETY: as in `find`; the table is never full (at most three quarters).
        unsafe {
            while (*self.slots.add(i)).id != 0 {
                i = (i + 1) & mask;
            }
            self.slots.add(i).write(Slot {
                pc: pc as u64,
                parent,
                id,
            });
        }
        self.nodes += 1;
    }

    /// Interns the stack `frames` (leaf first; `truncated`: frames beyond the last are unknown)
    /// and returns the leaf's id, or 0 if there is no frame or no memory, or `room` refuses.
    /// `room(n)` is asked, before anything changes, whether `n` new nodes can be reported whole;
    /// `ids(n)` hands out `n` consecutive fresh ids (its first); `report` is called for each new
    /// node, outermost first.
    pub fn intern(
        &mut self,
        frames: &[usize],
        truncated: bool,
        room: impl FnOnce(usize) -> bool,
        ids: impl FnOnce(u32) -> u32,
        report: impl FnMut(NewNode),
    ) -> u32 {
        if frames.is_empty() || !self.ensure() {
            return 0;
        }
        if self.last_leaf != 0
            && self.last_truncated == truncated
            && self.last[..self.last_len] == *frames
        {
            return self.last_leaf;
        }
        let leaf = self.intern_new(frames, truncated, room, ids, report);
        if leaf != 0 && frames.len() <= LAST_FRAMES {
            self.last[..frames.len()].copy_from_slice(frames);
            self.last_len = frames.len();
            self.last_truncated = truncated;
            self.last_leaf = leaf;
        }
        leaf
    }

    fn intern_new(
        &mut self,
        frames: &[usize],
        truncated: bool,
        room: impl FnOnce(usize) -> bool,
        ids: impl FnOnce(u32) -> u32,
        mut report: impl FnMut(NewNode),
    ) -> u32 {
        let root_key = if truncated { TRUNCATED_ROOT } else { 0 };
        // The known part, from the outermost frame in.
        let mut parent = 0;
        let mut known = 0;
        for (depth, &pc) in frames.iter().rev().enumerate() {
            let key = if depth == 0 { root_key } else { parent };
            match self.find(pc, key) {
                Some(id) => {
                    parent = id;
                    known += 1;
                }
                None => break,
            }
        }
        let mut new = frames.len() - known;
        if new == 0 {
            return parent;
        }
        if self.nodes + new > self.limit() && !self.grow(self.nodes + new) {
            self.clear();
            parent = 0;
            known = 0;
            new = frames.len();
        }
        if !room(new) {
            return 0;
        }
        let Ok(n32) = u32::try_from(new) else {
            return 0;
        };
        let first = ids(n32);
        if first == 0 {
            return 0;
        }
        for (depth, &pc) in frames.iter().rev().enumerate().skip(known) {
            let id = first + (depth - known) as u32;
            let key = if depth == 0 { root_key } else { parent };
            self.insert(pc, key, id);
            report(NewNode {
                pc,
                parent: if depth == 0 { 0 } else { parent },
                id,
                truncated: depth == 0 && truncated,
            });
            parent = id;
        }
        parent
    }
}

impl Default for StackTable {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ids(u32);
    impl Ids {
        fn take(&mut self, n: u32) -> u32 {
            let first = self.0;
            self.0 += n;
            first
        }
    }

    fn intern(
        t: &mut StackTable,
        ids: &mut Ids,
        frames: &[usize],
        trunc: bool,
    ) -> (u32, Vec<NewNode>) {
        let mut sent = Vec::new();
        let id = t.intern(frames, trunc, |_| true, |n| ids.take(n), |n| sent.push(n));
        (id, sent)
    }

    #[test]
    fn the_same_stack_twice_is_one_set_of_frames() {
        let mut t = StackTable::new();
        let mut ids = Ids(1);
        let (a, sent) = intern(&mut t, &mut ids, &[0x30, 0x20, 0x10], false);
        assert_eq!(sent.len(), 3);
        assert_eq!(
            sent[0],
            NewNode {
                pc: 0x10,
                parent: 0,
                id: 1,
                truncated: false
            }
        );
        assert_eq!(
            sent[2],
            NewNode {
                pc: 0x30,
                parent: 2,
                id: 3,
                truncated: false
            }
        );
        assert_eq!(a, 3);
        let (b, sent) = intern(&mut t, &mut ids, &[0x30, 0x20, 0x10], false);
        assert_eq!((b, sent.len()), (3, 0));
        // A sibling shares the two outer frames.
        let (c, sent) = intern(&mut t, &mut ids, &[0x31, 0x20, 0x10], false);
        assert_eq!(
            sent,
            [NewNode {
                pc: 0x31,
                parent: 2,
                id: 4,
                truncated: false
            }]
        );
        assert_eq!(c, 4);
        // The same frames with the walk truncated are another stack.
        let (d, sent) = intern(&mut t, &mut ids, &[0x30, 0x20, 0x10], true);
        assert_eq!(sent.len(), 3);
        assert!(sent[0].truncated && !sent[1].truncated);
        assert_ne!(d, a);
        assert_eq!(t.len(), 7);
        t.release();
    }

    #[test]
    fn a_full_table_starts_afresh() {
        let mut t = StackTable::new();
        let mut ids = Ids(1);
        let mut leaf_of_first = 0;
        for i in 0..TABLE_MAX_NODES / 2 {
            let (id, _) = intern(&mut t, &mut ids, &[0x1000 + i, 0x10], false);
            if i == 0 {
                leaf_of_first = id;
            }
        }
        assert_eq!(t.len(), TABLE_MAX_NODES / 2 + 1);
        // Filling on: the table restarts, and the first stack is new again, whole.
        let mut new_root = None;
        for i in TABLE_MAX_NODES / 2..TABLE_MAX_NODES {
            let before = t.len();
            let (_, sent) = intern(&mut t, &mut ids, &[0x1000 + i, 0x10], false);
            if t.len() < before {
                // The stack that found the table full is reported whole, its root anew.
                assert_eq!(sent.len(), 2);
                assert_eq!((sent[0].pc, sent[0].parent), (0x10, 0));
                assert_ne!(sent[0].id, 1);
                new_root = Some(sent[0].id);
            }
        }
        let new_root = new_root.expect("the table restarted");
        let (again, sent) = intern(&mut t, &mut ids, &[0x1000, 0x10], false);
        assert_eq!(
            sent.len(),
            1,
            "the leaf is reported again, under the new root"
        );
        assert_eq!(sent[0].parent, new_root);
        assert_ne!(again, leaf_of_first, "with a new id");
        let (same, sent) = intern(&mut t, &mut ids, &[0x1000, 0x10], false);
        assert_eq!((same, sent.len()), (again, 0));
        t.release();
    }

    #[test]
    fn the_table_grows_and_keeps_every_node_until_its_largest() {
        let mut t = StackTable::new();
        let mut ids = Ids(1);
        let n = (1 << FIRST_BITS) * 4;
        let mut leaves = Vec::new();
        for i in 0..n {
            let (id, sent) = intern(&mut t, &mut ids, &[0x1000 + i, 0x10], false);
            assert_eq!(sent.len(), if i == 0 { 2 } else { 1 });
            leaves.push(id);
        }
        assert!(t.bits > FIRST_BITS, "it grew");
        assert_eq!(t.len(), n + 1);
        // Every stack interned before the table grew is still known, with its id.
        for (i, &leaf) in leaves.iter().enumerate() {
            let (id, sent) = intern(&mut t, &mut ids, &[0x1000 + i, 0x10], false);
            assert_eq!((id, sent.len()), (leaf, 0));
        }
        t.release();
    }

    #[test]
    fn refused_room_changes_nothing() {
        let mut t = StackTable::new();
        let id = t.intern(
            &[1, 2, 3],
            false,
            |n| n < 3,
            |_| 1,
            |_| panic!("nothing sent"),
        );
        assert_eq!((id, t.len()), (0, 0));
        assert_eq!(t.intern(&[], false, |_| true, |_| 1, |_| {}), 0);
        t.release();
    }
}
