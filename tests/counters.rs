//! Counting without a shared write: every coalesced or suppressed call is counted exactly once,
//! by whichever take comes first after it, with many threads at once, more threads than the
//! counters have cells of their own, and threads that come and go.

use atomic_throttle::{Admission, ManualClock, Mode, Throttle};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// A counting throttle with a deferral pending for good: every admission is Coalesced.
fn saturated() -> Arc<Throttle<ManualClock>> {
    let throttle = Arc::new(
        Throttle::builder(Duration::from_secs(60))
            .clock(ManualClock::new())
            .counting(true)
            .build()
            .unwrap(),
    );
    assert!(throttle.admit().is_now());
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    std::mem::forget(deferral);
    throttle
}

/// `threads` threads, all alive at once, each making `calls` Coalesced admissions, while
/// another thread takes the count over and over. Returns what was taken and what was left.
fn hammer(threads: usize, calls: u64) -> (u64, u64, Arc<Throttle<ManualClock>>) {
    let throttle = saturated();
    let barrier = Arc::new(Barrier::new(threads + 1));
    let done = Arc::new(AtomicBool::new(false));
    let taken = Arc::new(AtomicU64::new(0));
    let taker = {
        let (throttle, done, taken) = (throttle.clone(), done.clone(), taken.clone());
        std::thread::spawn(move || {
            while !done.load(Relaxed) {
                taken.fetch_add(throttle.take_skipped(), Relaxed);
            }
        })
    };
    let callers: Vec<_> = (0..threads)
        .map(|_| {
            let (throttle, barrier) = (throttle.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..calls {
                    assert!(throttle.admit().is_coalesced());
                }
                barrier.wait(); // every caller alive until all are done
            })
        })
        .collect();
    barrier.wait();
    barrier.wait();
    for caller in callers {
        caller.join().unwrap();
    }
    done.store(true, Relaxed);
    taker.join().unwrap();
    let left = throttle.take_skipped();
    (taken.load(Relaxed), left, throttle)
}

#[test]
fn eight_threads_at_once_are_each_counted_exactly_once() {
    let (taken, left, throttle) = hammer(8, 50_000);
    assert_eq!(taken + left, 400_000, "taken {taken} + left {left}");
    assert_eq!(throttle.stats().unwrap().coalesced, 400_000);
    assert_eq!(throttle.take_skipped(), 0, "counted twice");
}

#[test]
fn more_threads_than_cells_still_count_exactly() {
    // Past the 64 cells of their own, threads share one overflow cell.
    let (taken, left, throttle) = hammer(80, 2_000);
    assert_eq!(taken + left, 160_000, "taken {taken} + left {left}");
    assert_eq!(throttle.stats().unwrap().coalesced, 160_000);
}

#[test]
fn threads_that_come_and_go_pass_their_cells_on() {
    let throttle = Arc::new(
        Throttle::builder(Duration::from_secs(60))
            .clock(ManualClock::new())
            .mode(Mode::LeadingOnly)
            .counting(true)
            .build()
            .unwrap(),
    );
    assert!(throttle.admit().is_now());
    let mut taken = 0;
    for round in 0..50 {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let throttle = throttle.clone();
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        assert!(throttle.admit().is_suppressed());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        if round % 7 == 0 {
            taken += throttle.take_skipped();
        }
    }
    taken += throttle.take_skipped();
    assert_eq!(taken, 200_000);
    assert_eq!(throttle.stats().unwrap().suppressed, 200_000);
}
