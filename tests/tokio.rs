//! tokio: cancel safety on the paused clock (by `timeout`, `select!` and `JoinHandle::abort`,
//! at each await point), coverage that survives a cancelled owner, coalesced callers waiting
//! for their covering run, async closures, modes, and the manual clock. After each, runs stay a
//! threshold apart (G1) and nothing is stranded (G2).
#![cfg(feature = "tokio")]

#[path = "support/wait_for.rs"]
mod wait_for;

use atomic_throttle::{
    Admission, AsyncThrottled, ManualClock, Mode, OnCancel, Outcome, Revoked, Throttle, Throttled,
    TokioClock,
};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{sleep, timeout, Instant};

const T: Duration = Duration::from_millis(100);

/// Every run's start, on tokio's clock; checks G1 on all of them.
#[derive(Default, Clone)]
struct Runs(Arc<Mutex<Vec<Instant>>>);

impl Runs {
    fn record(&self) {
        self.0.lock().unwrap().push(Instant::now());
    }
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn at(&self, index: usize) -> Instant {
        self.0.lock().unwrap()[index]
    }
    fn assert_spaced(&self) {
        let runs = self.0.lock().unwrap();
        for pair in runs.windows(2) {
            assert!(
                pair[1] - pair[0] >= T,
                "G1: runs {:?} apart",
                pair[1] - pair[0]
            );
        }
    }
}

fn throttled(runs: &Runs) -> Throttled<impl Fn() + '_, TokioClock> {
    Throttled::with_clock(T, TokioClock::new(), move || runs.record()).unwrap()
}

/// After a cancelled owner: nothing pending, and the next call is Deferred and runs a whole
/// threshold after the last run.
async fn next_call_claims_and_runs_at_the_deadline<F: Fn()>(
    job: &Throttled<F, TokioClock>,
    runs: &Runs,
) {
    assert!(
        !job.throttle().is_pending(),
        "G2: the cancelled owner stranded its deferral"
    );
    let before = runs.count();
    assert_eq!(job.call_async().await, Outcome::Deferred(()));
    assert_eq!(runs.count(), before + 1);
    runs.assert_spaced();
}

#[tokio::test(start_paused = true)]
async fn timeout_while_awaiting_the_deadline_releases_the_deferral() {
    let runs = Runs::default();
    let job = throttled(&runs);
    assert_eq!(job.call_async().await, Outcome::Now(()));
    let cancelled = timeout(T / 2, job.call_async()).await;
    assert!(
        cancelled.is_err(),
        "the deferred call cannot finish inside half a window"
    );
    assert_eq!(
        runs.count(),
        1,
        "a cancelled deferred call must not run the work"
    );
    next_call_claims_and_runs_at_the_deadline(&job, &runs).await;
}

#[tokio::test(start_paused = true)]
async fn losing_a_select_releases_the_deferral() {
    let runs = Runs::default();
    let job = throttled(&runs);
    assert_eq!(job.call_async().await, Outcome::Now(()));
    tokio::select! {
        _ = job.call_async() => panic!("the deferred call finished before the deadline"),
        _ = sleep(T / 4) => {}
    }
    assert_eq!(runs.count(), 1);
    next_call_claims_and_runs_at_the_deadline(&job, &runs).await;
}

#[tokio::test(start_paused = true)]
async fn aborting_the_owning_task_releases_the_deferral() {
    let runs = Runs::default();
    let job = Arc::new(
        Throttled::with_clock(T, TokioClock::new(), {
            let runs = runs.clone();
            move || runs.record()
        })
        .unwrap(),
    );
    assert_eq!(job.call_async().await, Outcome::Now(()));
    let owner = tokio::spawn({
        let job = job.clone();
        async move { job.call_async().await }
    });
    // Let the task claim the deferral and park on its timer.
    until("the owner claimed the deferral", || {
        job.throttle().is_pending()
    })
    .await;
    assert_eq!(job.call_async().await, Outcome::Coalesced);
    owner.abort();
    assert!(owner.await.unwrap_err().is_cancelled());
    assert_eq!(runs.count(), 1);
    next_call_claims_and_runs_at_the_deadline(&job, &runs).await;
}

#[tokio::test(start_paused = true)]
async fn giving_up_while_awaiting_the_deadline_or_inside_the_work_never_runs_it_twice() {
    let runs = Runs::default();
    let finished = Arc::new(AtomicU32::new(0));
    let throttle = Throttle::with_clock(T, TokioClock::new()).unwrap();
    let job = AsyncThrottled::from_throttle(throttle, {
        let (runs, finished) = (runs.clone(), finished.clone());
        async move || {
            runs.record();
            sleep(T / 2).await; // the work's own await point
            finished.fetch_add(1, Relaxed);
        }
    })
    .on_cancel(OnCancel::GiveUp);
    // t = 0: the leading run, which finishes at T/2.
    assert_eq!(job.call().await, Outcome::Now(()));

    // t = T/2: Deferred, cancelled at 3T/4 while awaiting the deadline: given up, the work
    // never starts.
    assert!(timeout(T / 4, job.call()).await.is_err());
    assert_eq!(runs.count(), 1);
    assert!(!job.is_pending());

    // t = 3T/4: Deferred again, runs at T, cancelled at 5T/4 inside the work (which would
    // finish at 3T/2): it started once and did not finish. The run was stamped before the
    // work started.
    assert!(timeout(T / 2, job.call()).await.is_err());
    assert_eq!(runs.count(), 2);
    assert_eq!(finished.load(Relaxed), 1);
    assert!(!job.is_pending());

    // t = 5T/4: inside the window of that stamp, so Deferred; it runs once, in full, a whole
    // threshold after the cancelled run.
    assert_eq!(job.call().await, Outcome::Deferred(()));
    assert_eq!(runs.count(), 3);
    assert_eq!(finished.load(Relaxed), 2);
    runs.assert_spaced();
}

/// The cache-refresh scenario: after a leading refresh, the owner of the trailing refresh
/// times out and a caller is coalesced behind it. The refresh still happens at the deadline.
/// Before the fix, the owner's timeout gave the trailing run up, and nothing refreshed.
#[tokio::test(start_paused = true)]
async fn a_cancelled_owner_still_refreshes_at_the_deadline_on_the_paused_clock() {
    let runs = Runs::default();
    let throttle = Throttle::with_clock(T, TokioClock::new()).unwrap();
    let refresh = Arc::new(AsyncThrottled::from_throttle(throttle, {
        let runs = runs.clone();
        async move || runs.record()
    }));
    let start = Instant::now();
    assert_eq!(refresh.call().await, Outcome::Now(()));
    // The owner of the trailing refresh waits with a timeout; a caller is coalesced behind it;
    // then the owner times out.
    let owner = tokio::spawn({
        let refresh = refresh.clone();
        async move { timeout(T / 4, refresh.call()).await }
    });
    until("the owner claimed the deferral", || refresh.is_pending()).await;
    assert_eq!(refresh.call().await, Outcome::Coalesced);
    assert!(owner.await.unwrap().is_err(), "the owner timed out");
    // The coalesced caller is covered: the refresh comes at the deadline all the same.
    let deadline = start + T;
    while runs.count() < 2 {
        assert!(
            Instant::now() < deadline + T * 3,
            "no refresh came after the owner was cancelled"
        );
        sleep(Duration::from_millis(1)).await;
    }
    assert!(
        runs.at(1) >= deadline && runs.at(1) <= deadline + Duration::from_millis(2),
        "the handed-off refresh ran {:?} after the leading one",
        runs.at(1) - runs.at(0)
    );
    assert!(!refresh.is_pending());
    runs.assert_spaced();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_owner_still_refreshes_at_the_deadline_on_the_real_clock() {
    const T: Duration = Duration::from_millis(40);
    let clock = atomic_throttle::DefaultClock::new();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let refresh = Arc::new(AsyncThrottled::new(T, {
        let starts = starts.clone();
        async move || {
            starts
                .lock()
                .unwrap()
                .push(atomic_throttle::Clock::now_nanos(&clock))
        }
    }));
    assert_eq!(refresh.call().await, Outcome::Now(()));
    let owner = tokio::spawn({
        let refresh = refresh.clone();
        async move { timeout(T / 4, refresh.call()).await }
    });
    until("the owner claimed the deferral", || refresh.is_pending()).await;
    assert_eq!(refresh.call().await, Outcome::Coalesced);
    assert!(owner.await.unwrap().is_err(), "the owner timed out");
    let patience = std::time::Instant::now() + wait_for::patience();
    while starts.lock().unwrap().len() < 2 {
        assert!(
            std::time::Instant::now() < patience,
            "out of patience: still no refresh after the owner was cancelled"
        );
        sleep(Duration::from_millis(1)).await;
    }
    let starts = starts.lock().unwrap().clone();
    assert!(
        starts[1] - starts[0] >= T.as_nanos() as u64,
        "G1: {} ns",
        starts[1] - starts[0]
    );
    assert!(!refresh.is_pending());
}

#[tokio::test(start_paused = true)]
async fn coalesced_callers_can_wait_for_the_covering_run_and_get_its_result() {
    let refreshes = Arc::new(AtomicU32::new(0));
    let throttle = Throttle::with_clock(T, TokioClock::new()).unwrap();
    let refresh = Arc::new(AsyncThrottled::from_throttle(throttle, {
        let refreshes = refreshes.clone();
        async move || refreshes.fetch_add(1, Relaxed) + 1
    }));
    let start = Instant::now();
    assert_eq!(refresh.call_covered().await, Outcome::Now(1));
    let owner = tokio::spawn({
        let refresh = refresh.clone();
        async move { refresh.call_covered().await }
    });
    until("the owner claimed the deferral", || refresh.is_pending()).await;
    // Three callers coalesced behind it wait, and all get the trailing run's result.
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let refresh = refresh.clone();
            tokio::spawn(async move { (refresh.call_covered().await, Instant::now()) })
        })
        .collect();
    for waiter in waiters {
        let (outcome, at) = timeout(T * 10, waiter)
            .await
            .expect("a waiting caller was never woken")
            .unwrap();
        assert_eq!(outcome, Outcome::Covered(2));
        assert!(at >= start + T, "woken before the covering run");
    }
    assert_eq!(owner.await.unwrap(), Outcome::Deferred(2));
    // A caller that does not wait is Coalesced and returns at once, as before.
    assert_eq!(refreshes.load(Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn waiting_callers_are_told_when_their_run_is_cancelled() {
    let throttle = Throttle::with_clock(T, TokioClock::new()).unwrap();
    let job = Arc::new(AsyncThrottled::from_throttle(throttle, async || 7));
    assert_eq!(job.call().await, Outcome::Now(7));
    let owner = tokio::spawn({
        let job = job.clone();
        async move { job.call().await }
    });
    until("the owner claimed the deferral", || job.is_pending()).await;
    let waiter = tokio::spawn({
        let job = job.clone();
        async move { job.call_covered().await }
    });
    tokio::task::yield_now().await;
    assert!(job.cancel());
    assert_eq!(owner.await.unwrap(), Outcome::Revoked(Revoked::Cancelled));
    assert_eq!(waiter.await.unwrap(), Outcome::Revoked(Revoked::Cancelled));
    assert!(!job.is_pending());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_callers_on_the_real_clock_get_the_covering_result() {
    const T: Duration = Duration::from_millis(20);
    let runs = Arc::new(AtomicU32::new(0));
    let job = Arc::new(AsyncThrottled::new(T, {
        let runs = runs.clone();
        async move || runs.fetch_add(1, Relaxed) + 1
    }));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let job = job.clone();
            tokio::spawn(async move {
                let mut results = Vec::new();
                let end = std::time::Instant::now() + Duration::from_millis(300);
                while std::time::Instant::now() < end {
                    let outcome = job.call_covered().await;
                    results.push(outcome.value().expect("every wait is served"));
                    tokio::task::yield_now().await;
                }
                results
            })
        })
        .collect();
    for task in tasks {
        let results = task.await.unwrap();
        assert!(
            results.windows(2).all(|pair| pair[0] <= pair[1]),
            "{results:?}"
        );
    }
    assert!(runs.load(Relaxed) > 5);
}

#[tokio::test(start_paused = true)]
async fn async_closures_may_borrow_what_they_capture() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let name = String::from("refresh");
    let job = AsyncThrottled::new(T, {
        let log = log.clone();
        // Borrows `name` and `log` from the closure: an `AsyncFn`, not a `Fn` returning a
        // future.
        async move || {
            sleep(Duration::from_millis(1)).await;
            log.lock().unwrap().push(name.len());
        }
    });
    assert_eq!(job.call().await, Outcome::Now(()));
    assert_eq!(job.call().await, Outcome::Deferred(()));
    assert_eq!(log.lock().unwrap().as_slice(), [7, 7]);
}

#[tokio::test(start_paused = true)]
async fn leading_only_and_trailing_only_modes() {
    let leading = Throttle::builder(T)
        .clock(TokioClock::new())
        .mode(Mode::LeadingOnly)
        .build()
        .unwrap();
    let job = AsyncThrottled::from_throttle(leading, async || "ran");
    assert_eq!(job.call().await, Outcome::Now("ran"));
    assert_eq!(job.call().await, Outcome::Suppressed);
    assert_eq!(job.call_covered().await, Outcome::Suppressed);
    sleep(T).await;
    assert_eq!(job.call().await, Outcome::Now("ran"));

    let trailing = Throttle::builder(T)
        .clock(TokioClock::new())
        .mode(Mode::TrailingOnly)
        .build()
        .unwrap();
    let start = Instant::now();
    let job = Arc::new(AsyncThrottled::from_throttle(trailing, async || {
        Instant::now()
    }));
    let owner = tokio::spawn({
        let job = job.clone();
        async move { job.call().await }
    });
    until("the owner claimed the deferral", || job.is_pending()).await;
    assert_eq!(job.call().await, Outcome::Coalesced);
    let Outcome::Deferred(ran_at) = owner.await.unwrap() else {
        panic!("trailing only: the first call is Deferred")
    };
    assert!(ran_at >= start + T);
}

#[tokio::test(start_paused = true)]
async fn a_publishing_wrapper_runs_as_usual() {
    let job = AsyncThrottled::new(T, async || 1).publishing(true);
    assert_eq!(job.call().await, Outcome::Now(1));
    assert_eq!(job.call().await, Outcome::Deferred(1));
    assert!(format!("{job:?}").contains("publishing: true"));
}

#[test]
fn a_handle_dropped_outside_any_runtime_gives_its_deferral_up() {
    // The owner's future is polled once (it claims the deferral and waits), then dropped with
    // no runtime at hand: nowhere to hand it on, so it is given up rather than stranded.
    let job = AsyncThrottled::new(Duration::from_secs(60), async || ());
    let mut first = Box::pin(job.call());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(std::future::Future::poll(first.as_mut(), &mut cx).is_ready());
    drop(first);
    let mut owner = Box::pin(job.call());
    // Polling the deferred call needs tokio's timer: give it a runtime to poll in, then
    // drop the future outside of it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let waited = timeout(Duration::from_millis(5), owner.as_mut()).await;
        assert!(waited.is_err());
    });
    drop(runtime);
    assert!(job.is_pending());
    drop(owner);
    assert!(!job.is_pending(), "G2: the deferral was stranded");
}

#[tokio::test]
async fn waits_on_a_manual_clock_advance_it_instead_of_sleeping() {
    // A test clock that moves for its waiters: no tokio timer, no real time.
    let clock = ManualClock::new();
    let throttle = Throttle::with_clock(T, clock.clone()).unwrap();
    let job = AsyncThrottled::from_throttle(throttle, {
        let clock = clock.clone();
        async move || clock.now()
    });
    let started = std::time::Instant::now();
    assert_eq!(job.call().await, Outcome::Now(Duration::ZERO));
    assert_eq!(job.call().await, Outcome::Deferred(T));
    let sync = Throttled::with_clock(T, clock.clone(), || clock.now()).unwrap();
    assert_eq!(sync.call_async().await, Outcome::Now(T));
    assert_eq!(sync.call_async().await, Outcome::Deferred(T * 2));
    let raw = Throttle::with_clock(T, clock.clone()).unwrap();
    assert!(raw.admit().is_now());
    let Admission::Deferred(deferral) = raw.admit() else {
        panic!("expected Deferred")
    };
    deferral.wait_async().await.unwrap();
    assert_eq!(clock.now(), T * 3);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited in real time"
    );
}

#[tokio::test(start_paused = true)]
async fn deferrals_wait_on_the_paused_clock() {
    let throttle = Throttle::with_clock(T, TokioClock::new()).unwrap();
    let start = Instant::now();
    assert!(throttle.admit().is_now());
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    deferral.wait_async().await.unwrap();
    let waited = Instant::now() - start;
    // tokio's timer has millisecond granularity: the wait ends within about 1 ms of the
    // deadline.
    assert!(
        waited >= T && waited <= T + Duration::from_millis(2),
        "{waited:?}"
    );
    assert!(!throttle.is_pending());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_on_the_real_clock_keep_runs_apart() {
    use std::collections::BTreeSet;
    use std::sync::OnceLock;
    const T: Duration = Duration::from_millis(5);
    type Job = AsyncThrottled<fn() -> std::future::Ready<()>, atomic_throttle::TokioRuntime>;
    static JOB: OnceLock<Arc<Job>> = OnceLock::new();
    static STAMPS: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());
    /// The work reads its run's stamp: the next run is stamped at least T later, long after
    /// this read unless the work starts a whole threshold late.
    fn record_stamp() -> std::future::Ready<()> {
        if let Some(stamp) = JOB.get().and_then(|job| job.last_run()) {
            STAMPS.lock().unwrap().insert(stamp);
        }
        std::future::ready(())
    }
    let job = JOB
        .get_or_init(|| Arc::new(AsyncThrottled::new(T, record_stamp as fn() -> _)))
        .clone();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let job = job.clone();
            tokio::spawn(async move {
                let deadline = std::time::Instant::now() + Duration::from_millis(300);
                while std::time::Instant::now() < deadline {
                    // Every fourth task gives up its waits half-way: its runs are handed on.
                    if i % 4 == 0 {
                        let _ = timeout(T / 2, job.call()).await;
                    } else {
                        let _ = job.call().await;
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    // Handed-on runs finish on the blocking pool: wait for the last of them.
    let patience = std::time::Instant::now() + wait_for::patience();
    while job.is_pending() {
        assert!(
            std::time::Instant::now() < patience,
            "G2: out of patience: a deferral is still pending with every caller gone"
        );
        sleep(Duration::from_millis(1)).await;
    }
    let stamps: Vec<u64> = STAMPS.lock().unwrap().iter().copied().collect();
    assert!(stamps.len() > 20, "only {} runs", stamps.len());
    for pair in stamps.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= T.as_nanos() as u64,
            "G1: runs stamped {gap} ns apart"
        );
    }
}

/// Awaits `future` for at most the test's patience in real time: a waiter that is never woken
/// fails the test rather than hang it.
async fn within_patience<F: std::future::Future>(what: &str, future: F) -> F::Output {
    let patience = std::time::Instant::now() + wait_for::patience();
    let mut future = std::pin::pin!(future);
    loop {
        if let Ok(output) = timeout(Duration::from_millis(10), future.as_mut()).await {
            return output;
        }
        assert!(
            std::time::Instant::now() < patience,
            "out of patience: {what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_waiter_is_covered_by_a_run_of_call_async_or_told_when_it_times_out() {
    const T: Duration = Duration::from_millis(200);
    let job = Arc::new(Throttled::new(T, || 3));
    for owner_times_out in [false, true] {
        sleep(T).await;
        assert_eq!(job.call_async().await, Outcome::Now(3));
        // The owner gives up (as a timeout would drop it) when told, once the waiter waits.
        let (give_up, told) = tokio::sync::oneshot::channel::<()>();
        let owner = tokio::spawn({
            let job = job.clone();
            async move {
                tokio::select! {
                    outcome = job.call_async() => Some(outcome),
                    _ = told => None,
                }
            }
        });
        until("the owner claimed the deferral", || {
            job.throttle().is_pending()
        })
        .await;
        // A thread of its own, not tokio's blocking pool: a waiter that is never woken fails
        // the test rather than hold the runtime's shutdown.
        let waiter = std::thread::spawn({
            let job = job.clone();
            move || job.call_covered()
        });
        until("the waiter waits", || job.waiting() >= 1).await;
        if owner_times_out {
            let _ = give_up.send(()); // unless its run came first, on a slow machine
        }
        let patience = std::time::Instant::now() + wait_for::patience();
        while !waiter.is_finished() {
            assert!(
                std::time::Instant::now() < patience,
                "out of patience: the blocked waiter was never woken"
            );
            sleep(Duration::from_millis(1)).await;
        }
        let outcome = waiter.join().unwrap();
        let owned = owner.await.unwrap();
        if owned.is_none() {
            // Given up with nothing after it: the waiter is told, not left blocked.
            assert_eq!(outcome, Outcome::Revoked(Revoked::Cancelled));
        } else {
            assert_eq!(owned, Some(Outcome::Deferred(3)));
            // `call_async` keeps no result to copy: covered, with no copy.
            assert_eq!(outcome, Outcome::Coalesced);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_woken_when_the_owner_is_dropped_or_panics_inside_the_work() {
    let throttle = Throttle::with_clock(T, TokioClock::new()).unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let job = Arc::new(AsyncThrottled::from_throttle(throttle, {
        let calls = calls.clone();
        async move || match calls.fetch_add(1, Relaxed) {
            // The first deferred run never finishes; the second panics.
            1 => sleep(Duration::from_secs(3600)).await,
            3 => panic!("the covering run fails"),
            _ => {}
        }
    }));
    assert_eq!(job.call().await, Outcome::Now(()));
    for dropped in [true, false] {
        let owner = tokio::spawn({
            let job = job.clone();
            async move { timeout(2 * T, job.call()).await }
        });
        until("the owner claimed the deferral", || job.is_pending()).await;
        let waiter = tokio::spawn({
            let job = job.clone();
            async move { job.call_covered().await }
        });
        let outcome = within_patience("the waiter was never woken", waiter).await;
        // The covering run started, so the waiter was covered; it has no result to copy.
        assert_eq!(outcome.unwrap(), Outcome::Coalesced);
        let owner = owner.await;
        if dropped {
            assert!(owner.unwrap().is_err(), "the owner was dropped mid-work");
        } else {
            assert!(owner.unwrap_err().is_panic(), "the owner's work panicked");
        }
        sleep(T).await;
        assert_eq!(job.call().await, Outcome::Now(()));
    }
}

#[test]
fn a_handed_off_deferral_is_given_up_when_its_runtime_shuts_down() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Built inside the runtime: the wrapper hands cancelled runs on to it.
    let job = runtime.block_on(async {
        let job = Arc::new(AsyncThrottled::new(Duration::from_secs(60), async || ()));
        assert_eq!(job.call().await, Outcome::Now(()));
        // The owner is cancelled while it waits: its run is handed to a task of the runtime.
        assert!(timeout(Duration::from_millis(5), job.call()).await.is_err());
        assert!(job.is_pending(), "the handed-on run waits for its deadline");
        job
    });
    // A caller waiting for that run, on a runtime of its own.
    let waiter = std::thread::spawn({
        let job = job.clone();
        move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async { job.call_covered().await })
        }
    });
    let patience = std::time::Instant::now() + wait_for::patience();
    while job.waiting() < 1 {
        assert!(
            std::time::Instant::now() < patience,
            "out of patience: the waiter does not wait"
        );
        std::thread::yield_now();
    }
    // The runtime shuts down before the deadline, dropping the task that held the run.
    drop(runtime);
    assert!(!job.is_pending(), "G2: the handed-on deferral was stranded");
    let patience = std::time::Instant::now() + wait_for::patience();
    while !waiter.is_finished() {
        assert!(
            std::time::Instant::now() < patience,
            "out of patience: the waiter was never told"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(waiter.join().unwrap(), Outcome::Revoked(Revoked::Cancelled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_when_a_handed_off_run_panics() {
    const T: Duration = Duration::from_millis(40);
    let calls = Arc::new(AtomicU32::new(0));
    let job = Arc::new(AsyncThrottled::new(T, {
        let calls = calls.clone();
        async move || {
            if calls.fetch_add(1, Relaxed) == 1 {
                panic!("the handed-off run fails");
            }
        }
    }));
    assert_eq!(job.call().await, Outcome::Now(()));
    assert!(
        timeout(T / 4, job.call()).await.is_err(),
        "the owner timed out"
    );
    assert!(job.is_pending(), "the run was handed on");
    let waiter = tokio::spawn({
        let job = job.clone();
        async move { job.call_covered().await }
    });
    let outcome = within_patience("the waiter was never woken", waiter).await;
    assert_eq!(outcome.unwrap(), Outcome::Coalesced);
    assert_eq!(calls.load(Relaxed), 2);
    assert!(!job.is_pending());
}

/// Every control and reading of `AsyncThrottled` reaches its throttle: flush and cancel say
/// whether something was pending and wake the owner, a new threshold moves the deadline,
/// counts and `waiting` are the throttle's.
#[tokio::test(start_paused = true)]
async fn the_wrapper_controls_and_reads_its_throttle() {
    let throttle = Throttle::builder(T)
        .clock(TokioClock::new())
        .counting(true)
        .build()
        .unwrap();
    let job = Arc::new(AsyncThrottled::from_throttle(throttle, async || 4));
    assert_eq!(job.threshold(), T);
    assert_eq!(job.last_run(), None);
    assert!(!job.flush() && !job.cancel(), "nothing pending yet");
    assert_eq!(job.call().await, Outcome::Now(4));
    assert_eq!(job.last_run(), Some(0));
    // A flush runs the pending call now, not at the deadline.
    let owner = tokio::spawn({
        let job = job.clone();
        async move { (job.call().await, Instant::now()) }
    });
    soon("the owner claimed the deferral", || job.is_pending()).await;
    let flushed_at = Instant::now();
    assert_eq!(job.call().await, Outcome::Coalesced);
    let waiter = tokio::spawn({
        let job = job.clone();
        async move { job.call_covered().await }
    });
    soon("the waiter waits", || job.waiting() == 1).await;
    assert!(job.flush());
    let (outcome, ran_at) = owner.await.unwrap();
    assert_eq!(outcome, Outcome::Deferred(4));
    assert!(
        ran_at - flushed_at < T,
        "the flush ran it before its deadline"
    );
    assert_eq!(waiter.await.unwrap(), Outcome::Covered(4));
    assert_eq!(job.waiting(), 0);
    // A cancel: the owner is told, and the call after it claims afresh.
    let owner = tokio::spawn({
        let job = job.clone();
        async move { job.call().await }
    });
    until("the owner claimed the deferral", || job.is_pending()).await;
    assert!(job.cancel());
    assert!(!job.cancel(), "idempotent");
    assert_eq!(owner.await.unwrap(), Outcome::Revoked(Revoked::Cancelled));
    assert!(!job.is_pending());
    // A new threshold moves the deadline of the next deferred run.
    job.set_threshold(4 * T).unwrap();
    assert_eq!(job.threshold(), 4 * T);
    assert!(job.set_threshold(Duration::MAX).is_err());
    assert_eq!(
        job.threshold(),
        4 * T,
        "a refused threshold changes nothing"
    );
    let before = Instant::now();
    assert_eq!(job.call().await, Outcome::Deferred(4));
    assert!(
        Instant::now() - before > 2 * T,
        "the run waited out the new threshold"
    );
    // The counts are the throttle's.
    let stats = job.stats().expect("counting");
    assert_eq!((stats.leading, stats.deferred, stats.cancels), (1, 2, 1));
    assert_eq!(stats.coalesced, 2);
    assert_eq!(job.take_skipped(), 2);
    assert_eq!(job.take_skipped(), 0, "each count is taken once");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_future_is_dropped_is_forgotten() {
    let throttle = Throttle::with_clock(T, TokioClock::new()).unwrap();
    let job = Arc::new(AsyncThrottled::from_throttle(throttle, async || 2));
    assert_eq!(job.call().await, Outcome::Now(2));
    let owner = tokio::spawn({
        let job = job.clone();
        async move { job.call().await }
    });
    until("the owner claimed the deferral", || job.is_pending()).await;
    // A waiter that gives up before the covering run: its future is dropped mid-wait.
    assert!(timeout(T / 10, job.call_covered()).await.is_err());
    assert_eq!(job.waiting(), 0, "a dropped waiter is still counted");
    assert_eq!(owner.await.unwrap(), Outcome::Deferred(2));
}

/// Waits a few turns of a current-thread runtime for `done`: for what the tasks just spawned
/// make true when they are first polled, so that a wrong reading fails at once.
async fn soon(what: &str, done: impl Fn() -> bool) {
    for _ in 0..100 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("after 100 turns of the runtime, still not true: {what}");
}

/// Yields to the runtime until `done`, failing after the test's patience in real time with `what` rather than
/// spin forever.
async fn until(what: &str, done: impl Fn() -> bool) {
    let patience = std::time::Instant::now() + wait_for::patience();
    while !done() {
        assert!(
            std::time::Instant::now() < patience,
            "out of patience: still not true: {what}"
        );
        tokio::task::yield_now().await;
    }
}
