//! Cancel-safety on tokio's paused clock: cancellation by `timeout`, `select!` and
//! `JoinHandle::abort`, at each await point. After each, the next call claims the deferral and
//! runs at the right deadline, and runs stay a threshold apart (G1).
#![cfg(feature = "tokio")]

use atomic_throttle::{Admission, AsyncThrottled, Outcome, Throttle, Throttled, TokioClock};
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
    while !job.throttle().is_pending() {
        tokio::task::yield_now().await;
    }
    assert_eq!(job.call_async().await, Outcome::Coalesced);
    owner.abort();
    assert!(owner.await.unwrap_err().is_cancelled());
    assert_eq!(runs.count(), 1);
    next_call_claims_and_runs_at_the_deadline(&job, &runs).await;
}

#[tokio::test(start_paused = true)]
async fn cancelling_during_the_async_work_never_runs_it_twice() {
    let runs = Runs::default();
    let finished = Arc::new(AtomicU32::new(0));
    let throttle = Throttle::with_clock(T, TokioClock::new()).unwrap();
    let job = AsyncThrottled::from_throttle(throttle, || {
        let (runs, finished) = (runs.clone(), finished.clone());
        async move {
            runs.record();
            sleep(T / 2).await; // the work's own await point
            finished.fetch_add(1, Relaxed);
        }
    });
    // t = 0: the leading run, which finishes at T/2.
    assert_eq!(job.call().await, Outcome::Now(()));

    // t = T/2: Deferred, cancelled at 3T/4 while awaiting the deadline: the work never starts.
    assert!(timeout(T / 4, job.call()).await.is_err());
    assert_eq!(runs.count(), 1);
    assert!(!job.throttle().is_pending());

    // t = 3T/4: Deferred again, runs at T, cancelled at 5T/4 inside the work (which would
    // finish at 3T/2): it started once and did not finish. The run was stamped before the
    // work started.
    assert!(timeout(T / 2, job.call()).await.is_err());
    assert_eq!(runs.count(), 2);
    assert_eq!(finished.load(Relaxed), 1);
    assert!(!job.throttle().is_pending());

    // t = 5T/4: inside the window of that stamp, so Deferred; it runs once, in full, a whole
    // threshold after the cancelled run.
    assert_eq!(job.call().await, Outcome::Deferred(()));
    assert_eq!(runs.count(), 3);
    assert_eq!(finished.load(Relaxed), 2);
    runs.assert_spaced();
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

#[path = "support/stamp_clock.rs"]
mod stamp_clock;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_on_the_real_clock_keep_runs_apart() {
    use stamp_clock::{last_reading, StampClock};
    const T: Duration = Duration::from_millis(2);
    let stamps = Arc::new(Mutex::new(Vec::new()));
    let clock = StampClock(atomic_throttle::DefaultClock::new());
    let throttle = Throttle::with_clock(T, clock).unwrap();
    // The work reads the stamp before its first await: the stamping reading, on this thread.
    let job = Arc::new(AsyncThrottled::from_throttle(throttle, {
        let stamps = stamps.clone();
        move || {
            stamps.lock().unwrap().push(last_reading());
            std::future::ready(())
        }
    }));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let job = job.clone();
            tokio::spawn(async move {
                let deadline = std::time::Instant::now() + Duration::from_millis(200);
                while std::time::Instant::now() < deadline {
                    // Every fourth task gives up its waits half-way.
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
    let mut stamps = stamps.lock().unwrap().clone();
    stamps.sort_unstable();
    assert!(stamps.len() > 20, "only {} runs", stamps.len());
    for pair in stamps.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= T.as_nanos() as u64, "G1: runs {gap} ns apart");
    }
    // Every owner, cancelled or not, is gone: nothing may be pending.
    assert!(
        !job.throttle().is_pending(),
        "G2: a cancelled owner stranded its deferral"
    );
}
