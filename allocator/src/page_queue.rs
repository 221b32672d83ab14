//! Page queues: a heap keeps one doubly linked queue of pages per bin, plus a queue of full pages.
//! These are the raw list operations; [`crate::heap`] keeps the heap's direct slots in step.

use core::ptr;

use crate::page::Page;

/// A doubly linked list of pages with blocks of one size.
#[repr(C)]
pub struct PageQueue {
    pub(crate) first: *mut Page,
    pub(crate) last: *mut Page,
    pub(crate) block_size: usize,
}

impl PageQueue {
    pub(crate) const fn new(block_size: usize) -> Self {
        Self {
            first: ptr::null_mut(),
            last: ptr::null_mut(),
            block_size,
        }
    }

    /// The first page (the one malloc allocates from), or null.
    pub fn first(&self) -> *mut Page {
        self.first
    }

    /// Inserts `page` at the front.
    ///
    /// # Safety
    /// `page` is owned by the calling thread and in no queue.
    pub(crate) unsafe fn push_front(&mut self, page: *mut Page) {
        // SAFETY: owner-only links of pages in this queue.
        unsafe {
            (*page).prev = ptr::null_mut();
            (*page).next = self.first;
            if self.first.is_null() {
                self.last = page;
            } else {
                (*self.first).prev = page;
            }
            self.first = page;
        }
    }

    /// Inserts `page` at the back.
    ///
    /// # Safety
    /// `page` is owned by the calling thread and in no queue.
    pub(crate) unsafe fn push_back(&mut self, page: *mut Page) {
        // SAFETY: owner-only links of pages in this queue.
        unsafe {
            (*page).next = ptr::null_mut();
            (*page).prev = self.last;
            if self.last.is_null() {
                self.first = page;
            } else {
                (*self.last).next = page;
            }
            self.last = page;
        }
    }

    /// Unlinks `page`.
    ///
    /// # Safety
    /// `page` is in this queue.
    pub(crate) unsafe fn remove(&mut self, page: *mut Page) {
        // SAFETY: `page` and its neighbours are in this queue, owned by the calling thread.
        unsafe {
            let (prev, next) = ((*page).prev, (*page).next);
            if prev.is_null() {
                self.first = next;
            } else {
                (*prev).next = next;
            }
            if next.is_null() {
                self.last = prev;
            } else {
                (*next).prev = prev;
            }
            (*page).next = ptr::null_mut();
            (*page).prev = ptr::null_mut();
        }
    }
}
