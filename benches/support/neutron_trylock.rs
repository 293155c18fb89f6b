//! A port of upstream Neutron's `throttler` (neutron/common/utils.py, since 2016): a
//! non-blocking try-lock (`LockWithTimer`) that the first caller inside the window takes and
//! holds while it sleeps out the window; callers that find it taken return at once. It is what
//! a Neutron user would port; the benches and the demo compare against it.
//!
//! A caller that panics while it holds the lock releases it (the guard's drop, as Python's
//! `finally`), so nothing strands; but every coalesced call is a failed compare-and-swap on the
//! lock's cache line, a write, where the crate's Coalesced answer only reads.

use atomic_throttle::Clock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// What one call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryLockAnswer {
    /// Took the lock with the window over: ran at once.
    Now,
    /// Took the lock inside the window: slept until it ended, then ran.
    Deferred,
    /// Found the lock taken: returned at once.
    Coalesced,
}

pub struct NeutronTryLock<C> {
    locked: AtomicBool,
    /// The last run's reading; read and written only by the lock's holder.
    timestamp: AtomicU64,
    threshold: u64,
    clock: C,
}

impl<C: Clock> NeutronTryLock<C> {
    pub fn new(threshold: Duration, clock: C) -> Self {
        Self {
            locked: AtomicBool::new(false),
            timestamp: AtomicU64::new(0),
            threshold: threshold.as_nanos() as u64,
            clock,
        }
    }

    /// The decision alone: takes the lock (`Now`, or `Deferred` if the window is not over,
    /// holding the lock until `finish`), or fails to (`Coalesced`).
    #[inline]
    pub fn decide(&self) -> TryLockAnswer {
        // Acquire on success: the holder sees the last holder's timestamp.
        if self
            .locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return TryLockAnswer::Coalesced;
        }
        let last = self.timestamp.load(Ordering::Relaxed);
        if last == 0 || self.clock.now_nanos().saturating_sub(last) >= self.threshold {
            self.stamp_and_unlock();
            TryLockAnswer::Now
        } else {
            TryLockAnswer::Deferred
        }
    }

    /// For a `Deferred` caller: sleeps out the window, stamps, and releases the lock.
    pub fn finish(&self) {
        let deadline = self.timestamp.load(Ordering::Relaxed) + self.threshold;
        loop {
            let now = self.clock.now_nanos();
            if now >= deadline {
                break;
            }
            self.clock.sleep(Duration::from_nanos(deadline - now));
        }
        self.stamp_and_unlock();
    }

    fn stamp_and_unlock(&self) {
        self.timestamp
            .store(self.clock.now_nanos().max(1), Ordering::Relaxed);
        // Release: the next holder sees this timestamp.
        self.locked.store(false, Ordering::Release);
    }

    /// A whole call, as the decorator makes it.
    #[allow(dead_code)] // the demo calls it; the benches time its parts
    pub fn call<R>(&self, work: impl Fn() -> R) -> (TryLockAnswer, Option<R>) {
        match self.decide() {
            TryLockAnswer::Coalesced => (TryLockAnswer::Coalesced, None),
            TryLockAnswer::Now => (TryLockAnswer::Now, Some(work())),
            TryLockAnswer::Deferred => {
                self.finish();
                (TryLockAnswer::Deferred, Some(work()))
            }
        }
    }
}
