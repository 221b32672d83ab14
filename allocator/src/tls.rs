//! The calling thread's heap pointer: one thread-local word, read on every `malloc`.
//!
//! On x86-64 Linux the word is declared here in assembly and read with the initial-exec TLS
//! model, which stable Rust does not offer: a load of the word's offset from the thread pointer
//! (a GOT slot the loader fills once) and a load through `fs`, as mimalloc's `__thread` heap is
//! read. Rust's own `thread_local!` in a shared library uses the general-dynamic model, a call
//! to `__tls_get_addr` (11 instructions per `malloc` through `LD_PRELOAD`, counted with
//! callgrind). Initial-exec needs the library's TLS in the static TLS block: every library
//! loaded at startup (`LD_PRELOAD`, or linked) has it, and glibc keeps spare room in it for a
//! `dlopen`ed library that asks for it (the library carries `DF_STATIC_TLS`; if the room ran
//! out, `dlopen` fails with a clear message rather than misbehaving). In an executable (the
//! `#[global_allocator]` build) the linker turns the same code into the local-exec model: a
//! constant offset.
//!
//! The word starts as [`EMPTY_HEAP_PTR`] in every thread (its initial value sits in `.tdata`,
//! relocated by the loader before any thread's copy is made), so no thread needs setting up
//! before its first `malloc`. Its symbol carries the crate's name, so the two builds of the
//! allocator in the benchmark (`heaplens_alloc`, `heaplens_alloc_nohook`) keep separate words;
//! it is hidden, so nothing outside the library sees it.
//!
//! Elsewhere this is an ordinary `const`-initialised `thread_local!` without `Drop`.

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
use crate::heap::EMPTY_HEAP_PTR;
use crate::heap::Heap;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
macro_rules! heap_slot {
    () => {
        concat!("__heaplens_default_heap_", env!("CARGO_CRATE_NAME"))
    };
}

// The thread-local word, initialised to the empty heap's address.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
core::arch::global_asm!(
    concat!(".pushsection .tdata.", heap_slot!(), ",\"awT\",@progbits"),
    ".p2align 3",
    concat!(".globl ", heap_slot!()),
    concat!(".hidden ", heap_slot!()),
    concat!(".type ", heap_slot!(), ",@object"),
    concat!(".size ", heap_slot!(), ", 8"),
    concat!(heap_slot!(), ":"),
    ".quad {empty}",
    ".popsection",
    empty = sym crate::heap::EMPTY_HEAP,
);

/// The calling thread's heap ([`crate::heap::EMPTY_HEAP`] before its first allocation).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[inline(always)]
pub(crate) fn heap() -> *mut Heap {
    let heap: *mut Heap;
    // SAFETY: the GOT slot holds the word's offset from the thread pointer (initial-exec: the
    // loader put the library's TLS in the static TLS block, see the module comment), so
    // `fs:[offset]` is this thread's word. Reading it has no side effects.
    unsafe {
        core::arch::asm!(
            concat!("mov {0}, qword ptr [rip + ", heap_slot!(), "@GOTTPOFF]"),
            "mov {0}, qword ptr fs:[{0}]",
            out(reg) heap,
            options(nostack, readonly, preserves_flags, pure),
        );
    }
    heap
}

/// Makes `heap` the calling thread's heap.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[inline]
pub(crate) fn set_heap(heap: *mut Heap) {
    // SAFETY: as in `heap`: `fs:[offset]` is this thread's word, written only by its thread.
    unsafe {
        core::arch::asm!(
            concat!("mov {t}, qword ptr [rip + ", heap_slot!(), "@GOTTPOFF]"),
            "mov qword ptr fs:[{t}], {h}",
            t = out(reg) _,
            h = in(reg) heap,
            options(nostack, preserves_flags),
        );
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
std::thread_local! {
    /// The calling thread's heap. `const`-initialised, no destructor: safe to touch inside
    /// `malloc` (see STYLE.md); thread exit is handled through a pthread key in [`crate::init`].
    static DEFAULT_HEAP: core::cell::Cell<*mut Heap> = const { core::cell::Cell::new(EMPTY_HEAP_PTR) };
}

/// The calling thread's heap ([`crate::heap::EMPTY_HEAP`] before its first allocation).
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[inline(always)]
pub(crate) fn heap() -> *mut Heap {
    DEFAULT_HEAP.with(core::cell::Cell::get)
}

/// Makes `heap` the calling thread's heap.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub(crate) fn set_heap(heap: *mut Heap) {
    DEFAULT_HEAP.with(|h| h.set(heap));
}
