//! `heaplens leaks` and the top sites of `heaplens stats` on a trace with stacks: a C program
//! compiled here gives real functions; the trace's frames are return addresses inside them; the
//! reports name those functions (symbolised from the program's file) with the exact bytes and
//! counts each allocated and leaked. A trace without stacks groups leaks by size and thread.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{heaplens, json, tempdir};
use heaplens_alloc::event::{Event, EventKind, flags, module_text, stack_mode};
use heaplens_viewer::trace::{EndInfo, Metadata, TraceWriter};

const PROGRAM: &str = r#"
#include <stdlib.h>
__attribute__((noinline)) void *leak_here(size_t n) { return malloc(n); }
__attribute__((noinline)) void *keep_here(size_t n) { return malloc(n + 1) ; }
int main(int argc, char **argv) {
    (void)argv;
    void *a = leak_here((size_t)argc);
    void *b = keep_here((size_t)argc);
    free(b);
    return a == 0;
}
"#;

/// `source`, written to `dir/name.ext`, built by `compiler` with `-g -O2` (the distribution's
/// flags) into `dir/name`; the program's path, or the error if the compiler did not run or
/// failed.
fn build(
    compiler: &str,
    dir: &Path,
    name: &str,
    ext: &str,
    source: &str,
) -> Result<PathBuf, String> {
    let src = dir.join(format!("{name}.{ext}"));
    std::fs::write(&src, source).unwrap();
    let exe = dir.join(name);
    let status = Command::new(compiler)
        .args(["-g", "-O2", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .map_err(|e| format!("{compiler}: {e}"))?;
    if status.success() {
        Ok(exe)
    } else {
        Err(format!("{compiler} failed: {status}"))
    }
}

/// The program and its functions' addresses (from `nm`); None without a C compiler.
fn program(dir: &Path) -> Option<(PathBuf, Vec<(String, u64)>)> {
    let exe = match build("cc", dir, "leaky", "c", PROGRAM) {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("skipped: no C compiler ({e})");
            return None;
        }
    };
    let out = Command::new("nm").arg(&exe).output().ok()?;
    let syms = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && ["main", "leak_here", "keep_here"].contains(&f[2]))
                .then(|| (f[2].to_owned(), u64::from_str_radix(f[0], 16).unwrap()))
        })
        .collect();
    Some((exe, syms))
}

fn e(kind: EventKind, f: u8, aux: u16, arg32: u32, addr: u64, arg: u64) -> Event {
    Event {
        kind: kind as u8,
        flags: f,
        aux,
        arg32,
        addr,
        arg,
        time: 1_000,
    }
}

/// A trace of `exe` with stacks (or without): 10 blocks of 100 bytes leaked from `leak_here`,
/// 5 of 1000 bytes from `keep_here` freed and 3 of 50 leaked.
fn write_trace(path: &Path, exe: &Path, syms: &[(String, u64)], stacks: bool) {
    let at = |name: &str| syms.iter().find(|s| s.0 == name).unwrap().1;
    let mut w = TraceWriter::create(path, &Metadata::with_allocator_constants()).unwrap();
    let mut process = Vec::new();
    if stacks {
        process.push(e(EventKind::StackMode, 0, stack_mode::ALL, 0, 0, 0));
        process.push(e(EventKind::Module, 0, 0, 1, 0, 0));
        process.push(e(EventKind::ModuleRange, 0, 0, 1, 0, 1 << 24));
        let path = exe.to_str().unwrap().as_bytes();
        let pieces: Vec<&[u8]> = path.chunks(16).collect();
        for (i, p) in pieces.iter().enumerate() {
            let (addr, arg) = Event::pack_text(p);
            let more = if i + 1 < pieces.len() { flags::MORE } else { 0 };
            process.push(e(
                EventKind::ModuleText,
                more,
                module_text::PATH,
                1,
                addr,
                arg,
            ));
        }
    }
    w.write_batch(0, &process).unwrap();
    let mut ev = Vec::new();
    let (leak, keep) = if stacks { (2, 3) } else { (0, 0) };
    if stacks {
        // Return addresses: one byte into each function.
        ev.push(e(EventKind::StackFrame, 0, 0, 1, at("main") + 1, 0));
        ev.push(e(EventKind::StackFrame, 0, 0, 2, at("leak_here") + 1, 1));
        ev.push(e(EventKind::StackFrame, 0, 0, 3, at("keep_here") + 1, 1));
    }
    let base = 0x7f00_0000_0000u64;
    for i in 0..10 {
        ev.push(e(EventKind::Alloc, 0, 0, leak, base + i * 0x100, 100));
    }
    for i in 0..8 {
        let size = if i < 5 { 1000 } else { 50 };
        ev.push(e(
            EventKind::Alloc,
            0,
            0,
            keep,
            base + 0x10_0000 + i * 0x1000,
            size,
        ));
    }
    for i in 0..5 {
        ev.push(e(
            EventKind::Free,
            0,
            0,
            0,
            base + 0x10_0000 + i * 0x1000,
            0,
        ));
    }
    w.write_batch(1, &ev).unwrap();
    w.finish(EndInfo::clean(0)).unwrap();
}

#[test]
fn leaks_and_top_sites_name_the_functions_with_exact_figures() {
    let dir = tempdir("sites");
    let Some((exe, syms)) = program(&dir) else {
        return;
    };
    let trace = dir.join("stacks.hltrace");
    write_trace(&trace, &exe, &syms, true);

    let leaks = json(&["leaks", "--json"], &trace);
    assert_eq!(leaks["stacks"], "all");
    assert_eq!(leaks["leaked_blocks"], 13);
    assert_eq!(leaks["leaked_bytes"], 1150);
    let groups = leaks["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{leaks}");
    let site = |g: &serde_json::Value| g["site"].as_str().unwrap().to_owned();
    assert!(
        site(&groups[0]).starts_with("leak_here (leaky.c:"),
        "{}",
        site(&groups[0])
    );
    assert_eq!(
        (groups[0]["blocks"].as_f64(), groups[0]["bytes"].as_f64()),
        (Some(10.0), Some(1000.0))
    );
    assert!(
        site(&groups[1]).starts_with("keep_here"),
        "{}",
        site(&groups[1])
    );
    assert_eq!(
        (groups[1]["blocks"].as_f64(), groups[1]["bytes"].as_f64()),
        (Some(3.0), Some(150.0))
    );
    // The stack goes out to main.
    let stack = groups[0]["stack"].as_array().unwrap();
    assert!(
        stack.last().unwrap().as_str().unwrap().starts_with("main"),
        "{stack:?}"
    );

    let stats = json(&["stats", "--json"], &trace);
    assert_eq!(stats["stacks"], "all");
    let top = stats["top_sites"].as_array().unwrap();
    assert!(site(&top[0]).starts_with("leak_here"));
    assert_eq!(top[0]["live_bytes"].as_f64(), Some(1000.0));
    assert_eq!(top[0]["allocs"].as_f64(), Some(10.0));
    assert!(site(&top[1]).starts_with("keep_here"));
    assert_eq!(top[1]["total_bytes"].as_f64(), Some(5150.0));
    assert_eq!(top[1]["allocs"].as_f64(), Some(8.0));
    assert_eq!(top[1]["peak_live_bytes"].as_f64(), Some(5150.0));

    let text = heaplens().arg("leaks").arg(&trace).output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("leak_here (leaky.c:"), "{text}");
}

#[test]
fn without_stacks_leaks_group_by_size_and_thread() {
    let dir = tempdir("nostacks");
    let Some((exe, syms)) = program(&dir) else {
        return;
    };
    let trace = dir.join("plain.hltrace");
    write_trace(&trace, &exe, &syms, false);
    let leaks = json(&["leaks", "--json"], &trace);
    assert_eq!(leaks["stacks"], "off");
    assert_eq!(leaks["leaked_bytes"], 1150);
    let blocks: f64 = leaks["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["blocks"].as_f64().unwrap())
        .sum();
    assert_eq!(blocks, 13.0);
    let text = heaplens().arg("leaks").arg(&trace).output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("stacks      off"), "{text}");
}

const CXX_PROGRAM: &str = r#"
#include <cstdio>
#include <map>
#include <string>
#include <vector>
std::vector<std::string> *names; // never deleted: its blocks leak
std::map<int, std::vector<int>> table;
__attribute__((noinline)) void load_names(int n) {
    names = new std::vector<std::string>();
    for (int i = 0; i < n; i++) names->push_back("name-with-a-long-prefix-" + std::to_string(i));
}
__attribute__((noinline)) void fill_table(int n) {
    for (int i = 0; i < n; i++) table[i].assign(i % 50, i);
}
int main() {
    load_names(20000);
    fill_table(20000);
    std::printf("%zu %zu\n", names->size(), table.size());
}
"#;

const EARLY_PROGRAM: &str = r#"
#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) void *inner(size_t n) { void *p = malloc(n); __asm__ volatile("" ::: "memory"); return p; }
__attribute__((noinline)) void *outer(size_t n) { void *p = inner(n + 1); __asm__ volatile("" ::: "memory"); return p; }
int main(int argc, char **argv) {
    (void)argv;
    void *keep[100];
    for (int i = 0; i < 100; i++) keep[i] = outer((size_t)argc * 40);
    printf("%p\n", keep[99]);
    return 0;
}
"#;

/// The unwind rows are ready before the program's first instruction: a program built without
/// frame pointers that samples every allocation (`--sample-bytes 1`) from its start has the
/// whole stack (`inner <- outer <- main`) for all of its leaked blocks; none stops at the first
/// frame, as a walk by frame pointers through this code does (a recorder that let the program
/// go on before the rows were built gave `inner <- ... (truncated)`).
#[test]
fn stacks_sampled_from_the_first_instructions_are_whole() {
    let dir = tempdir("early-stacks");
    let exe = build("cc", &dir, "early", "c", EARLY_PROGRAM).expect("cc builds it");
    common::build_preload();
    let trace = dir.join("early.hltrace");
    common::record(
        &trace,
        &["--stacks", "sampled", "--sample-bytes", "1"],
        &[&exe],
    );
    let leaks = json(&["leaks", "--json"], &trace);
    let group = leaks["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["site"].as_str().unwrap().starts_with("inner ("))
        .unwrap_or_else(|| panic!("no group at inner: {leaks}"));
    assert_eq!(group["blocks"].as_f64(), Some(100.0), "{group}");
    let stack: Vec<&str> = group["stack"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(stack.len() >= 3, "{stack:?}");
    assert!(stack[1].starts_with("outer ("), "{stack:?}");
    assert!(stack[2].starts_with("main ("), "{stack:?}");
    // Sampled, `stats` says its sites' figures are estimates, as `leaks` does.
    for cmd in ["stats", "leaks"] {
        let text = heaplens().arg(cmd).arg(&trace).output().unwrap();
        let text = String::from_utf8(text.stdout).unwrap();
        assert!(
            text.contains("stacks      sampled: figures per "),
            "{cmd}: {text}"
        );
    }
}

/// A C++ program built with the distribution's flags (no frame pointers), recorded with every
/// stack: its sites are named after its own functions, not the standard library's allocator
/// (`std::__new_allocator<int>::allocate`, inlined from the headers, or `std::string`'s code in
/// libstdc++), and a function's sites that part only there say through which.
#[test]
fn a_cxx_programs_sites_are_its_functions_not_the_standard_librarys() {
    let dir = tempdir("cxx-sites");
    let exe = build("g++", &dir, "tables", "cc", CXX_PROGRAM)
        .expect("g++ builds it (.ci/run installs g++)");
    common::build_preload();
    let trace = dir.join("tables.hltrace");
    common::record(&trace, &["--stacks", "all"], &[&exe]);
    let stats = json(&["stats", "--json"], &trace);
    let top = stats["top_sites"].as_array().unwrap();
    let allocs_of = |function: &str| -> f64 {
        top.iter()
            .filter(|s| s["site"].as_str().unwrap().starts_with(function))
            .map(|s| s["allocs"].as_f64().unwrap())
            .sum()
    };
    // Every key gets a node, and every value but the empty ones (i % 50 == 0) an array.
    assert_eq!(
        allocs_of("fill_table(int) (tables.cc:"),
        39_600.0,
        "{stats}"
    );
    // Each name is longer than a short string holds; the vector grows about 15 times.
    // (And the vector itself.)
    let loads = allocs_of("load_names(int) (tables.cc:");
    assert!((20_000.0..20_040.0).contains(&loads), "{loads}: {stats}");
    for s in top {
        let name = s["site"].as_str().unwrap();
        assert!(!name.starts_with("std::"), "{name}");
    }
    let tables: Vec<&str> = top
        .iter()
        .map(|s| s["site"].as_str().unwrap())
        .filter(|n| n.starts_with("fill_table"))
        .collect();
    assert_eq!(tables.len(), 2, "{tables:?}");
    assert!(
        tables.iter().all(|n| n.contains(" via std::")),
        "{tables:?}"
    );
    assert_ne!(tables[0], tables[1]);
    // The names are never freed: each leak group points at the frame its site is named after,
    // and the text lists the callers from there (`main`), not the library's frames.
    let leaks = json(&["leaks", "--json"], &trace);
    for g in leaks["groups"].as_array().unwrap() {
        let stack = g["stack"].as_array().unwrap();
        let at = g["site_frame"].as_u64().unwrap() as usize;
        let named = stack[at].as_str().unwrap();
        assert!(g["site"].as_str().unwrap().starts_with(named), "{g}");
    }
    let text = heaplens().arg("leaks").arg(&trace).output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    let after = |site: &str| {
        let mut lines = text.lines().skip_while(|l| !l.contains(site));
        lines.next();
        lines.next().unwrap_or("").trim().to_owned()
    };
    assert!(
        after("load_names(int) (tables.cc:").starts_with("main"),
        "{text}"
    );
}
