//! A spin lock for the allocator's rare global paths (segment registry, segment cache, abandoned
//! segments, the heap list). Never taken on a fast path. It allocates nothing and is released by
//! `fork()` handlers in [`crate::init`], so a child of a multithreaded program can allocate.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock serialises every access to `value`, so sharing it is sound when T may be sent.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        self.acquire();
        SpinGuard { lock: self }
    }

    /// Takes the lock if it is free; never waits.
    pub(crate) fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        // Not `bool::then_some(SpinGuard { .. })`: that builds the guard either way, and dropping
        // it when the lock is taken released another thread's lock.
        match self
            .locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => Some(SpinGuard { lock: self }),
            Err(_) => None,
        }
    }

    /// Takes the lock without a guard (fork prepare); pair with [`SpinLock::force_unlock`].
    pub(crate) fn acquire(&self) {
        let mut spins = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.locked.load(Ordering::Relaxed) {
                spins += 1;
                if spins < 64 {
                    core::hint::spin_loop();
                } else {
                    // SAFETY: sched_yield has no preconditions.
                    unsafe { libc::sched_yield() };
                }
            }
        }
    }

    /// Releases the lock taken by [`SpinLock::acquire`] (fork parent/child handlers).
    pub(crate) fn force_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> core::ops::Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock, so no one else accesses the value.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> core::ops::DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock exclusively.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::SpinLock;

    #[test]
    fn try_lock_fails_on_a_held_lock_and_leaves_it_held() {
        let lock = SpinLock::new(0u32);
        let held = lock.lock();
        assert!(lock.try_lock().is_none(), "try_lock took a held lock");
        assert!(
            lock.try_lock().is_none(),
            "a failed try_lock released the holder's lock"
        );
        drop(held);
        let mut again = lock.try_lock().expect("free after the holder released it");
        *again += 1;
        drop(again);
        assert_eq!(*lock.lock(), 1);
    }
}
