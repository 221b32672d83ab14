//! The symboliser agrees with binutils: a C program compiled here with `-g -O2` (inlined
//! functions included), addresses of its functions and of instructions inside them taken with
//! `nm`, each resolved by `heaplens_viewer::symbols` and by `addr2line -f -i -C -e` (every frame's
//! function and line must match, inlined frames too). Skipped, with a note, where no C compiler
//! or binutils is installed.

use std::path::PathBuf;
use std::process::Command;

use heaplens_alloc::event::{Event, EventKind, flags, module_text};
use heaplens_viewer::model::Sites;
use heaplens_viewer::symbols::{Symbolizer, file_build_id};

const PROGRAM: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline __attribute__((always_inline)) void *checked(size_t n) {
    void *p = malloc(n);
    if (!p)
        abort();
    return p;
}

__attribute__((noinline)) char *make_name(const char *a, int i) {
    size_t n = strlen(a) + 16;
    char *s = checked(n);
    snprintf(s, n, "%s-%d", a, i);
    return s;
}

__attribute__((noinline)) int *make_table(int n) {
    int *t = checked(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++)
        t[i] = i * i;
    return t;
}

int main(int argc, char **argv) {
    long sum = 0;
    for (int i = 0; i < argc * 100; i++) {
        char *s = make_name(argv[0], i);
        int *t = make_table(i + 1);
        sum += (long)strlen(s) + t[i];
        free(s);
        if (i % 2)
            free(t);
    }
    printf("%ld\n", sum);
    return 0;
}
"#;

fn tool(name: &str) -> bool {
    Command::new(name).arg("--version").output().is_ok()
}

/// Compiles the program into a directory of its own (`name`: one per test, as tests run in
/// parallel).
fn build(name: &str) -> Option<PathBuf> {
    if !tool("cc") || !tool("nm") || !tool("addr2line") {
        eprintln!("skipped: needs cc, nm and addr2line");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("heaplens-symbols-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("sites.c");
    std::fs::write(&src, PROGRAM).unwrap();
    let exe = dir.join("sites");
    let out = Command::new("cc")
        .args(["-g", "-O2", "-Wl,--build-id", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe)
}

/// `(address, size)` of the program's functions, from `nm -S`.
fn functions(exe: &PathBuf) -> Vec<(String, u64, u64)> {
    let out = Command::new("nm").arg("-S").arg(exe).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() == 4 && (f[2] == "T" || f[2] == "t") {
                let addr = u64::from_str_radix(f[0], 16).ok()?;
                let size = u64::from_str_radix(f[1], 16).ok()?;
                ["make_name", "make_table", "main"]
                    .contains(&f[3])
                    .then(|| (f[3].to_owned(), addr, size))
            } else {
                None
            }
        })
        .collect()
}

/// binutils' frames per address: (function, line), innermost first.
fn binutils(exe: &PathBuf, addrs: &[u64]) -> Vec<Vec<(String, Option<u32>)>> {
    let out = Command::new("addr2line")
        .args(["-a", "-f", "-i", "-C", "-e"])
        .arg(exe)
        .args(addrs.iter().map(|a| format!("{a:#x}")))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut groups: Vec<Vec<(String, Option<u32>)>> = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        if l.starts_with("0x") {
            groups.push(Vec::new());
            continue;
        }
        let function = l.to_owned();
        let loc = lines.next().unwrap_or("??:0");
        let line = loc
            .rsplit_once(':')
            .and_then(|(_, n)| n.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .filter(|&n| n != 0);
        groups.last_mut().unwrap().push((function, line));
    }
    groups
}

/// Each frame of `loc`, innermost first, as binutils prints it: function and line.
fn functions_and_lines(loc: &heaplens_viewer::symbols::Location) -> Vec<(String, Option<u32>)> {
    loc.frames
        .iter()
        .map(|f| (f.name().to_owned(), f.line))
        .collect()
}

#[test]
fn functions_and_lines_match_binutils_addr2line() {
    let Some(exe) = build("binutils") else { return };
    let funcs = functions(&exe);
    assert_eq!(funcs.len(), 3, "{funcs:?}");
    let mut addrs = Vec::new();
    for (_, start, size) in &funcs {
        let mut a = *start;
        while a < start + size {
            addrs.push(a);
            a += 3;
        }
    }
    let want = binutils(&exe, &addrs);
    assert_eq!(want.len(), addrs.len());
    let mut sym = Symbolizer::new();
    let path = exe.to_str().unwrap();
    let (mut inlined, mut compared) = (0, 0);
    for (&addr, want) in addrs.iter().zip(&want) {
        let loc = sym.lookup_file(path, addr);
        let got = functions_and_lines(&loc);
        assert_eq!(&got, want, "at {addr:#x}");
        if got.len() > 1 {
            inlined += 1;
        }
        compared += 1;
    }
    eprintln!("{compared} addresses match binutils, {inlined} of them with inlined frames");
    assert!(inlined > 0, "no inlined frame among {compared} addresses");
    // Every function starts where nm says, under its own name.
    for (name, start, _) in &funcs {
        assert_eq!(sym.lookup_file(path, *start).function(), *name);
    }
    let _ = std::fs::remove_dir_all(exe.parent().unwrap());
}

/// The trace's modules: `path` with `build_id`, loaded at `bias`.
fn sites_with(path: &str, build_id: &[u8], bias: u64) -> Sites {
    let mut sites = Sites::default();
    let e = |kind: EventKind, f, aux, addr, arg| Event {
        kind: kind as u8,
        flags: f,
        aux,
        arg32: 1,
        addr,
        arg,
        ..Event::default()
    };
    sites.on_event(&e(EventKind::Module, 0, 0, bias, 0));
    sites.on_event(&e(EventKind::ModuleRange, 0, 0, bias, 1 << 20));
    for (what, text) in [
        (module_text::PATH, path.as_bytes()),
        (module_text::BUILD_ID, build_id),
    ] {
        let pieces: Vec<&[u8]> = text.chunks(16).collect();
        for (i, p) in pieces.iter().enumerate() {
            let (addr, arg) = Event::pack_text(p);
            let more = if i + 1 < pieces.len() { flags::MORE } else { 0 };
            sites.on_event(&e(EventKind::ModuleText, more, what, addr, arg));
        }
    }
    sites
}

/// Where the tests below load the program.
const BIAS: u64 = 0x5555_0000_0000;

/// A function of the program: name, address, size (from `nm -S`).
type Function = (String, u64, u64);

/// The program built as `name`, its functions (from `nm`) and its build id.
fn loaded(name: &str) -> Option<(PathBuf, Vec<Function>, Vec<u8>)> {
    let exe = build(name)?;
    let funcs = functions(&exe);
    let id = file_build_id(&exe).unwrap().expect("a build id");
    Some((exe, funcs, id))
}

/// The address of function `name` in the program's file.
fn start_of(funcs: &[Function], name: &str) -> u64 {
    funcs.iter().find(|f| f.0 == name).unwrap().1
}

#[test]
fn a_pc_resolves_through_its_module_and_a_wrong_build_id_is_refused() {
    let Some((exe, funcs, id)) = loaded("module") else {
        return;
    };
    let path = exe.to_str().unwrap();
    let start = start_of(&funcs, "make_table");
    let bias = BIAS;
    // A return address just after a call in make_table: the pc − 1 is in it.
    let sites = sites_with(path, &id, bias);
    let mut sym = Symbolizer::new();
    let loc = sym.frame(&sites, bias + start + 1);
    assert_eq!(loc.function(), "make_table");
    assert_eq!(loc.module.as_deref(), Some("sites"));
    assert_eq!(loc.offset, start + 1);

    let mut wrong = id.clone();
    wrong[0] ^= 0xff;
    let sites = sites_with(path, &wrong, bias);
    let mut sym = Symbolizer::new();
    let loc = sym.frame(&sites, bias + start + 1);
    assert!(loc.frames.is_empty());
    assert!(
        loc.problem
            .as_deref()
            .unwrap()
            .starts_with("build id mismatch")
    );
    assert_eq!(loc.to_string(), format!("sites+{:#x}", start + 1));
    let _ = std::fs::remove_dir_all(exe.parent().unwrap());
}

/// The viewer's symbolizer never holds up a frame: the module file opens on a thread of its
/// own (meanwhile the pc reads as `module+0xoffset`, is counted unresolved and not cached), a
/// frame out of time leaves new pcs for the next, and once open it resolves as the plain one.
#[test]
fn the_interactive_symbolizer_opens_files_in_the_background_and_resolves_the_same() {
    let Some((exe, funcs, id)) = loaded("interactive") else {
        return;
    };
    let path = exe.to_str().unwrap();
    let start = start_of(&funcs, "make_table");
    let bias = BIAS;
    let sites = sites_with(path, &id, bias);
    let pc = bias + start + 1;
    let mut sym = Symbolizer::interactive();
    sym.begin_frame(std::time::Duration::from_secs(60));
    let first = sym.frame(&sites, pc);
    assert!(first.frames.is_empty(), "resolved before its file opened");
    assert_eq!(first.raw(), format!("sites+{:#x}", start + 1));
    assert_eq!(sym.unresolved(), 1);
    // Frames go on until the file is open; each starts with nothing unresolved.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let loc = loop {
        sym.begin_frame(std::time::Duration::from_secs(60));
        assert_eq!(sym.unresolved(), 0);
        let loc = sym.frame(&sites, pc);
        if sym.unresolved() == 0 {
            break loc;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the file never opened"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert_eq!(*loc, *Symbolizer::new().frame(&sites, pc));
    assert_eq!(loc.function(), "make_table");
    // A frame out of time resolves nothing new, and what it left is not cached.
    let other = bias + start_of(&funcs, "main") + 1;
    sym.begin_frame(std::time::Duration::ZERO);
    assert!(sym.frame(&sites, other).frames.is_empty());
    assert_eq!(sym.unresolved(), 1);
    assert_eq!(sym.frame(&sites, pc).function(), "make_table", "cached");
    sym.begin_frame(std::time::Duration::from_secs(60));
    assert_eq!(sym.frame(&sites, other).function(), "main");
    assert_eq!(sym.unresolved(), 0);
    let _ = std::fs::remove_dir_all(exe.parent().unwrap());
}

/// Debian strips its libc and ships the DWARF data apart (`libc6-dbg`, which `.ci/run`
/// installs): a libc frame resolves through that debug file, found by the library's build id,
/// to the function, file and line binutils gives (binutils finds the same file).
#[test]
fn a_stripped_librarys_frames_resolve_through_its_installed_debug_file() {
    use object::{Object, ObjectSymbol};
    let libc = "/lib/x86_64-linux-gnu/libc.so.6";
    let data = std::fs::read(libc).expect("glibc at its Debian path");
    let file = object::File::parse(&*data).unwrap();
    assert!(
        file.section_by_name(".debug_line").is_none(),
        "{libc} is expected stripped, its lines in a debug file"
    );
    let debug = heaplens_viewer::symbols::debug_file::find(
        std::path::Path::new(libc),
        &file,
        std::path::Path::new(heaplens_viewer::symbols::debug_file::DEBUG_ROOT),
    );
    assert!(
        debug.is_some(),
        "no debug file for {libc}: install libc6-dbg (.ci/run does)"
    );
    let strdup = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok("strdup"))
        .expect("strdup in libc's dynamic symbols");
    let addrs: Vec<u64> = (0..strdup.size())
        .step_by(5)
        .map(|o| strdup.address() + o)
        .collect();
    let want = binutils(&PathBuf::from(libc), &addrs);
    let mut sym = Symbolizer::new();
    for (&addr, want) in addrs.iter().zip(&want) {
        let loc = sym.lookup_file(libc, addr);
        let got = functions_and_lines(&loc);
        assert_eq!(&got, want, "at {addr:#x}");
        assert!(
            loc.frames[0]
                .file
                .as_deref()
                .is_some_and(|f| f.ends_with(".c")),
            "{loc:?}"
        );
    }
}
