//! A big zeroed block (`calloc`) taken where an earlier block wrote part of its memory: the
//! pages written read as zero, and the pages nobody touched are left alone (the pagemap calls
//! them empty: no write faults them in, no `madvise` gives them back). The pagemap is trusted
//! only through the allocator's own descriptor: a fork's child opens its own, and a program
//! that closes a descriptor it did not open and gets the number back as another file (here
//! `/dev/zero`, which would call every page empty) turns the pagemap off rather than make
//! `calloc` skip pages that hold old data.
//!
//! Its own test binary, one test running its steps in order: the descriptor and the choice to
//! ask the pagemap are the process's.
#![allow(unsafe_code)] // tests call the raw allocator API, `dup2` and `mincore`

mod common;

/// A large block: a span of its own in a large segment, zeroed through the pagemap.
const BIG: usize = 300 << 10;
/// The part of each block the test writes; the rest is never touched.
const WRITTEN: usize = 128 << 10;

/// Takes a block of `BIG` bytes, writes its first `WRITTEN` bytes, frees it, and takes a zeroed
/// block of the same size. Returns the zeroed block if it is the same memory and the written
/// pages were still resident when it was taken (not purged meanwhile), else frees it and
/// returns None. `before_calloc` runs between the free and the `calloc`.
fn reuse_zeroed(before_calloc: &mut dyn FnMut()) -> Option<usize> {
    // SAFETY: any size is a valid request; the block is written within its size, freed once.
    unsafe {
        let p = heaplens_alloc::malloc(BIG);
        assert!(!p.is_null());
        p.write_bytes(0xee, WRITTEN);
        heaplens_alloc::free(p);
        before_calloc();
        let resident = common::resident_pages(p as usize, WRITTEN);
        let z = heaplens_alloc::zalloc(BIG);
        assert!(!z.is_null());
        if z == p && resident == WRITTEN / 4096 {
            Some(z as usize)
        } else {
            heaplens_alloc::free(z);
            None
        }
    }
}

/// The first byte of a zeroed block that is not zero, or of its pages in memory past `WRITTEN`.
/// Those past it are not read if they are out of memory (no swap here: they read as zero), so
/// that they stay so: a page read maps the shared zero page, which counts as in memory, and a
/// block found wholly in memory makes the next big `calloc`s write without asking.
fn first_non_zero(z: usize) -> Option<(usize, u8)> {
    // SAFETY: the block has BIG readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(z as *const u8, WRITTEN) };
    if let Some(i) = bytes.iter().position(|&b| b != 0) {
        return Some((i, bytes[i]));
    }
    if common::resident_pages(z + WRITTEN, BIG - WRITTEN) == 0 {
        return None;
    }
    // SAFETY: as above.
    let bytes = unsafe { std::slice::from_raw_parts(z as *const u8, BIG) };
    bytes.iter().position(|&b| b != 0).map(|i| (i, bytes[i]))
}

#[test]
fn zeroed_blocks_write_what_was_written_and_trust_only_their_own_pagemap() {
    // 1. The written pages are cleared; the untouched ones stay out of memory.
    let z = (0..20)
        .find_map(|_| reuse_zeroed(&mut || {}))
        .expect("the zeroed block never reused the written one: the step tested nothing");
    let untouched = common::resident_pages(z + WRITTEN, BIG - WRITTEN);
    assert_eq!(untouched, 0, "zeroing faulted in pages nobody had touched");
    assert_eq!(first_non_zero(z), None, "the zeroed block holds old data");
    // SAFETY: live, freed once.
    unsafe { heaplens_alloc::free(z as *mut u8) };
    let ours = heaplens_alloc::pagemap::current_descriptor()
        .expect("zeroing a big block did not open the pagemap");

    // 2. A fork's child reads its own pagemap, not the parent's (which its inherited descriptor
    // would read): memory the parent never touched and the child wrote is cleared.
    // SAFETY: the child runs only the allocator and libc calls below, then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: `_exit` ends the child without running the parent's destructors or harness.
        unsafe { libc::_exit(fork_child_zeroes_its_own_writes()) };
    }
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` a valid out-parameter.
    assert_eq!(unsafe { libc::waitpid(pid, &raw mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status),
        "the child did not exit: status {status:#x}"
    );
    match libc::WEXITSTATUS(status) {
        0 => {}
        1 => panic!("the child's zeroed block never reused the one it wrote: tested nothing"),
        2 => panic!("a block zeroed in a fork's child holds what the child wrote there"),
        3 => panic!("the child zeroed without a pagemap of its own: tested nothing"),
        c => panic!("the child exited with {c}"),
    }

    // 3. The program closes the pagemap's descriptor and the number comes back as `/dev/zero`
    // (which reads as "every page empty"): the allocator notices and stops using the pagemap.
    // SAFETY: a NUL-terminated path.
    let dev_zero = unsafe { libc::open(c"/dev/zero".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    assert!(dev_zero >= 0);
    // SAFETY: both are open descriptors; the old one's file is the allocator's, which must
    // notice it is gone.
    assert_eq!(unsafe { libc::dup2(dev_zero, ours) }, ours);
    let z = (0..20)
        .find_map(|_| reuse_zeroed(&mut || {}))
        .expect("the zeroed block never reused the written one: the step tested nothing");
    if let Some((i, b)) = first_non_zero(z) {
        panic!(
            "a block zeroed after the pagemap's descriptor became /dev/zero holds {b:#x} at \
             offset {i}: the allocator read another file as its pagemap"
        );
    }
    assert_eq!(
        heaplens_alloc::pagemap::current_descriptor(),
        None,
        "the pagemap is still in use after its descriptor was replaced"
    );
    // SAFETY: live, freed once; both descriptors are the test's now.
    unsafe {
        heaplens_alloc::free(z as *mut u8);
        libc::close(ours);
        libc::close(dev_zero);
    }
}

/// In a fork's child: takes a block the parent never touched (past one kept live), writes it,
/// frees it, and takes it again zeroed. 0 if it reads as zero, 2 if not, 1 if the zeroed block
/// was other memory each time, 3 if the child opened no pagemap of its own.
fn fork_child_zeroes_its_own_writes() -> i32 {
    // SAFETY: blocks written within their sizes and freed once.
    unsafe {
        let keep = heaplens_alloc::malloc(BIG);
        let mut code = 1;
        for _ in 0..20 {
            if let Some(z) = reuse_zeroed(&mut || {}) {
                code = if first_non_zero(z).is_some() {
                    2
                } else if heaplens_alloc::pagemap::current_descriptor().is_none() {
                    3
                } else {
                    0
                };
                heaplens_alloc::free(z as *mut u8);
                break;
            }
        }
        heaplens_alloc::free(keep);
        code
    }
}
