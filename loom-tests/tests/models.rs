//! Every interleaving of admit, run, try_run, release, panic and cancel, under loom.
//!
//! Each model names the mutants (deliberately broken variants of the crate, see
//! `loom-tests/src/lib.rs`) it must catch; `.ci/test` runs each mutant against its models and
//! expects them to fail.
#![cfg(loom)]

use atomic_throttle::{
    Admission, Clock, ManualClock, NotRun, OwnedAdmission, OwnedDeferral, Throttle,
};
use loom::sync::atomic::{AtomicBool, AtomicU32};
use loom::thread;
use loom_tests::{demonstrate_failure, silence_expected_panics, verify, verify_bounded};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_millis(10);

/// A throttle that has run once at time zero and has an owner holding the deferral.
fn with_owner() -> (
    Arc<Throttle<ManualClock>>,
    ManualClock,
    OwnedDeferral<ManualClock>,
) {
    let clock = ManualClock::new();
    let throttle = Arc::new(Throttle::with_clock(T, clock.clone()).unwrap());
    assert!(throttle.admit().is_now());
    let OwnedAdmission::Deferred(owner) = throttle.admit_owned() else {
        panic!("expected Deferred")
    };
    (throttle, clock, owner)
}

/// An admission from another thread that must not run Now: a Deferred answer is given up at
/// once. Returns whether it was Coalesced.
fn admit_expecting_no_run(throttle: &Throttle<ManualClock>) -> bool {
    match throttle.admit() {
        Admission::Now => panic!("G1: a second run inside the window"),
        Admission::Deferred(deferral) => {
            drop(deferral);
            false
        }
        Admission::Coalesced => true,
        Admission::Suppressed { .. } => unreachable!("not a leading-only throttle"),
    }
}

/// G2 after every owner is gone: nothing pending, and the next call is not Coalesced.
fn assert_not_stranded(throttle: &Throttle<ManualClock>) {
    assert!(!throttle.is_pending(), "G2: a deferral outlived its owner");
    assert!(
        !throttle.admit().is_coalesced(),
        "G2: Coalesced behind an owner who is gone"
    );
}

/// Model 1: three first admissions at once give exactly one Now, one Deferred, one Coalesced.
#[test]
fn model_1_concurrent_first_admissions() {
    verify(
        "model 1",
        &[("load_store", "exactly one leading run")],
        || {
            let throttle = Arc::new(Throttle::with_clock(T, ManualClock::new()).unwrap());
            let callers: Vec<_> = (0..3)
                .map(|_| {
                    let throttle = throttle.clone();
                    thread::spawn(move || throttle.admit_owned())
                })
                .collect();
            // Deferrals are held until every caller has answered, so at most one can exist.
            let answers: Vec<_> = callers.into_iter().map(|c| c.join().unwrap()).collect();
            let count = |f: fn(&OwnedAdmission<ManualClock>) -> bool| {
                answers.iter().filter(|a| f(a)).count()
            };
            assert_eq!(
                count(|a| matches!(a, OwnedAdmission::Now)),
                1,
                "exactly one leading run"
            );
            assert_eq!(
                count(|a| matches!(a, OwnedAdmission::Deferred(_))),
                1,
                "exactly one owner"
            );
            assert_eq!(count(|a| matches!(a, OwnedAdmission::Coalesced)), 1);
            assert!(throttle.is_pending());
        },
    );
}

/// Model 2: the owner runs at its deadline while two callers admit. No caller runs inside
/// either window (G1), and calls after the deferred run see its new window.
#[test]
fn model_2_owner_runs_while_others_admit() {
    verify("model 2", &[("split_stamp", "G1")], || {
        let (throttle, clock, owner) = with_owner();
        let deadline = owner.deadline();
        let runner = thread::spawn(move || owner.run(|| clock.now_nanos()).unwrap());
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let throttle = throttle.clone();
                thread::spawn(move || admit_expecting_no_run(&throttle))
            })
            .collect();
        for caller in callers {
            caller.join().unwrap();
        }
        let ran_at = runner.join().unwrap();
        assert!(
            ran_at >= deadline,
            "ran at {ran_at}, before its deadline {deadline}"
        );
        assert!(
            ran_at >= T.as_nanos() as u64,
            "G1: the deferred run came too soon"
        );
        // The deferred run opened a new window: the next call is Deferred, not Now.
        assert!(throttle.admit().is_deferred());
    });
}

/// The departing owner runs on one thread while two callers admit on two others. Neither
/// caller may run inside the window; one that claims the deferral after the owner left runs
/// it with `run_new_owner`, which returns the clock's reading at the run, no earlier than the
/// deadline. Afterwards nothing may be stranded (G2).
fn owner_departs_while_two_callers_admit(
    throttle: Arc<Throttle<ManualClock>>,
    clock: ManualClock,
    departing: impl FnOnce() + Send + 'static,
    run_new_owner: fn(OwnedDeferral<ManualClock>, ManualClock) -> u64,
) {
    let departing = thread::spawn(departing);
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (throttle, clock) = (throttle.clone(), clock.clone());
            thread::spawn(move || match throttle.admit_owned() {
                OwnedAdmission::Now => panic!("G1: a run inside the window"),
                OwnedAdmission::Deferred(deferral) => {
                    let deadline = deferral.deadline();
                    assert!(
                        run_new_owner(deferral, clock) >= deadline,
                        "ran before its deadline"
                    );
                }
                OwnedAdmission::Coalesced => {}
                OwnedAdmission::Suppressed { .. } => unreachable!("not leading-only"),
            })
        })
        .collect();
    departing.join().unwrap();
    for caller in callers {
        caller.join().unwrap();
    }
    assert_not_stranded(&throttle);
}

/// A future that is pending once, then ready: an await point, as a timer's would be.
struct AwaitPoint(bool);

impl std::future::Future for AwaitPoint {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            std::task::Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
}

/// Model 3: the owner panics while two callers admit. Afterwards nothing is stranded, and a
/// caller that claimed the deferral after the release can run it.
#[test]
fn model_3_owner_panics() {
    silence_expected_panics();
    verify("model 3", &[("no_release", "G2")], || {
        let (throttle, clock, owner) = with_owner();
        let crash = move || {
            let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                let _owner = owner;
                panic!("owner crashed");
            }));
            assert!(crashed.is_err());
        };
        owner_departs_while_two_callers_admit(throttle, clock, crash, |deferral, clock| {
            deferral.run(|| clock.now_nanos()).unwrap()
        });
    });
}

/// Model 4: the owner's future is polled once, holding the deferral across an await, then
/// dropped (cancelled) while two callers admit. The same checks as model 3; a new owner runs
/// its deferral inside a future driven by loom's `block_on`.
#[test]
fn model_4_owner_future_cancelled() {
    use std::future::Future;
    use std::task::{Context, Waker};

    verify("model 4", &[("no_release", "G2")], || {
        let (throttle, clock, owner) = with_owner();
        let cancel = move || {
            let mut task = Box::pin(async move {
                let owner = owner;
                AwaitPoint(false).await;
                let _ = owner.run(|| unreachable!("a cancelled task ran"));
            });
            let mut cx = Context::from_waker(Waker::noop());
            assert!(task.as_mut().poll(&mut cx).is_pending());
            drop(task); // cancelled mid-wait
        };
        owner_departs_while_two_callers_admit(throttle, clock, cancel, |deferral, clock| {
            loom::future::block_on(async move {
                AwaitPoint(false).await;
                deferral.run(|| clock.now_nanos()).unwrap()
            })
        });
    });
}

/// Model 5: a deferral is cancelled and a caller claims the next one, while the revoked
/// owner's deferral is dropped. The revoked owner's release must not clear the new owner's
/// claim, whichever order the three come in.
#[test]
fn model_5_a_revoked_owners_release_spares_the_next_owner() {
    verify("model 5", &[("blind_release", "stale release")], || {
        let (throttle, _clock, owner) = with_owner();
        let leaving = thread::spawn(move || drop(owner));
        let next = {
            let throttle = throttle.clone();
            thread::spawn(move || {
                throttle.cancel();
                match throttle.admit_owned() {
                    OwnedAdmission::Now => panic!("G1: a run inside the window"),
                    OwnedAdmission::Deferred(deferral) => Some(deferral),
                    OwnedAdmission::Coalesced => None,
                    OwnedAdmission::Suppressed { .. } => unreachable!("not leading-only"),
                }
            })
        };
        leaving.join().unwrap();
        if let Some(next_owner) = next.join().unwrap() {
            assert!(
                throttle.is_pending(),
                "a stale release cleared the next owner's deferral"
            );
            assert!(throttle.admit().is_coalesced(), "two owners at once");
            drop(next_owner);
        }
        assert_not_stranded(&throttle);
    });
}

/// Model 6: the owner tries to run before its deadline (refused), moves time to the
/// deadline, and tries again (runs), while two callers admit and try to run early.
#[test]
fn model_6_try_run_around_the_deadline() {
    verify("model 6", &[("split_stamp", "G1")], || {
        let (throttle, clock, owner) = with_owner();
        let deadline = owner.deadline();
        let runner = thread::spawn(move || {
            let Err(NotRun::NotDue(owner)) =
                owner.try_run(|| unreachable!("ran before the deadline"))
            else {
                panic!("not due yet, and still the owner's")
            };
            clock.advance(owner.remaining());
            owner.try_run(|| clock.now_nanos()).unwrap()
        });
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let throttle = throttle.clone();
                thread::spawn(move || match throttle.admit_owned() {
                    OwnedAdmission::Now => panic!("G1: a run inside the window"),
                    // Claimed right after the owner's run: not due for a whole window.
                    OwnedAdmission::Deferred(deferral) => {
                        assert!(
                            deferral.try_run(|| ()).is_err(),
                            "G1: ran inside the new window"
                        );
                    }
                    OwnedAdmission::Coalesced => {}
                    OwnedAdmission::Suppressed { .. } => unreachable!("not leading-only"),
                })
            })
            .collect();
        for caller in callers {
            caller.join().unwrap();
        }
        assert!(runner.join().unwrap() >= deadline);
        assert_not_stranded(&throttle);
    });
}

/// The G3 scenario: a caller writes `data`, then is Coalesced; the covering run reads `data`
/// whenever it can tell (through a Relaxed flag, which orders nothing) that the caller was
/// Coalesced. `publishing` picks `admit_publishing` over `admit`.
fn coalesced_write_then_covering_read(publishing: bool) {
    let (throttle, _clock, owner) = with_owner();
    let data = Arc::new(AtomicU32::new(0));
    let coalesced = Arc::new(AtomicBool::new(false));
    let caller = {
        let (throttle, data, coalesced) = (throttle.clone(), data.clone(), coalesced.clone());
        thread::spawn(move || {
            data.store(1, Relaxed);
            let answer = if publishing {
                throttle.admit_publishing()
            } else {
                throttle.admit()
            };
            if answer.is_coalesced() {
                coalesced.store(true, Relaxed);
            }
        })
    };
    let runner = thread::spawn(move || {
        owner
            .run(|| {
                if coalesced.load(Relaxed) {
                    assert_eq!(
                        data.load(Relaxed),
                        1,
                        "the covering run missed the coalesced write"
                    );
                }
            })
            .unwrap()
    });
    caller.join().unwrap();
    runner.join().unwrap();
}

/// Model 7a: with `admit_publishing`, a Coalesced caller's earlier writes are visible to the
/// run that covers it.
#[test]
fn model_7a_admit_publishing_publishes_to_the_covering_run() {
    verify(
        "model 7a",
        &[("relaxed", "missed the coalesced write")],
        || coalesced_write_then_covering_read(true),
    );
}

/// Model 7b: with plain `admit`, they are not: loom finds the interleaving the docs warn of.
#[test]
fn model_7b_admit_gives_no_edge_to_the_covering_run() {
    demonstrate_failure("model 7b", "missed the coalesced write", || {
        coalesced_write_then_covering_read(false)
    });
}

/// Model 8: the clock steps backwards while two callers admit: no run inside the window, and
/// the deferral claimed behind the step still runs a full threshold after the last run.
#[test]
fn model_8_clock_steps_backwards() {
    verify("model 8", &[("wrapping_elapsed", "G1")], || {
        let clock = ManualClock::new();
        clock.advance(Duration::from_millis(100));
        let throttle = Arc::new(Throttle::with_clock(T, clock.clone()).unwrap());
        assert!(throttle.admit().is_now());
        let stepper = {
            let clock = clock.clone();
            thread::spawn(move || clock.rewind(Duration::from_millis(50)))
        };
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let throttle = throttle.clone();
                thread::spawn(move || admit_expecting_no_run(&throttle))
            })
            .collect();
        stepper.join().unwrap();
        for caller in callers {
            caller.join().unwrap();
        }
        assert!(!throttle.is_pending());
        // Nothing is pending, and the clock is behind the window's end: only Deferred is right.
        let deferral = match throttle.admit() {
            Admission::Deferred(deferral) => deferral,
            other => panic!("G1: {other:?} behind the backward step, inside the window"),
        };
        let ran_at = deferral.run(|| clock.now_nanos()).unwrap();
        assert!(ran_at >= Duration::from_millis(100).as_nanos() as u64 + T.as_nanos() as u64);
    });
}

/// Model 9: the crate's own async wait (`wait_with`, which the `tokio` feature's `wait_async`
/// is built on) is polled once, parks on its timer, and is dropped mid-wait while two callers
/// admit. Nothing is stranded, and a caller that claims the deferral afterwards completes its
/// own `wait_with` (driven by loom's `block_on`) at the deadline.
#[test]
fn model_9_wait_with_cancelled_mid_wait() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    /// A timer that never fires: the wait stays parked until it is dropped.
    struct Parked;
    impl Future for Parked {
        type Output = ();
        fn poll(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
    }

    verify("model 9", &[("no_release", "G2")], || {
        let (throttle, clock, owner) = with_owner();
        let cancel = move || {
            let mut wait = Box::pin(owner.wait_with(|_| Parked));
            let mut cx = Context::from_waker(Waker::noop());
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            drop(wait); // cancelled while parked on its timer
        };
        owner_departs_while_two_callers_admit(throttle, clock, cancel, |deferral, clock| {
            // A timer that fires at once, after moving the manual clock on.
            let timer = |wait| {
                clock.advance(wait);
                std::future::ready(())
            };
            loom::future::block_on(deferral.wait_with(timer)).unwrap();
            clock.now_nanos()
        });
    });
}

/// Model 10: the detached throttle's hand-offs, with the default `LeadingRun::OnTimer`. The
/// leading run is handed to the timer thread (a loom thread, parked while idle); then two
/// callers race inside the window: one hands its deferral over, the other is Coalesced. The timer thread must wake, wait out the deadline and run the work, with no
/// shutdown to nudge it: the main thread yields until the run has happened. (It cannot park
/// for the run to unpark it: loom's `unpark` also wakes a thread blocked in `join`.)
#[test]
fn model_10_detached_hand_off_to_the_timer_thread() {
    use atomic_throttle::{Detached, Dispatch};
    use std::sync::atomic::Ordering::SeqCst;

    // The timer thread, the caller and the main thread each take many steps: unbounded, this
    // model takes minutes; with three preemptions, well under a second.
    verify_bounded(
        "model 10",
        Some(3),
        &[("no_unpark", "maximum number of branches")],
        || {
            let clock = ManualClock::new();
            let runs = Arc::new(AtomicU32::new(0));
            let job = Detached::builder(Throttle::with_clock(T, clock.clone()).unwrap())
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
            let mine = job.call();
            let theirs = caller.join().unwrap();
            // Inside the window: one of them claims the deferral; the other is Coalesced into it,
            // or, if the timer thread already ran it, claims the next one.
            assert!(
                mine != Dispatch::Leading && theirs != Dispatch::Leading,
                "G1: a run inside the window"
            );
            assert!(mine == Dispatch::Deferred || theirs == Dispatch::Deferred);
            let deferred = [mine, theirs]
                .iter()
                .filter(|a| **a == Dispatch::Deferred)
                .count();
            // Covered without a shutdown: the timer thread runs each deferral on its own.
            let expected = 1 + deferred as u32;
            while runs.load(SeqCst) < expected {
                thread::yield_now();
            }
            assert!(
                clock.now_nanos() >= T.as_nanos() as u64,
                "ran before the deadline"
            );
            drop(Arc::into_inner(job).expect("the caller is done")); // joins the timer thread
            assert_eq!(runs.load(SeqCst), expected, "a run too many");
        },
    );
}
