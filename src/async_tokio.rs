//! tokio support (feature `tokio`): awaiting a deferral on tokio's timer, a clock that follows
//! tokio's (pausable) time, and async calls through `Throttled` and `AsyncThrottled`.

use crate::clock::{nanos_saturating, Clock, DefaultClock};
use crate::deferral::{Deferral, Revoked};
use crate::throttle::{Admission, Throttle, ThrottleRef};
use crate::throttled::{Outcome, Throttled};
use core::fmt;
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
        match self.admit() {
            Admission::Now => Outcome::Now(self.work()()),
            Admission::Deferred(deferral) => match deferral.wait_async().await {
                Ok(()) => Outcome::Deferred(self.work()()),
                Err(revoked) => Outcome::Revoked(revoked),
            },
            Admission::Coalesced => Outcome::Coalesced,
            Admission::Suppressed { .. } => Outcome::Suppressed,
        }
    }
}

/// [`Throttled`] for async work: `F: Fn() -> impl Future`, with the deferred call awaiting its
/// deadline on tokio's timer.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{AsyncThrottled, Outcome};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let publish = AsyncThrottled::new(Duration::from_millis(1), || async { "published" });
/// assert_eq!(publish.call().await, Outcome::Now("published"));
/// assert_eq!(publish.call().await, Outcome::Deferred("published"));
/// # }
/// ```
pub struct AsyncThrottled<F, C: Clock = DefaultClock> {
    throttle: Throttle<C>,
    work: F,
}

impl<F> AsyncThrottled<F> {
    /// Wraps `work` in a throttle on the process's [`DefaultClock`].
    ///
    /// # Panics
    ///
    /// If `threshold` exceeds [`Throttle::MAX_THRESHOLD`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::AsyncThrottled;
    /// # use std::time::Duration;
    /// let sync = AsyncThrottled::new(Duration::from_secs(1), || async {});
    /// # let _ = sync;
    /// ```
    pub fn new(threshold: Duration, work: F) -> Self {
        Self::from_throttle(Throttle::new(threshold), work)
    }
}

impl<F, C: Clock> AsyncThrottled<F, C> {
    /// Wraps `work` in an existing throttle: for a fallible threshold
    /// ([`Throttle::try_new`]) or another clock ([`Throttle::with_clock`], such as
    /// [`TokioClock`] on tokio's paused test clock).
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{AsyncThrottled, Throttle, TokioClock};
    /// # use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), atomic_throttle::ThresholdError> {
    /// let throttle = Throttle::with_clock(Duration::from_secs(1), TokioClock::new())?;
    /// let job = AsyncThrottled::from_throttle(throttle, || async {});
    /// assert!(!job.throttle().is_pending());
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_throttle(throttle: Throttle<C>, work: F) -> Self {
        Self { throttle, work }
    }

    /// The throttle that decides the calls.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::AsyncThrottled;
    /// # use std::time::Duration;
    /// let job = AsyncThrottled::new(Duration::from_secs(2), || async {});
    /// assert_eq!(job.throttle().threshold(), Duration::from_secs(2));
    /// ```
    pub fn throttle(&self) -> &Throttle<C> {
        &self.throttle
    }

    /// Calls the work through the throttle: at once, after awaiting the end of the window, or
    /// not at all when a pending deferred call covers this one.
    ///
    /// As with [`Throttled::call`], a Coalesced call's earlier writes are not guaranteed to be
    /// visible to the run that covers it.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future never runs the work twice and never strands the deferral:
    ///
    /// - while it awaits the deadline, the deferral is given up and the work does not start;
    ///   the next call claims the deferral and runs at the deadline;
    /// - while it awaits the work's own future, the run has already been stamped, so the
    ///   window moves on as if the work had finished; the work's future is dropped mid-way,
    ///   with whatever that means for the work.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{AsyncThrottled, Outcome};
    /// # use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let job = AsyncThrottled::new(Duration::from_secs(60), || async { 1 + 1 });
    /// assert_eq!(job.call().await, Outcome::Now(2));
    /// # }
    /// ```
    pub async fn call<Fut>(&self) -> Outcome<Fut::Output>
    where
        F: Fn() -> Fut,
        Fut: Future,
    {
        match self.throttle.admit() {
            Admission::Now => Outcome::Now((self.work)().await),
            Admission::Deferred(deferral) => match deferral.wait_async().await {
                Ok(()) => Outcome::Deferred((self.work)().await),
                Err(revoked) => Outcome::Revoked(revoked),
            },
            Admission::Coalesced => Outcome::Coalesced,
            Admission::Suppressed { .. } => Outcome::Suppressed,
        }
    }
}

impl<F, C: Clock> fmt::Debug for AsyncThrottled<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncThrottled")
            .field("throttle", &self.throttle)
            .finish_non_exhaustive()
    }
}
