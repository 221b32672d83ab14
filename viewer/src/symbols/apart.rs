//! Telling apart allocation sites that go by the same name.
//!
//! A site is named after the innermost function of its stack that is the program's own code
//! ([`super::Symbolizer::site_name`]). Distinct stacks often share it: every caller of a
//! program's `xmalloc` wrapper, or of a stripped library's one entry point, is a site of its
//! own, and a table of the top sites of `git log` listed `git+0x281bdc` eight times. Each of
//! those gets the callers where its stack branches from the others':
//! `git+0x281bdc <- git+0x281d06 <- … <- git+0x14ed78`.

use std::collections::HashMap;

/// Stacks of one name compared each with every other, up to this many; past it, each with its
/// neighbours in frame order only ([`branch_depths`]).
const COMPARED: usize = 500;

/// For each of `stacks` (frames, leaf first), the depths at which another stack that began
/// the same way goes elsewhere: where its path branches in the tree of all of them,
/// shallowest first. A stack that another begins with entirely branches at its own length too
/// (no frame of its own tells it apart there).
///
/// Past [`COMPARED`] stacks, only the branches to the stacks next to it in frame order are
/// found (the deepest branch among them: the stack that shares the longest beginning with a
/// stack is next to it), so that a leak report of thousands of stacks through one `xmalloc`
/// stays quick.
#[must_use]
pub fn branch_depths<S: AsRef<[String]>>(stacks: &[S]) -> Vec<Vec<usize>> {
    let mut depths = vec![Vec::new(); stacks.len()];
    if stacks.len() <= COMPARED {
        for (i, s) in stacks.iter().enumerate() {
            for (j, other) in stacks.iter().enumerate() {
                if i != j {
                    depths[i].push(first_difference(s.as_ref(), other.as_ref()));
                }
            }
        }
    } else {
        let mut order: Vec<usize> = (0..stacks.len()).collect();
        order.sort_by(|&a, &b| stacks[a].as_ref().cmp(stacks[b].as_ref()));
        for pair in order.windows(2) {
            let d = first_difference(stacks[pair[0]].as_ref(), stacks[pair[1]].as_ref());
            depths[pair[0]].push(d);
            depths[pair[1]].push(d);
        }
    }
    for d in &mut depths {
        d.sort_unstable();
        d.dedup();
    }
    depths
}

/// Where in `stack` (frames, leaf first) the frame is that a site called `name` is named after
/// (the frames before it are the allocation plumbing it called through); 0 if none is.
#[must_use]
pub fn named_frame(name: &str, stack: &[String]) -> usize {
    stack.iter().position(|f| f == name).unwrap_or(0)
}

/// The first index where `a` and `b` differ (the shorter's length if one begins with the other).
fn first_difference(a: &[String], b: &[String]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// `names` of sites with `stacks` (frames, leaf first), each name that other sites share
/// followed by the frames where its stack branches from theirs ([`branch_depths`]): of its
/// callers, the first and, if there are more, the last (`xmalloc <- read_object <- … <-
/// cmd_log`), all of them where those two are not enough to tell it apart; where the stacks
/// part only below the frame the site is named after (in the allocation plumbing it called),
/// that frame (`fill_table (v.cc:11) via std::__new_allocator<int>::allocate`).
#[must_use]
pub fn told_apart(names: &[String], stacks: &[Vec<String>]) -> Vec<String> {
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        by_name.entry(name).or_default().push(i);
    }
    let mut out = names.to_vec();
    for same in by_name.values().filter(|same| same.len() > 1) {
        let group: Vec<&[String]> = same.iter().map(|&i| stacks[i].as_slice()).collect();
        let depths = branch_depths(&group);
        let label = |k: usize, all: bool| {
            let i = same[k];
            // The frame the site is named after: the frames before it are what it called (the
            // allocation plumbing), those after it its callers.
            let site = named_frame(&names[i], &stacks[i]);
            let (inner, callers): (Vec<usize>, Vec<usize>) = depths[k]
                .iter()
                .copied()
                .filter(|&d| d < stacks[i].len())
                .partition(|&d| d < site);
            let shown: Vec<usize> = match (all, callers.first(), callers.last()) {
                (false, Some(&a), Some(&b)) if a != b => vec![a, b],
                (false, Some(&a), _) => vec![a],
                _ => callers,
            };
            let mut text = names[i].clone();
            // Where the stacks part only below the site: through which plumbing it allocated.
            if let Some(&d) = inner.last()
                && (shown.is_empty() || all)
            {
                text.push_str(" via ");
                text.push_str(&stacks[i][d]);
            }
            let mut last = site;
            for d in shown {
                if d > last + 1 {
                    text.push_str(" <- …");
                }
                text.push_str(" <- ");
                text.push_str(&stacks[i][d]);
                last = d;
            }
            text
        };
        let short: Vec<String> = (0..same.len()).map(|k| label(k, false)).collect();
        for (k, text) in short.iter().enumerate() {
            let shared = short.iter().filter(|t| *t == text).count() > 1;
            out[same[k]] = if shared { label(k, true) } else { text.clone() };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(frames: &[&str]) -> Vec<String> {
        frames.iter().map(|f| (*f).to_owned()).collect()
    }

    #[test]
    fn a_stack_branches_wherever_another_that_began_the_same_way_goes_elsewhere() {
        let stacks = [
            stack(&["xmalloc", "read_object", "main"]),
            stack(&["xmalloc", "read_object", "parse", "main"]),
            stack(&["xmalloc", "grow", "main"]),
            stack(&["xmalloc"]),
        ];
        assert_eq!(
            branch_depths(&stacks),
            [vec![1, 2], vec![1, 2], vec![1], vec![1]]
        );
        assert_eq!(branch_depths(&stacks[..1]), [Vec::<usize>::new()]);
    }

    #[test]
    fn many_stacks_of_one_name_are_compared_with_their_neighbours() {
        let stacks: Vec<Vec<String>> = (0..COMPARED + 2)
            .map(|i| {
                let caller = format!("caller{}", i / 2);
                let deeper = format!("deeper{}", i % 2);
                vec!["xmalloc".to_owned(), caller, deeper]
            })
            .collect();
        let depths = branch_depths(&stacks);
        // Each pair of one caller parts at the third frame; the deepest branch is found.
        assert!(depths.iter().all(|d| d.last() == Some(&2)), "{depths:?}");
        let names = vec!["xmalloc".to_owned(); stacks.len()];
        let told = told_apart(&names, &stacks);
        assert_eq!(told[1], "xmalloc <- caller0 <- deeper1");
        let distinct: std::collections::HashSet<&String> = told.iter().collect();
        assert_eq!(distinct.len(), told.len(), "every site is told apart");
    }

    #[test]
    fn only_names_that_are_shared_get_the_frame_that_tells_them_apart() {
        let names: Vec<String> = ["xmalloc", "xmalloc", "load (a.c:3)", "xmalloc"]
            .map(str::to_owned)
            .into();
        let stacks = [
            stack(&["xmalloc", "read_object", "main"]),
            stack(&["xmalloc", "read_object", "parse", "main"]),
            stack(&["load (a.c:3)", "main"]),
            stack(&["xmalloc", "grow", "main"]),
        ];
        assert_eq!(
            told_apart(&names, &stacks),
            [
                "xmalloc <- read_object <- main",
                "xmalloc <- read_object <- parse",
                "load (a.c:3)",
                "xmalloc <- grow"
            ]
        );
    }

    #[test]
    fn sites_the_first_and_last_branch_do_not_tell_apart_get_every_branch() {
        let stacks = [
            stack(&["x", "a", "m1", "z", "k1"]),
            stack(&["x", "a", "m2", "z", "k1"]),
            stack(&["x", "a", "m1", "z", "k2"]),
            stack(&["x", "a", "m2", "z", "k2"]),
            stack(&["x", "b"]),
        ];
        let names = vec!["x".to_owned(); stacks.len()];
        assert_eq!(
            told_apart(&names, &stacks),
            [
                "x <- a <- m1 <- … <- k1",
                "x <- a <- m2 <- … <- k1",
                "x <- a <- m1 <- … <- k2",
                "x <- a <- m2 <- … <- k2",
                "x <- b",
            ]
        );
    }

    #[test]
    fn sites_that_part_only_in_the_plumbing_they_called_say_through_which() {
        let names: Vec<String> = ["fill", "fill", "load"].map(str::to_owned).into();
        let stacks = [
            stack(&["new_allocator<int>", "fill", "main"]),
            stack(&["new_allocator<node>", "fill", "main"]),
            stack(&["new_allocator<int>", "load", "main"]),
        ];
        assert_eq!(
            told_apart(&names, &stacks),
            [
                "fill via new_allocator<int>",
                "fill via new_allocator<node>",
                "load"
            ]
        );
    }

    #[test]
    fn a_stack_another_begins_with_keeps_its_name() {
        let names: Vec<String> = ["f", "f"].map(str::to_owned).into();
        let stacks = [stack(&["f", "g"]), stack(&["f", "g", "h"])];
        assert_eq!(told_apart(&names, &stacks), ["f", "f <- … <- h"]);
        // Named after its second frame (the first is `malloc`): its caller is next to it.
        let stacks = [stack(&["malloc", "f", "g"]), stack(&["malloc", "f", "h"])];
        assert_eq!(told_apart(&names, &stacks), ["f <- g", "f <- h"]);
    }
}
