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
/// (`Some(None)`: no row, walk by frame pointers); see [`rows_frame`].
pub fn walk(
    regs: Regs,
    stack: (usize, usize),
    read: impl Fn(usize) -> usize,
    mut frame: impl FnMut(usize) -> Option<Option<Row>>,
    out: &mut [usize],
) -> Walk {
    let stop = |len| Walk {
        len,
        truncated: true,
    };
    let end = |len| Walk {
        len,
        truncated: false,
    };
    let Some(mut row) = frame(regs.pc) else {
        return stop(0);
    };
    if out.is_empty() {
        return stop(0);
    }
    out[0] = regs.pc;
    let mut n = 1;
    let lo = stack.0.max(regs.sp);
    let hi = stack.1;
    // A word at `a` may be read: aligned, inside the stack, at or above the current frame.
    let readable =
        |a: usize, sp: usize| a >= sp && a >= lo && a.is_multiple_of(8) && hi >= 8 && a <= hi - 8;
    let (mut sp, mut fp) = (lo, regs.fp);
    loop {
        if n == out.len() {
            return stop(n);
        }
        let (ra, next_sp, next_fp) = match row {
            Some(row) if row.rule == rule::END => return end(n),
            Some(row) if row.rule == rule::CFA_RSP || row.rule == rule::CFA_RBP => {
                let base = if row.rule == rule::CFA_RSP { sp } else { fp };
                let Some(cfa) = base.checked_add_signed(row.cfa_offset as isize) else {
                    return stop(n);
                };
                let Some(ra_at) = cfa.checked_add_signed(isize::from(row.ra_offset)) else {
                    return stop(n);
                };
                if cfa <= sp || cfa > hi || !readable(ra_at, sp) {
                    return stop(n);
                }
                let next_fp = if row.rbp_offset == 0 {
                    fp
                } else {
                    match cfa.checked_add_signed(isize::from(row.rbp_offset)) {
                        Some(at) if readable(at, sp) => read(at),
                        _ => return stop(n),
                    }
                };
                (read(ra_at), cfa, next_fp)
            }
            Some(_) => return stop(n),
            None => {
                // Frame pointers: `[fp]` the caller's frame pointer, `[fp + 8]` the return address.
                if fp == 0 {
                    return end(n);
                }
                if !fp.is_multiple_of(16) || !readable(fp, sp) || !readable(fp + 8, sp) {
                    return stop(n);
                }
                (read(fp + 8), fp + 16, read(fp))
            }
        };
        if ra == 0 {
            return end(n);
        }
        let Some(next_row) = frame(ra) else {
            return stop(n);
        };
        out[n] = ra;
        n += 1;
        (sp, fp, row) = (next_sp, next_fp, next_row);
    }
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
