//! Memory for packed batches in the backlog, taken from the OS in slabs of 2 MiB faulted in by
//! the `mmap` that makes them (`MAP_POPULATE`), instead of a page fault per 4 KiB as the reader
//! copies a batch in. While the program runs, the backlog grows into fresh memory at the rate the
//! program makes events, and those page faults (zeroing and charging each page, on the reader
//! thread the program waits for) were about half of the reader's time.
//!
//! The pages are 4 KiB ones, not a transparent huge page (`MADV_HUGEPAGE`, tried from 2026-12-06
//! to 12-07): where the kernel hands back to a hypervisor the free memory it holds in 2 MiB
//! blocks (virtio-balloon's free page reporting, as on this project's machines), a fresh huge
//! page is one the host must fault in again, and zeroing one took 0.5 GB/s against 2-3.5 GB/s
//! for 4 KiB pages, which come from the smaller free blocks the guest kept.
//!
//! The reader ([`SlabWriter`]) fills a slab from the front, one batch after another; each batch
//! it has filled is a [`SlabBytes`], which the consumer reads on another thread. Once every
//! batch in a slab has been consumed and the reader has moved on, the slab is kept for reuse
//! (up to [`KEPT_SLABS`]; the rest go back to the OS): memory the backlog has grown into once is
//! not zeroed and faulted in again.

#![allow(unsafe_code)] // a mapping of our own, written by one thread in disjoint ranges

use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

/// A slab's size: a few dozen batches.
pub const SLAB_BYTES: usize = 2 << 20;

/// Consumed slabs kept for reuse, at most (64 MiB).
pub const KEPT_SLABS: usize = 32;

/// Consumed slabs of [`SLAB_BYTES`], for reuse: their addresses.
static KEPT: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

fn kept() -> std::sync::MutexGuard<'static, Vec<usize>> {
    KEPT.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One anonymous mapping.
struct Slab {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by the slab; the writer writes only bytes past every
// `SlabBytes` handed out, and a `SlabBytes` reads only its own range, written before it was made
// (see `SlabWriter::fill`), so no byte is written and read at once. Moving or sharing the slab
// between threads is sound.
unsafe impl Send for Slab {}
// SAFETY: as above.
unsafe impl Sync for Slab {}

impl Slab {
    /// A slab of `len` bytes (a multiple of the page size), faulted in: a kept one if there is
    /// one of that size, else a fresh mapping.
    fn map(len: usize) -> io::Result<Self> {
        if len == SLAB_BYTES
            && let Some(addr) = kept().pop()
            && let Some(ptr) = NonNull::new(addr as *mut u8)
        {
            return Ok(Self { ptr, len });
        }
        Self::map_populated(len)
    }

    /// A fresh mapping of `len` bytes, faulted in.
    fn map_populated(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
        // existing memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        if self.len == SLAB_BYTES {
            let mut kept = kept();
            if kept.len() < KEPT_SLABS {
                // Nothing refers to it any more (every `SlabBytes` and the writer held an `Arc`
                // to this slab): the next `map` may hand it out whole.
                kept.push(self.ptr.as_ptr() as usize);
                return;
            }
        }
        // SAFETY: the whole mapping is ours, and nothing refers to it any more (as above).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The bytes of one batch in a slab.
pub struct SlabBytes {
    slab: Arc<Slab>,
    start: usize,
    len: usize,
}

impl std::ops::Deref for SlabBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `start..start + len` lies inside the mapping (checked when it was handed
        // out), was written before this value was made, and is never written again.
        unsafe { std::slice::from_raw_parts(self.slab.ptr.as_ptr().add(self.start), self.len) }
    }
}

impl std::fmt::Debug for SlabBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlabBytes({} bytes)", self.len)
    }
}

/// The reader's end: fills slabs from the front.
#[derive(Default)]
pub struct SlabWriter {
    current: Option<Arc<Slab>>,
    /// Bytes of `current` handed out.
    used: usize,
}

impl SlabWriter {
    /// Fills the next `len` bytes of a slab with `fill` (a new slab if the current one has no
    /// room; a slab of its own for a batch larger than a slab) and hands them out.
    pub fn fill(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> io::Result<()>,
    ) -> io::Result<SlabBytes> {
        let room = self.current.as_ref().map_or(0, |s| s.len - self.used);
        if room < len {
            let size = len.max(SLAB_BYTES).next_multiple_of(4096);
            self.current = Some(Arc::new(Slab::map(size)?));
            self.used = 0;
        }
        let Some(slab) = &self.current else {
            return Err(io::Error::other("no slab"));
        };
        let start = self.used;
        // SAFETY: `start..start + len` lies inside the mapping (`room >= len`, or a fresh slab
        // of at least `len` bytes) and past every range handed out, so nothing else reads or
        // writes it while `fill` runs; the memory is initialised (an anonymous mapping reads as
        // zeros, a kept slab holds the bytes of batches consumed).
        let dst = unsafe { std::slice::from_raw_parts_mut(slab.ptr.as_ptr().add(start), len) };
        fill(dst)?;
        self.used += len;
        Ok(SlabBytes {
            slab: Arc::clone(slab),
            start,
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fresh_slab_reads_as_zeros_and_is_writable_to_its_end() {
        let slab = super::Slab::map_populated(super::SLAB_BYTES).unwrap();
        assert_eq!(slab.len, super::SLAB_BYTES);
        // SAFETY: the slab is this test's own mapping of `len` writable bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(slab.ptr.as_ptr(), slab.len) };
        assert!(bytes.iter().all(|&b| b == 0), "fresh memory reads as zeros");
        bytes[0] = 1;
        bytes[slab.len - 1] = 2;
        assert_eq!((bytes[0], bytes[slab.len - 1]), (1, 2));
    }

    #[test]
    fn batches_keep_their_bytes_across_slabs_and_threads() {
        const SLAB_BYTES: usize = super::SLAB_BYTES;
        let mut w = super::SlabWriter::default();
        let sizes = [10, 4096, 100_000, SLAB_BYTES - 5, 3 * SLAB_BYTES, 1, 0, 777];
        let mut filled = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let b = w
                .fill(n, |dst| {
                    for (j, x) in dst.iter_mut().enumerate() {
                        *x = (i * 31 + j) as u8;
                    }
                    Ok(())
                })
                .unwrap();
            filled.push(b);
        }
        let check = std::thread::spawn(move || {
            for (i, b) in filled.iter().enumerate() {
                assert_eq!(b.len(), sizes[i]);
                assert!(b.iter().enumerate().all(|(j, &x)| x == (i * 31 + j) as u8));
            }
        });
        check.join().unwrap();
        // Slabs consumed are kept and handed out again, whole.
        drop(w);
        let mut again = super::SlabWriter::default();
        let b = again.fill(SLAB_BYTES, |d| {
            d.fill(7);
            Ok(())
        });
        assert!(b.unwrap().iter().all(|&x| x == 7));
        let mut w = again;
        // A fill that fails hands nothing out and leaves the room for the next.
        assert!(w.fill(8, |_| Err(std::io::Error::other("cut"))).is_err());
        let b = w.fill(8, |d| {
            d.fill(9);
            Ok(())
        });
        assert_eq!(&*b.unwrap(), &[9; 8]);
    }
}
