//! speedscope's file format (<https://www.speedscope.app/file-format-schema.json>): one
//! `sampled` profile whose samples are the stacks (outermost frame first, indices into the
//! shared frame table) weighed by the metric.

use std::collections::HashMap;
use std::io::Write;

use serde_json::json;

use super::Metric;
use super::profile::{Line, Profile};

/// Writes `p` weighed by `m` as a speedscope file named `name`.
pub fn write(p: &Profile, m: Metric, name: &str, mut w: impl Write) -> std::io::Result<()> {
    let mut frames: Vec<&Line> = Vec::new();
    let mut index: HashMap<&Line, usize> = HashMap::new();
    let mut samples = Vec::new();
    let mut weights = Vec::new();
    for s in &p.samples {
        let v = s.value(m).round() as i64;
        if v <= 0 {
            continue;
        }
        let stack: Vec<usize> = p
            .names_root_first(s)
            .map(|l| {
                *index.entry(l).or_insert_with(|| {
                    frames.push(l);
                    frames.len() - 1
                })
            })
            .collect();
        samples.push(stack);
        weights.push(v);
    }
    let frames: Vec<serde_json::Value> = frames
        .iter()
        .map(|l| {
            let mut f = json!({ "name": l.function });
            if !l.file.is_empty() {
                f["file"] = json!(l.file);
            }
            if l.line != 0 {
                f["line"] = json!(l.line);
            }
            f
        })
        .collect();
    let total: i64 = weights.iter().sum();
    let unit = match m.unit() {
        "bytes" => "bytes",
        _ => "none",
    };
    let doc = json!({
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "exporter": concat!("heaplens ", env!("CARGO_PKG_VERSION")),
        "name": name,
        "activeProfileIndex": 0,
        "shared": { "frames": frames },
        "profiles": [{
            "type": "sampled",
            "name": format!("{name}: {}", m.name()),
            "unit": unit,
            "startValue": 0,
            "endValue": total,
            "samples": samples,
            "weights": weights,
        }],
    });
    serde_json::to_writer(&mut w, &doc)?;
    w.flush()
}
