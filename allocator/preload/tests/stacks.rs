//! Stack capture end to end: `tests/c/stacks.c`, built with frame pointers, runs under
//! `LD_PRELOAD` with `HEAPLENS_STACKS=all`, streaming to a socket as under `heaplens record`. The
//! leaf frame of every allocation made in `alloc_a` must lie in `alloc_a` (and its caller in
//! `main` or the thread function), by the symbol table of the binary and the load bias its
//! `Module` event gives; a thread that `dlopen`s while others allocate must not deadlock.

mod common;

use std::collections::HashMap;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Scratch, compile_c, preloaded, run};
use heaplens_alloc::batch::{Batch, Message};
use heaplens_alloc::event::{Event, EventKind, flags, module_text, stack_mode};
use heaplens_alloc::wire;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Function name -> `[start, end)` file addresses, from `nm -S`.
fn symbols(exe: &Path) -> HashMap<String, (u64, u64)> {
    let out = Command::new("nm")
        .arg("-S")
        .arg(exe)
        .output()
        .expect("run nm");
    assert!(out.status.success(), "nm failed");
    let mut map = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [addr, size, kind, name] = f[..]
            && (kind == "T" || kind == "t")
        {
            let a = u64::from_str_radix(addr, 16).unwrap();
            let s = u64::from_str_radix(size, 16).unwrap();
            map.insert(name.to_string(), (a, a + s));
        }
    }
    map
}

/// Runs `exe` preloaded with `env`, streaming to a socket; returns the events per heap, in
/// stream order.
fn record(scratch: &Scratch, exe: &Path, env: &[(&str, &str)]) -> Vec<(u32, Event)> {
    let plugin = scratch.join("libstacks_plugin.so");
    common::compile_with(
        "cc",
        &[common::test_file("c/stacks_plugin.c")],
        &plugin,
        &["-shared", "-fPIC", "-fno-omit-frame-pointer"],
    );
    let sock = scratch.join("sock");
    let listener = UnixListener::bind(&sock).expect("bind socket");
    let reader = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("the program connects");
        let mut r = wire::Messages::new(stream).expect("stream header");
        let mut events = Vec::new();
        while let Some(frame) = r.next_message().expect("a readable stream") {
            match frame {
                Message::Batch(Batch { heap, events: evs }) => {
                    events.extend(evs.into_iter().map(|e| (heap, e)));
                }
                Message::End => break,
                Message::Meta(_) | Message::Exit(_) => {}
            }
        }
        events
    });
    let mut cmd = preloaded(exe);
    cmd.arg(&plugin).env(wire::SOCKET_ENV, &sock);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd, TIMEOUT);
    out.assert_success("stacks.c under LD_PRELOAD");
    assert_eq!(out.stdout, "done\n");
    reader.join().expect("reader thread")
}

fn text(events: &[&Event]) -> Vec<u8> {
    let mut t = Vec::new();
    for e in events {
        let b = e.text();
        let n = b.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
        t.extend_from_slice(&b[..if e.flags & flags::MORE != 0 { 16 } else { n }]);
    }
    t
}

#[test]
fn leaf_frames_of_allocations_lie_in_their_functions() {
    check_frames("stacks", &["-fno-omit-frame-pointer", "-ldl"]);
}

/// The program built as most C code is (`-O2`, no frame pointers): the walk follows the
/// modules' `.eh_frame` rows, and the callers are found all the same.
#[test]
fn frames_resolve_without_frame_pointers() {
    check_frames("stacks-nofp", &["-O2", "-fomit-frame-pointer", "-ldl"]);
}

fn check_frames(name: &str, cflags: &[&str]) {
    let scratch = Scratch::new(name);
    let exe = compile_c(&scratch, "stacks.c", cflags);
    let events = record(&scratch, &exe, &[("HEAPLENS_STACKS", "all")]);

    // The mode, first among the stack events.
    let mode = events
        .iter()
        .find(|(_, e)| e.kind == EventKind::StackMode as u8)
        .expect("a StackMode event");
    assert_eq!((mode.0, mode.1.aux), (0, stack_mode::ALL));

    // The program's module and its load bias.
    let canonical = exe.canonicalize().unwrap();
    let mut paths: HashMap<u32, Vec<&Event>> = HashMap::new();
    for (_, e) in &events {
        if e.kind == EventKind::ModuleText as u8 && e.aux == module_text::PATH {
            paths.entry(e.arg32).or_default().push(e);
        }
    }
    let exe_id = paths
        .iter()
        .find(|(_, evs)| text(evs) == canonical.as_os_str().as_encoded_bytes())
        .map(|(&id, _)| id)
        .expect("a Module for the program");
    let bias = events
        .iter()
        .find(|(_, e)| e.kind == EventKind::Module as u8 && e.arg32 == exe_id)
        .expect("its Module event")
        .1
        .addr;
    let syms = symbols(&exe);
    let inside = |name: &str, pc: u64| {
        let (s, e) = syms[name];
        pc >= bias + s && pc < bias + e
    };

    // Frames, each sent before the first allocation that uses it, in its thread's stream.
    let mut frames: HashMap<u32, Event> = HashMap::new();
    let mut from: HashMap<&str, usize> = HashMap::new();
    for (heap, e) in &events {
        if e.kind == EventKind::StackFrame as u8 {
            assert_ne!(*heap, 0, "frames come in the threads' streams");
            assert!(
                e.arg32 != 0 && frames.insert(e.arg32, *e).is_none(),
                "ids are unique"
            );
            if e.arg != 0 {
                assert!(
                    frames.contains_key(&(e.arg as u32)),
                    "the parent comes first"
                );
            }
        }
        let f = match e.arg {
            1001 => "alloc_a",
            2002 => "alloc_b",
            3030 => "alloc_c",
            5050 => "grow_c",
            1616 => "alloc_aligned16",
            4040 => "alloc_aligned",
            6060 => "alloc_posix",
            7070 => "alloc_memalign",
            8080 => "alloc_valloc",
            12288 => "alloc_pvalloc",
            _ => continue,
        };
        if e.kind != EventKind::Alloc as u8 {
            continue;
        }
        let leaf = frames
            .get(&e.arg32)
            .unwrap_or_else(|| panic!("allocation {e:?} has a stack sent before it"));
        let parent = frames.get(&(leaf.arg as u32)).expect("a caller frame");
        assert!(inside(f, leaf.addr), "leaf {:#x} not in {f}", leaf.addr);
        assert!(
            inside("main", parent.addr) || inside("allocator", parent.addr),
            "caller {:#x} of {f} not in main or allocator",
            parent.addr
        );
        if inside("main", parent.addr) {
            // Beyond main: the C library's start code, up to the end of the stack.
            let outer = frames
                .get(&(parent.arg as u32))
                .expect("a frame beyond main");
            assert!(!inside("main", outer.addr));
        }
        *from.entry(f).or_default() += 1;
    }
    let n = |f: &str| from.get(f).copied().unwrap_or(0);
    assert_eq!(n("alloc_b"), 500);
    assert_eq!(
        n("alloc_c") + n("grow_c"),
        1000,
        "realloc, from NULL and moving a block"
    );
    assert_eq!(n("alloc_a"), 500 + 2 * 20000);
    // Every aligned entry point, whatever the alignment, 100 times each.
    for f in [
        "alloc_aligned16",
        "alloc_aligned",
        "alloc_posix",
        "alloc_memalign",
        "alloc_valloc",
        "alloc_pvalloc",
    ] {
        assert_eq!(n(f), 100, "allocations with a stack in {f}");
    }
    // Interned: a few distinct stacks, not one per allocation (over 41 000 of them). How many
    // varies with how the threads interleave (the loader's 20 loads of the library among the
    // others' allocations): 79 to 101 frames in runs on this machine, so the bound has room.
    assert!(frames.len() < 200, "{} frames", frames.len());
    // The library loaded by the thread was reported (each time it was loaded), and unloaded;
    // the frames of its allocations resolve into it.
    let plugin_ids: Vec<u32> = paths
        .iter()
        .filter(|(_, evs)| text(evs).ends_with(b"libstacks_plugin.so"))
        .map(|(&id, _)| id)
        .collect();
    assert!(!plugin_ids.is_empty(), "the plugin reported as a module");
    let biases: Vec<u64> = events
        .iter()
        .filter(|(_, e)| e.kind == EventKind::Module as u8 && plugin_ids.contains(&e.arg32))
        .map(|(_, e)| e.addr)
        .collect();
    assert!(
        events
            .iter()
            .any(|(_, e)| e.kind == EventKind::ModuleGone as u8)
    );
    let plugin_syms = symbols(&scratch.join("libstacks_plugin.so"));
    let (s, e) = plugin_syms["plugin_alloc"];
    let mut from_plugin = 0;
    for (_, ev) in &events {
        if ev.kind == EventKind::Alloc as u8 && ev.arg == 3003 {
            let leaf = frames
                .get(&ev.arg32)
                .expect("the plugin's allocation has a stack");
            assert!(
                biases
                    .iter()
                    .any(|b| leaf.addr >= b + s && leaf.addr < b + e),
                "leaf {:#x} not in plugin_alloc",
                leaf.addr
            );
            from_plugin += 1;
        }
    }
    assert_eq!(from_plugin, 20);
}

#[test]
fn sampled_mode_samples_some_allocations() {
    let scratch = Scratch::new("stacks-sampled");
    let exe = compile_c(&scratch, "stacks.c", &["-fno-omit-frame-pointer", "-ldl"]);
    let env = [
        ("HEAPLENS_STACKS", "sampled"),
        ("HEAPLENS_SAMPLE_BYTES", "65536"),
        ("HEAPLENS_SAMPLE_SEED", "7"),
    ];
    let events = record(&scratch, &exe, &env);
    let mode = events
        .iter()
        .find(|(_, e)| e.kind == EventKind::StackMode as u8)
        .expect("a StackMode event");
    assert_eq!((mode.1.aux, mode.1.arg), (stack_mode::SAMPLED, 65536));
    let allocs: Vec<&Event> = events
        .iter()
        .filter(|(_, e)| e.kind == EventKind::Alloc as u8 && e.arg == 1001)
        .map(|(_, e)| e)
        .collect();
    let sampled = allocs.iter().filter(|e| e.arg32 != 0).count();
    // 40 500 blocks of 1001 bytes: each sampled with probability 1 - exp(-1001/65536) = 1.5%,
    // about 615; far fewer than all, far more than none.
    assert_eq!(allocs.len(), 40_500);
    assert!((300..1000).contains(&sampled), "{sampled} sampled");
}
