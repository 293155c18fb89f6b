//! tokio support (feature `tokio`): awaiting a deferral on tokio's timer, a clock that follows
//! tokio's (pausable) time, async calls through `Throttled`, and tokio as the runtime of
//! `AsyncThrottled`.

use crate::async_throttled::{AsyncThrottled, Job, Runtime, Task};
use crate::clock::{nanos_saturating, Clock};
use crate::covered::Owed;
use crate::deferral::{Deferral, Revoked};
use crate::throttle::{Admission, Throttle, ThrottleRef};
use crate::throttled::{Outcome, Throttled};
use core::future::Future;
use core::time::Duration;

impl<T: ThrottleRef> Deferral<T> {
    /// Waits for the deadline on tokio's timer, then stamps the run; the caller runs the work
    /// when the future completes with `Ok`. [`wait_with`](Deferral::wait_with) with
    /// `tokio::time::sleep`.
    ///
    /// The throttle's clock decides when the deadline has passed. On tokio's paused test clock,
    /// build the throttle on [`TokioClock`] so that both agree; on a
    /// [`ManualClock`](crate::ManualClock) the clock advances for the wait and tokio's timer is
    /// not used. tokio's timer has millisecond granularity, so the future completes up to about
    /// 1 ms after the deadline; for less, use [`Deferral::run`] on a thread, which spins the
    /// last stretch.
    ///
    /// # Errors
    ///
    /// [`Revoked`](crate::Revoked) if the deferral was cancelled or taken over first.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. If the future is dropped before it completes (a `select!`
    /// branch that lost, a `timeout`, an aborted task), the deferral is given up exactly as if
    /// it had been dropped, and the next call claims a new one. Once the future has completed,
    /// the run is stamped: the window has moved on whether or not the caller then runs the
    /// work.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Admission, OwnedAdmission, Throttle};
    /// use std::{sync::Arc, time::Duration};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), atomic_throttle::Revoked> {
    /// let throttle = Throttle::new(Duration::from_millis(2));
    /// let _ = throttle.admit();
    /// if let Admission::Deferred(deferral) = throttle.admit() {
    ///     deferral.wait_async().await?;
    ///     println!("trailing run");
    /// };
    ///
    /// // An owned deferral's wait can be spawned.
    /// let shared = Arc::new(Throttle::new(Duration::from_millis(2)));
    /// let _ = shared.admit_owned();
    /// if let OwnedAdmission::Deferred(deferral) = shared.admit_owned() {
    ///     tokio::spawn(async move { deferral.wait_async().await }).await.unwrap()?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_async(self) -> Result<(), Revoked> {
        self.wait_with(tokio::time::sleep).await
    }
}

/// A clock that reads tokio's time, so that a throttle follows tokio's paused test clock
/// (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`).
///
/// Read inside a tokio runtime, it follows that runtime's clock, paused or not; outside one,
/// tokio falls back to the system's monotonic clock. Its blocking [`Clock::sleep`] sleeps the
/// thread in real time: use it with the async waits, not with [`Deferral::run`].
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Clock, TokioClock};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let clock = TokioClock::new();
/// tokio::time::advance(Duration::from_secs(5)).await;
/// assert_eq!(clock.now_nanos(), 5_000_000_000);
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose origin is tokio's current time.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let clock = atomic_throttle::TokioClock::new();
    /// # let _ = clock;
    /// # }
    /// ```
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_nanos(&self) -> u64 {
        nanos_saturating(tokio::time::Instant::now().saturating_duration_since(self.origin))
    }
}

impl<F, C: Clock> Throttled<F, C> {
    /// Like [`call`](Throttled::call), but a deferred call awaits its deadline on tokio's timer
    /// instead of blocking the thread.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe. Dropped while it waits for the deadline, it gives the
    /// deferral up and the work does not run; the next call claims the deferral. The work
    /// itself is synchronous, so once it starts it finishes before the future completes.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Outcome, Throttled};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let flush = Throttled::new(Duration::from_millis(1), || "flushed");
    /// assert_eq!(flush.call_async().await, Outcome::Now("flushed"));
    /// assert_eq!(flush.call_async().await, Outcome::Deferred("flushed"));
    /// # }
    /// ```
    pub async fn call_async<R>(&self) -> Outcome<R>
    where
        F: Fn() -> R,
    {
        let stamp = || self.throttle().last_run().unwrap_or_default();
        match self.admit() {
            Admission::Now => {
                let _owed = Owed::leading(self.completions(), stamp());
                Outcome::Now(self.work()())
            }
            Admission::Deferred(deferral) => {
                // Whether the wait ends in a run, a revocation or a dropped future, the
                // callers waiting in `call_covered` hear of it.
                let mut owed = Owed::new(self.completions(), Some(deferral.word()));
                let waited = deferral
                    .wait_with_around(tokio::time::sleep, |attempt| owed.stamping(attempt))
                    .await;
                match waited {
                    Ok(()) => Outcome::Deferred(self.work()()),
                    Err(revoked) => Outcome::Revoked(revoked),
                }
            }
            Admission::Coalesced => Outcome::Coalesced,
            Admission::Suppressed { .. } => Outcome::Suppressed,
        }
    }
}

/// The tokio [`Runtime`] for [`AsyncThrottled`]: tokio's timer, a task for the rest of the
/// wait of a cancelled caller's deferred run, and the blocking pool for its work.
///
/// It hands a run on through the runtime current where the caller is dropped, or else the one
/// current when it was made; with neither (a caller dropped outside any runtime, on a handle
/// made outside one), the deferral is given up. A runtime that shuts down before the deadline
/// drops the task, and the deferral is given up with it. A handed-on work that awaits tokio's
/// timers needs that runtime driven until it is done too: its timers fire only then, and if
/// the runtime shuts down first they panic, which counts as a panic in the work (waiters are
/// covered, with no result to copy).
///
/// Under tokio's paused test clock (`start_paused`), a handed-on run's work runs on the
/// blocking pool, and while a blocking job runs tokio does not advance paused time: a work
/// that awaits a tokio timer there waits forever. In paused-time tests, use
/// [`OnCancel::GiveUp`](crate::OnCancel::GiveUp), a work that does not await tokio's timer, or
/// a [`ManualClock`](crate::ManualClock). The throttle's clock should be
/// [`TokioClock`](crate::TokioClock) under paused time: the default clock reads real time,
/// which paused tests do not advance.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use atomic_throttle::{AsyncThrottled, Outcome, Throttle, TokioRuntime};
/// use std::time::Duration;
///
/// let job = AsyncThrottled::with_runtime(
///     Throttle::new(Duration::from_millis(5)),
///     TokioRuntime::new(),
///     async || "done",
/// );
/// assert_eq!(job.call().await, Outcome::Now("done"));
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct TokioRuntime {
    handle: Option<tokio::runtime::Handle>,
}

impl TokioRuntime {
    /// The tokio runtime, remembering the one current now (if any).
    ///
    /// # Examples
    ///
    /// ```
    /// let runtime = atomic_throttle::TokioRuntime::new(); // outside a runtime: found later
    /// # let _ = runtime;
    /// ```
    pub fn new() -> Self {
        Self {
            handle: tokio::runtime::Handle::try_current().ok(),
        }
    }

    fn handle(&self) -> Option<tokio::runtime::Handle> {
        tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.handle.clone())
    }
}

impl Runtime for TokioRuntime {
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }

    fn spawn(&self, task: Task) -> Result<(), Task> {
        match self.handle() {
            Some(handle) => {
                drop(handle.spawn(task));
                Ok(())
            }
            None => Err(task),
        }
    }

    fn spawn_blocking(&self, job: Job) {
        match self.handle() {
            Some(handle) => drop(handle.spawn_blocking(job)),
            // Only called from a task on a runtime.
            None => unreachable!("spawn_blocking is only called from a tokio task"),
        }
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        match self.handle() {
            Some(handle) => handle.block_on(future),
            // `spawn_blocking` only runs jobs on tokio's blocking pool, inside a runtime.
            None => unreachable!("block_on is only called on tokio's blocking pool"),
        }
    }
}

impl<F, R> AsyncThrottled<F, TokioRuntime>
where
    F: AsyncFn() -> R + Send + Sync + 'static,
    R: Send + 'static,
{
    /// Wraps `work` in a throttle on the process's [`DefaultClock`](crate::DefaultClock), on tokio.
    ///
    /// # Panics
    ///
    /// If `threshold` exceeds [`Throttle::MAX_THRESHOLD`]; [`Throttle::try_new`] with
    /// [`from_throttle`](AsyncThrottled::from_throttle) returns the error instead.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::AsyncThrottled;
    /// # use std::time::Duration;
    /// let sync = AsyncThrottled::new(Duration::from_secs(1), async || {});
    /// # let _ = sync;
    /// ```
    pub fn new(threshold: Duration, work: F) -> Self {
        match Throttle::try_new(threshold) {
            Ok(throttle) => Self::with_runtime(throttle, TokioRuntime::new(), work),
            Err(err) => panic!("atomic-throttle: AsyncThrottled::new: {err}"),
        }
    }
}

impl<F, R, C> AsyncThrottled<F, TokioRuntime, C>
where
    F: AsyncFn() -> R + Send + Sync + 'static,
    R: Send + 'static,
    C: Clock + Send + Sync + 'static,
{
    /// Wraps `work` in `throttle` (for a fallible threshold, another clock such as
    /// [`TokioClock`] on tokio's paused test clock, a mode, a lease or counters), on tokio.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{AsyncThrottled, Throttle, TokioClock};
    /// # use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), atomic_throttle::ThresholdError> {
    /// let throttle = Throttle::with_clock(Duration::from_secs(1), TokioClock::new())?;
    /// let job = AsyncThrottled::from_throttle(throttle, async || {});
    /// assert!(!job.is_pending());
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_throttle(throttle: Throttle<C>, work: F) -> Self {
        Self::with_runtime(throttle, TokioRuntime::new(), work)
    }
}
