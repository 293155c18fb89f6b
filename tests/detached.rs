//! The detached throttle: callers never wait, deferred runs happen on its timer thread, the
//! work's starts there are spaced by the threshold, and nothing the work, a hook, a payload or
//! the clock does can stop the timer thread or strand a run.

#[path = "support/expected_panics.rs"]
mod expected_panics;
#[path = "support/readings.rs"]
mod readings;
#[path = "support/stamp_clock.rs"]
mod stamp_clock;
#[path = "support/starts.rs"]
mod starts;
#[path = "support/wait_for.rs"]
mod wait_for;

use atomic_throttle::{
    Clock, DefaultClock, Detached, Dispatch, LeadingRun, ManualClock, SharedTimer, Shutdown,
    Throttle, Wait, Waiter,
};
use expected_panics::{expected, explosive, Expected};
use readings::Readings;
use stamp_clock::{last_reading, StampClock};
use starts::Starts;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier, Mutex, Weak};
use std::time::{Duration, Instant};
use wait_for::wait_for;

/// The tests that keep every core busy take turns: one of them on top of another would make the
/// other's timer thread wait for a core between its stamp and the work's start, which no
/// throttle can prevent and these tests do not measure.
static BUSY_CORES: Mutex<()> = Mutex::new(());

fn busy_cores() -> std::sync::MutexGuard<'static, ()> {
    BUSY_CORES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A detached throttle on the default clock whose work records the stamp of each run (its
/// thread's last reading of the clock, which is the stamp's reading).
fn detached(
    threshold: Duration,
    leading: LeadingRun,
    stamps: &Readings,
) -> Detached<impl Fn() + Send + Sync + 'static, StampClock> {
    let stamps = stamps.clone();
    Detached::builder(Throttle::with_clock(threshold, StampClock(DefaultClock::new())).unwrap())
        .leading_run(leading)
        .spawn(move || stamps.push(last_reading()))
        .unwrap()
}

#[test]
fn calls_never_wait_and_the_timer_thread_runs_the_deferral() {
    const T: Duration = Duration::from_millis(50);
    let stamps = Readings::default();
    let job = detached(T, LeadingRun::Inline, &stamps);
    let start = Instant::now();
    assert_eq!(job.call(), Dispatch::Leading);
    assert_eq!(job.call(), Dispatch::Deferred);
    assert_eq!(job.call(), Dispatch::Coalesced);
    // No call waited for the window: each returned long before it ended (generous for a
    // loaded machine: the window is 50 ms, and the three calls take microseconds).
    assert!(
        start.elapsed() < T,
        "the calls took {:?}: one waited",
        start.elapsed()
    );
    assert_eq!(stamps.len(), 1, "only the inline leading run so far");
    wait_for(|| stamps.len() == 2, "the deferred run on the timer thread");
    assert!(start.elapsed() >= T);
    assert!(!job.is_pending());
    assert!(job.is_running());
    stamps.assert_spaced(T);
}

#[test]
fn leading_runs_go_to_the_timer_thread_by_default() {
    let on = Arc::new(Mutex::new(Vec::new()));
    let job = Detached::new(Duration::from_millis(5), {
        let on = on.clone();
        move || {
            on.lock()
                .unwrap()
                .push(std::thread::current().name().map(str::to_owned))
        }
    });
    assert_eq!(job.call(), Dispatch::Leading);
    drop(job);
    let on = on.lock().unwrap();
    assert_eq!(on.as_slice(), [Some("atomic-throttle-timer".to_owned())]);
}

#[test]
fn panicking_callers_cannot_strand_coverage() {
    const T: Duration = Duration::from_millis(100);
    let stamps = Readings::default();
    // Inline leading runs: each run's work then reads its own stamp on the thread that took it.
    let job = Arc::new(detached(T, LeadingRun::Inline, &stamps));
    assert_eq!(job.call(), Dispatch::Leading);
    // Callers that crash right after their call, including the one answered Deferred.
    let answers: Vec<Dispatch> = (0..4)
        .map(|_| {
            let job = job.clone();
            let answer = Arc::new(Mutex::new(None));
            let crashed = std::thread::spawn({
                let answer = answer.clone();
                move || {
                    *answer.lock().unwrap() = Some(job.call());
                    expected("a caller crashes after its call");
                }
            })
            .join();
            assert!(crashed.is_err());
            let answer = answer.lock().unwrap().take().unwrap();
            answer
        })
        .collect();
    // Inside the window the first is Deferred and the rest Coalesced, unless the machine is
    // slow enough that the window ends between them: then a caller leads, or claims the next
    // deferral. Every deferral is run all the same. At least one crashed caller claimed one,
    // or the test shows nothing.
    assert!(
        answers.contains(&Dispatch::Deferred),
        "no caller claimed a deferral: {answers:?}"
    );
    let runs = 1 + answers
        .iter()
        .filter(|a| **a == Dispatch::Deferred || **a == Dispatch::Leading)
        .count();
    // The crashed callers owned nothing: the timer thread still runs every deferral.
    wait_for(
        || stamps.len() >= runs,
        "the runs covering the coalesced calls",
    );
    assert_eq!(stamps.len(), runs, "a run too many: {answers:?}");
    assert!(!job.is_pending());
    stamps.assert_spaced(T);
}

#[test]
fn a_panicking_work_is_reported_and_the_throttle_keeps_working() {
    const T: Duration = Duration::from_millis(5);
    let runs = Arc::new(AtomicU32::new(0));
    let reported = Arc::new(Mutex::new(Vec::new()));
    // A manual clock, moved only by the timer thread's waits: the window cannot end in real
    // time between the calls, however slow the machine.
    let throttle = Throttle::with_clock(T, ManualClock::new()).unwrap();
    let job = Detached::builder(throttle)
        .on_panic({
            let reported = reported.clone();
            move |payload| {
                let what = payload.downcast_ref::<Expected>().map(|e| e.0);
                reported.lock().unwrap().push(what);
            }
        })
        .spawn({
            let runs = runs.clone();
            move || {
                if runs.fetch_add(1, Relaxed) == 0 {
                    expected("work failed");
                }
            }
        })
        .unwrap();
    assert_eq!(job.call(), Dispatch::Leading); // panics on the timer thread
    wait_for(
        || reported.lock().unwrap().len() == 1,
        "the work's panic to be reported",
    );
    assert_eq!(reported.lock().unwrap().as_slice(), [Some("work failed")]);
    assert_eq!(job.panics(), 1, "counted before it was reported");
    assert_eq!(job.call(), Dispatch::Deferred);
    drop(job); // runs the pending call at its deadline, on the same timer thread
    assert_eq!(
        runs.load(Relaxed),
        2,
        "the throttle kept working after the panic"
    );
}

/// A Detached whose work panics with a payload whose drop panics, and whose hook does the
/// same: before the fix, dropping that payload outside any `catch_unwind` ended the timer
/// thread with the deferral still pending, and every later call was Coalesced into a run that
/// never came.
#[test]
fn a_payload_whose_drop_panics_cannot_end_the_timer_thread() {
    const T: Duration = Duration::from_millis(5);
    let runs = Arc::new(AtomicU32::new(0));
    let job = Detached::builder(Throttle::new(T))
        .on_panic(|_| explosive())
        .spawn({
            let runs = runs.clone();
            move || {
                if runs.fetch_add(1, Relaxed) < 2 {
                    explosive();
                }
            }
        })
        .unwrap();
    assert_eq!(job.call(), Dispatch::Leading); // its work panics with the explosive payload
    assert_eq!(job.call(), Dispatch::Deferred); // and so does this one's
    wait_for(|| job.panics() == 2, "both panics to be reported");
    assert!(job.is_running(), "the timer thread died");
    assert!(!job.is_pending(), "a deferral was stranded");
    // The thread still serves calls: a leading run, a deferred run covering a coalesced call.
    std::thread::sleep(T * 2); // past the window of the last run
    assert_eq!(job.call(), Dispatch::Leading);
    assert_eq!(job.call(), Dispatch::Deferred);
    assert_eq!(job.call(), Dispatch::Coalesced);
    wait_for(|| runs.load(Relaxed) == 4, "the deferred run");
    drop(job);
    assert_eq!(runs.load(Relaxed), 4);
}

#[test]
fn shutdown_runs_a_pending_deferral_at_its_deadline() {
    const T: Duration = Duration::from_millis(40);
    let stamps = Readings::default();
    let job = detached(T, LeadingRun::Inline, &stamps);
    let start = Instant::now();
    assert_eq!(job.call(), Dispatch::Leading);
    assert_eq!(job.call(), Dispatch::Deferred);
    drop(job);
    assert!(
        start.elapsed() >= T,
        "the pending run waited for its deadline"
    );
    assert_eq!(stamps.len(), 2);
    stamps.assert_spaced(T);
}

#[test]
fn shutdown_can_cancel_a_pending_deferral() {
    let runs = Arc::new(AtomicU32::new(0));
    let job = Detached::builder(Throttle::new(Duration::from_secs(3600)))
        .on_shutdown(Shutdown::CancelPending)
        .leading_run(LeadingRun::Inline)
        .spawn({
            let runs = runs.clone();
            move || {
                runs.fetch_add(1, Relaxed);
            }
        })
        .unwrap();
    assert_eq!(job.call(), Dispatch::Leading);
    assert_eq!(job.call(), Dispatch::Deferred);
    drop_within_patience(job, "the drop, not the hour the deferral is due in");
    assert_eq!(runs.load(Relaxed), 1, "the cancelled deferral did not run");
}

/// Drops `job` on a thread of its own, failing the test (and leaving the thread) if the drop
/// takes longer than the test's patience; returns how long it took.
fn drop_within_patience(job: impl Send + 'static, what: &str) -> Duration {
    let start = Instant::now();
    let dropper = std::thread::spawn(move || drop(job));
    wait_for(|| dropper.is_finished(), what);
    start.elapsed()
}

/// Before the fix, `Shutdown::RunPending` waited for the deadline on the throttle's clock: a
/// clock frozen short of it hung the drop forever, and one stepped back an hour blocked it for
/// an hour. Now the wait is bounded by the shutdown grace in real time, after which the
/// pending run happens at once.
#[test]
fn shutdown_is_bounded_in_real_time_whatever_the_clock_does() {
    for step_back in [Duration::ZERO, Duration::from_secs(3600)] {
        let clock = ManualClock::with_auto_advance(false); // frozen unless the test moves it
        clock.advance(Duration::from_secs(7200));
        let runs = Arc::new(AtomicU32::new(0));
        let job = Detached::builder(
            Throttle::with_clock(Duration::from_secs(10), clock.clone()).unwrap(),
        )
        .leading_run(LeadingRun::Inline)
        .shutdown_grace(Duration::from_millis(200))
        .unwrap()
        .spawn({
            let runs = runs.clone();
            move || {
                runs.fetch_add(1, Relaxed);
            }
        })
        .unwrap();
        assert_eq!(job.call(), Dispatch::Leading);
        assert_eq!(job.call(), Dispatch::Deferred);
        clock.rewind(step_back);
        let took = drop_within_patience(job, "the drop, within its grace");
        assert!(
            took >= Duration::from_millis(200),
            "the grace was not waited: {took:?}"
        );
        assert_eq!(runs.load(Relaxed), 2, "the pending run was lost");
    }
}

#[test]
fn after_shutdown_calls_are_closed_and_nothing_is_pending() {
    let runs = Arc::new(AtomicU32::new(0));
    let job = Detached::new(Duration::from_millis(5), {
        let runs = runs.clone();
        move || {
            runs.fetch_add(1, Relaxed);
        }
    });
    assert_eq!(job.call(), Dispatch::Leading);
    assert_eq!(job.call(), Dispatch::Deferred);
    job.shutdown();
    assert!(!job.is_running());
    assert_eq!(runs.load(Relaxed), 2, "shutdown ran the pending run");
    // A call after the timer thread stopped is told so; it is never coalesced into nothing.
    for _ in 0..3 {
        assert_eq!(job.call(), Dispatch::Closed);
        assert!(
            !job.is_pending(),
            "a deferral pending with no thread to run it"
        );
    }
    job.shutdown(); // idempotent
    drop(job);
    assert_eq!(runs.load(Relaxed), 2);
}

/// Before the fix, a leading run with `LeadingRun::Inline` still ran on the caller's thread
/// after a shutdown, and the call was answered Leading: only hand-offs were refused.
#[test]
fn after_shutdown_inline_leading_runs_are_closed_too() {
    let runs = Arc::new(AtomicU32::new(0));
    let job = Detached::builder(Throttle::new(Duration::from_millis(5)))
        .leading_run(LeadingRun::Inline)
        .spawn({
            let runs = runs.clone();
            move || {
                runs.fetch_add(1, Relaxed);
            }
        })
        .unwrap();
    assert_eq!(job.call(), Dispatch::Leading);
    job.shutdown();
    std::thread::sleep(Duration::from_millis(10)); // past the window: the next call leads
    assert_eq!(job.call(), Dispatch::Closed);
    assert_eq!(runs.load(Relaxed), 1, "the work ran after the shutdown");
}

/// Before the fix, dropping the last handle from inside the work joined the timer thread from
/// itself: "Resource deadlock avoided" panicked in `Drop`, and aborted the process when it
/// happened during a panic's unwinding.
#[test]
fn dropping_the_last_handle_on_the_timer_thread_stops_it_without_joining_itself() {
    for panic_in_flight in [false, true] {
        type Handle = Detached<Box<dyn Fn() + Send + Sync>>;
        let handle: Arc<Mutex<Weak<Handle>>> = Arc::default();
        let dropped_on = Arc::new(Mutex::new(None));
        let holding = Arc::new(AtomicBool::new(false));
        let work: Box<dyn Fn() + Send + Sync> = Box::new({
            let (handle, dropped_on, holding) =
                (handle.clone(), dropped_on.clone(), holding.clone());
            move || {
                let strong = handle.lock().unwrap().upgrade();
                if let Some(strong) = strong {
                    holding.store(true, Relaxed);
                    // Wait for the test to drop its handle: this one is then the last.
                    while Arc::strong_count(&strong) > 1 {
                        std::thread::yield_now();
                    }
                    *dropped_on.lock().unwrap() = std::thread::current().name().map(str::to_owned);
                    if panic_in_flight {
                        let _last = strong; // dropped while the panic unwinds
                        expected("the work fails while holding the last handle");
                    }
                    drop(strong);
                }
            }
        });
        let job = Arc::new(Detached::new(Duration::from_millis(5), work));
        *handle.lock().unwrap() = Arc::downgrade(&job);
        assert_eq!(job.call(), Dispatch::Leading);
        wait_for(|| holding.load(Relaxed), "the work to take a handle");
        drop(job);
        wait_for(
            || dropped_on.lock().unwrap().is_some(),
            "the work to drop the last handle",
        );
        assert_eq!(
            dropped_on.lock().unwrap().as_deref(),
            Some("atomic-throttle-timer")
        );
        // The thread ends once the work returns; the process is still here to see it.
        wait_for(
            || handle.lock().unwrap().upgrade().is_none(),
            "the handle to be gone",
        );
    }
}

/// The work's own start times, with more calling threads than cores bursting at once. The
/// timer thread stamps each run and calls the work at once, so the stamps are exactly a
/// threshold apart and each work's first reading trails its stamp by the few instructions in
/// between, unless the thread is preempted right there (see `support/starts.rs` for what is
/// checked). The old stamping missed by the timer thread's whole wake-up latency, milliseconds
/// under this load.
#[test]
fn work_starts_on_the_timer_thread_are_spaced_by_the_threshold_under_load() {
    let _turn = busy_cores();
    const T: Duration = Duration::from_millis(5);
    const SLACK: Duration = Duration::from_micros(200);
    let threads = 4 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let clock = StampClock(DefaultClock::new());
    let starts = Starts::default();
    let job = Arc::new(
        Detached::builder(Throttle::with_clock(T, clock).unwrap())
            .spawn(starts.recording(clock))
            .unwrap(),
    );
    let barrier = Arc::new(Barrier::new(threads));
    let feeds: Vec<_> = (0..threads)
        .map(|_| {
            let (job, barrier) = (job.clone(), barrier.clone());
            std::thread::spawn(move || {
                for _ in 0..120 {
                    // Every caller bursts at once, keeping every core busy (the timer thread
                    // wakes late), then all pause past the window, so that each burst starts
                    // with a leading run and a deferred run follows it.
                    barrier.wait();
                    let burst = Instant::now() + Duration::from_millis(2);
                    while Instant::now() < burst {
                        let _ = job.call();
                    }
                    std::thread::sleep(T + Duration::from_millis(2));
                }
            })
        })
        .collect();
    for feed in feeds {
        feed.join().unwrap();
    }
    drop(Arc::into_inner(job).expect("the feeds are done"));
    let runs = starts.len();
    assert!(runs > 200, "only {runs} runs");
    match starts.check(T, SLACK) {
        Ok(line) => eprintln!("{line}"),
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn eight_threads_for_two_seconds_every_call_is_followed_by_a_run() {
    let _turn = busy_cores();
    const T: Duration = Duration::from_millis(2);
    const THREADS: usize = 8;
    let stamps = Readings::default();
    let runs = Arc::new(AtomicU64::new(0));
    let job = Arc::new(
        Detached::builder(Throttle::with_clock(T, StampClock(DefaultClock::new())).unwrap())
            .leading_run(LeadingRun::Inline)
            .spawn({
                let (stamps, runs) = (stamps.clone(), runs.clone());
                move || {
                    stamps.push(last_reading());
                    runs.fetch_add(1, Relaxed);
                }
            })
            .unwrap(),
    );
    let clock = DefaultClock::new();
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (job, runs, barrier) = (job.clone(), runs.clone(), barrier.clone());
            std::thread::spawn(move || {
                // For each window this thread saw, the time just before its first call; and
                // the time before its last call. A run stamped after each of these covers
                // every call the thread made in that window.
                let mut marks = Vec::new();
                let mut seen = u64::MAX;
                barrier.wait();
                let end = Instant::now() + Duration::from_secs(2);
                let mut last = 0;
                while Instant::now() < end {
                    for _ in 0..64 {
                        let window = runs.load(Relaxed);
                        last = clock.now_nanos();
                        if window != seen {
                            seen = window;
                            marks.push(last);
                        }
                        let _ = job.call();
                    }
                }
                marks.push(last);
                marks
            })
        })
        .collect();
    let marks: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    drop(Arc::into_inner(job).expect("every caller is done")); // runs a pending deferral
    let stamps = stamps.sorted();
    assert!(stamps.len() > 100, "only {} runs", stamps.len());
    let mut longest = 0;
    for mark in &marks {
        let covering = stamps.partition_point(|&stamp| stamp <= *mark);
        let Some(&covering) = stamps.get(covering) else {
            panic!("a call at {mark} ns was followed by no run");
        };
        longest = longest.max(covering - mark);
    }
    for pair in stamps.windows(2) {
        assert!(
            pair[1] - pair[0] >= T.as_nanos() as u64,
            "G1: runs stamped {} ns apart",
            pair[1] - pair[0]
        );
    }
    eprintln!(
        "{} runs, {} marks, longest wait from a call to the run covering it: {:?}",
        stamps.len(),
        marks.len(),
        Duration::from_nanos(longest)
    );
}

#[test]
fn leading_runs_slower_than_the_threshold_each_run_once_on_the_timer_thread() {
    let _turn = busy_cores();
    const T: Duration = Duration::from_millis(2);
    let clock = DefaultClock::new();
    let starts = Readings::default();
    let job = Detached::new(T, {
        let starts = starts.clone();
        move || {
            starts.push(clock.now_nanos());
            std::thread::sleep(T * 5); // much slower than the threshold
        }
    });
    let (mut leading, mut deferred) = (0, 0);
    for _ in 0..4 {
        // Nothing pending (a deferral, behind the slow work, may take a while to be run; on a
        // loaded machine the timer thread may also wake late), then past the window of the
        // last stamp: the next call leads again, unless the timer thread, busy with the slow
        // work, re-stamped a leading run when it got to it.
        wait_for(|| !job.is_pending(), "the deferral to be run");
        std::thread::sleep(T * 2);
        match job.call() {
            Dispatch::Leading => leading += 1,
            Dispatch::Deferred => deferred += 1,
            other => panic!("{other:?} with nothing pending"),
        }
    }
    assert!(leading >= 2, "only {leading} leading runs");
    drop(job); // waits for the backlog
    assert_eq!(
        starts.len(),
        leading + deferred,
        "every leading and deferred run ran exactly once"
    );
    starts.assert_spaced(T);
}

/// A manual clock that panics when a waiter asks it how to wait, while `panicking` is set.
#[derive(Clone)]
struct PanicsWhenWaiting {
    clock: ManualClock,
    panicking: Arc<AtomicBool>,
}

impl Clock for PanicsWhenWaiting {
    fn now_nanos(&self) -> u64 {
        self.clock.now_nanos()
    }
    fn wait_for(&self, waiter: Waiter<'_>, deadline: u64) -> Wait {
        if self.panicking.load(Relaxed) {
            expected("the clock failed");
        }
        self.clock.wait_for(waiter, deadline)
    }
    fn done_waiting(&self, waiter: Waiter<'_>) {
        self.clock.done_waiting(waiter)
    }
}

#[test]
fn a_panicking_clock_gives_the_deferral_up_and_the_timer_thread_survives() {
    let clock = PanicsWhenWaiting {
        clock: ManualClock::new(),
        panicking: Arc::new(AtomicBool::new(true)),
    };
    let runs = Arc::new(AtomicU32::new(0));
    let throttle = Throttle::with_clock(Duration::from_millis(10), clock.clone()).unwrap();
    let job = Detached::builder(throttle)
        .leading_run(LeadingRun::Inline)
        .on_panic(|_| {})
        .spawn({
            let runs = runs.clone();
            move || {
                runs.fetch_add(1, Relaxed);
            }
        })
        .unwrap();
    assert_eq!(job.call(), Dispatch::Leading);
    // The timer thread must wait for this one's deadline: asking the clock how, it panics.
    assert_eq!(job.call(), Dispatch::Deferred);
    wait_for(|| job.panics() == 1, "the clock's panic to be reported");
    wait_for(|| !job.is_pending(), "the deferral to be given up");
    assert!(job.is_running());
    // The timer thread lives on: with the clock healthy, the next deferral is run.
    clock.panicking.store(false, Relaxed);
    assert_eq!(job.call(), Dispatch::Deferred);
    wait_for(|| runs.load(Relaxed) == 2, "the next deferred run");
    assert_eq!(job.panics(), 1);
}

#[test]
fn dropping_with_a_deadline_past_the_end_of_the_clock_does_not_hang() {
    let clock = ManualClock::new();
    clock.advance(Duration::MAX);
    let job = Detached::builder(Throttle::with_clock(Duration::from_secs(1), clock).unwrap())
        .on_shutdown(Shutdown::RunPending)
        .shutdown_grace(Duration::from_millis(100))
        .unwrap()
        .spawn(|| ())
        .unwrap();
    assert_eq!(job.call(), Dispatch::Leading);
    assert_eq!(job.call(), Dispatch::Deferred); // its deadline lies past the end of time
    let start = Instant::now();
    drop(job);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn flush_runs_the_pending_deferral_on_the_timer_thread_at_once() {
    let runs = Arc::new(AtomicU32::new(0));
    let job = Detached::builder(Throttle::new(Duration::from_secs(3600)))
        .leading_run(LeadingRun::Inline)
        .on_shutdown(Shutdown::CancelPending)
        .spawn({
            let runs = runs.clone();
            move || {
                runs.fetch_add(1, Relaxed);
            }
        })
        .unwrap();
    assert!(!job.flush(), "nothing pending yet");
    assert_eq!(job.call(), Dispatch::Leading);
    assert_eq!(job.call(), Dispatch::Deferred); // due in an hour
    let start = Instant::now();
    assert!(job.flush());
    wait_for(|| runs.load(Relaxed) == 2, "the flushed run");
    assert!(start.elapsed() < wait_for::patience());
    // The window counts from the flushed run: the next call is Deferred, and cancelling it
    // means it never runs.
    assert_eq!(job.call(), Dispatch::Deferred);
    assert!(job.cancel());
    assert!(!job.is_pending());
    assert!(!job.cancel());
    drop(job);
    assert_eq!(runs.load(Relaxed), 2);
}

#[test]
fn a_shorter_threshold_wakes_the_timer_thread_for_the_earlier_deadline() {
    let clock = DefaultClock::new();
    let starts = Readings::default();
    let job = Detached::builder(Throttle::new(Duration::from_secs(3600)))
        .leading_run(LeadingRun::Inline)
        .spawn({
            let starts = starts.clone();
            move || starts.push(clock.now_nanos())
        })
        .unwrap();
    assert_eq!(job.call(), Dispatch::Leading);
    let leading_stamp = job.last_run().expect("the leading run");
    assert_eq!(job.call(), Dispatch::Deferred);
    job.set_threshold(Duration::from_millis(20)).unwrap();
    wait_for(|| starts.len() == 2, "the run at the new deadline");
    // The deferred run's work started at the new deadline or after: a threshold after the
    // leading run's stamp. (The inline leading work read the clock after that stamp, by as
    // long as its thread was held up in between.)
    let deferred_start = starts.sorted()[1];
    assert!(
        deferred_start >= leading_stamp + 20_000_000,
        "the deferred run started {} ns after the leading stamp",
        deferred_start - leading_stamp
    );
    // The run was stamped just before its work read the clock.
    let starts = starts.sorted();
    let stamp = job.last_run().expect("two runs");
    assert!(stamp > starts[0] && stamp <= starts[1].div_ceil(1000) * 1000);
}

/// A work that calls its own handle (re-arming itself) on a throttle shut down on `timer`'s
/// thread (or its own): every call from the moment the shutdown begins, the work's included,
/// is answered `Closed`, so the shutdown ends within its grace after at most the run pending
/// when it began, rather than running the work back to back.
fn a_self_rearming_work_lets_the_shutdown_end(timer: Option<&SharedTimer>) {
    const T: Duration = Duration::from_millis(2);
    type Work = Box<dyn Fn() + Send + Sync>;
    let handle: Arc<std::sync::OnceLock<Weak<Detached<Work>>>> = Arc::default();
    let runs = Arc::new(AtomicU64::new(0));
    let closed_inside = Arc::new(AtomicU64::new(0));
    let work: Work = Box::new({
        let (handle, runs, closed_inside) = (handle.clone(), runs.clone(), closed_inside.clone());
        move || {
            runs.fetch_add(1, Relaxed);
            if let Some(job) = handle.get().and_then(Weak::upgrade) {
                if job.call() == Dispatch::Closed {
                    closed_inside.fetch_add(1, Relaxed);
                }
            }
        }
    });
    let builder = Detached::builder(Throttle::new(T))
        .shutdown_grace(Duration::from_millis(50))
        .unwrap();
    let job = Arc::new(match timer {
        Some(timer) => builder.timer(timer).spawn(work).unwrap(),
        None => builder.spawn(work).unwrap(),
    });
    handle.set(Arc::downgrade(&job)).unwrap();
    assert_eq!(job.call(), Dispatch::Leading);
    wait_for(|| runs.load(Relaxed) >= 5, "the work re-arming itself");
    let stopper = std::thread::spawn({
        let job = job.clone();
        move || job.shutdown()
    });
    let patience = Instant::now() + wait_for::patience();
    while !stopper.is_finished() {
        assert!(
            Instant::now() < patience,
            "out of patience: the shutdown had not ended: {} runs",
            runs.load(Relaxed)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    stopper.join().unwrap();
    let at_shutdown = runs.load(Relaxed);
    std::thread::sleep(10 * T);
    assert_eq!(
        runs.load(Relaxed),
        at_shutdown,
        "runs after the shutdown ended"
    );
    assert!(
        closed_inside.load(Relaxed) >= 1,
        "the work's own call was not Closed"
    );
    assert_eq!(job.call(), Dispatch::Closed);
}

#[test]
fn a_work_that_calls_its_own_handle_cannot_keep_the_shutdown_from_ending() {
    let _turn = busy_cores();
    a_self_rearming_work_lets_the_shutdown_end(None);
    let timer = SharedTimer::new();
    a_self_rearming_work_lets_the_shutdown_end(Some(&timer));
}

/// Two callers shut a throttle down at once: each returns only once the pending run has
/// happened and the timer thread has stopped, on its own thread as on a shared timer.
#[test]
fn every_concurrent_shutdown_waits_for_the_pending_run() {
    const T: Duration = Duration::from_millis(150);
    let timer = SharedTimer::new();
    for shared in [false, true] {
        let runs = Arc::new(AtomicU32::new(0));
        let builder = Detached::builder(Throttle::new(T));
        let work = {
            let runs = runs.clone();
            move || {
                runs.fetch_add(1, Relaxed);
            }
        };
        let job = Arc::new(if shared {
            builder.timer(&timer).spawn(work).unwrap()
        } else {
            builder.spawn(work).unwrap()
        });
        assert_eq!(job.call(), Dispatch::Leading);
        assert_eq!(job.call(), Dispatch::Deferred);
        let first = std::thread::spawn({
            let job = job.clone();
            move || job.shutdown()
        });
        // The second, while the first waits for the run due in about 150 ms (on a loaded
        // machine it may come later, and the test then checks less, never wrongly).
        std::thread::sleep(Duration::from_millis(20));
        job.shutdown();
        assert_eq!(
            runs.load(Relaxed),
            2,
            "shared timer: {shared}: returned before the run"
        );
        assert!(
            !job.is_running(),
            "shared timer: {shared}: returned while it still runs"
        );
        first.join().unwrap();
    }
}

/// Leading runs handed over while the serving thread is busy with an earlier work still start
/// a threshold apart, on the work's own readings: the second waits a threshold after the
/// first's start, though both were admitted (their stamps a threshold apart) before either
/// ran. On its own timer thread and on a shared timer.
#[test]
fn leading_runs_queued_behind_a_busy_work_start_a_threshold_apart() {
    const T: Duration = Duration::from_millis(10);
    for shared in [false, true] {
        // Moves to the deadline a thread waits for: the spacing wait is all that moves it.
        let clock = ManualClock::new();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let (permit_sender, permits) = std::sync::mpsc::channel::<()>();
        let permits = Mutex::new(permits);
        let work = {
            let (clock, starts) = (clock.clone(), starts.clone());
            move || {
                starts.lock().unwrap().push(clock.now());
                // Keeps the serving thread busy until the test lets this work end.
                let _ = permits.lock().unwrap().recv_timeout(wait_for::PATIENCE);
            }
        };
        let builder = Detached::builder(Throttle::builder(T).clock(clock.clone()).build().unwrap())
            .leading_run(LeadingRun::OnTimer);
        let timer;
        let job = if shared {
            timer = SharedTimer::builder().clock(clock.clone()).spawn().unwrap();
            builder.timer(&timer).spawn(work).unwrap()
        } else {
            builder.spawn(work).unwrap()
        };
        // Dropped before the job, if the test fails: the work then ends at once.
        let permit = permit_sender;
        let started = |n: usize| {
            wait_for(
                || starts.lock().unwrap().len() >= n,
                &format!("shared timer: {shared}: run {n} to start"),
            );
            // The window starts when the work does (the clock stands still while it runs).
            let start = starts.lock().unwrap()[n - 1];
            assert_eq!(
                job.last_run(),
                Some(start.as_nanos() as u64),
                "shared timer: {shared}: run {n}'s stamp"
            );
        };
        assert_eq!(job.call(), Dispatch::Leading);
        started(1);
        // Two more leading runs, each a threshold after the last stamp, while the first work
        // still runs.
        clock.advance(T);
        assert_eq!(job.call(), Dispatch::Leading);
        clock.advance(T);
        assert_eq!(job.call(), Dispatch::Leading);
        permit.send(()).unwrap();
        started(2);
        permit.send(()).unwrap();
        started(3);
        permit.send(()).unwrap();
        let starts = starts.lock().unwrap().clone();
        for pair in starts.windows(2) {
            assert!(
                pair[1] - pair[0] >= T,
                "shared timer: {shared}: runs started at {starts:?}, closer than {T:?}"
            );
        }
        job.shutdown();
    }
}

/// A manual clock whose readings panic while `panicking` is set, on every thread but the one
/// that made it; a clone without `panicking` never does.
#[derive(Clone)]
struct PanicsWhenRead {
    clock: ManualClock,
    panicking: Option<(Arc<AtomicBool>, std::thread::ThreadId)>,
}

impl Clock for PanicsWhenRead {
    fn now_nanos(&self) -> u64 {
        if let Some((panicking, spared)) = &self.panicking {
            if panicking.load(Relaxed) && std::thread::current().id() != *spared {
                expected("the clock failed");
            }
        }
        self.clock.now_nanos()
    }
    fn wait_for(&self, waiter: Waiter<'_>, deadline: u64) -> Wait {
        self.clock.wait_for(waiter, deadline)
    }
    fn done_waiting(&self, waiter: Waiter<'_>) {
        self.clock.done_waiting(waiter)
    }
}

/// On a shared timer, a job whose clock panics when the timer asks when its deferral is due
/// gives the deferral up (reported like a panic in the work), rather than strand it; the timer
/// goes on serving it once the clock is healthy.
#[test]
fn a_panicking_clock_on_a_shared_timer_gives_the_deferral_up() {
    let clock = ManualClock::new();
    let timer = SharedTimer::builder()
        .clock(PanicsWhenRead {
            clock: clock.clone(),
            panicking: None,
        })
        .spawn()
        .unwrap();
    let panicking = Arc::new(AtomicBool::new(false));
    let job_clock = PanicsWhenRead {
        clock: clock.clone(),
        panicking: Some((panicking.clone(), std::thread::current().id())),
    };
    let runs = Arc::new(AtomicU32::new(0));
    let job =
        Detached::builder(Throttle::with_clock(Duration::from_millis(10), job_clock).unwrap())
            .leading_run(LeadingRun::Inline)
            .on_panic(|_| {})
            .timer(&timer)
            .spawn({
                let runs = runs.clone();
                move || {
                    runs.fetch_add(1, Relaxed);
                }
            })
            .unwrap();
    assert_eq!(job.call(), Dispatch::Leading);
    panicking.store(true, Relaxed);
    assert_eq!(job.call(), Dispatch::Deferred);
    wait_for(|| job.panics() >= 1, "the clock's panic to be reported");
    wait_for(|| !job.is_pending(), "the deferral to be given up");
    assert_eq!(runs.load(Relaxed), 1);
    // The timer lives on: with the clock healthy, the next deferral is run.
    panicking.store(false, Relaxed);
    assert_eq!(job.call(), Dispatch::Deferred);
    wait_for(|| runs.load(Relaxed) == 2, "the next deferred run");
    assert!(timer.is_running());
}

/// Once a shutdown has been asked for, calls are answered `Closed` and nothing new runs, even
/// while the timer thread is still busy with a work (so the job is not closed yet): a leading
/// call is not run inline, and a deferred one is taken back, not handed to a thread that is
/// stopping.
#[test]
fn calls_made_while_a_shutdown_waits_for_a_running_work_are_closed() {
    type Job = Detached<Box<dyn Fn() + Send + Sync>, ManualClock>;
    const T: Duration = Duration::from_millis(10);
    for shared in [false, true] {
        let clock = ManualClock::with_auto_advance(false);
        let handle: Arc<std::sync::OnceLock<Weak<Job>>> = Arc::default();
        let (stopping, stopped) = std::sync::mpsc::channel::<()>();
        let (permit_sender, permits) = std::sync::mpsc::channel::<()>();
        let (permits, stopping) = (Mutex::new(permits), Mutex::new(stopping));
        let runs = Arc::new(AtomicU32::new(0));
        let work: Box<dyn Fn() + Send + Sync> = Box::new({
            let (handle, runs) = (handle.clone(), runs.clone());
            move || {
                if runs.fetch_add(1, Relaxed) == 1 {
                    // The deferred run, on the serving thread: the shutdown is asked for from
                    // here, and the work then keeps the thread busy until the test lets it go.
                    if let Some(job) = handle.get().and_then(Weak::upgrade) {
                        job.shutdown();
                    }
                    let _ = stopping.lock().unwrap().send(());
                    let _ = permits.lock().unwrap().recv_timeout(wait_for::PATIENCE);
                }
            }
        });
        let builder = Detached::builder(Throttle::with_clock(T, clock.clone()).unwrap())
            .leading_run(LeadingRun::Inline);
        let timer;
        let job = Arc::new(if shared {
            timer = SharedTimer::builder().clock(clock.clone()).spawn().unwrap();
            builder.timer(&timer).spawn(work).unwrap()
        } else {
            builder.spawn(work).unwrap()
        });
        handle.set(Arc::downgrade(&job)).unwrap();
        let permit = permit_sender; // dropped before the job if the test fails: the work ends
        assert_eq!(job.call(), Dispatch::Leading);
        assert_eq!(job.call(), Dispatch::Deferred);
        clock.advance(T);
        stopped
            .recv_timeout(wait_for::PATIENCE)
            .expect("the deferred run to ask for the shutdown");
        clock.advance(T); // a leading call's time
        assert_eq!(
            job.call(),
            Dispatch::Closed,
            "shared timer: {shared}: leading"
        );
        assert_eq!(
            job.call(),
            Dispatch::Closed,
            "shared timer: {shared}: deferred"
        );
        assert!(!job.is_pending(), "shared timer: {shared}: a claim left");
        assert_eq!(runs.load(Relaxed), 2, "shared timer: {shared}");
        permit.send(()).unwrap();
        wait_for(|| !job.is_running(), "the shutdown to end");
        assert_eq!(runs.load(Relaxed), 2, "shared timer: {shared}");
    }
}

/// On a shared timer that already waits for a deferral's deadline, a flush, and a shorter
/// threshold, reach the timer: the run comes at once, or at the new deadline. (Each on a timer
/// of its own, so that the timer's registration with the clock says it has filed the
/// deferral: an idle timer with nothing filed does not wait on the clock.)
#[test]
fn flush_and_a_shorter_threshold_wake_a_shared_timer_that_waits() {
    const HOUR: Duration = Duration::from_secs(3600);
    for flush in [true, false] {
        let clock = ManualClock::with_auto_advance(false);
        let timer = SharedTimer::builder().clock(clock.clone()).spawn().unwrap();
        let runs = Arc::new(AtomicU32::new(0));
        let job = Detached::builder(Throttle::with_clock(HOUR, clock.clone()).unwrap())
            .leading_run(LeadingRun::Inline)
            .timer(&timer)
            .spawn({
                let runs = runs.clone();
                move || {
                    runs.fetch_add(1, Relaxed);
                }
            })
            .unwrap();
        assert_eq!(job.call(), Dispatch::Leading);
        assert_eq!(job.call(), Dispatch::Deferred);
        // The timer waits on the clock for the deadline (it does not spin, nor look again
        // and again): the manual clock counts it as a waiter.
        wait_for(
            || clock.waiters() >= 1,
            "the timer to wait on the clock for the deadline",
        );
        if flush {
            assert!(job.flush());
            wait_for(|| runs.load(Relaxed) == 2, "the flushed run");
        } else {
            job.set_threshold(Duration::from_millis(10)).unwrap();
            // Time for the timer to file the run at its new deadline before the clock gets
            // there (on a machine too busy for that, the test checks less, never wrongly).
            std::thread::sleep(Duration::from_millis(100));
            // Only the new deadline's reading: the timer must have filed the run for it.
            clock.advance(Duration::from_millis(10));
            wait_for(|| runs.load(Relaxed) == 2, "the run at the new deadline");
            assert_eq!(clock.now(), Duration::from_millis(10));
        }
    }
}

/// On a shared timer, a leading run that must wait for its spacing does not hold a worker
/// while it waits: another throttle's run, due first, gets the only worker on time.
#[test]
fn a_run_waiting_for_its_spacing_leaves_the_worker_to_others() {
    const T: Duration = Duration::from_millis(10);
    let ms = Duration::from_millis;
    let clock = ManualClock::with_auto_advance(false);
    let timer = SharedTimer::builder()
        .clock(clock.clone())
        .workers(1)
        .spawn()
        .unwrap();
    // Made first, so that it is dropped last: a test that fails with a worker held by `a`
    // then shuts `a` down first, which frees the worker.
    let b_runs = Arc::new(AtomicU32::new(0));
    let b = Detached::builder(Throttle::with_clock(T, clock.clone()).unwrap())
        .leading_run(LeadingRun::Inline)
        .timer(&timer)
        .spawn({
            let runs = b_runs.clone();
            move || {
                runs.fetch_add(1, Relaxed);
            }
        })
        .unwrap();
    let a_starts = Arc::new(Mutex::new(Vec::new()));
    let (permit_sender, permits) = std::sync::mpsc::channel::<()>();
    let a = Detached::builder(Throttle::with_clock(T, clock.clone()).unwrap())
        .leading_run(LeadingRun::OnTimer)
        .timer(&timer)
        .spawn(first_run_held(&clock, &a_starts, permits))
        .unwrap();
    let permit = permit_sender; // dropped before the handles if the test fails
    assert_eq!(a.call(), Dispatch::Leading);
    wait_for(|| a_starts.lock().unwrap().len() == 1, "a's first run");
    // Two more leading runs for a, queued behind its first work.
    clock.advance(T);
    assert_eq!(a.call(), Dispatch::Leading);
    clock.advance(ms(5));
    // b's deferral, due at 25 ms.
    assert_eq!(b.call(), Dispatch::Leading);
    assert_eq!(b.call(), Dispatch::Deferred);
    clock.advance(ms(5));
    assert_eq!(a.call(), Dispatch::Leading);
    // At 20 ms: a's second run starts; its third is due a threshold later, at 30 ms.
    permit.send(()).unwrap();
    wait_for(|| a_starts.lock().unwrap().len() == 2, "a's second run");
    clock.advance(ms(5));
    wait_for(
        || b_runs.load(Relaxed) == 2,
        "b's deferred run, due at 25 ms",
    );
    assert_eq!(
        a_starts.lock().unwrap().len(),
        2,
        "a's third run came early"
    );
    clock.advance(ms(5));
    wait_for(|| a_starts.lock().unwrap().len() == 3, "a's third run");
    assert_eq!(
        *a_starts.lock().unwrap(),
        [ms(0), ms(20), ms(30)],
        "a's runs started at"
    );
}

/// On a shared timer, a deferral a worker finds pending after a leading run, but not due for
/// an hour, is left to the timer: it does not hold the only worker, and another throttle's
/// run, due first, gets it on time.
#[test]
fn a_deferral_not_yet_due_leaves_the_worker_to_others() {
    let clock = ManualClock::with_auto_advance(false);
    let timer = SharedTimer::builder()
        .clock(clock.clone())
        .workers(1)
        .spawn()
        .unwrap();
    // Made first, so that it is dropped last (see above).
    let b_runs = Arc::new(AtomicU32::new(0));
    let b =
        Detached::builder(Throttle::with_clock(Duration::from_millis(10), clock.clone()).unwrap())
            .leading_run(LeadingRun::Inline)
            .timer(&timer)
            .spawn({
                let runs = b_runs.clone();
                move || {
                    runs.fetch_add(1, Relaxed);
                }
            })
            .unwrap();
    let a_runs = Arc::new(AtomicU32::new(0));
    let (permit_sender, permits) = std::sync::mpsc::channel::<()>();
    let permits = Mutex::new(permits);
    let a =
        Detached::builder(Throttle::with_clock(Duration::from_secs(3600), clock.clone()).unwrap())
            .leading_run(LeadingRun::OnTimer)
            .on_shutdown(Shutdown::CancelPending)
            .timer(&timer)
            .spawn({
                let runs = a_runs.clone();
                move || {
                    if runs.fetch_add(1, Relaxed) == 0 {
                        // Holds the worker until the deferral below is claimed.
                        let _ = permits.lock().unwrap().recv_timeout(wait_for::PATIENCE);
                    }
                }
            })
            .unwrap();
    let permit = permit_sender; // dropped before the handles if the test fails
    assert_eq!(a.call(), Dispatch::Leading);
    wait_for(|| a_runs.load(Relaxed) == 1, "a's leading run");
    assert_eq!(a.call(), Dispatch::Deferred); // due in an hour
    assert_eq!(b.call(), Dispatch::Leading);
    assert_eq!(b.call(), Dispatch::Deferred); // due in 10 ms
    permit.send(()).unwrap();
    clock.advance(Duration::from_millis(10));
    wait_for(
        || b_runs.load(Relaxed) == 2,
        "b's deferred run, due at 10 ms",
    );
    assert_eq!(a_runs.load(Relaxed), 1, "a's deferral ran an hour early");
}

/// On a shared timer, a shutdown under `Shutdown::CancelPending` gives a deferral due in an
/// hour up at once, however long the shutdown grace.
#[test]
fn a_cancelling_shutdown_on_a_shared_timer_does_not_wait_for_the_deadline() {
    let clock = ManualClock::with_auto_advance(false);
    let timer = SharedTimer::builder().clock(clock.clone()).spawn().unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let job = Detached::builder(Throttle::with_clock(Duration::from_secs(3600), clock).unwrap())
        .leading_run(LeadingRun::Inline)
        .on_shutdown(Shutdown::CancelPending)
        .shutdown_grace(Duration::from_secs(3600))
        .unwrap()
        .timer(&timer)
        .spawn({
            let runs = runs.clone();
            move || {
                runs.fetch_add(1, Relaxed);
            }
        })
        .unwrap();
    assert_eq!(job.call(), Dispatch::Leading);
    assert_eq!(job.call(), Dispatch::Deferred); // due in an hour
    let job = Arc::new(job);
    let stopper = std::thread::spawn({
        let job = job.clone();
        move || job.shutdown()
    });
    wait_for(|| stopper.is_finished(), "the shutdown to end");
    assert!(!job.is_pending());
    assert_eq!(runs.load(Relaxed), 1, "the cancelled deferral ran");
}

/// On a shared timer, once a shutdown's grace has run out, a leading run waiting for its
/// spacing runs at once: the shutdown ends within its grace, not a threshold later.
#[test]
fn a_shutdown_grace_bounds_a_leading_runs_spacing_on_a_shared_timer() {
    const HOUR: Duration = Duration::from_secs(3600);
    let clock = ManualClock::with_auto_advance(false);
    let timer = SharedTimer::builder().clock(clock.clone()).spawn().unwrap();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let (permit_sender, permits) = std::sync::mpsc::channel::<()>();
    let job = Detached::builder(Throttle::with_clock(HOUR, clock.clone()).unwrap())
        .leading_run(LeadingRun::OnTimer)
        .shutdown_grace(Duration::from_millis(10))
        .unwrap()
        .timer(&timer)
        .spawn(first_run_held(&clock, &starts, permits))
        .unwrap();
    let permit = permit_sender; // dropped before the handle if the test fails
    assert_eq!(job.call(), Dispatch::Leading);
    wait_for(|| starts.lock().unwrap().len() == 1, "the first run");
    // Two leading runs queued behind the first work: the third is due an hour after the
    // second starts.
    clock.advance(HOUR);
    assert_eq!(job.call(), Dispatch::Leading);
    clock.advance(HOUR);
    assert_eq!(job.call(), Dispatch::Leading);
    permit.send(()).unwrap();
    wait_for(|| starts.lock().unwrap().len() == 2, "the second run");
    let job = Arc::new(job);
    let stopper = std::thread::spawn({
        let job = job.clone();
        move || job.shutdown()
    });
    wait_for(
        || stopper.is_finished(),
        "the shutdown to end within its grace",
    );
    assert_eq!(starts.lock().unwrap().len(), 3, "the last leading run ran");
}

/// A work that records the clock's reading at each start in `starts`, and holds its first run
/// (and the thread serving it) until a permit comes, or the test's patience is out.
fn first_run_held(
    clock: &ManualClock,
    starts: &Arc<Mutex<Vec<Duration>>>,
    permits: std::sync::mpsc::Receiver<()>,
) -> impl Fn() + Send + Sync + 'static {
    let (clock, starts, permits) = (clock.clone(), starts.clone(), Mutex::new(permits));
    move || {
        let first = {
            let mut starts = starts.lock().unwrap();
            starts.push(clock.now());
            starts.len() == 1
        };
        if first {
            let _ = permits.lock().unwrap().recv_timeout(wait_for::PATIENCE);
        }
    }
}

/// On a shared timer, a leading run held by its spacing (the threshold raised to an hour after
/// it was admitted) runs once a shutdown's grace is out: the timer hands it over then, and the
/// shutdown ends within its grace rather than an hour later.
#[test]
fn a_leading_run_held_by_its_spacing_runs_once_the_grace_is_out() {
    let timer = SharedTimer::new();
    let runs = Arc::new(AtomicU32::new(0));
    let (permit_sender, permits) = std::sync::mpsc::channel::<()>();
    let permits = Mutex::new(permits);
    let job = Detached::builder(Throttle::new(Duration::from_millis(30)))
        .shutdown_grace(Duration::from_millis(10))
        .unwrap()
        .timer(&timer)
        .spawn({
            let runs = runs.clone();
            move || {
                if runs.fetch_add(1, Relaxed) == 0 {
                    // Holds the worker until the second run is admitted and spaced an hour.
                    let _ = permits.lock().unwrap().recv_timeout(wait_for::PATIENCE);
                }
            }
        })
        .unwrap();
    let permit = permit_sender; // dropped before the handle if the test fails
    assert_eq!(job.call(), Dispatch::Leading);
    wait_for(|| runs.load(Relaxed) == 1, "the first run");
    std::thread::sleep(Duration::from_millis(60)); // past the window
    assert_eq!(job.call(), Dispatch::Leading);
    job.set_threshold(Duration::from_secs(3600)).unwrap();
    permit.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        runs.load(Relaxed),
        1,
        "the second run waited out its spacing"
    );
    drop_within_patience(job, "the shutdown, within its grace");
    assert_eq!(runs.load(Relaxed), 2, "the second run ran in the shutdown");
}
