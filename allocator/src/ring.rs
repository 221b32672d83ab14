//! A byte ring in memory shared by a traced process and `heaplens`: the process's collector
//! packs its stream's frames straight into it, and heaplens's reader copies them out. A socket
//! cost a system call, the kernel's copies on both sides and a wake-up of the reader for every
//! send: binary trees ran 2.5x their plain time under `heaplens record` over the socket, 1.8x
//! through the ring.
//!
//! The socket stays: the ring's memory (a `memfd`, its size sealed) goes over it once, in an
//! `SCM_RIGHTS` message. Afterwards it carries only one-byte wake-ups, to a side that said it
//! waits, and it tells either side when the other has gone (its end closes, whatever way the
//! process ended).
//!
//! ```text
//! memfd = head[4096] | data[size]           (size a power of two)
//! head  = write u64 | pad | read u64 | pad | reader_waits u32 | writer_waits u32
//! ```
//! `write` and `read` count bytes since the start and only grow. The data is mapped twice, one
//! copy right after the other, so any `size` bytes from any position are contiguous in memory.
//! The writer publishes whole frames only (`write` moves past a frame once it is all there), so
//! the reader never sees half a frame, even from a process that died. The reader trusts nothing
//! it reads in the ring: the frames are checked as a socket's are, and a `write` that runs ahead
//! of `read` by more than the ring holds is an error.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Bytes before the data: the head, alone in its page.
const HEAD_BYTES: usize = 4096;

/// The ring's data bytes a traced process makes: 16 MiB, 2-10 M events packed (1.5-8 bytes an
/// event on allocation-heavy programs), 10-50 ms of the busiest programs' events. heaplens's
/// reader, at the program's priority, takes them out into its backlog as they come.
pub const RING_BYTES: usize = 16 << 20;

/// The smallest and largest ring a reader accepts.
pub const MIN_RING: usize = 64 << 10;
/// See [`MIN_RING`].
pub const MAX_RING: usize = 1 << 30;

/// How long a side waits for the other at a time before it checks again (the socket's end
/// closing wakes it at once; this only bounds a lost wake-up).
const WAIT_MS: libc::c_int = 50;

#[repr(C)]
struct Head {
    write: AtomicU64,
    _pad0: [u8; 56],
    read: AtomicU64,
    _pad1: [u8; 56],
    reader_waits: AtomicU32,
    writer_waits: AtomicU32,
}

const _: () = assert!(core::mem::size_of::<Head>() <= HEAD_BYTES);

/// The ring's memory, mapped: the head, and the data twice over.
pub struct Ring {
    base: *mut u8,
    size: usize,
}

// SAFETY: the ring is plain shared memory; all shared state in it is atomics, and the data
// bytes are only written by the one writer where the reader does not look yet.
unsafe impl Send for Ring {}

impl Ring {
    /// Makes a ring of `size` data bytes (a power of two, a multiple of the page size, within
    /// [`MIN_RING`]..=[`MAX_RING`]) in a new `memfd`; returns it and the descriptor to send.
    ///
    /// # Errors
    /// The system's, when it cannot make or map the memory.
    pub fn create(size: usize) -> io::Result<(Self, OwnedFd)> {
        check_size(size)?;
        // SAFETY: the name is a NUL-terminated string; flags are valid.
        let fd = unsafe {
            libc::memfd_create(
                c"heaplens-ring".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is the descriptor just made, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = libc::off_t::try_from(HEAD_BYTES + size).map_err(io::Error::other)?;
        // SAFETY: `fd` is a memfd of ours; ftruncate takes plain integers.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // Its size is sealed: the reader maps it and must never find pages gone (SIGBUS).
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on our memfd with integer arguments.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let ring = Self::map(fd.as_raw_fd(), size)?;
        Ok((ring, fd))
    }

    /// Maps a ring of `size` data bytes from `fd`, which came from a peer: its size is checked
    /// against the file's, and the file must be sealed against shrinking (a peer that truncated
    /// it under the mapping would crash the reader with SIGBUS).
    ///
    /// # Errors
    /// A size out of bounds, a file too small for it or not sealed, or the system's.
    pub fn open(fd: &OwnedFd, size: u64) -> io::Result<Self> {
        let size = usize::try_from(size).map_err(io::Error::other)?;
        check_size(size)?;
        // SAFETY: fcntl on an open descriptor with integer arguments.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the ring's memory is not sealed against shrinking",
            ));
        }
        // SAFETY: an all-zero `stat` is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { core::mem::zeroed() };
        // SAFETY: `fd` is an open descriptor; `st` is writable.
        if unsafe { libc::fstat(fd.as_raw_fd(), &raw mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if u64::try_from(st.st_size).unwrap_or(0) < (HEAD_BYTES + size) as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the ring's memory is smaller than the {size} bytes announced"),
            ));
        }
        Self::map(fd.as_raw_fd(), size)
    }

    /// Maps head and data, then the data again right after it.
    fn map(fd: RawFd, size: usize) -> io::Result<Self> {
        let total = HEAD_BYTES + 2 * size;
        // SAFETY: a fresh private reservation, no address requested.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = base.cast::<u8>();
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let fixed = libc::MAP_SHARED | libc::MAP_FIXED;
        // SAFETY: both mappings replace parts of the reservation just made, which nothing else
        // uses; `fd` holds HEAD_BYTES + size bytes (made so, or checked by `open`).
        let mapped = unsafe {
            libc::mmap(base.cast(), HEAD_BYTES + size, rw, fixed, fd, 0) != libc::MAP_FAILED
                && libc::mmap(
                    base.add(HEAD_BYTES + size).cast(),
                    size,
                    rw,
                    fixed,
                    fd,
                    HEAD_BYTES as libc::off_t,
                ) != libc::MAP_FAILED
        };
        if !mapped {
            let e = io::Error::last_os_error();
            // SAFETY: the reservation is ours and nothing points into it.
            unsafe { libc::munmap(base.cast(), total) };
            return Err(e);
        }
        // A forked child does not inherit the ring: it is its parent's stream. Best effort.
        // SAFETY: advice on our own mapping.
        let _ = unsafe { libc::madvise(base.cast(), total, libc::MADV_DONTFORK) };
        Ok(Self { base, size })
    }

    fn head(&self) -> &Head {
        // SAFETY: the head page is mapped for as long as `self`, and every field of `Head` is
        // an atomic or padding, valid for any bytes (a fresh memfd is zeroes).
        unsafe { &*self.base.cast::<Head>() }
    }

    /// The data bytes from position `pos`, `len` of them (`len <= size`): contiguous thanks to
    /// the second mapping.
    fn at(&self, pos: u64, len: usize) -> *mut u8 {
        debug_assert!(len <= self.size);
        let offset = (pos as usize) & (self.size - 1);
        // SAFETY: offset < size and len <= size, so the range lies inside the two mappings of
        // the data.
        unsafe { self.base.add(HEAD_BYTES + offset) }
    }

    /// Its data bytes.
    #[must_use]
    pub fn size(&self) -> usize {
        self.size
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the whole range is this ring's mapping, and nothing borrows it past `self`.
        unsafe { libc::munmap(self.base.cast(), HEAD_BYTES + 2 * self.size) };
    }
}

fn check_size(size: usize) -> io::Result<()> {
    if size.is_power_of_two() && (MIN_RING..=MAX_RING).contains(&size) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "a ring of {size} bytes (a power of two from {MIN_RING} to {MAX_RING} expected)"
            ),
        ))
    }
}

/// Waits up to [`WAIT_MS`] for a byte on `socket`, and takes every byte there. `Ok(false)`:
/// the other side has gone (its end closed).
fn wait_for_bell(socket: RawFd) -> io::Result<bool> {
    let mut poll = libc::pollfd {
        fd: socket,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&raw mut poll, 1, WAIT_MS) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(true)
        } else {
            Err(e)
        };
    }
    if n == 0 {
        return Ok(true);
    }
    let mut bells = [0u8; 64];
    loop {
        // SAFETY: `bells` is writable for its length.
        let got = unsafe {
            libc::recv(
                socket,
                bells.as_mut_ptr().cast(),
                bells.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match got {
            0 => return Ok(false),
            n if n > 0 => {
                if n.unsigned_abs() < bells.len() {
                    return Ok(true);
                }
            }
            _ => {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(true),
                    _ if e.raw_os_error() == Some(libc::ECONNRESET) => Ok(false),
                    _ => Err(e),
                };
            }
        }
    }
}

/// Rings the other side's bell: one byte on `socket`. A full socket already holds a bell.
fn ring_bell(socket: RawFd) -> io::Result<()> {
    let bell = [1u8];
    // SAFETY: one readable byte.
    let n = unsafe {
        libc::send(
            socket,
            bell.as_ptr().cast(),
            1,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n >= 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(()),
        _ => Err(e),
    }
}

/// The traced process's end: frames are written into the ring and published in bulk.
pub struct RingWriter {
    ring: Ring,
    socket: RawFd,
    /// Bytes written, published or not.
    written: u64,
}

impl RingWriter {
    /// Writes into `ring`, with `socket` (which stays open as long as this writer writes) as the
    /// bell and the sign of the reader's going.
    #[must_use]
    pub fn new(ring: Ring, socket: RawFd) -> Self {
        let written = ring.head().write.load(Ordering::Relaxed);
        Self {
            ring,
            socket,
            written,
        }
    }

    /// Room for `len` more bytes after those written, waiting for the reader to take some if
    /// needed; the caller fills it and then calls [`RingWriter::commit`].
    ///
    /// # Errors
    /// The reader has gone, or `len` is more than the ring holds.
    pub fn reserve(&mut self, len: usize) -> io::Result<&mut [u8]> {
        if len > self.ring.size {
            return Err(io::Error::other("a frame larger than the ring"));
        }
        let fits = |w: &Self| {
            w.written + len as u64 - w.ring.head().read.load(Ordering::Acquire)
                <= w.ring.size as u64
        };
        if !fits(self) {
            // Whatever was written goes out first: the reader can only make room by taking it.
            self.publish()?;
            while !fits(self) {
                self.ring.head().writer_waits.store(1, Ordering::Relaxed);
                fence(Ordering::SeqCst);
                if fits(self) {
                    break;
                }
                if !wait_for_bell(self.socket)? {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
            }
        }
        let at = self.ring.at(self.written, len);
        // SAFETY: `at..at + len` lies in the mapped data (`len <= size`), and the reader does
        // not look at bytes past `write` nor before `read + size`, which `fits` checked.
        Ok(unsafe { core::slice::from_raw_parts_mut(at, len) })
    }

    /// The `len` bytes last reserved are written (not yet published).
    pub fn commit(&mut self, len: usize) {
        self.written += len as u64;
    }

    /// Writes `bytes` (a whole frame, or the rest of one) after those written: [`reserve`] and
    /// [`commit`] at once.
    ///
    /// [`reserve`]: RingWriter::reserve
    /// [`commit`]: RingWriter::commit
    ///
    /// # Errors
    /// As [`RingWriter::reserve`].
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reserve(bytes.len())?.copy_from_slice(bytes);
        self.commit(bytes.len());
        Ok(())
    }

    /// Bytes written but not yet published.
    #[must_use]
    pub fn unpublished(&self) -> u64 {
        self.written - self.ring.head().write.load(Ordering::Relaxed)
    }

    /// Lets the reader see everything written, and wakes it if it waits.
    ///
    /// # Errors
    /// The reader has gone.
    pub fn publish(&mut self) -> io::Result<()> {
        let head = self.ring.head();
        head.write.store(self.written, Ordering::Release);
        fence(Ordering::SeqCst);
        if head.reader_waits.load(Ordering::Relaxed) != 0 {
            head.reader_waits.store(0, Ordering::Relaxed);
            ring_bell(self.socket)?;
        }
        Ok(())
    }
}

/// heaplens's end: reads the frames as a buffered reader, from the ring's memory itself.
pub struct RingReader<S: AsRawFd> {
    ring: Ring,
    socket: S,
    /// Bytes consumed.
    pos: u64,
    /// Bytes published, as last read.
    end: u64,
    /// The writer's socket closed: once the ring is empty, the stream has ended.
    gone: bool,
}

impl<S: AsRawFd> RingReader<S> {
    /// Reads `ring`, with `socket` as the bell and the sign of the writer's going.
    pub fn new(ring: Ring, socket: S) -> Self {
        let pos = ring.head().read.load(Ordering::Relaxed);
        Self {
            ring,
            socket,
            pos,
            end: pos,
            gone: false,
        }
    }

    /// Bytes published and not consumed; an error if the writer claims more than the ring holds.
    fn available(&mut self) -> io::Result<usize> {
        let write = self.ring.head().write.load(Ordering::Acquire);
        let ahead = write.wrapping_sub(self.pos);
        if ahead > self.ring.size as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the ring's writer claims {ahead} bytes ahead in a ring of {}",
                    self.ring.size
                ),
            ));
        }
        self.end = write;
        Ok(ahead as usize)
    }
}

impl<S: AsRawFd> io::BufRead for RingReader<S> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        loop {
            let n = self.available()?;
            if n > 0 || self.gone {
                let at = self.ring.at(self.pos, n);
                // SAFETY: the `n` bytes from `pos` are published and the writer does not touch
                // them until `read` passes them; they lie in the mapped data (`n <= size`).
                return Ok(unsafe { core::slice::from_raw_parts(at, n) });
            }
            let head = self.ring.head();
            head.reader_waits.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if self.available()? > 0 {
                continue;
            }
            if !wait_for_bell(self.socket.as_raw_fd())? {
                // Whatever the writer published before its end closed is still read.
                self.gone = true;
            }
        }
    }

    fn consume(&mut self, amt: usize) {
        self.pos += amt.min((self.end - self.pos) as usize) as u64;
        let head = self.ring.head();
        head.read.store(self.pos, Ordering::Release);
        fence(Ordering::SeqCst);
        if head.writer_waits.load(Ordering::Relaxed) != 0 {
            head.writer_waits.store(0, Ordering::Relaxed);
            // A writer that has gone needs no bell; the next fill sees its end.
            let _ = ring_bell(self.socket.as_raw_fd());
        }
    }
}

impl<S: AsRawFd> io::Read for RingReader<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = io::BufRead::fill_buf(self)?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        io::BufRead::consume(self, n);
        Ok(n)
    }
}

/// Sends `bytes` on the Unix socket `socket` with `fd` attached (`SCM_RIGHTS`): the receiver
/// gets its own descriptor of the same file with the first of these bytes it reads.
///
/// # Errors
/// The system's; a short send is an error (the frame carrying a ring is small).
pub fn send_with_fd(socket: RawFd, bytes: &[u8], fd: RawFd) -> io::Result<()> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(core::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no address, no data yet).
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` has room for one control message holding one descriptor (CMSG_SPACE above),
    // so CMSG_FIRSTHDR is not null and CMSG_DATA has room for a RawFd.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(core::mem::size_of::<RawFd>() as u32) as _;
        libc::CMSG_DATA(cmsg).cast::<RawFd>().write_unaligned(fd);
    }
    loop {
        // SAFETY: `msg` points at `iov` and `control`, valid for the call; `socket` is a
        // connected socket of the caller's.
        let n = unsafe { libc::sendmsg(socket, &raw const msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return if n.unsigned_abs() == bytes.len() {
                Ok(())
            } else {
                Err(io::Error::other("the ring's frame went out in part"))
            };
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A Unix socket read with `recvmsg`, keeping a descriptor that comes with the bytes (the last
/// one, if several came; a reader of heaplens's streams expects one, with the ring frame).
pub struct FdReader<S: AsRawFd> {
    socket: S,
    fd: Option<OwnedFd>,
}

impl<S: AsRawFd> FdReader<S> {
    /// Reads `socket`.
    pub fn new(socket: S) -> Self {
        Self { socket, fd: None }
    }

    /// The socket.
    pub fn get_ref(&self) -> &S {
        &self.socket
    }

    /// The socket, given back.
    pub fn into_inner(self) -> S {
        self.socket
    }

    /// The descriptor that came with the bytes read so far, if one did.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fd.take()
    }
}

impl<S: AsRawFd> AsRawFd for FdReader<S> {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl<S: AsRawFd> io::Read for FdReader<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Room for a few descriptors: any beyond the first are closed, never leaked.
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is valid.
        let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = core::mem::size_of_val(&control) as _;
        let n = loop {
            // SAFETY: `msg` points at `buf` and `control`, both writable for their lengths.
            let n = unsafe {
                libc::recvmsg(
                    self.socket.as_raw_fd(),
                    &raw mut msg,
                    libc::MSG_CMSG_CLOEXEC,
                )
            };
            if n >= 0 {
                break n.unsigned_abs();
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        // SAFETY: `msg` was filled by recvmsg: the CMSG macros walk its control buffer within
        // `msg_controllen`, and each SCM_RIGHTS message holds `(len - CMSG_LEN(0)) / 4`
        // descriptors that are now ours.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..bytes / core::mem::size_of::<RawFd>() {
                        let fd = OwnedFd::from_raw_fd(data.add(i).read_unaligned());
                        self.fd = Some(fd); // an earlier one, if any, is closed
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Read};
    use std::os::unix::net::UnixStream;

    fn pair(size: usize) -> (RingWriter, RingReader<UnixStream>, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let (ring, fd) = Ring::create(size).unwrap();
        let theirs = Ring::open(&fd, size as u64).unwrap();
        let writer = RingWriter::new(ring, a.as_raw_fd());
        (writer, RingReader::new(theirs, b), a)
    }

    #[test]
    fn bytes_cross_the_ring_in_order_past_its_end_many_times_and_the_end_is_seen() {
        let (mut w, mut r, a) = pair(MIN_RING);
        let total: usize = 40 * MIN_RING;
        let writer = std::thread::spawn(move || {
            let mut sent = 0usize;
            let mut k = 0usize;
            while sent < total {
                // Frames of odd lengths, so they straddle the ring's end.
                let len = (1 + k * 7919 % 9000).min(total - sent);
                let frame: Vec<u8> = (sent..sent + len).map(|i| (i % 251) as u8).collect();
                w.write(&frame).unwrap();
                sent += len;
                k += 1;
                if k.is_multiple_of(3) {
                    w.publish().unwrap();
                }
            }
            w.publish().unwrap();
            drop(a); // the end
            w
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        let _w = writer.join().unwrap();
        assert_eq!(got.len(), total);
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    }

    #[test]
    fn unpublished_bytes_are_not_seen_and_a_vanished_writer_ends_the_stream() {
        let (mut w, mut r, a) = pair(MIN_RING);
        w.write(b"seen").unwrap();
        w.publish().unwrap();
        w.write(b"never published").unwrap();
        assert_eq!(w.unpublished(), 15);
        drop(a);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"seen");
        assert!(r.fill_buf().unwrap().is_empty());
    }

    #[test]
    fn a_writer_waits_for_room_and_learns_when_the_reader_has_gone() {
        let (mut w, r, _a) = pair(MIN_RING);
        w.write(&vec![7u8; MIN_RING - 10]).unwrap();
        w.publish().unwrap();
        drop(r); // its socket closes
        let e = w.reserve(100).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_writer_claiming_more_than_the_ring_holds_is_an_error_not_a_read_out_of_bounds() {
        let (w, mut r, _a) = pair(MIN_RING);
        w.ring
            .head()
            .write
            .store(3 * MIN_RING as u64, Ordering::Release);
        let e = r.fill_buf().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_descriptor_sent_with_bytes_arrives_with_them_and_maps_the_same_ring() {
        let (a, b) = UnixStream::pair().unwrap();
        let (ring, fd) = Ring::create(MIN_RING).unwrap();
        send_with_fd(a.as_raw_fd(), b"ring", fd.as_raw_fd()).unwrap();
        drop(fd);
        let mut r = std::io::BufReader::new(FdReader::new(b));
        let mut got = [0u8; 4];
        r.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ring");
        let theirs = r
            .get_mut()
            .take_fd()
            .expect("the descriptor came with the bytes");
        let theirs = Ring::open(&theirs, MIN_RING as u64).unwrap();
        let mut w = RingWriter::new(ring, a.as_raw_fd());
        w.write(b"shared").unwrap();
        w.publish().unwrap();
        let mut reader = RingReader::new(theirs, r.into_inner());
        assert_eq!(reader.fill_buf().unwrap(), b"shared");
    }

    #[test]
    fn sizes_and_files_from_a_peer_are_checked() {
        // A memfd that could shrink under the mapping is refused.
        // SAFETY: a NUL-terminated name; the descriptor made is owned below.
        let raw = unsafe { libc::memfd_create(c"unsealed".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: `raw` is a descriptor just made, owned by nobody else.
        let unsealed = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: fd of ours, integer length.
        let truncated = unsafe { libc::ftruncate(raw, 2 * MIN_RING as libc::off_t) };
        assert_eq!(truncated, 0);
        let e = Ring::open(&unsealed, MIN_RING as u64)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("sealed"), "{e}");
        let (_ring, fd) = Ring::create(MIN_RING).unwrap();
        assert!(
            Ring::open(&fd, 2 * MIN_RING as u64).is_err(),
            "larger than the file"
        );
        assert!(
            Ring::open(&fd, MIN_RING as u64 + 1).is_err(),
            "not a power of two"
        );
        assert!(Ring::open(&fd, 1 << 40).is_err(), "too large");
        assert!(Ring::open(&fd, MIN_RING as u64).is_ok());
    }
}
