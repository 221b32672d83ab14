//! Reading a flag byte the fast paths test (the hook switch, the watch byte) without the GOT.
//!
//! rustc compiles position-independent code that reaches every static through the GOT (an extra
//! load, and on stable Rust the linker cannot relax it) because it cannot know the static will
//! not be preempted. In `libheaplens.so` nothing of this crate is exported, so the static's
//! address is a fixed distance from the code: [`load_static_flag!`] reads the byte relative to
//! the instruction pointer, one instruction, as C compiled with hidden visibility does. A byte
//! load is an atomic relaxed load on x86-64. Elsewhere the macro is a relaxed `load`.

/// Loads the `AtomicU8`/`AtomicBool` static `$flag` with relaxed ordering, zero-extended to a
/// `u32` (so a test of it needs no second extension).
#[cfg(target_arch = "x86_64")]
macro_rules! load_static_flag {
    ($flag:path) => {{
        let value: u32;
        // SAFETY: `$flag` is a static of one byte; reading it has no side effects, and a byte
        // load is atomic on x86-64 (so this is a relaxed atomic load, racing no one).
        unsafe {
            core::arch::asm!(
                "movzx {v:e}, byte ptr [rip + {flag}]",
                v = out(reg) value,
                flag = sym $flag,
                options(nostack, readonly, preserves_flags),
            );
        }
        value
    }};
}

/// Loads the `AtomicU8`/`AtomicBool` static `$flag` with relaxed ordering, as a `u32`.
#[cfg(not(target_arch = "x86_64"))]
macro_rules! load_static_flag {
    ($flag:path) => {{ u32::from($flag.load(core::sync::atomic::Ordering::Relaxed)) }};
}

/// Whether the `AtomicU8`/`AtomicBool` static `$flag` is non-zero (a relaxed load). On x86-64 a
/// compare of the byte in memory and a jump, two instructions, where a load and a test take
/// three: LLVM does not fold an atomic load into a compare.
#[cfg(target_arch = "x86_64")]
macro_rules! static_flag_is_set {
    ($flag:path) => {{
        let set = 'set: {
            // SAFETY: as in `load_static_flag`: a byte compare against memory is a relaxed
            // atomic load of a one-byte static; it writes nothing but the flags register.
            unsafe {
                core::arch::asm!(
                    "cmp byte ptr [rip + {flag}], 0",
                    "jne {set}",
                    flag = sym $flag,
                    set = label { break 'set true },
                    options(nostack, readonly),
                );
            }
            false
        };
        set
    }};
}

/// Whether the `AtomicU8`/`AtomicBool` static `$flag` is non-zero (a relaxed load).
#[cfg(not(target_arch = "x86_64"))]
macro_rules! static_flag_is_set {
    ($flag:path) => {{ $flag.load(core::sync::atomic::Ordering::Relaxed) != 0 }};
}

pub(crate) use load_static_flag;
pub(crate) use static_flag_is_set;
