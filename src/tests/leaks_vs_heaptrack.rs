//! Allocation sites of a real C program with known call paths, recorded with `--stacks all`,
//! built twice: with frame pointers and with the compiler's default flags (no frame pointers at
//! -O2 on x86-64; the unwinder then uses `.eh_frame`). The per-site totals and the leaks equal
//! the program's known figures, and agree with heaptrack's on the same program.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{json, tempdir};

/// Each function allocates a known total; `leak_some` leaks 300 blocks of 100 bytes. The empty
/// asm after each `malloc` keeps the call from becoming a tail call, so the function's own frame
/// is on the stack when `malloc` runs.
const PROGRAM: &str = r#"
#include <stdlib.h>
#define KEEP(p) __asm__ volatile("" : : "r"(p) : "memory")
__attribute__((noinline)) void *alloc_small(int i) { void *p = malloc(24 + (i % 3) * 8); KEEP(p); return p; }
__attribute__((noinline)) void *alloc_big(void) { void *p = malloc(5000); KEEP(p); return p; }
__attribute__((noinline)) void leak_some(void) {
    for (int i = 0; i < 300; i++) { void *p = malloc(100); KEEP(p); }
}
int main(void) {
    for (int i = 0; i < 3000; i++) free(alloc_small(i));
    for (int i = 0; i < 20; i++) free(alloc_big());
    leak_some();
    return 0;
}
"#;

fn build(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let src = dir.join("sites.c");
    std::fs::write(&src, PROGRAM).unwrap();
    let exe = dir.join(name);
    let ok = Command::new("cc")
        .args(["-g", "-O2"])
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap()
        .success();
    assert!(ok, "compiling {name} failed");
    exe
}

/// The function a site names (`leak_some (sites.c:6)` -> `leak_some`).
fn function(site: &serde_json::Value) -> String {
    site.as_str()
        .unwrap_or("")
        .split(" (")
        .next()
        .unwrap_or("")
        .to_owned()
}

/// heaptrack's leaked bytes and calls per leaf function (its figures have 3 significant digits).
fn heaptrack_leaks(dir: &Path, exe: &Path) -> Option<Vec<(String, f64, u64)>> {
    let base = dir.join("ht");
    let ran = Command::new("heaptrack")
        .arg("-o")
        .arg(&base)
        .arg(exe)
        .output()
        .ok()?;
    if !ran.status.success() {
        return None;
    }
    let file = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ht."))
        })?;
    let out = Command::new("heaptrack_print")
        .arg("-f")
        .arg(&file)
        .args(["--print-leaks", "1"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let leaks = text.split("MEMORY LEAKS").nth(1)?;
    let mut found = Vec::new();
    let mut lines = leaks.lines();
    while let Some(l) = lines.next() {
        // "30.00K leaked over 300 calls from" then the leaf function on the next line.
        let Some((amount, rest)) = l.split_once(" leaked over ") else {
            continue;
        };
        if !rest.ends_with("calls from") {
            continue;
        }
        let calls: u64 = rest.split_whitespace().next()?.parse().ok()?;
        let (num, mult) = match amount.chars().last()? {
            'K' => (&amount[..amount.len() - 1], 1e3),
            'M' => (&amount[..amount.len() - 1], 1e6),
            'G' => (&amount[..amount.len() - 1], 1e9),
            'B' => (&amount[..amount.len() - 1], 1.0),
            _ => (amount, 1.0),
        };
        let bytes = num.parse::<f64>().ok()? * mult;
        let leaf = lines.next()?.trim().to_owned();
        found.push((leaf, bytes, calls));
    }
    Some(found)
}

#[test]
fn sites_and_leaks_of_a_c_program_are_exact_with_and_without_frame_pointers_and_agree_with_heaptrack()
 {
    let dir = tempdir("sites-known");
    common::known_counts(&dir); // builds libheaplens.so
    let builds = [
        (
            "with-fp",
            build(&dir, "with-fp", &["-fno-omit-frame-pointer"]),
        ),
        ("default", build(&dir, "default", &[])),
    ];
    for (name, exe) in &builds {
        let trace = dir.join(format!("{name}.hltrace"));
        common::record(&trace, &["--stacks", "all"], &[exe]);

        // Per-site totals: every allocation of each function, exactly.
        let stats = json(&["stats", "--json"], &trace);
        let sites = stats["top_sites"].as_array().unwrap();
        let total = |f: &str| -> (f64, f64) {
            sites
                .iter()
                .filter(|s| function(&s["site"]) == f)
                .fold((0.0, 0.0), |(b, n), s| {
                    (
                        b + s["total_bytes"].as_f64().unwrap(),
                        n + s["allocs"].as_f64().unwrap(),
                    )
                })
        };
        assert_eq!(
            total("alloc_small"),
            (96_000.0, 3000.0),
            "{name}: {sites:?}"
        );
        assert_eq!(total("alloc_big"), (100_000.0, 20.0), "{name}");
        assert_eq!(total("leak_some"), (30_000.0, 300.0), "{name}");

        // Leaks: leak_some's 300 blocks of 100 bytes, from main.
        let leaks = json(&["leaks", "--json"], &trace);
        let groups = leaks["groups"].as_array().unwrap();
        let ours: Vec<_> = groups
            .iter()
            .filter(|g| function(&g["site"]) == "leak_some")
            .collect();
        assert_eq!(ours.len(), 1, "{name}: {groups:?}");
        assert_eq!(ours[0]["bytes"].as_f64(), Some(30_000.0), "{name}");
        assert_eq!(ours[0]["blocks"].as_f64(), Some(300.0), "{name}");
        let stack: Vec<String> = ours[0]["stack"]
            .as_array()
            .unwrap()
            .iter()
            .map(function)
            .collect();
        assert_eq!(stack[..2], ["leak_some", "main"], "{name}: {stack:?}");
        assert!(
            !groups
                .iter()
                .any(|g| ["alloc_small", "alloc_big"].contains(&function(&g["site"]).as_str())),
            "{name}: freed blocks reported as leaks"
        );

        // heaptrack on the same program: the same leak at the same site.
        match heaptrack_leaks(&dir, exe) {
            None => eprintln!("skipped the heaptrack comparison: heaptrack is not installed"),
            Some(ht) => {
                let theirs: Vec<_> = ht.iter().filter(|(f, _, _)| f == "leak_some").collect();
                assert_eq!(theirs.len(), 1, "{name}: heaptrack says {ht:?}");
                let (_, bytes, calls) = theirs[0];
                assert_eq!(*calls, 300, "{name}");
                // heaptrack prints 3 significant digits.
                assert!(
                    (bytes - 30_000.0).abs() <= 30_000.0 * 0.005,
                    "{name}: {bytes}"
                );
            }
        }
        for f in std::fs::read_dir(&dir).unwrap().filter_map(Result::ok) {
            if f.file_name().to_string_lossy().starts_with("ht.") {
                let _ = std::fs::remove_file(f.path());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
