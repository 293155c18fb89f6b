//! A detached throttle: deferred runs happen on a timer thread (its own, or a shared timer's
//! workers), so callers never wait.

mod job;
mod own_thread;

use crate::clock::{Clock, DefaultClock};
use crate::counters::Stats;
use crate::error::ThresholdError;
use crate::panics::PanicHook;
use crate::sync::{self, JoinHandle};
use crate::throttle::Throttle;
use crate::timer::{SharedTimer, MAX_SLICE};
use core::fmt;
use core::time::Duration;
use job::{Driver, Job};
use std::any::Any;
use std::sync::Arc;

/// A throttle that owns its work and a timer thread: [`call`](Detached::call) never waits.
///
/// A Deferred answer hands the deferral to the throttle's own timer thread, which runs the work
/// at the deadline; a Coalesced answer returns at once; a leading run happens on the timer
/// thread too (the default) or on the calling thread ([`LeadingRun::Inline`]). Since no caller
/// ever owns a deferral, no caller can strand one: every Coalesced call is covered by a run,
/// even when callers panic.
///
/// **Its own thread, or a shared timer.** By default each detached throttle has a timer
/// thread of its own, which isolates it from every other throttle's work. Many throttles
/// (per key, per call site) can share one [`SharedTimer`] instead, through
/// [`DetachedBuilder::timer`]: one timer thread and a few workers for all of them. Everything
/// said here about "the timer thread" then holds for the worker that serves the throttle's
/// run (one at a time, so a throttle's runs never overlap); the differences are in
/// [`DetachedBuilder::timer`].
///
/// **Spacing of the work itself.** The timer thread stamps each run when it starts the work,
/// and starts no work less than the threshold after the last work it started: however late it
/// wakes, consecutive starts of the work on the timer thread are at least the threshold apart
/// on the throttle's clock. The work's own first reading trails its stamp by the few
/// instructions between them, plus however long the thread is preempted right there, which
/// no user-space code can prevent: on a machine with more busy threads than cores, a start can
/// come closer to the previous one than the threshold, by as long as the preemption (rare:
/// hundreds of microseconds in about one pair in three hundred on a loaded two-core machine;
/// the crate's load tests check that every such shortfall is the earlier run's own lag from
/// its stamp). The stamps themselves are always at least a threshold apart. With [`LeadingRun::Inline`], a leading run is stamped by its caller's admission and
/// runs on that caller's thread, so its start can trail its stamp.
///
/// **Nothing strands a run.** A panic in the work, in the [`on_panic`](DetachedBuilder::on_panic)
/// hook, in dropping a panic's payload, or in the clock on the timer thread is caught: it is
/// counted ([`panics`](Detached::panics)), handed to the hook, and printed by the process's
/// panic hook as usual; the timer thread keeps working. A clock that panics while the timer
/// thread waits for a deadline makes it give that deferral up. Should the timer thread end
/// anyway (the process is being torn down), it gives its pending deferral up, and calls are
/// answered [`Dispatch::Closed`] instead of being coalesced into a run that will not come;
/// [`is_running`](Detached::is_running) says so too.
///
/// Memory ordering: by default a Coalesced caller's earlier writes are not guaranteed to be
/// visible to the run that covers it (the crate docs' "Memory ordering");
/// [`DetachedBuilder::publishing`] adds that edge at the price of a shared write per call.
///
/// [`shutdown`](Detached::shutdown), or dropping the handle, stops the timer thread and joins
/// it. A pending deferred run is run at its deadline first, or given up, as [`Shutdown`] says,
/// and either way within the [shutdown grace](DetachedBuilder::shutdown_grace) of real time.
/// From the moment a shutdown begins, a call that would start a new run (a leading or a new
/// deferred one) is answered [`Dispatch::Closed`], a call from inside the work included: a work
/// that calls its own handle cannot keep the shutdown from ending.
/// Dropping the last handle on the timer thread itself (from inside the work) stops it without
/// joining. On a shared timer, shutting down waits until the throttle is done instead (and
/// dropping, until the timer has let go of it), and the timer's threads go on serving the others.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Detached, Dispatch};
/// use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// let runs = Arc::new(AtomicU32::new(0));
/// let flush = Detached::new(Duration::from_millis(5), {
///     let runs = runs.clone();
///     move || {
///         runs.fetch_add(1, Relaxed);
///     }
/// });
/// assert_eq!(flush.call(), Dispatch::Leading); // the timer thread runs it as soon as it can
/// assert_eq!(flush.call(), Dispatch::Deferred); // runs there a threshold after that
/// assert_eq!(flush.call(), Dispatch::Coalesced);
/// drop(flush); // runs the pending call at its deadline, then joins the thread
/// assert_eq!(runs.load(Relaxed), 2);
/// ```
///
/// **In a `static`.** A named function needs no cast: the static's type says `fn()`, and the
/// function coerces to it. A `static` is never dropped, so call
/// [`shutdown`](Detached::shutdown) (through `&self`) before the process exits, or whatever
/// it has not run yet (a queued leading run as well as the pending deferred one) is lost with
/// the process. A call site that only needs "at most once per
/// threshold", with no trailing run, is simpler still with [`throttled!`](crate::throttled).
///
/// ```
/// use atomic_throttle::{Detached, Dispatch};
/// use std::sync::LazyLock;
/// use std::time::Duration;
///
/// fn flush_metrics() { /* ... */ }
///
/// static FLUSH: LazyLock<Detached<fn()>> =
///     LazyLock::new(|| Detached::new(Duration::from_millis(5), flush_metrics));
///
/// fn on_sample() {
///     FLUSH.call(); // never waits
/// }
///
/// on_sample();
/// on_sample();
/// FLUSH.shutdown(); // at exit: the pending run happens at its deadline
/// assert_eq!(FLUSH.call(), Dispatch::Closed);
/// ```
pub struct Detached<F, C: Clock = DefaultClock> {
    job: Arc<Job<F, C>>,
    backend: Backend<C>,
}

/// What serves a detached throttle's runs, as its handle holds it.
enum Backend<C: Clock> {
    /// Its own timer thread, to join when it stops.
    Own(std::sync::Mutex<Option<JoinHandle<()>>>),
    /// A shared timer, kept running while the handle lives.
    Shared(SharedTimer<C>),
}

/// What [`Detached::call`] did with a call.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Detached, Dispatch};
/// use std::time::Duration;
///
/// let job = Detached::new(Duration::from_secs(60), || ());
/// assert_eq!(job.call(), Dispatch::Leading);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dispatch {
    /// No run in the last threshold: a leading run. With [`LeadingRun::OnTimer`] (the default)
    /// it is queued for the timer thread, which starts it as soon as it can (and no sooner
    /// than a threshold after the work it last started); with [`LeadingRun::Inline`] it has
    /// already run on this thread.
    Leading,
    /// The timer thread will run the work when the window ends.
    Deferred,
    /// A deferred run is pending on the timer thread; it covers this call.
    Coalesced,
    /// [Leading-only](crate::Mode::LeadingOnly): inside the window; no run covers this call.
    Suppressed,
    /// The timer thread has stopped ([`shutdown`](Detached::shutdown), or the process is being
    /// torn down): nothing will run for this call.
    Closed,
}

/// Which thread runs the work of a leading run.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Detached, LeadingRun, Throttle};
/// use std::time::Duration;
///
/// let job = Detached::builder(Throttle::new(Duration::from_millis(1)))
///     .leading_run(LeadingRun::Inline)
///     .spawn(|| println!("leading runs print on the caller's thread"))?;
/// # drop(job);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LeadingRun {
    /// The timer thread runs it: callers never run the work, and the work's starts are spaced
    /// on the timer thread. The default.
    #[default]
    OnTimer,
    /// The calling thread runs it before `call` returns: no hand-off, but the caller pays for
    /// the work (and a panic in it is caught on the caller's thread).
    Inline,
}

/// What shutting a [`Detached`] down does with a deferred run still pending.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Detached, Shutdown, Throttle};
/// use std::time::Duration;
///
/// let job = Detached::builder(Throttle::new(Duration::from_secs(3600)))
///     .on_shutdown(Shutdown::CancelPending)
///     .spawn(|| ())?;
/// job.call();
/// job.call(); // pending for an hour...
/// drop(job); // ...given up: the drop returns at once
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Shutdown {
    /// Wait for its deadline and run it, then stop: no call is lost. The wait lasts at most the
    /// [shutdown grace](DetachedBuilder::shutdown_grace) of real time (one second unless set);
    /// if the deadline has not come by then (a long threshold, a clock that stands still or
    /// stepped back), the run happens at once, as a [flush](Detached::flush) would make it.
    /// The default.
    #[default]
    RunPending,
    /// Give it up and stop at once.
    CancelPending,
}

/// Configures a [`Detached`] before its timer thread starts.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Detached, LeadingRun, Shutdown, Throttle};
/// use std::time::Duration;
///
/// let job = Detached::builder(Throttle::new(Duration::from_millis(10)))
///     .leading_run(LeadingRun::OnTimer)
///     .on_shutdown(Shutdown::RunPending)
///     .shutdown_grace(Duration::from_millis(100))?
///     .on_panic(|payload| eprintln!("work failed: {:?}", payload.downcast_ref::<&str>()))
///     .spawn(|| ())?;
/// # drop(job);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until `spawn`"]
pub struct DetachedBuilder<C: Clock = DefaultClock> {
    throttle: Throttle<C>,
    publishing: bool,
    leading: LeadingRun,
    shutdown: Shutdown,
    grace: Duration,
    on_panic: Option<PanicHook>,
    timer: Option<SharedTimer<C>>,
}

impl<F> Detached<F>
where
    F: Fn() + Send + Sync + 'static,
{
    /// A detached throttle on the process's [`DefaultClock`], with the default options.
    ///
    /// # Panics
    ///
    /// If `threshold` exceeds [`Throttle::MAX_THRESHOLD`], or if the operating system refuses
    /// to start the timer thread. Use [`Detached::builder`] to handle both as errors.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Detached;
    /// # use std::time::Duration;
    /// let job = Detached::new(Duration::from_millis(100), || println!("flushed"));
    /// # drop(job);
    /// ```
    pub fn new(threshold: Duration, work: F) -> Self {
        let throttle = match Throttle::try_new(threshold) {
            Ok(throttle) => throttle,
            Err(err) => panic!("atomic-throttle: Detached::new: {err}"),
        };
        match Detached::builder(throttle).spawn(work) {
            Ok(detached) => detached,
            Err(err) => {
                panic!("atomic-throttle: Detached::new: cannot start the timer thread: {err}")
            }
        }
    }
}

impl Detached<()> {
    /// Configures a detached throttle around `throttle` (built with [`Throttle::try_new`],
    /// [`Throttle::with_clock`] or [`Throttle::builder`], so a bad threshold is an error
    /// there, and the [`Mode`](crate::Mode) is the throttle's).
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Detached, Throttle};
    /// # use std::time::Duration;
    /// let throttle = Throttle::try_new(Duration::from_millis(5)).expect("a valid threshold");
    /// let job = Detached::builder(throttle).spawn(|| ())?;
    /// # drop(job);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn builder<C: Clock>(throttle: Throttle<C>) -> DetachedBuilder<C> {
        DetachedBuilder {
            throttle,
            publishing: false,
            leading: LeadingRun::default(),
            shutdown: Shutdown::default(),
            grace: DetachedBuilder::<C>::DEFAULT_GRACE,
            on_panic: None,
            timer: None,
        }
    }
}

impl<C: Clock> DetachedBuilder<C> {
    /// The shutdown grace unless set: one second.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(1);

    /// Which thread runs leading runs; [`LeadingRun::OnTimer`] by default.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Detached, LeadingRun, Throttle};
    /// # use std::time::Duration;
    /// let builder = Detached::builder(Throttle::new(Duration::from_secs(1)))
    ///     .leading_run(LeadingRun::Inline);
    /// # drop(builder);
    /// ```
    pub fn leading_run(mut self, leading: LeadingRun) -> Self {
        self.leading = leading;
        self
    }

    /// Whether a Coalesced caller's earlier writes happen-before the run that covers it. Off
    /// by default: [`call`](Detached::call) then admits with [`Throttle::admit`], one load on
    /// the common path, and gives no such edge. On, it admits with
    /// [`Throttle::admit_publishing`], a read-modify-write of the shared word on every call
    /// (about 6.5 ns instead of 0.4 ns on one thread in the crate's benches). Turn it on when
    /// the work reads what callers wrote just before calling (a "dirty" flag, a buffer) through
    /// memory that nothing else orders.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Detached, Throttle};
    /// # use std::time::Duration;
    /// let builder = Detached::builder(Throttle::new(Duration::from_secs(1))).publishing(true);
    /// # drop(builder);
    /// ```
    pub fn publishing(mut self, publishing: bool) -> Self {
        self.publishing = publishing;
        self
    }

    /// What shutting down does with a pending deferred run; [`Shutdown::RunPending`] by
    /// default.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Detached, Shutdown, Throttle};
    /// # use std::time::Duration;
    /// let builder = Detached::builder(Throttle::new(Duration::from_secs(1)))
    ///     .on_shutdown(Shutdown::CancelPending);
    /// # drop(builder);
    /// ```
    pub fn on_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// How long, in real time, a shutdown under [`Shutdown::RunPending`] waits for a pending
    /// run's deadline before running it at once; [`DetachedBuilder::DEFAULT_GRACE`] unless set.
    /// It bounds how long [`shutdown`](Detached::shutdown) and dropping the handle block,
    /// whatever the throttle's clock does (besides the time the work itself takes).
    ///
    /// # Errors
    ///
    /// [`ThresholdError`] for a grace over [`Throttle::MAX_THRESHOLD`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Detached, Throttle};
    /// # use std::time::Duration;
    /// let builder = Detached::builder(Throttle::new(Duration::from_secs(1)))
    ///     .shutdown_grace(Duration::from_millis(200))?;
    /// # drop(builder);
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn shutdown_grace(mut self, grace: Duration) -> Result<Self, ThresholdError> {
        if grace > Throttle::MAX_THRESHOLD {
            return Err(ThresholdError::grace(grace));
        }
        self.grace = grace;
        Ok(self)
    }

    /// Called with the payload of every panic the work raises, on the thread that ran it. A
    /// panic inside the hook itself is caught and ignored.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Detached, Throttle};
    /// # use std::time::Duration;
    /// let builder = Detached::builder(Throttle::new(Duration::from_secs(1)))
    ///     .on_panic(|payload| eprintln!("{:?}", payload.downcast_ref::<String>()));
    /// # drop(builder);
    /// ```
    pub fn on_panic(mut self, hook: impl Fn(&(dyn Any + Send)) + Send + Sync + 'static) -> Self {
        self.on_panic = Some(Box::new(hook));
        self
    }

    /// Serves the throttle on `timer`, a [`SharedTimer`] that many throttles share, instead of
    /// a timer thread of its own (the default). Its runs are then started by the timer's
    /// workers: the deferred runs, and the leading runs too with [`LeadingRun::OnTimer`].
    ///
    /// Everything else stays as it is: calls never wait, the work's starts are spaced by the
    /// threshold (and one throttle's runs never overlap), panics are caught, every Coalesced
    /// call is covered, and shutting the throttle down (or dropping it) follows its
    /// [`Shutdown`] policy within its grace; so does shutting the whole timer down. Besides
    /// the work that is running, a shutdown can also wait for a free worker while every worker
    /// is busy with other throttles' work. Called on one of the timer's own threads (from
    /// inside a work), [`shutdown`](Detached::shutdown) and dropping the handle do not wait.
    ///
    /// The throttle's clock must read the same time as the timer's (see [`SharedTimer`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Detached, Dispatch, SharedTimer, Throttle};
    /// use std::time::Duration;
    ///
    /// let timer = SharedTimer::new();
    /// let job = Detached::builder(Throttle::new(Duration::from_millis(5)))
    ///     .timer(&timer)
    ///     .spawn(|| println!("on one of the timer's workers"))?;
    /// assert_eq!(job.call(), Dispatch::Leading);
    /// assert_eq!(job.call(), Dispatch::Deferred);
    /// drop(job); // runs the pending call at its deadline
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn timer(mut self, timer: &SharedTimer<C>) -> Self {
        self.timer = Some(timer.clone());
        self
    }

    /// Starts the timer thread (or registers with the shared timer) and returns the handle.
    /// On a shared timer that has shut down, the handle is closed from the start: every call is
    /// answered [`Dispatch::Closed`].
    ///
    /// # Errors
    ///
    /// The operating system's error if the thread cannot be started.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Detached, Dispatch, Throttle};
    /// # use std::time::Duration;
    /// let job = Detached::builder(Throttle::new(Duration::from_secs(1))).spawn(|| ())?;
    /// assert_eq!(job.call(), Dispatch::Leading);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn<F>(self, work: F) -> std::io::Result<Detached<F, C>>
    where
        F: Fn() + Send + Sync + 'static,
        C: Send + Sync + 'static,
    {
        let DetachedBuilder {
            throttle,
            publishing,
            leading,
            shutdown,
            grace,
            on_panic,
            timer,
        } = self;
        let driver = match &timer {
            Some(timer) => Driver::Shared(timer.service().clone()),
            None => Driver::Own(std::sync::OnceLock::new()),
        };
        let job = Arc::new(Job::new(
            throttle, work, leading, shutdown, grace, on_panic, publishing, driver,
        ));
        let backend = match timer {
            Some(timer) => {
                if !timer.service().install(job.clone()) {
                    job.close(); // the timer has stopped: closed from the start
                }
                Backend::Shared(timer)
            }
            None => {
                let join = sync::ThreadBuilder::new()
                    .name("atomic-throttle-timer".into())
                    .spawn({
                        let job = job.clone();
                        move || own_thread::serve(&job)
                    })?;
                if let Driver::Own(thread) = &job.driver {
                    let _ = thread.set(join.thread().clone());
                }
                Backend::Own(std::sync::Mutex::new(Some(join)))
            }
        };
        Ok(Detached { job, backend })
    }
}

impl<F, C> Detached<F, C>
where
    F: Fn() + Send + Sync + 'static,
    C: Clock + Send + Sync + 'static,
{
    /// Admits a call; never waits for a deadline or for the timer thread.
    ///
    /// It costs what [`Throttle::admit`] costs, plus, once per window, a wake-up of the timer
    /// thread (a futex wake: a system call that does not block), or the work itself for a
    /// leading run with [`LeadingRun::Inline`].
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Detached, Dispatch, Shutdown, Throttle};
    /// use std::time::Duration;
    ///
    /// let job = Detached::builder(Throttle::new(Duration::from_secs(60)))
    ///     .on_shutdown(Shutdown::CancelPending) // don't wait when dropped
    ///     .spawn(|| ())?;
    /// assert_eq!(job.call(), Dispatch::Leading);
    /// assert_eq!(job.call(), Dispatch::Deferred);
    /// assert_eq!(job.call(), Dispatch::Coalesced);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn call(&self) -> Dispatch {
        self.job.call()
    }

    /// Runs the pending deferred run now instead of at its deadline (on the timer thread);
    /// returns whether one was pending. See [`Throttle::flush`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Detached, Dispatch};
    /// # use std::time::Duration;
    /// let job = Detached::new(Duration::from_secs(3600), || println!("flushed"));
    /// job.call();
    /// job.call(); // due in an hour
    /// assert!(job.flush()); // runs on the timer thread now
    /// # drop(job);
    /// ```
    pub fn flush(&self) -> bool {
        let flushed = self.job.throttle.flush();
        if flushed {
            self.job.nudge();
        }
        flushed
    }

    /// Gives the pending deferred run up; returns whether one was pending. See
    /// [`Throttle::cancel`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Detached;
    /// # use std::time::Duration;
    /// let job = Detached::new(Duration::from_secs(3600), || ());
    /// job.call();
    /// job.call();
    /// assert!(job.cancel());
    /// assert!(!job.is_pending());
    /// ```
    pub fn cancel(&self) -> bool {
        let cancelled = self.job.throttle.cancel();
        if cancelled {
            self.job.nudge();
        }
        cancelled
    }

    /// Stops the timer thread and waits for it, through a shared reference (a `static`
    /// handle, or one behind an `Arc`): a pending run is run or given up as [`Shutdown`] says,
    /// within the shutdown grace. From the moment it begins, calls that would start a new run
    /// (the work's own calls included) are answered [`Dispatch::Closed`]; a call coalesced
    /// into the run pending then is still answered `Coalesced`. Idempotent.
    /// Called on the timer thread itself (from inside the work), it asks the thread to stop
    /// and returns without waiting.
    ///
    /// On a [`SharedTimer`], it waits until the throttle is done (its pending run run or given
    /// up) and leaves the timer serving the others; called on one of the timer's threads, it
    /// asks and returns without waiting.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Detached, Dispatch};
    /// use std::time::Duration;
    ///
    /// let job = Detached::new(Duration::from_millis(5), || println!("flushed"));
    /// job.call();
    /// job.call();
    /// job.shutdown(); // runs the pending call at its deadline, then stops
    /// assert_eq!(job.call(), Dispatch::Closed);
    /// assert!(!job.is_running());
    /// ```
    pub fn shutdown(&self) {
        self.stop(false);
    }

    /// The threshold of the throttle that decides the calls.
    ///
    /// The throttle itself is private to the handle: a deferral claimed past `call` would not
    /// be handed to the timer thread.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Detached;
    /// # use std::time::Duration;
    /// let job = Detached::new(Duration::from_millis(20), || ());
    /// assert_eq!(job.threshold(), Duration::from_millis(20));
    /// ```
    pub fn threshold(&self) -> Duration {
        self.job.throttle.threshold()
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
    /// # use atomic_throttle::Detached;
    /// # use std::time::Duration;
    /// let job = Detached::new(Duration::from_millis(20), || ());
    /// job.set_threshold(Duration::from_millis(5))?;
    /// assert_eq!(job.threshold(), Duration::from_millis(5));
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn set_threshold(&self, threshold: Duration) -> Result<(), ThresholdError> {
        self.job.throttle.set_threshold(threshold)?;
        self.job.nudge();
        Ok(())
    }

    /// The stamp of the last run, in the clock's nanoseconds; see [`Throttle::last_run`]. With
    /// [`LeadingRun::OnTimer`], the timer thread re-stamps each run when it starts the work,
    /// so this is when the last work started.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Detached;
    /// # use std::time::Duration;
    /// let job = Detached::new(Duration::from_millis(20), || ());
    /// assert_eq!(job.last_run(), None);
    /// job.call();
    /// assert!(job.last_run().is_some());
    /// ```
    pub fn last_run(&self) -> Option<u64> {
        self.job.throttle.last_run()
    }

    /// Whether a deferred run is pending on the timer thread: the next call is Coalesced.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Detached, Shutdown, Throttle};
    /// # use std::time::Duration;
    /// let job = Detached::builder(Throttle::new(Duration::from_secs(60)))
    ///     .on_shutdown(Shutdown::CancelPending)
    ///     .spawn(|| ())?;
    /// job.call();
    /// assert!(!job.is_pending());
    /// job.call();
    /// assert!(job.is_pending());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_pending(&self) -> bool {
        self.job.throttle.is_pending()
    }

    /// Whether the timer thread is running: false once it has stopped (after
    /// [`shutdown`](Detached::shutdown), or if it ended some other way), when calls are
    /// answered [`Dispatch::Closed`]. On a [`SharedTimer`]: whether the throttle is still
    /// served, until its own shutdown or the timer's.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Detached;
    /// # use std::time::Duration;
    /// let job = Detached::new(Duration::from_secs(1), || ());
    /// assert!(job.is_running());
    /// job.shutdown();
    /// assert!(!job.is_running());
    /// ```
    pub fn is_running(&self) -> bool {
        !self.job.is_closed()
    }

    /// How many panics the work (or the hook, or the clock on the timer thread) has raised so
    /// far.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Detached, LeadingRun, Throttle};
    /// # use std::time::Duration;
    /// let job = Detached::builder(Throttle::new(Duration::from_secs(1)))
    ///     .leading_run(LeadingRun::Inline)
    ///     .on_panic(|_| {})
    ///     .spawn(|| panic!("work failed"))?;
    /// job.call(); // runs inline, panics, is caught (and printed by the panic hook)
    /// assert_eq!(job.panics(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn panics(&self) -> u64 {
        self.job.panics()
    }

    /// The throttle's counters, if it was built with
    /// [`counting`](crate::ThrottleBuilder::counting).
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Detached, Throttle};
    /// # use std::time::Duration;
    /// let throttle = Throttle::builder(Duration::from_secs(1)).counting(true).build()?;
    /// let job = Detached::builder(throttle).spawn(|| ())?;
    /// job.call();
    /// assert_eq!(job.stats().unwrap().leading, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Option<Stats> {
        self.job.throttle.stats()
    }

    /// Calls coalesced or suppressed since the count was last taken; see
    /// [`Throttle::take_skipped`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Detached;
    /// # use std::time::Duration;
    /// let job = Detached::new(Duration::from_secs(1), || ());
    /// assert_eq!(job.take_skipped(), 0); // not counting
    /// ```
    pub fn take_skipped(&self) -> u64 {
        self.job.throttle.take_skipped()
    }
}

impl<F, C: Clock> Detached<F, C> {
    /// Shuts the throttle down and waits until it is: its own timer thread joined, or, on a
    /// shared timer, the job done (and, if `retire`, let go of by the timer), unless this is a
    /// thread that must not wait for that (the job's own timer thread, or one of the shared
    /// timer's threads: then it asks and returns).
    fn stop(&self, retire: bool) {
        match &self.backend {
            Backend::Own(join) => own_thread::stop(&self.job, join),
            Backend::Shared(timer) => {
                let (job, service, link) = (&self.job, timer.service(), &self.job.link);
                job.request_stop();
                let wait = !service.is_own_thread(); // its threads must not wait on themselves
                if wait {
                    link.wait_here();
                }
                service.look_again(link, retire);
                if !wait {
                    return;
                }
                loop {
                    if if retire {
                        link.is_removed()
                    } else {
                        link.is_done()
                    } {
                        return;
                    }
                    if service.is_stopped() {
                        // Its timer thread closed every entry before it ended, and no longer
                        // removes them.
                        if retire {
                            drop(service.remove_after_stop(link));
                        }
                        return;
                    }
                    // Unparked when the timer thread moves the job on; the slice only bounds
                    // a missed wake-up.
                    sync::park_timeout(MAX_SLICE);
                }
            }
        }
    }
}

impl<F, C: Clock> Drop for Detached<F, C> {
    fn drop(&mut self) {
        self.stop(true);
    }
}

impl<F, C: Clock> fmt::Debug for Detached<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Detached")
            .field("throttle", &self.job.throttle)
            .field("leading", &self.job.leading)
            .field("shutdown", &self.job.shutdown)
            .field("grace", &self.job.grace)
            .field("publishing", &self.job.publishing)
            .field("shared_timer", &matches!(self.backend, Backend::Shared(_)))
            .field("closed", &self.job.is_closed())
            .field("panics", &self.job.panics())
            .finish_non_exhaustive()
    }
}

impl<C: Clock> fmt::Debug for DetachedBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DetachedBuilder")
            .field("throttle", &self.throttle)
            .field("publishing", &self.publishing)
            .field("leading", &self.leading)
            .field("shutdown", &self.shutdown)
            .field("grace", &self.grace)
            .field("on_panic", &self.on_panic.is_some())
            .field("timer", &self.timer)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::test_support::within;
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

    /// A leading run handed to the timer, and a deferred run at its deadline, both run, and
    /// the handle drops, on its own timer thread and on a shared timer, where a second
    /// throttle's runs come while the timer waits for a deadline an hour away; and a deferral
    /// due in an hour, under `Shutdown::RunPending`, runs once the shutdown's grace is out.
    /// Here, in the first test binary to run, each step is bounded: a build that breaks one
    /// fails here within seconds (leaking what it cannot stop) rather than hang every test
    /// that drops a handle.
    #[test]
    fn runs_happen_and_handles_drop_on_either_timer() {
        let timer = core::mem::ManuallyDrop::new(SharedTimer::new());
        // On the shared timer: a deferral due in an hour, which the timer waits for.
        let later = Detached::builder(Throttle::new(Duration::from_secs(3600)))
            .leading_run(LeadingRun::Inline)
            .on_shutdown(Shutdown::CancelPending)
            .timer(&timer)
            .spawn(|| ())
            .unwrap();
        let waits = [later.call(), later.call()] == [Dispatch::Leading, Dispatch::Deferred];
        if !waits {
            core::mem::forget(later);
            panic!("no deferral for the shared timer to wait for");
        }
        for shared in [false, true] {
            let runs = Arc::new(AtomicU32::new(0));
            let builder = Detached::builder(Throttle::new(Duration::from_millis(5)));
            let builder = if shared {
                builder.timer(&timer)
            } else {
                builder
            };
            let job = builder
                .spawn({
                    let runs = runs.clone();
                    move || {
                        runs.fetch_add(1, Relaxed);
                    }
                })
                .unwrap();
            let answers = [job.call(), job.call()];
            let ran = within(|| runs.load(Relaxed) == 2);
            if answers != [Dispatch::Leading, Dispatch::Deferred] || !ran {
                let ran = runs.load(Relaxed);
                core::mem::forget(job);
                panic!("shared timer: {shared}: answers {answers:?}, {ran} of the 2 runs");
            }
            drops_within(job, &format!("shared timer: {shared}"));
        }
        drops_within(
            later,
            "a throttle with a deferral due in an hour, cancelled",
        );
        let runs = Arc::new(AtomicU32::new(0));
        let pending = Detached::builder(Throttle::new(Duration::from_secs(3600)))
            .leading_run(LeadingRun::Inline)
            .shutdown_grace(Duration::from_millis(10))
            .unwrap()
            .spawn({
                let runs = runs.clone();
                move || {
                    runs.fetch_add(1, Relaxed);
                }
            })
            .unwrap();
        let answers = [pending.call(), pending.call()];
        assert_eq!(answers, [Dispatch::Leading, Dispatch::Deferred]);
        drops_within(
            pending,
            "a throttle with a deferral due in an hour, run after the grace",
        );
        assert_eq!(runs.load(Relaxed), 2, "the pending run did not run");
    }

    /// Drops `job` on a thread of its own; fails (leaving the thread) unless that ends in 10 s.
    fn drops_within<T: Send + 'static>(job: T, what: &str) {
        let dropper = std::thread::spawn(move || drop(job));
        assert!(
            within(|| dropper.is_finished()),
            "{what}: the drop did not end"
        );
    }
}
