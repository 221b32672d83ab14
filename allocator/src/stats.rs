//! Statistics: a snapshot of the whole allocator, walked from the segment registry (no counters
//! on the fast paths), and a readable summary that is written without allocating.

use core::fmt::{self, Write};
use core::sync::atomic::Ordering::Relaxed;

use crate::bin::{BIN_COUNT, BIN_HUGE, BIN_LARGE_MAX, block_size};
use crate::purge_delay::{self, PurgeStats};
use crate::{init, options, os, segment, segment_map};

/// Blocks and pages of one size class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BinStats {
    /// Block size of the class (0 for the huge bin, whose blocks vary).
    pub block_size: usize,
    /// Pages in use with blocks of this class.
    pub pages: usize,
    /// Blocks the program holds.
    pub blocks_used: usize,
    /// Blocks carved on those pages.
    pub blocks_capacity: usize,
    /// Bytes of the blocks the program holds.
    pub bytes_used: usize,
}

/// A snapshot of the allocator.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    /// Bytes mapped from the OS.
    pub reserved_bytes: usize,
    /// Bytes mapped and not purged (may be resident).
    pub committed_bytes: usize,
    /// Bytes of blocks the program holds.
    pub used_bytes: usize,
    /// Live segments.
    pub segments: usize,
    /// Pages in use.
    pub pages: usize,
    /// Threads with a heap.
    pub threads: usize,
    /// Segments whose thread exited and that no thread reclaimed yet.
    pub abandoned_segments: usize,
    /// Pages in abandoned segments.
    pub abandoned_pages: usize,
    /// Per size class; index = bin (0 unused, [`BIN_HUGE`] = huge blocks).
    pub bins: [BinStats; BIN_COUNT],
    /// Memory given back to the OS, how much of it was taken again soon, and the purge delay.
    pub purges: PurgeStats,
}

/// Takes a snapshot. Cheap: walks segment headers only (no block is touched).
pub fn stats() -> Stats {
    let mut st = Stats {
        reserved_bytes: os::RESERVED.load(Relaxed),
        committed_bytes: os::COMMITTED.load(Relaxed),
        used_bytes: 0,
        segments: 0,
        pages: 0,
        threads: init::thread_count(),
        abandoned_segments: 0,
        abandoned_pages: 0,
        bins: [BinStats::default(); BIN_COUNT],
        purges: purge_delay::purge_stats(),
    };
    for (bin, b) in st
        .bins
        .iter_mut()
        .enumerate()
        .take(BIN_LARGE_MAX + 1)
        .skip(1)
    {
        b.block_size = block_size(bin);
    }
    segment_map::for_each(|s: &segment::Segment| {
        st.segments += 1;
        let abandoned = s.thread_id() == 0;
        st.abandoned_segments += usize::from(abandoned);
        for i in 0..s.page_count() {
            let page = s.page(i);
            if !page.is_in_use() {
                continue;
            }
            st.pages += 1;
            st.abandoned_pages += usize::from(abandoned);
            let bin = page.bin().min(BIN_HUGE);
            let used = page.used().saturating_sub(page.thread_free_len()) as usize;
            let b = &mut st.bins[bin];
            b.pages += 1;
            b.blocks_used += used;
            b.blocks_capacity += page.capacity() as usize;
            b.bytes_used += used * page.block_size();
            st.used_bytes += used * page.block_size();
        }
    });
    st
}

/// Writes a readable summary of [`stats`] to the file descriptor `fd`.
pub fn print_stats(fd: i32) {
    let st = stats();
    let mut out = FdWriter::<4096>::new(fd);
    let _ = write_summary(&mut out, &st);
    out.flush();
}

fn write_summary(out: &mut impl Write, st: &Stats) -> fmt::Result {
    writeln!(
        out,
        "heaplens: {} threads, {} segments, {} pages in use",
        st.threads, st.segments, st.pages
    )?;
    writeln!(
        out,
        "  reserved {}  committed {}  in use {}",
        Bytes(st.reserved_bytes),
        Bytes(st.committed_bytes),
        Bytes(st.used_bytes)
    )?;
    let p = st.purges;
    if p.purged_bytes > 0 {
        writeln!(
            out,
            "  purged {}, {} of it taken again within {} ms",
            Bytes(usize::try_from(p.purged_bytes).unwrap_or(usize::MAX)),
            Bytes(usize::try_from(p.retaken_bytes).unwrap_or(usize::MAX)),
            purge_delay::longest_ms()
        )?;
        if p.longest_grown_ms > 0 {
            writeln!(
                out,
                "  purge delay grew to {} ms (HEAPLENS_PURGE_DELAY_MS {})",
                p.longest_grown_ms,
                options::purge_delay_ms()
            )?;
        }
    }
    if st.abandoned_segments > 0 {
        writeln!(
            out,
            "  abandoned: {} segments, {} pages",
            st.abandoned_segments, st.abandoned_pages
        )?;
    }
    writeln!(
        out,
        "  {:>4} {:>10} {:>6} {:>12} {:>12} {:>10} {:>5}",
        "bin", "block", "pages", "blocks used", "carved", "in use", "fill"
    )?;
    for (bin, b) in st.bins.iter().enumerate() {
        if b.pages == 0 {
            continue;
        }
        let fill = (100 * b.blocks_used)
            .checked_div(b.blocks_capacity)
            .unwrap_or(0);
        let block = if bin == BIN_HUGE {
            "huge".into_label()
        } else {
            Label::bytes(b.block_size)
        };
        writeln!(
            out,
            "  {:>4} {:>10} {:>6} {:>12} {:>12} {:>10} {:>4}%",
            bin,
            block,
            b.pages,
            b.blocks_used,
            b.blocks_capacity,
            Bytes(b.bytes_used),
            fill
        )?;
    }
    Ok(())
}

/// A byte count printed with a binary unit (B, KiB, MiB, GiB).
pub struct Bytes(pub usize);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = Label::new();
        let n = self.0;
        let _ = if n < 1024 {
            write!(buf, "{n} B")
        } else if n < 1024 * 1024 {
            write!(buf, "{}.{} KiB", n / 1024, (n % 1024) * 10 / 1024)
        } else if n < 1024 * 1024 * 1024 {
            write!(
                buf,
                "{}.{} MiB",
                n >> 20,
                ((n & ((1 << 20) - 1)) * 10) >> 20
            )
        } else {
            write!(
                buf,
                "{}.{} GiB",
                n >> 30,
                ((n & ((1 << 30) - 1)) * 10) >> 30
            )
        };
        f.pad(buf.as_str())
    }
}

/// A short string on the stack (for padded table cells).
struct Label {
    buf: [u8; 24],
    len: usize,
}

impl Label {
    fn new() -> Self {
        Self {
            buf: [0; 24],
            len: 0,
        }
    }
    fn bytes(n: usize) -> Self {
        let mut l = Self::new();
        let _ = write!(l, "{}", Bytes(n));
        l
    }
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

trait IntoLabel {
    fn into_label(self) -> Label;
}
impl IntoLabel for &str {
    fn into_label(self) -> Label {
        let mut l = Label::new();
        let _ = l.write_str(self);
        l
    }
}

impl Write for Label {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Formats into a stack buffer and writes it to a file descriptor: output without allocating.
pub struct FdWriter<const N: usize> {
    fd: i32,
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> FdWriter<N> {
    /// A writer to `fd`.
    pub fn new(fd: i32) -> Self {
        Self {
            fd,
            buf: [0; N],
            len: 0,
        }
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) {
        let mut done = 0;
        while done < self.len {
            // SAFETY: the slice is initialised memory of ours.
            let n =
                unsafe { libc::write(self.fd, self.buf[done..].as_ptr().cast(), self.len - done) };
            if n <= 0 {
                break;
            }
            done += n.cast_unsigned();
        }
        self.len = 0;
    }
}

impl<const N: usize> Write for FdWriter<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(N) {
            if self.len + chunk.len() > N {
                self.flush();
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_use_binary_units() {
        let f = |n| {
            let mut l = Label::new();
            let _ = write!(l, "{}", Bytes(n));
            l.as_str().to_owned()
        };
        assert_eq!(f(0), "0 B");
        assert_eq!(f(1023), "1023 B");
        assert_eq!(f(1536), "1.5 KiB");
        assert_eq!(f(5 << 20), "5.0 MiB");
        assert_eq!(f(3 << 30), "3.0 GiB");
    }

    #[test]
    fn stats_count_blocks_this_thread_holds() {
        let before = stats();
        // SAFETY: plain allocations, freed below.
        let blocks: Vec<*mut u8> = (0..1000).map(|_| unsafe { crate::malloc(200) }).collect();
        let during = stats();
        let bin = crate::bin::bin_of(200);
        assert!(during.bins[bin].blocks_used >= before.bins[bin].blocks_used + 1000 - 200);
        assert!(during.used_bytes >= 1000 * 200 - 200 * 224);
        assert!(during.threads >= 1);
        for b in blocks {
            // SAFETY: each block is live and freed once.
            unsafe { crate::free(b) };
        }
        let mut out = Label::new();
        let _ = write_summary(&mut out, &during);
        assert!(out.as_str().starts_with("heaplens: "));
    }
}
