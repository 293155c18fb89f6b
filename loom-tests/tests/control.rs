//! Every interleaving of the controls on a pending run: a run that keeps its stamp, a lease
//! takeover racing the late owner, cancel and flush waking a waiting owner, a live threshold
//! change, and the suppressed-call counters.
//!
//! Each model names the mutants (deliberately broken variants of the crate) it must catch;
//! `.ci/test` runs each mutant against its models and expects them to fail.
#![cfg(loom)]

use atomic_throttle::{Admission, ManualClock, NotRun, OwnedAdmission, Revoked, Throttle};
use loom::sync::atomic::AtomicBool;
use loom::thread;
use loom_tests::verify;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_millis(10);
const LEASE: Duration = Duration::from_millis(5);

/// Model 11: a deferral whose run kept the stamp (a zero threshold, the clock at the stamp)
/// is dropped after its work claimed the next deferral, which installs bit for bit the word
/// the first owner claimed; meanwhile another caller admits. The finished owner must release
/// nothing.
#[test]
fn model_11_a_finished_run_releases_nothing() {
    verify(
        "model 11",
        &[(
            "release_after_run",
            "the finished run released a live claim",
        )],
        || {
            let clock = ManualClock::new();
            let throttle = Arc::new(Throttle::with_clock(T, clock.clone()).unwrap());
            assert!(throttle.admit().is_now());
            let OwnedAdmission::Deferred(owner) = throttle.admit_owned() else {
                panic!("expected Deferred")
            };
            // A zero threshold: due at once, and a run at the stamp's own reading keeps it.
            throttle.set_threshold(Duration::ZERO).unwrap();
            let caller = {
                let throttle = throttle.clone();
                thread::spawn(move || {
                    // With a zero threshold, or past the window, a caller may run; never a
                    // second claim while one is live.
                    let _ = throttle.admit();
                })
            };
            let next = owner
                .run(|| {
                    throttle.set_threshold(T).unwrap();
                    throttle.admit_owned()
                })
                .unwrap();
            caller.join().unwrap();
            if let OwnedAdmission::Deferred(next) = next {
                assert!(
                    throttle.is_pending(),
                    "the finished run released a live claim"
                );
                drop(next);
            }
            assert!(!throttle.is_pending());
        },
    );
}

/// A throttle with a lease, run once, whose owner is late: its lease has expired.
fn with_late_owner() -> (
    Arc<Throttle<ManualClock>>,
    ManualClock,
    atomic_throttle::OwnedDeferral<ManualClock>,
) {
    let clock = ManualClock::new();
    let throttle = Arc::new(
        Throttle::builder(T)
            .clock(clock.clone())
            .lease(LEASE)
            .build()
            .unwrap(),
    );
    assert!(throttle.admit().is_now());
    let OwnedAdmission::Deferred(owner) = throttle.admit_owned() else {
        panic!("expected Deferred")
    };
    clock.advance(T + LEASE);
    (throttle, clock, owner)
}

/// Model 12: the late owner comes back and tries to run while a caller takes its deferral
/// over. Exactly one of them runs: the takeover refuses the late owner, or the late owner's
/// stamp leaves nothing to take over.
#[test]
fn model_12_a_late_owners_run_races_a_takeover() {
    verify(
        "model 12",
        &[(
            "takeover_keeps_claim",
            "G1: the late owner and the takeover",
        )],
        || {
            let (throttle, _clock, owner) = with_late_owner();
            let late = thread::spawn(move || match owner.try_run(|| ()) {
                Ok(()) => true,
                Err(NotRun::Revoked(why)) => {
                    assert_eq!(why, Revoked::TakenOver);
                    false
                }
                Err(NotRun::NotDue(_)) => panic!("past its deadline, yet not due"),
            });
            let taker = {
                let throttle = throttle.clone();
                thread::spawn(move || throttle.admit().is_now())
            };
            let late_ran = late.join().unwrap();
            let took_over = taker.join().unwrap();
            assert!(
                !(late_ran && took_over),
                "G1: the late owner and the takeover both ran"
            );
            assert!(late_ran || took_over, "nobody ran the overdue run");
            assert!(!throttle.is_pending());
        },
    );
}

/// Model 13: a caller takes the deferral over and claims the next one, while the late owner's
/// deferral is dropped. The takeover leaves nothing pending, and the late owner's release
/// never clears the new owner's claim.
#[test]
fn model_13_a_late_owners_release_races_the_new_owner() {
    verify(
        "model 13",
        &[("takeover_keeps_claim", "a takeover")],
        || {
            let (throttle, _clock, owner) = with_late_owner();
            let late = thread::spawn(move || drop(owner));
            let taker = {
                let throttle = throttle.clone();
                thread::spawn(move || {
                    if !throttle.admit().is_now() {
                        return None; // the late owner's release came first
                    }
                    match throttle.admit_owned() {
                        OwnedAdmission::Deferred(next) => Some(next),
                        OwnedAdmission::Coalesced => {
                            panic!("a takeover left the abandoned claim pending")
                        }
                        OwnedAdmission::Now => {
                            panic!("a takeover stamped nothing: Now right after it")
                        }
                        other => panic!("{other:?} right after a run"),
                    }
                })
            };
            late.join().unwrap();
            if let Some(next) = taker.join().unwrap() {
                assert!(
                    throttle.is_pending(),
                    "the late owner's release cleared the new claim"
                );
                drop(next);
            }
        },
    );
}

/// A throttle run once on a clock that moves only when told, and an owner blocked in `run`:
/// only an event can wake it.
fn with_blocked_owner(
    work: impl FnOnce() -> u64 + Send + 'static,
) -> (Arc<Throttle<ManualClock>>, BlockedOwner) {
    let clock = ManualClock::with_auto_advance(false);
    let throttle = Arc::new(Throttle::with_clock(T, clock).unwrap());
    assert!(throttle.admit().is_now());
    let OwnedAdmission::Deferred(owner) = throttle.admit_owned() else {
        panic!("expected Deferred")
    };
    let done = Arc::new(AtomicBool::new(false));
    let handle = {
        let done = done.clone();
        thread::spawn(move || {
            let outcome = owner.run(work);
            done.store(true, SeqCst);
            outcome
        })
    };
    (throttle, BlockedOwner { done, handle })
}

/// The owner's thread, and whether it has returned.
struct BlockedOwner {
    done: Arc<AtomicBool>,
    handle: thread::JoinHandle<Result<u64, Revoked>>,
}

impl BlockedOwner {
    /// Yields until the owner returns, then joins it. (Joining at once would block the model;
    /// if the owner is never woken, loom then reports a deadlock it cannot unwind from. A
    /// yield loop is reported as a livelock instead: "maximum number of branches".)
    fn join(self) -> Result<u64, Revoked> {
        while !self.done.load(SeqCst) {
            thread::yield_now();
        }
        self.handle.join().unwrap()
    }
}

/// Model 14: a flush from another thread while the owner waits on a clock that never moves:
/// the owner is woken and runs at once, whenever the flush comes.
#[test]
fn model_14_a_flush_wakes_the_waiting_owner() {
    verify(
        "model 14",
        &[("silent_events", "maximum number of branches")],
        || {
            let (throttle, owner) = with_blocked_owner(|| 7);
            assert!(throttle.flush());
            assert_eq!(owner.join(), Ok(7), "the flushed run");
            assert!(!throttle.is_pending());
            assert!(!throttle.flush());
        },
    );
}

/// Model 15: a cancel from another thread while the owner waits: it is woken and returns
/// without running, and the next call claims a new deferral.
#[test]
fn model_15_a_cancel_wakes_the_waiting_owner() {
    verify(
        "model 15",
        &[("silent_events", "maximum number of branches")],
        || {
            let (throttle, owner) = with_blocked_owner(|| unreachable!("a cancelled run ran"));
            assert!(throttle.cancel());
            assert_eq!(owner.join(), Err(Revoked::Cancelled));
            assert!(!throttle.is_pending());
            let next = throttle.admit();
            assert!(
                next.is_deferred(),
                "{next:?} after a cancel inside the window"
            );
        },
    );
}

/// Model 16: a new threshold races an admission. Each decision uses the threshold it read, so
/// the run in between is at least the old threshold after the last; once the change has
/// returned, every decision uses the new one.
#[test]
fn model_16_a_live_threshold_change_races_admissions() {
    verify(
        "model 16",
        &[("stale_threshold", "G1 across a change")],
        || {
            let clock = ManualClock::new();
            let throttle = Arc::new(Throttle::with_clock(T, clock.clone()).unwrap());
            assert!(throttle.admit().is_now());
            clock.advance(Duration::from_millis(15));
            let changer = {
                let throttle = throttle.clone();
                thread::spawn(move || throttle.set_threshold(T * 2).unwrap())
            };
            let caller = {
                let throttle = throttle.clone();
                // 15 ms after the last run: Now under the old threshold, Deferred under the new.
                thread::spawn(move || throttle.admit().is_now())
            };
            changer.join().unwrap();
            let ran = caller.join().unwrap();
            let last = throttle.last_run().unwrap();
            assert_eq!(last, if ran { 15_000_000 } else { 0 });
            // The change has returned: 15 ms after a run at 0 is inside the new window.
            let answer = throttle.admit();
            match answer {
                Admission::Now => {
                    panic!("G1 across a change: a run 15 ms after the last with T = 20 ms")
                }
                Admission::Deferred(deferral) => assert_eq!(
                    deferral.deadline(),
                    last + 20_000_000,
                    "G1 across a change: the deadline does not follow the new threshold"
                ),
                _ => {}
            };
        },
    );
}

/// Model 17: two callers coalesce twice each while a third takes the count. Every counted call
/// is taken exactly once: by the concurrent take, or by the one after.
#[test]
fn model_17_every_counted_call_is_taken_exactly_once() {
    verify("model 17", &[("shared_count", "counted")], || {
        let throttle = Arc::new(
            Throttle::builder(T)
                .clock(ManualClock::new())
                .counting(true)
                .build()
                .unwrap(),
        );
        assert!(throttle.admit().is_now());
        let OwnedAdmission::Deferred(owner) = throttle.admit_owned() else {
            panic!("expected Deferred")
        };
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let throttle = throttle.clone();
                thread::spawn(move || {
                    for _ in 0..2 {
                        assert!(throttle.admit().is_coalesced());
                    }
                })
            })
            .collect();
        let taker = {
            let throttle = throttle.clone();
            thread::spawn(move || throttle.take_skipped())
        };
        for caller in callers {
            caller.join().unwrap();
        }
        let taken = taker.join().unwrap() + throttle.take_skipped();
        assert_eq!(taken, 4, "counted {taken} of 4 coalesced calls");
        assert_eq!(throttle.take_skipped(), 0, "counted twice");
        assert_eq!(throttle.stats().unwrap().coalesced, 4);
        drop(owner);
    });
}

/// Model 18: an owner's deferred run races a caller that offers a value and is Coalesced
/// into it. The covering run takes the latest value offered (the caller's, or the owner's if
/// that came later), and no value is left behind with no run to come: the offer precedes the
/// caller's publishing admission, which orders it before the run's stamp.
#[test]
fn model_18_the_covering_run_gets_the_latest_value() {
    use atomic_throttle::{Latest, Outcome};
    verify(
        "model 18",
        &[("late_value", "a value was left with no run to come")],
        || {
            let throttle = Throttle::with_clock(T, ManualClock::new()).unwrap();
            let latest = Arc::new(Latest::from_throttle(throttle, |value: u32| value));
            assert_eq!(latest.call(0), Outcome::Now(0));
            let callers: Vec<_> = [1, 2]
                .into_iter()
                .map(|value| {
                    let latest = latest.clone();
                    thread::spawn(move || latest.call(value))
                })
                .collect();
            let outcomes: Vec<_> = callers.into_iter().map(|c| c.join().unwrap()).collect();
            for outcome in &outcomes {
                match outcome {
                    Outcome::Deferred(value) => assert!([1, 2].contains(value)),
                    Outcome::Coalesced => {}
                    other => panic!("{other:?} inside the window"),
                }
            }
            assert!(
                !latest.holds_a_value(),
                "a value was left with no run to come: {outcomes:?}"
            );
        },
    );
}
