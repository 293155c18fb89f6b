//! Callers waiting in `Throttled::call_covered` on a throttle with a lease, behind owners
//! inside and outside the wrapper: the record of runs under way stays right when claim words
//! repeat and owners never come back, a run from before the call holds nobody up, and a
//! live owner's waiters get its result however late it stamps.

#[path = "support/expected_panics.rs"]
mod expected_panics;
#[path = "support/free_on_failure.rs"]
mod free_on_failure;
#[path = "support/hooked_clock.rs"]
mod hooked_clock;
#[path = "support/wait_for.rs"]
mod wait_for;

use atomic_throttle::{Admission, Clock, ManualClock, Outcome, Throttle, Throttled};
use free_on_failure::FreeOnFailure;
use hooked_clock::Hooked;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wait_for::wait_for;

const T: Duration = Duration::from_millis(10);
const LEASE: Duration = Duration::from_millis(5);

fn leased<F: Fn() -> u32>(clock: &ManualClock, work: F) -> Arc<Throttled<F, ManualClock>> {
    let throttle = Throttle::builder(T)
        .clock(clock.clone())
        .lease(LEASE)
        .build()
        .unwrap();
    Arc::new(Throttled::from_throttle(throttle, work))
}

/// A work that numbers its runs (1, 2, ...); the runs given gates block until the test opens
/// them (or, if the test has failed, for at most twice its patience).
#[derive(Clone)]
struct Gated {
    runs: Arc<AtomicU32>,
    gates: Arc<Vec<(u32, AtomicBool)>>,
}

impl Gated {
    fn new(gated: &[u32]) -> Self {
        Self {
            runs: Arc::default(),
            gates: Arc::new(gated.iter().map(|&n| (n, AtomicBool::new(false))).collect()),
        }
    }

    fn work(&self) -> impl Fn() -> u32 + Send + Sync + 'static {
        let this = self.clone();
        move || {
            let n = this.runs.fetch_add(1, Relaxed) + 1;
            if let Some((_, open)) = this.gates.iter().find(|(k, _)| *k == n) {
                let give_up = Instant::now() + 2 * wait_for::patience();
                while !open.load(Relaxed) && Instant::now() < give_up {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            n
        }
    }

    fn open(&self, n: u32) {
        let gate = self.gates.iter().find(|(k, _)| *k == n).unwrap();
        gate.1.store(true, Relaxed);
    }

    fn started(&self) -> u32 {
        self.runs.load(Relaxed)
    }
}

/// Runs `job.throttle().admit()` on a thread and, if Deferred, runs that deferral (outside
/// the wrapper); says whether it ran.
fn outside_owner<F: Fn() -> u32 + Send + Sync + 'static>(
    job: &Arc<Throttled<F, ManualClock>>,
) -> std::thread::JoinHandle<bool> {
    let job = job.clone();
    std::thread::spawn(move || match job.throttle().admit() {
        Admission::Deferred(deferral) => deferral.run(|| ()).is_ok(),
        _ => false,
    })
}

/// A waiter behind a run outside the wrapper ends when that run starts, even while a run of
/// the wrapper's that began before its call (the one whose window the claim was made in)
/// still runs: that run cannot cover it.
#[test]
fn a_wrapper_run_from_before_the_call_holds_no_waiter_up() {
    let clock = ManualClock::with_auto_advance(false);
    let _free = FreeOnFailure(&clock);
    let gated = Gated::new(&[1]);
    let job = leased(&clock, gated.work());
    let leading = std::thread::spawn({
        let job = job.clone();
        move || job.call_covered()
    });
    wait_for(|| gated.started() == 1, "the leading run to start");
    let outside = outside_owner(&job);
    wait_for(|| job.throttle().is_pending(), "the outside owner to claim");
    let waiter = std::thread::spawn({
        let job = job.clone();
        move || job.call_covered()
    });
    wait_for(|| job.waiting() >= 1, "the waiter waits");
    clock.advance(T);
    assert!(outside.join().unwrap(), "the outside run ran");
    wait_for(
        || waiter.is_finished(),
        "the waiter, covered by the outside run, while the leading run still runs",
    );
    gated.open(1);
    assert_eq!(waiter.join().unwrap(), Outcome::Coalesced);
    assert_eq!(leading.join().unwrap(), Outcome::Now(1));
}

/// Two runs under way that hold the same claim word (a claim made at the stamp of a run just
/// flushed, on a clock that has not moved, repeats that run's word): each settles its own
/// entry, so the one whose owner never comes back does not leave the other's behind, for
/// ever "under way", holding up every later waiter behind a run outside the wrapper.
#[cfg(feature = "tokio")]
#[test]
fn runs_that_hold_the_same_claim_word_settle_their_own_entries() {
    use std::future::Future;
    let clock = ManualClock::with_auto_advance(false);
    let _free = FreeOnFailure(&clock);
    let gated = Gated::new(&[2, 3]);
    let job = leased(&clock, gated.work());
    assert_eq!(job.call(), Outcome::Now(1));
    // A deferred run of the wrapper's, still running at T.
    let first = std::thread::spawn({
        let job = job.clone();
        move || job.call_covered()
    });
    wait_for(|| job.throttle().is_pending(), "the first owner to claim");
    clock.advance(T);
    wait_for(|| gated.started() == 2, "the first owner's run");
    // A second claims in its window, is flushed, and runs at the same stamp.
    let second = std::thread::spawn({
        let job = job.clone();
        move || job.call_covered()
    });
    wait_for(|| job.throttle().is_pending(), "the second owner to claim");
    assert!(job.throttle().flush());
    wait_for(|| gated.started() == 3, "the second owner's run");
    // A third claims the same word again, from a `call_async` future polled once and leaked.
    let mut third = Box::pin({
        let job = job.clone();
        async move { job.call_async().await }
    });
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(third.as_mut().poll(&mut context).is_pending());
    assert!(job.throttle().is_pending(), "the third owner claimed");
    std::mem::forget(third);
    gated.open(2);
    assert_eq!(first.join().unwrap(), Outcome::Deferred(2));
    gated.open(3);
    assert_eq!(second.join().unwrap(), Outcome::Deferred(3));
    assert!(job.throttle().cancel(), "the leaked claim, withdrawn");
    // A leading run and a deferred run, both outside the wrapper.
    clock.advance(T);
    assert!(job.throttle().admit().is_now());
    let outside = outside_owner(&job);
    wait_for(|| job.throttle().is_pending(), "the outside owner to claim");
    let waiter = std::thread::spawn({
        let job = job.clone();
        move || job.call_covered()
    });
    wait_for(|| job.waiting() >= 1, "the waiter waits");
    clock.advance(T);
    assert!(outside.join().unwrap(), "the outside run ran");
    wait_for(
        || waiter.is_finished(),
        "the waiter, covered by the outside run",
    );
    assert_eq!(waiter.join().unwrap(), Outcome::Coalesced);
}

/// An owner of the wrapper that stamps its run late (past its deadline and the lease, and
/// nobody took it over) is a live owner: the waiters behind it get its run's result, never
/// `Coalesced` from a look between its stamp and the record of its start. Its stamp and that
/// record are one step for them. (A race: rounds for two seconds, many waiters each.)
#[test]
fn waiters_behind_an_owner_that_stamps_late_get_its_result() {
    const WAITERS: usize = 32;
    let until = Instant::now() + Duration::from_secs(2);
    let (mut rounds, mut wrong) = (0, Vec::new());
    while Instant::now() < until {
        rounds += 1;
        let clock = ManualClock::with_auto_advance(false);
        let _free = FreeOnFailure(&clock);
        let runs = Arc::new(AtomicU32::new(0));
        let job = leased(&clock, {
            let runs = runs.clone();
            move || runs.fetch_add(1, Relaxed) + 1
        });
        assert_eq!(job.call(), Outcome::Now(1));
        let owner = std::thread::spawn({
            let job = job.clone();
            move || job.call_covered()
        });
        wait_for(|| job.throttle().is_pending(), "the owner to claim");
        let waiters: Vec<_> = (0..WAITERS)
            .map(|_| {
                let job = job.clone();
                std::thread::spawn(move || job.call_covered())
            })
            .collect();
        wait_for(|| job.waiting() >= WAITERS, "the waiters wait");
        // Due, and late enough to be taken over: the owner and the waiters race.
        clock.advance(T + LEASE);
        let owner = owner.join().unwrap();
        let answers: Vec<_> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        if let Outcome::Deferred(result) = owner {
            if answers.iter().any(|a| *a != Outcome::Covered(result)) {
                wrong.push((rounds, answers));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {rounds} rounds: a waiter behind the owner that ran was not given its result: \
         {:?}",
        wrong.len(),
        wrong.first()
    );
}

type CalledBack = Throttled<fn() -> u32, Hooked>;

/// A clock that calls back into the wrapper (here: `waiting()`) while an owner stamps its run
/// and waiters look: nothing deadlocks. A waiter whose clock panics ends with that panic, and
/// is no longer counted as waiting.
#[test]
fn a_clock_that_calls_back_or_panics_leaves_no_one_stuck() {
    // At every reading while `job` is set, reads `job.waiting()` (which takes the wrapper's
    // record lock) and, on the thread named in `panic_on`, panics: the crate reads the clock
    // without holding that lock, and a panicking reading ends only the caller that made it.
    let called_back: Arc<std::sync::Mutex<Option<std::sync::Weak<CalledBack>>>> = Arc::default();
    let panic_on: Arc<std::sync::Mutex<Option<std::thread::ThreadId>>> = Arc::default();
    let clock = Hooked::new(ManualClock::with_auto_advance(false), {
        let (called_back, panic_on) = (called_back.clone(), panic_on.clone());
        move |clock| {
            let job = called_back.lock().unwrap().clone();
            if let Some(job) = job.and_then(|job| job.upgrade()) {
                let _ = job.waiting();
            }
            if *panic_on.lock().unwrap() == Some(std::thread::current().id()) {
                expected_panics::expected("the clock failed");
            }
            clock.now_nanos()
        }
    });
    let _free = FreeOnFailure(&clock.clock);
    let throttle = Throttle::builder(T)
        .clock(clock.clone())
        .lease(LEASE)
        .build()
        .unwrap();
    let work: fn() -> u32 = || 4;
    let job = Arc::new(Throttled::from_throttle(throttle, work));
    *called_back.lock().unwrap() = Some(Arc::downgrade(&job));
    assert_eq!(job.call_covered(), Outcome::Now(4));
    let owner = std::thread::spawn({
        let job = job.clone();
        move || job.call_covered()
    });
    wait_for(|| job.throttle().is_pending(), "the owner to claim");
    let waiter = std::thread::spawn({
        let job = job.clone();
        move || job.call_covered()
    });
    wait_for(|| job.waiting() == 1, "the waiter waits");
    clock.clock.advance(T);
    wait_for(|| owner.is_finished(), "the owner to stamp and run");
    wait_for(
        || waiter.is_finished(),
        "the waiter to get the owner's result",
    );
    assert_eq!(owner.join().unwrap(), Outcome::Deferred(4));
    assert_eq!(waiter.join().unwrap(), Outcome::Covered(4));
    // A waiter whose clock panics as it looks at the lease.
    let owner = std::thread::spawn({
        let job = job.clone();
        move || job.call_covered()
    });
    wait_for(|| job.throttle().is_pending(), "the next owner to claim");
    let panicking = std::thread::spawn({
        let job = job.clone();
        move || job.call_covered()
    });
    wait_for(|| job.waiting() == 1, "the second waiter waits");
    // Its next look reads the clock (for the lease), which panics.
    *panic_on.lock().unwrap() = Some(panicking.thread().id());
    assert!(panicking.join().is_err(), "the waiter's clock panicked");
    assert_eq!(
        job.waiting(),
        0,
        "a waiter whose thread is gone is still counted"
    );
    clock.clock.advance(T);
    assert_eq!(owner.join().unwrap(), Outcome::Deferred(4));
}

/// A `call_async` owner whose future is leaked holds its claim on a throttle without a lease
/// (documented: until `cancel()`); the waiter behind it hears of the cancel made through the
/// throttle itself, which tells the wrapper nothing: it looks again from time to time.
#[cfg(feature = "tokio")]
#[test]
fn a_waiter_behind_a_leaked_owner_hears_of_a_cancel_made_through_the_throttle() {
    use std::future::Future;
    let clock = ManualClock::with_auto_advance(false);
    let job = Arc::new(Throttled::with_clock(T, clock.clone(), || 5).unwrap());
    assert_eq!(job.call(), Outcome::Now(5));
    let mut owner = Box::pin({
        let job = job.clone();
        async move { job.call_async().await }
    });
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(owner.as_mut().poll(&mut context).is_pending());
    std::mem::forget(owner);
    let waiter = std::thread::spawn({
        let job = job.clone();
        move || job.call_covered()
    });
    wait_for(|| job.waiting() == 1, "the waiter waits");
    assert!(job.throttle().cancel());
    wait_for(|| waiter.is_finished(), "the waiter to hear of the cancel");
    assert_eq!(
        waiter.join().unwrap(),
        Outcome::Revoked(atomic_throttle::Revoked::Cancelled)
    );
}
