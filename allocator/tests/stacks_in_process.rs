//! Stacks in process (a Rust program with heaplens as `#[global_allocator]`, as the demo runs):
//! with `set_stack_mode(All)`, every allocation a known function makes through `Vec` carries a
//! stack whose frames, sent before it in its thread's stream, lead through that function; the
//! stack mode and the modules come first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use heaplens_alloc::batch::{Batch, Message};
use heaplens_alloc::collector::{self, Config};
use heaplens_alloc::event::{Event, EventKind, stack_mode};
use heaplens_alloc::{HeapLens, StackMode};

#[global_allocator]
static ALLOC: HeapLens = HeapLens;

/// Allocates a buffer of a size nothing else asks for.
#[inline(never)]
fn site() -> Vec<u8> {
    let v = Vec::with_capacity(4321);
    std::hint::black_box(v)
}

#[test]
fn allocations_through_vec_carry_their_callers_stack() {
    heaplens_alloc::set_stack_mode(StackMode::All, 0);
    let rx = collector::subscribe(Config::default(), 1 << 16).expect("collector starts");
    let worker = std::thread::spawn(|| {
        for _ in 0..100 {
            drop(site());
        }
    });
    worker.join().unwrap();
    for _ in 0..100 {
        drop(site());
    }
    std::thread::spawn(collector::shutdown);
    let mut events: Vec<(u32, Event)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Message::Batch(Batch { heap, events: evs })) => {
                events.extend(evs.into_iter().map(|e| (heap, e)));
            }
            Ok(Message::End) => break,
            Ok(Message::Meta(_) | Message::Exit(_)) | Err(_) => {}
        }
    }
    let mode = events
        .iter()
        .position(|(_, e)| e.kind == EventKind::StackMode as u8)
        .expect("a StackMode event");
    assert_eq!(events[mode].1.aux, stack_mode::ALL);
    assert!(
        events
            .iter()
            .any(|(_, e)| e.kind == EventKind::Module as u8)
    );

    let code = site as *const () as u64;
    let mut frames: HashMap<u32, Event> = HashMap::new();
    let mut through_site = 0;
    for (i, (heap, e)) in events.iter().enumerate() {
        if e.kind == EventKind::StackFrame as u8 {
            assert!(i > mode, "the mode comes before the first frame");
            frames.insert(e.arg32, *e);
        }
        if e.kind != EventKind::Alloc as u8 || e.arg != 4321 {
            continue;
        }
        assert_ne!(*heap, 0);
        // Walk the chain from the leaf out: one frame lies in `site` (within its first KiB).
        let mut id = e.arg32;
        let mut depth = 0;
        let mut found = false;
        while id != 0 {
            let f = frames
                .get(&id)
                .expect("every frame sent before its allocation");
            found |= f.addr > code && f.addr < code + 1024;
            depth += 1;
            if f.arg == 0 {
                break;
            }
            id = f.arg as u32;
        }
        assert!(depth > 1 && depth <= 64);
        through_site += usize::from(found);
    }
    assert_eq!(
        through_site, 200,
        "every allocation of site() has it in its stack"
    );
}
