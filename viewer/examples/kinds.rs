use heaplens_viewer::trace::TraceReader;
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let mut r = TraceReader::open(&path).unwrap();
    let mut kinds = std::collections::BTreeMap::<u8, usize>::new();
    let mut flags = std::collections::BTreeMap::<(u8, u8), usize>::new();
    let mut n = 0;
    for i in 0..r.chunks().len() {
        let Ok(evs) = r.read_chunk(i) else { continue };
        for (_, e) in evs {
            *kinds.entry(e.kind).or_default() += 1;
            *flags.entry((e.kind, e.flags)).or_default() += 1;
            n += 1;
        }
    }
    for (k, c) in kinds {
        println!("kind {k:3}: {c:10} ({:.2}%)", 100.0 * c as f64 / n as f64);
    }
    for ((k, f), c) in flags {
        if c * 100 > n {
            println!("kind {k} flags {f:#x}: {c}");
        }
    }
}
