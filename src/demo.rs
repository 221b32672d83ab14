//! The text demo: a workload on the heaplens allocator (this program's global allocator),
//! with the allocator's segments, pages and bins printed while the memory is held and after.

use std::collections::HashMap;

/// Runs the workload and prints the allocator state before and after freeing it.
pub fn run() {
    println!(
        "heaplens {} — a mimalloc-design allocator you can watch",
        env!("CARGO_PKG_VERSION")
    );
    println!(
        "(the live viewer is not built yet; this runs a workload and prints the allocator's state)\n"
    );
    let mut live: Vec<Vec<u8>> = Vec::new();
    let mut map: HashMap<u64, String> = HashMap::new();
    for i in 0..200_000u64 {
        live.push(vec![(i % 251) as u8; (i as usize * 37) % 700 + 1]);
        if i % 3 == 0 {
            map.insert(i, format!("value {i}"));
        }
        if live.len() > 50_000 {
            live.swap_remove((i as usize * 7919) % live.len());
        }
    }
    let workers: Vec<_> = (0..4)
        .map(|t| {
            std::thread::Builder::new()
                .name(format!("worker-{t}"))
                .spawn(move || {
                    (0..50_000)
                        .map(|i| vec![t as u8; i % 300 + 1])
                        .collect::<Vec<_>>()
                })
                .expect("spawn worker")
        })
        .collect();
    let handed_over: Vec<Vec<Vec<u8>>> = workers
        .into_iter()
        .map(|w| w.join().expect("worker"))
        .collect();
    println!("while the workload holds its memory:");
    heaplens_alloc::print_stats(1);
    drop(handed_over);
    drop(live);
    drop(map);
    println!(
        "\nafter freeing it (blocks allocated by the exited workers were freed cross-thread):"
    );
    heaplens_alloc::print_stats(1);
}
