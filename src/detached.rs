//! A detached throttle: deferred runs happen on a timer thread, so callers never wait.

use crate::clock::{Clock, DefaultClock};
use crate::state;
use crate::sync::{self, Arc, AtomicBool, AtomicU64, JoinHandle, Ordering, Thread, ThreadBuilder};
use crate::throttle::{Admission, Throttle};
use core::fmt;
use core::time::Duration;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The longest the timer thread sleeps in one go while it waits for a deadline, so that it
/// notices a shutdown that cancels the pending run within this long.
const MAX_SLICE: Duration = Duration::from_millis(50);

/// A panic hook: receives the payload of each panic the work raises.
type PanicHook = Box<dyn Fn(&(dyn Any + Send)) + Send + Sync>;

/// A throttle that owns its work and a timer thread: [`call`](Detached::call) never waits.
///
/// A Deferred answer hands the deferral to the throttle's own timer thread, which runs the work
/// at the deadline; a Coalesced answer returns at once; a Now answer runs the work on the timer
/// thread too (the default) or on the calling thread ([`LeadingRun::Inline`]). Since no caller
/// ever owns a deferral, no caller can strand one: every Coalesced call is covered by a run
/// (SPEC G3), even when callers panic. The work runs on the timer thread one run at a time;
/// with [`LeadingRun::Inline`], a leading run on a caller's thread can overlap a deferred run
/// that is still going.
///
/// A panic in the work (or in the clock, on the timer thread) is caught: it is counted
/// ([`panics`](Detached::panics)), handed to the hook set with [`DetachedBuilder::on_panic`],
/// and printed by the process's panic hook as usual; the throttle keeps working. A clock that
/// panics while the timer thread waits for a deadline makes it give that deferral up.
///
/// Memory ordering: by default a Coalesced caller's earlier writes are not guaranteed to be
/// visible to the run that covers it (the crate docs' "Memory ordering");
/// [`DetachedBuilder::publishing`] adds that edge at the price of a shared write per call.
///
/// Dropping the handle stops the timer thread and joins it. A pending deferred run is run at
/// its deadline first, or given up, as [`Shutdown`] says.
///
/// Each `Detached` has its own timer thread, parked while idle: a slow run of one throttle's
/// work never delays another throttle's deadline, and dropping the handle joins exactly the
/// thread it started.
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
/// assert_eq!(flush.call(), Dispatch::Now); // runs on the timer thread, at once
/// assert_eq!(flush.call(), Dispatch::Deferred); // runs there about 5 ms later
/// assert_eq!(flush.call(), Dispatch::Coalesced);
/// drop(flush); // runs the pending call at its deadline, then joins the thread
/// assert_eq!(runs.load(Relaxed), 2);
/// ```
pub struct Detached<F, C: Clock = DefaultClock> {
    shared: Arc<Shared<F, C>>,
    timer: Thread,
    join: Option<JoinHandle<()>>,
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
/// assert_eq!(job.call(), Dispatch::Now);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dispatch {
    /// No run in the last threshold: the work runs now, on the thread [`LeadingRun`] names.
    Now,
    /// The timer thread will run the work when the window ends.
    Deferred,
    /// A deferred run is pending on the timer thread; it covers this call.
    Coalesced,
}

/// Which thread runs the work of a leading (Now) run.
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
    /// The timer thread runs it: callers never run the work. The default.
    #[default]
    OnTimer,
    /// The calling thread runs it before `call` returns: no hand-off, but the caller pays for
    /// the work (and a panic in it is caught on the caller's thread).
    Inline,
}

/// What dropping a [`Detached`] does with a deferred run still pending.
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
    /// Wait for its deadline and run it, then stop. The default: no call is lost. (A deadline
    /// past the end of the clock's range never comes; such a deferral is given up instead, so
    /// that the drop returns.)
    #[default]
    RunPending,
    /// Give it up and stop at once (within about 50 ms, the timer thread's longest sleep).
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
///     .on_panic(|payload| eprintln!("work failed: {:?}", payload.downcast_ref::<&str>()))
///     .spawn(|| ())?;
/// # drop(job);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct DetachedBuilder<C: Clock = DefaultClock> {
    throttle: Throttle<C>,
    publishing: bool,
    leading: LeadingRun,
    shutdown: Shutdown,
    on_panic: Option<PanicHook>,
}

struct Shared<F, C: Clock> {
    throttle: Throttle<C>,
    work: F,
    leading: LeadingRun,
    shutdown: Shutdown,
    on_panic: Option<PanicHook>,
    /// Leading runs stamped by callers, for the timer thread to run.
    leading_requested: AtomicU64,
    /// Whether callers admit with `admit_publishing`.
    publishing: bool,
    /// Set when the handle is dropped.
    stopping: AtomicBool,
    panics: AtomicU64,
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
        match Detached::builder(Throttle::new(threshold)).spawn(work) {
            Ok(detached) => detached,
            Err(err) => panic!("Detached::new: cannot start the timer thread: {err}"),
        }
    }
}

impl Detached<()> {
    /// Configures a detached throttle around `throttle` (built with [`Throttle::try_new`] or
    /// [`Throttle::with_clock`], so a bad threshold is an error there).
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
            on_panic: None,
        }
    }
}

impl<C: Clock> DetachedBuilder<C> {
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

    /// What dropping the handle does with a pending deferred run; [`Shutdown::RunPending`] by
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
    /// assert_eq!(job.call(), Dispatch::Now);
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
            on_panic: self.on_panic,
            leading_requested: AtomicU64::new(0),
            publishing: self.publishing,
            stopping: AtomicBool::new(false),
            panics: AtomicU64::new(0),
        });
        let join = ThreadBuilder::new()
            .name("atomic-throttle-timer".into())
            .spawn({
                let shared = shared.clone();
                move || shared.serve()
            })?;
        Ok(Detached {
            shared,
            timer: join.thread().clone(),
            join: Some(join),
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
    ///     .on_shutdown(Shutdown::CancelPending) // don't wait a minute when dropped
    ///     .spawn(|| ())?;
    /// assert_eq!(job.call(), Dispatch::Now);
    /// assert_eq!(job.call(), Dispatch::Deferred);
    /// assert_eq!(job.call(), Dispatch::Coalesced);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn call(&self) -> Dispatch {
        let admission = if self.shared.publishing {
            self.shared.throttle.admit_publishing()
        } else {
            self.shared.throttle.admit()
        };
        match admission {
            Admission::Coalesced => Dispatch::Coalesced,
            Admission::Now => {
                match self.shared.leading {
                    LeadingRun::Inline => self.shared.run_work(),
                    LeadingRun::OnTimer => {
                        // Release: the timer thread's swap (Acquire) sees this caller's writes
                        // before the call, as the work on an inline run would.
                        self.shared
                            .leading_requested
                            .fetch_add(1, Ordering::Release);
                        self.hand_off();
                    }
                }
                Dispatch::Now
            }
            Admission::Deferred(deferral) => {
                // The timer thread owns the deferral from here: it finds the claimed word in
                // the state, which only it changes while the deferral is pending. That holds
                // because the throttle is private to this handle: every claim goes through
                // here and is handed over.
                let _claimed = deferral.disown();
                self.hand_off();
                Dispatch::Deferred
            }
        }
    }

    /// Wakes the timer thread for a run this caller handed over.
    fn hand_off(&self) {
        #[cfg(loom)]
        if sync::mutant() == Some(sync::Mutant::NoUnpark) {
            return;
        }
        self.timer.unpark();
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

    /// How many panics the work (or the clock, on the timer thread) has raised so far.
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
    /// # let silent = std::panic::take_hook();
    /// # std::panic::set_hook(Box::new(|_| {}));
    /// job.call(); // runs inline, panics, is caught
    /// # std::panic::set_hook(silent);
    /// assert_eq!(job.panics(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn panics(&self) -> u64 {
        // Relaxed: a count, ordered with nothing else.
        self.shared.panics.load(Ordering::Relaxed)
    }
}

impl<F, C> Shared<F, C>
where
    F: Fn() + Send + Sync + 'static,
    C: Clock,
{
    /// The timer thread: runs what callers hand over until the handle is dropped.
    fn serve(&self) {
        loop {
            // Acquire, and read first: pairs with the Release store in `Detached::drop`, which
            // comes after every call; the checks below then see every hand-off.
            let stopping = self.stopping.load(Ordering::Acquire);
            // Acquire: pairs with the Release fetch_add in `call`. Each leading run stamped is
            // run once, back to back if the work is slower than the threshold.
            for _ in 0..self.leading_requested.swap(0, Ordering::Acquire) {
                self.run_work();
            }
            // Acquire: pairs with the claiming CAS (AcqRel) of the caller who handed the
            // deferral over; while it is pending, its word is the one that CAS installed.
            let word = self.throttle.load(Ordering::Acquire);
            if state::is_pending(word) {
                self.serve_deferral(word);
                continue;
            }
            if stopping {
                return;
            }
            // A hand-off that came after the checks above unparked this thread already, so
            // this returns at once; spurious wake-ups just go round the loop.
            sync::park();
        }
    }

    /// Waits for the deadline of the deferral that installed `word`, then runs it; or gives it
    /// up, if the handle is dropped under [`Shutdown::CancelPending`], or if the clock panics
    /// (reported like a panic in the work), so that the deferral is never stranded.
    fn serve_deferral(&self, word: u64) {
        match catch_unwind(AssertUnwindSafe(|| self.stamp_unless_cancelled(word))) {
            Ok(true) => self.run_work(),
            Ok(false) => self.throttle.release(word),
            Err(payload) => {
                self.throttle.release(word);
                self.report_panic(payload);
            }
        }
    }

    /// Waits for `word`'s deadline and stamps its run (true), unless the handle is dropped
    /// first under [`Shutdown::CancelPending`] (false). A deadline past the end of the clock's
    /// range never comes: on shutdown such a deferral is given up under either policy, so that
    /// dropping the handle cannot hang.
    fn stamp_unless_cancelled(&self, word: u64) -> bool {
        loop {
            if self.throttle.try_stamp(word) {
                return true;
            }
            // Acquire: as in `serve`.
            if self.stopping.load(Ordering::Acquire)
                && (self.shutdown == Shutdown::CancelPending
                    || self.throttle.deadline_nanos(word) == u64::MAX)
            {
                return false;
            }
            let wait = self.throttle.next_wait(word).min(MAX_SLICE);
            self.throttle.clock().sleep(wait);
        }
    }

    /// Runs the work, catching and reporting a panic.
    fn run_work(&self) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(&self.work)) {
            self.report_panic(payload);
        }
    }

    /// Counts a caught panic and hands it to the hook.
    fn report_panic(&self, payload: Box<dyn Any + Send>) {
        // Relaxed: a count, ordered with nothing else.
        self.panics.fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = &self.on_panic {
            let _ = catch_unwind(AssertUnwindSafe(|| hook(&*payload)));
        }
    }
}

impl<F, C: Clock> Drop for Detached<F, C> {
    fn drop(&mut self) {
        // Release: every call made through this handle happened before the drop; the timer
        // thread's Acquire load of `stopping` then sees their hand-offs.
        self.shared.stopping.store(true, Ordering::Release);
        self.timer.unpark();
        if let Some(join) = self.join.take() {
            // The timer thread catches the work's panics, so it ends normally.
            let _ = join.join();
        }
    }
}

impl<F, C: Clock> fmt::Debug for Detached<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Detached")
            .field("throttle", &self.shared.throttle)
            .field("leading", &self.shared.leading)
            .field("shutdown", &self.shared.shutdown)
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
            .field("on_panic", &self.on_panic.is_some())
            .finish()
    }
}
