//! Async work behind a throttle, on any runtime: a cancelled caller's deferred run is handed on
//! rather than lost, and coalesced callers can wait for the run that covers them.

use crate::clock::{Clock, DefaultClock};
use crate::counters::Stats;
use crate::covered::{self, Completions, Owed, Seen};
use crate::deferral::Revoked;
use crate::error::ThresholdError;
use crate::sync::{self, Ordering};
use crate::throttle::{Admission, Throttle};
use crate::throttled::Outcome;
use core::fmt;
use core::future::Future;
use core::task::Poll;
use core::time::Duration;
use std::sync::Arc;

/// A blocking job for [`Runtime::spawn_blocking`].
pub type Job = Box<dyn FnOnce() + Send>;

/// A task for [`Runtime::spawn`].
pub type Task = core::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// What [`AsyncThrottled`] needs from an async runtime: a timer, and somewhere to finish a
/// deferred run whose caller was cancelled.
///
/// With the `tokio` feature, [`TokioRuntime`](crate::TokioRuntime) implements it.
///
/// # Examples
///
/// A runtime that hands cancelled runs to plain threads (with a timer that sleeps a thread,
/// which only suits a toy executor):
///
/// ```
/// use atomic_throttle::{Job, Runtime, Task};
/// use std::future::Future;
/// use std::time::Duration;
///
/// struct Threads;
///
/// impl Runtime for Threads {
///     fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
///         std::thread::sleep(duration);
///         std::future::ready(())
///     }
///     fn spawn(&self, task: Task) -> Result<(), Task> {
///         std::thread::spawn(move || Threads.block_on(task));
///         Ok(())
///     }
///     fn spawn_blocking(&self, job: Job) {
///         std::thread::spawn(job);
///     }
///     fn block_on<F: Future>(&self, future: F) -> F::Output {
///         let mut future = std::pin::pin!(future);
///         let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
///         loop {
///             if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
///                 return out;
///             }
///             std::thread::yield_now();
///         }
///     }
/// }
/// # let _ = Threads;
/// ```
pub trait Runtime: Send + Sync + 'static {
    /// A future that completes after about `duration` of real time.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;

    /// Runs `task` to completion as a task of its own: the rest of the wait of a deferred run
    /// whose caller was cancelled.
    ///
    /// # Errors
    ///
    /// The task itself, not run, if there is nowhere to run it (no runtime at hand): the
    /// deferral is then given up.
    fn spawn(&self, task: Task) -> Result<(), Task>;

    /// Runs `job` to completion on a thread where it may block (tokio's blocking pool, a
    /// thread of its own): the work of a handed-on run, which `job` drives through
    /// [`block_on`](Runtime::block_on), so that the work's futures need not be `Send`. Only
    /// called from a task that [`spawn`](Runtime::spawn) started.
    fn spawn_blocking(&self, job: Job);

    /// Drives `future` to completion on the calling thread (one that
    /// [`spawn_blocking`](Runtime::spawn_blocking) gave a job).
    fn block_on<F: Future>(&self, future: F) -> F::Output;
}

/// What happens to a deferred run whose caller's future is dropped while it waits for the
/// deadline (a timeout, a lost `select!` branch, an aborted task).
///
/// # Examples
///
/// ```
/// use atomic_throttle::OnCancel;
/// assert_eq!(OnCancel::default(), OnCancel::HandOff);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnCancel {
    /// The wait goes on without the caller, in a task of the runtime, and the work runs at
    /// the deadline on its blocking pool: the callers coalesced behind it stay covered. The
    /// default.
    #[default]
    HandOff,
    /// The deferral is given up, as dropping a [`Deferral`](crate::Deferral) does: the next
    /// call claims a new one, and callers coalesced behind the cancelled one are not covered.
    GiveUp,
}

/// Async work behind a throttle: a function returning a future, or an async closure, called
/// at most once per threshold, with one deferred trailing call.
///
/// [`call`](AsyncThrottled::call) runs the work at once, awaits the deadline and runs it, or
/// returns at once when a pending deferred call covers it;
/// [`call_covered`](AsyncThrottled::call_covered) waits for that covering run instead, and
/// gets its result (a single-flight refresh). Runs are spaced by the threshold on the
/// throttle's clock, as for [`Throttle`].
///
/// **A cancelled caller does not take coverage with it.** If the future of the caller that
/// owns the deferred run is dropped while it waits ([`OnCancel::HandOff`], the default), the
/// wait goes on in a task of the runtime, and the work runs at the deadline all the same, on
/// the runtime's blocking pool; callers coalesced behind it stay covered. This needs a runtime
/// to hand it to: with tokio, the runtime current where the caller is dropped, or else the one
/// current when the wrapper was built; with neither, the deferral is given up, as
/// [`OnCancel::GiveUp`] does.
///
/// **The runtime must go on being driven until the deadline.** If it shuts down first, the task
/// holding the run is dropped and the deferral is given up, never stranded: the next call
/// claims a new one, and callers waiting in
/// [`call_covered`](AsyncThrottled::call_covered) are told (`Revoked(Cancelled)`). A runtime
/// that stays alive but is never polled again (a current-thread runtime nobody blocks on)
/// holds the run with it; for that, build the throttle with a
/// [`lease`](crate::ThrottleBuilder::lease), so that a later call takes the run over, or call
/// [`cancel`](AsyncThrottled::cancel).
///
/// **Every path out ends the covered waits.** Callers waiting in `call_covered` are woken when
/// the covering run finishes, whoever started it; when it panics, or its future is dropped
/// mid-work (then they are covered, with no result to copy: `Coalesced`); and when the
/// deferral is cancelled, given up or taken over with nothing after it (`Revoked(Cancelled)`).
///
/// The work is anything callable as `AsyncFn() -> R`: an async closure (`async || ...`,
/// including one that borrows what it captured), or a closure returning a future. Its futures
/// need not be `Send`: a handed-on run's work is driven on a blocking thread of its own.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "tokio")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use atomic_throttle::{AsyncThrottled, Outcome};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// let cache = Arc::new(std::sync::Mutex::new(0u64));
/// let refresh = AsyncThrottled::new(Duration::from_millis(10), {
///     let cache = cache.clone();
///     async move || {
///         let mut cache = cache.lock().unwrap();
///         *cache += 1;
///         *cache
///     }
/// });
/// assert_eq!(refresh.call().await, Outcome::Now(1));
/// assert_eq!(refresh.call().await, Outcome::Deferred(2)); // waited for the window to end
/// # }
/// # #[cfg(not(feature = "tokio"))]
/// # fn main() {}
/// ```
pub struct AsyncThrottled<F, Rt, C: Clock = DefaultClock> {
    shared: Arc<Shared<F, Rt, C>>,
}

struct Shared<F, Rt, C: Clock> {
    throttle: Throttle<C>,
    work: F,
    runtime: Rt,
    publishing: bool,
    on_cancel: OnCancel,
    completions: Arc<Completions>,
}

impl<F, Rt, C, R> AsyncThrottled<F, Rt, C>
where
    F: AsyncFn() -> R + Send + Sync + 'static,
    R: Send + 'static,
    Rt: Runtime,
    C: Clock + Send + Sync + 'static,
{
    /// Wraps `work` in `throttle` (built with [`Throttle::builder`] for another clock, mode,
    /// lease or counters), on `runtime` for timers and hand-offs. With tokio,
    /// `AsyncThrottled::new` and `AsyncThrottled::from_throttle` pick
    /// [`TokioRuntime`](crate::TokioRuntime).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), atomic_throttle::ThresholdError> {
    /// use atomic_throttle::{AsyncThrottled, Mode, Outcome, Throttle, TokioRuntime};
    /// use std::time::Duration;
    ///
    /// let throttle = Throttle::builder(Duration::from_secs(1)).mode(Mode::LeadingOnly).build()?;
    /// let log = AsyncThrottled::with_runtime(throttle, TokioRuntime::new(), async || "logged");
    /// assert_eq!(log.call().await, Outcome::Now("logged"));
    /// assert_eq!(log.call().await, Outcome::Suppressed);
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "tokio"))]
    /// # fn main() {}
    /// ```
    pub fn with_runtime(throttle: Throttle<C>, runtime: Rt, work: F) -> Self {
        Self {
            shared: Arc::new(Shared {
                throttle,
                work,
                runtime,
                publishing: false,
                on_cancel: OnCancel::default(),
                completions: Arc::default(),
            }),
        }
    }

    /// Whether a Coalesced caller's earlier writes happen-before the run that covers it; see
    /// [`Throttled::publishing`](crate::Throttled::publishing). Call it before sharing the
    /// handle.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// # use atomic_throttle::AsyncThrottled;
    /// # use std::time::Duration;
    /// let publish = AsyncThrottled::new(Duration::from_millis(5), async || ()).publishing(true);
    /// # let _ = publish;
    /// # }
    /// ```
    pub fn publishing(self, publishing: bool) -> Self {
        self.configure(|shared| shared.publishing = publishing)
    }

    /// What happens to a deferred run whose caller is cancelled; [`OnCancel::HandOff`] unless
    /// set. Call it before sharing the handle.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// # use atomic_throttle::{AsyncThrottled, OnCancel};
    /// # use std::time::Duration;
    /// let job = AsyncThrottled::new(Duration::from_millis(5), async || ()).on_cancel(OnCancel::GiveUp);
    /// # let _ = job;
    /// # }
    /// ```
    pub fn on_cancel(self, on_cancel: OnCancel) -> Self {
        self.configure(|shared| shared.on_cancel = on_cancel)
    }

    fn configure(self, change: impl FnOnce(&mut Shared<F, Rt, C>)) -> Self {
        let mut shared = self.shared;
        match Arc::get_mut(&mut shared) {
            Some(shared) => change(shared),
            None => unreachable!("AsyncThrottled is configured before it is shared"),
        }
        Self { shared }
    }

    /// Calls the work through the throttle: at once (`Now`), after awaiting the end of the
    /// window (`Deferred`), or not at all when a pending deferred call covers this one
    /// (`Coalesced`; `Suppressed` in leading-only mode). A call whose deferral was cancelled
    /// (or taken over, with a lease) before its run answers `Revoked`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future never runs the work twice and never strands the deferral:
    ///
    /// - while it awaits the deadline, the run is handed on and happens at the deadline
    ///   without this caller ([`OnCancel::HandOff`]), or it is given up ([`OnCancel::GiveUp`]);
    /// - while it awaits the work's own future, the run has already been stamped, so the
    ///   window moves on as if the work had finished; the work's future is dropped mid-way,
    ///   with whatever that means for the work.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use atomic_throttle::{AsyncThrottled, Outcome};
    /// # use std::time::Duration;
    /// let job = AsyncThrottled::new(Duration::from_secs(60), async || 1 + 1);
    /// assert_eq!(job.call().await, Outcome::Now(2));
    /// # }
    /// # #[cfg(not(feature = "tokio"))]
    /// # fn main() {}
    /// ```
    pub async fn call(&self) -> Outcome<R> {
        match self.admit_and_run().await {
            Ran::Outcome(outcome) => outcome,
            Ran::Coalesced(_) => Outcome::Coalesced,
        }
    }

    /// Like [`call`](AsyncThrottled::call), but a caller that would be Coalesced waits for the
    /// run that covers it to finish, and gets a copy of its result: `Covered(result)`. If that
    /// run is cancelled with nothing after it, the answer is `Revoked(Cancelled)`.
    ///
    /// Callers that do not wait pay nothing for this: their Coalesced answer is still one
    /// load. A waiting caller is woken when a run finishes, or when its deferral is given up.
    ///
    /// # Cancel safety
    ///
    /// As [`call`](AsyncThrottled::call); a waiting caller's future owns nothing, and dropping
    /// it only stops the wait.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")]
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), atomic_throttle::ThresholdError> {
    /// use atomic_throttle::{AsyncThrottled, Outcome, Throttle, TokioClock};
    /// use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// let refreshes = Arc::new(AtomicU32::new(0));
    /// let throttle = Throttle::with_clock(Duration::from_millis(100), TokioClock::new())?;
    /// let refresh = Arc::new(AsyncThrottled::from_throttle(throttle, {
    ///     let refreshes = refreshes.clone();
    ///     async move || refreshes.fetch_add(1, Relaxed) + 1
    /// }));
    /// assert_eq!(refresh.call_covered().await, Outcome::Now(1));
    /// let owner = tokio::spawn({
    ///     let refresh = refresh.clone();
    ///     async move { refresh.call().await }
    /// });
    /// while !refresh.is_pending() {
    ///     tokio::task::yield_now().await; // until the owner has claimed the deferred run
    /// }
    /// // This caller waits for the deferred run, and gets its result.
    /// assert_eq!(refresh.call_covered().await, Outcome::Covered(2));
    /// assert_eq!(owner.await.unwrap(), Outcome::Deferred(2));
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "tokio"))]
    /// # fn main() {}
    /// ```
    pub async fn call_covered(&self) -> Outcome<R>
    where
        R: Clone,
    {
        let completions = &*self.shared.completions;
        completions.keep_results(covered::clone_as::<R>);
        let seen = match self.admit_and_run().await {
            Ran::Outcome(outcome) => return outcome,
            Ran::Coalesced(seen) => seen,
        };
        let waiter = Waiting {
            completions,
            id: crate::clock::Waiter::new(core::task::Waker::noop()).id(),
        };
        core::future::poll_fn(|cx| {
            // Acquire: as in `Throttle::admit`.
            let load = || self.shared.throttle.load(Ordering::Acquire);
            // Not `lease_over`: every claim is the wrapper's, and the caller that takes an
            // abandoned one over runs it as the wrapper's, which wakes the waiters.
            match completions
                .look::<R>(seen, load, false, waiter.id, cx.waker())
                .0
            {
                Seen::Covered(Some(result)) => Poll::Ready(Outcome::Covered(result)),
                // The covering run finished before results were kept (a race with the first
                // waiter): nothing to copy, but covered all the same.
                Seen::Covered(None) => Poll::Ready(Outcome::Coalesced),
                Seen::Uncovered => Poll::Ready(Outcome::Revoked(Revoked::Cancelled)),
                // The throttle is the wrapper's own: every run is the wrapper's, and wakes them.
                Seen::Waiting | Seen::Watching => Poll::Pending,
            }
        })
        .await
    }

    /// Admits a call and runs the work if it is this caller's to run.
    async fn admit_and_run(&self) -> Ran<R> {
        let shared = &self.shared;
        let (admission, seen) = shared.throttle.admit_seen(shared.publishing);
        match admission {
            Admission::Now => {
                let stamp = shared.throttle.last_run().unwrap_or_default();
                let owed = Owed::leading(&*shared.completions, stamp);
                let result = (shared.work)().await;
                owed.finish(&result);
                Ran::Outcome(Outcome::Now(result))
            }
            Admission::Deferred(deferral) => {
                let claim = deferral.disown();
                let mut owed = Owed::new(&*shared.completions, Some(claim));
                // Declared after `owed`, dropped before it: a caller dropped while it waits
                // hands its run on (which the waiters then wait for), then settles its own.
                let mut hand_off = HandOff {
                    shared,
                    claim: Some(claim),
                };
                let runtime = &shared.runtime;
                let stamped = shared
                    .throttle
                    .word()
                    .stamp_when_due_async_around(
                        claim,
                        |wait| runtime.sleep(wait),
                        |attempt| owed.stamping(attempt),
                    )
                    .await;
                hand_off.claim = None; // stamped or revoked: nothing left to hand on
                Ran::Outcome(match stamped {
                    Ok(_) => {
                        let result = (shared.work)().await;
                        owed.finish(&result);
                        Outcome::Deferred(result)
                    }
                    Err(revoked) => Outcome::Revoked(revoked),
                })
            }
            Admission::Coalesced => Ran::Coalesced(seen),
            Admission::Suppressed { .. } => Ran::Outcome(Outcome::Suppressed),
        }
    }

    /// Withdraws the pending deferral; whether one was pending. Its owner's call answers
    /// `Revoked(Cancelled)`, and callers waiting for it in
    /// [`call_covered`](AsyncThrottled::call_covered) are woken with the same answer (unless
    /// a later run covers them). See [`Throttle::cancel`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// # use atomic_throttle::AsyncThrottled;
    /// # use std::time::Duration;
    /// let job = AsyncThrottled::new(Duration::from_secs(1), async || ());
    /// assert!(!job.cancel());
    /// # }
    /// ```
    pub fn cancel(&self) -> bool {
        let cancelled = self.shared.throttle.cancel();
        self.shared.completions.notify();
        cancelled
    }

    /// Runs the pending deferral now instead of at its deadline; whether one was pending. See
    /// [`Throttle::flush`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// # use atomic_throttle::AsyncThrottled;
    /// # use std::time::Duration;
    /// let job = AsyncThrottled::new(Duration::from_secs(1), async || ());
    /// assert!(!job.flush());
    /// # }
    /// ```
    pub fn flush(&self) -> bool {
        self.shared.throttle.flush()
    }

    /// Changes the threshold; see [`Throttle::set_threshold`].
    ///
    /// # Errors
    ///
    /// [`ThresholdError`] for a threshold over [`Throttle::MAX_THRESHOLD`]; nothing changes.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// # use atomic_throttle::AsyncThrottled;
    /// # use std::time::Duration;
    /// let job = AsyncThrottled::new(Duration::from_secs(1), async || ());
    /// job.set_threshold(Duration::from_millis(5))?;
    /// assert_eq!(job.threshold(), Duration::from_millis(5));
    /// # }
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn set_threshold(&self, threshold: Duration) -> Result<(), ThresholdError> {
        self.shared.throttle.set_threshold(threshold)
    }

    /// The threshold in force.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// # use atomic_throttle::AsyncThrottled;
    /// # use std::time::Duration;
    /// let job = AsyncThrottled::new(Duration::from_secs(2), async || ());
    /// assert_eq!(job.threshold(), Duration::from_secs(2));
    /// # }
    /// ```
    pub fn threshold(&self) -> Duration {
        self.shared.throttle.threshold()
    }

    /// Whether a deferred call is pending: the next call is Coalesced.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// # use atomic_throttle::AsyncThrottled;
    /// # use std::time::Duration;
    /// let job = AsyncThrottled::new(Duration::from_secs(2), async || ());
    /// assert!(!job.is_pending());
    /// # }
    /// ```
    pub fn is_pending(&self) -> bool {
        self.shared.throttle.is_pending()
    }

    /// How many callers wait in [`call_covered`](AsyncThrottled::call_covered) for their
    /// covering run right now.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// # use atomic_throttle::AsyncThrottled;
    /// # use std::time::Duration;
    /// let job = AsyncThrottled::new(Duration::from_secs(2), async || ());
    /// assert_eq!(job.waiting(), 0);
    /// # }
    /// ```
    pub fn waiting(&self) -> usize {
        self.shared.completions.waiting()
    }

    /// The stamp of the last run; see [`Throttle::last_run`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// # use atomic_throttle::AsyncThrottled;
    /// # use std::time::Duration;
    /// let job = AsyncThrottled::new(Duration::from_secs(2), async || ());
    /// assert_eq!(job.last_run(), None);
    /// # }
    /// ```
    pub fn last_run(&self) -> Option<u64> {
        self.shared.throttle.last_run()
    }

    /// The throttle's counters, if it counts; see [`Throttle::stats`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// # use atomic_throttle::AsyncThrottled;
    /// # use std::time::Duration;
    /// let job = AsyncThrottled::new(Duration::from_secs(2), async || ());
    /// assert_eq!(job.stats(), None);
    /// # }
    /// ```
    pub fn stats(&self) -> Option<Stats> {
        self.shared.throttle.stats()
    }

    /// Calls coalesced or suppressed since the count was last taken; see
    /// [`Throttle::take_skipped`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// # use atomic_throttle::AsyncThrottled;
    /// # use std::time::Duration;
    /// let job = AsyncThrottled::new(Duration::from_secs(2), async || ());
    /// assert_eq!(job.take_skipped(), 0);
    /// # }
    /// ```
    pub fn take_skipped(&self) -> u64 {
        self.shared.throttle.take_skipped()
    }
}

/// What admitting a call led to: an outcome, or a Coalesced answer on the word it saw.
enum Ran<R> {
    Outcome(Outcome<R>),
    Coalesced(u64),
}

/// Forgets a waiting caller when its wait ends or is dropped.
struct Waiting<'a> {
    completions: &'a Completions,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.completions.forget(self.id);
    }
}

/// Holds a claimed deferral while its caller waits for the deadline; if the caller's future is
/// dropped first, hands the wait and the run on (or gives the deferral up).
struct HandOff<'a, F, Rt, C, R>
where
    F: AsyncFn() -> R + Send + Sync + 'static,
    R: Send + 'static,
    Rt: Runtime,
    C: Clock + Send + Sync + 'static,
{
    shared: &'a Arc<Shared<F, Rt, C>>,
    claim: Option<u64>,
}

impl<F, Rt, C, R> Drop for HandOff<'_, F, Rt, C, R>
where
    F: AsyncFn() -> R + Send + Sync + 'static,
    R: Send + 'static,
    Rt: Runtime,
    C: Clock + Send + Sync + 'static,
{
    fn drop(&mut self) {
        let Some(claim) = self.claim.take() else {
            return;
        };
        let shared = self.shared;
        let hand_off =
            shared.on_cancel == OnCancel::HandOff && !sync::is_mutant(sync::mutant!(NoHandOff));
        if !hand_off {
            shared.throttle.word().release(claim);
            shared.completions.notify();
            return;
        }
        // Released unless the run is stamped: a task dropped before its deadline, polled or
        // not (its runtime shut down), gives the deferral up rather than strand it.
        let held = Held::new(shared, claim);
        let task: Task = Box::pin(async move {
            let mut held = held;
            let owner = Arc::clone(&held.owner);
            let stamped = {
                let (runtime, run) = (&owner.runtime, held.run);
                owner
                    .throttle
                    .word()
                    .stamp_when_due_async_around(
                        claim,
                        |wait| runtime.sleep(wait),
                        |attempt| owner.completions.stamping(run, attempt),
                    )
                    .await
            };
            held.released = true; // stamped or revoked: nothing left to release
            match stamped {
                // The work's future may not be `Send`: it runs on a thread of its own. If the
                // job never runs or the work panics, `owed` still ends the covered waits.
                Ok(stamp) => owner.runtime.spawn_blocking(Box::new({
                    let owner = Arc::clone(&owner);
                    let mut owed = Owed::new(Arc::clone(&owner.completions), Some(claim));
                    owed.started(stamp);
                    move || {
                        let result = owner.runtime.block_on((owner.work)());
                        owed.finish(&result);
                    }
                })),
                Err(_) => owner.completions.notify(),
            }
        });
        if let Err(task) = shared.runtime.spawn(task) {
            // Nowhere to hand it: dropping the task gives the deferral up (see `Held`).
            drop(task);
        }
    }
}

/// A handed-on deferral's claim, until its run is stamped: released if the task holding it
/// is dropped first.
struct Held<F, Rt, C, R>
where
    F: AsyncFn() -> R + Send + Sync + 'static,
    R: Send + 'static,
    Rt: Runtime,
    C: Clock + Send + Sync + 'static,
{
    owner: Arc<Shared<F, Rt, C>>,
    claim: u64,
    /// Its id among the runs under way (`Completions::own`).
    run: u64,
    /// Stamped or revoked: nothing left to release.
    released: bool,
}

impl<F, Rt, C, R> Held<F, Rt, C, R>
where
    F: AsyncFn() -> R + Send + Sync + 'static,
    R: Send + 'static,
    Rt: Runtime,
    C: Clock + Send + Sync + 'static,
{
    /// Holds `claim` for a handed-on run, under way for the waiters until dropped.
    fn new(owner: &Arc<Shared<F, Rt, C>>, claim: u64) -> Self {
        let run = owner.completions.own(Some(claim));
        Self {
            owner: Arc::clone(owner),
            claim,
            run,
            released: false,
        }
    }
}

impl<F, Rt, C, R> Drop for Held<F, Rt, C, R>
where
    F: AsyncFn() -> R + Send + Sync + 'static,
    R: Send + 'static,
    Rt: Runtime,
    C: Clock + Send + Sync + 'static,
{
    fn drop(&mut self) {
        if !self.released {
            self.owner.throttle.word().release(self.claim);
        }
        self.owner.completions.notify_settled(self.run);
    }
}

impl<F, Rt, C: Clock> fmt::Debug for AsyncThrottled<F, Rt, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncThrottled")
            .field("throttle", &self.shared.throttle)
            .field("publishing", &self.shared.publishing)
            .field("on_cancel", &self.shared.on_cancel)
            .finish_non_exhaustive()
    }
}
