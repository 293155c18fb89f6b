//! Ownership of the single deferred run.

use crate::clock::{Clock, DefaultClock};
use crate::throttle::Throttle;
use core::fmt;
use core::future::Future;
use core::mem;
use core::time::Duration;
use std::sync::Arc;

/// The single deferred run, owned by the caller that claimed it.
///
/// The owner either runs it ([`run`](Deferral::run), or [`try_run`](Deferral::try_run) from
/// its own event loop) or gives it up by dropping it: a panic unwinding through it, a cancelled
/// future holding it, an early return. Dropping releases the deferral in one atomic step, so
/// the next admission is Deferred (or Now, past the window), never Coalesced behind an owner
/// who is gone (SPEC G2). A release only clears the exact state word this owner installed: it
/// can never clear a later owner's deferral.
///
/// [`mem::forget`] on a deferral is the one way to strand it: every later call is then
/// Coalesced.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Admission, Throttle};
/// use std::time::Duration;
///
/// let throttle = Throttle::new(Duration::from_millis(2));
/// let _ = throttle.admit(); // Now
/// if let Admission::Deferred(deferral) = throttle.admit() {
///     assert!(deferral.remaining() <= Duration::from_millis(3));
///     let answer = deferral.run(|| 42); // sleeps until the deadline, then runs
///     assert_eq!(answer, 42);
/// };
/// ```
#[must_use = "dropping a Deferral gives the deferred run up"]
pub struct Deferral<'a, C: Clock = DefaultClock> {
    throttle: &'a Throttle<C>,
    /// The state word this owner installed when it claimed the deferral.
    word: u64,
}

impl<'a, C: Clock> Deferral<'a, C> {
    pub(crate) fn new(throttle: &'a Throttle<C>, word: u64) -> Self {
        Self { throttle, word }
    }

    /// Hands the claim over without releasing it.
    pub(crate) fn disown(self) -> u64 {
        let word = self.word;
        mem::forget(self);
        word
    }

    /// When the deferred run may start, in the throttle clock's nanoseconds
    /// ([`Clock::now_nanos`]); `u64::MAX` if that lies past the end of the clock's range.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Admission, ManualClock, Throttle};
    /// use std::time::Duration;
    ///
    /// let throttle = Throttle::with_clock(Duration::from_millis(1), ManualClock::new())?;
    /// let _ = throttle.admit();
    /// let Admission::Deferred(deferral) = throttle.admit() else { unreachable!() };
    /// // The window ends a threshold after the last run, rounded up to the throttle's ticks.
    /// assert!(deferral.deadline() >= 1_000_000);
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn deadline(&self) -> u64 {
        self.throttle.deadline_nanos(self.word)
    }

    /// How long until the deadline; zero once it has passed.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Admission, ManualClock, Throttle};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let throttle = Throttle::with_clock(Duration::from_millis(1), clock.clone())?;
    /// let _ = throttle.admit();
    /// let Admission::Deferred(deferral) = throttle.admit() else { unreachable!() };
    /// assert!(deferral.remaining() >= Duration::from_millis(1));
    /// clock.advance(Duration::from_millis(2));
    /// assert_eq!(deferral.remaining(), Duration::ZERO);
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn remaining(&self) -> Duration {
        self.throttle.remaining(self.word)
    }

    /// Blocks until the deadline, stamps the run, then runs `f` and returns its result.
    ///
    /// The wait is [`Clock::sleep`] on the throttle's clock, repeated until the deadline has
    /// passed. The stamp comes before `f`, so a panic in `f` strands nothing: the window has
    /// already moved on.
    ///
    /// A deadline past the end of the clock's range ([`deadline`](Deferral::deadline) is
    /// `u64::MAX`: only a clock that jumped close to 584 years past its origin gets there)
    /// never comes, and `run` then waits forever; [`try_run`](Deferral::try_run) answers
    /// "not yet" instead.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Admission, Throttle};
    /// use std::time::{Duration, Instant};
    ///
    /// let throttle = Throttle::new(Duration::from_millis(3));
    /// let started = Instant::now();
    /// let _ = throttle.admit();
    /// let Admission::Deferred(deferral) = throttle.admit() else { unreachable!() };
    /// deferral.run(|| assert!(started.elapsed() >= Duration::from_millis(3)));
    /// ```
    pub fn run<R>(self, f: impl FnOnce() -> R) -> R {
        self.throttle.stamp_when_due(self.word);
        f()
        // Dropping `self` tries to release `self.word`, which the stamp replaced: no effect.
    }

    /// Waits for the deadline on any executor's timer, then stamps the run; the caller runs
    /// the work when the future completes.
    ///
    /// `sleep(d)` must return a future that completes after about `d`, such as
    /// `tokio::time::sleep`, `async_io::Timer::after` (mapped to `()`), or a timer of your own
    /// event loop. The future wakes again until the deadline has passed on the throttle's
    /// clock, so a timer that fires early costs a retry, never an early run. With the `tokio`
    /// feature, [`wait_async`](Deferral::wait_async) does this with tokio's timer.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes (a `select!` branch that lost, a timeout, an
    /// aborted task) gives the deferral up, exactly as dropping the deferral does: the next
    /// call claims a new one. Once the future has completed, the run is stamped and belongs to
    /// the caller.
    ///
    /// # Examples
    ///
    /// Driving the wait from a hand-made executor whose timer blocks the thread:
    ///
    /// ```
    /// use atomic_throttle::{Admission, Throttle};
    /// use std::future::Future;
    /// use std::sync::Arc;
    /// use std::task::{Context, Poll, Wake, Waker};
    /// use std::time::Duration;
    ///
    /// struct Unpark(std::thread::Thread);
    /// impl Wake for Unpark {
    ///     fn wake(self: Arc<Self>) {
    ///         self.0.unpark();
    ///     }
    /// }
    ///
    /// fn block_on<F: Future>(future: F) -> F::Output {
    ///     let mut future = std::pin::pin!(future);
    ///     let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    ///     loop {
    ///         if let Poll::Ready(out) = future.as_mut().poll(&mut Context::from_waker(&waker)) {
    ///             return out;
    ///         }
    ///         std::thread::park();
    ///     }
    /// }
    ///
    /// let throttle = Throttle::new(Duration::from_millis(2));
    /// let _ = throttle.admit();
    /// let Admission::Deferred(deferral) = throttle.admit() else { unreachable!() };
    /// let timer = |wait: Duration| {
    ///     std::thread::sleep(wait); // a real executor would register a timer here
    ///     std::future::ready(())
    /// };
    /// block_on(deferral.wait_with(timer));
    /// assert!(!throttle.is_pending()); // stamped: run the work now
    /// ```
    pub async fn wait_with<S, F>(self, sleep: S)
    where
        S: FnMut(Duration) -> F,
        F: Future<Output = ()>,
    {
        self.throttle.stamp_when_due_async(self.word, sleep).await;
        // `self` drops here; the stamp replaced its word, so the release changes nothing.
        // Dropped earlier, with the future, it releases the deferral.
    }

    /// Runs `f` if the deadline has passed; otherwise hands the deferral back, for callers
    /// that wait on their own timer or event loop.
    ///
    /// # Errors
    ///
    /// The deferral itself, unchanged, when its deadline has not passed yet.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Admission, ManualClock, Throttle};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let throttle = Throttle::with_clock(Duration::from_millis(1), clock.clone())?;
    /// let _ = throttle.admit();
    /// let Admission::Deferred(deferral) = throttle.admit() else { unreachable!() };
    ///
    /// let deferral = deferral.try_run(|| "early").unwrap_err(); // not due yet
    /// clock.advance(deferral.remaining());
    /// assert_eq!(deferral.try_run(|| "due").ok(), Some("due"));
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn try_run<R>(self, f: impl FnOnce() -> R) -> Result<R, Self> {
        if self.throttle.try_stamp(self.word) {
            Ok(f())
        } else {
            Err(self)
        }
    }

    /// The throttle this deferral belongs to.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Admission, Throttle};
    /// # use std::time::Duration;
    /// let throttle = Throttle::new(Duration::from_secs(1));
    /// let _ = throttle.admit();
    /// let Admission::Deferred(deferral) = throttle.admit() else { unreachable!() };
    /// assert!(deferral.throttle().is_pending());
    /// ```
    pub fn throttle(&self) -> &'a Throttle<C> {
        self.throttle
    }
}

impl<C: Clock> Drop for Deferral<'_, C> {
    fn drop(&mut self) {
        self.throttle.release(self.word);
    }
}

impl<C: Clock> fmt::Debug for Deferral<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deferral")
            .field("deadline", &self.deadline())
            .finish_non_exhaustive()
    }
}

/// The answer to [`Throttle::admit_owned`]: [`Admission`](crate::Admission) for a throttle
/// shared through an [`Arc`].
///
/// # Examples
///
/// ```
/// use atomic_throttle::{OwnedAdmission, Throttle};
/// use std::{sync::Arc, time::Duration};
///
/// let throttle = Arc::new(Throttle::new(Duration::from_secs(1)));
/// assert!(matches!(throttle.admit_owned(), OwnedAdmission::Now));
/// ```
#[must_use = "a Deferred answer releases its deferral when dropped; match on the answer"]
#[derive(Debug)]
pub enum OwnedAdmission<C: Clock = DefaultClock> {
    /// Run at once; the throttle has already stamped the run.
    Now,
    /// The caller owns the deferred run.
    Deferred(OwnedDeferral<C>),
    /// A deferral is pending; its run will come after this call.
    Coalesced,
}

/// A [`Deferral`] that holds its throttle through an [`Arc`], so that it can move to another
/// thread or task. Its methods and guarantees are those of [`Deferral`].
///
/// # Examples
///
/// ```
/// use atomic_throttle::{OwnedAdmission, Throttle};
/// use std::{sync::Arc, thread, time::Duration};
///
/// let throttle = Arc::new(Throttle::new(Duration::from_millis(1)));
/// let _ = throttle.admit_owned();
/// let OwnedAdmission::Deferred(deferral) = throttle.admit_owned() else { unreachable!() };
/// let worker = thread::spawn(move || deferral.run(|| "ran on the worker"));
/// assert_eq!(worker.join().unwrap(), "ran on the worker");
/// ```
#[must_use = "dropping a deferral gives the deferred run up"]
pub struct OwnedDeferral<C: Clock = DefaultClock> {
    throttle: Arc<Throttle<C>>,
    word: u64,
}

impl<C: Clock> OwnedDeferral<C> {
    pub(crate) fn new(throttle: Arc<Throttle<C>>, word: u64) -> Self {
        Self { throttle, word }
    }

    /// See [`Deferral::deadline`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{OwnedAdmission, Throttle};
    /// # use std::{sync::Arc, time::Duration};
    /// let throttle = Arc::new(Throttle::new(Duration::from_secs(1)));
    /// let _ = throttle.admit_owned();
    /// let OwnedAdmission::Deferred(deferral) = throttle.admit_owned() else { unreachable!() };
    /// assert!(deferral.deadline() > 0);
    /// ```
    pub fn deadline(&self) -> u64 {
        self.throttle.deadline_nanos(self.word)
    }

    /// See [`Deferral::remaining`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{OwnedAdmission, Throttle};
    /// # use std::{sync::Arc, time::Duration};
    /// let throttle = Arc::new(Throttle::new(Duration::from_secs(1)));
    /// let _ = throttle.admit_owned();
    /// let OwnedAdmission::Deferred(deferral) = throttle.admit_owned() else { unreachable!() };
    /// assert!(deferral.remaining() <= Duration::from_secs(1) + Duration::from_micros(3));
    /// ```
    pub fn remaining(&self) -> Duration {
        self.throttle.remaining(self.word)
    }

    /// See [`Deferral::run`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{OwnedAdmission, Throttle};
    /// # use std::{sync::Arc, time::Duration};
    /// let throttle = Arc::new(Throttle::new(Duration::from_millis(1)));
    /// let _ = throttle.admit_owned();
    /// let OwnedAdmission::Deferred(deferral) = throttle.admit_owned() else { unreachable!() };
    /// assert_eq!(deferral.run(|| 5), 5);
    /// ```
    pub fn run<R>(self, f: impl FnOnce() -> R) -> R {
        self.throttle.stamp_when_due(self.word);
        f()
    }

    /// See [`Deferral::wait_with`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes (a `select!` branch that lost, a timeout, an
    /// aborted task) gives the deferral up, exactly as dropping the deferral does: the next
    /// call claims a new one. Once the future has completed, the run is stamped and belongs to
    /// the caller.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{ManualClock, OwnedAdmission, Throttle};
    /// # use std::{future::Future, pin::pin, sync::Arc, task::{Context, Poll}, time::Duration};
    /// let clock = ManualClock::new();
    /// let throttle = Arc::new(Throttle::with_clock(Duration::from_millis(1), clock.clone())?);
    /// let _ = throttle.admit_owned();
    /// let OwnedAdmission::Deferred(deferral) = throttle.admit_owned() else { unreachable!() };
    /// // A timer that fires at once after moving the manual clock on.
    /// let timer = |d| {
    ///     clock.advance(d);
    ///     std::future::ready(())
    /// };
    /// let mut wait = pin!(deferral.wait_with(timer));
    /// # let waker = std::task::Waker::from(Arc::new(Noop));
    /// # struct Noop;
    /// # impl std::task::Wake for Noop { fn wake(self: Arc<Self>) {} }
    /// assert!(wait.as_mut().poll(&mut Context::from_waker(&waker)).is_ready());
    /// assert!(!throttle.is_pending());
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub async fn wait_with<S, F>(self, sleep: S)
    where
        S: FnMut(Duration) -> F,
        F: Future<Output = ()>,
    {
        self.throttle.stamp_when_due_async(self.word, sleep).await;
    }

    /// See [`Deferral::try_run`].
    ///
    /// # Errors
    ///
    /// The deferral itself, unchanged, when its deadline has not passed yet.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{OwnedAdmission, Throttle};
    /// # use std::{sync::Arc, time::Duration};
    /// let throttle = Arc::new(Throttle::new(Duration::from_secs(60)));
    /// let _ = throttle.admit_owned();
    /// let OwnedAdmission::Deferred(deferral) = throttle.admit_owned() else { unreachable!() };
    /// assert!(deferral.try_run(|| ()).is_err());
    /// ```
    pub fn try_run<R>(self, f: impl FnOnce() -> R) -> Result<R, Self> {
        if self.throttle.try_stamp(self.word) {
            Ok(f())
        } else {
            Err(self)
        }
    }

    /// The throttle this deferral belongs to.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{OwnedAdmission, Throttle};
    /// # use std::{sync::Arc, time::Duration};
    /// let throttle = Arc::new(Throttle::new(Duration::from_secs(1)));
    /// let _ = throttle.admit_owned();
    /// let OwnedAdmission::Deferred(deferral) = throttle.admit_owned() else { unreachable!() };
    /// assert!(Arc::ptr_eq(deferral.throttle(), &throttle));
    /// ```
    pub fn throttle(&self) -> &Arc<Throttle<C>> {
        &self.throttle
    }
}

impl<C: Clock> Drop for OwnedDeferral<C> {
    fn drop(&mut self) {
        self.throttle.release(self.word);
    }
}

impl<C: Clock> fmt::Debug for OwnedDeferral<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedDeferral")
            .field("deadline", &self.deadline())
            .finish_non_exhaustive()
    }
}
