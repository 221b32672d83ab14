//! Symbols for allocation sites, resolved in `heaplens` from the files the target loaded (never
//! inside the target).
//!
//! A pc is resolved in three steps: its module, by the module's executable ranges as the trace
//! recorded them; its address in the ELF file, `pc − bias`; then the function, file and line from
//! the file's DWARF data, with the chain of inlined frames (innermost first, as `addr2line -i`
//! prints them), or the function alone from the symbol table when there is no DWARF. Names are
//! demangled (Rust and C++). A pc that resolves to nothing shows as `module+0xoffset`.
//!
//! Each module's file is opened once, by the path the trace recorded; when the trace has the
//! module's build id and the file's differs, the module is not resolved ("build id mismatch"):
//! a rebuilt binary would give wrong names. Results are cached per pc.
//!
//! The viewer resolves while it draws, so its symbolizer is [`Symbolizer::interactive`]: module
//! files open on threads of their own (a large library's symbol tables take tens of
//! milliseconds), and each frame resolves new pcs only until its deadline
//! ([`Symbolizer::begin_frame`]). What is not resolved yet reads as `module+0xoffset`, is not
//! cached, and is counted ([`Symbolizer::unresolved`]) so the viewer draws again.

pub mod apart;
pub mod debug_file;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::rc::Rc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use addr2line::Loader;

use crate::model::{Module, Sites};

/// One function of a resolved pc: the innermost inlined one first, the real function last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SymbolFrame {
    /// Demangled function name.
    pub function: Option<String>,
    /// Source file.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
}

impl SymbolFrame {
    /// The function name, or `??`.
    pub fn name(&self) -> &str {
        self.function.as_deref().unwrap_or("??")
    }

    /// `file:line` (the file's last component), if known.
    pub fn file_line(&self) -> Option<String> {
        let file = self.file.as_deref()?;
        let base = Path::new(file)
            .file_name()
            .map_or(file.into(), |f| f.to_string_lossy());
        Some(match self.line {
            Some(l) => format!("{base}:{l}"),
            None => base.into_owned(),
        })
    }
}

/// What is known of one pc.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    /// The pc.
    pub pc: u64,
    /// The module's file name (last path component), if the pc is in a known module.
    pub module: Option<String>,
    /// The address in the module's ELF file (`pc − bias`).
    pub offset: u64,
    /// Functions, innermost inlined first; empty if unresolved.
    pub frames: Vec<SymbolFrame>,
    /// Why it did not resolve, when it did not ("build id mismatch", "cannot open ...").
    pub problem: Option<String>,
}

impl Location {
    /// The outermost function's name (the real function the pc is in), or `module+0xoffset`.
    pub fn function(&self) -> String {
        match self.frames.last().and_then(|f| f.function.clone()) {
            Some(name) => name,
            None => self.raw(),
        }
    }

    /// The innermost function's name (the code written at the pc), or `module+0xoffset`.
    pub fn innermost(&self) -> String {
        match self.frames.first().and_then(|f| f.function.clone()) {
            Some(name) => name,
            None => self.raw(),
        }
    }

    /// `module+0xoffset`, or the bare pc outside every known module.
    pub fn raw(&self) -> String {
        match &self.module {
            Some(m) => format!("{m}+{:#x}", self.offset),
            None => format!("{:#x}", self.pc),
        }
    }
}

impl fmt::Display for Location {
    /// `function (file:line)` for the innermost frame, or `module+0xoffset`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.frames.first() {
            Some(fr) if fr.function.is_some() => {
                write!(f, "{}", fr.name())?;
                if let Some(fl) = fr.file_line() {
                    write!(f, " ({fl})")?;
                }
                Ok(())
            }
            _ => f.write_str(&self.raw()),
        }
    }
}

/// An opened module file.
struct ModuleFile {
    loader: Option<Loader>,
    /// Its separate debug file, if one is installed ([`debug_file`]): DWARF lines and the full
    /// symbol table of a stripped module.
    debug: Option<Loader>,
    problem: Option<String>,
}

impl ModuleFile {
    fn failed(problem: String) -> Self {
        Self {
            loader: None,
            debug: None,
            problem: Some(problem),
        }
    }

    fn open(path: &str, build_id: &[u8]) -> Self {
        if path.is_empty() {
            return Self::failed("no path recorded".into());
        }
        let data = match debug_file::open(Path::new(path)) {
            Ok(d) => d,
            Err(e) => return Self::failed(format!("cannot open {path}: {e}")),
        };
        let file = object::File::parse(&data).ok();
        if !build_id.is_empty()
            && let Some(id) = file.as_ref().and_then(debug_file::build_id)
            && !same_build_id(build_id, &id)
        {
            return Self::failed(format!(
                "build id mismatch: {path} is not the file recorded"
            ));
        }
        let debug = file
            .and_then(|f| debug_file::find(Path::new(path), &f, Path::new(debug_file::DEBUG_ROOT)))
            .and_then(|p| Loader::new(p).ok());
        match Loader::new(path) {
            Ok(loader) => Self {
                loader: Some(loader),
                debug,
                problem: None,
            },
            Err(e) => Self::failed(format!("cannot read {path}: {e}")),
        }
    }
}

/// The GNU build id of an ELF file, if it has one.
pub fn file_build_id(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let data = debug_file::open(path).map_err(|e| e.to_string())?;
    let file = object::File::parse(&data).map_err(|e| e.to_string())?;
    Ok(debug_file::build_id(&file))
}

/// Whether a build id as recorded (trailing zero bytes may be missing) is the file's.
fn same_build_id(recorded: &[u8], file: &[u8]) -> bool {
    file.len() >= recorded.len()
        && file[..recorded.len()] == *recorded
        && file[recorded.len()..].iter().all(|&b| b == 0)
}

/// Whether the code at `loc` is a language runtime's library rather than the program's: the
/// C++ standard library's shared object (`std::string`'s `_M_mutate`, `operator new`).
fn in_language_runtime(loc: &Location) -> bool {
    loc.module.as_deref().is_some_and(|m| {
        ["libstdc++.so", "libc++.so", "libc++abi.so"]
            .iter()
            .any(|r| m.starts_with(r))
    })
}

/// Whether `fr` is a language runtime's allocation machinery rather than the program's code:
/// Rust's standard library (its sources are under `/rustc/`), the C++ standard library's
/// headers, inlined into the program (`std::vector`'s growth, `std::__new_allocator`, under
/// `/include/c++/`), Rust's allocator shims, C++'s `operator new`, and C's `malloc` family under
/// its own names or glibc's (the dynamic loader's allocations call through an inlined `calloc`
/// of `rtld-malloc.h`, seen once its debug file is read).
fn is_allocation_plumbing(fr: &SymbolFrame) -> bool {
    let name = fr.name();
    fr.file
        .as_deref()
        .is_some_and(|f| f.starts_with("/rustc/") || f.contains("/include/c++/"))
        || C_ALLOCATION_FUNCTIONS.contains(&name)
        || name.starts_with("__rust_")
        || name.starts_with("__rdl_")
        || name.starts_with("__rg_")
        || name.starts_with("operator new")
        || ["alloc::", "<alloc::", "core::alloc", "std::alloc"]
            .iter()
            .any(|p| name.starts_with(p))
}

/// The C allocation functions, and glibc's names of them.
const C_ALLOCATION_FUNCTIONS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "reallocarray",
    "aligned_alloc",
    "posix_memalign",
    "memalign",
    "valloc",
    "pvalloc",
    "__libc_malloc",
    "__libc_calloc",
    "__libc_realloc",
    "__libc_memalign",
    "__rtld_malloc",
    "__rtld_calloc",
    "__rtld_realloc",
];

/// A module file by its path and build id.
type FileKey = (String, Vec<u8>);

/// Resolves pcs to functions and lines, caching modules and pcs.
#[derive(Default)]
pub struct Symbolizer {
    /// By module path and build id.
    files: HashMap<FileKey, ModuleFile>,
    /// By (pc, whether it is a return address).
    cache: HashMap<(u64, bool), Rc<Location>>,
    /// Set for interactive use: see the module docs.
    interactive: Option<Interactive>,
}

/// An interactive symbolizer's state: the files opening in the background and this frame's
/// deadline.
#[derive(Default)]
struct Interactive {
    opening: HashMap<FileKey, Receiver<ModuleFile>>,
    deadline: Option<Instant>,
    unresolved: usize,
}

impl fmt::Debug for Symbolizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Symbolizer")
            .field("files", &self.files.len())
            .field("cached", &self.cache.len())
            .field("interactive", &self.interactive.is_some())
            .finish()
    }
}

impl Symbolizer {
    /// A symbolizer with nothing opened yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A symbolizer for the viewer, which never holds up a frame: see the module docs.
    pub fn interactive() -> Self {
        Self {
            interactive: Some(Interactive::default()),
            ..Self::default()
        }
    }

    /// Starts a frame of an interactive symbolizer: new pcs are resolved for `budget` from now,
    /// then left for the next frame. (Nothing for one that is not interactive.)
    pub fn begin_frame(&mut self, budget: Duration) {
        if let Some(i) = &mut self.interactive {
            i.deadline = Some(Instant::now() + budget);
            i.unresolved = 0;
        }
    }

    /// Pcs left unresolved since the frame began (their module file is still opening, or the
    /// frame's time was up): draw again to show them.
    pub fn unresolved(&self) -> usize {
        self.interactive.as_ref().map_or(0, |i| i.unresolved)
    }

    /// Whether an interactive symbolizer's frame is out of time.
    fn out_of_time(&mut self) -> bool {
        let Some(i) = &mut self.interactive else {
            return false;
        };
        let late = i.deadline.is_some_and(|d| Instant::now() >= d);
        i.unresolved += usize::from(late);
        late
    }

    /// The opened file of module `m`; None while an interactive symbolizer opens it in the
    /// background (counted as unresolved).
    fn file(&mut self, m: &Module) -> Option<&ModuleFile> {
        let key = (m.path.clone(), m.build_id.clone());
        if !self.files.contains_key(&key)
            && let Some(i) = &mut self.interactive
        {
            let rx = i.opening.entry(key.clone()).or_insert_with(|| {
                let (tx, rx) = std::sync::mpsc::channel();
                let (path, id) = key.clone();
                let spawned = std::thread::Builder::new()
                    .name("heaplens-symbols".into())
                    .spawn(move || {
                        let _ = tx.send(ModuleFile::open(&path, &id));
                    });
                if let Err(e) = spawned {
                    let (tx, rx2) = std::sync::mpsc::channel();
                    let _ = tx.send(ModuleFile::failed(format!("cannot start a thread: {e}")));
                    return rx2;
                }
                rx
            });
            let opened = match rx.try_recv() {
                Ok(f) => f,
                Err(TryRecvError::Empty) => {
                    i.unresolved += 1;
                    return None;
                }
                Err(TryRecvError::Disconnected) => ModuleFile::failed("opening it failed".into()),
            };
            i.opening.remove(&key);
            self.files.insert(key.clone(), opened);
        }
        Some(
            self.files
                .entry(key)
                .or_insert_with(|| ModuleFile::open(&m.path, &m.build_id)),
        )
    }

    /// The location of a stack frame's pc: a return address, so the call before it is looked
    /// up (`pc − 1`), as debuggers and heaptrack do; shown with the pc itself.
    pub fn frame(&mut self, sites: &Sites, pc: u64) -> Rc<Location> {
        self.resolve(sites, pc, true)
    }

    /// The location of `pc` (`return_address`: look up `pc − 1`, the call instruction).
    pub fn resolve(&mut self, sites: &Sites, pc: u64, return_address: bool) -> Rc<Location> {
        if let Some(l) = self.cache.get(&(pc, return_address)) {
            return Rc::clone(l);
        }
        let before = self.unresolved();
        if self.out_of_time() {
            let m = sites.module_of(pc);
            return Rc::new(Location {
                pc,
                offset: m.map_or(pc, |m| pc.wrapping_sub(m.bias)),
                module: m.map(|m| module_name(&m.path)),
                ..Location::default()
            });
        }
        let loc = match sites.module_of(pc) {
            Some(m) => {
                let probe = pc.wrapping_sub(m.bias);
                let mut loc = self.lookup(m, probe.wrapping_sub(u64::from(return_address)));
                loc.pc = pc;
                loc.offset = probe;
                loc
            }
            None => Location {
                pc,
                offset: pc,
                problem: Some("in no known module".into()),
                ..Location::default()
            },
        };
        let loc = Rc::new(loc);
        if self.cache.len() < 1 << 20 && self.unresolved() == before {
            self.cache.insert((pc, return_address), Rc::clone(&loc));
        }
        loc
    }

    /// The name of site `leaf`: the innermost function of its stack that is the program's own
    /// code, with file:line (the frames of the allocation plumbing it called through, such as
    /// Rust's `alloc::alloc` and `RawVec` or C++'s `operator new`, are skipped), or
    /// `module+0xoffset` for code without symbols; `stack N` if the node is unknown.
    pub fn site_name(&mut self, sites: &Sites, leaf: u32) -> String {
        let Some(first) = sites.frame(leaf) else {
            return format!("stack {leaf}");
        };
        for f in &sites.stack(leaf) {
            let loc = self.frame(sites, f.pc);
            if in_language_runtime(&loc) {
                continue;
            }
            if loc.frames.iter().all(|fr| fr.function.is_none()) {
                return loc.to_string();
            }
            for fr in &loc.frames {
                if !is_allocation_plumbing(fr) {
                    return match fr.file_line() {
                        Some(fl) => format!("{} ({fl})", fr.name()),
                        None => fr.name().to_owned(),
                    };
                }
            }
        }
        self.frame(sites, first.pc).to_string()
    }

    /// [`Symbolizer::site_name`] of each of `leaves`, with their stacks
    /// ([`Symbolizer::stack_lines`]); sites that share a name get the caller that tells them
    /// apart ([`apart::told_apart`]).
    pub fn site_names(&mut self, sites: &Sites, leaves: &[u32]) -> Vec<(String, Vec<String>)> {
        let names: Vec<String> = leaves.iter().map(|&l| self.site_name(sites, l)).collect();
        let stacks: Vec<Vec<String>> = leaves.iter().map(|&l| self.stack_lines(sites, l)).collect();
        apart::told_apart(&names, &stacks)
            .into_iter()
            .zip(stacks)
            .collect()
    }

    /// The first `n` functions of site `leaf`'s stack that are the program's own code, leaf
    /// first, each with file:line: `make (util.rs:91), called from run (fragmentation.rs:36)`.
    /// Empty when no function resolves (the program's file is gone or was rebuilt).
    pub fn site_chain(&mut self, sites: &Sites, leaf: u32, n: usize) -> String {
        let mut names = Vec::new();
        'walk: for f in &sites.stack(leaf) {
            let loc = self.frame(sites, f.pc);
            if in_language_runtime(&loc) {
                continue;
            }
            for fr in loc.frames.iter().filter(|fr| fr.function.is_some()) {
                if is_allocation_plumbing(fr) {
                    continue;
                }
                names.push(match fr.file_line() {
                    Some(fl) => format!("{} ({fl})", fr.name()),
                    None => fr.name().to_owned(),
                });
                if names.len() == n {
                    break 'walk;
                }
            }
        }
        names.join(", called from ")
    }

    /// The stack of site `leaf`, one line per function (inlined ones too), leaf first; the
    /// last line says when the walk was cut short.
    pub fn stack_lines(&mut self, sites: &Sites, leaf: u32) -> Vec<String> {
        let mut out = Vec::new();
        let stack = sites.stack(leaf);
        for f in &stack {
            let loc = self.frame(sites, f.pc);
            if loc.frames.iter().all(|fr| fr.function.is_none()) {
                out.push(loc.raw());
                continue;
            }
            for fr in &loc.frames {
                out.push(match fr.file_line() {
                    Some(fl) => format!("{} ({fl})", fr.name()),
                    None => fr.name().to_owned(),
                });
            }
        }
        if stack.last().is_some_and(|f| f.truncated) {
            out.push("... (truncated)".into());
        }
        out
    }

    /// The functions at ELF address `addr` of module `m`'s file.
    pub fn lookup(&mut self, m: &Module, addr: u64) -> Location {
        let mut loc = Location {
            pc: addr.wrapping_add(m.bias),
            module: Some(module_name(&m.path)),
            offset: addr,
            frames: Vec::new(),
            problem: None,
        };
        let Some(file) = self.file(m) else {
            return loc;
        };
        loc.problem = file.problem.clone();
        loc.frames = frames_at(file, addr);
        loc
    }

    /// The functions at ELF address `addr` of the file at `path` (no build id check).
    pub fn lookup_file(&mut self, path: &str, addr: u64) -> Location {
        let m = Module {
            path: path.into(),
            ..Module::default()
        };
        self.lookup(&m, addr)
    }
}

/// A module's file name (the path's last component).
fn module_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map_or_else(|| path.to_owned(), |f| f.to_string_lossy().into_owned())
}

/// The inlined chain at `addr` of `file` from DWARF (its debug file's, else its own), else the
/// symbol table's function (its debug file's full one, else its own).
fn frames_at(file: &ModuleFile, addr: u64) -> Vec<SymbolFrame> {
    let loaders: Vec<&Loader> = file.debug.iter().chain(&file.loader).collect();
    for &loader in &loaders {
        let frames = dwarf_frames(loader, addr);
        if frames.iter().any(|f| f.function.is_some()) {
            return frames;
        }
    }
    let mut out = loaders
        .first()
        .map_or_else(Vec::new, |l| dwarf_frames(l, addr));
    let Some(name) = loaders.iter().find_map(|l| l.find_symbol(addr)) else {
        return out;
    };
    let name = addr2line::demangle_auto(name.into(), None).into_owned();
    match out.last_mut() {
        Some(last) => last.function = Some(name),
        None => out.push(SymbolFrame {
            function: Some(name),
            ..SymbolFrame::default()
        }),
    }
    out
}

/// The inlined chain at `addr` from `loader`'s DWARF data (frames without a function name if
/// it has lines but no names).
fn dwarf_frames(loader: &Loader, addr: u64) -> Vec<SymbolFrame> {
    let mut out = Vec::new();
    if let Ok(mut it) = loader.find_frames(addr) {
        while let Ok(Some(f)) = it.next() {
            let function = f
                .function
                .as_ref()
                .and_then(|n| n.demangle().ok())
                .map(std::borrow::Cow::into_owned);
            let (file, line) = match &f.location {
                Some(l) => (l.file.map(str::to_owned), l.line),
                None => (None, None),
            };
            out.push(SymbolFrame {
                function,
                file,
                line,
            });
            if out.len() >= 64 {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_ids_compare_with_missing_trailing_zeros() {
        assert!(same_build_id(&[1, 2], &[1, 2, 0, 0]));
        assert!(same_build_id(&[1, 2], &[1, 2]));
        assert!(!same_build_id(&[1, 2], &[1, 3, 0]));
        assert!(!same_build_id(&[1, 2], &[1, 2, 5]));
    }

    #[test]
    fn unknown_pcs_show_as_module_and_offset() {
        let mut sites = Sites::default();
        use heaplens_alloc::event::{Event, EventKind};
        let e = |kind: EventKind, arg32, addr, arg| Event {
            kind: kind as u8,
            arg32,
            addr,
            arg,
            ..Event::default()
        };
        sites.on_event(&e(EventKind::Module, 1, 0x1000_0000, 0));
        sites.on_event(&e(EventKind::ModuleRange, 1, 0x1000_1000, 0x1000));
        let mut s = Symbolizer::new();
        let l = s.frame(&sites, 0x1000_1234);
        assert_eq!(l.raw(), "+0x1234");
        assert_eq!(l.problem.as_deref(), Some("no path recorded"));
        let l = s.frame(&sites, 0x9999);
        assert_eq!(l.to_string(), "0x9999");
    }
}

#[cfg(test)]
mod plumbing_tests {
    use super::{SymbolFrame, is_allocation_plumbing};

    fn frame(function: &str, file: &str) -> SymbolFrame {
        SymbolFrame {
            function: Some(function.to_owned()),
            file: Some(file.to_owned()),
            line: Some(1),
        }
    }

    #[test]
    fn sites_skip_the_runtimes_allocation_frames_and_keep_the_programs() {
        let rust_std = "/rustc/59807616e1fa/library/alloc/src/alloc.rs";
        assert!(is_allocation_plumbing(&frame("alloc", rust_std)));
        assert!(is_allocation_plumbing(&frame(
            "alloc::raw_vec::RawVec<u8>::grow_one",
            "raw_vec.rs"
        )));
        assert!(is_allocation_plumbing(&frame("__rust_alloc", "")));
        assert!(is_allocation_plumbing(&frame(
            "operator new(unsigned long)",
            "new_op.cc"
        )));
        assert!(is_allocation_plumbing(&frame("calloc", "rtld-malloc.h")));
        assert!(is_allocation_plumbing(&frame("__libc_malloc", "malloc.c")));
        assert!(!is_allocation_plumbing(&frame("alloc_a", "/tmp/stacks.c")));
        assert!(!is_allocation_plumbing(&frame("xmalloc", "wrapper.c")));
        assert!(is_allocation_plumbing(&frame(
            "std::__new_allocator<int>::allocate(unsigned long, void const*)",
            "/usr/include/c++/12/bits/new_allocator.h"
        )));
        assert!(!is_allocation_plumbing(&frame(
            "load_names(int)",
            "/src/v.cc"
        )));
        assert!(!is_allocation_plumbing(&frame(
            "heaplens_sample_apps::util::make",
            "/work/sample-apps/src/util.rs"
        )));
    }
}
