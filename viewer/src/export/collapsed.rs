//! Folded stacks for flame graph tools (Brendan Gregg's `flamegraph.pl`, inferno, speedscope):
//! one line per stack, `outermost;...;leaf value`, frames by function name (inlined functions
//! after the function they were inlined into). Equal stacks are merged; stacks at 0 left out.

use std::collections::BTreeMap;
use std::io::Write;

use super::Metric;
use super::profile::Profile;

/// The folded stacks of `p` weighed by `m`, sorted by stack.
pub fn folded(p: &Profile, m: Metric) -> BTreeMap<String, i64> {
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    for s in &p.samples {
        let v = s.value(m).round() as i64;
        if v == 0 {
            continue;
        }
        let names: Vec<String> = p.names_root_first(s).map(|l| clean(&l.function)).collect();
        *out.entry(names.join(";")).or_default() += v;
    }
    out.retain(|_, v| *v != 0);
    out
}

/// A frame name with the separators of the format (`;`, newline) replaced.
fn clean(name: &str) -> String {
    name.replace(';', ":").replace(['\n', '\r'], " ")
}

/// Writes the folded stacks of `p` weighed by `m`.
pub fn write(p: &Profile, m: Metric, mut w: impl Write) -> std::io::Result<()> {
    for (stack, v) in folded(p, m) {
        writeln!(w, "{stack} {v}")?;
    }
    w.flush()
}
