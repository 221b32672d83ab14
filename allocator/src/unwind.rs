//! Walking a stack by frame pointers, with every step checked, and finding a thread's stack.
//!
//! [`walk`] is a pure function of the registers at the allocation site, a reader of stack words,
//! the stack's bounds and a test for code addresses, so a test can feed it corrupt stacks. It
//! reads only 8-byte words inside the bounds and never follows a frame that fails a check:
//!
//! - the frame address lies in the stack (at or above the caller's stack pointer, below the top),
//!   is 16-byte aligned (the x86-64 and aarch64 ABIs keep frames so), and grows strictly from one
//!   frame to the next (no cycles);
//! - each return address lies in a known executable range (a loaded module's code);
//! - at most `out.len()` frames (64).
//!
//! A walk that stops at a failed check or at the depth limit says so (`truncated`); a frame
//! pointer of 0 is the end of the chain (`_start` and `clone` clear it), not a truncation.

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

/// Walks the frame-pointer chain from `regs` into `out` (leaf first). `stack` is the thread's
/// stack `[lo, hi)`; `read(addr)` is only called with 8-byte aligned `addr` such that `addr + 8
/// <= hi` and `addr >= max(lo, regs.sp)`. `is_code` says whether an address lies in a module's
/// code.
pub fn walk(
    regs: Regs,
    stack: (usize, usize),
    read: impl Fn(usize) -> usize,
    mut is_code: impl FnMut(usize) -> bool,
    out: &mut [usize],
) -> Walk {
    let stop = |len| Walk {
        len,
        truncated: true,
    };
    if out.is_empty() || !is_code(regs.pc) {
        return stop(0);
    }
    out[0] = regs.pc;
    let mut n = 1;
    let lo = stack.0.max(regs.sp);
    let hi = stack.1;
    let mut fp = regs.fp;
    // The lowest address the next frame may have (strictly above the last one).
    let mut floor = lo;
    loop {
        if fp == 0 {
            return Walk {
                len: n,
                truncated: false,
            };
        }
        if n == out.len() {
            return stop(n);
        }
        let in_stack = fp >= floor && hi >= 16 && fp <= hi - 16;
        if !in_stack || !fp.is_multiple_of(16) {
            return stop(n);
        }
        let next = read(fp);
        let ret = read(fp + 8);
        if !is_code(ret) {
            return stop(n);
        }
        out[n] = ret;
        n += 1;
        floor = fp + 16;
        fp = next;
    }
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
                |pc| (0x1000..0x2000).contains(&pc),
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
