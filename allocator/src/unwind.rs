//! Walking a stack, with every step checked, and finding a thread's stack.
//!
//! [`walk`] is a pure function of the registers at the allocation site, a reader of stack words,
//! the stack's bounds and a lookup of code addresses (with their module's unwind rows, see
//! [`crate::cfi`]), so a test can feed it corrupt stacks. Each step finds the caller's frame by
//! the row covering the return address when the module has rows (DWARF call frame information:
//! code without frame pointers), by the frame pointer otherwise. It reads only 8-byte words
//! inside the bounds and never follows a frame that fails a check:
//!
//! - each caller frame lies in the stack, strictly above the frame before it (no cycles), at or
//!   below the top; a frame pointer is 16-byte aligned (the x86-64 ABI keeps frames so);
//! - each return address lies in a known executable range (a loaded module's code);
//! - at most `out.len()` frames (64).
//!
//! A walk that stops at a failed check, at a row it cannot follow, or at the depth limit says so
//! (`truncated`); a frame pointer of 0 (`_start` and `clone` clear it) or a row saying the
//! return address is undefined is the end of the stack, not a truncation.

use crate::cfi::{self, Row, rule};

/// The registers at the allocation site: the return address into the caller of `malloc`, the
/// caller's stack pointer after the return, and its frame pointer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// Return address into the code that called `malloc` (the leaf frame).
    pub pc: usize,
    /// The stack pointer once `malloc` has returned.
    pub sp: usize,
    /// The frame pointer (`rbp`) at the call.
    pub fp: usize,
}

/// What a walk found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    /// Frames written to `out`, leaf first.
    pub len: usize,
    /// The walk stopped early: the frames beyond the last are unknown.
    pub truncated: bool,
}

/// Walks the stack from `regs` into `out` (leaf first). `stack` is the thread's stack `[lo,
/// hi)`; `read(addr)` is only called with 8-byte aligned `addr` such that `addr + 8 <= hi` and
/// `addr >= max(lo, regs.sp)`. `frame(pc)` says whether the return address `pc` lies in a
/// module's code (`None` if not), and gives the unwind row covering the call before it
/// (`Some(None)`: no row, walk by frame pointers); see [`rows_frame`]. At most [`MEMO_LEVELS`]
/// frames.
pub fn walk(
    regs: Regs,
    stack: (usize, usize),
    read: impl Fn(usize) -> usize,
    frame: impl FnMut(usize) -> Option<Option<Row>>,
    out: &mut [usize],
) -> Walk {
    walk_memo(regs, stack, read, frame, out, &mut Memo::new(), ALL_FRAMES)
}

/// Levels a [`Memo`] keeps: the most frames a walk gives.
pub const MEMO_LEVELS: usize = 64;

/// One level of a walk: the frame entered (its return address `pc`, and the stack and frame
/// pointers there) and the stack words read to leave it for its caller (`ra_at`, `fp_at`; 0:
/// not read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Level {
    pc: usize,
    sp: usize,
    fp: usize,
    ra_at: usize,
    fp_at: usize,
}

/// Levels a walk may put in front of the last walk's where it ends as the last walk did (see
/// [`walk_memo`]): a stack a few frames deeper than the last keeps the last one's levels where
/// they are.
const HEADROOM: usize = 16;
/// Levels in each half of a [`Memo`].
const HALF: usize = HEADROOM + MEMO_LEVELS;

/// What one walk leaves for the next on the same stack ([`walk_memo`]).
///
/// A step of the walk is a function of the frame it leaves (return address, stack and frame
/// pointers), the stack's top, the words it reads and what `frame` says of the return address
/// read; so once a walk enters a frame the last walk entered too, in the same state, the rest
/// of the last walk holds for as long as the words it read still hold the same values. The next
/// walk then checks those words (one or two loads and compares a frame) instead of taking each
/// step anew; at the first word that changed it walks on from there. Its result is always the
/// one a walk without the memo would give.
#[derive(Clone)]
pub struct Memo {
    /// The last walk's levels are `levels[cur][base..base + len]`; the other half is the next
    /// walk's, which it writes from [`HEADROOM`] on.
    levels: [[Level; HALF]; 2],
    cur: usize,
    base: usize,
    /// Levels of the last walk (0: nothing to go by).
    len: usize,
    /// The words the last walk read leaving its last level (if its `ra_at` is not 0).
    last_ra: usize,
    last_fp: usize,
    truncated: bool,
    /// The last walk stopped at its depth limit, not at something on the stack.
    at_limit: bool,
    /// The last walk's stack top and depth limit.
    hi: usize,
    limit: usize,
    /// How many of the last walk's outermost frames are the walk before's outermost frames, as
    /// its levels were gone by ([`Memo::same_outer`]).
    same: usize,
}

impl Memo {
    /// Nothing to go by.
    pub const fn new() -> Self {
        Self {
            levels: [[Level {
                pc: 0,
                sp: 0,
                fp: 0,
                ra_at: 0,
                fp_at: 0,
            }; HALF]; 2],
            cur: 0,
            base: HEADROOM,
            len: 0,
            last_ra: 0,
            last_fp: 0,
            truncated: false,
            at_limit: false,
            hi: 0,
            limit: 0,
            same: 0,
        }
    }

    /// Forgets the last walk: to be called whenever `frame` may answer otherwise than it did
    /// (the code ranges or their rows changed).
    pub fn clear(&mut self) {
        self.len = 0;
        self.same = 0;
    }

    /// How many outermost frames the last walk shares with the walk before it, known without
    /// comparing them: the levels it went by (their words read and found unchanged) and ended
    /// with as that walk did. 0 when it went by none, or the memo was cleared in between. A
    /// walk's outer frames may match the walk before's further down than this says, never
    /// less far.
    pub fn same_outer(&self) -> usize {
        self.same
    }
}

impl Default for Memo {
    fn default() -> Self {
        Self::new()
    }
}

/// [`walk_memo`]'s `all`: every frame is written to `out`.
pub const ALL_FRAMES: bool = true;
/// [`walk_memo`]'s `all` for a caller that keeps the last walk's frames itself (the stack
/// table): the outer frames this walk shares with the last one ([`Memo::same_outer`], `same` of
/// them) are not written; `out[..len - same]` are. A recursion's walks share all but a frame or
/// two, and copying the rest was a tenth of a walk's work.
pub const NEW_FRAMES: bool = false;

/// How a walk ended: its frames, whether it was truncated or stopped at its depth limit, and
/// the words it read leaving its last level (0 if none).
struct Ended {
    len: usize,
    truncated: bool,
    at_limit: bool,
    ra: usize,
    fp: usize,
}

impl Ended {
    /// Ended at a frame with nothing read leaving it.
    const fn at(len: usize, truncated: bool) -> Self {
        Self {
            len,
            truncated,
            at_limit: false,
            ra: 0,
            fp: 0,
        }
    }

    /// Stopped at the depth limit.
    const fn limit(len: usize) -> Self {
        Self {
            len,
            truncated: true,
            at_limit: true,
            ra: 0,
            fp: 0,
        }
    }
}

/// [`walk`], going by the last walk on this stack where it can (see [`Memo`]), and leaving this
/// walk in `memo` for the next. The same contract as [`walk`]; the caller clears `memo` when
/// `frame`'s answers change. `read` is called only as [`walk`] says: a word the last walk read
/// lies at or above the stack pointer of a frame this walk has reached. `all`: [`ALL_FRAMES`]
/// or [`NEW_FRAMES`].
#[inline(always)]
pub fn walk_memo(
    regs: Regs,
    stack: (usize, usize),
    read: impl Fn(usize) -> usize,
    mut frame: impl FnMut(usize) -> Option<Option<Row>>,
    out: &mut [usize],
    memo: &mut Memo,
    all: bool,
) -> Walk {
    let limit = out.len().min(MEMO_LEVELS);
    let out = &mut out[..limit];
    let hi = stack.1;
    // The last walk's levels that may be gone by (`usable` of them); this walk's are written to
    // the other half, and the memo holds nothing until this walk is done.
    let old = memo.cur;
    let new = 1 - old;
    // Where the last walk's levels start in their half (`ob`), and where this walk's go in the
    // other (`nb`).
    let (ob, nb) = (memo.base, HEADROOM);
    let usable = if memo.hi == hi && memo.limit == limit {
        memo.len
    } else {
        0
    };
    let lo = stack.0.max(regs.sp);
    if usable > 0 {
        // The last walk's stack again (a loop allocating from one place): its first frame in
        // the same state, every word it read unchanged, and its end reached as before.
        let levels = &memo.levels[old][ob..ob + usable];
        let (first, last) = (&levels[0], &levels[usable - 1]);
        if first.pc == regs.pc
            && first.sp == lo
            && first.fp == regs.fp
            && follow(levels, &read) + 1 == usable
            && (last.ra_at == 0
                || (read(last.ra_at) == memo.last_ra
                    && (last.fp_at == 0 || read(last.fp_at) == memo.last_fp)))
        {
            if all {
                for (o, l) in out.iter_mut().zip(levels) {
                    *o = l.pc;
                }
            }
            memo.same = usable;
            return Walk {
                len: usable,
                truncated: memo.truncated,
            };
        }
    }
    // How the last walk ended, for a walk that ends as it did.
    let last_end = (memo.truncated, memo.at_limit, memo.last_ra, memo.last_fp);
    // Where this walk's levels end up (the other half unless it keeps the last walk's in
    // place), and how many outer frames it shares with the last walk.
    let (mut cur, mut base, mut same) = (new, nb, 0);
    let [h0, h1] = &mut memo.levels;
    let (oh, nh) = if old == 0 { (h0, h1) } else { (h1, h0) };
    // A word at `a` may be read: aligned, inside the stack, at or above the current frame (no
    // frame is below `lo`: the walk starts there and goes up).
    let top = hi.checked_sub(8);
    let readable =
        |a: usize, sp: usize| a >= sp && a.is_multiple_of(8) && top.is_some_and(|t| a <= t);
    let ended = 'walk: {
        let Some(mut row) = frame(regs.pc) else {
            break 'walk Ended::at(0, true);
        };
        if out.is_empty() {
            break 'walk Ended::limit(0);
        }
        out[0] = regs.pc;
        let mut n = 1;
        let (mut sp, mut fp) = (lo, regs.fp);
        // The first of the last walk's levels not below the current frame.
        let mut mk = 0;
        loop {
            let pc = out[n - 1];
            let leaving = if n == limit {
                Err(Ended::limit(0))
            } else {
                leave(row, sp, fp, hi, readable)
            };
            let (ra_at, fp_at, next_sp) = match leaving {
                Ok(step) => step,
                Err(end) => {
                    nh[nb + n - 1] = Level {
                        pc,
                        sp,
                        fp,
                        ra_at: 0,
                        fp_at: 0,
                    };
                    break 'walk Ended { len: n, ..end };
                }
            };
            // 0 is never such an address (`readable` words lie at or above the stack pointer).
            nh[nb + n - 1] = Level {
                pc,
                sp,
                fp,
                ra_at,
                fp_at,
            };
            while mk < usable && oh[ob + mk].sp < sp {
                mk += 1;
            }
            if mk + 1 < usable && {
                let l = &oh[ob + mk];
                l.sp == sp
                    && l.fp == fp
                    && l.ra_at == ra_at
                    && l.fp_at == fp_at
                    && oh[ob + mk + 1].sp == next_sp
            } {
                // This frame is left as the last walk left its frame `mk` (the same words read,
                // the same caller's stack pointer): the last walk's levels from `mk + 1` on are
                // this walk's from `n` on, while the words read leaving each hold the same values.
                let (start, first) = (mk, n);
                // The levels followed alike, at most up to the depth limit.
                let end = usable.min(start + 1 + (limit - first));
                let m = start + follow(&oh[ob + start..ob + end], &read);
                n = first + (m - start);
                let gone_by = ob + start + 1..ob + m + 1;
                // Whether this walk ends where the last one did: at its last frame, which it
                // ended at as its state and row say, or by the same words read leaving it.
                let (last_truncated, last_at_limit, last_ra, last_fp) = last_end;
                let ended_alike = n < limit && m + 1 == usable && !last_at_limit && {
                    let last = oh[ob + m];
                    last.ra_at == 0
                        || (read(last.ra_at) == last_ra
                            && (last.fp_at == 0 || read(last.fp_at) == last_fp))
                };
                // The frames gone by are the last walk's outer ones if it ended alike.
                if all || !ended_alike {
                    for (o, l) in out[first..n].iter_mut().zip(&oh[gone_by.clone()]) {
                        *o = l.pc;
                    }
                }
                let alike = Ended {
                    len: n,
                    truncated: last_truncated,
                    at_limit: false,
                    ra: last_ra,
                    fp: last_fp,
                };
                if ended_alike && first <= gone_by.start {
                    // The last walk's levels from `start + 1` on are this walk's last ones where
                    // they are: this walk's first levels go in front of them (over the last
                    // walk's first ones), and the shared part is not copied.
                    base = gone_by.start - first;
                    oh[base..gone_by.start].copy_from_slice(&nh[nb..nb + first]);
                    cur = old;
                    same = n - first;
                    break 'walk alike;
                }
                nh[nb + first..nb + n].copy_from_slice(&oh[gone_by]);
                if n == limit {
                    // Where a walk stops, whatever lies beyond.
                    break 'walk Ended::limit(n);
                }
                if ended_alike {
                    same = n - first;
                    break 'walk alike;
                }
                // Walk on by itself from frame `n - 1` (the last walk's `m`, entered alike, left
                // otherwise); a frame further up may again be left as the last walk left it.
                mk = m + 1;
                if m != start {
                    let l = oh[ob + m];
                    (sp, fp) = (l.sp, l.fp);
                    let Some(r) = frame(l.pc) else {
                        break 'walk Ended::at(n - 1, true);
                    };
                    row = r;
                    continue;
                }
            }
            let next_fp = if fp_at == 0 { fp } else { read(fp_at) };
            let ra = read(ra_at);
            let stop = |truncated| Ended {
                len: n,
                truncated,
                at_limit: false,
                ra,
                fp: next_fp,
            };
            if ra == 0 {
                break 'walk stop(false);
            }
            let Some(next_row) = frame(ra) else {
                break 'walk stop(true);
            };
            out[n] = ra;
            n += 1;
            (sp, fp, row) = (next_sp, next_fp, next_row);
        }
    };
    memo.cur = cur;
    memo.base = base;
    memo.same = same;
    memo.hi = hi;
    memo.limit = limit;
    memo.len = ended.len;
    memo.truncated = ended.truncated;
    memo.at_limit = ended.at_limit;
    memo.last_ra = ended.ra;
    memo.last_fp = ended.fp;
    Walk {
        len: ended.len,
        truncated: ended.truncated,
    }
}

/// How a walk leaves the frame at `sp` (frame pointer `fp`) by its `row`: the words it reads
/// (the return address's, and the caller's frame pointer's or 0) and the caller's stack
/// pointer; or where it ends there ([`Ended`]: the end of the stack, or truncated; its length
/// is the caller's to fill in).
#[inline(always)]
fn leave(
    row: Option<Row>,
    sp: usize,
    fp: usize,
    hi: usize,
    readable: impl Fn(usize, usize) -> bool,
) -> Result<(usize, usize, usize), Ended> {
    let truncated = || Ended::at(0, true);
    match row {
        Some(row) if row.rule == rule::END => Err(Ended::at(0, false)),
        Some(row) if row.rule == rule::CFA_RSP || row.rule == rule::CFA_RBP => {
            let base = if row.rule == rule::CFA_RSP { sp } else { fp };
            let cfa = base
                .checked_add_signed(row.cfa_offset as isize)
                .ok_or_else(truncated)?;
            let ra_at = cfa
                .checked_add_signed(isize::from(row.ra_offset))
                .ok_or_else(truncated)?;
            if cfa <= sp || cfa > hi || !readable(ra_at, sp) {
                return Err(truncated());
            }
            let fp_at = if row.rbp_offset == 0 {
                0
            } else {
                match cfa.checked_add_signed(isize::from(row.rbp_offset)) {
                    Some(at) if readable(at, sp) => at,
                    _ => return Err(truncated()),
                }
            };
            Ok((ra_at, fp_at, cfa))
        }
        Some(_) => Err(truncated()),
        None => {
            // Frame pointers: `[fp]` the caller's frame pointer, `[fp + 8]` the return address.
            if fp == 0 {
                return Err(Ended::at(0, false));
            }
            if !fp.is_multiple_of(16) || !readable(fp, sp) || !readable(fp + 8, sp) {
                return Err(truncated());
            }
            Ok((fp + 8, fp, fp + 16))
        }
    }
}

/// How many steps from one of `levels` to the next a walk takes as the last walk took them: the
/// words read leaving each level still hold the next level's return address and frame
/// pointer.
fn follow(levels: &[Level], read: impl Fn(usize) -> usize) -> usize {
    levels
        .windows(2)
        .take_while(|w| {
            read(w[0].ra_at) == w[1].pc && (w[0].fp_at == 0 || read(w[0].fp_at) == w[1].fp)
        })
        .count()
}

/// The row for the return address `pc` in a module's `rows`: the one covering the call, at
/// `pc - 1` (the return address points after it).
pub fn rows_frame(rows: &[Row], pc: usize) -> Option<Row> {
    cfi::find(rows, pc.wrapping_sub(1)).copied()
}

/// Bounds of the calling thread's stack: the mapping of `/proc/self/maps` that holds `sp`, read
/// with raw system calls into a buffer on the stack (nothing allocates), its top lowered to the
/// thread pointer when that lies inside it (a thread's control block sits at the top of its
/// stack mapping, and anything above it is not the stack). `None` if not found.
pub fn find_stack(sp: usize) -> Option<(usize, usize)> {
    // SAFETY: a NUL-terminated path; the flags ask for nothing but reading.
    let fd = unsafe {
        libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let mut parser = MapsParser::new(sp);
    let mut buf = [0u8; 2048];
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        let Ok(n) = usize::try_from(n) else { break };
        if n == 0 || parser.feed(&buf[..n]) {
            break;
        }
    }
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    let (lo, hi) = parser.found?;
    let tp = crate::heap::thread_id();
    Some(if tp > lo && tp < hi {
        (lo, tp)
    } else {
        (lo, hi)
    })
}

/// Finds the mapping holding an address in the text of `/proc/self/maps`, fed in pieces: each
/// line starts `start-end ` in hex; the rest of the line is skipped.
pub struct MapsParser {
    target: usize,
    /// 0: reading `start`, 1: reading `end`, 2: skipping to the end of the line.
    state: u8,
    start: usize,
    end: usize,
    /// The mapping found, if any.
    pub found: Option<(usize, usize)>,
}

impl MapsParser {
    /// A parser looking for the mapping that holds `target`.
    pub fn new(target: usize) -> Self {
        Self {
            target,
            state: 0,
            start: 0,
            end: 0,
            found: None,
        }
    }

    /// Feeds more text; true once the mapping is found.
    pub fn feed(&mut self, text: &[u8]) -> bool {
        for &c in text {
            match (self.state, c) {
                (_, b'\n') => {
                    self.state = 0;
                    self.start = 0;
                    self.end = 0;
                }
                (0, b'-') => self.state = 1,
                (0 | 1, _) if c.is_ascii_hexdigit() => {
                    let d = (c as char).to_digit(16).unwrap_or(0) as usize;
                    let v = if self.state == 0 {
                        &mut self.start
                    } else {
                        &mut self.end
                    };
                    *v = v.wrapping_shl(4) | d;
                }
                (1, _) => {
                    self.state = 2;
                    if self.start <= self.target && self.target < self.end {
                        self.found = Some((self.start, self.end));
                        return true;
                    }
                }
                _ => self.state = 2,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cfi::{Row, rule};
    use std::cell::Cell;

    /// A synthetic stack: `words` at `base`, code in `[0x1000, 0x2000)`.
    struct Fake {
        base: usize,
        words: Vec<usize>,
        reads: Cell<usize>,
    }

    impl Fake {
        fn new(base: usize, len: usize) -> Self {
            Self {
                base,
                words: vec![0; len],
                reads: Cell::new(0),
            }
        }
        fn hi(&self) -> usize {
            self.base + 8 * self.words.len()
        }
        fn set(&mut self, addr: usize, v: usize) {
            self.words[(addr - self.base) / 8] = v;
        }
        fn run(&self, regs: Regs) -> (Vec<usize>, Walk) {
            let mut out = [0usize; 64];
            let read = |a: usize| {
                assert!(a.is_multiple_of(8), "misaligned read {a:#x}");
                assert!(
                    a >= self.base.max(regs.sp) && a + 8 <= self.hi(),
                    "read {a:#x}"
                );
                self.reads.set(self.reads.get() + 1);
                self.words[(a - self.base) / 8]
            };
            let w = walk(
                regs,
                (self.base, self.hi()),
                read,
                |pc| (0x1000..0x2000).contains(&pc).then_some(None),
                &mut out,
            );
            (out[..w.len].to_vec(), w)
        }
        /// A chain of frames at `frames` (ascending), each returning to `0x1000 + 16 * i`, the
        /// last one's saved frame pointer `last`.
        fn chain(&mut self, frames: &[usize], last: usize) {
            for (i, &f) in frames.iter().enumerate() {
                let next = frames.get(i + 1).copied().unwrap_or(last);
                self.set(f, next);
                self.set(f + 8, 0x1000 + 16 * (i + 1));
            }
        }
    }

    const BASE: usize = 0x7000_0000;

    fn regs(fp: usize) -> Regs {
        Regs {
            pc: 0x1000,
            sp: BASE,
            fp,
        }
    }

    #[test]
    fn a_sound_chain_walks_to_its_end() {
        let mut s = Fake::new(BASE, 64);
        let frames = [BASE + 0x20, BASE + 0x60, BASE + 0x100];
        s.chain(&frames, 0);
        let (pcs, w) = s.run(regs(frames[0]));
        assert_eq!(pcs, [0x1000, 0x1010, 0x1020, 0x1030]);
        assert!(!w.truncated);
    }

    #[test]
    fn cycles_stop_the_walk() {
        let mut s = Fake::new(BASE, 64);
        s.chain(&[BASE + 0x20, BASE + 0x40], BASE + 0x20);
        let (pcs, w) = s.run(regs(BASE + 0x20));
        assert_eq!(pcs.len(), 3);
        assert!(w.truncated);
        // A frame pointing at itself.
        s.chain(&[BASE + 0x20], BASE + 0x20);
        let (pcs, w) = s.run(regs(BASE + 0x20));
        assert_eq!(pcs.len(), 2);
        assert!(w.truncated);
    }

    #[test]
    fn misaligned_and_out_of_bounds_frames_stop_the_walk() {
        let mut s = Fake::new(BASE, 64);
        s.chain(&[BASE + 0x20], BASE + 0x38); // misaligned next frame
        let (pcs, w) = s.run(regs(BASE + 0x20));
        assert_eq!((pcs.len(), w.truncated), (2, true));
        s.chain(&[BASE + 0x20], BASE + 0x1000_0000); // above the stack
        assert_eq!(
            s.run(regs(BASE + 0x20)).1,
            Walk {
                len: 2,
                truncated: true
            }
        );
        // Below the caller's stack pointer, and the last word of the stack (no room for two).
        assert_eq!(
            s.run(regs(BASE - 0x10)).1,
            Walk {
                len: 1,
                truncated: true
            }
        );
        let top = s.hi() - 8;
        assert_eq!(s.run(regs(top & !15)).1.len, 1);
        // A frame pointer near the top of the address space does not wrap around.
        assert_eq!(
            s.run(regs(usize::MAX & !15)).1,
            Walk {
                len: 1,
                truncated: true
            }
        );
        let mut r = regs(BASE + 0x20);
        r.sp = BASE + 0x30; // the frame lies below the stack pointer
        assert_eq!(
            s.run(r).1,
            Walk {
                len: 1,
                truncated: true
            }
        );
    }

    #[test]
    fn garbage_return_addresses_stop_the_walk() {
        let mut s = Fake::new(BASE, 64);
        s.chain(&[BASE + 0x20, BASE + 0x40], 0);
        s.set(BASE + 0x48, 0xdead_beef);
        let (pcs, w) = s.run(regs(BASE + 0x20));
        assert_eq!(pcs, [0x1000, 0x1010]);
        assert!(w.truncated);
        let mut r = regs(BASE + 0x20);
        r.pc = 0x42; // the leaf itself is not code
        assert_eq!(
            s.run(r).1,
            Walk {
                len: 0,
                truncated: true
            }
        );
    }

    #[test]
    fn deep_chains_stop_at_the_depth_limit() {
        let mut s = Fake::new(BASE, 4096);
        let frames: Vec<usize> = (0..200).map(|i| BASE + 0x20 + 32 * i).collect();
        s.chain(&frames, 0);
        // Return addresses beyond the code range are clamped into it for this test.
        for (i, &f) in frames.iter().enumerate() {
            s.set(f + 8, 0x1000 + (i % 200));
        }
        let (pcs, w) = s.run(regs(frames[0]));
        assert_eq!(pcs.len(), 64);
        assert!(w.truncated);
        assert!(s.reads.get() <= 2 * 64);
    }

    #[test]
    fn random_stacks_never_read_outside_their_bounds() {
        // xorshift garbage, often pointing back into the stack.
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..2000 {
            let mut s = Fake::new(BASE, 128);
            for i in 0..128 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let v = match x % 4 {
                    0 => BASE + (x as usize >> 8) % 1100,
                    1 => 0x1000 + (x as usize >> 8) % 0x1000,
                    2 => 0,
                    _ => x as usize,
                };
                s.words[i] = v;
            }
            let fp = BASE + (x as usize >> 20) % 1100;
            let (_, w) = s.run(regs(fp));
            assert!(w.len <= 64);
        }
    }

    /// Code in `[0x1000, 0x2000)` with rows: `[0x1000, 0x1100)` keeps the CFA at rsp + 16 with
    /// rbp saved at CFA - 16 (a function that pushed rbp, no frame pointer use), `[0x1100,
    /// 0x1200)` at rsp + 8 (a leaf-like frame), `[0x1200, 0x1300)` has no row (frame pointers),
    /// `[0x1300, 0x1400)` a rule the table cannot express, `[0x1400, 0x1500)` the end.
    fn rows() -> &'static [Row] {
        let row = |start, rule, cfa_offset, rbp_offset| Row {
            start,
            cfa_offset,
            ra_offset: -8,
            rbp_offset,
            rule,
        };
        Box::leak(Box::new([
            row(0x1000, rule::CFA_RSP, 16, -16),
            row(0x1100, rule::CFA_RSP, 8, 0),
            row(0x1200, rule::NONE, 0, 0),
            row(0x1300, rule::STOP, 0, 0),
            row(0x1400, rule::END, 0, 0),
            row(0x1500, rule::NONE, 0, 0),
        ]))
    }

    fn run_rows(s: &Fake, regs: Regs) -> (Vec<usize>, Walk) {
        let mut out = [0usize; 64];
        let read = |a: usize| {
            assert!(a.is_multiple_of(8) && a >= s.base.max(regs.sp) && a + 8 <= s.hi());
            s.words[(a - s.base) / 8]
        };
        let rows = rows();
        let w = walk(
            regs,
            (s.base, s.hi()),
            read,
            |pc| (0x1000..0x2000).contains(&pc).then(|| rows_frame(rows, pc)),
            &mut out,
        );
        (out[..w.len].to_vec(), w)
    }

    #[test]
    fn rows_walk_frames_without_frame_pointers() {
        let mut s = Fake::new(BASE, 64);
        // Leaf at 0x1010 (CFA = sp + 16): return address 0x1110 at sp + 8, rbp saved at sp.
        s.set(BASE, 0x7777);
        s.set(BASE + 8, 0x1110);
        // 0x1110 (CFA = sp + 8): return address 0x1210 at BASE + 16.
        s.set(BASE + 16, 0x1210);
        // 0x1210 has no row: frame pointers, and the rbp restored above (0x7777) is not a
        // frame; make it one: rbp was saved as BASE + 0x40.
        s.set(BASE, BASE + 0x40);
        s.set(BASE + 0x40, 0);
        s.set(BASE + 0x48, 0x1410);
        let r = Regs {
            pc: 0x1010,
            sp: BASE,
            fp: 0xdead,
        };
        let (pcs, w) = run_rows(&s, r);
        assert_eq!(pcs, [0x1010, 0x1110, 0x1210, 0x1410]);
        assert!(!w.truncated, "the end row ends the walk cleanly");
    }

    #[test]
    fn rows_that_cannot_be_followed_truncate() {
        let mut s = Fake::new(BASE, 64);
        s.set(BASE + 8, 0x1310);
        let r = Regs {
            pc: 0x1010,
            sp: BASE,
            fp: 0,
        };
        let (pcs, w) = run_rows(&s, r);
        assert_eq!((pcs, w.truncated), (vec![0x1010, 0x1310], true));
        // A CFA beyond the stack's top.
        let top = Regs {
            pc: 0x1010,
            sp: s.hi() - 8,
            fp: 0,
        };
        assert_eq!(
            run_rows(&s, top).1,
            Walk {
                len: 1,
                truncated: true
            }
        );
        // A return address that is not code.
        s.set(BASE + 8, 0x9999);
        assert_eq!(
            run_rows(&s, r).1,
            Walk {
                len: 1,
                truncated: true
            }
        );
    }

    /// Walks `s` from `regs` twice, with `memo` and afresh, with `limit` frames at most (rows
    /// from [`rows`] when `with_rows`): the two must agree, and the outer frames the memo says
    /// this walk shares with the one before must be `last`'s (the frames of the walk before,
    /// which become this walk's).
    fn walk_both(
        s: &Fake,
        regs: Regs,
        memo: &mut Memo,
        limit: usize,
        with_rows: bool,
        last: &mut Vec<usize>,
    ) -> Walk {
        let read = |a: usize| {
            assert!(a.is_multiple_of(8), "misaligned read {a:#x}");
            assert!(a >= s.base.max(regs.sp) && a + 8 <= s.hi(), "read {a:#x}");
            s.words[(a - s.base) / 8]
        };
        let rows = rows();
        let frame = |pc: usize| {
            (0x1000..0x2000).contains(&pc).then(|| {
                if with_rows {
                    rows_frame(rows, pc)
                } else {
                    None
                }
            })
        };
        let mut a = vec![0usize; limit];
        let mut b = vec![0usize; limit];
        // The inner frames alone, from the same memo: the same walk, and the same frames but
        // the shared outer ones, which it leaves as they were.
        let mut inner_memo = memo.clone();
        let mut inner = vec![0x5eed_usize; limit];
        let wi = walk_memo(
            regs,
            (s.base, s.hi()),
            read,
            frame,
            &mut inner,
            &mut inner_memo,
            NEW_FRAMES,
        );
        let wa = walk_memo(
            regs,
            (s.base, s.hi()),
            read,
            frame,
            &mut a,
            memo,
            ALL_FRAMES,
        );
        let wb = walk(regs, (s.base, s.hi()), read, frame, &mut b);
        assert_eq!(wa, wb, "{regs:x?}");
        assert_eq!(a[..wa.len], b[..wb.len], "{regs:x?}");
        let same = memo.same_outer();
        assert_eq!((wi, inner_memo.same_outer()), (wa, same), "{regs:x?}");
        assert_eq!(inner[..wi.len - same], a[..wa.len - same], "{regs:x?}");
        assert!(
            inner[wi.len - same..wi.len].iter().all(|&f| f == 0x5eed),
            "{regs:x?}: the shared frames are not written"
        );
        assert!(same <= wa.len && same <= last.len(), "{regs:x?}: {same}");
        assert_eq!(
            a[wa.len - same..wa.len],
            last[last.len() - same..],
            "{regs:x?}: {same} outer frames"
        );
        *last = a[..wa.len].to_vec();
        wa
    }

    /// A stack of `n` frames 64 bytes apart, chained by frame pointers, each returning into
    /// code (one of 8 return addresses).
    fn sound_chain(n: usize) -> (Fake, Vec<usize>) {
        let mut s = Fake::new(BASE, 1024);
        let frames: Vec<usize> = (0..n).map(|i| BASE + 0x40 + 64 * i).collect();
        s.chain(&frames, 0);
        for (i, &f) in frames.iter().enumerate() {
            s.set(f + 8, 0x1200 + 16 * (i % 8));
        }
        (s, frames)
    }

    #[test]
    fn a_recursion_keeps_the_last_walks_levels_in_place() {
        // Down a sound chain one frame at a time and back up, as a recursion allocates: each
        // walk ends as the last one did, so the shared levels stay in their half (no copy) while
        // the headroom lasts, and a walk that finds none left copies them and starts afresh.
        // (Frame pointers only: the rows of these tests stand for other code.)
        let with_rows = false;
        let (s, frames) = sound_chain(60);
        let mut memo = Memo::new();
        let regs = |at: usize| Regs {
            pc: 0x1200,
            sp: frames[at],
            fp: frames[at],
        };
        let mut last = Vec::new();
        walk_both(&s, regs(50), &mut memo, 64, with_rows, &mut last);
        let (mut in_place, mut copied) = (0, 0);
        for at in (20..50).rev().chain(21..50) {
            let (half, len) = (memo.cur, memo.len);
            let w = walk_both(&s, regs(at), &mut memo, 64, with_rows, &mut last);
            // One frame deeper or shallower: all but the two innermost shared frames are known
            // shared without comparing them (the first level gone by is the last walk's frame
            // left in the same state, which its stack pointer after the call tells apart).
            assert!(
                memo.same_outer() + 2 >= len.min(w.len),
                "{at}: {} of {len} and {}",
                memo.same_outer(),
                w.len
            );
            assert!(w.len > 10 && w.len != len, "{with_rows} {at}: {w:?}");
            if memo.cur == half {
                in_place += 1;
            } else {
                assert_eq!(memo.base, HEADROOM);
                copied += 1;
            }
        }
        // Down 30 frames with 16 of headroom: a copy about every 16 walks; up: none.
        assert!(
            in_place >= 50 && copied >= 1,
            "{with_rows}: {in_place} in place, {copied} copied"
        );
    }

    #[test]
    fn a_walk_going_by_the_last_one_finds_what_a_fresh_walk_finds() {
        // A long sound chain whose words are changed a few at a time between walks (return
        // addresses into other code, saved frame pointers to other frames or garbage), walked
        // from frames at random depths, with and without rows, at depth limits that cut it.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as usize
        };
        let mut long = 0;
        for with_rows in [false, true] {
            // Code without rows (frame pointers) unless `with_rows` lands some in rows.
            let (mut s, frames) = sound_chain(100);
            let mut memo = Memo::new();
            let mut last = Vec::new();
            let mut last_regs = Regs {
                pc: 0x1200,
                sp: frames[0],
                fp: frames[0],
            };
            for round in 0..20_000 {
                let r = next();
                match r % 8 {
                    0 => {
                        // Code, or a return address that ends the walk (0, not code).
                        let f = frames[next() % frames.len()];
                        let ra = match next() % 6 {
                            0 => 0,
                            1 => 0x9999,
                            _ => 0x1000 + 16 * (next() % 0x100),
                        };
                        s.set(f + 8, ra);
                    }
                    1 => {
                        let f = frames[next() % frames.len()];
                        let to = frames[next() % frames.len()];
                        s.set(f, if next() % 4 == 0 { next() } else { to });
                    }
                    2 if round % 64 == 0 => {
                        // Start over from a sound chain now and then.
                        s.chain(&frames, 0);
                        for (i, &f) in frames.iter().enumerate() {
                            s.set(f + 8, 0x1200 + 16 * (i % 8));
                        }
                    }
                    3 => memo.clear(),
                    _ => {}
                }
                let at = next() % frames.len();
                let regs = if next() % 3 == 0 {
                    last_regs // the same stack again, changed or not
                } else {
                    Regs {
                        pc: 0x1200 + 16 * (next() % 8),
                        sp: frames[at] - 16 * (next() % 3),
                        fp: frames[at],
                    }
                };
                last_regs = regs;
                let limit = if next() % 8 == 0 {
                    [5, 20][next() % 2]
                } else {
                    64
                };
                let w = walk_both(&s, regs, &mut memo, limit, with_rows, &mut last);
                long += usize::from(w.len > 10);
            }
        }
        assert!(
            long > 1000,
            "the walks were long enough to go by the last ones: {long}"
        );
    }

    #[test]
    fn the_maps_parser_finds_the_mapping() {
        let text = b"55d0a000-55d0b000 r--p 00000000 08:01 1 /usr/bin/cat\n\
                     7ffc1000-7ffc3000 rw-p 00000000 00:00 0 [stack]\n";
        for split in [1, 7, 30, text.len()] {
            let mut p = MapsParser::new(0x7ffc_2000);
            let mut done = false;
            for chunk in text.chunks(split) {
                done = p.feed(chunk);
                if done {
                    break;
                }
            }
            assert!(done);
            assert_eq!(p.found, Some((0x7ffc_1000, 0x7ffc_3000)));
        }
        let mut p = MapsParser::new(0x10);
        assert!(!p.feed(text));
        assert_eq!(p.found, None);
    }

    #[test]
    fn the_calling_threads_stack_is_found() {
        let local = 0u64;
        let sp = core::ptr::from_ref(&local) as usize;
        let (lo, hi) = find_stack(sp).expect("the stack is mapped");
        assert!(lo <= sp && sp < hi);
        let (lo2, hi2) = std::thread::spawn(move || {
            let local = 0u64;
            let sp = core::ptr::from_ref(&local) as usize;
            let b = find_stack(sp).expect("a thread's stack is mapped");
            assert!(b.0 <= sp && sp < b.1);
            b
        })
        .join()
        .unwrap();
        assert!(hi2 - lo2 > 0);
    }
}
