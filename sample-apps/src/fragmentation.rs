//! Fragmentation: many small objects, 90% freed in a scattered order, every 10th kept alive.

use std::time::Duration;

use crate::Params;
use crate::util::{Rng, check, make};

pub(crate) const STORY: &str = "The program allocates many small objects of 48 to 112 bytes \
(five size classes, one run of small pages each) and then frees 90% of them in a scattered order, \
keeping every 10th object alive. Watch the segment map: almost every page is now about 10% full, \
yet none can be returned, because one long-lived object is enough to pin a page. Next it \
allocates objects of 256 bytes, a different size class, and the map grows new pages beside the \
mostly-empty ones: free space in a page only serves its own size class. Refilling the original \
sizes lands in the holes without a single new page, and when everything is freed the pages \
retire and their memory is purged back to the OS (the committed-bytes plot drops).";

/// Sizes of the first phase: five bins of 16 B steps.
const SIZES: [usize; 5] = [48, 64, 80, 96, 112];
/// The size of the "other" class.
const OTHER: usize = 256;
/// Pauses per phase in the long form, so the fill is seen page by page.
const STEPS: usize = 20;

pub(crate) fn run(p: &Params) {
    let n = if p.short { 40_000 } else { 200_000 };
    let every = n / STEPS;
    let mut rng = Rng::new(0xF4A6);
    let tag = |i: usize| i as u64;

    p.mark(&format!("phase: fill {n} x 48-112 B"));
    let mut objs: Vec<Option<Box<[u8]>>> = Vec::with_capacity(n);
    let mut sizes: Vec<u8> = Vec::with_capacity(n);
    for i in 0..n {
        let size = SIZES[rng.below(SIZES.len())];
        sizes.push(size as u8);
        objs.push(Some(make(size, tag(i))));
        if i % every == every - 1 {
            p.pause(4.0 / STEPS as f64);
        }
    }
    p.pause(2.0);

    // Free 90%: every object but each 10th, in a shuffled order.
    let mut order: Vec<usize> = (0..n).filter(|i| i % 10 != 0).collect();
    rng.shuffle(&mut order);
    p.mark("phase: free 90%, keep every 10th");
    for (k, &i) in order.iter().enumerate() {
        let b = objs[i].take().expect("freed once");
        check(&b, tag(i));
        drop(b);
        if k % every == every - 1 {
            p.pause(4.0 / STEPS as f64);
        }
    }
    let kept = objs.iter().flatten().count();
    assert_eq!(kept, n.div_ceil(10));
    p.mark(&format!("phase: {kept} kept objects pin the pages"));
    p.pause(3.0);

    // As many bytes of another size class as were freed: they cannot use the holes.
    let freed_bytes: usize = order.iter().map(|&i| usize::from(sizes[i])).sum();
    let m = freed_bytes / OTHER;
    p.mark(&format!("phase: allocate {m} x {OTHER} B (other class)"));
    let mut others: Vec<Box<[u8]>> = Vec::with_capacity(m);
    for j in 0..m {
        others.push(make(OTHER, (n + j) as u64));
        if j % (m / STEPS).max(1) == 0 {
            p.pause(2.0 / STEPS as f64);
        }
    }
    p.pause(3.0);

    // The same sizes again: they fill the holes, no new pages.
    p.mark("phase: refill 48-112 B, holes reused");
    for (k, &i) in order.iter().enumerate() {
        objs[i] = Some(make(usize::from(sizes[i]), tag(i)));
        if k % every == every - 1 {
            p.pause(2.0 / STEPS as f64);
        }
    }
    p.pause(3.0);

    p.mark("phase: free all");
    for (i, b) in objs.into_iter().enumerate() {
        let b = b.expect("refilled");
        assert_eq!(b.len(), usize::from(sizes[i]));
        check(&b, tag(i));
    }
    for (j, b) in others.into_iter().enumerate() {
        check(&b, (n + j) as u64);
    }
    p.settle(Duration::from_millis(150));
    p.mark("phase: done, empty pages purged");
    p.pause(2.0);
}
