//! Writing events that another core reads next: `heaplens record`'s unpacking thread writes
//! each batch into a vector that an encoder thread, on the other core, has just read.
//!
//! With ordinary stores every line of that vector must first be taken back from the encoder's
//! core (a read for ownership), and once the store buffer is full of such stores the thread
//! stalls. The unpacking writes densely, whole lines at a time, so it writes past the cache
//! ([`write_streamed`], non-temporal stores) and fences once before it hands the batch on
//! ([`fence`]): `heaplens record` of binary trees, 10 alternating pairs, the command 0.90x and
//! the unpacking's own samples 1385 -> 743.
//!
//! The program's own events are written with ordinary stores. Non-temporal stores there made
//! the producer/consumer workload 8x slower with the hook on (`alloc_ratios`): its cross-thread
//! frees are locked instructions, and each one waits until the event written just before has
//! reached memory.

/// Writes an event's four words at `w` past the cache (on x86-64): visible to other threads
/// after the writer's next [`fence`].
///
/// # Safety
/// `w` is an 8-byte aligned slot of four words that the calling thread may write.
#[inline(always)]
pub(crate) unsafe fn write_streamed(w: *mut u64, words: [u64; 4]) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::_mm_stream_si64;
        // SAFETY: forwarded; movnti needs only 8-byte alignment.
        unsafe {
            _mm_stream_si64(w.cast(), words[0] as i64);
            _mm_stream_si64(w.add(1).cast(), words[1] as i64);
            _mm_stream_si64(w.add(2).cast(), words[2] as i64);
            _mm_stream_si64(w.add(3).cast(), words[3] as i64);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded.
    unsafe {
        w.write(words[0]);
        w.add(1).write(words[1]);
        w.add(2).write(words[2]);
        w.add(3).write(words[3]);
    }
}

/// Orders the calling thread's streamed writes before its later stores (a store fence).
#[inline]
pub(crate) fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a store fence has no operands and no effect but ordering.
    unsafe {
        core::arch::x86_64::_mm_sfence();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_words_read_back_after_the_fence() {
        let mut slot = [0u64; 4];
        // SAFETY: a local, aligned four-word slot.
        unsafe { write_streamed(slot.as_mut_ptr(), [1, 2, 3, u64::MAX]) };
        fence();
        assert_eq!(slot, [1, 2, 3, u64::MAX]);
    }
}
