//! The suite's multithreaded stress workload (`benches/c/stress.c`: 8 threads a round, recreated
//! every round, every malloc-family entry point, half the frees cross-thread) under `LD_PRELOAD`,
//! many short times over. A race shows up in some runs only: an earlier build crashed here now
//! and then (a free into an abandoned segment read the segment while another thread was freeing
//! it; fixed by looking for it on the abandoned list first). Every run must exit 0 and print the
//! same check as glibc's malloc.

mod common;

use std::time::Duration;

use common::{Scratch, command, compile_with, crate_dir, preloaded, run};

/// Runs of the workload; each takes about 0.15 s at [`SCALE`].
const ROUNDS: usize = 30;
/// The workload's scale argument: 2000 steps per thread, 96 threads in all.
const SCALE: &str = "0.1";
const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn stress_under_preload_never_crashes() {
    let scratch = Scratch::new("stress-repeated");
    let exe = scratch.join("stress");
    compile_with("cc", &[crate_dir().join("benches/c/stress.c")], &exe, &[]);
    // glibc's malloc is the judge of the expected output (the check is deterministic).
    let plain = run(command(&exe).arg(SCALE), TIMEOUT);
    plain.assert_success("stress.c under glibc's malloc");
    assert!(plain.stdout.starts_with("check "), "{}", plain.describe());
    for round in 0..ROUNDS {
        let out = run(preloaded(&exe).arg(SCALE), TIMEOUT);
        out.assert_success(&format!(
            "stress.c under LD_PRELOAD, run {round} of {ROUNDS}"
        ));
        assert_eq!(
            out.stdout,
            plain.stdout,
            "run {round}: output differs from glibc's\n{}",
            out.describe()
        );
    }
}
