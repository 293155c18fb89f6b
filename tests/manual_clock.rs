//! The manual clock in every wait the crate offers: it advances for its waiters, to the
//! earliest registered deadline and never past it, or only when the test moves it.

#[path = "support/free_on_failure.rs"]
mod free_on_failure;
#[path = "support/wait_for.rs"]
mod wait_for;

use atomic_throttle::{Admission, Clock, ManualClock, Revoked, Throttle, Wait, Waiter};
use free_on_failure::FreeOnFailure;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use wait_for::wait_for;

/// Joins `owner` once it has finished, failing after a while with `what` rather than hanging.
fn join_within<T>(owner: std::thread::ScopedJoinHandle<'_, T>, what: &str) -> T {
    wait_for(|| owner.is_finished(), what);
    owner.join().unwrap()
}

const T: Duration = Duration::from_millis(10);

/// A timer that must not be used: on a manual clock the clock itself moves.
fn no_timer(_: Duration) -> std::future::Ready<()> {
    panic!("a wait on a ManualClock asked for a real timer")
}

/// Polls `future` on this thread, parking between polls, until it completes.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut Context::from_waker(&waker)) {
            return out;
        }
        std::thread::park_timeout(Duration::from_secs(1));
    }
}

#[test]
fn an_async_wait_on_a_manual_clock_advances_it_to_the_deadline() {
    let clock = ManualClock::new();
    let throttle = Throttle::with_clock(T, clock.clone()).unwrap();
    assert!(throttle.admit().is_now());
    clock.advance(Duration::from_millis(3));
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    assert_eq!(block_on(deferral.wait_with(no_timer)), Ok(()));
    assert_eq!(clock.now(), T, "the clock moved exactly to the deadline");
    assert_eq!(clock.waiters(), 0);
}

#[test]
fn concurrent_waits_on_one_clock_each_end_exactly_at_their_deadline() {
    // Two throttles on one clock, deadlines 10 ms and 20 ms, awaited together on one task,
    // in both orders: the clock moves to the earlier, then to the later, never past either.
    for earlier_first in [true, false] {
        let clock = ManualClock::new();
        let a = Throttle::with_clock(T, clock.clone()).unwrap();
        let b = Throttle::with_clock(T * 2, clock.clone()).unwrap();
        assert!(a.admit().is_now() && b.admit().is_now());
        let (Admission::Deferred(da), Admission::Deferred(db)) = (a.admit(), b.admit()) else {
            panic!("expected two deferrals")
        };
        let run = |deferral| wait_then_read(deferral, clock.clone());
        let (ran_a, ran_b) = if earlier_first {
            block_on(join(run(da), run(db)))
        } else {
            let (b, a) = block_on(join(run(db), run(da)));
            (a, b)
        };
        assert_eq!((ran_a, ran_b), (T, T * 2), "earlier first: {earlier_first}");
    }
}

async fn wait_then_read(
    deferral: atomic_throttle::Deferral<&Throttle<ManualClock>>,
    clock: ManualClock,
) -> Duration {
    deferral.wait_with(no_timer).await.unwrap();
    clock.now()
}

/// Polls two futures until both complete (a minimal `join`).
async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut out_a, mut out_b) = (None, None);
    std::future::poll_fn(move |cx| {
        if out_a.is_none() {
            if let Poll::Ready(out) = a.as_mut().poll(cx) {
                out_a = Some(out);
            }
        }
        if out_b.is_none() {
            if let Poll::Ready(out) = b.as_mut().poll(cx) {
                out_b = Some(out);
            }
        }
        if out_a.is_some() && out_b.is_some() {
            Poll::Ready((out_a.take().unwrap(), out_b.take().unwrap()))
        } else {
            Poll::Pending
        }
    })
    .await
}

#[test]
fn blocking_waits_one_after_another_each_end_at_their_deadline() {
    let clock = ManualClock::new();
    let throttle = Throttle::with_clock(T, clock.clone()).unwrap();
    assert!(throttle.admit().is_now());
    for round in 1..=5u32 {
        let Admission::Deferred(deferral) = throttle.admit() else {
            panic!("expected Deferred")
        };
        assert_eq!(deferral.run(|| clock.now()), Ok(T * round));
    }
}

#[test]
fn without_auto_advance_a_waiting_owner_waits_for_the_test() {
    let clock = ManualClock::with_auto_advance(false);
    let throttle = Throttle::with_clock(T, clock.clone()).unwrap();
    assert!(throttle.admit().is_now());
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    std::thread::scope(|s| {
        let _free = FreeOnFailure(&clock);
        let owner = s.spawn(|| deferral.run(|| clock.now()));
        wait_for(|| clock.waiters() == 1, "the owner to wait on the clock");
        clock.advance(T - Duration::from_nanos(1));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!owner.is_finished(), "ran before its deadline");
        clock.advance(Duration::from_nanos(1));
        assert_eq!(join_within(owner, "the clock to wake the owner"), Ok(T));
    });
    assert_eq!(clock.waiters(), 0);
}

#[test]
fn without_auto_advance_cancel_flush_and_a_new_threshold_wake_the_owner() {
    let clock = ManualClock::with_auto_advance(false);
    let throttle = Throttle::with_clock(T, clock.clone()).unwrap();
    assert!(throttle.admit().is_now());
    // Cancel: the blocked owner returns at once, without running.
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    std::thread::scope(|s| {
        let _free = FreeOnFailure(&clock);
        let owner = s.spawn(|| deferral.run(|| unreachable!("a cancelled deferral ran")));
        wait_for(|| clock.waiters() == 1, "the owner to wait");
        assert!(throttle.cancel());
        assert_eq!(
            join_within(owner, "the cancel to wake the owner"),
            Err(Revoked::Cancelled)
        );
    });
    // Flush: it runs at once, the clock still short of the deadline.
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    std::thread::scope(|s| {
        let _free = FreeOnFailure(&clock);
        let owner = s.spawn(|| deferral.run(|| clock.now_nanos()));
        wait_for(|| clock.waiters() == 1, "the owner to wait");
        assert!(throttle.flush());
        assert_eq!(join_within(owner, "the flush to wake the owner"), Ok(0));
    });
    // A shorter threshold: the deadline moved to a reading the clock has reached.
    clock.advance(Duration::from_millis(2));
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    std::thread::scope(|s| {
        let _free = FreeOnFailure(&clock);
        let owner = s.spawn(|| deferral.run(|| clock.now()));
        wait_for(|| clock.waiters() == 1, "the owner to wait");
        throttle.set_threshold(Duration::from_millis(1)).unwrap();
        assert_eq!(
            join_within(owner, "the new threshold to wake the owner"),
            Ok(Duration::from_millis(2))
        );
    });
}

#[test]
fn an_async_owner_is_woken_by_a_cancel() {
    let clock = ManualClock::with_auto_advance(false);
    let throttle = Throttle::with_clock(T, clock.clone()).unwrap();
    assert!(throttle.admit().is_now());
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    std::thread::scope(|s| {
        let _free = FreeOnFailure(&clock);
        let owner = s.spawn(|| block_on(deferral.wait_with(no_timer)));
        wait_for(|| clock.waiters() == 1, "the async owner to wait");
        assert!(throttle.cancel());
        assert_eq!(
            join_within(owner, "the cancel to wake the async owner"),
            Err(Revoked::Cancelled)
        );
    });
    assert_eq!(clock.waiters(), 0, "the cancelled wait unregistered");
}

#[test]
// The borrows are the point: they call the clock through `impl Clock for &C`.
#[allow(clippy::needless_borrow)]
fn the_clock_and_its_handles_read_the_same_time() {
    let clock = ManualClock::new();
    clock.advance(Duration::from_micros(5));
    let shared = Arc::new(clock.clone());
    assert_eq!(Clock::now_nanos(&&clock), 5_000);
    assert_eq!(shared.now_nanos(), 5_000);
    // Waits through a reference or an Arc reach the same clock.
    let waiter = Waiter::new(Waker::noop());
    assert_eq!((&clock).wait_for(waiter, 9_000), Wait::Yield);
    assert_eq!(clock.waiters(), 1);
    assert_eq!(shared.wait_for(waiter, 9_000), Wait::Now);
    assert_eq!(clock.now_nanos(), 9_000);
    shared.done_waiting(waiter);
    assert_eq!(clock.waiters(), 0);
    assert_eq!((&clock).wait_for(waiter, 9_500), Wait::Yield);
    (&clock).done_waiting(waiter);
    assert_eq!(clock.waiters(), 0);
    assert!(format!("{clock:?}").contains("now_nanos: 9000"));
}
