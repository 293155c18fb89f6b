//! SPEC's cost targets, with every baseline in the same group of the same run.
//!
//! ```text
//! cargo bench --bench admission                 # everything
//! cargo bench --bench admission -- contended    # one group
//! ```
//!
//! Groups: `floor` (a bare load, an uncontended CAS, quanta's readings), `coalesced` (a
//! saturated throttle on one thread), `now_path` (a clock read and a CAS), `contended/N`
//! (N threads hammering one saturated throttle, cost per call), `mix` (windows turning over
//! while two threads call, owners running the deferred work), and the deferred run's
//! lateness, printed as percentiles after criterion's report.

#[path = "support/neutron_mutex.rs"]
mod neutron_mutex;

use atomic_throttle::{Admission, DefaultClock, Detached, Dispatch, LeadingRun, Throttle};
use criterion::{black_box, criterion_group, BenchmarkId, Criterion};
use governor::{Quota, RateLimiter};
use neutron_mutex::{MutexAnswer, NeutronMutex};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

const SATURATED: Duration = Duration::from_secs(3600);

/// A throttle with a deferral pending for the whole run: every admission is Coalesced.
fn saturated_throttle() -> &'static Throttle {
    let throttle: &'static Throttle = Box::leak(Box::new(Throttle::new(SATURATED)));
    assert!(throttle.admit().is_now());
    let Admission::Deferred(deferral) = throttle.admit() else {
        unreachable!()
    };
    std::mem::forget(deferral); // pending for good: the saturated state under test
    assert!(throttle.admit().is_coalesced());
    throttle
}

/// A governor limiter that rejects every call.
fn saturated_governor() -> governor::DefaultDirectRateLimiter {
    let limiter = RateLimiter::direct(Quota::with_period(SATURATED).unwrap());
    assert!(limiter.check().is_ok());
    assert!(limiter.check().is_err());
    limiter
}

/// The mutex port with its deferred flag set: every call is Coalesced.
fn saturated_mutex() -> NeutronMutex<DefaultClock> {
    let mutex = NeutronMutex::new(SATURATED, DefaultClock::new());
    assert_eq!(mutex.decide(), MutexAnswer::Now);
    assert_eq!(mutex.decide(), MutexAnswer::Deferred);
    assert_eq!(mutex.decide(), MutexAnswer::Coalesced);
    mutex
}

fn floor(c: &mut Criterion) {
    let mut group = c.benchmark_group("floor");
    let word = AtomicU64::new(0);
    group.bench_function("atomic_load_acquire", |b| {
        b.iter(|| black_box(&word).load(Ordering::Acquire))
    });
    group.bench_function("atomic_cas_uncontended", |b| {
        let mut current = 0;
        b.iter(|| {
            let next = current + 1;
            let _ = black_box(&word).compare_exchange(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            current = next;
        })
    });
    let clock = quanta::Clock::new();
    group.bench_function("quanta_now", |b| b.iter(|| black_box(&clock).now()));
    group.bench_function("quanta_raw", |b| b.iter(|| black_box(&clock).raw()));
    group.bench_function("quanta_recent", |b| b.iter(|| black_box(&clock).recent()));
    let default = DefaultClock::new();
    group.bench_function("default_clock_now_nanos", |b| {
        b.iter(|| atomic_throttle::Clock::now_nanos(black_box(&default)))
    });
    group.finish();
}

fn coalesced(c: &mut Criterion) {
    let mut group = c.benchmark_group("coalesced");
    let word = AtomicU64::new(1 << 63);
    group.bench_function("atomic_load_acquire", |b| {
        b.iter(|| black_box(&word).load(Ordering::Acquire) >> 63 != 0)
    });
    let throttle = saturated_throttle();
    group.bench_function("throttle_admit", |b| {
        b.iter(|| black_box(throttle).admit().is_coalesced())
    });
    group.bench_function("throttle_admit_publishing", |b| {
        b.iter(|| black_box(throttle).admit_publishing().is_coalesced())
    });
    let limiter = saturated_governor();
    group.bench_function("governor_check", |b| {
        b.iter(|| black_box(&limiter).check().is_err())
    });
    let mutex = saturated_mutex();
    group.bench_function("mutex_port", |b| {
        b.iter(|| black_box(&mutex).decide() == MutexAnswer::Coalesced)
    });
    group.finish();
}

fn now_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("now_path");
    let clock = DefaultClock::new();
    let word = AtomicU64::new(0);
    group.bench_function("clock_read_plus_cas", |b| {
        b.iter(|| {
            let now = atomic_throttle::Clock::now_nanos(black_box(&clock));
            let seen = black_box(&word).load(Ordering::Acquire);
            black_box(&word).compare_exchange(seen, now, Ordering::AcqRel, Ordering::Acquire)
        })
    });
    // A zero threshold answers every admission Now: one clock read and one CAS.
    let open = Throttle::new(Duration::ZERO);
    group.bench_function("throttle_admit", |b| {
        b.iter(|| black_box(&open).admit().is_now())
    });
    let limiter = RateLimiter::direct(Quota::per_second(NonZeroU32::MAX));
    group.bench_function("governor_check", |b| {
        b.iter(|| black_box(&limiter).check().is_ok())
    });
    let mutex = NeutronMutex::new(Duration::ZERO, DefaultClock::new());
    group.bench_function("mutex_port", |b| {
        b.iter(|| black_box(&mutex).decide() == MutexAnswer::Now)
    });
    group.finish();
}

/// Cost per call with `threads` threads each making `iters` calls at once, behind a barrier:
/// the slowest thread's time divided by `iters`. Generic, so that the call inlines into the
/// loop as it would in a user's code.
fn per_call_contended<F: Fn() + Sync>(threads: usize, iters: u64, call: F) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        call();
                    }
                    start.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .max()
            .unwrap()
    })
}

fn contended(c: &mut Criterion) {
    let throttle = saturated_throttle();
    let limiter = saturated_governor();
    let mutex = saturated_mutex();
    let word = AtomicU64::new(1 << 63);
    let max_threads: usize = std::env::var("BENCH_MAX_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4);
    let counts: Vec<usize> = [1, 2, 4, 8, 16]
        .into_iter()
        .filter(|&n| n <= max_threads)
        .collect();
    for threads in counts {
        let mut group = c.benchmark_group(format!("contended/{threads}"));
        macro_rules! bench {
            ($name:literal, $call:expr) => {
                group.bench_function(BenchmarkId::from_parameter($name), |b| {
                    b.iter_custom(|iters| per_call_contended(threads, iters, $call))
                });
            };
        }
        bench!("atomic_load_acquire", || {
            black_box(black_box(&word).load(Ordering::Acquire) >> 63 != 0);
        });
        bench!("throttle_admit", || {
            black_box(black_box(throttle).admit().is_coalesced());
        });
        bench!("throttle_admit_publishing", || {
            black_box(black_box(throttle).admit_publishing().is_coalesced());
        });
        bench!("governor_check", || {
            black_box(black_box(&limiter).check().is_err());
        });
        bench!("mutex_port", || {
            black_box(black_box(&mutex).decide());
        });
        group.finish();
    }
}

/// `threads` threads make `iters` calls between them through `call`, which returns how long
/// the call spent as a deferral's owner, waiting for the deadline and running the work, or
/// `None`. Calls are claimed in batches from a shared budget, so that every thread calls until
/// the end. Returns the threads' time for `iters` calls, the owners' waits excluded. Every
/// sample makes at least 2^20 calls, many windows' worth, so that the window in progress when
/// the budget runs out does not weigh on the result.
fn caller_cost<F: Fn() -> Option<Duration> + Sync>(
    threads: usize,
    iters: u64,
    call: F,
) -> Duration {
    const BATCH: u64 = 1024;
    let budget = AtomicU64::new(iters.max(1 << 20).div_ceil(BATCH));
    let barrier = Barrier::new(threads);
    let (busy, calls) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    let (mut waited, mut calls) = (Duration::ZERO, 0);
                    let claim = |left: u64| left.checked_sub(1);
                    while budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, claim)
                        .is_ok()
                    {
                        for _ in 0..BATCH {
                            waited += call().unwrap_or_default();
                        }
                        calls += BATCH;
                    }
                    (start.elapsed().saturating_sub(waited), calls)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .fold((Duration::ZERO, 0), |(t, n), (dt, dn)| (t + dt, n + dn))
    });
    busy.mul_f64(iters as f64 / calls.max(1) as f64)
}

/// A realistic mix: two threads call continuously while windows of 50 us turn over, so Now,
/// Deferred and Coalesced answers all occur, and each deferral's owner waits for its deadline
/// and runs the work. Cost per call, all threads' time together, the owners' waits excluded.
fn mix(c: &mut Criterion) {
    const THRESHOLD: Duration = Duration::from_micros(50);
    let mut group = c.benchmark_group("mix");
    let threads = 2;
    let runs = AtomicU64::new(0);
    let work = || {
        runs.fetch_add(1, Ordering::Relaxed);
    };
    let throttle = Throttle::new(THRESHOLD);
    group.bench_function("throttle", |b| {
        b.iter_custom(|iters| {
            caller_cost(threads, iters, || match throttle.admit() {
                Admission::Now => {
                    work();
                    None
                }
                Admission::Deferred(deferral) => {
                    let start = Instant::now();
                    deferral.run(work).expect("nobody cancels");
                    Some(start.elapsed())
                }
                Admission::Coalesced | Admission::Suppressed { .. } => None,
            })
        })
    });
    let mutex = NeutronMutex::new(THRESHOLD, DefaultClock::new());
    group.bench_function("mutex_port", |b| {
        b.iter_custom(|iters| {
            caller_cost(threads, iters, || match mutex.decide() {
                MutexAnswer::Now => {
                    work();
                    None
                }
                MutexAnswer::Deferred => {
                    let start = Instant::now();
                    mutex.finish_deferred();
                    work();
                    Some(start.elapsed())
                }
                MutexAnswer::Coalesced => None,
            })
        })
    });
    group.finish();
}

/// How long after its deadline `Deferral::run` starts the work, for several spin settings.
fn lateness() {
    const THRESHOLD: Duration = Duration::from_millis(1);
    const RUNS: usize = 300;
    println!(
        "\nlateness of Deferral::run after its deadline ({RUNS} runs, threshold {THRESHOLD:?})"
    );
    println!("  {:<12} {:>10} {:>10} {:>10}", "spin", "p50", "p99", "max");
    for spin in [
        Duration::ZERO,
        Duration::from_micros(20),
        Duration::from_micros(100),
    ] {
        let clock = DefaultClock::new().with_spin(spin);
        let throttle = Throttle::with_clock(THRESHOLD, clock).unwrap();
        let mut late = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let _ = throttle.admit();
            let Admission::Deferred(deferral) = throttle.admit() else {
                continue;
            };
            let deadline = deferral.deadline();
            let started = deferral
                .run(|| atomic_throttle::Clock::now_nanos(&clock))
                .expect("nobody cancels");
            late.push(started.saturating_sub(deadline));
        }
        print_lateness(spin, late, "");
    }
    detached_lateness(THRESHOLD, RUNS);
}

/// The same for a `Detached` throttle's timer thread: how long after the window ends (a
/// threshold after the leading run's start) the deferred run starts.
fn detached_lateness(threshold: Duration, runs: usize) {
    let clock = DefaultClock::new();
    let starts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let job = Detached::builder(Throttle::new(threshold))
        .leading_run(LeadingRun::Inline)
        .spawn({
            let starts = starts.clone();
            move || {
                starts
                    .lock()
                    .unwrap()
                    .push(atomic_throttle::Clock::now_nanos(&clock))
            }
        })
        .unwrap();
    let mut late = Vec::with_capacity(runs);
    for _ in 0..runs {
        std::thread::sleep(threshold * 2); // let the last window end
        starts.lock().unwrap().clear();
        assert_eq!(job.call(), Dispatch::Leading);
        assert_eq!(job.call(), Dispatch::Deferred);
        while starts.lock().unwrap().len() < 2 {
            std::thread::yield_now();
        }
        let starts = starts.lock().unwrap();
        let deadline = starts[0] + threshold.as_nanos() as u64;
        late.push(starts[1].saturating_sub(deadline));
    }
    print_lateness(
        DefaultClock::DEFAULT_SPIN,
        late,
        "   (Detached timer thread, default spin)",
    );
}

/// One row of the lateness table: the spin, then the p50, p99 and maximum of `late` (ns).
fn print_lateness(spin: Duration, mut late: Vec<u64>, note: &str) {
    late.sort_unstable();
    let pct = |p: usize| Duration::from_nanos(late[(late.len() - 1) * p / 100]);
    println!(
        "  {:<12} {:>10.1?} {:>10.1?} {:>10.1?}{note}",
        format!("{spin:?}"),
        pct(50),
        pct(99),
        pct(100)
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = floor, coalesced, now_path, contended, mix
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Under `cargo test --benches` the harness only checks that benches run.
    if !std::env::args().any(|arg| arg == "--test" || arg == "--list") {
        lateness();
        println!(
            "size_of::<Throttle>() = {} bytes",
            std::mem::size_of::<Throttle>()
        );
    }
}
