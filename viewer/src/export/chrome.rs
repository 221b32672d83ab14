//! Chrome / Perfetto trace-event JSON (the "JSON Array/Object Format" both read): a counter
//! track (`"ph":"C"`) per metric (committed, page capacity, block and requested bytes, live
//! blocks, the three fragmentations, allocation and free rates, threads) with a point per
//! sample; markers as instant events (`"ph":"i"`) on the thread that set them; thread names as
//! metadata events. Times are microseconds of trace time.

use std::io::Write;

use serde_json::json;

use super::csv::{row, with_previous};
use crate::model::Model;

/// The counter tracks: (name, column of [`super::csv::row`]).
pub const COUNTERS: [(&str, usize); 11] = [
    ("committed bytes", 4),
    ("page capacity bytes", 3),
    ("block bytes", 2),
    ("requested bytes", 1),
    ("live blocks", 7),
    ("internal fragmentation", 15),
    ("page fragmentation", 16),
    ("segment fragmentation", 17),
    ("allocations per second", 18),
    ("frees per second", 19),
    ("threads", 10),
];

/// The process id the events carry (the recorded program's, if known).
fn pid(pid: u32) -> u32 {
    if pid == 0 { 1 } else { pid }
}

/// Writes the model's series, markers and thread names; `process` names the process.
pub fn write(model: &Model, process: &str, os_pid: u32, mut w: impl Write) -> std::io::Result<()> {
    let pid = pid(os_pid);
    w.write_all(b"{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n")?;
    let mut first = true;
    let mut emit = |w: &mut dyn Write, v: serde_json::Value| -> std::io::Result<()> {
        if !first {
            w.write_all(b",\n")?;
        }
        first = false;
        serde_json::to_writer(&mut *w, &v)?;
        Ok(())
    };
    emit(
        &mut w,
        json!({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": process}}),
    )?;
    for h in model.heaps().iter() {
        emit(
            &mut w,
            json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": h.id, "args": {"name": h.label()}}),
        )?;
    }
    for (s, before) in with_previous(model.metrics().samples()) {
        let r = row(s, &before);
        let ts = s.time as f64 / 1e3;
        for (name, col) in COUNTERS {
            emit(
                &mut w,
                json!({"ph": "C", "name": name, "pid": pid, "tid": 0, "ts": ts, "args": {"value": r[col]}}),
            )?;
        }
    }
    for m in model.metrics().markers() {
        emit(
            &mut w,
            json!({"ph": "i", "s": "t", "name": m.label, "cat": "marker", "pid": pid, "tid": m.heap, "ts": m.time as f64 / 1e3}),
        )?;
    }
    w.write_all(b"\n]}\n")?;
    w.flush()
}
