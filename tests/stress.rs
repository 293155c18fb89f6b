//! Eight threads on the real clock, owners that randomly run, give up or panic: G1 on every
//! recorded stamp, no stranded deferral once they stop, and proof that CAS contention happened.

use atomic_throttle::{Admission, DefaultClock, Throttle};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[path = "support/stamp_clock.rs"]
mod stamp_clock;

use stamp_clock::{last_reading, StampClock};

const THREADS: usize = 8;
const THRESHOLD: Duration = Duration::from_micros(50);
const RUN_FOR: Duration = Duration::from_millis(1500);
/// On a loaded machine the threads may take turns rather than contend; they keep going (up to
/// this long) until at least one CAS was lost and one owner crashed.
const RUN_AT_MOST: Duration = Duration::from_secs(60);

#[test]
fn eight_threads_keep_runs_apart_and_strand_nothing() {
    let throttle =
        Arc::new(Throttle::with_clock(THRESHOLD, StampClock(DefaultClock::new())).unwrap());
    let lost_cas = Arc::new(AtomicU64::new(0));
    let panics = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(THREADS));
    let silence = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        if info.payload().downcast_ref::<&str>() != Some(&"owner crashed") {
            eprintln!("{info}");
        }
    }));

    let threads: Vec<_> = (0..THREADS)
        .map(|id| {
            let (throttle, lost_cas, panics, barrier) = (
                throttle.clone(),
                lost_cas.clone(),
                panics.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                let mut stamps = Vec::new();
                let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ id as u64;
                barrier.wait();
                let start = Instant::now();
                let exercised = || lost_cas.load(Relaxed) > 0 && panics.load(Relaxed) > 0;
                while start.elapsed() < RUN_FOR || (!exercised() && start.elapsed() < RUN_AT_MOST) {
                    let (answer, lost) = throttle.admit_counting_retries();
                    lost_cas.fetch_add(u64::from(lost), Relaxed);
                    match answer {
                        Admission::Now => stamps.push(last_reading()),
                        Admission::Coalesced => {}
                        Admission::Suppressed { .. } => unreachable!("not a leading-only throttle"),
                        Admission::Deferred(deferral) => {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            match seed % 4 {
                                0 => stamps.extend(deferral.run(last_reading)),
                                1 => drop(deferral), // gives up
                                2 => {
                                    // Crashes while owning the deferral.
                                    let crashed = std::panic::catch_unwind(
                                        std::panic::AssertUnwindSafe(move || {
                                            let _owner = deferral;
                                            panic!("owner crashed");
                                        }),
                                    );
                                    assert!(crashed.is_err());
                                    panics.fetch_add(1, Relaxed);
                                }
                                _ => {
                                    // Its own event loop: try, else give up.
                                    if let Ok(stamp) = deferral.try_run(last_reading) {
                                        stamps.push(stamp);
                                    }
                                }
                            }
                        }
                    }
                }
                stamps
            })
        })
        .collect();

    let mut stamps: Vec<u64> = threads
        .into_iter()
        .flat_map(|thread| thread.join().unwrap())
        .collect();
    std::panic::set_hook(silence);

    stamps.sort_unstable();
    assert!(stamps.len() > 100, "only {} runs", stamps.len());
    let threshold = THRESHOLD.as_nanos() as u64;
    for pair in stamps.windows(2) {
        assert!(
            pair[1] - pair[0] >= threshold,
            "G1: runs {} ns apart, threshold {threshold} ns",
            pair[1] - pair[0]
        );
    }
    // Quiescent: nobody owns a deferral, so none may be pending and no call is Coalesced.
    assert!(!throttle.is_pending(), "a deferral was stranded");
    assert!(!throttle.admit().is_coalesced());
    assert!(
        panics.load(Relaxed) > 0,
        "no owner crashed: the test exercised nothing"
    );
    let lost = lost_cas.load(Relaxed);
    assert!(
        lost > 0,
        "no CAS was ever lost: the threads did not contend"
    );
    eprintln!(
        "{} runs, {} owner crashes, {lost} lost CASes",
        stamps.len(),
        panics.load(Relaxed)
    );
}
