//! Stack capture on the traced allocation path: which allocations get a stack ([`crate::sample`]),
//! where the walk starts, interning ([`crate::stack_table`]) and reporting.
//!
//! Where the walk starts: the first frame that matters is the code that called `malloc`, so the
//! walk needs the return address into it, the stack pointer above it and that code's frame
//! pointer, exactly. heaplens is not built with frame pointers (they would cost instructions on
//! every fast path), so its own frames cannot be walked. Instead the traced path sends an
//! allocation that is to get a stack to [`alloc_sampled_entry`] by a tail call, from code with no
//! stack frame: `malloc` (C or Rust) jumps to the traced path, which jumps to the entry, so at the
//! entry `[rsp]` is still the return address into the caller of `malloc`, `rsp + 8` its stack
//! pointer and `rbp` untouched (callee-saved, restored before any tail call). The entry, a naked
//! function, reads the three and passes them on.
//!
//! The C entry points of `libheaplens.so` keep a small frame (`malloc` sets `errno` after the
//! call), so there the return address at the entry points into `malloc` itself. Those entry
//! points are *calibrated* when recording starts ([`register_entry`], [`calibrate`]): each is
//! called once through a naked trampoline that notes its own stack pointer and puts a marker in
//! `rbp`; the entry sees how far below that its stack pointer is, and whether `rbp` came through
//! or where a frame in between saved it.
//! A frame's size at a given call site is fixed, so from then on a return address into
//! `malloc` at that call site gives the distance to the caller's return address exactly. A
//! return address into heaplens's own code that was not calibrated drops the stack (0) rather
//! than report it wrong; the preload tests check the leaf frames of a C program.
//!
//! From there the walk ([`crate::unwind`]) follows the modules' `.eh_frame` rows
//! ([`crate::cfi`]) or frame pointers. The aligned entry points (`aligned_alloc`,
//! `posix_memalign`, `memalign`, `valloc`, `pvalloc`) reach the same stack entry the same way,
//! with the alignment passed along ([`Shape`]).

// Without the `hook` feature the collector, which drives this, is not built.
#![cfg_attr(not(feature = "hook"), allow(dead_code))]

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::*};

use crate::event::flags;
use crate::heap::{EMPTY_HEAP_PTR, Heap};
use crate::sample::Sampler;
use crate::schema;
use crate::stack_table::StackTable;
use crate::unwind::{self, Regs};
use crate::{hook, init, module};

/// Frames a stack holds at most.
pub const MAX_FRAMES: usize = 64;
const _: () = assert!(MAX_FRAMES <= crate::stack_table::MAX_STACK);

/// A heap's stack state (its owner's alone, but for the sampler's countdown).
#[repr(C)]
pub struct HeapStacks {
    pub(crate) sampler: Sampler,
    table: StackTable,
    /// The thread's stack `[lo, hi)`; `(0, 0)` not looked up yet, `(1, 0)` not found.
    stack: (usize, usize),
    /// The table's nodes may not all have been delivered (events were lost), or belong to an
    /// earlier recording: start afresh at the next stack.
    epoch: u32,
    /// The walk's frames (here rather than on the stack: no 512 bytes to clear per stack).
    frames: [usize; MAX_FRAMES],
    /// The last two code ranges return addresses fell in, and the module table they came from.
    code_cache: module::CodeCache,
    /// The last walk, for the next to go by ([`unwind::Memo`]), and the code range table
    /// ([`module::ranges_version`]) it was made with.
    memo: unwind::Memo,
    memo_ranges: usize,
    /// The table's last stack is the memo's last walk (that walk's stack was interned): what
    /// the next walk knows it shares with it need not be compared again.
    memo_interned: bool,
}

impl HeapStacks {
    pub(crate) const fn new() -> Self {
        Self {
            sampler: Sampler::new(),
            table: StackTable::new(),
            stack: (0, 0),
            epoch: 0,
            frames: [0; MAX_FRAMES],
            code_cache: module::CodeCache::new(),
            memo: unwind::Memo::new(),
            memo_ranges: 0,
            memo_interned: false,
        }
    }
}

/// The next node id (0 is "no stack").
static NEXT_NODE: AtomicU32 = AtomicU32::new(1);
/// Stacks are reported: the collector has sent the stack mode and the modules.
static ARMED: AtomicBool = AtomicBool::new(false);
/// Moved on when nodes sent before may not reach the reader (events lost, a new recording):
/// every table starts afresh.
static TABLE_EPOCH: AtomicU32 = AtomicU32::new(1);

/// Starts or stops reporting stacks (the collector, once it has sent the stack mode).
pub(crate) fn arm(on: bool) {
    if on {
        invalidate_tables();
    }
    ARMED.store(on, Release);
}

/// Every thread's table starts afresh at its next stack.
pub(crate) fn invalidate_tables() {
    TABLE_EPOCH.fetch_add(1, Relaxed);
}

/// Marks `heap`'s table stale (an event of its thread was lost).
///
/// # Safety
/// `heap` is the calling thread's heap.
pub(crate) unsafe fn lost_events(heap: *mut Heap) {
    // SAFETY: the owner's field.
    unsafe { (*heap).stacks.epoch = 0 };
}

/// Releases a heap's table (thread exit).
///
/// # Safety
/// `heap` is the calling thread's heap, going away.
pub(crate) unsafe fn thread_done(heap: *mut Heap) {
    // SAFETY: forwarded.
    unsafe { (*heap).stacks.table.release() };
}

/// Entry points to calibrate: function addresses taking up to three integer C arguments, and
/// the arguments that reach the stack entry without allocating.
static ENTRIES: [(AtomicUsize, [AtomicUsize; 3]); 16] =
    [const { (AtomicUsize::new(0), [const { AtomicUsize::new(0) }; 3]) }; 16];
/// Calibrated call sites: the return address into heaplens seen at the entry, and how to find
/// the caller's registers from there: the distance from the entry's stack pointer (`sp` as
/// passed, 8 above the entry's `rsp`) to the caller's, in the high 32 bits; in the low 32, where
/// the caller's `rbp` is (see [`RBP_LIVE`], [`RBP_LOST`], else 1 + its offset from the entry's
/// `rsp`, saved by a frame in between that used the register).
static SITES: [(AtomicUsize, AtomicUsize); 16] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; 16];
/// The trampoline's stack pointer (the caller's, once the entry point returns).
static CALIBRATION_SP: AtomicUsize = AtomicUsize::new(0);
/// A call site whose frames above differ by entry point.
const AMBIGUOUS: usize = usize::MAX;
/// The caller's `rbp` is still in the register at the entry.
const RBP_LIVE: usize = 0;
/// The caller's `rbp` was not found.
const RBP_LOST: usize = 0xffff_ffff;
/// What the trampoline puts in `rbp`.
const RBP_MARK: usize = 0x5afe_f00d_0000_0010;

thread_local! {
    /// Set while this thread calibrates: the entry notes the registers and allocates nothing.
    static CALIBRATING: Cell<Option<Regs>> = const { Cell::new(None) };
}

/// An allocation size no allocation path accepts, but which every one sends to the stack
/// entry: what calibration asks for.
pub const CALIBRATION_SIZE: usize = usize::MAX / 2;
/// The largest size `realloc` passes on to `malloc` (larger sizes fail before): what the
/// calibration of `realloc` asks for (the entry returns null at once, the block stays).
pub const CALIBRATION_REALLOC_SIZE: usize = crate::MAX_ALLOC_SIZE;
/// As the first argument of a registered entry point: a live block of 16 bytes, made for the
/// call (`realloc(p, n)` moving the block takes another call site than `realloc(NULL, n)`).
pub const CALIBRATION_BLOCK: usize = usize::MAX;
/// As an argument of a registered entry point: the address of a pointer-sized slot the call may
/// write (`posix_memalign`'s `memptr`; it is left alone when the call fails, as it does here).
pub const CALIBRATION_SLOT: usize = usize::MAX - 1;

/// Registers an allocation entry point to be calibrated when recording starts: `f(args...)`
/// must reach the traced path's stack entry (`malloc(n)`, `calloc(1, n)`, `aligned_alloc(64, n)`
/// with [`CALIBRATION_SIZE`], `realloc(p, n)` with [`CALIBRATION_REALLOC_SIZE`]; the first
/// argument may be [`CALIBRATION_BLOCK`], any may be [`CALIBRATION_SLOT`]) and fail without
/// allocating. Arguments past the function's own are ignored. Call it before recording starts.
///
/// # Safety
/// `f` is the address of such a function with the C calling convention and at most three
/// integer or pointer arguments.
pub unsafe fn register_entry(f: usize, args: [usize; 3]) {
    for e in &ENTRIES {
        let same = || e.1.iter().zip(args).all(|(a, b)| a.load(Relaxed) == b);
        if e.0.load(Acquire) == f && same() {
            return;
        }
        if e.0.load(Acquire) == 0 {
            for (a, b) in e.1.iter().zip(args) {
                a.store(b, Relaxed);
            }
            e.0.store(f, Release);
            return;
        }
    }
}

/// Calibration runs on some thread: the entry looks at [`CALIBRATING`] (a thread-local, which
/// costs more than this load in a shared object).
static CALIBRATION_RUNS: AtomicBool = AtomicBool::new(false);

/// Calibrates the registered entry points (see the module docs). The hook must be on.
pub(crate) fn calibrate() {
    CALIBRATION_RUNS.store(true, Relaxed);
    calibrate_entries();
    CALIBRATION_RUNS.store(false, Relaxed);
}

fn calibrate_entries() {
    let mut n = 0;
    for e in &ENTRIES {
        let f = e.0.load(Acquire);
        if f == 0 {
            continue;
        }
        let mut args = e.1.each_ref().map(|a| a.load(Relaxed));
        let block = if args[0] == CALIBRATION_BLOCK {
            // SAFETY: a block of this (untraced) thread's own, freed below.
            let p = unsafe { crate::malloc(16) };
            if p.is_null() {
                continue;
            }
            args[0] = p as usize;
            p
        } else {
            core::ptr::null_mut()
        };
        let mut slot = 0usize;
        for a in &mut args {
            if *a == CALIBRATION_SLOT {
                *a = (&raw mut slot) as usize;
            }
        }
        // Whatever the mode, the next allocation of this thread goes to the entry.
        let heap = crate::heap::default_heap();
        if heap != EMPTY_HEAP_PTR {
            // SAFETY: this thread's heap.
            unsafe { (*heap).stacks.sampler.countdown.store(0, Relaxed) };
        }
        CALIBRATING.with(|c| c.set(Some(Regs::default())));
        // SAFETY: a registered entry point takes these arguments and allocates nothing here;
        // `slot` outlives the call.
        unsafe { calibration_call(f, args[0], args[1], args[2]) };
        let seen = CALIBRATING.with(|c| c.replace(None));
        if !block.is_null() {
            // SAFETY: the block made above, left intact by the failed call.
            unsafe { crate::free(block) };
        }
        let Some(regs) = seen.filter(|r| r.pc != 0) else {
            continue;
        };
        let caller_sp = CALIBRATION_SP.load(Relaxed);
        if !module::is_own_code(regs.pc) || caller_sp < regs.sp || n == SITES.len() {
            continue; // a tail call all the way: nothing to correct
        }
        // During calibration the entry notes where `rbp` went in `fp` (see `alloc_sampled`).
        let Ok(d32) = u32::try_from(caller_sp - regs.sp) else {
            continue;
        };
        let delta = (d32 as usize) << 32 | regs.fp.min(RBP_LOST);
        if let Some(same) = SITES[..n].iter().find(|s| s.0.load(Relaxed) == regs.pc) {
            // One call site reached from two entry points with different frames above it (a
            // function not inlined into both): its caller cannot be found this way.
            if same.1.load(Relaxed) != delta {
                same.1.store(AMBIGUOUS, Relaxed);
            }
            continue;
        }
        SITES[n].1.store(delta, Relaxed);
        SITES[n].0.store(regs.pc, Release);
        n += 1;
    }
}

/// Calls `f(a, b, c)` with the stack pointer noted in [`CALIBRATION_SP`] and [`RBP_MARK`] in
/// `rbp`.
///
/// # Safety
/// `f` is a C function of at most three integer or pointer arguments, valid for these.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
unsafe extern "sysv64" fn calibration_call(f: usize, a: usize, b: usize, c: usize) -> usize {
    core::arch::naked_asm!(
        "push rbp",
        "movabs rbp, {mark}",
        "mov rax, rdi",
        "mov rdi, rsi",
        "mov rsi, rdx",
        "mov rdx, rcx",
        "mov qword ptr [rip + {sp}], rsp",
        "call rax",
        "pop rbp",
        "ret",
        mark = const RBP_MARK,
        sp = sym CALIBRATION_SP,
    )
}

/// # Safety
/// Nothing: no stacks on this target.
#[cfg(not(target_arch = "x86_64"))]
unsafe extern "sysv64" fn calibration_call(_f: usize, _a: usize, _b: usize, _c: usize) -> usize {
    0
}

/// The caller's registers when the entry was reached from a calibrated call site in heaplens's
/// own code; `None` when the site is unknown.
fn through_site(regs: Regs, stack: (usize, usize)) -> Option<Regs> {
    let site = SITES.iter().find(|(pc, _)| pc.load(Acquire) == regs.pc)?;
    let d = site.1.load(Relaxed);
    if d == AMBIGUOUS {
        return None;
    }
    let sp = regs.sp.checked_add(d >> 32)?;
    // The caller's return address is the word below its stack pointer, inside the stack.
    if regs.sp < stack.0 + 8 || sp > stack.1 || !sp.is_multiple_of(8) || sp - 8 < regs.sp {
        return None;
    }
    // SAFETY: inside the thread's stack, above the entry's stack pointer.
    let pc = unsafe { ((sp - 8) as *const usize).read() };
    let fp = match d & RBP_LOST {
        RBP_LIVE => regs.fp,
        RBP_LOST => 0,
        slot => {
            // Saved in a frame of ours, between the entry's `rsp` and the caller's.
            let at = regs.sp - 8 + (slot - 1);
            if at + 8 > sp || !at.is_multiple_of(8) {
                return None;
            }
            // SAFETY: inside the thread's stack, between the entry's and the caller's stack
            // pointers (our own live frames).
            unsafe { (at as *const usize).read() }
        }
    };
    Some(Regs { pc, sp, fp })
}

/// What an allocation that may get a stack asks for, passed to the stack entry in one register:
/// its alignment (0: `malloc`'s, from the size's bin) and whether it is zeroed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    /// A power of two no larger than [`crate::MAX_ALLOC_SIZE`], or 0.
    pub align: usize,
    pub zero: bool,
}

impl Shape {
    /// `malloc`'s (`zero`: `calloc`'s), as a constant for the fast path.
    pub(crate) const fn plain(zero: bool) -> usize {
        zero as usize
    }

    /// One word: the alignment above the zero bit.
    pub(crate) const fn encode(self) -> usize {
        self.align << 1 | self.zero as usize
    }

    pub(crate) const fn decode(how: usize) -> Self {
        Self {
            align: how >> 1,
            zero: how & 1 != 0,
        }
    }
}

/// The traced path's entry for an allocation that may get a stack, reached by a tail call from
/// frameless code (see the module docs): passes the return address into the caller of
/// `malloc`, its stack pointer and frame pointer to [`alloc_sampled`].
///
/// # Safety
/// As [`crate::malloc`]; called only by a jump from `malloc`'s traced path, with the calling
/// thread's heap.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
pub(crate) unsafe extern "sysv64" fn alloc_sampled_entry(
    size: usize,
    how: usize,
    heap: *mut Heap,
) -> *mut u8 {
    core::arch::naked_asm!(
        "mov r9, rdx",
        "mov rdx, [rsp]",
        "lea rcx, [rsp + 8]",
        "mov r8, rbp",
        "jmp {slow}",
        slow = sym alloc_sampled,
    )
}

/// Without a known way to the caller's registers: no stack.
///
/// # Safety
/// As [`crate::malloc`].
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe extern "sysv64" fn alloc_sampled_entry(
    size: usize,
    how: usize,
    heap: *mut Heap,
) -> *mut u8 {
    // SAFETY: forwarded.
    unsafe { alloc_sampled(size, how, 0, 0, 0, heap) }
}

/// The out-of-line half of the traced path: decides whether the allocation gets a stack,
/// allocates, and reports the stack's new frames and the allocation.
///
/// # Safety
/// As [`crate::malloc`]; `how` is a [`Shape`]'s encoding; `pc`, `sp`, `fp` are the registers
/// at the call of `malloc` (or 0);
/// `heap` is the calling thread's heap (or the empty heap).
unsafe extern "sysv64" fn alloc_sampled(
    size: usize,
    how: usize,
    pc: usize,
    sp: usize,
    fp: usize,
    mut heap: *mut Heap,
) -> *mut u8 {
    if CALIBRATION_RUNS.load(Relaxed)
        && let Some(noted) = CALIBRATING.with(Cell::get)
    {
        if noted.pc == 0 {
            // Where the caller's `rbp` (the trampoline's mark) is now: still in the register,
            // or saved by a frame in between; noted in `fp`.
            let top = CALIBRATION_SP.load(Relaxed);
            let entry_rsp = sp - 8;
            let slot = if fp == RBP_MARK {
                RBP_LIVE
            } else {
                (entry_rsp..top)
                    .step_by(8)
                    // SAFETY: between the entry's stack pointer and the trampoline's: the live
                    // frames of this very call.
                    .find(|&a| unsafe { (a as *const usize).read() } == RBP_MARK)
                    .map_or(RBP_LOST, |a| a - entry_rsp + 1)
            };
            CALIBRATING.with(|c| c.set(Some(Regs { pc, sp, fp: slot })));
        }
        return core::ptr::null_mut();
    }
    let made = heap == EMPTY_HEAP_PTR;
    if made {
        heap = init::thread_init();
        if heap.is_null() {
            return core::ptr::null_mut();
        }
    }
    let Shape { align, zero } = Shape::decode(how);
    // SAFETY: `heap` is this thread's; the block comes from its pages.
    unsafe {
        let salt = u64::from((*heap).id) ^ (heap as u64);
        let take = (*heap).stacks.sampler.on_slow(size, salt);
        let (p, fl) = if align == 0 {
            let p = crate::alloc::block_untraced(heap, size, zero);
            (p, if zero { flags::ZERO } else { 0 })
        } else {
            let p = crate::alloc::aligned_untraced(heap, size, align, zero).1;
            (p, crate::alloc::aligned_flags(align, zero))
        };
        if !p.is_null() && hook::enabled() {
            let id = if take && ARMED.load(Acquire) && (*heap).traced.load(Relaxed) {
                capture(heap, Regs { pc, sp, fp })
            } else {
                0
            };
            hook::emit(
                heap,
                schema::Alloc {
                    ptr: p as u64,
                    size: size as u64,
                    stack: id,
                    bin: 0,
                    flags: fl,
                },
            );
        }
        if made {
            init::end_if_late(heap);
        }
        p
    }
}

/// Walks the stack from `regs`, interns it and reports its new frames; the leaf's id, or 0.
///
/// # Safety
/// `heap` is the calling thread's heap; `regs` are the registers at the call of `malloc`.
unsafe fn capture(heap: *mut Heap, regs: Regs) -> u32 {
    // SAFETY: the owner's state; reads of the stack stay inside its bounds (see `unwind::walk`).
    unsafe {
        let st = &mut (*heap).stacks;
        if regs.pc == 0 {
            return 0;
        }
        let epoch = TABLE_EPOCH.load(Relaxed);
        if st.epoch != epoch {
            st.table.clear();
            st.epoch = epoch;
        }
        if st.stack == (0, 0) {
            st.stack = unwind::find_stack(regs.sp).unwrap_or((1, 0));
        }
        let (lo, hi) = st.stack;
        let regs = if module::is_own_code(regs.pc) {
            match through_site(regs, (lo, hi)) {
                Some(r) => r,
                None => return 0, // an uncalibrated call site: the caller is unknown
            }
        } else {
            regs
        };
        let frames = &mut st.frames;
        let cache = &mut st.code_cache;
        let ranges = module::ranges_version();
        if st.memo_ranges != ranges {
            st.memo.clear();
            st.memo_ranges = ranges;
        }
        let on_stack = lo <= regs.sp && regs.sp < hi;
        // The table still holds its last stack, which is the memo's last walk: the outer frames
        // this walk shares with that one are known to the table, which neither compares nor
        // reads them, so the walk need not write them.
        let goes_by_last = on_stack && st.memo_interned && st.table.holds_last();
        let walk = if on_stack {
            let read = |a| (a as *const usize).read();
            let frame = |pc| cache.frame(pc);
            let all = !goes_by_last;
            unwind::walk_memo(regs, (lo, hi), read, frame, frames, &mut st.memo, all)
        } else {
            // Not on the thread's stack (a coroutine's, a signal stack): the leaf alone.
            let leaf = cache.lookup(regs.pc).is_some();
            frames[0] = regs.pc;
            unwind::Walk {
                len: usize::from(leaf),
                truncated: true,
            }
        };
        let frames = &st.frames[..walk.len];
        let known = if goes_by_last {
            st.memo.same_outer()
        } else {
            0
        };
        let id = st.table.intern(
            frames,
            walk.truncated,
            known,
            // Room for the new frames and the allocation, so no frame is ever lost alone.
            |n| hook::reserve(heap, n + 1),
            |n| {
                let first = NEXT_NODE.fetch_add(n, Relaxed);
                if first.checked_add(n).is_none() {
                    0
                } else {
                    first
                }
            },
            |node| {
                let f = if node.truncated { flags::TRUNCATED } else { 0 };
                hook::emit(
                    heap,
                    schema::StackFrame {
                        pc: node.pc as u64,
                        parent: u64::from(node.parent),
                        id: node.id,
                        flags: f,
                    },
                );
            },
        );
        // A stack that was not interned (refused, or no memory) leaves the table's last stack
        // behind the memo's last walk.
        st.memo_interned = on_stack && id != 0;
        id
    }
}
