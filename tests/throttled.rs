//! The Neutron-style wrapper.

#[path = "support/free_on_failure.rs"]
mod free_on_failure;
#[path = "support/hooked_clock.rs"]
mod hooked_clock;
#[path = "support/wait_for.rs"]
mod wait_for;

use atomic_throttle::{Admission, Clock, ManualClock, Outcome, Revoked, Throttle, Throttled};
use free_on_failure::FreeOnFailure;
use hooked_clock::Hooked;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use wait_for::wait_for;

const T: Duration = Duration::from_millis(10);

#[test]
fn leading_deferred_and_coalesced_calls() {
    let clock = ManualClock::new();
    let runs = AtomicU32::new(0);
    let job = Throttled::with_clock(T, clock.clone(), || runs.fetch_add(1, Relaxed)).unwrap();
    assert_eq!(job.call(), Outcome::Now(0));
    // The deferred call blocks until the window ends (the manual clock advances), then runs.
    assert_eq!(job.call(), Outcome::Deferred(1));
    assert!(clock.now() >= T);
    assert_eq!(runs.load(Relaxed), 2);
}

#[test]
fn calls_during_a_pending_deferral_are_coalesced() {
    let clock = ManualClock::new();
    let job = Arc::new(Throttled::with_clock(T, clock.clone(), || ()).unwrap());
    assert_eq!(job.call(), Outcome::Now(()));
    // Claim the deferral directly, then call while it is pending.
    let owner = job.throttle().admit();
    assert!(owner.is_deferred());
    assert_eq!(job.call(), Outcome::Coalesced);
    drop(owner);
    assert_eq!(job.call(), Outcome::Deferred(()));
}

#[test]
fn a_panicking_work_does_not_stop_the_throttle() {
    let clock = ManualClock::new();
    let calls = AtomicU32::new(0);
    let job = Throttled::with_clock(T, clock.clone(), || {
        if calls.fetch_add(1, Relaxed) == 0 {
            panic!("work failed");
        }
    })
    .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.call()));
    assert!(result.is_err());
    assert!(!job.throttle().is_pending());
    assert_eq!(job.call(), Outcome::Deferred(()));
}

#[test]
fn coalesced_callers_can_block_until_their_covering_run_and_get_its_result() {
    let clock = ManualClock::with_auto_advance(false);
    let runs = AtomicU32::new(0);
    // Counting, to know when the waiters have been answered Coalesced.
    let throttle = Throttle::builder(T)
        .clock(clock.clone())
        .counting(true)
        .build()
        .unwrap();
    let job = Throttled::from_throttle(throttle, || runs.fetch_add(1, Relaxed) + 1);
    let coalesced = || job.throttle().stats().unwrap().coalesced;
    assert_eq!(job.call_covered(), Outcome::Now(1));
    std::thread::scope(|s| {
        let _free = FreeOnFailure(&clock);
        let owner = s.spawn(|| job.call_covered());
        wait_for(
            || job.throttle().is_pending(),
            "the owner claimed the deferral",
        );
        let waiters: Vec<_> = (0..4).map(|_| s.spawn(|| job.call_covered())).collect();
        // A caller that does not wait still returns at once.
        assert_eq!(job.call(), Outcome::Coalesced);
        while coalesced() < 5 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            waiters.iter().all(|w| !w.is_finished()),
            "woken before the run"
        );
        clock.advance(T);
        assert_eq!(owner.join().unwrap(), Outcome::Deferred(2));
        let patience = std::time::Instant::now() + wait_for::patience();
        while !waiters.iter().all(|w| w.is_finished()) {
            assert!(
                std::time::Instant::now() < patience,
                "out of patience: a waiting caller was never woken by its covering run"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        for waiter in waiters {
            assert_eq!(waiter.join().unwrap(), Outcome::Covered(2));
        }
    });
    // Cancelled with nothing after it: the waiter is told.
    std::thread::scope(|s| {
        let owner = s.spawn(|| job.call_covered());
        wait_for(
            || job.throttle().is_pending(),
            "the owner claimed the deferral",
        );
        let waiter = s.spawn(|| job.call_covered());
        wait_for(|| job.waiting() >= 1, "the waiter waits");
        assert!(job.throttle().cancel());
        assert_eq!(owner.join().unwrap(), Outcome::Revoked(Revoked::Cancelled));
        assert_eq!(waiter.join().unwrap(), Outcome::Revoked(Revoked::Cancelled));
    });
}

/// Blocks until every thread in `threads` has finished, failing with `what` after the test's
/// patience.
fn wait_until_finished<T>(threads: &[std::thread::ScopedJoinHandle<'_, T>], what: &str) {
    let patience = std::time::Instant::now() + wait_for::patience();
    while !threads.iter().all(|t| t.is_finished()) {
        assert!(
            std::time::Instant::now() < patience,
            "out of patience: still waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_waiter_is_covered_by_its_claims_run_even_when_that_run_keeps_the_stamp() {
    // A flush with the clock still at the last stamp: the covering run is stamped at that same
    // reading, so the waiter knows it by the claim it ran, not by a later stamp.
    let clock = ManualClock::with_auto_advance(false);
    let throttle = Throttle::builder(T)
        .clock(clock.clone())
        .counting(true)
        .build()
        .unwrap();
    let job = Throttled::from_throttle(throttle, || 7);
    assert_eq!(job.call_covered(), Outcome::Now(7));
    std::thread::scope(|s| {
        let owner = s.spawn(|| job.call_covered());
        wait_for(
            || job.throttle().is_pending(),
            "the owner claimed the deferral",
        );
        let waiter = s.spawn(|| job.call_covered());
        wait_for(|| job.waiting() >= 1, "the waiter waits");
        assert!(job.throttle().flush());
        assert_eq!(owner.join().unwrap(), Outcome::Deferred(7));
        wait_until_finished(std::slice::from_ref(&waiter), "the waiter to be woken");
        assert_eq!(waiter.join().unwrap(), Outcome::Covered(7));
    });
    assert_eq!(
        job.throttle().last_run(),
        Some(0),
        "the flushed run kept the stamp"
    );
}

#[test]
fn a_waiter_whose_owner_gave_up_is_covered_by_a_later_run() {
    let clock = ManualClock::with_auto_advance(false);
    let throttle = Throttle::builder(T)
        .clock(clock.clone())
        .counting(true)
        .build()
        .unwrap();
    let job = Throttled::from_throttle(throttle, || clock.now());
    assert_eq!(job.call_covered(), Outcome::Now(Duration::ZERO));
    // An owner outside the wrapper, which gives its deferral up without a word to the waiters.
    let owner = job.throttle().admit();
    assert!(owner.is_deferred());
    std::thread::scope(|s| {
        let waiter = s.spawn(|| job.call_covered());
        wait_for(|| job.waiting() >= 1, "the waiter waits");
        drop(owner);
        // A leading run after the window covers the waiter: it ran after the waiter's call.
        clock.advance(T);
        assert_eq!(job.call_covered(), Outcome::Now(T));
        wait_until_finished(std::slice::from_ref(&waiter), "the waiter to be woken");
        assert_eq!(waiter.join().unwrap(), Outcome::Covered(T));
    });
}

/// A caller waits in `call_covered` behind a deferral owned by another caller (plain `call`,
/// or `call_covered`), whose run is due on `clock`'s next threshold; returns the waiter's
/// answer and whether the owner panicked. Threads of their own, not scoped: a waiter that is
/// never woken fails the test rather than hang it.
fn waiter_behind<R: Clone + Send + 'static>(
    job: &Arc<Throttled<impl Fn() -> R + Send + Sync + 'static, ManualClock>>,
    clock: &ManualClock,
    owner_covers: bool,
) -> (Outcome<R>, bool) {
    let owner = std::thread::spawn({
        let job = job.clone();
        move || {
            if owner_covers {
                job.call_covered()
            } else {
                job.call()
            }
        }
    });
    wait_for(
        || job.throttle().is_pending(),
        "the owner claimed the deferral",
    );
    let outcome = waiter_until(job, || clock.advance(T));
    (outcome, owner.join().is_err())
}

#[test]
fn a_waiter_is_woken_by_a_covering_run_started_by_plain_call() {
    let clock = ManualClock::with_auto_advance(false);
    let job = Arc::new(Throttled::with_clock(T, clock.clone(), || 5).unwrap());
    assert_eq!(job.call(), Outcome::Now(5));
    // Plain `call` keeps no result to copy: the waiter is covered, with no copy.
    assert_eq!(
        waiter_behind(&job, &clock, false),
        (Outcome::Coalesced, false)
    );
    assert_eq!(job.waiting(), 0);
}

#[test]
fn a_waiter_is_woken_when_its_covering_run_panics() {
    for owner_covers in [true, false] {
        let clock = ManualClock::with_auto_advance(false);
        let calls = AtomicU32::new(0);
        let job = Arc::new(
            Throttled::with_clock(T, clock.clone(), move || {
                if calls.fetch_add(1, Relaxed) == 1 {
                    panic!("the covering run fails");
                }
                9
            })
            .unwrap(),
        );
        assert_eq!(job.call(), Outcome::Now(9));
        // The covering run started, so the waiter was covered; it has no result to copy.
        assert_eq!(
            waiter_behind(&job, &clock, owner_covers),
            (Outcome::Coalesced, true)
        );
    }
}

/// Starts a caller waiting in `call_covered` behind the pending deferral, then does `then`
/// (settles the deferral, or lets its owner's run come); returns the waiter's answer, failing
/// after `wait_for`'s patience rather than hang.
fn waiter_until<R: Clone + Send + 'static>(
    job: &Arc<Throttled<impl Fn() -> R + Send + Sync + 'static, ManualClock>>,
    then: impl FnOnce(),
) -> Outcome<R> {
    let waiter = std::thread::spawn({
        let job = job.clone();
        move || job.call_covered()
    });
    wait_for(|| job.waiting() >= 1, "the waiter waits");
    then();
    wait_for(|| waiter.is_finished(), "the waiter to be woken or told");
    waiter.join().unwrap()
}

#[test]
fn a_waiter_behind_an_owner_outside_the_wrapper_is_never_left_blocked() {
    let (clock, job) = leased(|| 1);
    assert_eq!(job.call(), Outcome::Now(1));
    // The owner claimed through the throttle itself runs: covered, with no result to copy.
    let owner = job.throttle().admit();
    assert!(owner.is_deferred());
    let outcome = waiter_until(&job, || {
        clock.advance(T);
        let Admission::Deferred(owner) = owner else {
            unreachable!()
        };
        assert!(owner.try_run(|| ()).is_ok(), "due: it runs");
    });
    assert_eq!(outcome, Outcome::Coalesced);
    // It gives its deferral up: nothing after it covers the waiter.
    let owner = job.throttle().admit();
    assert!(owner.is_deferred());
    let outcome = waiter_until(&job, || drop(owner));
    assert_eq!(outcome, Outcome::Revoked(Revoked::Cancelled));
    // The throttle's own cancel, while the outside owner holds it.
    let owner = job.throttle().admit();
    assert!(owner.is_deferred());
    let outcome = waiter_until(&job, || assert!(job.throttle().cancel()));
    assert_eq!(outcome, Outcome::Revoked(Revoked::Cancelled));
    drop(owner);
    // Leaked, and taken over by a call outside the wrapper once its lease has passed: see
    // `a_waiter_does_not_take_over_a_claim_someone_else_took_over_first`, which orders the
    // takeover against the waiter's own look at the lease (here the waiter could take the run
    // over itself first, as it may).
}

#[test]
fn a_waiter_takes_over_a_leaked_outside_deferral_once_its_lease_runs_out() {
    let (clock, job) = leased(|| 6);
    assert_eq!(job.call(), Outcome::Now(6));
    let owner = job.throttle().admit();
    assert!(owner.is_deferred());
    std::mem::forget(owner); // outside the wrapper, and never coming back
                             // No other caller: the waiter itself takes the run over once the lease has run out.
    let outcome = waiter_until(&job, || clock.advance(T + LEASE));
    assert_eq!(outcome, Outcome::Now(6));
    assert!(!job.throttle().is_pending());
}

/// A waiter that finds its outside owner's lease run out takes the run over only if the claim
/// is still there: when another caller took it over first (between the waiter's look at the
/// state and its reading of the clock), that caller's run covers the waiter, which must not
/// claim a second deferral of its own (on this clock, one that would never become due).
#[test]
fn a_waiter_does_not_take_over_a_claim_someone_else_took_over_first() {
    let clock = ManualClock::with_auto_advance(false);
    // Runs the hook set below, once, at the first reading after it is set.
    type Hook = Box<dyn FnOnce() + Send>;
    let hook: Arc<std::sync::Mutex<Option<Hook>>> = Arc::default();
    let hooked = Hooked::new(clock.clone(), {
        let hook = hook.clone();
        move |clock| {
            let hook = hook.lock().unwrap().take();
            if let Some(hook) = hook {
                hook();
            }
            clock.now_nanos()
        }
    });
    let throttle = Throttle::builder(T)
        .clock(hooked.clone())
        .lease(LEASE)
        .build()
        .unwrap();
    let job = Arc::new(Throttled::from_throttle(throttle, || 7));
    assert_eq!(job.call(), Outcome::Now(7));
    let owner = job.throttle().admit();
    assert!(owner.is_deferred());
    std::mem::forget(owner); // outside the wrapper, and never coming back
    let _free = FreeOnFailure(&clock);
    let waiter = std::thread::spawn({
        let job = job.clone();
        move || job.call_covered()
    });
    wait_for(|| job.waiting() >= 1, "the waiter waits");
    // The waiter's next reading of the clock comes after it has looked at the state: the
    // lease runs out, and another caller takes the claim over, in between.
    let took_over = Arc::new(AtomicU32::new(0));
    *hook.lock().unwrap() = Some(Box::new({
        let (clock, job, took_over) = (clock.clone(), job.clone(), took_over.clone());
        move || {
            clock.advance(T + LEASE);
            if job.throttle().admit().is_now() {
                took_over.store(1, Relaxed);
            }
        }
    }));
    wait_for(
        || waiter.is_finished(),
        "the waiter to see the takeover's run",
    );
    assert_eq!(took_over.load(Relaxed), 1, "the other caller took over");
    assert_eq!(waiter.join().unwrap(), Outcome::Coalesced);
    assert!(
        !job.throttle().is_pending(),
        "the waiter claimed a deferral of its own"
    );
}

/// How long an abandoned deferral keeps its claim past its deadline, in the leased tests.
const LEASE: Duration = Duration::from_millis(5);

/// A wrapper of `work` on a throttle with a [`LEASE`], on a clock that moves only when told.
fn leased<F: Fn() -> u32>(work: F) -> (ManualClock, Arc<Throttled<F, ManualClock>>) {
    let clock = ManualClock::with_auto_advance(false);
    let throttle = Throttle::builder(T)
        .clock(clock.clone())
        .lease(LEASE)
        .build()
        .unwrap();
    (clock, Arc::new(Throttled::from_throttle(throttle, work)))
}

/// A waiter coalesced into a claim is covered by that claim's run, not by the run before it,
/// whose stamp the claim still carries.
#[test]
fn a_covered_waiter_gets_the_run_after_its_call_not_the_one_before() {
    let clock = ManualClock::with_auto_advance(false);
    let count = AtomicU32::new(0);
    let job = Throttled::with_clock(T, clock.clone(), || count.fetch_add(1, Relaxed) + 1).unwrap();
    assert_eq!(job.call_covered(), Outcome::Now(1));
    std::thread::scope(|s| {
        let _free = FreeOnFailure(&clock);
        let owner = s.spawn(|| job.call_covered());
        wait_for(
            || job.throttle().is_pending(),
            "the owner to claim the deferral",
        );
        let waiter = s.spawn(|| job.call_covered());
        wait_for(
            || job.waiting() == 1 || waiter.is_finished(),
            "the waiter to wait",
        );
        clock.advance(T);
        assert_eq!(owner.join().unwrap(), Outcome::Deferred(2));
        assert_eq!(waiter.join().unwrap(), Outcome::Covered(2));
    });
    assert_eq!(job.waiting(), 0);
}

/// A counting wrapper of `work` on a throttle with a [`LEASE`], on `clock`.
fn leased_counting<C: Clock, F: Fn() -> u32>(clock: C, work: F) -> Arc<Throttled<F, C>> {
    let throttle = Throttle::builder(T)
        .clock(clock)
        .lease(LEASE)
        .counting(true)
        .build()
        .unwrap();
    Arc::new(Throttled::from_throttle(throttle, work))
}

/// A waiter whose outside owner let the lease run out takes the run over once: its call is
/// counted as the Coalesced answer it first got and as the takeover (documented), never as
/// more, even on a clock that steps back between its look at the lease and its takeover.
#[test]
fn a_waiter_that_takes_over_is_counted_once_as_coalesced_and_once_as_a_takeover() {
    let clock = ManualClock::with_auto_advance(false);
    // Steps back 2 ms once, at the first reading at or past `step_back_at` (then set back
    // to `u64::MAX`, never).
    let step_back_at = Arc::new(AtomicU64::new(u64::MAX));
    let stepping = Hooked::new(clock.clone(), {
        let at = step_back_at.clone();
        move |clock| {
            let now = clock.now_nanos();
            let step = at.load(Relaxed);
            if now >= step
                && at
                    .compare_exchange(step, u64::MAX, Relaxed, Relaxed)
                    .is_ok()
            {
                clock.rewind(Duration::from_millis(2));
            }
            now
        }
    });
    let job = leased_counting(stepping, || 3);
    assert_eq!(job.call(), Outcome::Now(3));
    let owner = job.throttle().admit();
    assert!(owner.is_deferred());
    std::mem::forget(owner); // outside the wrapper, and never coming back
    let _free = FreeOnFailure(&clock);
    let waiter = std::thread::spawn({
        let job = job.clone();
        move || job.call_covered()
    });
    wait_for(|| job.waiting() >= 1, "the waiter waits");
    // The lease runs out, and the first reading that sees it steps the clock back 2 ms: the
    // waiter's takeover finds it not run out after all, until the clock comes back.
    let end = (T + LEASE).as_nanos() as u64;
    step_back_at.store(end, Relaxed);
    clock.advance(T + LEASE);
    wait_for(
        || step_back_at.load(Relaxed) == u64::MAX,
        "the clock to step back",
    );
    std::thread::sleep(Duration::from_millis(20)); // the waiter looks again meanwhile
    clock.advance(Duration::from_millis(2));
    wait_for(|| waiter.is_finished(), "the waiter to take the run over");
    assert_eq!(waiter.join().unwrap(), Outcome::Now(3));
    let stats = job.throttle().stats().unwrap();
    assert_eq!((stats.coalesced, stats.takeovers), (1, 1), "{stats:?}");
}

/// At the end of the clock's range time stops, and a leaked deferral is never taken over: a
/// waiter behind it waits (parked, looking again now and then) until something settles the
/// claim, rather than spin, counting a Coalesced call at every turn.
#[test]
fn a_waiter_at_the_end_of_the_clocks_range_waits_without_spinning() {
    let clock = ManualClock::with_auto_advance(false);
    let end = Duration::from_nanos(((1u64 << 54) - 1) * 1_000); // the last stamp, in ns
    clock.advance(end - Duration::from_millis(12));
    let job = leased_counting(clock.clone(), || 1);
    assert_eq!(job.call(), Outcome::Now(1));
    let owner = job.throttle().admit();
    assert!(owner.is_deferred());
    std::mem::forget(owner);
    clock.advance(Duration::from_millis(30)); // past the deadline, the lease and the end
    let waiter = std::thread::spawn({
        let job = job.clone();
        move || job.call_covered()
    });
    wait_for(|| job.waiting() >= 1, "the waiter waits");
    std::thread::sleep(Duration::from_millis(100));
    let coalesced = job.throttle().stats().unwrap().coalesced;
    assert!(job.throttle().cancel());
    assert_eq!(waiter.join().unwrap(), Outcome::Revoked(Revoked::Cancelled));
    assert_eq!(
        coalesced, 1,
        "the waiter's one call, counted again at every look"
    );
}

/// A `call_async` owner inside the wrapper whose future is leaked never comes back: on a
/// throttle with a lease, a waiter behind it is not left blocked. Once the lease has run out,
/// a caller outside the wrapper takes the claim over, and its run covers the waiter.
#[cfg(feature = "tokio")]
#[test]
fn a_waiter_behind_a_leaked_async_owner_of_the_wrapper_is_not_left_blocked() {
    use std::future::Future;
    let clock = ManualClock::with_auto_advance(false);
    let job = leased_counting(clock.clone(), || 9);
    assert_eq!(job.call(), Outcome::Now(9));
    let mut owner = Box::pin({
        let job = job.clone();
        async move { job.call_async().await }
    });
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(owner.as_mut().poll(&mut context).is_pending());
    assert!(
        job.throttle().is_pending(),
        "the async owner claimed the deferral"
    );
    std::mem::forget(owner); // never polled again, never dropped
    let waiter = std::thread::spawn({
        let job = job.clone();
        move || job.call_covered()
    });
    wait_for(|| job.waiting() >= 1, "the waiter waits");
    clock.advance(T + LEASE);
    if job.throttle().admit().is_now() {
        // Taken over outside the wrapper: that run covers the waiter.
        wait_for(
            || waiter.is_finished(),
            "the waiter to see the takeover's run",
        );
        assert_eq!(waiter.join().unwrap(), Outcome::Coalesced);
    } else {
        // The waiter saw the lease run out first, and took the run over itself.
        wait_for(
            || waiter.is_finished(),
            "the waiter to end its takeover's run",
        );
        assert_eq!(waiter.join().unwrap(), Outcome::Now(9));
    }
    assert!(!job.throttle().is_pending());
}
