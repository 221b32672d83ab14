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
    /// The last stack interned, outermost frame first (`last[d]` is its frame at depth `d`),
    /// and each of its frames' node ids (`last_ids[d]`), all in the table: the next stack shares
    /// its outer frames with this one more often than not (a loop that allocates from one
    /// place, the next call of a recursion), and that shared part is known without a lookup per
    /// frame. Kept outermost first, the shared part stays where it is from one stack to the
    /// next: only the frames below it are written. Valid while `last_len > 0`; emptied whenever
    /// the table forgets nodes.
    last: [usize; LAST_FRAMES],
    last_ids: [u32; LAST_FRAMES],
    last_len: usize,
    last_truncated: bool,
    /// The two return addresses last looked up at each depth (distinct, most recent first):
    /// the calls a function made lately from its other call sites. See
    /// [`StackTable::prefetch_siblings`].
    siblings: [[usize; 2]; LAST_FRAMES],
}

/// Frames a stack may have (longer stacks are not interned).
pub const MAX_STACK: usize = 64;
const LAST_FRAMES: usize = MAX_STACK;

impl StackTable {
    /// An empty table (its memory is mapped at the first stack).
    pub const fn new() -> Self {
        Self {
            slots: ptr::null_mut(),
            bits: 0,
            nodes: 0,
            last: [0; LAST_FRAMES],
            last_ids: [0; LAST_FRAMES],
            last_len: 0,
            last_truncated: false,
            siblings: [[0; 2]; LAST_FRAMES],
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

    /// Whether the table holds the last stack it interned (nothing was forgotten since), so
    /// that [`StackTable::intern`] may be told how many outer frames the next one shares.
    pub fn holds_last(&self) -> bool {
        self.last_len > 0
    }

    /// Forgets every node (the next stacks are reported again, with new ids).
    pub fn clear(&mut self) {
        if !self.slots.is_null() && self.nodes > 0 {
            // SAFETY: the table's own private anonymous mapping: it reads back as zeros (empty
            // slots), and its memory goes back to the OS.
            unsafe { libc::madvise(self.slots.cast(), self.bytes(), libc::MADV_DONTNEED) };
        }
        self.nodes = 0;
        self.last_len = 0;
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
        self.last_len = 0;
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

    /// Where a node's search starts: a slot chosen by the return address, moved on by four
    /// times the parent's id. Ids are handed out in the order nodes are made, and a program's
    /// stacks come back in much that order (a recursion walks its tree of calls the same way
    /// each time), so the children of successive parents at one call site are found a slot or
    /// a few apart: the lookups of one stack after another move through the table in a few
    /// windows that stay in the cache, rather than missing it once per new frame. Children of
    /// one parent are spread by their addresses as before, and ids advance by one per node, so
    /// the homes fill the table evenly (the factor four keeps one call site's nodes from
    /// forming a solid run).
    fn home(&self, pc: usize, parent: u32) -> usize {
        let h = (pc as u64 ^ (pc as u64 >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let spread = (h >> (64 - self.bits)) as usize;
        spread.wrapping_add((parent as usize).wrapping_mul(4)) & (self.capacity() - 1)
    }

    /// Starts loading the slots where the nodes of the calls made lately at `depth` from other
    /// call sites would be under `parent`, and notes `pc` as the latest call there. A function
    /// that calls one place and then another (a recursion's left and right calls, a loop over
    /// two steps) looks the second up under the same parent once the first call returns; its
    /// home, away from every slot touched since, missed the cache on each such lookup (binary
    /// trees under `--stacks all`: two thirds of `intern`'s samples on that load). Loaded while
    /// the first call's lookup is made, it is in the cache when a short first call returns.
    #[inline]
    fn prefetch_siblings(&mut self, depth: usize, pc: usize, parent: u32) {
        let seen = &mut self.siblings[depth];
        let [a, b] = *seen;
        if a != pc {
            *seen = [pc, a];
        }
        for other in [a, b] {
            if other != pc && other != 0 {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: a prefetch never faults; the slot lies in the table anyway.
                unsafe {
                    core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                        self.slots.add(self.home(other, parent)).cast(),
                    );
                }
            }
        }
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
    /// and returns the leaf's id, or 0 if there is no frame, more than [`MAX_STACK`], no memory,
    /// or `room` refuses.
    /// `known` outermost frames are known to be the last stack's outermost frames (the walk
    /// went by them: [`crate::unwind::Memo::same_outer`]; 0 if nothing is known), so they are
    /// not compared again, nor read: `frames[len - known..]` may hold anything. A `known` above
    /// 0 needs the table to hold its last stack ([`StackTable::holds_last`]), with the same
    /// truncation (the walk that says so ended as that one did). `room(n)` is asked, before
    /// anything changes, whether `n` new nodes can be reported whole; `ids(n)` hands out `n`
    /// consecutive fresh ids (its first); `report` is called for each new node, outermost first.
    pub fn intern(
        &mut self,
        frames: &[usize],
        truncated: bool,
        known: usize,
        room: impl FnOnce(usize) -> bool,
        ids: impl FnOnce(u32) -> u32,
        mut report: impl FnMut(NewNode),
    ) -> u32 {
        if frames.is_empty() || frames.len() > LAST_FRAMES || !self.ensure() {
            return 0;
        }
        let len = frames.len();
        debug_assert!(
            known == 0 || (self.last_len > 0 && self.last_truncated == truncated),
            "{known} outer frames said to be the last stack's, and there is none"
        );
        // The outer frames shared with the last stack: their nodes are `last_ids`' (the same
        // frames from the same root are the same nodes, whatever follows them).
        let shared = if self.last_len > 0 && self.last_truncated == truncated {
            let last = &self.last[..self.last_len];
            let known = known.min(len).min(last.len());
            known + shared_outer(&frames[..len - known], &last[known..])
        } else {
            0
        };
        if shared == len {
            return self.last_ids[len - 1];
        }
        let root_key = if truncated { TRUNCATED_ROOT } else { 0 };
        // `last` and `last_ids` become this stack's below the shared part as its nodes are
        // found or made (depth `d` is frame `len - 1 - d`); the cache is invalid until then.
        self.last_len = 0;
        let mut parent = if shared > 0 {
            self.last_ids[shared - 1]
        } else {
            0
        };
        // The rest of the known part, by lookups.
        let mut known = shared;
        for depth in shared..len {
            let key = if depth == 0 { root_key } else { parent };
            let pc = frames[len - 1 - depth];
            self.prefetch_siblings(depth, pc, key);
            match self.find(pc, key) {
                Some(id) => {
                    parent = id;
                    self.last_ids[depth] = id;
                    known += 1;
                }
                None => break,
            }
        }
        let mut new = len - known;
        if new > 0 {
            if self.nodes + new > self.limit() && !self.grow(self.nodes + new) {
                self.clear();
                parent = 0;
                known = 0;
                new = len;
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
            for depth in known..len {
                // After a restart the shared frames are made again: `last` has them (`frames`
                // may not, see `known`).
                let pc = if depth < shared {
                    self.last[depth]
                } else {
                    frames[len - 1 - depth]
                };
                let id = first + (depth - known) as u32;
                let key = if depth == 0 { root_key } else { parent };
                self.insert(pc, key, id);
                report(NewNode {
                    pc,
                    parent: if depth == 0 { 0 } else { parent },
                    id,
                    truncated: depth == 0 && truncated,
                });
                self.last_ids[depth] = id;
                parent = id;
            }
        }
        // Every frame's node is in the table now (a restart above left none of the old ones,
        // and wrote every depth's id); the frames above `shared` are the last stack's already.
        for depth in shared..len {
            self.last[depth] = frames[len - 1 - depth];
        }
        self.last_len = len;
        self.last_truncated = truncated;
        parent
    }
}

/// How many outer frames `frames` (leaf first) shares with `last` (outermost first): compared
/// four at a time, one branch for the four, as a recursion's stacks share most of theirs.
#[inline]
fn shared_outer(frames: &[usize], last: &[usize]) -> usize {
    let len = frames.len();
    let n = len.min(last.len());
    let mut d = 0;
    while d + 4 <= n {
        // `f[3]` is at depth `d`, `f[0]` at depth `d + 3`.
        let f = &frames[len - d - 4..len - d];
        let l = &last[d..d + 4];
        if (f[3] == l[0]) & (f[2] == l[1]) & (f[1] == l[2]) & (f[0] == l[3]) {
            d += 4;
        } else {
            break;
        }
    }
    while d < n && frames[len - 1 - d] == last[d] {
        d += 1;
    }
    d
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
        intern_knowing(t, ids, frames, trunc, 0)
    }

    /// [`intern`], told that the `known` outermost frames are the last stack's.
    fn intern_knowing(
        t: &mut StackTable,
        ids: &mut Ids,
        frames: &[usize],
        trunc: bool,
        known: usize,
    ) -> (u32, Vec<NewNode>) {
        let mut sent = Vec::new();
        let id = t.intern(
            frames,
            trunc,
            known,
            |_| true,
            |n| ids.take(n),
            |n| sent.push(n),
        );
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
    fn the_calls_made_at_each_depth_are_noted_for_prefetching() {
        // A function at depth 1 calling from two sites in turn, then a third: each depth keeps
        // its last two distinct return addresses, the latest first.
        let mut t = StackTable::new();
        let mut ids = Ids(1);
        for leaf in [0x20, 0x30, 0x20, 0x20, 0x40] {
            intern(&mut t, &mut ids, &[0x5, leaf, 0x10], false);
        }
        assert_eq!(t.siblings[1], [0x40, 0x20]);
        // Depth 2 was looked up once, under the third stack (the others were new from depth 1
        // on, or the last stack again).
        assert_eq!(t.siblings[2], [0x5, 0]);
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
        // Filling on: the table restarts, and the first stack is new again, whole. The walk
        // says the root is the last stack's, and leaves it unwritten: it is made again all the
        // same, from the stack the table kept.
        let mut new_root = None;
        for i in TABLE_MAX_NODES / 2..TABLE_MAX_NODES {
            let before = t.len();
            let (_, sent) = intern_knowing(&mut t, &mut ids, &[0x1000 + i, 0xdead], false, 1);
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
            0,
            |n| n < 3,
            |_| 1,
            |_| panic!("nothing sent"),
        );
        assert_eq!((id, t.len()), (0, 0));
        assert_eq!(t.intern(&[], false, 0, |_| true, |_| 1, |_| {}), 0);
        t.release();
    }

    /// Follows `leaf` up through the nodes reported so far: the stack it stands for, leaf first,
    /// and whether its outermost node was marked truncated.
    fn stack_of(nodes: &std::collections::HashMap<u32, NewNode>, leaf: u32) -> (Vec<usize>, bool) {
        let mut out = Vec::new();
        let mut id = leaf;
        let mut truncated = false;
        while id != 0 {
            let n = nodes[&id];
            out.push(n.pc);
            truncated = n.truncated;
            id = n.parent;
        }
        (out, truncated)
    }

    #[test]
    fn every_id_stands_for_its_own_frames() {
        // Stacks from a few addresses, so they share outer frames, are prefixes of one another,
        // alternate and repeat; some truncated. Each id returned must lead back through the
        // reported nodes to exactly the frames interned, and the ids must be those of a table
        // that never uses its last stack.
        let mut t = StackTable::new();
        let mut plain = StackTable::new();
        let (mut ids, mut plain_ids) = (Ids(1), Ids(1));
        let mut nodes = std::collections::HashMap::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut prev: Vec<usize> = vec![0x10];
        for round in 0..20_000 {
            let r = next();
            let frames: Vec<usize> = match r % 5 {
                // One deeper or one shallower than the last, or the last with another leaf.
                0 => [&[0x100 + (r as usize >> 8) % 3], &prev[..]].concat(),
                1 if prev.len() > 1 => prev[1..].to_vec(),
                2 => [
                    &[0x200 + (r as usize >> 8) % 3],
                    &prev[1.min(prev.len() - 1)..],
                ]
                .concat(),
                // Anything.
                _ => (0..1 + (r as usize >> 8) % 12)
                    .map(|i| 0x10 * (1 + (r as usize >> (16 + i)) % 4))
                    .collect(),
            };
            let frames = &frames[..frames.len().min(MAX_STACK)];
            let trunc = next() % 7 == 0;
            // What a walk may know of the outer frames it shares with the last stack: none, some
            // or all of them.
            let shared = frames
                .iter()
                .rev()
                .zip(prev.iter().rev())
                .take_while(|(a, b)| a == b)
                .count();
            let known = if t.holds_last() && trunc == t.last_truncated {
                shared * (next() as usize % 3) / 2
            } else {
                0
            };
            // The known frames are not read (a walk that knows them does not write them).
            let mut walked = frames.to_vec();
            let len = walked.len();
            walked[len - known..].fill(0xdead);
            let (id, sent) = intern_knowing(&mut t, &mut ids, &walked, trunc, known);
            plain.last_len = 0;
            let (plain_id, plain_sent) = intern(&mut plain, &mut plain_ids, frames, trunc);
            assert_eq!((id, &sent), (plain_id, &plain_sent), "round {round}");
            for n in sent {
                assert!(
                    nodes.insert(n.id, n).is_none(),
                    "id {} reported twice",
                    n.id
                );
            }
            assert_eq!(
                stack_of(&nodes, id),
                (frames.to_vec(), trunc),
                "round {round}"
            );
            prev = frames.to_vec();
            if round % 5000 == 4999 {
                // Forgotten nodes are reported again, with new ids.
                t.clear();
                plain.clear();
            }
        }
        t.release();
        plain.release();
    }

    #[test]
    fn a_cleared_table_does_not_answer_from_its_last_stack() {
        let mut t = StackTable::new();
        let mut ids = Ids(1);
        let (a, _) = intern(&mut t, &mut ids, &[0x30, 0x20, 0x10], false);
        t.clear();
        let (b, sent) = intern(&mut t, &mut ids, &[0x30, 0x20, 0x10], false);
        assert_eq!(sent.len(), 3);
        assert_ne!(a, b);
        // An outer part of the last stack is its inner node; the same frames truncated are not.
        let (c, sent) = intern(&mut t, &mut ids, &[0x20, 0x10], false);
        assert!(sent.is_empty());
        assert_eq!(c, sent_id(&mut t, &mut ids, &[0x20, 0x10]));
        let (d, sent) = intern(&mut t, &mut ids, &[0x20, 0x10], true);
        assert_eq!(sent.len(), 2);
        assert_ne!(c, d);
        t.release();
    }

    #[test]
    fn shared_outer_frames_are_counted_from_the_root_whatever_the_lengths() {
        // Against one frame at a time, for every length up to 11 and a difference at every depth.
        let naive = |frames: &[usize], last: &[usize]| {
            frames
                .iter()
                .rev()
                .zip(last)
                .take_while(|(a, b)| a == b)
                .count()
        };
        for len in 0..12 {
            for last_len in 0..12 {
                let last: Vec<usize> = (0..last_len).map(|d| 0x100 + d).collect();
                for differ in 0..=len {
                    let frames: Vec<usize> = (0..len)
                        .rev()
                        .map(|d| if d == differ { 0x999 } else { 0x100 + d })
                        .collect();
                    assert_eq!(
                        shared_outer(&frames, &last),
                        naive(&frames, &last),
                        "len {len}, last {last_len}, differing at depth {differ}"
                    );
                }
            }
        }
    }

    /// The id of `frames` in `t` (already interned).
    fn sent_id(t: &mut StackTable, ids: &mut Ids, frames: &[usize]) -> u32 {
        t.last_len = 0;
        let (id, sent) = intern(t, ids, frames, false);
        assert!(sent.is_empty());
        id
    }
}
