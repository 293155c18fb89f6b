//! A shared timer service: one timer thread and a small fixed pool of workers that run the
//! deferred work of any number of detached throttles at their deadlines.

mod intake;
mod pool;
mod service;

pub(crate) use intake::Link;
pub(crate) use service::{Service, MAX_SLICE};

use crate::clock::{nanos_saturating, Clock, DefaultClock};
use crate::sync::{self, JoinHandle};
use core::any::Any;
use core::fmt;
use core::time::Duration;
use std::sync::Arc;

/// One timer thread and a few workers that run the deferred work of many
/// [`Detached`](crate::Detached) throttles, instead of a timer thread for each.
///
/// A detached throttle registers with it through
/// [`DetachedBuilder::timer`](crate::DetachedBuilder::timer) and keeps every promise it makes
/// on its own thread: calls never wait, panics in the work are caught and reported, every
/// Coalesced call is covered, work starts of one throttle are spaced by its threshold and never
/// overlap, and its shutdown policy and grace hold, per throttle and when the whole service
/// shuts down.
///
/// **How.** Each registered throttle has one fixed entry. A call that hands a run over pushes
/// the entry onto a lock-free stack (at most once: a "queued" flag) and wakes the timer thread,
/// which files it in a heap by its deadline. The timer thread never runs work: it hands each
/// entry to a worker a short [lead](SharedTimerBuilder::lead) before its deadline. The worker
/// waits out the rest on the throttle's clock, stamps the run and starts the work at once (so
/// the work's starts are spaced by the threshold as on a throttle's own timer thread), then
/// hands the entry back. Nothing allocates per hand-off once the heap and queues have grown to
/// the number of throttles.
///
/// **Slow work.** A work that takes long (or hangs) holds up one worker, and nothing else: the
/// timer thread and the other workers go on. A run is late beyond the usual wake-up latency
/// only while *every* worker is busy, by at most the time until one is free. With `n` workers,
/// `n - 1` works hung at once leave every other throttle on time. Choose the number of workers
/// for the work you expect to be slow; a throttle whose work may hang for good is best given
/// its own timer thread (the default when no shared timer is set).
///
/// **Capacity.** A worker holds one run at a time, from the moment it takes it (at most a lead
/// before its deadline; on the [`DefaultClock`] it parks, then busy-waits the clock's last
/// [`spin`](DefaultClock::spin)) until its work returns. Runs that find no worker free wait
/// for one in the order they came due. A run starts late only if, at its deadline, every worker
/// still holds another run: its work running, or waiting for a deadline of its own. With quick
/// work, `n` workers keep every run on time as long as no more than `n` deadlines fall within
/// any one lead.
///
/// **Clocks.** The throttles registered with a timer must read the same time as its clock:
/// clones of one [`ManualClock`](crate::ManualClock), or the [`DefaultClock`], which every
/// throttle shares. Each run is still stamped on its own throttle's clock, so spacing never
/// depends on the timer's.
///
/// **Shutdown.** [`shutdown`](SharedTimer::shutdown) shuts every registered throttle down by
/// its own [`Shutdown`](crate::Shutdown) policy and grace, then stops the threads; calls are
/// answered [`Dispatch::Closed`](crate::Dispatch::Closed) from then on, and throttles
/// registered later are closed from the start. Dropping the last handle (and the last
/// throttle registered with it) does the same.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Detached, Dispatch, SharedTimer, Throttle};
/// use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// let timer = SharedTimer::new();
/// let runs = Arc::new(AtomicU32::new(0));
/// let jobs: Vec<_> = (0..100)
///     .map(|_| {
///         let runs = runs.clone();
///         Detached::builder(Throttle::new(Duration::from_millis(5)))
///             .timer(&timer)
///             .spawn(move || {
///                 runs.fetch_add(1, Relaxed);
///             })
///     })
///     .collect::<Result<_, _>>()?;
/// for job in &jobs {
///     assert_eq!(job.call(), Dispatch::Leading);
///     assert_eq!(job.call(), Dispatch::Deferred);
/// }
/// timer.shutdown(); // runs every pending call at its deadline, then stops the threads
/// assert_eq!(runs.load(Relaxed), 200);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct SharedTimer<C: Clock = DefaultClock> {
    owner: Arc<Owner<C>>,
}

/// What the handles share: the service, and its threads to join when the last handle goes.
struct Owner<C: Clock> {
    service: Arc<Service<C>>,
    joins: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// Configures a [`SharedTimer`]: its clock, workers and lead.
///
/// # Examples
///
/// ```
/// use atomic_throttle::SharedTimer;
/// use std::time::Duration;
///
/// let timer = SharedTimer::builder()
///     .workers(4)
///     .lead(Duration::from_micros(300))
///     .spawn()?;
/// assert_eq!(timer.workers(), 4);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `spawn`"]
pub struct SharedTimerBuilder<C: Clock = DefaultClock> {
    clock: C,
    workers: usize,
    lead: Duration,
}

/// What the shared timer needs from a throttle registered with it. Implemented by a detached
/// throttle's job.
pub(crate) trait Entry: Send + Sync {
    /// The entry's link in the timer.
    fn link(&self) -> &Link;
    /// How long until the entry next has a run for a worker, in nanoseconds on its throttle's
    /// clock: `Some(0)` now, `Some(u64::MAX)` never unless something changes, `None` when it
    /// has nothing to run.
    fn due_in(&self) -> Option<u64>;
    /// Runs what is due, on a worker, waiting at most `patience` nanoseconds for its time;
    /// what is due later is left for the timer thread to hand over again.
    fn serve(&self, patience: u64);
    /// Whether the entry is shutting down (its own shutdown, or the service's).
    fn is_stopping(&self) -> bool;
    /// Whether calls are answered [`Dispatch::Closed`](crate::Dispatch::Closed).
    fn is_closed(&self) -> bool;
    /// Closes the entry for callers. Sequentially consistent, so that what the timer looks at
    /// next sees every hand-off of a caller who did not see the close.
    fn close(&self);
    /// Gives the pending deferral up, if any.
    fn give_up(&self);
    /// The timer thread is gone: closes the entry and gives its pending deferral up.
    fn abandon(&self) {
        self.close();
        self.give_up();
    }
    /// Reports a panic caught around the entry's code.
    fn report(&self, payload: Box<dyn Any + Send>);
}

impl SharedTimer<DefaultClock> {
    /// A shared timer on the [`DefaultClock`] with [`SharedTimerBuilder::DEFAULT_WORKERS`]
    /// workers and a [`SharedTimerBuilder::DEFAULT_LEAD`].
    ///
    /// # Panics
    ///
    /// If the operating system refuses to start its threads; use
    /// [`builder`](SharedTimer::builder) to handle that as an error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::SharedTimer;
    /// let timer = SharedTimer::new();
    /// assert!(timer.is_running());
    /// ```
    pub fn new() -> Self {
        match Self::builder().spawn() {
            Ok(timer) => timer,
            Err(err) => {
                panic!("atomic-throttle: SharedTimer::new: cannot start the timer's threads: {err}")
            }
        }
    }

    /// Configures a shared timer.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::SharedTimer;
    /// let timer = SharedTimer::builder().workers(1).spawn()?;
    /// assert_eq!(timer.workers(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn builder() -> SharedTimerBuilder<DefaultClock> {
        SharedTimerBuilder {
            clock: DefaultClock::new(),
            workers: SharedTimerBuilder::DEFAULT_WORKERS,
            lead: SharedTimerBuilder::DEFAULT_LEAD,
        }
    }
}

impl Default for SharedTimer<DefaultClock> {
    /// [`SharedTimer::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl SharedTimerBuilder<DefaultClock> {
    /// The number of workers unless set: two.
    pub const DEFAULT_WORKERS: usize = 2;

    /// The lead unless set: 200 us.
    pub const DEFAULT_LEAD: Duration = Duration::from_micros(200);
}

impl<C: Clock> SharedTimerBuilder<C> {
    /// The clock the timer thread waits on; [`DefaultClock`] unless set. The throttles
    /// registered with the timer must read the same time (clones of this clock).
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{ManualClock, SharedTimer};
    ///
    /// let clock = ManualClock::new();
    /// let timer = SharedTimer::builder().clock(clock.clone()).spawn()?;
    /// # drop(timer);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn clock<D: Clock>(self, clock: D) -> SharedTimerBuilder<D> {
        SharedTimerBuilder {
            clock,
            workers: self.workers,
            lead: self.lead,
        }
    }

    /// How many workers start the work; [`DEFAULT_WORKERS`](SharedTimerBuilder::DEFAULT_WORKERS)
    /// unless set.
    /// While fewer than this many works are slow or hung at once, they delay no other
    /// throttle's runs (see [`SharedTimer`], "Slow work").
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::SharedTimer;
    /// assert!(SharedTimer::builder().workers(0).spawn().is_err());
    /// ```
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// How long before a run's deadline the timer thread hands it to a worker, which waits out
    /// the rest itself; [`DEFAULT_LEAD`](SharedTimerBuilder::DEFAULT_LEAD) unless set. It hides
    /// the time the timer thread and then a parked worker take to wake up: a lead shorter than
    /// that makes runs late by the difference, and a longer one holds a worker for longer (on
    /// the [`DefaultClock`], parked, then busy-waiting its last [`spin`](DefaultClock::spin)),
    /// which lowers the rate of runs the workers can start on time (see [`SharedTimer`],
    /// "Capacity").
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::SharedTimer;
    /// # use std::time::Duration;
    /// let timer = SharedTimer::builder().lead(Duration::ZERO).spawn()?;
    /// assert_eq!(timer.lead(), Duration::ZERO);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn lead(mut self, lead: Duration) -> Self {
        self.lead = lead;
        self
    }

    /// Starts the timer thread and the workers.
    ///
    /// # Errors
    ///
    /// [`std::io::ErrorKind::InvalidInput`] for zero workers; the operating system's error if a
    /// thread cannot be started.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::SharedTimer;
    /// let timer = SharedTimer::builder().spawn()?;
    /// assert!(timer.is_running());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn(self) -> std::io::Result<SharedTimer<C>>
    where
        C: Send + Sync + 'static,
    {
        if self.workers == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a shared timer needs at least one worker",
            ));
        }
        let service = Arc::new(Service::new(
            self.clock,
            nanos_saturating(self.lead),
            self.workers,
        ));
        let mut joins = Vec::with_capacity(1 + self.workers);
        let spawned = spawn_threads(&service, self.workers, &mut joins);
        service.set_threads(joins.iter().map(|join| join.thread().clone()).collect());
        // On an error, dropping the owner stops and joins what did start.
        let owner = Arc::new(Owner {
            service,
            joins: std::sync::Mutex::new(joins),
        });
        spawned.map(|()| SharedTimer { owner })
    }
}

fn spawn_threads<C: Clock + Send + Sync + 'static>(
    service: &Arc<Service<C>>,
    workers: usize,
    joins: &mut Vec<JoinHandle<()>>,
) -> std::io::Result<()> {
    joins.push(
        sync::ThreadBuilder::new()
            .name("atomic-throttle-shared-timer".into())
            .spawn({
                let service = service.clone();
                move || service.run_timer()
            })?,
    );
    for _ in 0..workers {
        joins.push(
            sync::ThreadBuilder::new()
                .name("atomic-throttle-worker".into())
                .spawn({
                    let service = service.clone();
                    move || service.run_worker()
                })?,
        );
    }
    Ok(())
}

impl<C: Clock> SharedTimer<C> {
    /// Shuts every registered throttle down by its own [`Shutdown`](crate::Shutdown) policy
    /// (its pending run at its deadline, or given up, within its shutdown grace of real time),
    /// then stops the timer thread and the workers and waits for them. From then on, calls
    /// that would start a new run (the works' own calls included) are answered
    /// [`Dispatch::Closed`](crate::Dispatch::Closed). Idempotent.
    ///
    /// Besides the graces, it waits for the work that is running, and, while every worker is
    /// busy, for a worker. Called on one of the timer's own threads (from inside a work), it
    /// asks the service to stop and returns without waiting.
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
    ///     .spawn(|| println!("ran"))?;
    /// job.call();
    /// timer.shutdown();
    /// assert!(!timer.is_running());
    /// assert_eq!(job.call(), Dispatch::Closed);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn shutdown(&self) {
        self.owner.stop();
    }

    /// Starts what [`shutdown`](SharedTimer::shutdown) does and returns at once, without
    /// waiting for the throttles or the threads: for a caller that must not block (an async
    /// task, a signal handler's thread). [`is_running`](SharedTimer::is_running) turns false
    /// once every throttle is closed; the threads end on their own then.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::SharedTimer;
    ///
    /// let timer = SharedTimer::new();
    /// timer.request_shutdown();
    /// while timer.is_running() {
    ///     std::thread::yield_now();
    /// }
    /// ```
    pub fn request_shutdown(&self) {
        self.owner.service.request_stop();
    }

    /// Whether the timer's threads are running: false once it has been shut down (or its timer
    /// thread ended some other way).
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::SharedTimer;
    /// let timer = SharedTimer::new();
    /// assert!(timer.is_running());
    /// timer.shutdown();
    /// assert!(!timer.is_running());
    /// ```
    pub fn is_running(&self) -> bool {
        !self.owner.service.is_stopped()
    }

    /// How many throttles are registered: those whose handles have not been dropped yet.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Detached, SharedTimer, Throttle};
    /// # use std::time::Duration;
    /// let timer = SharedTimer::new();
    /// let job = Detached::builder(Throttle::new(Duration::from_millis(5)))
    ///     .timer(&timer)
    ///     .spawn(|| ())?;
    /// assert_eq!(timer.throttles(), 1);
    /// drop(job);
    /// assert_eq!(timer.throttles(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn throttles(&self) -> usize {
        self.owner.service.registered()
    }

    /// The number of workers.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::SharedTimer;
    /// assert_eq!(SharedTimer::new().workers(), 2);
    /// ```
    pub fn workers(&self) -> usize {
        self.owner.service.workers
    }

    /// How long before a deadline the timer thread hands a run to a worker.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{SharedTimer, SharedTimerBuilder};
    /// assert_eq!(SharedTimer::new().lead(), SharedTimerBuilder::DEFAULT_LEAD);
    /// ```
    pub fn lead(&self) -> Duration {
        Duration::from_nanos(self.owner.service.lead)
    }

    /// The clock the timer thread waits on.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Clock, ManualClock, SharedTimer};
    ///
    /// let timer = SharedTimer::builder().clock(ManualClock::new()).spawn()?;
    /// assert_eq!(timer.clock().now_nanos(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn clock(&self) -> &C {
        &self.owner.service.clock
    }

    /// The service, for the throttles that register with it.
    pub(crate) fn service(&self) -> &Arc<Service<C>> {
        &self.owner.service
    }
}

impl<C: Clock> Owner<C> {
    /// Asks the service to stop and, unless this is one of its threads, joins them.
    fn stop(&self) {
        self.service.request_stop();
        if self.service.is_own_thread() {
            return; // they end once the work that called this returns
        }
        let joins = core::mem::take(
            &mut *self
                .joins
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for join in joins {
            // The threads catch every panic, so they end normally.
            let _ = join.join();
        }
    }
}

impl<C: Clock> Drop for Owner<C> {
    fn drop(&mut self) {
        self.stop();
    }
}

impl<C: Clock> Clone for SharedTimer<C> {
    /// Another handle to the same timer.
    fn clone(&self) -> Self {
        Self {
            owner: self.owner.clone(),
        }
    }
}

impl<C: Clock> fmt::Debug for SharedTimer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTimer")
            .field("workers", &self.workers())
            .field("lead", &self.lead())
            .field("throttles", &self.throttles())
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A shared timer starts its timer thread and every worker, and knows them (the timer
    /// thread is the one that hand-offs wake). Checked here, in the first test binary to run:
    /// a timer without its threads hangs every test that waits for a run on it. (The timer is
    /// leaked, not shut down: the integration tests check that, and a broken build that
    /// cannot stop it must not hang this binary.)
    #[test]
    fn a_shared_timer_starts_and_knows_its_timer_thread_and_workers() {
        let timer =
            core::mem::ManuallyDrop::new(SharedTimer::builder().workers(3).spawn().unwrap());
        assert_eq!(
            timer.service().thread_names(),
            [
                "atomic-throttle-shared-timer",
                "atomic-throttle-worker",
                "atomic-throttle-worker",
                "atomic-throttle-worker"
            ]
        );
        assert!(timer.is_running());
    }

    /// A shared timer with throttles registered, and deferrals pending on them, shuts down:
    /// each throttle by its own policy (one gives its deferral up, the other runs its own at
    /// its deadline, 20 ms on), then the threads, within 10 s. (Bounded, and leaked if it
    /// fails, so that a build that cannot stop a timer fails here and hangs nothing.)
    #[test]
    fn a_shared_timer_shuts_down_with_throttles_registered() {
        use crate::{Detached, Dispatch, LeadingRun, Shutdown, Throttle};
        use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
        let timer = SharedTimer::new();
        let cancelled = Detached::builder(Throttle::new(Duration::from_secs(3600)))
            .leading_run(LeadingRun::Inline)
            .on_shutdown(Shutdown::CancelPending)
            .timer(&timer)
            .spawn(|| ())
            .unwrap();
        let runs = Arc::new(AtomicU32::new(0));
        let run = Detached::builder(Throttle::new(Duration::from_millis(20)))
            .leading_run(LeadingRun::Inline)
            .timer(&timer)
            .spawn({
                let runs = runs.clone();
                move || {
                    runs.fetch_add(1, Relaxed);
                }
            })
            .unwrap();
        let answers = [cancelled.call(), cancelled.call(), run.call(), run.call()];
        let expected = [Dispatch::Leading, Dispatch::Deferred];
        if answers != [expected, expected].concat()[..] {
            core::mem::forget((cancelled, run, timer));
            panic!("answers: {answers:?}");
        }
        let stopper = std::thread::spawn(move || {
            timer.shutdown();
            let after = [cancelled.call(), run.call()];
            (
                timer.is_running(),
                after,
                cancelled.is_pending(),
                run.is_pending(),
            )
        });
        assert!(
            crate::test_support::within(|| stopper.is_finished()),
            "the shutdown did not end"
        );
        let closed = [Dispatch::Closed, Dispatch::Closed];
        assert_eq!(stopper.join().unwrap(), (false, closed, false, false));
        assert_eq!(runs.load(Relaxed), 2, "the pending run did not run");
    }
}
