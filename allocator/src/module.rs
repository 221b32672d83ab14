//! The loaded modules (the executable and its shared libraries): their executable address
//! ranges for the unwinder, and their paths and build ids for the trace.
//!
//! The ranges are enumerated with `dl_iterate_phdr`, never inside `malloc` (it takes the loader's
//! lock, which a thread in `dlopen` holds while it allocates): by the collector at start and when
//! the loader's counters (`dlpi_adds`, `dlpi_subs`) move, and by `libheaplens.so`'s `dlopen` and
//! `dlclose` right after the real ones return. They are published as a sorted table in OS memory
//! that the unwinder reads without a lock: a new table replaces the old by a pointer swap, and
//! old tables are never freed (a thread may still be reading one).

// Without the `hook` feature the collector, which drives this, is not built.
#![cfg_attr(not(feature = "hook"), allow(dead_code))]

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};

use crate::cfi::Row;
use crate::os;
use crate::sync::SpinLock;

/// Executable ranges a table holds; ranges beyond are left out (their frames end a walk).
pub const MAX_RANGES: usize = 4096;

/// An executable range `[start, end)` and the unwind rows of its module (empty: none yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CodeRange {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    rows: *const Row,
    nrows: usize,
}

impl CodeRange {
    /// A range without rows.
    pub const fn new(start: usize, end: usize) -> Self {
        Self {
            start,
            end,
            rows: ptr::null(),
            nrows: 0,
        }
    }

    /// The unwind rows of the range's module, sorted (empty: none, walk by frame pointers).
    pub fn rows(&self) -> &'static [Row] {
        if self.rows.is_null() {
            return &[];
        }
        // SAFETY: rows are registered in OS memory and never freed.
        unsafe { core::slice::from_raw_parts(self.rows, self.nrows) }
    }

    /// A range whose rows are `rows` (which must never be freed: tests leak them).
    pub fn with_rows(start: usize, end: usize, rows: &'static [Row]) -> Self {
        Self {
            start,
            end,
            rows: rows.as_ptr(),
            nrows: rows.len(),
        }
    }
}

#[repr(C)]
struct RangeTable {
    len: usize,
    /// Sorted by start.
    ranges: [CodeRange; MAX_RANGES],
}

/// Unwind rows built by the collector, per executable range (`start`, `end`, rows): a refresh
/// attaches them to the ranges it publishes. Guarded by [`REFRESH`]; in OS memory.
struct Registry {
    entries: *mut CodeRange,
    len: usize,
}
const REGISTRY_MAX: usize = 4096;
// SAFETY: the registry is only touched under its lock; its memory is ours.
unsafe impl Send for Registry {}

static RANGES: AtomicPtr<RangeTable> = AtomicPtr::new(ptr::null_mut());
/// Serialises refreshes (the collector and threads in `dlopen`), and holds the rows registry.
static REFRESH: SpinLock<Registry> = SpinLock::new(Registry {
    entries: ptr::null_mut(),
    len: 0,
});
/// `dlpi_adds` and `dlpi_subs` when the ranges were last enumerated.
static SEEN_ADDS: AtomicU64 = AtomicU64::new(u64::MAX);
static SEEN_SUBS: AtomicU64 = AtomicU64::new(u64::MAX);
/// Set by `dlopen`/`dlclose`: the collector should report the modules again.
static CHANGED: AtomicBool = AtomicBool::new(false);
/// The code of this library when it is a shared object (`libheaplens.so`): a return address in
/// it means the allocation site was not found (see `stacks`).
static OWN_START: AtomicUsize = AtomicUsize::new(0);
static OWN_END: AtomicUsize = AtomicUsize::new(0);

/// Whether `pc` lies in a loaded module's code (lock-free; false before the first refresh).
pub fn is_code(pc: usize) -> bool {
    let t = RANGES.load(Acquire);
    if t.is_null() {
        return false;
    }
    // SAFETY: published tables are complete before the release store and never freed.
    let t = unsafe { &*t };
    let ranges = &t.ranges[..t.len.min(MAX_RANGES)];
    let i = ranges.partition_point(|r| r.start <= pc);
    i > 0 && pc < ranges[i - 1].end
}

/// [`is_code`] with the last two ranges found kept at hand (a thread's return addresses mostly
/// fall in a few modules): the owner's, in its heap.
pub struct CodeCache {
    table: *const RangeTable,
    hits: [CodeRange; 2],
    /// Return addresses seen, with their rows (direct-mapped by address): a thread's stacks
    /// repeat, and a binary search over a large library's rows costs a few hundred instructions.
    frames: [(usize, Option<Row>); FRAME_CACHE],
}

const FRAME_CACHE: usize = 64;

impl CodeCache {
    /// An empty cache.
    pub const fn new() -> Self {
        Self {
            table: ptr::null(),
            hits: [CodeRange::new(0, 0); 2],
            frames: [(0, None); FRAME_CACHE],
        }
    }

    /// For the walk ([`crate::unwind::walk`]): whether the return address `pc` lies in code,
    /// and the unwind row covering its call.
    #[inline]
    pub fn frame(&mut self, pc: usize) -> Option<Option<Row>> {
        // Two ways: slot and its neighbour; a new entry goes to the first, the old one moves on.
        let slot = ((pc as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize & !1;
        if self.table == RANGES.load(Acquire).cast_const() && pc != 0 {
            if self.frames[slot].0 == pc {
                return Some(self.frames[slot].1);
            }
            if self.frames[slot + 1].0 == pc {
                return Some(self.frames[slot + 1].1);
            }
        }
        let range = self.lookup(pc)?;
        let row = crate::unwind::rows_frame(range.rows(), pc);
        self.frames[slot + 1] = self.frames[slot];
        self.frames[slot] = (pc, row);
        Some(row)
    }

    /// The code range holding `pc`, if `pc` lies in a loaded module's code.
    #[inline]
    pub fn lookup(&mut self, pc: usize) -> Option<CodeRange> {
        let t = RANGES.load(Acquire);
        if t.cast_const() != self.table {
            self.table = t;
            self.hits = [CodeRange::new(0, 0); 2];
            self.frames = [(0, None); FRAME_CACHE];
        }
        if let Some(hit) = self.hits.iter().find(|r| pc >= r.start && pc < r.end) {
            return Some(*hit);
        }
        if t.is_null() {
            return None;
        }
        // SAFETY: published tables are complete before the release store and never freed.
        let t = unsafe { &*t };
        let ranges = &t.ranges[..t.len.min(MAX_RANGES)];
        let i = ranges.partition_point(|r| r.start <= pc);
        if i > 0 && pc < ranges[i - 1].end {
            self.hits = [ranges[i - 1], self.hits[0]];
            Some(ranges[i - 1])
        } else {
            None
        }
    }
}

impl Default for CodeCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Which code range table is published: changes whenever [`CodeCache::frame`]'s answers may.
pub fn ranges_version() -> usize {
    RANGES.load(Acquire) as usize
}

/// Whether `pc` lies in this library's own code, when it is a shared object.
pub fn is_own_code(pc: usize) -> bool {
    pc >= OWN_START.load(Relaxed) && pc < OWN_END.load(Relaxed)
}

/// Whether modules came or went since the ranges were enumerated (the loader's counters).
pub fn loader_changed() -> bool {
    let (adds, subs) = loader_counters();
    adds != SEEN_ADDS.load(Relaxed) || subs != SEEN_SUBS.load(Relaxed)
}

/// Takes the flag that `dlopen`/`dlclose` set.
pub(crate) fn take_changed() -> bool {
    CHANGED.swap(false, AcqRel)
}

/// Called by `libheaplens.so` after a successful `dlopen` or `dlclose`: publishes the new ranges
/// at once, so frames in a library just loaded resolve, and waits (at most 200 ms) until the
/// collector has reported the modules, so that a library loaded and unloaded at once is
/// recorded all the same. The waiting thread holds no lock.
pub fn loaded() {
    refresh_ranges();
    CHANGED.store(true, Release);
    #[cfg(feature = "hook")]
    {
        if !crate::collector::is_running() || crate::collector::on_collector_thread() {
            return;
        }
        let target = REQUESTS.fetch_add(1, AcqRel) + 1;
        for _ in 0..2000 {
            if SERVED.load(Acquire) >= target || !crate::collector::is_running() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }
}

/// Reports asked for by [`loaded`], and served by the collector.
static REQUESTS: AtomicU64 = AtomicU64::new(0);
static SERVED: AtomicU64 = AtomicU64::new(0);

/// The reports asked for so far (the collector serves them and then calls [`served`]).
pub(crate) fn requested() -> u64 {
    REQUESTS.load(Acquire)
}

/// The collector has reported the modules as of request `n`.
pub(crate) fn served(n: u64) {
    SERVED.fetch_max(n, AcqRel);
}

fn loader_counters() -> (u64, u64) {
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid info of `size` bytes; `data` is our pair.
        unsafe {
            if size >= core::mem::offset_of!(libc::dl_phdr_info, dlpi_tls_modid) {
                *data.cast::<(u64, u64)>() = ((*info).dlpi_adds, (*info).dlpi_subs);
            }
        }
        1 // stop after the first module: the counters are the same in every entry
    }
    let mut counters = (0u64, 0u64);
    // SAFETY: the callback writes only the pair it is given, and never unwinds.
    unsafe { iterate_phdr(first, (&raw mut counters).cast()) };
    counters
}

/// Enumerates the modules' executable ranges into a new table and publishes it. Not to be
/// called inside `malloc`.
pub fn refresh_ranges() {
    let mut registry = REFRESH.lock();
    let counters = loader_counters();
    let t = os::map_internal(core::mem::size_of::<RangeTable>()).cast::<RangeTable>();
    if t.is_null() {
        return;
    }
    unsafe extern "C" fn add(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is our fresh table; the loader passes a valid info whose program
        // headers are readable.
        unsafe {
            let t = &mut *data.cast::<RangeTable>();
            let own = add as *const () as usize;
            for (start, end) in exec_ranges(&*info) {
                if start <= own && own < end && !is_main(&*info) {
                    OWN_START.store(start, Relaxed);
                    OWN_END.store(end, Relaxed);
                }
                if t.len < MAX_RANGES {
                    t.ranges[t.len] = CodeRange::new(start, end);
                    t.len += 1;
                }
            }
        }
        0
    }
    // SAFETY: the callback writes only into the table it is given, and never unwinds; the
    // table is ours until published.
    unsafe {
        iterate_phdr(add, t.cast());
        let len = (*t).len;
        let ranges = &mut (&mut (*t).ranges)[..len];
        ranges.sort_unstable();
        registry.attach(ranges);
    }
    RANGES.store(t, Release);
    SEEN_ADDS.store(counters.0, Relaxed);
    SEEN_SUBS.store(counters.1, Relaxed);
}

impl Registry {
    fn entries(&self) -> &[CodeRange] {
        if self.entries.is_null() {
            return &[];
        }
        // SAFETY: the registry's own mapping of REGISTRY_MAX entries, `len` of them written;
        // the caller holds the lock.
        unsafe { core::slice::from_raw_parts(self.entries, self.len) }
    }

    fn entries_mut(&mut self) -> &mut [CodeRange] {
        if self.entries.is_null() {
            return &mut [];
        }
        // SAFETY: as in `entries`, and the registry is borrowed mutably.
        unsafe { core::slice::from_raw_parts_mut(self.entries, self.len) }
    }

    /// Gives `ranges` (sorted) their rows, and forgets the rows of ranges no longer loaded.
    fn attach(&mut self, ranges: &mut [CodeRange]) {
        let mut kept = 0;
        let entries = self.entries_mut();
        for i in 0..entries.len() {
            let e = entries[i];
            let found = ranges.binary_search_by_key(&(e.start, e.end), |r| (r.start, r.end));
            if let Ok(j) = found {
                ranges[j].rows = e.rows;
                ranges[j].nrows = e.nrows;
                entries[kept] = e;
                kept += 1;
            }
        }
        self.len = kept;
    }

    fn has(&self, start: usize, end: usize) -> bool {
        self.entries()
            .iter()
            .any(|e| e.start == start && e.end == end)
    }

    fn add(&mut self, range: CodeRange) {
        if self.entries.is_null() {
            self.entries = os::map_internal(REGISTRY_MAX * size_of::<CodeRange>()).cast();
        }
        if !self.entries.is_null() && self.len < REGISTRY_MAX {
            // SAFETY: below the mapping's capacity.
            unsafe { self.entries.add(self.len).write(range) };
            self.len += 1;
        }
    }
}

/// Held around each `dl_iterate_phdr` of ours, and by `fork()`'s prepare handler: the loader
/// holds a lock of its own through the iteration, which glibc does not reset in a child, and the
/// collector iterates while the program runs (a `dlopen`, the loader's counters moving). A child
/// forked meanwhile found that lock held for ever: its own collector waited at its first look
/// at the modules, and the child recorded nothing (seen with the unwind rows built while the
/// program ran, an arrangement tried and not kept).
static ITERATING: SpinLock<()> = SpinLock::new(());

/// `dl_iterate_phdr(callback, data)`, never across a `fork()` (see [`ITERATING`]).
///
/// # Safety
/// As `dl_iterate_phdr`'s: `callback` is called with `data` for each module and never unwinds.
unsafe fn iterate_phdr(
    callback: unsafe extern "C" fn(
        *mut libc::dl_phdr_info,
        libc::size_t,
        *mut libc::c_void,
    ) -> libc::c_int,
    data: *mut libc::c_void,
) -> libc::c_int {
    let _held = ITERATING.lock();
    // SAFETY: forwarded.
    unsafe { libc::dl_iterate_phdr(Some(callback), data) }
}

/// Holds the module registry and the loader's iteration across `fork()` (the prepare handler
/// takes them, the parent's and the child's release them), so that a child finds neither held
/// by a thread it does not have. The registry first: it is held around an iteration.
pub(crate) fn fork_lock(acquire: bool) {
    if acquire {
        REFRESH.acquire();
        ITERATING.acquire();
    } else {
        ITERATING.force_unlock();
        REFRESH.force_unlock();
    }
}

/// Builds the unwind rows of the loaded modules that have none yet (the collector, outside
/// `malloc`; it allocates), registers them and publishes the ranges with their rows.
#[cfg(feature = "hook")]
pub fn build_rows() {
    type Found = Vec<((usize, usize), Vec<(usize, usize)>, Vec<Row>)>;
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        let run = || {
            // SAFETY: the loader passes a valid info; `data` is our pair.
            unsafe {
                let info = &*info;
                let (known, out) = &mut *data.cast::<(Vec<(usize, usize)>, Found)>();
                let ranges: Vec<(usize, usize)> = exec_ranges(info).collect();
                if ranges.is_empty() || ranges.iter().all(|r| known.contains(r)) {
                    return;
                }
                // Parsed here, while the loader keeps the module loaded.
                let rows = crate::cfi::module_rows(info);
                out.push(((info.dlpi_addr as usize, 0), ranges, rows));
            }
        };
        // Nothing may unwind into the loader.
        i32::from(std::panic::catch_unwind(run).is_err())
    }
    let known: Vec<(usize, usize)> = {
        let registry = REFRESH.lock();
        registry
            .entries()
            .iter()
            .map(|e| (e.start, e.end))
            .collect()
    };
    let mut data: (Vec<(usize, usize)>, Found) = (known, Vec::new());
    // SAFETY: the callback only pushes onto the Vecs it is given and never unwinds.
    unsafe { iterate_phdr(each, (&raw mut data).cast()) };
    if data.1.is_empty() {
        return;
    }
    {
        let mut registry = REFRESH.lock();
        for (_, ranges, rows) in data.1 {
            // Rows go to OS memory, never freed: threads read them without a lock.
            let bytes = (rows.len() * size_of::<Row>()).max(1);
            let mem = if rows.is_empty() {
                ptr::null_mut()
            } else {
                os::map_internal(bytes.next_multiple_of(4096)).cast::<Row>()
            };
            if !mem.is_null() {
                // SAFETY: a fresh mapping of room for the rows.
                unsafe { ptr::copy_nonoverlapping(rows.as_ptr(), mem, rows.len()) };
            }
            let nrows = if mem.is_null() { 0 } else { rows.len() };
            for (start, end) in ranges {
                if !registry.has(start, end) {
                    registry.add(CodeRange {
                        start,
                        end,
                        rows: mem,
                        nrows,
                    });
                }
            }
        }
    }
    refresh_ranges();
}

/// Whether `info` is the main program (the loader gives it an empty name).
///
/// # Safety
/// `info` comes from `dl_iterate_phdr`.
unsafe fn is_main(info: &libc::dl_phdr_info) -> bool {
    // SAFETY: a NUL-terminated name or null.
    info.dlpi_name.is_null() || unsafe { *info.dlpi_name == 0 }
}

/// The executable `PT_LOAD` ranges of a module.
///
/// # Safety
/// `info` comes from `dl_iterate_phdr`, inside its callback.
unsafe fn exec_ranges(info: &libc::dl_phdr_info) -> impl Iterator<Item = (usize, usize)> + '_ {
    // SAFETY: the loader's program headers, `dlpi_phnum` of them.
    let phdrs = unsafe { program_headers(info) };
    phdrs
        .iter()
        .filter(|p| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_X != 0)
        .map(|p| {
            let start = (info.dlpi_addr as usize).wrapping_add(p.p_vaddr as usize);
            (start, start.wrapping_add(p.p_memsz as usize))
        })
}

/// # Safety
/// As [`exec_ranges`].
pub(crate) unsafe fn program_headers(info: &libc::dl_phdr_info) -> &[libc::Elf64_Phdr] {
    if info.dlpi_phdr.is_null() {
        return &[];
    }
    // SAFETY: the loader's program header array.
    unsafe { core::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
}

/// A module as the trace records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Load bias (`dlpi_addr`): a file address plus this is the address in the process.
    pub bias: usize,
    /// Path (the main program's from `/proc/self/exe`).
    pub path: Vec<u8>,
    /// GNU build id (raw bytes; empty if the module has none).
    pub build_id: Vec<u8>,
    /// Executable ranges `[start, end)`.
    pub ranges: Vec<(usize, usize)>,
}

/// The loaded modules. Allocates: for the collector (an untraced thread) and tests.
pub fn modules() -> Vec<ModuleInfo> {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        let run = || {
            // SAFETY: the loader passes a valid info; `data` is our Vec.
            unsafe {
                let info = &*info;
                let out = &mut *data.cast::<Vec<ModuleInfo>>();
                let path = if is_main(info) {
                    Vec::new()
                } else {
                    core::ffi::CStr::from_ptr(info.dlpi_name)
                        .to_bytes()
                        .to_vec()
                };
                out.push(ModuleInfo {
                    bias: info.dlpi_addr as usize,
                    path,
                    build_id: build_id(info),
                    ranges: exec_ranges(info).collect(),
                });
            }
        };
        // Nothing may unwind into the loader.
        i32::from(std::panic::catch_unwind(run).is_err())
    }
    let mut out: Vec<ModuleInfo> = Vec::new();
    // SAFETY: the callback only pushes onto the Vec it is given and never unwinds.
    unsafe { iterate_phdr(each, (&raw mut out).cast()) };
    if let Some(main) = out.iter_mut().find(|m| m.path.is_empty())
        && let Ok(exe) = std::fs::read_link("/proc/self/exe")
    {
        use std::os::unix::ffi::OsStrExt;
        main.path = exe.as_os_str().as_bytes().to_vec();
    }
    out
}

/// The `NT_GNU_BUILD_ID` note of a module, from its `PT_NOTE` segments (mapped with the module).
///
/// # Safety
/// As [`exec_ranges`].
unsafe fn build_id(info: &libc::dl_phdr_info) -> Vec<u8> {
    const NT_GNU_BUILD_ID: u32 = 3;
    // SAFETY: forwarded.
    for p in unsafe { program_headers(info) } {
        if p.p_type != libc::PT_NOTE {
            continue;
        }
        let start = (info.dlpi_addr as usize).wrapping_add(p.p_vaddr as usize);
        // SAFETY: a PT_NOTE segment lies inside a loaded PT_LOAD segment, readable.
        let notes = unsafe { core::slice::from_raw_parts(start as *const u8, p.p_memsz as usize) };
        if let Some(id) = find_note(notes, b"GNU\0", NT_GNU_BUILD_ID) {
            return id.to_vec();
        }
    }
    Vec::new()
}

/// The descriptor of the note named `name` of type `ty` in an ELF note segment.
pub fn find_note<'a>(mut notes: &'a [u8], name: &[u8], ty: u32) -> Option<&'a [u8]> {
    let word = |b: &[u8], i: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?))
    };
    while notes.len() >= 12 {
        let namesz = word(notes, 0)? as usize;
        let descsz = word(notes, 4)? as usize;
        let nty = word(notes, 8)?;
        let name_end = 12usize.checked_add(namesz)?;
        let desc_start = name_end.checked_next_multiple_of(4)?;
        let desc_end = desc_start.checked_add(descsz)?;
        let next = desc_end.checked_next_multiple_of(4)?;
        let nname = notes.get(12..name_end)?;
        let desc = notes.get(desc_start..desc_end)?;
        if nty == ty && nname == name {
            return Some(desc);
        }
        notes = notes.get(next..).unwrap_or(&[]);
    }
    None
}

/// The collector's record of the modules it has reported: emits `Module`, `ModuleRange` and
/// `ModuleText` events for modules it has not reported yet, `ModuleGone` for those unloaded.
#[derive(Default)]
pub struct Reporter {
    known: std::collections::HashMap<(usize, Vec<u8>), u32>,
    next_id: u32,
}

impl Reporter {
    /// Publishes the ranges anew if the loader changed them, builds the unwind rows of new
    /// modules if `rows` ([`build_rows`]: stack capture needs them, a recording without stacks
    /// skips them), and appends the events for what changed to `out`, at `time`.
    pub fn update(&mut self, time: u64, out: &mut Vec<crate::event::Event>, rows: bool) {
        use crate::event::{Event, flags, module_text};
        use crate::schema;
        // A table is never freed (threads read it without a lock): made anew at every
        // recording's start, it grew an attached program by a page per `heaplens attach`.
        if loader_changed() {
            refresh_ranges();
        }
        #[cfg(feature = "hook")]
        if rows {
            build_rows();
        }
        #[cfg(not(feature = "hook"))]
        let _ = rows;
        let now = modules();
        let current: std::collections::HashSet<(usize, &[u8])> =
            now.iter().map(|m| (m.bias, &m.path[..])).collect();
        let mut gone: Vec<_> = self
            .known
            .iter()
            .filter(|((bias, path), _)| !current.contains(&(*bias, &path[..])))
            .map(|(k, &id)| (k.clone(), id))
            .collect();
        gone.sort_by_key(|&(_, id)| id);
        for (key, id) in gone {
            self.known.remove(&key);
            out.push(schema::ModuleGone { id, flags: 0 }.into_event().at(time));
        }
        for m in &now {
            let key = (m.bias, m.path.clone());
            if self.known.contains_key(&key) {
                continue;
            }
            self.next_id += 1;
            let id = self.next_id;
            self.known.insert(key, id);
            let module = schema::Module {
                bias: m.bias as u64,
                id,
                flags: 0,
            };
            out.push(module.into_event().at(time));
            for &(start, end) in &m.ranges {
                let len = (end - start) as u64;
                let range = schema::ModuleRange {
                    start: start as u64,
                    len,
                    id,
                    flags: 0,
                };
                out.push(range.into_event().at(time));
            }
            for (what, text) in [
                (module_text::PATH, &m.path),
                (module_text::BUILD_ID, &m.build_id),
            ] {
                let chunks: Vec<&[u8]> = text.chunks(16).collect();
                for (i, chunk) in chunks.iter().enumerate() {
                    let (text_lo, text_hi) = Event::pack_text(chunk);
                    let more = if i + 1 < chunks.len() { flags::MORE } else { 0 };
                    let text = schema::ModuleText {
                        text_lo,
                        text_hi,
                        id,
                        what,
                        flags: more,
                    };
                    out.push(text.into_event().at(time));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_program_and_libc_are_modules_with_code() {
        refresh_ranges();
        let f = this_program_and_libc_are_modules_with_code as *const () as usize;
        assert!(is_code(f));
        assert!(is_code(libc::malloc as *const () as usize));
        assert!(!is_code(0x10));
        let local = 0u8;
        assert!(!is_code(core::ptr::from_ref(&local) as usize));
        assert!(!loader_changed());
        let mods = modules();
        let main = mods
            .iter()
            .find(|m| m.ranges.iter().any(|&(s, e)| s <= f && f < e))
            .expect("this program is a module");
        assert!(main.path.ends_with(b"heaplens_alloc") || !main.path.is_empty());
        assert!(mods.iter().any(|m| m.path.windows(4).any(|w| w == b"libc")));
        // Debian's libc carries a build id of 20 bytes.
        let libc = mods
            .iter()
            .find(|m| m.path.windows(7).any(|w| w == b"libc.so"));
        assert_eq!(libc.map(|m| m.build_id.len()), Some(20));
    }

    #[test]
    fn notes_are_found_and_bad_notes_refused() {
        let mut n = Vec::new();
        for (name, ty, desc) in [
            (&b"XY\0"[..], 1u32, &[1u8, 2][..]),
            (b"GNU\0", 3, &[9, 8, 7]),
        ] {
            n.extend((name.len() as u32).to_ne_bytes());
            n.extend((desc.len() as u32).to_ne_bytes());
            n.extend(ty.to_ne_bytes());
            n.extend(name);
            n.resize(n.len().next_multiple_of(4), 0);
            n.extend(desc);
            n.resize(n.len().next_multiple_of(4), 0);
        }
        assert_eq!(find_note(&n, b"GNU\0", 3), Some(&[9u8, 8, 7][..]));
        assert_eq!(find_note(&n, b"GNU\0", 4), None);
        let mut bad = n.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(find_note(&bad, b"GNU\0", 3), None);
        assert_eq!(find_note(&n[..20], b"GNU\0", 3), None);
    }
}
