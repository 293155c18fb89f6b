//! Ownership of one key's deferred run.

use super::{KeyedThrottle, KeyedThrottleRef};
use crate::clock::DefaultClock;
use crate::deferral::{NotRun, Revoked};
use crate::wait::Look;
use core::fmt;
use core::future::Future;
use core::time::Duration;
use std::collections::hash_map::RandomState;
use std::sync::Arc;

/// One key's single deferred run, owned by the caller that claimed it: what
/// [`Deferral`](crate::Deferral) is for a [`Throttle`](crate::Throttle), for one key of a
/// [`KeyedThrottle`].
///
/// It knows its claim by the exact state word the claim installed in its key's entry, and
/// every stamp or release it makes compares against that word. The word never comes back
/// once the claim is revoked (cancelled, taken over) and an entry is handed to another key
/// only when nothing is pending in it, each time with a word the entry never held before: so
/// a deferral, even one held long after its key's entry went to another key, runs or
/// releases only its own key's claim.
///
/// Dropping it gives the run up (guarantee 2), as a panic, a cancelled future or an early
/// return would; once its run is stamped there is nothing left to release.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{KeyedAdmission, KeyedThrottle};
/// use std::time::Duration;
///
/// let throttle: KeyedThrottle<str> = KeyedThrottle::new(Duration::from_millis(2), 64);
/// let _ = throttle.admit("k"); // Now
/// if let KeyedAdmission::Deferred(deferral) = throttle.admit("k") {
///     assert!(deferral.remaining() <= Duration::from_millis(2));
///     assert_eq!(deferral.run(|| 42), Ok(42)); // sleeps until the deadline, then runs
/// };
/// ```
#[must_use = "dropping a KeyedDeferral gives the deferred run up"]
pub struct KeyedDeferral<T: KeyedThrottleRef> {
    throttle: T,
    /// The entry of the key, when the claim was made.
    slot: usize,
    /// The state word this owner installed when it claimed the deferral.
    word: u64,
    /// Set once the run is stamped or revoked: nothing is left to release.
    spent: bool,
}

/// A [`KeyedDeferral`] that holds its table through an [`Arc`], so that it can move to
/// another thread or task: from [`KeyedThrottle::admit_owned`].
///
/// # Examples
///
/// ```
/// use atomic_throttle::{KeyedThrottle, OwnedKeyedAdmission, OwnedKeyedDeferral};
/// use std::{sync::Arc, thread, time::Duration};
///
/// let throttle: Arc<KeyedThrottle<u16>> =
///     Arc::new(KeyedThrottle::new(Duration::from_millis(1), 64));
/// let _ = throttle.admit_owned(&80);
/// let OwnedKeyedAdmission::Deferred(deferral) = throttle.admit_owned(&80) else {
///     unreachable!()
/// };
/// let deferral: OwnedKeyedDeferral<u16> = deferral;
/// let worker = thread::spawn(move || deferral.run(|| "ran on the worker"));
/// assert_eq!(worker.join().unwrap(), Ok("ran on the worker"));
/// ```
pub type OwnedKeyedDeferral<K, C = DefaultClock, S = RandomState> =
    KeyedDeferral<Arc<KeyedThrottle<K, C, S>>>;

impl<T: KeyedThrottleRef> KeyedDeferral<T> {
    pub(crate) fn new(throttle: T, slot: usize, word: u64) -> Self {
        Self {
            throttle,
            slot,
            word,
            spent: false,
        }
    }

    /// When the deferred run may start, in the clock's nanoseconds: the key's last run's
    /// stamp plus the threshold in force (`u64::MAX` if that lies past the end of the
    /// throttle's time).
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{KeyedAdmission, KeyedThrottle, ManualClock};
    /// use std::time::Duration;
    ///
    /// let throttle = KeyedThrottle::<u8, _>::with_clock(Duration::from_millis(1), 8, ManualClock::new())?;
    /// let _ = throttle.admit(&1);
    /// let KeyedAdmission::Deferred(deferral) = throttle.admit(&1) else { unreachable!() };
    /// assert_eq!(deferral.deadline(), 1_000_000);
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn deadline(&self) -> u64 {
        self.throttle.core().deadline_nanos(self.word)
    }

    /// How long until the deadline; zero once it has passed.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{KeyedAdmission, KeyedThrottle, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let throttle = KeyedThrottle::<u8, _>::with_clock(Duration::from_millis(10), 8, clock.clone())?;
    /// let _ = throttle.admit(&1);
    /// clock.advance(Duration::from_millis(3));
    /// let KeyedAdmission::Deferred(deferral) = throttle.admit(&1) else { unreachable!() };
    /// assert_eq!(deferral.remaining(), Duration::from_millis(7));
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn remaining(&self) -> Duration {
        self.throttle.core().remaining(self.word)
    }

    /// Blocks until the deadline (or a flush), stamps the run, then runs `f` and returns its
    /// result, as [`Deferral::run`](crate::Deferral::run) does. A cancel or a flush is seen
    /// when the wait ends, at the deadline at the latest.
    ///
    /// # Errors
    ///
    /// [`Revoked`] if the deferral was cancelled or taken over before its run was stamped;
    /// `f` did not run.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{KeyedAdmission, KeyedThrottle};
    /// use std::time::{Duration, Instant};
    ///
    /// let throttle: KeyedThrottle<u8> = KeyedThrottle::new(Duration::from_millis(3), 8);
    /// let started = Instant::now();
    /// let _ = throttle.admit(&1);
    /// let KeyedAdmission::Deferred(deferral) = throttle.admit(&1) else { unreachable!() };
    /// deferral.run(|| assert!(started.elapsed() >= Duration::from_millis(3)))?;
    /// # Ok::<(), atomic_throttle::Revoked>(())
    /// ```
    pub fn run<R>(mut self, f: impl FnOnce() -> R) -> Result<R, Revoked> {
        let stamped = self.throttle.word(self.slot).stamp_when_due(self.word);
        // Stamped or revoked: nothing is left to release.
        self.spent = true;
        stamped.map(|_| f())
    }

    /// Waits for the deadline on any executor's timer, then stamps the run, as
    /// [`Deferral::wait_with`](crate::Deferral::wait_with) does; the caller runs the work
    /// when the future completes with `Ok`.
    ///
    /// # Errors
    ///
    /// [`Revoked`] if the deferral was cancelled or taken over first.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes gives the deferral up, exactly as dropping the
    /// deferral does.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{KeyedAdmission, KeyedThrottle, ManualClock};
    /// use std::future::Future;
    /// use std::time::Duration;
    ///
    /// let throttle = KeyedThrottle::<u8, _>::with_clock(Duration::from_millis(2), 8, ManualClock::new())?;
    /// let _ = throttle.admit(&1);
    /// let KeyedAdmission::Deferred(deferral) = throttle.admit(&1) else { unreachable!() };
    /// // On a ManualClock the clock moves for the wait; the timer is never asked.
    /// let wait = deferral.wait_with(|_| std::future::ready(()));
    /// let mut wait = std::pin::pin!(wait);
    /// let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    /// let done = loop {
    ///     if let std::task::Poll::Ready(done) = wait.as_mut().poll(&mut cx) {
    ///         break done;
    ///     }
    /// };
    /// assert_eq!(done, Ok(()));
    /// assert!(!throttle.is_pending(&1)); // stamped: run the work now
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub async fn wait_with<S, F>(mut self, sleep: S) -> Result<(), Revoked>
    where
        S: FnMut(Duration) -> F,
        F: Future<Output = ()>,
    {
        let stamped = self
            .throttle
            .word(self.slot)
            .stamp_when_due_async(self.word, sleep)
            .await;
        self.spent = true;
        stamped.map(drop)
    }

    /// Waits for the deadline on tokio's timer, then stamps the run:
    /// [`wait_with`](KeyedDeferral::wait_with) with `tokio::time::sleep`.
    ///
    /// # Errors
    ///
    /// [`Revoked`] if the deferral was cancelled or taken over first.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future gives the deferral up.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{KeyedAdmission, KeyedThrottle};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), atomic_throttle::Revoked> {
    /// let throttle: KeyedThrottle<u8> = KeyedThrottle::new(Duration::from_millis(2), 8);
    /// let _ = throttle.admit(&1);
    /// if let KeyedAdmission::Deferred(deferral) = throttle.admit(&1) {
    ///     deferral.wait_async().await?;
    ///     println!("trailing run for key 1");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tokio")]
    pub async fn wait_async(self) -> Result<(), Revoked> {
        self.wait_with(tokio::time::sleep).await
    }

    /// Runs `f` if the deadline has passed (or the deferral was flushed); otherwise hands the
    /// deferral back, as [`Deferral::try_run`](crate::Deferral::try_run) does.
    ///
    /// # Errors
    ///
    /// [`NotRun::NotDue`] with the deferral itself when its deadline has not passed yet;
    /// [`NotRun::Revoked`] if it was cancelled or taken over.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{KeyedAdmission, KeyedThrottle, ManualClock, NotRun};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let throttle = KeyedThrottle::<u8, _>::with_clock(Duration::from_millis(1), 8, clock.clone())?;
    /// let _ = throttle.admit(&1);
    /// let KeyedAdmission::Deferred(deferral) = throttle.admit(&1) else { unreachable!() };
    /// let Err(NotRun::NotDue(deferral)) = deferral.try_run(|| "early") else { unreachable!() };
    /// clock.advance(deferral.remaining());
    /// assert_eq!(deferral.try_run(|| "due").ok(), Some("due"));
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn try_run<R>(mut self, f: impl FnOnce() -> R) -> Result<R, NotRun<Self>> {
        match self.throttle.word(self.slot).try_stamp(self.word) {
            Look::Until(_) => Err(NotRun::NotDue(self)),
            Look::Done(stamped) => {
                self.spent = true;
                stamped.map(|_| f()).map_err(NotRun::Revoked)
            }
        }
    }

    /// The keyed throttle this deferral belongs to.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{KeyedAdmission, KeyedThrottle};
    /// # use std::time::Duration;
    /// let throttle: KeyedThrottle<u8> = KeyedThrottle::new(Duration::from_secs(1), 8);
    /// let _ = throttle.admit(&1);
    /// let KeyedAdmission::Deferred(deferral) = throttle.admit(&1) else { unreachable!() };
    /// assert_eq!(deferral.throttle().capacity(), 8);
    /// ```
    pub fn throttle(&self) -> &T {
        &self.throttle
    }
}

impl<T: KeyedThrottleRef> Drop for KeyedDeferral<T> {
    fn drop(&mut self) {
        if !self.spent {
            self.throttle.word(self.slot).release(self.word);
        }
    }
}

impl<T: KeyedThrottleRef> fmt::Debug for KeyedDeferral<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedDeferral")
            .field("deadline", &self.deadline())
            .field("spent", &self.spent)
            .finish_non_exhaustive()
    }
}
