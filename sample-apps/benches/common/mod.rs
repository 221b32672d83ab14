//! What the benchmarks of this crate share: building heaplens, compiling the C workloads.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The value of option `name` (`--rounds 3`) on the command line, or `default`.
pub fn count_option(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds `target/release/heaplens` and `libheaplens.so` (release, as a user would).
pub fn build_heaplens(root: &Path) {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "heaplens",
            "-p",
            "heaplens-preload",
        ])
        .current_dir(root)
        .status()
        .expect("cargo build");
    assert!(status.success());
}

/// Compiles the C workload `source` (relative to `root`) to `out`, with or without frame
/// pointers.
pub fn compile(root: &Path, source: &str, out: &Path, frame_pointers: bool) {
    let fp = if frame_pointers {
        "-fno-omit-frame-pointer"
    } else {
        "-fomit-frame-pointer"
    };
    let ok = Command::new("cc")
        .args(["-O2", "-g", "-pthread", fp, "-I"])
        .arg(root.join("allocator/preload/benches/c"))
        .arg("-o")
        .arg(out)
        .arg(root.join(source))
        .arg("-lm")
        .status()
        .expect("cc")
        .success();
    assert!(ok, "cc {source}");
}

/// The time for one cache line to go from CPU 0 to CPU 1 and back (two threads pinned there,
/// passing a counter), median of 5 tries of 20 000 trips; None with fewer than two CPUs or if
/// they cannot be pinned. A guest's CPUs may sit on nearby cores of the host or on far ones, and
/// a recording moves every event from the program's threads to the recorder's, across cores: on
/// this VM `heaplens record ./larson 1` ran 0.69-0.71 s while a trip took 55-70 ns, and 1.14-1.15
/// s while it took 315-327 ns. Printed with a benchmark's ratios, it says which kind of machine
/// they were measured on. The calling thread's own affinity is left alone (the threads are new),
/// so the commands a benchmark starts afterwards may run on any CPU.
#[allow(unsafe_code)] // sched_setaffinity on the calling thread
#[allow(dead_code)] // not every benchmark of the crate prints it
pub fn cross_core_round_trip_ns() -> Option<f64> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
    const TRIPS: u64 = 20_000;
    fn pin(cpu: usize) -> bool {
        // SAFETY: a zeroed cpu_set_t is an empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` is below CPU_SETSIZE (0 or 1), so CPU_SET writes inside `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: pid 0 is the calling thread; `set` is a valid set of its size.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) == 0 }
    }
    /// The counter, and whether a side gave up (it could not be pinned).
    #[derive(Default)]
    struct Line {
        counter: AtomicU64,
        gave_up: AtomicBool,
    }
    /// Passes the counter `TRIPS` times from CPU `cpu`: on CPU 0 it writes the odd values and
    /// waits for the even ones, on CPU 1 the reverse. Returns the time, or None if either side
    /// could not be pinned.
    fn side(line: &Line, cpu: u64) -> Option<std::time::Duration> {
        if !pin(cpu as usize) {
            line.gave_up.store(true, Release);
            return None;
        }
        let start = std::time::Instant::now();
        for i in 0..TRIPS {
            let (send, wait) = if cpu == 0 {
                (2 * i + 1, 2 * i + 2)
            } else {
                (2 * i + 2, 2 * i + 1)
            };
            if cpu == 0 {
                line.counter.store(send, Release);
            }
            while line.counter.load(Acquire) != wait {
                if line.gave_up.load(Acquire) {
                    return None;
                }
                std::hint::spin_loop();
            }
            if cpu == 1 {
                line.counter.store(send, Release);
            }
        }
        Some(start.elapsed())
    }
    if std::thread::available_parallelism().map_or(0, std::num::NonZero::get) < 2 {
        return None;
    }
    let mut tries = Vec::new();
    for _ in 0..5 {
        let line = Arc::new(Line::default());
        let sides: Vec<_> = (0..2)
            .map(|cpu| {
                let line = Arc::clone(&line);
                std::thread::spawn(move || side(&line, cpu))
            })
            .collect();
        let times: Vec<_> = sides.into_iter().map(|t| t.join().ok().flatten()).collect();
        tries.push(times[0]?.as_nanos() as f64 / TRIPS as f64);
        times[1]?;
    }
    tries.sort_by(f64::total_cmp);
    Some(tries[tries.len() / 2])
}
