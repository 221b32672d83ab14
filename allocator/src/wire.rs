//! The live stream between a traced process and `heaplens`: framing, and the socket sink that the
//! preload library starts when `HEAPLENS_SOCKET` names a socket.
//!
//! ```text
//! stream  = magic "HLSTREAM" | version u16 | frame*
//! frame   = type u8 | length u32 | payload[length]          (little-endian)
//!   1 Meta    JSON: pid, parent pid, command line, start time, allocator constants, the
//!             launch's token, whether events follow (`recorded`)
//!   2 Batch   heap u32 | events (32 bytes each, event.rs field order)
//!   3 End     the process is exiting normally
//!   4 Exit    i32: the status the process exits with (what it passed to `exit`, or returned
//!             from `main`), just before End when the C library told it
//!   5 Packed  heap u32 | count u32 | the batch's events packed (`crate::pack`, slack included),
//!             each `arg` against the previous event's (`Form::Previous`)
//!   6 Ring    size u64: the frames that follow are in a ring of `size` bytes in shared memory
//!             (`crate::ring`), whose descriptor comes with this frame (`SCM_RIGHTS`); the socket
//!             then carries only one-byte wake-ups, and its closing is the stream's end
//!   7 Packed  as 5, but an Alloc's `arg` against the batch's last Alloc's and any other
//!             event's against 0 (`Form::LastAlloc`)
//!   8 Packed  as 7, with the control words first (`Form::ControlsFirst`)
//! ```
//! Each frame carries one [`Message`] (`crate::batch`), the same the in-process path delivers.
//! Version 2 added the packed batch, which the socket sink sends instead of Batch (about 8
//! bytes an event on the socket instead of 32); a reader of version 2 reads version 1 streams
//! too, and a reader of version 1 refuses a version 2 stream by its version, not at its first
//! packed frame. Version 3 added the ring, which a traced process uses when it can make one
//! (packed batches go there, packed in place); without one it streams as version 2 did.
//! Version 4 packs an `Alloc`'s size against the last `Alloc`'s (frame 7 instead of 5): 13 % fewer
//! bytes on larson, in the ring and in `heaplens record`'s backlog. Version 5 puts a batch's
//! control words ahead of its values (frame 8 instead of 7): the same bytes, unpacked in half
//! the time. The frame's type says how a batch is packed, so a reader reads each packed frame
//! in a stream of any version.
//! A stream that stops without `End` means the process died (the launcher reports how). The
//! reader treats the stream as untrusted: lengths are capped before anything is allocated.

use std::io::{self, BufRead, Read, Write};

use crate::batch::{Batch, Message};
use crate::bin::{BIN_LARGE_MAX, block_size};
use crate::event::{EVENT_SIZE, Event};
use crate::pack::Form;

/// Stream magic.
pub const MAGIC: &[u8; 8] = b"HLSTREAM";
/// Stream version this build writes (and the newest it reads).
pub const VERSION: u16 = 5;
/// The oldest stream version this build reads (version 1 has no packed batches).
pub const OLDEST_VERSION: u16 = 1;
/// Largest frame a reader accepts (a full event buffer is 64 KiB).
pub const MAX_FRAME: usize = 16 << 20;
/// Environment variable naming the socket the preload library streams to.
pub const SOCKET_ENV: &str = "HEAPLENS_SOCKET";
/// Environment variable holding the launcher's pid: only its direct child streams (an `exec`
/// keeps the parent, so the program it becomes streams too); the program's own children, which
/// inherit the environment, only say who they are (see [`FOLLOW_ENV`]).
pub const PARENT_ENV: &str = "HEAPLENS_LAUNCHER_PID";
/// Environment variable holding the launch's token: a random string the launcher makes for each
/// launch and the processes it starts inherit. Every stream's metadata carries it (`"token"`),
/// and the launcher refuses a connection without it (as well as one from another user).
pub const TOKEN_ENV: &str = "HEAPLENS_TOKEN";
/// Environment variable set to `1` by `--follow-fork`: every process of the command streams,
/// those it execs and those it forks (which start their stream from the fork, with a census of
/// what they inherited). Without it a child of the program connects only to say who it is
/// (metadata with `"recorded":false`) and runs untraced.
pub const FOLLOW_ENV: &str = "HEAPLENS_FOLLOW_FORK";

const FRAME_META: u8 = 1;
const FRAME_BATCH: u8 = 2;
const FRAME_END: u8 = 3;
const FRAME_EXIT: u8 = 4;
const FRAME_PACKED: u8 = 5;
const FRAME_RING: u8 = 6;
const FRAME_PACKED_LAST_ALLOC: u8 = 7;
const FRAME_PACKED_CONTROLS_FIRST: u8 = 8;
/// A packed batch frame's header: type, length, heap, count.
const PACKED_HEAD: usize = 1 + 4 + 4 + 4;

/// Why a stream could not be read.
#[derive(Debug)]
pub enum WireError {
    /// The peer does not speak this protocol.
    NotHeaplens,
    /// Version mismatch.
    Version {
        /// What the peer sent.
        theirs: u16,
    },
    /// A frame is malformed.
    Corrupt(String),
    /// Reading failed (includes the peer closing mid-frame).
    Io(io::Error),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotHeaplens => f.write_str("the peer is not a heaplens stream (bad magic)"),
            Self::Version { theirs } => write!(
                f,
                "the traced process speaks heaplens stream version {theirs}, this heaplens reads versions {OLDEST_VERSION} to {VERSION}"
            ),
            Self::Corrupt(what) => write!(f, "corrupt heaplens stream: {what}"),
            Self::Io(e) => write!(f, "reading the heaplens stream failed: {e}"),
        }
    }
}

impl std::error::Error for WireError {}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Writes the stream header.
pub fn write_header(w: &mut impl Write) -> io::Result<()> {
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())
}

fn write_frame(w: &mut impl Write, kind: u8, parts: &[&[u8]]) -> io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len).map_err(|_| io::Error::other("frame too large"))?;
    w.write_all(&[kind])?;
    w.write_all(&len.to_le_bytes())?;
    for p in parts {
        w.write_all(p)?;
    }
    Ok(())
}

/// Writes a metadata frame.
pub fn write_meta(w: &mut impl Write, json: &str) -> io::Result<()> {
    write_frame(w, FRAME_META, &[json.as_bytes()])
}

/// Writes a batch frame.
pub fn write_batch(
    w: &mut impl Write,
    heap: u32,
    events: &[Event],
    scratch: &mut Vec<u8>,
) -> io::Result<()> {
    if let Some(bytes) = wire_bytes(events) {
        return write_frame(w, FRAME_BATCH, &[&heap.to_le_bytes(), bytes]);
    }
    scratch.clear();
    scratch.extend_from_slice(&heap.to_le_bytes());
    for e in events {
        scratch.extend_from_slice(&e.to_bytes());
    }
    write_frame(w, FRAME_BATCH, &[scratch])
}

/// Writes a packed batch frame (version 2): the batch's events packed in `room` (which keeps
/// its memory for the next batch), the frame's header before them, and all of it in one write.
pub fn write_packed_batch(
    w: &mut impl Write,
    heap: u32,
    events: &[Event],
    room: &mut Vec<u8>,
) -> io::Result<()> {
    let end = packed_frame_at(heap, events, room, 0)?;
    w.write_all(&room[..end])
}

/// Builds the packed batch frame of `events` in `room` at byte `at` (`room` grows to the most a
/// batch of this size may need there and never shrinks, so a collector that sends batches of one
/// size allocates once); returns where the frame ends.
fn packed_frame_at(
    heap: u32,
    events: &[Event],
    room: &mut Vec<u8>,
    at: usize,
) -> io::Result<usize> {
    let need = at + PACKED_HEAD + crate::pack::room_for(events.len());
    if room.len() < need {
        room.resize(need, 0);
    }
    Ok(at + packed_frame_in(heap, events, &mut room[at..])?)
}

/// Packs `events` of `heap` as a packed batch frame at the start of `room`, which has room for
/// the most they may need (`PACKED_HEAD + room_for(n)`); returns the frame's length.
fn packed_frame_in(heap: u32, events: &[Event], room: &mut [u8]) -> io::Result<usize> {
    let count = u32::try_from(events.len()).map_err(|_| io::Error::other("batch too large"))?;
    let used = crate::pack::pack_to(events, &mut room[PACKED_HEAD..])
        .ok_or_else(|| io::Error::other("no room to pack a batch"))?;
    let len = u32::try_from(8 + used).map_err(|_| io::Error::other("frame too large"))?;
    let head = &mut room[..PACKED_HEAD];
    head[0] = FRAME_PACKED_CONTROLS_FIRST;
    head[1..5].copy_from_slice(&len.to_le_bytes());
    head[5..9].copy_from_slice(&heap.to_le_bytes());
    head[9..13].copy_from_slice(&count.to_le_bytes());
    Ok(PACKED_HEAD + used)
}

/// Packed frames gathered up to this many bytes before they are sent together: one `send`, and
/// one wake-up of heaplens's reader, for several batches. The collector sends what it has when
/// it is about to wait, too, so a quiet program's last events are not held back.
#[cfg(feature = "hook")]
const GATHER_BYTES: usize = 256 << 10;

/// While buffers keep coming in, gathered frames wait up to this long (in ns) for more before
/// they are sent, though the collector pauses between buffers: sending at every pause woke
/// heaplens's reader every 80 us on a binary-trees run, and each wake-up took a core from the
/// program or its collector. A quiet program's events are sent when the collector waits.
#[cfg(feature = "hook")]
const HOLD_NS: u64 = 2_000_000;

/// Whether frames gathered since `since` wait for more: the collector is `busy` and they have
/// not waited [`HOLD_NS`] yet.
#[cfg(feature = "hook")]
fn holding(busy: bool, since: u64) -> bool {
    busy && crate::collector::monotonic_ns() - since < HOLD_NS
}

/// The events' wire form, in place: on a little-endian machine an event's memory is exactly
/// its wire form. `None` on a big-endian one.
fn wire_bytes(events: &[Event]) -> Option<&[u8]> {
    #[cfg(target_endian = "little")]
    {
        // SAFETY: `Event` is `repr(C)`: 32 bytes of plain integers without padding (see the
        // layout assertions in `event`); the slice covers exactly the events' memory.
        Some(unsafe {
            core::slice::from_raw_parts(events.as_ptr().cast::<u8>(), events.len() * EVENT_SIZE)
        })
    }
    #[cfg(not(target_endian = "little"))]
    {
        let _ = events;
        None
    }
}

/// Sends the ring frame of `ring` on the socket `socket`, with the ring's descriptor `fd`: the
/// frames after it go into the ring.
///
/// # Errors
/// The socket's.
pub fn send_ring(
    socket: std::os::fd::RawFd,
    ring: &crate::ring::Ring,
    fd: &std::os::fd::OwnedFd,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut frame = Vec::new();
    write_frame(
        &mut frame,
        FRAME_RING,
        &[&(ring.size() as u64).to_le_bytes()],
    )?;
    crate::ring::send_with_fd(socket, &frame, fd.as_raw_fd())
}

/// Writes the end frame.
pub fn write_end(w: &mut impl Write) -> io::Result<()> {
    write_frame(w, FRAME_END, &[])
}

/// Writes the exit frame: the process exits with `status`.
pub fn write_exit(w: &mut impl Write, status: i32) -> io::Result<()> {
    write_frame(w, FRAME_EXIT, &[&status.to_le_bytes()])
}

/// Reads the stream header.
pub fn read_header(r: &mut impl Read) -> Result<(), WireError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(WireError::NotHeaplens);
    }
    let mut v = [0u8; 2];
    r.read_exact(&mut v)?;
    let theirs = u16::from_le_bytes(v);
    if !(OLDEST_VERSION..=VERSION).contains(&theirs) {
        return Err(WireError::Version { theirs });
    }
    Ok(())
}

/// A frame as the recorder's reader takes it: of a packed batch, only its header, and the
/// packed events are read next, into memory of the reader's choosing ([`read_packed_direct`];
/// the recorder's backlog keeps them packed until its encoder unpacks them).
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Any other frame, or a batch that came unpacked (from a version 1 peer).
    Message(Message),
    /// A packed batch frame's header: its `bytes` follow in the stream.
    Packed(PackedHead),
    /// The rest of the stream is in a ring of this many bytes, whose descriptor came with this
    /// frame ([`crate::ring::FdReader::take_fd`]).
    Ring(u64),
}

/// The header of a packed batch frame, checked: `bytes` can hold `count` packed events (their
/// contents are checked when they are unpacked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedHead {
    /// The heap of the batch.
    pub heap: u32,
    /// How many events.
    pub count: usize,
    /// The packed events' bytes, slack included, that follow.
    pub bytes: usize,
    /// How they are packed (the frame's type).
    pub form: Form,
}

/// Reads the next frame, as the [`Message`] it carries (a packed batch unpacked); `Ok(None)`
/// when the stream ends cleanly between frames.
pub fn read_frame(r: &mut impl BufRead) -> Result<Option<Message>, WireError> {
    read_frame_reusing(r, None)
}

/// [`read_frame`], filling `spare` (an event vector given back by whoever consumed an earlier
/// batch) instead of allocating a new one when a batch fits in it.
pub fn read_frame_reusing(
    r: &mut impl BufRead,
    spare: Option<Vec<Event>>,
) -> Result<Option<Message>, WireError> {
    let mut spare = spare;
    match read_frame_with(r, &mut spare, None)? {
        None => Ok(None),
        Some(Incoming::Ring(_)) => Err(WireError::Corrupt(
            "a ring frame where a stream cannot switch to its ring".into(),
        )),
        Some(incoming) => message_of(r, incoming, spare).map(Some),
    }
}

/// The message `incoming` carries: a packed batch's bytes are read from `r` and unpacked (into
/// `spare` if given).
fn message_of(
    r: &mut impl Read,
    incoming: Incoming,
    spare: Option<Vec<Event>>,
) -> Result<Message, WireError> {
    match incoming {
        Incoming::Message(m) => Ok(m),
        Incoming::Ring(_) => Err(WireError::Corrupt("a second ring frame".into())),
        Incoming::Packed(head) => {
            let mut bytes = vec![0u8; head.bytes];
            r.read_exact(&mut bytes)?;
            let mut events = spare.unwrap_or_default();
            unpack_wire(&bytes, head.count, head.form, &mut events)?;
            Ok(Message::Batch(Batch {
                heap: head.heap,
                events,
            }))
        }
    }
}

/// A traced process's connection as a reader reads it: buffered, keeping the descriptor of the
/// ring that may come with the ring frame.
pub type SocketReader = io::BufReader<crate::ring::FdReader<std::os::unix::net::UnixStream>>;

/// After a ring frame of `size` bytes on `r`: the ring, mapped from the descriptor that came
/// with it, read with the socket as its bell (the socket carries nothing else from then on).
///
/// # Errors
/// No descriptor came, the ring is not what the frame says, or the system's.
pub fn switch_to_ring(
    r: &mut SocketReader,
    size: u64,
) -> Result<crate::ring::RingReader<std::os::unix::net::UnixStream>, WireError> {
    let fd = r
        .get_mut()
        .take_fd()
        .ok_or_else(|| WireError::Corrupt("a ring frame without the ring's descriptor".into()))?;
    let ring = crate::ring::Ring::open(&fd, size).map_err(WireError::Io)?;
    // Wake-ups already buffered mean nothing.
    let buffered = r.buffer().len();
    r.consume(buffered);
    let socket = r.get_ref().get_ref().try_clone().map_err(WireError::Io)?;
    Ok(crate::ring::RingReader::new(ring, socket))
}

/// A whole stream from a connected socket, message by message: the header checked, packed
/// batches unpacked, the frames after a ring frame read from the ring. For tools and tests
/// (heaplens's recorder reads with fewer copies).
pub struct Messages {
    socket: SocketReader,
    ring: Option<crate::ring::RingReader<std::os::unix::net::UnixStream>>,
}

impl Messages {
    /// Reads `stream`'s header.
    ///
    /// # Errors
    /// Not a heaplens stream, a version this build does not read, or the socket's.
    pub fn new(stream: std::os::unix::net::UnixStream) -> Result<Self, WireError> {
        let mut socket = io::BufReader::new(crate::ring::FdReader::new(stream));
        read_header(&mut socket)?;
        Ok(Self { socket, ring: None })
    }

    /// The next message; `None` once the stream has ended.
    ///
    /// # Errors
    /// A damaged stream, or the socket's.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        loop {
            if let Some(ring) = &mut self.ring {
                return read_frame(ring);
            }
            match read_frame_incoming(&mut self.socket, None)? {
                None => return Ok(None),
                Some(Incoming::Ring(size)) => {
                    self.ring = Some(switch_to_ring(&mut self.socket, size)?);
                }
                Some(incoming) => return message_of(&mut self.socket, incoming, None).map(Some),
            }
        }
    }
}

/// Unpacks `count` events packed in `bytes` (slack included, in `form`) that came
/// from a peer into `events`: a clear error if they are damaged.
pub fn unpack_wire(
    bytes: &[u8],
    count: usize,
    form: Form,
    events: &mut Vec<Event>,
) -> Result<(), WireError> {
    crate::pack::unpack_bytes(bytes, count, form, events).ok_or_else(|| damaged(bytes, count))
}

/// The error for `count` events packed in `bytes` that do not unpack.
pub fn damaged(bytes: &[u8], count: usize) -> WireError {
    WireError::Corrupt(format!(
        "a packed batch of {count} events in {} bytes is damaged",
        bytes.len()
    ))
}

/// The next frame from a buffered file descriptor (the recorder's socket). A batch's events
/// that are not in the buffer yet are read from the descriptor straight into the batch's
/// memory, not into the buffer first and copied from there (that copy was an eighth of the
/// recorder's reader thread's time); an unpacked batch fills `spare` if it fits. Of a packed
/// batch only the header is read: its bytes must be read next, with [`read_packed_direct`].
pub fn read_frame_direct<R: Read + std::os::fd::AsRawFd>(
    r: &mut io::BufReader<R>,
    spare: Option<Vec<Event>>,
) -> Result<Option<Incoming>, WireError> {
    let mut spare = spare;
    read_frame_with(r, &mut spare, Some(read_direct::<R>))
}

/// The next frame from any buffered reader (a ring's, where the bytes already sit in memory):
/// as [`read_frame_direct`] gives it, an unpacked batch copied once from the reader's buffer
/// into `spare` if it fits.
pub fn read_frame_incoming(
    r: &mut impl BufRead,
    spare: Option<Vec<Event>>,
) -> Result<Option<Incoming>, WireError> {
    let mut spare = spare;
    read_frame_with(r, &mut spare, None)
}

/// Reads a packed batch's bytes (after [`read_frame_direct`] gave its header) into `dst`, which
/// is exactly `head.bytes` long: past the buffer, straight from the descriptor.
pub fn read_packed_direct<R: Read + std::os::fd::AsRawFd>(
    r: &mut io::BufReader<R>,
    dst: &mut [u8],
) -> io::Result<()> {
    // SAFETY: `dst` is valid for writes of its length and, a slice of the caller's, does not
    // overlap the reader's buffer.
    unsafe { read_into(r, dst.as_mut_ptr(), dst.len(), Some(read_direct::<R>)) }
}

/// Reads up to `len` bytes into `dst`: from `r`'s buffer if it holds any, else from its
/// descriptor with one `read` (the buffer stays empty). Returns the bytes read (0: the end).
///
/// # Safety
///
/// `dst` must be valid for writes of `len` bytes and not overlap `r`'s buffer.
unsafe fn read_direct<R: Read + std::os::fd::AsRawFd>(
    r: &mut io::BufReader<R>,
    dst: *mut u8,
    len: usize,
) -> io::Result<usize> {
    let buffered = r.buffer();
    if !buffered.is_empty() {
        let k = buffered.len().min(len);
        // SAFETY: `dst` has room for `len >= k` bytes (the caller's contract) and does not
        // overlap the buffer; `buffered` holds at least `k` bytes.
        unsafe { core::ptr::copy_nonoverlapping(buffered.as_ptr(), dst, k) };
        r.consume(k);
        return Ok(k);
    }
    loop {
        // SAFETY: `dst` is valid for writes of `len` bytes (the caller's contract); `read`
        // writes at most that many into it and touches no other memory of ours.
        let n = unsafe { libc::read(r.get_ref().as_raw_fd(), dst.cast(), len) };
        if n >= 0 {
            return Ok(n.unsigned_abs());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A way to read bytes into memory of the caller's past a reader's buffer ([`read_direct`]).
type Direct<R> = unsafe fn(&mut R, *mut u8, usize) -> io::Result<usize>;

fn read_frame_with<R: BufRead>(
    r: &mut R,
    spare: &mut Option<Vec<Event>>,
    direct: Option<Direct<R>>,
) -> Result<Option<Incoming>, WireError> {
    let mut head = [0u8; 5];
    match read_full(r, &mut head)? {
        0 => return Ok(None),
        5 => {}
        n => {
            return Err(WireError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("stream cut inside a frame header ({n} of 5 bytes)"),
            )));
        }
    }
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(WireError::Corrupt(format!(
            "frame of {len} bytes (at most {MAX_FRAME})"
        )));
    }
    if head[0] == FRAME_BATCH {
        if len < 4 || !(len - 4).is_multiple_of(EVENT_SIZE) {
            return Err(WireError::Corrupt(format!(
                "batch frame of {len} bytes is not a heap id plus whole events"
            )));
        }
        let mut heap = [0u8; 4];
        r.read_exact(&mut heap)?;
        let events = read_events(r, (len - 4) / EVENT_SIZE, spare.take(), direct)?;
        return Ok(Some(Incoming::Message(Message::Batch(Batch {
            heap: u32::from_le_bytes(heap),
            events,
        }))));
    }
    if let Some(form) = match head[0] {
        FRAME_PACKED => Some(Form::Previous),
        FRAME_PACKED_LAST_ALLOC => Some(Form::LastAlloc),
        FRAME_PACKED_CONTROLS_FIRST => Some(Form::ControlsFirst),
        _ => None,
    } {
        if len < 8 + crate::pack::SLACK {
            return Err(WireError::Corrupt(format!(
                "packed batch frame of {len} bytes (at least {} with no events)",
                8 + crate::pack::SLACK
            )));
        }
        let mut ids = [0u8; 8];
        r.read_exact(&mut ids)?;
        let heap = u32::from_le_bytes([ids[0], ids[1], ids[2], ids[3]]);
        let count = u32::from_le_bytes([ids[4], ids[5], ids[6], ids[7]]) as usize;
        let bytes = len - 8;
        if !crate::pack::fits(bytes, count) {
            return Err(WireError::Corrupt(format!(
                "a packed batch frame of {len} bytes cannot hold {count} events"
            )));
        }
        return Ok(Some(Incoming::Packed(PackedHead {
            heap,
            count,
            bytes,
            form,
        })));
    }
    if head[0] == FRAME_RING {
        let mut size = [0u8; 8];
        if len != size.len() {
            return Err(WireError::Corrupt(format!(
                "ring frame of {len} bytes (a ring's size is 8)"
            )));
        }
        r.read_exact(&mut size)?;
        return Ok(Some(Incoming::Ring(u64::from_le_bytes(size))));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    let message = match head[0] {
        FRAME_META => String::from_utf8(payload)
            .map(Message::Meta)
            .map_err(|_| WireError::Corrupt("metadata is not UTF-8".into()))?,
        FRAME_END => Message::End,
        FRAME_EXIT => match <[u8; 4]>::try_from(&payload[..]) {
            Ok(b) => Message::Exit(i32::from_le_bytes(b)),
            Err(_) => {
                return Err(WireError::Corrupt(format!(
                    "exit frame of {len} bytes (an exit status is 4)"
                )));
            }
        },
        other => return Err(WireError::Corrupt(format!("unknown frame type {other}"))),
    };
    Ok(Some(Incoming::Message(message)))
}

/// Reads exactly `total` bytes into `dst`: through `direct` past the reader's buffer when
/// given, else out of the buffer.
///
/// # Safety
///
/// `dst` must be valid for writes of `total` bytes and must not overlap `r`'s buffer.
unsafe fn read_into<R: BufRead>(
    r: &mut R,
    dst: *mut u8,
    total: usize,
    direct: Option<Direct<R>>,
) -> io::Result<()> {
    let mut filled = 0;
    while filled < total {
        if let Some(read) = direct {
            // SAFETY: `dst + filled` has room for `total - filled` bytes (the caller's
            // contract), outside the reader's buffer.
            let k = match unsafe { read(r, dst.add(filled), total - filled) } {
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if k == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            filled += k;
            continue;
        }
        let avail = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let k = avail.len().min(total - filled);
        // SAFETY: `dst` has room for `total` bytes, of which `filled..filled + k` lie inside
        // (the caller's contract); `avail` is the reader's buffer, which `dst` does not overlap.
        unsafe { core::ptr::copy_nonoverlapping(avail.as_ptr(), dst.add(filled), k) };
        r.consume(k);
        filled += k;
    }
    Ok(())
}

/// `n` events in their wire form (32 bytes each, little-endian), copied straight from the
/// reader's buffer into place (the vector is not zeroed first: that cost the recorder's reader
/// thread a fifth of its time), into `spare` if it has room. The caller has bounded `n` (by the
/// frame limit).
fn read_events<R: BufRead>(
    r: &mut R,
    n: usize,
    spare: Option<Vec<Event>>,
    direct: Option<Direct<R>>,
) -> io::Result<Vec<Event>> {
    let mut events = spare
        .filter(|v| v.capacity() >= n)
        .unwrap_or_else(|| Vec::with_capacity(n));
    events.clear();
    #[cfg(target_endian = "little")]
    {
        let dst = events.as_mut_ptr().cast::<u8>();
        // SAFETY: the vector's own allocation has room for `n` events (`n * EVENT_SIZE`
        // bytes) and is not the reader's buffer.
        unsafe { read_into(r, dst, n * EVENT_SIZE, direct)? };
        // SAFETY: every byte of the `n` events is written above; `Event` is `repr(C)`, 32 bytes
        // of plain integers without padding (see the layout assertions in `event`), so any bytes
        // make a valid `Event`, and on a little-endian machine its memory is its wire form.
        unsafe { events.set_len(n) };
    }
    #[cfg(not(target_endian = "little"))]
    {
        let _ = direct;
        let mut b = [0u8; EVENT_SIZE];
        for _ in 0..n {
            r.read_exact(&mut b)?;
            events.push(Event::from_bytes(&b));
        }
    }
    Ok(events)
}

/// Reads until `buf` is full or the stream ends (retrying interrupted reads); returns the bytes
/// read. Shared with the trace reader.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The process metadata as JSON: pid, command line, start time and the allocator's constants.
pub fn metadata_json() -> String {
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| json_string(&String::from_utf8_lossy(a)))
        .collect();
    let start_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let bins: Vec<String> = (1..=BIN_LARGE_MAX)
        .map(|b| block_size(b).to_string())
        .collect();
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    format!(
        "{{\"pid\":{},\"parent_pid\":{parent},\"command\":[{}],\"start_unix_ns\":{},\"segment_size\":{},\"small_page_size\":{},\"medium_page_size\":{},\"segment_info_size\":{},\"bin_block_sizes\":[{}]}}",
        std::process::id(),
        args.join(","),
        start_ns,
        crate::SEGMENT_SIZE,
        crate::SMALL_PAGE_SIZE,
        crate::MEDIUM_PAGE_SIZE,
        crate::segment::INFO_SIZE,
        bins.join(",")
    )
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes to a socket with `MSG_NOSIGNAL`: a reader that went away gives an error, not a SIGPIPE
/// that would kill the traced program.
pub struct SocketWriter(pub std::os::unix::net::UnixStream);

impl Write for SocketWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: `buf` is valid for `buf.len()` bytes; the fd is our connected socket.
            let n = unsafe {
                libc::send(
                    self.0.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                return Ok(n.cast_unsigned());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        loop {
            // SAFETY: an all-zero msghdr is valid (no address, no control data).
            let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
            // `IoSlice` is ABI-compatible with `iovec` on Unix; sendmsg only reads them.
            msg.msg_iov = bufs.as_ptr().cast_mut().cast();
            msg.msg_iovlen = bufs.len() as _;
            // SAFETY: `msg` points at `bufs`, valid for the call; the fd is our connected socket.
            let n =
                unsafe { libc::sendmsg(self.0.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL) };
            if n >= 0 {
                return Ok(n.cast_unsigned());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The user id and process id of the process at the other end of a Unix socket.
pub fn peer_cred(fd: std::os::fd::RawFd) -> io::Result<(u32, i32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = core::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid out-parameters of the right size for SO_PEERCRED.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok((cred.uid, cred.pid))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The user id of the process at the other end of a Unix socket.
pub fn peer_uid(fd: std::os::fd::RawFd) -> io::Result<u32> {
    peer_cred(fd).map(|(uid, _)| uid)
}

/// The real user id of this process.
pub fn my_uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// What the launcher's environment said, read once at load: a forked child reconnects from it
/// (reading the environment there could wait on a lock a thread of the parent held).
#[cfg(feature = "hook")]
struct Launch {
    socket: std::path::PathBuf,
    token: String,
    follow: bool,
}

#[cfg(feature = "hook")]
static LAUNCH: std::sync::OnceLock<Launch> = std::sync::OnceLock::new();
/// The socket this process streams to (-1: none): a forked child closes its copy.
#[cfg(feature = "hook")]
static STREAM_FD: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(-1);

/// Starts streaming to the socket named by `HEAPLENS_SOCKET`, if set: connect, send the header
/// and metadata, start the collector (lossless, census every second) with a sink that writes
/// batches, and end the stream at exit. Returns whether streaming started. A peer that goes away
/// stops the stream; the process runs on. A descendant of the launched program streams only with
/// [`FOLLOW_ENV`]; otherwise it sends its metadata alone, so the launcher can say it was not
/// recorded.
#[cfg(feature = "hook")]
pub fn stream_from_env() -> bool {
    let Some(socket) = std::env::var_os(SOCKET_ENV) else {
        return false;
    };
    let launch = LAUNCH.get_or_init(|| Launch {
        socket: socket.into(),
        token: std::env::var(TOKEN_ENV).unwrap_or_default(),
        follow: std::env::var(FOLLOW_ENV).is_ok_and(|v| v == "1"),
    });
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let launcher = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok());
    if launcher.is_some_and(|l| l != parent) && !launch.follow {
        announce(launch);
        return false;
    }
    connect_and_stream(launch)
}

/// In the child of a `fork()` (its handler): the parent's connection is the parent's, so the
/// child closes its copy; with [`FOLLOW_ENV`] it starts a stream of its own, whose first census
/// is what it inherited, else it only says who it is.
#[cfg(feature = "hook")]
pub(crate) fn after_fork_child() {
    let fd = STREAM_FD.swap(-1, core::sync::atomic::Ordering::AcqRel);
    if fd >= 0 {
        // SAFETY: the fd was our connection's; the parent's sink, which owns it, does not run in
        // the child (its collector thread did not come along).
        unsafe { libc::close(fd) };
    }
    let Some(launch) = LAUNCH.get() else {
        return;
    };
    let _ = std::panic::catch_unwind(|| {
        if launch.follow {
            connect_and_stream(launch);
        } else {
            announce(launch);
        }
    });
}

/// The metadata of this process for the launcher: [`metadata_json`] with the launch's token and
/// whether a stream follows.
#[cfg(feature = "hook")]
fn launch_meta(launch: &Launch, recorded: bool) -> String {
    let mut json = metadata_json();
    json.pop(); // the closing brace
    json.push_str(&format!(
        ",\"token\":{},\"recorded\":{recorded}}}",
        json_string(&launch.token)
    ));
    json
}

/// Tells the launcher this process exists and is not recorded: header and metadata, then close.
#[cfg(feature = "hook")]
fn announce(launch: &Launch) {
    if let Ok(stream) = std::os::unix::net::UnixStream::connect(&launch.socket) {
        let mut head = Vec::new();
        if write_header(&mut head)
            .and_then(|()| write_meta(&mut head, &launch_meta(launch, false)))
            .is_ok()
        {
            let _ = SocketWriter(stream).write_all(&head);
        }
    }
}

/// Connects to the launcher and starts the collector with a sink writing to the socket.
#[cfg(feature = "hook")]
fn connect_and_stream(launch: &Launch) -> bool {
    use std::os::unix::net::UnixStream;
    let Ok(stream) = UnixStream::connect(&launch.socket) else {
        return false;
    };
    if !start_stream(stream, &launch_meta(launch, true), false, true) {
        return false;
    }
    static AT_EXIT: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if !AT_EXIT.swap(true, core::sync::atomic::Ordering::AcqRel) {
        // A forked child inherits the registration.
        exit_status::at_exit(end_stream_at_exit);
    }
    true
}

/// Streams to the connected `stream`: sends the header and `meta`, then starts the collector
/// (lossless, a census every `HEAPLENS_CENSUS_MS`) with a sink that writes batches and, at the
/// end, the end frame, after which it closes the socket. `running`: the program ran with the
/// hook off until now (see [`crate::collector::start_while_running`]). `ring`: the frames go
/// into a ring in shared memory if one can be made (see [`crate::ring`]), else on the socket
/// (`heaplens attach` keeps the socket: the attach thread reads it to learn when heaplens
/// detaches, where the ring's wake-ups would go). Returns whether streaming started.
#[cfg(feature = "hook")]
pub fn start_stream(
    stream: std::os::unix::net::UnixStream,
    meta: &str,
    running: bool,
    ring: bool,
) -> bool {
    use std::os::fd::AsRawFd;
    // A deep socket buffer (4 MiB, Linux's usual ceiling for a user): the collector hands a
    // burst over without waiting while heaplens's reader is off the CPU. With the default
    // (about 200 KiB) the collector of a 2-thread program spent most of its time blocked in
    // sendmsg on a loaded 2-core machine, and the program waited for it.
    let sndbuf: libc::c_int = 4 << 20;
    // SAFETY: the fd is our connected socket; `sndbuf` is a c_int of the size given. Best
    // effort: a smaller buffer only means more waiting.
    let _ = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const sndbuf).cast(),
            core::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let fd = stream.as_raw_fd();
    let mut socket = SocketWriter(stream);
    let mut head = Vec::new();
    if write_header(&mut head)
        .and_then(|()| write_meta(&mut head, meta))
        .and_then(|()| socket.write_all(&head))
        .is_err()
    {
        return false;
    }
    // The frames go into a ring in shared memory if the system gives us one (its descriptor
    // rides on the ring frame), else on the socket.
    let made = if ring {
        crate::ring::Ring::create(crate::ring::RING_BYTES).ok()
    } else {
        None
    };
    let sink = match made {
        Some((ring, ring_fd)) => {
            if send_ring(fd, &ring, &ring_fd).is_err() {
                return false;
            }
            ring_sink(crate::ring::RingWriter::new(ring, fd), socket)
        }
        None => socket_sink(socket),
    };
    drop(head);
    let config = crate::collector::Config {
        lossless: true,
        census_every_ms: crate::options::census_ms(),
        // 128 full buffers (8 MiB, 260 k events) may wait for the collector: with 64, a
        // binary-trees program (200 M events/s) found the channel full whenever the collector
        // slept between polls, and ran 0.545 s under `record` against 0.48 s with 128 (0.30 s
        // plain; 6 alternating runs each).
        channel_buffers: 128,
    };
    let started = if running {
        crate::collector::start_while_running(config, sink)
    } else {
        crate::collector::start(config, sink)
    };
    if started.is_err() {
        return false;
    }
    STREAM_FD.store(fd, core::sync::atomic::Ordering::Release);
    true
}

/// A sink writing packed batch frames into the ring, published together up to
/// [`GATHER_BYTES`] (or [`HOLD_NS`] while the collector is busy, or when it waits); at the end,
/// the exit and end frames, then the socket closes.
#[cfg(feature = "hook")]
fn ring_sink(mut ring: crate::ring::RingWriter, socket: SocketWriter) -> crate::collector::Sink {
    let mut socket = Some(socket);
    // When the first of the unpublished frames was written.
    let mut since = 0;
    Box::new(move |handed| {
        use crate::collector::Handed;
        if socket.is_none() {
            return false;
        }
        let r = match handed {
            Handed::Batch(b) => {
                if ring.unpublished() == 0 {
                    since = crate::collector::monotonic_ns();
                }
                ring_batch(&mut ring, b.heap, b.events).and_then(|()| {
                    if ring.unpublished() >= GATHER_BYTES as u64 {
                        ring.publish()
                    } else {
                        Ok(())
                    }
                })
            }
            Handed::Idle { busy } if ring.unpublished() == 0 || holding(busy, since) => Ok(()),
            Handed::Idle { .. } => ring.publish(),
            Handed::End => {
                // The exit and end frames, whole, as the socket would carry them.
                let mut last = Vec::new();
                let r = exit_status::get()
                    .map_or(Ok(()), |st| write_exit(&mut last, st))
                    .and_then(|()| write_end(&mut last))
                    .and_then(|()| ring.write(&last))
                    .and_then(|()| ring.publish());
                // The socket closes: the reader sees the stream end once it has read the ring.
                socket = None;
                r
            }
        };
        r.is_ok()
    })
}

/// Events in one batch frame in the ring at most: 16 Ki, at most 557 KiB packed (a census can
/// hand over more at once; it goes as consecutive batches of the same heap).
#[cfg(feature = "hook")]
const RING_BATCH_EVENTS: usize = 16 << 10;

/// Writes `events` of `heap` into the ring as packed batch frames, packed in place.
#[cfg(feature = "hook")]
fn ring_batch(ring: &mut crate::ring::RingWriter, heap: u32, events: &[Event]) -> io::Result<()> {
    for part in events.chunks(RING_BATCH_EVENTS) {
        let room = ring.reserve(PACKED_HEAD + crate::pack::room_for(part.len()))?;
        let end = packed_frame_in(heap, part, room)?;
        ring.commit(end);
    }
    Ok(())
}

/// A sink writing packed batch frames to the socket (where no ring could be made): each batch
/// packed (about 8 bytes an event instead of 32: the kernel copies a quarter of the bytes, here
/// and in heaplens), gathered with the next ones up to [`GATHER_BYTES`] (or [`HOLD_NS`] while
/// the collector is busy, or until it waits), and sent in one `send`; at the end, the exit and
/// end frames, then the socket closes.
#[cfg(feature = "hook")]
fn socket_sink(socket: SocketWriter) -> crate::collector::Sink {
    // The room they are packed in grows on the collector's own (untraced) thread, at its first
    // batch: made here, it would sit on the program's heap and show up as the program's memory.
    let mut room = Vec::new();
    let mut gathered = 0;
    // When the first of the gathered frames was packed.
    let mut since = 0;
    let mut socket = Some(socket);
    Box::new(move |handed| {
        use crate::collector::Handed;
        let Some(s) = socket.as_mut() else {
            return false;
        };
        let r = match handed {
            Handed::Batch(b) => {
                if gathered == 0 {
                    since = crate::collector::monotonic_ns();
                }
                packed_frame_at(b.heap, b.events, &mut room, gathered).and_then(|end| {
                    gathered = end;
                    if gathered < GATHER_BYTES {
                        return Ok(());
                    }
                    gathered = 0;
                    s.write_all(&room[..end])
                })
            }
            Handed::Idle { .. } if gathered == 0 => Ok(()),
            Handed::Idle { busy } if holding(busy, since) => Ok(()),
            Handed::Idle { .. } => {
                let end = std::mem::take(&mut gathered);
                s.write_all(&room[..end])
            }
            Handed::End => {
                // The end: the socket closes, so the reader sees the stream end here (the
                // collector's state, which holds this sink, is never freed).
                let end = std::mem::take(&mut gathered);
                let r = s
                    .write_all(&room[..end])
                    .and_then(|()| exit_status::get().map_or(Ok(()), |st| write_exit(s, st)))
                    .and_then(|()| write_end(s));
                socket = None;
                r
            }
        };
        r.is_ok()
    })
}

/// The status the process exits with, as the C library passes it to exit handlers (`on_exit`),
/// for the stream's Exit frame: the launcher knows only its own child's status, and with
/// `--follow-fork` the other processes' traces would not say how they ended.
#[cfg(feature = "hook")]
pub(crate) mod exit_status {
    use core::sync::atomic::{AtomicI64, Ordering::Relaxed};

    /// `i64::MIN` until the process exits through `exit` (or returns from `main`).
    static STATUS: AtomicI64 = AtomicI64::new(i64::MIN);

    #[cfg(target_env = "gnu")]
    unsafe extern "C" {
        /// glibc's `on_exit(3)`: like `atexit`, and the handler receives the exit status.
        fn on_exit(
            f: extern "C" fn(libc::c_int, *mut libc::c_void),
            arg: *mut libc::c_void,
        ) -> libc::c_int;
    }

    /// Notes the status, then runs the handler `arg` is.
    #[cfg(target_env = "gnu")]
    extern "C" fn noting(status: libc::c_int, arg: *mut libc::c_void) {
        STATUS.store(i64::from(status), Relaxed);
        // SAFETY: `at_exit` passed an `extern "C" fn()` as `arg`; function and data pointers
        // have the same size and representation on the platforms glibc runs on.
        let handler: extern "C" fn() = unsafe { core::mem::transmute(arg) };
        handler();
    }

    /// Registers `handler` to run at exit (as `atexit`) with the exit status known to [`get`]
    /// while it runs: every exit handler that ends a stream is registered this way, so that
    /// whichever runs first knows the status (glibc only; elsewhere it stays unknown).
    pub(crate) fn at_exit(handler: extern "C" fn()) {
        #[cfg(target_env = "gnu")]
        // SAFETY: `noting` never unwinds and receives `handler` back as its argument.
        unsafe {
            on_exit(noting, handler as *mut libc::c_void);
        }
        #[cfg(not(target_env = "gnu"))]
        // SAFETY: registering an extern "C" fn that never unwinds.
        unsafe {
            libc::atexit(handler);
        }
    }

    /// The exit status, once the process is exiting.
    pub(super) fn get() -> Option<i32> {
        i32::try_from(STATUS.load(Relaxed)).ok()
    }
}

#[cfg(feature = "hook")]
extern "C" fn end_stream_at_exit() {
    crate::collector::shutdown();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_header(&mut buf).unwrap();
        write_meta(&mut buf, "{\"pid\":1}").unwrap();
        let ev = Event {
            kind: EventKind::Alloc as u8,
            addr: 0x1000,
            arg: 32,
            time: 5,
            ..Event::default()
        };
        write_batch(&mut buf, 7, &[ev, ev], &mut Vec::new()).unwrap();
        write_exit(&mut buf, -3).unwrap();
        write_end(&mut buf).unwrap();
        let mut r = &buf[..];
        read_header(&mut r).unwrap();
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some(Message::Meta("{\"pid\":1}".into()))
        );
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some(Message::Batch(Batch {
                heap: 7,
                events: vec![ev, ev]
            }))
        );
        assert_eq!(read_frame(&mut r).unwrap(), Some(Message::Exit(-3)));
        assert_eq!(read_frame(&mut r).unwrap(), Some(Message::End));
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn an_exit_frame_of_another_length_is_corrupt() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FRAME_EXIT, &[&[1, 2]]).unwrap();
        match read_frame(&mut &buf[..]) {
            Err(WireError::Corrupt(why)) => assert!(why.contains("exit frame"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frames_read_past_the_buffer_from_a_socket_arrive_whole() {
        // Batches larger than the reader's buffer, written in pieces by another thread: each
        // is read partly from the buffer and partly from the socket straight into its vector.
        let batches: Vec<Vec<Event>> = (0..20u64)
            .map(|b| {
                (0..(b * 97 + 1) % 3000)
                    .map(|i| Event {
                        kind: EventKind::Alloc as u8,
                        addr: 0x1000 + 16 * i,
                        arg: b,
                        time: i,
                        ..Event::default()
                    })
                    .collect()
            })
            .collect();
        let (mut tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
        let sent = batches.clone();
        let writer = std::thread::spawn(move || {
            let mut buf = Vec::new();
            write_header(&mut buf).unwrap();
            for (i, b) in sent.iter().enumerate() {
                write_batch(&mut buf, i as u32, b, &mut Vec::new()).unwrap();
            }
            write_end(&mut buf).unwrap();
            for piece in buf.chunks(5000) {
                tx.write_all(piece).unwrap();
            }
        });
        let mut r = io::BufReader::with_capacity(64, rx);
        read_header(&mut r).unwrap();
        for (i, b) in batches.iter().enumerate() {
            assert_eq!(
                read_frame_direct(&mut r, None).unwrap(),
                Some(Incoming::Message(Message::Batch(Batch {
                    heap: i as u32,
                    events: b.clone()
                })))
            );
        }
        assert_eq!(
            read_frame_direct(&mut r, None).unwrap(),
            Some(Incoming::Message(Message::End))
        );
        assert_eq!(read_frame_direct(&mut r, None).unwrap(), None);
        writer.join().unwrap();
    }

    /// Batches of all sizes, some packed and some not, as a version 2 sink and a version 1
    /// sink write them.
    fn mixed_batches() -> Vec<(bool, Vec<Event>)> {
        (0..24u64)
            .map(|b| {
                let events = (0..(b * 131 + 1) % 3000)
                    .map(|i| Event {
                        kind: (i % 9) as u8,
                        flags: (i % 4) as u8,
                        aux: (i * 7 % 70) as u16,
                        arg32: (b * 1000 + i) as u32,
                        addr: 0x7f00_0000_0000 + (i * 7919 % 4096) * 16,
                        arg: if i % 50 == 0 { u64::MAX - i } else { i * 24 },
                        time: b * 1_000_000 + i / 7,
                    })
                    .collect();
                (b % 3 != 0, events)
            })
            .collect()
    }

    fn write_mixed(buf: &mut Vec<u8>, batches: &[(bool, Vec<Event>)]) {
        let mut room = Vec::new();
        for (i, (packed, b)) in batches.iter().enumerate() {
            if *packed {
                write_packed_batch(buf, i as u32, b, &mut room).unwrap();
            } else {
                write_batch(buf, i as u32, b, &mut Vec::new()).unwrap();
            }
        }
    }

    /// A stream that switches to its ring after its metadata reads, through [`Messages`], as
    /// the same messages a socket would carry: metadata, every batch (packed or not), the end.
    #[test]
    fn messages_follow_a_stream_into_its_ring() {
        use crate::ring::{MIN_RING, Ring, RingWriter};
        use std::os::fd::AsRawFd;
        use std::os::unix::net::UnixStream;
        let batches = mixed_batches();
        let (w, r) = UnixStream::pair().unwrap();
        let sent = batches.clone();
        let writer = std::thread::spawn(move || {
            let mut head = Vec::new();
            write_header(&mut head).unwrap();
            write_meta(&mut head, "{\"pid\":1}").unwrap();
            SocketWriter(w.try_clone().unwrap())
                .write_all(&head)
                .unwrap();
            // A small ring: the batches go round it several times.
            let (ring, fd) = Ring::create(MIN_RING).unwrap();
            send_ring(w.as_raw_fd(), &ring, &fd).unwrap();
            let mut ring = RingWriter::new(ring, w.as_raw_fd());
            let mut frame = Vec::new();
            let mut room = Vec::new();
            for (packed, events) in &sent {
                frame.clear();
                if *packed {
                    write_packed_batch(&mut frame, 4, events, &mut room).unwrap();
                } else {
                    write_batch(&mut frame, 4, events, &mut room).unwrap();
                }
                for piece in frame.chunks(MIN_RING / 2) {
                    // A frame larger than half the ring goes in pieces, each published.
                    ring.write(piece).unwrap();
                    ring.publish().unwrap();
                }
            }
            frame.clear();
            write_end(&mut frame).unwrap();
            ring.write(&frame).unwrap();
            ring.publish().unwrap();
        });
        let mut m = Messages::new(r).unwrap();
        assert_eq!(
            m.next_message().unwrap(),
            Some(Message::Meta("{\"pid\":1}".into()))
        );
        for (_, events) in &batches {
            let got = m.next_message().unwrap();
            assert_eq!(
                got,
                Some(Message::Batch(Batch {
                    heap: 4,
                    events: events.clone()
                }))
            );
        }
        assert_eq!(m.next_message().unwrap(), Some(Message::End));
        writer.join().unwrap();
        assert_eq!(
            m.next_message().unwrap(),
            None,
            "the writer's socket closed"
        );
    }

    #[test]
    fn packed_batches_round_trip_and_take_far_fewer_bytes() {
        let batches = mixed_batches();
        let mut buf = Vec::new();
        write_header(&mut buf).unwrap();
        write_mixed(&mut buf, &batches);
        write_end(&mut buf).unwrap();
        let mut r = &buf[..];
        read_header(&mut r).unwrap();
        for (i, (_, b)) in batches.iter().enumerate() {
            let Some(Message::Batch(got)) = read_frame(&mut r).unwrap() else {
                panic!("batch {i} missing");
            };
            assert_eq!((got.heap, &got.events), (i as u32, b), "batch {i}");
        }
        assert_eq!(read_frame(&mut r).unwrap(), Some(Message::End));
        assert_eq!(read_frame(&mut r).unwrap(), None);

        // Every batch packed: under 40 % of the unpacked frames' bytes on these events (35 %:
        // every 50th `arg` jumps by nearly 2^64, there and back).
        let all: Vec<_> = batches.into_iter().map(|(_, b)| (true, b)).collect();
        let (mut packed, mut plain) = (Vec::new(), Vec::new());
        write_mixed(&mut packed, &all);
        for (i, (_, b)) in all.iter().enumerate() {
            write_batch(&mut plain, i as u32, b, &mut Vec::new()).unwrap();
        }
        assert!(
            packed.len() * 5 < plain.len() * 2,
            "{} packed against {} bytes",
            packed.len(),
            plain.len()
        );
    }

    #[test]
    fn packed_batches_read_past_the_buffer_from_a_socket_stay_packed_and_unpack_whole() {
        let batches = mixed_batches();
        let (mut tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
        let sent = batches.clone();
        let writer = std::thread::spawn(move || {
            let mut buf = Vec::new();
            write_header(&mut buf).unwrap();
            write_mixed(&mut buf, &sent);
            write_end(&mut buf).unwrap();
            for piece in buf.chunks(3001) {
                tx.write_all(piece).unwrap();
            }
        });
        let mut r = io::BufReader::with_capacity(64, rx);
        read_header(&mut r).unwrap();
        for (i, (was_packed, b)) in batches.iter().enumerate() {
            match read_frame_direct(&mut r, None).unwrap() {
                Some(Incoming::Packed(head)) => {
                    assert!(was_packed, "batch {i} came packed");
                    assert_eq!((head.heap, head.count), (i as u32, b.len()));
                    let mut bytes = vec![0xee; head.bytes];
                    read_packed_direct(&mut r, &mut bytes).unwrap();
                    let mut events = Vec::new();
                    unpack_wire(&bytes, head.count, head.form, &mut events).unwrap();
                    assert_eq!(&events, b, "batch {i}");
                }
                Some(Incoming::Message(Message::Batch(got))) => {
                    assert!(!was_packed, "batch {i} came unpacked");
                    assert_eq!((got.heap, &got.events), (i as u32, b));
                }
                other => panic!("batch {i}: {other:?}"),
            }
        }
        assert_eq!(
            read_frame_direct(&mut r, None).unwrap(),
            Some(Incoming::Message(Message::End))
        );
        writer.join().unwrap();
    }

    #[test]
    fn a_truncated_or_damaged_packed_batch_gives_a_clear_error() {
        let events: Vec<Event> = (0..100u64)
            .map(|i| Event {
                kind: EventKind::Alloc as u8,
                addr: 0x1000 + 16 * i,
                arg: 32,
                time: i,
                ..Event::default()
            })
            .collect();
        let mut frame = Vec::new();
        write_packed_batch(&mut frame, 3, &events, &mut Vec::new()).unwrap();
        // Cut anywhere inside: an I/O error (the stream ended mid-frame), never a batch.
        for cut in 1..frame.len() {
            match read_frame(&mut &frame[..cut]) {
                Err(WireError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        let corrupt = |bytes: &[u8]| match read_frame(&mut &bytes[..]) {
            Err(WireError::Corrupt(why)) => why,
            other => panic!("{other:?}"),
        };
        // A count the bytes cannot hold is refused before anything is reserved for it.
        let mut huge = frame.clone();
        huge[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(corrupt(&huge).contains("cannot hold"));
        // A count the bytes hold, but not the events packed there.
        let mut fewer = frame.clone();
        fewer[9..13].copy_from_slice(&99u32.to_le_bytes());
        assert!(corrupt(&fewer).contains("damaged"));
        // A control word with a length above 8.
        let mut bad = frame.clone();
        bad[PACKED_HEAD] = 0x0f;
        assert!(corrupt(&bad).contains("damaged"));
        // A frame too short for its heap, count and slack.
        let mut short = Vec::new();
        write_frame(&mut short, FRAME_PACKED, &[&[0; 8]]).unwrap();
        assert!(corrupt(&short).contains("packed batch frame"));
    }

    #[test]
    fn a_version_1_stream_is_read_and_a_newer_one_refused_by_its_version() {
        let mut v1 = MAGIC.to_vec();
        v1.extend_from_slice(&1u16.to_le_bytes());
        write_batch(&mut v1, 2, &[Event::default(); 2], &mut Vec::new()).unwrap();
        let mut r = &v1[..];
        read_header(&mut r).unwrap();
        assert!(matches!(read_frame(&mut r), Ok(Some(Message::Batch(_)))));
        let mut newer = MAGIC.to_vec();
        newer.extend_from_slice(&(VERSION + 1).to_le_bytes());
        let err = read_header(&mut &newer[..]).unwrap_err().to_string();
        assert!(err.contains("version 6") && err.contains("1 to 5"), "{err}");
    }

    #[test]
    fn packed_batches_of_every_version_are_read_as_they_were_packed() {
        let events: Vec<Event> = (0..50u64)
            .map(|i| Event {
                kind: if i % 2 == 0 { 1 } else { 2 },
                addr: 0x1000 + 16 * (i / 2),
                arg: if i % 2 == 0 { 24 + i } else { 0 },
                time: i / 10,
                ..Event::default()
            })
            .collect();
        let older = |kind: u8, form: Form| {
            let mut room = vec![0; crate::pack::room_for(events.len())];
            let used = crate::pack::pack_to_as(&events, &mut room, form).unwrap();
            let ids = [3u32.to_le_bytes(), 50u32.to_le_bytes()].concat();
            let mut frame = Vec::new();
            write_frame(&mut frame, kind, &[&ids, &room[..used]]).unwrap();
            let Ok(Some(Message::Batch(got))) = read_frame(&mut &frame[..]) else {
                panic!("a packed batch of form {form:?} is read");
            };
            assert_eq!((got.heap, &got.events), (3, &events), "{form:?}");
            frame
        };
        let v3 = older(FRAME_PACKED, Form::Previous);
        let v4 = older(FRAME_PACKED_LAST_ALLOC, Form::LastAlloc);
        // Version 4 packs sizes against the last `Alloc`'s, in fewer bytes.
        assert!(v4.len() < v3.len(), "{} against {}", v4.len(), v3.len());
        // This build's frame puts the control words first, in as many bytes.
        let mut v5 = Vec::new();
        write_packed_batch(&mut v5, 3, &events, &mut Vec::new()).unwrap();
        assert_eq!(v5[0], FRAME_PACKED_CONTROLS_FIRST);
        assert_eq!(v5.len(), v4.len());
        assert_ne!(v5, v4);
        let Ok(Some(Message::Batch(got))) = read_frame(&mut &v5[..]) else {
            panic!("a version 5 packed batch is read");
        };
        assert_eq!(got.events, events);
        // The frame's type says the form: the same bytes under version 4's type are misread
        // or refused.
        let mut mislabelled = v5.clone();
        mislabelled[0] = FRAME_PACKED_LAST_ALLOC;
        match read_frame(&mut &mislabelled[..]) {
            Ok(Some(Message::Batch(got))) => assert_ne!(got.events, events),
            Ok(other) => panic!("{other:?}"),
            Err(_) => {}
        }
    }

    #[test]
    fn a_ring_frame_gives_its_size_and_only_where_a_stream_can_switch_to_it() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FRAME_RING, &[&(1u64 << 24).to_le_bytes()]).unwrap();
        let got = read_frame_incoming(&mut &buf[..], None).unwrap();
        assert_eq!(got, Some(Incoming::Ring(1 << 24)));
        let err = read_frame(&mut &buf[..]).unwrap_err().to_string();
        assert!(err.contains("ring frame"), "{err}");
        let mut short = Vec::new();
        write_frame(&mut short, FRAME_RING, &[&[0; 4]]).unwrap();
        let err = read_frame_incoming(&mut &short[..], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ring frame of 4 bytes"), "{err}");
    }

    #[test]
    fn bad_input_gives_clear_errors_without_panics() {
        let mut r = &b"NOTHEAPLENS"[..];
        assert!(matches!(read_header(&mut r), Err(WireError::NotHeaplens)));
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&9u16.to_le_bytes());
        let err = read_header(&mut &v[..]).unwrap_err().to_string();
        assert!(err.contains("version 9") && err.contains("1 to 5"), "{err}");
        // a huge length is refused before anything is allocated
        let mut r = &[2u8, 0xff, 0xff, 0xff, 0x7f][..];
        assert!(matches!(read_frame(&mut r), Err(WireError::Corrupt(_))));
        // a batch that is not whole events
        let mut r = &[2u8, 5, 0, 0, 0, 1, 2, 3, 4, 5][..];
        assert!(matches!(read_frame(&mut r), Err(WireError::Corrupt(_))));
        // cut inside a frame
        let mut r = &[2u8, 36, 0, 0, 0, 1, 2][..];
        assert!(matches!(read_frame(&mut r), Err(WireError::Io(_))));
        // every prefix and random garbage: errors or frames, never a panic
        let mut buf = Vec::new();
        write_meta(&mut buf, "{}").unwrap();
        write_batch(&mut buf, 1, &[Event::default(); 3], &mut Vec::new()).unwrap();
        for cut in 0..buf.len() {
            let mut r = &buf[..cut];
            while let Ok(Some(_)) = read_frame(&mut r) {}
        }
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200 {
            let junk = crate::pack::tests::junk(&mut x, 64);
            let mut r = &junk[..];
            while let Ok(Some(_)) = read_frame(&mut r) {}
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
