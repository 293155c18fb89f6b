//! The detached throttle: callers never wait, deferred runs happen on its timer thread.

use atomic_throttle::{Clock, DefaultClock, Detached, Dispatch, LeadingRun, Shutdown, Throttle};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

#[path = "support/stamp_clock.rs"]
mod stamp_clock;

use stamp_clock::{last_reading, StampClock};

/// Stamps of every run, recorded by the work.
#[derive(Clone, Default)]
struct Stamps(Arc<Mutex<Vec<u64>>>);

impl Stamps {
    fn record(&self) {
        self.0.lock().unwrap().push(last_reading());
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn sorted(&self) -> Vec<u64> {
        let mut stamps = self.0.lock().unwrap().clone();
        stamps.sort_unstable();
        stamps
    }
    fn assert_spaced(&self, threshold: Duration) {
        for pair in self.sorted().windows(2) {
            assert!(
                pair[1] - pair[0] >= threshold.as_nanos() as u64,
                "G1: runs {} ns apart",
                pair[1] - pair[0]
            );
        }
    }
}

/// Waits up to five seconds for `done`, failing the test with `what` if it never comes.
fn wait_for(done: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn detached(
    threshold: Duration,
    leading: LeadingRun,
    stamps: &Stamps,
) -> Detached<impl Fn() + Send + Sync + 'static, StampClock> {
    let stamps = stamps.clone();
    Detached::builder(Throttle::with_clock(threshold, StampClock(DefaultClock::new())).unwrap())
        .leading_run(leading)
        .spawn(move || stamps.record())
        .unwrap()
}

#[test]
fn calls_never_wait_and_the_timer_thread_runs_the_deferral() {
    const T: Duration = Duration::from_millis(50);
    let stamps = Stamps::default();
    let job = detached(T, LeadingRun::Inline, &stamps);
    let start = Instant::now();
    assert_eq!(job.call(), Dispatch::Leading);
    assert_eq!(job.call(), Dispatch::Deferred);
    assert_eq!(job.call(), Dispatch::Coalesced);
    assert!(
        start.elapsed() < T / 2,
        "a call waited: {:?}",
        start.elapsed()
    );
    assert_eq!(stamps.len(), 1, "only the inline leading run so far");
    wait_for(|| stamps.len() == 2, "the deferred run");
    assert!(start.elapsed() >= T);
    assert!(!job.is_pending());
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
    const T: Duration = Duration::from_millis(20);
    let stamps = Stamps::default();
    // Inline leading runs: each run's work then reads its own stamp on the thread that took it.
    let job = Arc::new(detached(T, LeadingRun::Inline, &stamps));
    let silence = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    assert_eq!(job.call(), Dispatch::Leading);
    // Callers that crash right after their call, including the one answered Deferred.
    let answers: Vec<Dispatch> = (0..4)
        .map(|_| {
            let job = job.clone();
            let crashed = std::thread::spawn(move || {
                let answer = job.call();
                std::panic::panic_any(answer);
            })
            .join()
            .unwrap_err();
            *crashed.downcast::<Dispatch>().unwrap()
        })
        .collect();
    std::panic::set_hook(silence);
    // Inside the window the first is Deferred and the rest Coalesced, unless the machine is
    // slow enough that the window ends between them: then a later caller claims the next
    // deferral. Never Now, and every deferral is run.
    assert_eq!(answers[0], Dispatch::Deferred);
    assert!(
        answers.iter().all(|a| *a != Dispatch::Leading),
        "{answers:?}"
    );
    let deferred = answers.iter().filter(|a| **a == Dispatch::Deferred).count();
    // The crashed callers owned nothing: the timer thread still runs every deferral.
    wait_for(
        || stamps.len() > deferred,
        "the runs covering the coalesced calls",
    );
    assert_eq!(stamps.len(), 1 + deferred, "a run too many");
    assert!(!job.is_pending());
    stamps.assert_spaced(T);
}

#[test]
fn a_panicking_work_is_reported_and_the_throttle_keeps_working() {
    const T: Duration = Duration::from_millis(5);
    let runs = Arc::new(AtomicU32::new(0));
    let reported = Arc::new(Mutex::new(Vec::new()));
    let job = Detached::builder(Throttle::new(T))
        .on_panic({
            let reported = reported.clone();
            move |payload| {
                let message = payload.downcast_ref::<&str>().copied().unwrap_or("?");
                reported.lock().unwrap().push(message.to_owned());
            }
        })
        .spawn({
            let runs = runs.clone();
            move || {
                if runs.fetch_add(1, Relaxed) == 0 {
                    panic!("work failed");
                }
            }
        })
        .unwrap();
    let silence = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    assert_eq!(job.call(), Dispatch::Leading); // panics on the timer thread
    wait_for(|| job.panics() == 1, "the panic to be reported");
    std::panic::set_hook(silence);
    assert_eq!(reported.lock().unwrap().as_slice(), ["work failed"]);
    assert_eq!(job.call(), Dispatch::Deferred);
    drop(job); // runs the pending call at its deadline, on the same timer thread
    assert_eq!(
        runs.load(Relaxed),
        2,
        "the throttle kept working after the panic"
    );
}

#[test]
fn shutdown_runs_a_pending_deferral_at_its_deadline() {
    const T: Duration = Duration::from_millis(40);
    let stamps = Stamps::default();
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
    let start = Instant::now();
    drop(job);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(runs.load(Relaxed), 1, "the cancelled deferral did not run");
}

#[test]
fn eight_threads_for_two_seconds_every_call_is_followed_by_a_run() {
    const T: Duration = Duration::from_millis(2);
    const THREADS: usize = 8;
    let stamps = Stamps::default();
    let runs = Arc::new(AtomicU64::new(0));
    let job = Arc::new(
        Detached::builder(Throttle::with_clock(T, StampClock(DefaultClock::new())).unwrap())
            .leading_run(LeadingRun::Inline)
            .spawn({
                let (stamps, runs) = (stamps.clone(), runs.clone());
                move || {
                    stamps.record();
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
        assert!(pair[1] - pair[0] >= T.as_nanos() as u64, "G1");
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
    const T: Duration = Duration::from_millis(2);
    let runs = Arc::new(AtomicU32::new(0));
    let job = Detached::new(T, {
        let runs = runs.clone();
        move || {
            runs.fetch_add(1, Relaxed);
            std::thread::sleep(T * 5); // much slower than the threshold
        }
    });
    let mut now = 0;
    for _ in 0..4 {
        if job.call() == Dispatch::Leading {
            now += 1;
        }
        std::thread::sleep(T * 2); // past the window: the next call is Now again
    }
    assert!(now >= 2, "only {now} leading runs");
    drop(job); // waits for the backlog
    assert_eq!(runs.load(Relaxed), now, "every Now answer ran exactly once");
}

/// A clock that panics once asked to wait.
#[derive(Clone)]
struct PanicsWhenWaiting(atomic_throttle::ManualClock);

impl Clock for PanicsWhenWaiting {
    fn now_nanos(&self) -> u64 {
        self.0.now_nanos()
    }
    fn sleep(&self, _: Duration) {
        panic!("clock failed");
    }
}

#[test]
fn a_panicking_clock_gives_the_deferral_up_and_the_timer_thread_survives() {
    let clock = atomic_throttle::ManualClock::new();
    let runs = Arc::new(AtomicU32::new(0));
    let throttle =
        Throttle::with_clock(Duration::from_millis(10), PanicsWhenWaiting(clock.clone())).unwrap();
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
    let silence = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    assert_eq!(job.call(), Dispatch::Leading);
    assert_eq!(job.call(), Dispatch::Deferred); // the timer thread's wait panics
    wait_for(|| job.panics() == 1, "the clock's panic to be reported");
    std::panic::set_hook(silence);
    wait_for(|| !job.is_pending(), "the deferral to be given up");
    // The timer thread lives on: past the window, a new deferral is handed over and run.
    clock.advance(Duration::from_millis(10));
    assert_eq!(job.call(), Dispatch::Deferred);
    clock.advance(Duration::from_millis(20));
    wait_for(|| runs.load(Relaxed) == 2, "the next deferred run");
}

#[test]
fn dropping_with_a_deadline_past_the_end_of_the_clock_does_not_hang() {
    let clock = atomic_throttle::ManualClock::new();
    clock.advance(Duration::MAX);
    let job = Detached::builder(Throttle::with_clock(Duration::from_secs(1), clock).unwrap())
        .on_shutdown(Shutdown::RunPending)
        .spawn(|| ())
        .unwrap();
    assert_eq!(job.call(), Dispatch::Leading);
    assert_eq!(job.call(), Dispatch::Deferred); // its deadline lies past u64::MAX ns
    let start = Instant::now();
    drop(job);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}
