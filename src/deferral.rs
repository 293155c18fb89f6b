//! Ownership of the single deferred run: one generic handle for a borrowed or a shared
//! throttle.

use crate::clock::DefaultClock;
use crate::throttle::{Throttle, ThrottleRef};
use crate::wait::Look;
use core::fmt;
use core::future::Future;
use core::time::Duration;
use std::sync::Arc;

/// The single deferred run, owned by the caller that claimed it.
///
/// `T` is how it holds its throttle: `&Throttle` from [`Throttle::admit`], `Arc<Throttle>`
/// from [`Throttle::admit_owned`] ([`OwnedDeferral`], which can move to another thread or
/// task). Both behave the same.
///
/// The owner either runs it ([`run`](Deferral::run), an async wait such as
/// [`wait_with`](Deferral::wait_with), or [`try_run`](Deferral::try_run) from its own event
/// loop) or gives it up by dropping it: a panic unwinding through it, a cancelled future
/// holding it, an early return. Dropping releases the deferral in one atomic step, so the next
/// admission is Deferred (or Now, past the window), never Coalesced behind an owner who is
/// gone (guarantee 2). A release only clears the exact state word this owner installed: it can
/// never clear a later owner's deferral, and once the run is stamped there is nothing left to
/// release.
///
/// A deferral can be revoked while its owner holds it: by [`Throttle::cancel`], or, on a
/// throttle with a [lease](crate::ThrottleBuilder::lease), by an admission that takes it over
/// once the lease has expired. Its run then reports [`Revoked`] and does not run the work.
/// On a throttle without a lease that nobody cancels, a run is never revoked.
///
/// [`mem::forget`](core::mem::forget) on a deferral runs no destructor, so without a lease it
/// strands the deferral: every later call is Coalesced. With a lease, it is taken over once
/// the lease expires.
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
///     assert!(deferral.remaining() <= Duration::from_millis(2));
///     let answer = deferral.run(|| 42); // sleeps until the deadline, then runs
///     assert_eq!(answer, Ok(42));
/// };
/// ```
#[must_use = "dropping a Deferral gives the deferred run up"]
pub struct Deferral<T: ThrottleRef> {
    throttle: T,
    /// The state word this owner installed when it claimed the deferral.
    word: u64,
    /// Set once the run is stamped, revoked or handed over: nothing is left to release.
    spent: bool,
}

/// A [`Deferral`] that holds its throttle through an [`Arc`], so that it can move to another
/// thread or task: from [`Throttle::admit_owned`].
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
/// assert_eq!(worker.join().unwrap(), Ok("ran on the worker"));
/// ```
pub type OwnedDeferral<C = DefaultClock> = Deferral<Arc<Throttle<C>>>;

/// Why a deferral's run did not happen: it was taken from its owner.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Admission, Revoked, Throttle};
/// use std::time::Duration;
///
/// let throttle = Throttle::new(Duration::from_secs(1));
/// let _ = throttle.admit();
/// let Admission::Deferred(deferral) = throttle.admit() else { unreachable!() };
/// throttle.cancel();
/// assert_eq!(deferral.run(|| ()), Err(Revoked::Cancelled));
/// assert_eq!(Revoked::Cancelled.to_string(), "the deferral was cancelled");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Revoked {
    /// [`Throttle::cancel`] withdrew it.
    Cancelled,
    /// Its lease expired before it was stamped, and an admission took it over and ran in its
    /// place. (An owner that finds its deferral gone after its lease expired is told this even
    /// if a cancel got there first: either way it came back too late.)
    TakenOver,
}

impl fmt::Display for Revoked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Revoked::Cancelled => "the deferral was cancelled",
            Revoked::TakenOver => "the deferral's lease expired and it was taken over",
        })
    }
}

impl std::error::Error for Revoked {}

/// Why [`Deferral::try_run`] did not run the work.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Admission, NotRun, Throttle};
/// use std::time::Duration;
///
/// let throttle = Throttle::new(Duration::from_secs(60));
/// let _ = throttle.admit();
/// let Admission::Deferred(deferral) = throttle.admit() else { unreachable!() };
/// let deferral = match deferral.try_run(|| ()) {
///     Err(NotRun::NotDue(deferral)) => deferral, // still ours: try again later
///     Err(NotRun::Revoked(why)) => panic!("{why}"),
///     Ok(()) => unreachable!("not due for a minute"),
/// };
/// drop(deferral);
/// ```
pub enum NotRun<D> {
    /// Its deadline has not come: here is the deferral back.
    NotDue(D),
    /// It was revoked; there is nothing left to run.
    Revoked(Revoked),
}

impl<D> NotRun<D> {
    /// The deferral, if it is still due to run later.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Admission, Throttle};
    /// # use std::time::Duration;
    /// let throttle = Throttle::new(Duration::from_secs(60));
    /// let _ = throttle.admit();
    /// let Admission::Deferred(deferral) = throttle.admit() else { unreachable!() };
    /// let deferral = deferral.try_run(|| ()).unwrap_err().not_due().expect("still ours");
    /// # drop(deferral);
    /// ```
    pub fn not_due(self) -> Option<D> {
        match self {
            NotRun::NotDue(deferral) => Some(deferral),
            NotRun::Revoked(_) => None,
        }
    }
}

impl<D> fmt::Debug for NotRun<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotRun::NotDue(_) => f.write_str("NotDue(..)"),
            NotRun::Revoked(why) => f.debug_tuple("Revoked").field(why).finish(),
        }
    }
}

impl<D> fmt::Display for NotRun<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotRun::NotDue(_) => f.write_str("the deferral is not due yet"),
            NotRun::Revoked(why) => why.fmt(f),
        }
    }
}

impl<D> std::error::Error for NotRun<D> {}

impl<T: ThrottleRef> Deferral<T> {
    pub(crate) fn new(throttle: T, word: u64) -> Self {
        Self {
            throttle,
            word,
            spent: false,
        }
    }

    /// The state word this owner's claim installed.
    pub(crate) fn word(&self) -> u64 {
        self.word
    }

    /// Hands the claim over without releasing it: the caller takes charge of the word.
    pub(crate) fn disown(mut self) -> u64 {
        self.spent = true;
        self.word
    }

    /// When the deferred run may start, in the throttle clock's nanoseconds
    /// ([`Clock::now_nanos`](crate::Clock::now_nanos)): the last run's stamp plus the threshold in force. `u64::MAX`
    /// if that lies past the end of the throttle's time.
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
    /// assert_eq!(deferral.deadline(), 1_000_000); // exactly a threshold after the last run
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
    /// use atomic_throttle::{Admission, ManualClock, Throttle};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let throttle = Throttle::with_clock(Duration::from_millis(10), clock.clone())?;
    /// let _ = throttle.admit();
    /// clock.advance(Duration::from_millis(3));
    /// let Admission::Deferred(deferral) = throttle.admit() else { unreachable!() };
    /// assert_eq!(deferral.remaining(), Duration::from_millis(7));
    /// clock.advance(Duration::from_millis(7));
    /// assert_eq!(deferral.remaining(), Duration::ZERO);
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn remaining(&self) -> Duration {
        self.throttle.core().remaining(self.word)
    }

    /// Blocks until the deadline (or a flush), stamps the run, then runs `f` and returns its
    /// result.
    ///
    /// The wait parks the thread, as the throttle's clock says ([`Clock::wait_for`](crate::Clock::wait_for)
    /// and [`Clock::sleep`](crate::Clock::sleep)), until the deadline has passed. A cancel, a flush or a new threshold
    /// wakes it at once. The stamp comes before `f`, so a panic in `f` strands nothing: the
    /// window has already moved on.
    ///
    /// A deadline past the end of the throttle's time ([`deadline`](Deferral::deadline) is
    /// `u64::MAX`: only a clock that jumped about 570 years past its origin gets there) never
    /// comes, and `run` then waits until it is cancelled or flushed;
    /// [`try_run`](Deferral::try_run) answers "not due" instead.
    ///
    /// # Errors
    ///
    /// [`Revoked`] if the deferral was cancelled or taken over before its run was stamped;
    /// `f` did not run. Never on a throttle without a lease that nobody cancels.
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
    /// deferral.run(|| assert!(started.elapsed() >= Duration::from_millis(3)))?;
    /// # Ok::<(), atomic_throttle::Revoked>(())
    /// ```
    pub fn run<R>(self, f: impl FnOnce() -> R) -> Result<R, Revoked> {
        self.run_around(|stamp| stamp(), f)
    }

    /// `run`, with each attempt to stamp made inside `around` (see `Word::stamp_when_due_around`).
    pub(crate) fn run_around<R>(
        mut self,
        around: impl crate::word::Around,
        f: impl FnOnce() -> R,
    ) -> Result<R, Revoked> {
        let stamped = self
            .throttle
            .word()
            .stamp_when_due_around(self.word, around);
        // Stamped or revoked: nothing is left to release.
        self.spent = true;
        stamped.map(|_| f())
    }

    /// Waits for the deadline on any executor's timer, then stamps the run; the caller runs
    /// the work when the future completes with `Ok`.
    ///
    /// `sleep(d)` must return a future that completes after about `d`, such as
    /// `tokio::time::sleep`, `async_io::Timer::after` (mapped to `()`), or a timer of your own
    /// event loop. The future wakes again until the deadline has passed on the throttle's
    /// clock, so a timer that fires early costs a retry, never an early run. A cancel, a flush
    /// or a new threshold wakes the task at once. On a [`ManualClock`](crate::ManualClock) the
    /// clock advances for the wait and `sleep` is not called. With the `tokio` feature,
    /// [`wait_async`](Deferral::wait_async) does this with tokio's timer.
    ///
    /// # Errors
    ///
    /// [`Revoked`] if the deferral was cancelled or taken over first.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes (a `select!` branch that lost, a timeout, an
    /// aborted task) gives the deferral up, exactly as dropping the deferral does: the next
    /// call claims a new one. Once the future has completed with `Ok`, the run is stamped and
    /// belongs to the caller.
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
    /// block_on(deferral.wait_with(timer))?;
    /// assert!(!throttle.is_pending()); // stamped: run the work now
    /// # Ok::<(), atomic_throttle::Revoked>(())
    /// ```
    pub async fn wait_with<S, F>(self, sleep: S) -> Result<(), Revoked>
    where
        S: FnMut(Duration) -> F,
        F: Future<Output = ()>,
    {
        self.wait_with_around(sleep, |stamp| stamp()).await
    }

    /// `wait_with`, with each attempt to stamp made inside `around` (see
    /// `Word::stamp_when_due_around`).
    pub(crate) async fn wait_with_around<S, F>(
        mut self,
        sleep: S,
        around: impl crate::word::Around,
    ) -> Result<(), Revoked>
    where
        S: FnMut(Duration) -> F,
        F: Future<Output = ()>,
    {
        let stamped = self
            .throttle
            .word()
            .stamp_when_due_async_around(self.word, sleep, around)
            .await;
        self.spent = true;
        stamped.map(drop)
        // Dropped before this point, with the future, the deferral is released.
    }

    /// Runs `f` if the deadline has passed (or the deferral was flushed); otherwise hands the
    /// deferral back, for callers that wait on their own timer or event loop.
    ///
    /// # Errors
    ///
    /// [`NotRun::NotDue`] with the deferral itself, unchanged, when its deadline has not
    /// passed yet; [`NotRun::Revoked`] if it was cancelled or taken over.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Admission, ManualClock, NotRun, Throttle};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let throttle = Throttle::with_clock(Duration::from_millis(1), clock.clone())?;
    /// let _ = throttle.admit();
    /// let Admission::Deferred(deferral) = throttle.admit() else { unreachable!() };
    ///
    /// let Err(NotRun::NotDue(deferral)) = deferral.try_run(|| "early") else { unreachable!() };
    /// clock.advance(deferral.remaining());
    /// assert_eq!(deferral.try_run(|| "due").ok(), Some("due"));
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn try_run<R>(mut self, f: impl FnOnce() -> R) -> Result<R, NotRun<Self>> {
        match self.throttle.word().try_stamp(self.word) {
            Look::Until(_) => Err(NotRun::NotDue(self)),
            Look::Done(stamped) => {
                self.spent = true;
                stamped.map(|_| f()).map_err(NotRun::Revoked)
            }
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
    pub fn throttle(&self) -> &T {
        &self.throttle
    }
}

impl<T: ThrottleRef> Drop for Deferral<T> {
    fn drop(&mut self) {
        let release = !self.spent || crate::sync::is_mutant(crate::sync::mutant!(ReleaseAfterRun));
        if release {
            let _ = self.throttle.word().release(self.word);
        }
    }
}

impl<T: ThrottleRef> fmt::Debug for Deferral<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deferral")
            .field("deadline", &self.deadline())
            .field("spent", &self.spent)
            .finish_non_exhaustive()
    }
}
