//! Interleavings of hand-offs to a shared timer: two throttles hand their deferrals to one
//! timer service at once, and the service shuts down while one of them is still handing over;
//! and the close handshake between a caller and the timer's last look.
//!
//! Each model names the mutants it must catch; `.ci/test` runs each mutant against its models
//! and expects them to fail.
#![cfg(loom)]

use atomic_throttle::{Clock, Detached, Dispatch, LeadingRun, ManualClock, SharedTimer, Throttle};
use loom::sync::atomic::AtomicU32;
use loom::thread;
use loom_tests::verify_bounded;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_millis(10);

/// Model 19: two throttles on one shared timer (a timer thread and one worker, both loom
/// threads, parked while idle), each run once at time zero. The main thread hands A's deferral
/// over while another thread hands over B's (both push onto the same intake). A's deferral
/// must be run by the timer on its own, with no shutdown to nudge it: the main thread yields
/// until it has run. Then it shuts the service down while B's caller may still be handing
/// over: B's call is either served (Deferred, and its run happens before the shutdown is done)
/// or refused (Closed, and nothing ran for it), never Coalesced into a run that will not come,
/// and nothing is left pending.
///
/// Against the `silent_timer` mutant (a hand-off that files the entry without waking the timer
/// thread), the timer thread sleeps through a hand-off (A's, or B's, whose push also leaves the
/// worker's hand-back unwoken), and the main thread yields forever, waiting for A's run or for
/// the shutdown: loom reports "maximum number of branches" (a livelock it can unwind from,
/// where a blocked `join` would be a deadlock that aborts).
#[test]
fn model_19_shared_timer_hand_offs_race_each_other_and_the_shutdown() {
    // Four threads (main, B's caller, the timer thread, the worker) that each take many steps:
    // with one preemption, about 137,000 executions (20-odd seconds); with two, it runs for
    // most of an hour. Model 20 explores the close handshake with two.
    verify_bounded(
        "model 19",
        Some(1),
        &[("silent_timer", "maximum number of branches")],
        || {
            let clock = ManualClock::new();
            let timer = SharedTimer::builder()
                .clock(clock.clone())
                .workers(1)
                .lead(Duration::ZERO)
                .spawn()
                .unwrap();
            // Each run records the clock when it starts (a std lock: no model operation).
            let spawn = |threshold: Duration, runs: &Arc<AtomicU32>| {
                let (runs, clock) = (runs.clone(), clock.clone());
                let readings = Arc::new(std::sync::Mutex::new(Vec::new()));
                let job =
                    Detached::builder(Throttle::with_clock(threshold, clock.clone()).unwrap())
                        .timer(&timer)
                        .leading_run(LeadingRun::Inline)
                        .spawn({
                            let readings = readings.clone();
                            move || {
                                readings.lock().unwrap().push(clock.now_nanos());
                                runs.fetch_add(1, SeqCst);
                            }
                        })
                        .unwrap();
                (job, readings)
            };
            let (runs_a, runs_b) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
            let (a, readings_a) = spawn(T, &runs_a);
            // B's window is longer, so that A's run (which moves the clock to T) leaves B's
            // next call inside its window: Deferred, or Closed once the shutdown came first.
            let (b, _) = spawn(T * 2, &runs_b);
            let b = Arc::new(b);
            assert_eq!(a.call(), Dispatch::Leading);
            assert_eq!(b.call(), Dispatch::Leading);
            let other = {
                let b = b.clone();
                thread::spawn(move || b.call())
            };
            assert_eq!(a.call(), Dispatch::Deferred);
            // Run by the timer on its own.
            while runs_a.load(SeqCst) < 2 {
                thread::yield_now();
            }
            assert!(
                readings_a.lock().unwrap()[1] >= T.as_nanos() as u64,
                "A's deferral ran before its deadline"
            );
            // The shutdown, racing B's hand-off. The main thread yields until it is done
            // rather than block in a join, so that a timer thread that is never woken shows as
            // a livelock.
            timer.request_shutdown();
            while timer.is_running() {
                thread::yield_now();
            }
            let theirs = other.join().unwrap();
            match theirs {
                Dispatch::Deferred => assert_eq!(runs_b.load(SeqCst), 2, "B's deferral was lost"),
                Dispatch::Closed => assert_eq!(runs_b.load(SeqCst), 1, "a refused call ran"),
                other => panic!("B's call inside its window was answered {other:?}"),
            }
            assert!(!a.is_pending() && !b.is_pending(), "a deferral stranded");
            assert_eq!(a.call(), Dispatch::Closed);
            assert_eq!(runs_a.load(SeqCst), 2, "a run too many");
            assert_eq!((a.panics(), b.panics()), (0, 0));
            drop(a);
            drop(Arc::into_inner(b).expect("B's caller is done"));
            assert_eq!(timer.throttles(), 0);
            drop(timer); // joins the threads, which have ended
        },
    );
}

/// Model 20: the close handshake. One throttle on a shared timer, run once at time zero; a
/// caller hands its deferral over while the service shuts down. Both sides may see each other
/// (a caller that sees the throttle closed takes its run back, while the timer's last look
/// after the close may already have taken it): whatever the interleaving, a call answered
/// Deferred is run, a call answered Closed is not, and nothing is left pending.
///
/// Against the `blind_take_back` mutant (a caller that sees the close answers Closed without
/// checking that its take-back succeeded), some interleaving answers Closed for a run that
/// happened.
#[test]
fn model_20_a_hand_off_races_the_close() {
    verify_bounded(
        "model 20",
        Some(2),
        &[("blind_take_back", "a Closed call ran")],
        || {
            let clock = ManualClock::new();
            let timer = SharedTimer::builder()
                .clock(clock.clone())
                .workers(1)
                .lead(Duration::ZERO)
                .spawn()
                .unwrap();
            let runs = Arc::new(AtomicU32::new(0));
            let job = Detached::builder(Throttle::with_clock(T, clock).unwrap())
                .timer(&timer)
                .leading_run(LeadingRun::Inline)
                .spawn({
                    let runs = runs.clone();
                    move || {
                        runs.fetch_add(1, SeqCst);
                    }
                })
                .unwrap();
            let job = Arc::new(job);
            assert_eq!(job.call(), Dispatch::Leading);
            let caller = {
                let job = job.clone();
                thread::spawn(move || job.call())
            };
            timer.request_shutdown();
            while timer.is_running() {
                thread::yield_now();
            }
            match caller.join().unwrap() {
                Dispatch::Deferred => {
                    assert_eq!(runs.load(SeqCst), 2, "a handed-over call was not run")
                }
                Dispatch::Closed => assert_eq!(runs.load(SeqCst), 1, "a Closed call ran"),
                other => panic!("a call inside the window was answered {other:?}"),
            }
            assert!(!job.is_pending(), "a deferral stranded");
            drop(Arc::into_inner(job).expect("the caller is done"));
            drop(timer);
        },
    );
}
