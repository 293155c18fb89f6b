//! A detached throttle: deferred runs happen on a timer thread, so callers never wait.

use crate::clock::{Clock, DefaultClock};
use crate::counters::Stats;
use crate::error::ThresholdError;
use crate::panics::{self, PanicHook};
use crate::state;
use crate::sync::{self, Arc, AtomicBool, AtomicU64, JoinHandle, Ordering, Stopwatch, Thread};
use crate::throttle::{Admission, Throttle};
use crate::wait::{self, Look};
use core::fmt;
use core::time::Duration;
use std::any::Any;

/// The longest the timer thread sleeps in one go, so that it notices the end of a shutdown
/// grace, which nothing wakes it for.
const MAX_SLICE: Duration = Duration::from_millis(50);

/// A throttle that owns its work and a timer thread: [`call`](Detached::call) never waits.
///
/// A Deferred answer hands the deferral to the throttle's own timer thread, which runs the work
/// at the deadline; a Coalesced answer returns at once; a leading run happens on the timer
/// thread too (the default) or on the calling thread ([`LeadingRun::Inline`]). Since no caller
/// ever owns a deferral, no caller can strand one: every Coalesced call is covered by a run,
/// even when callers panic.
///
/// **Spacing of the work itself.** The timer thread stamps each run when it starts the work,
/// and starts no work less than the threshold after the last work it started: however late it
/// wakes, consecutive starts of the work on the timer thread are at least the threshold apart
/// on the throttle's clock. With [`LeadingRun::Inline`], a leading run is stamped by its
/// caller's admission and runs on that caller's thread, so its start can trail its stamp.
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
/// Dropping the last handle on the timer thread itself (from inside the work) stops it without
/// joining.
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
pub struct Detached<F, C: Clock = DefaultClock> {
    shared: Arc<Shared<F, C>>,
    join: std::sync::Mutex<Option<JoinHandle<()>>>,
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
}

struct Shared<F, C: Clock> {
    throttle: Throttle<C>,
    work: F,
    leading: LeadingRun,
    shutdown: Shutdown,
    grace: Duration,
    on_panic: Option<PanicHook>,
    /// Leading runs answered to callers, for the timer thread to run.
    leading_requested: AtomicU64,
    /// Whether callers admit with `admit_publishing`.
    publishing: bool,
    /// Set by `shutdown` (or dropping the handle).
    stopping: AtomicBool,
    /// Set when the timer thread has ended (or could not start).
    stopped: AtomicBool,
    panics: AtomicU64,
    /// The timer thread, to wake on a hand-off.
    timer: std::sync::OnceLock<Thread>,
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
            Err(err) => panic!("Detached::new: {err}"),
        };
        match Detached::builder(throttle).spawn(work) {
            Ok(detached) => detached,
            Err(err) => panic!("Detached::new: cannot start the timer thread: {err}"),
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

    /// Starts the timer thread and returns the handle.
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
        let shared = Arc::new(Shared {
            throttle: self.throttle,
            work,
            leading: self.leading,
            shutdown: self.shutdown,
            grace: self.grace,
            on_panic: self.on_panic,
            leading_requested: AtomicU64::new(0),
            publishing: self.publishing,
            stopping: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            panics: AtomicU64::new(0),
            timer: std::sync::OnceLock::new(),
        });
        let join = sync::ThreadBuilder::new()
            .name("atomic-throttle-timer".into())
            .spawn({
                let shared = shared.clone();
                move || shared.serve()
            })?;
        let _ = shared.timer.set(join.thread().clone());
        Ok(Detached {
            shared,
            join: std::sync::Mutex::new(Some(join)),
        })
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
        let shared = &*self.shared;
        let admission = if shared.publishing {
            shared.throttle.admit_publishing()
        } else {
            shared.throttle.admit()
        };
        match admission {
            Admission::Coalesced => Dispatch::Coalesced,
            Admission::Suppressed { .. } => Dispatch::Suppressed,
            Admission::Now => match shared.leading {
                LeadingRun::Inline => {
                    shared.run_work();
                    Dispatch::Leading
                }
                LeadingRun::OnTimer => {
                    // Release: the timer thread's swap (Acquire) sees this caller's writes
                    // before the call, as the work on an inline run would.
                    shared.leading_requested.fetch_add(1, Ordering::Release);
                    if shared.closed_after_hand_off() {
                        // Take the run back, unless the timer thread's last look took it.
                        let took_back = shared
                            .leading_requested
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                            .is_ok();
                        if took_back {
                            return Dispatch::Closed;
                        }
                    }
                    shared.hand_off();
                    Dispatch::Leading
                }
            },
            Admission::Deferred(deferral) => {
                // The timer thread owns the deferral from here: it finds the claimed word in
                // the state, which only it changes while the deferral is pending (besides a
                // cancel or flush, which wake it). That holds because the throttle is private
                // to this handle: every claim goes through here and is handed over.
                let word = deferral.disown();
                if shared.closed_after_hand_off() {
                    // No timer thread to run it: give it up rather than strand it (if the
                    // timer thread's last look already ran it, this changes nothing).
                    shared.throttle.word().release(word);
                    return Dispatch::Closed;
                }
                shared.hand_off();
                Dispatch::Deferred
            }
        }
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
        self.shared.throttle.flush()
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
        self.shared.throttle.cancel()
    }

    /// Stops the timer thread and waits for it, through a shared reference (a `static`
    /// handle, or one behind an `Arc`): a pending run is run or given up as [`Shutdown`] says,
    /// within the shutdown grace. Later calls are answered [`Dispatch::Closed`]. Idempotent.
    /// Called on the timer thread itself (from inside the work), it asks the thread to stop
    /// and returns without waiting.
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
        self.shared.stop(&self.join);
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
        self.shared.throttle.threshold()
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
        self.shared.throttle.set_threshold(threshold)
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
        self.shared.throttle.last_run()
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
        self.shared.throttle.is_pending()
    }

    /// Whether the timer thread is running: false once it has stopped (after
    /// [`shutdown`](Detached::shutdown), or if it ended some other way), when calls are
    /// answered [`Dispatch::Closed`].
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
        !self.shared.is_stopped()
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
        // Relaxed: a count, ordered with nothing else.
        self.shared.panics.load(Ordering::Relaxed)
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
        self.shared.throttle.stats()
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
        self.shared.throttle.take_skipped()
    }
}

impl<F, C: Clock> Shared<F, C> {
    fn is_stopped(&self) -> bool {
        // Acquire: pairs with the Release store in `Gone::drop`; a caller that sees it also
        // sees the pending deferral given up.
        self.stopped.load(Ordering::Acquire)
    }

    /// Whether the timer thread has stopped, looked at after a hand-off. The SeqCst fence pairs
    /// with the one in `serve`: if this says no, the timer thread's last look sees the
    /// hand-off.
    fn closed_after_hand_off(&self) -> bool {
        sync::fence_seq_cst();
        self.stopped.load(Ordering::SeqCst)
    }

    /// Wakes the timer thread for a run this caller handed over.
    fn hand_off(&self) {
        if sync::is_mutant(sync::mutant!(NoUnpark)) {
            return;
        }
        if let Some(timer) = self.timer.get() {
            timer.unpark();
        }
    }

    /// Asks the timer thread to stop and, unless this is the timer thread, joins it.
    fn stop(&self, join: &std::sync::Mutex<Option<JoinHandle<()>>>) {
        // Release: every call made through the handle happened before; the timer thread's
        // Acquire load of `stopping` then sees their hand-offs.
        self.stopping.store(true, Ordering::Release);
        if let Some(timer) = self.timer.get() {
            timer.unpark();
        }
        let on_timer = self
            .timer
            .get()
            .is_some_and(|timer| timer.id() == sync::current().id());
        if on_timer {
            return; // the thread ends once the work that called this returns
        }
        let handle = join
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            // The timer thread catches every panic, so it ends normally.
            let _ = handle.join();
        }
    }
}

impl<F, C> Shared<F, C>
where
    F: Fn() + Send + Sync + 'static,
    C: Clock,
{
    /// The timer thread: runs what callers hand over until it is asked to stop. Whatever
    /// panics inside is caught and the loop goes on; if the thread ends anyway, `Gone` gives
    /// its pending deferral up and closes the handle for callers.
    fn serve(&self) {
        let _gone = Gone(self);
        let mut last_start = None;
        let mut stopping_since = None;
        loop {
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.serve_until_stopped(&mut last_start, &mut stopping_since)
            }));
            match served {
                Ok(()) => break,
                Err(payload) => self.report_panic(payload),
            }
        }
        // Closed for callers from here. SeqCst store and fence, against the SeqCst fence a
        // caller makes between handing a run over and looking at `stopped`: either this thread
        // sees the caller's hand-off below, or the caller sees `stopped` and takes its run
        // back (`Detached::call`).
        self.stopped.store(true, Ordering::SeqCst);
        sync::fence_seq_cst();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.serve_once(&mut last_start, stopping_since);
        }));
    }

    fn serve_until_stopped(
        &self,
        last_start: &mut Option<u64>,
        stopping_since: &mut Option<Stopwatch>,
    ) {
        loop {
            // Acquire, and read first: pairs with the Release store in `stop`, which comes
            // after every call; the checks below then see every hand-off.
            if self.stopping.load(Ordering::Acquire) && stopping_since.is_none() {
                *stopping_since = Some(Stopwatch::start());
            }
            if self.serve_once(last_start, *stopping_since) {
                continue;
            }
            if stopping_since.is_some() {
                return;
            }
            // A hand-off that came after the checks above unparked this thread already, so
            // this returns at once; spurious wake-ups just go round the loop.
            sync::park();
        }
    }

    /// Runs the leading runs handed over and the pending deferral, if any; says whether
    /// there was anything to run.
    fn serve_once(&self, last_start: &mut Option<u64>, stopping: Option<Stopwatch>) -> bool {
        // Acquire: pairs with the Release fetch_add in `call`. Each leading run answered is
        // run once, spaced from the work started before it.
        let leading = self.leading_requested.swap(0, Ordering::Acquire);
        for _ in 0..leading {
            self.run_leading(last_start, stopping);
        }
        // Acquire: pairs with the claiming CAS (AcqRel) of the caller who handed the deferral
        // over; while it is pending, its word is the one that CAS installed (or that word with
        // the flush bit, or re-stamped by `run_leading` on this thread).
        let word = self.throttle.load(Ordering::Acquire);
        if state::is_pending(word) {
            self.serve_deferral(word & !state::FLUSH, stopping, last_start);
            return true;
        }
        leading > 0
    }

    /// Runs one leading run: no sooner than a threshold after the last work this thread
    /// started (unless a shutdown's grace has run out), re-stamped when the work starts.
    fn run_leading(&self, last_start: &mut Option<u64>, stopping: Option<Stopwatch>) {
        if let Some(last) = *last_start {
            let clock = self.throttle.clock();
            wait::block_on_deadline(clock, None, Some(MAX_SLICE), || {
                let due = last.saturating_add(self.throttle.core().threshold_nanos());
                let graceless = stopping.is_some_and(|since| since.has_elapsed(self.grace));
                if graceless || clock.now_nanos() >= due {
                    Look::Done(())
                } else {
                    Look::Until(due)
                }
            });
        }
        *last_start = Some(self.restamp());
        self.run_work();
    }

    /// Moves the window's start to now, the moment the timer thread starts a leading run's
    /// work, so that the next run is due a threshold after the work started, not after the
    /// caller's admission. Stamps only move forward. Returns the reading, which the next run
    /// on this thread is spaced from.
    fn restamp(&self) -> u64 {
        let now = self.throttle.clock().now_nanos();
        // Acquire: as in `serve_until_stopped`.
        let mut word = self.throttle.load(Ordering::Acquire);
        loop {
            let at = state::stamp(state::stamped(word, now));
            let next = (word & !state::STAMP_MASK) | state::STAMPED | at;
            if next == word {
                return now;
            }
            match self.throttle.word().install(word, next) {
                Ok(()) => return now,
                Err(seen) => word = seen,
            }
        }
    }

    /// Waits for the deadline of the deferral that installed `word`, then runs it; or gives it
    /// up, if a shutdown under [`Shutdown::CancelPending`] comes first, or if the clock panics
    /// (reported like a panic in the work), so that the deferral is never stranded.
    fn serve_deferral(&self, word: u64, stopping: Option<Stopwatch>, last_start: &mut Option<u64>) {
        let stamped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.stamp_unless_cancelled(word, stopping)
        }));
        match stamped {
            Ok(Some(Ok(stamp))) => {
                *last_start = Some(stamp);
                self.run_work();
            }
            // Revoked (cancelled or taken over): nothing to run or release.
            Ok(None) => {}
            Ok(Some(Err(()))) => self.throttle.word().release(word),
            Err(payload) => {
                self.throttle.word().release(word);
                self.report_panic(payload);
            }
        }
    }

    /// Waits for `word`'s deadline and stamps its run (`Some(Ok(stamp))`); gives it up under
    /// a shutdown with [`Shutdown::CancelPending`] (`Some(Err(()))`); or finds it revoked
    /// (`None`). Under [`Shutdown::RunPending`], once the shutdown grace has passed, the run
    /// is flushed: it runs at once. The wait ends before the stamp, so that the stamp is the
    /// last thing before the work starts.
    fn stamp_unless_cancelled(
        &self,
        word: u64,
        stopping: Option<Stopwatch>,
    ) -> Option<Result<u64, ()>> {
        let slot = self.throttle.word().owner;
        let mut stopping = stopping;
        loop {
            let due = wait::block_on_deadline(self.throttle.clock(), slot, Some(MAX_SLICE), || {
                if stopping.is_none() && self.stopping.load(Ordering::Acquire) {
                    // Acquire: as in `serve_until_stopped`.
                    stopping = Some(Stopwatch::start());
                }
                if let Some(since) = stopping {
                    match self.shutdown {
                        Shutdown::CancelPending => return Look::Done(Some(Err(()))),
                        Shutdown::RunPending if since.has_elapsed(self.grace) => {
                            self.throttle.flush();
                        }
                        Shutdown::RunPending => {}
                    }
                }
                match self.throttle.word().look(word) {
                    Look::Done(Ok(())) => Look::Done(Some(Ok(()))),
                    Look::Done(Err(_)) => Look::Done(None),
                    Look::Until(deadline) => match stopping {
                        // Look again when the grace runs out, whatever the clock does.
                        Some(since) => {
                            let left = since.left_of(self.grace).as_nanos() as u64;
                            let now = self.throttle.clock().now_nanos();
                            Look::Until(deadline.min(now.saturating_add(left)))
                        }
                        None => Look::Until(deadline),
                    },
                }
            });
            match due {
                None => return None,
                Some(Err(())) => return Some(Err(())),
                Some(Ok(())) => {}
            }
            match self.throttle.word().try_stamp(word) {
                Look::Done(Ok(stamp)) => return Some(Ok(stamp)),
                Look::Done(Err(_)) => return None,
                // The clock stepped back since it was due: wait again.
                Look::Until(_) => {}
            }
        }
    }

    /// Runs the work, catching and reporting a panic.
    fn run_work(&self) {
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&self.work)) {
            self.report_panic(payload);
        }
    }

    /// Counts a caught panic, hands it to the hook, and disposes of its payload.
    fn report_panic(&self, payload: Box<dyn Any + Send>) {
        // Relaxed: a count, ordered with nothing else.
        self.panics.fetch_add(1, Ordering::Relaxed);
        panics::report(self.on_panic.as_deref(), payload);
    }
}

/// Marks the timer thread as gone when it ends, however it ends, and gives up the deferral it
/// would have run, so that calls are not coalesced into a run that will not come.
struct Gone<'a, F: Fn() + Send + Sync + 'static, C: Clock>(&'a Shared<F, C>);

impl<F: Fn() + Send + Sync + 'static, C: Clock> Drop for Gone<'_, F, C> {
    fn drop(&mut self) {
        let shared = self.0;
        // Release: pairs with the Acquire load in `is_stopped`.
        shared.stopped.store(true, Ordering::Release);
        // A claim handed over after the thread's last look, or one it had when it ended:
        // nobody will run it now.
        let word = shared.throttle.load(Ordering::Acquire);
        if state::is_pending(word) {
            shared.throttle.word().release(word & !state::FLUSH);
        }
    }
}

impl<F, C: Clock> Drop for Detached<F, C> {
    fn drop(&mut self) {
        self.shared.stop(&self.join);
    }
}

impl<F, C: Clock> fmt::Debug for Detached<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Detached")
            .field("throttle", &self.shared.throttle)
            .field("leading", &self.shared.leading)
            .field("shutdown", &self.shared.shutdown)
            .field("grace", &self.shared.grace)
            .field("publishing", &self.shared.publishing)
            .field("stopped", &self.shared.stopped.load(Ordering::Relaxed))
            .field("panics", &self.shared.panics.load(Ordering::Relaxed))
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
            .finish()
    }
}
