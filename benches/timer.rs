//! Ten thousand detached throttles: on one shared timer, and on a timer thread each.
//!
//! ```text
//! cargo bench --bench timer
//! ```
//!
//! Criterion measures what a hand-off costs the caller (`hand_off`). Then, printed after its
//! report: how late deferred runs start after their deadlines with 10,000 throttles on one
//! [`SharedTimer`] (the work's own clock reading against the deadline, p50 / p99 / max), the
//! memory each registered throttle costs (a counting allocator), and the same with 10,000
//! per-throttle timer threads, if this machine lets us start them.

use atomic_throttle::{Clock, DefaultClock, Detached, Dispatch, LeadingRun, SharedTimer, Throttle};
use criterion::{criterion_group, Criterion};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts the bytes the process has allocated and not freed.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const THROTTLES: usize = 10_000;
const THRESHOLD: Duration = Duration::from_millis(50);

/// What a caller pays for a hand-off: a throttle with a zero threshold answers every call
/// Leading, which it hands to whoever serves the throttle (a counter bump, a push onto the
/// shared timer's intake unless queued, an unpark).
fn hand_off(c: &mut Criterion) {
    let mut group = c.benchmark_group("hand_off");
    let own = Detached::new(Duration::ZERO, || ());
    group.bench_function("own_thread", |b| b.iter(|| black_box(own.call())));
    drop(own);
    let timer = SharedTimer::new();
    let shared = Detached::builder(Throttle::new(Duration::ZERO))
        .timer(&timer)
        .spawn(|| ())
        .unwrap();
    group.bench_function("shared_timer", |b| b.iter(|| black_box(shared.call())));
    drop(shared);
    group.finish();
}

/// Per throttle: when its pending deferral is due, and when its work last started.
#[derive(Default)]
struct Probe {
    deadline: AtomicU64,
    started: AtomicU64,
    runs: AtomicU64,
}

fn probes() -> Arc<Vec<Probe>> {
    Arc::new((0..THROTTLES).map(|_| Probe::default()).collect())
}

/// A work that records its start on its probe.
fn work(probes: &Arc<Vec<Probe>>, i: usize) -> impl Fn() + Send + Sync + 'static {
    let (probes, clock) = (probes.clone(), DefaultClock::new());
    move || {
        let probe = &probes[i];
        probe.started.store(clock.now_nanos(), Relaxed);
        probe.runs.fetch_add(1, Relaxed);
    }
}

/// One round over every throttle, `spread` apart in all: a leading run (inline, so that its
/// stamp is the caller's admission), then a deferred run due a threshold later; returns each
/// deferred run's lateness in nanoseconds. The deadlines are spread as evenly as the calls.
fn round<F: Fn() + Send + Sync + 'static>(
    jobs: &[Detached<F>],
    probes: &[Probe],
    spread: Duration,
) -> Vec<u64> {
    let start = Instant::now();
    let before: Vec<u64> = probes.iter().map(|p| p.runs.load(Relaxed)).collect();
    for (i, (job, probe)) in jobs.iter().zip(probes).enumerate() {
        // Pace the calls: throttle i at i/N of the spread (sleeping, so as to leave the
        // machine's cores to the timer).
        let at = start + spread.mul_f64(i as f64 / jobs.len() as f64);
        if let Some(ahead) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(ahead);
        }
        assert_eq!(job.call(), Dispatch::Leading);
        assert_eq!(job.call(), Dispatch::Deferred);
        let stamp = job.last_run().expect("a leading run");
        probe
            .deadline
            .store(stamp + THRESHOLD.as_nanos() as u64, Relaxed);
    }
    for (probe, before) in probes.iter().zip(&before) {
        while probe.runs.load(Relaxed) < before + 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    std::thread::sleep(THRESHOLD * 2); // let every window end before the next round
    probes
        .iter()
        .map(|p| {
            p.started
                .load(Relaxed)
                .saturating_sub(p.deadline.load(Relaxed))
        })
        .collect()
}

/// One row: p50, p99 and the maximum of `late` (ns).
fn print_lateness(what: &str, mut late: Vec<u64>) {
    late.sort_unstable();
    let pct = |p: f64| Duration::from_nanos(late[((late.len() - 1) as f64 * p) as usize]);
    println!(
        "  {what:<44} {:>10.1?} {:>10.1?} {:>10.1?}   ({} runs)",
        pct(0.50),
        pct(0.99),
        pct(1.0),
        late.len()
    );
}

/// The machine's load averages, from `/proc` (Linux): the lateness depends on them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|loads| {
            let loads: Vec<&str> = loads.split_whitespace().take(3).collect();
            (loads.len() == 3).then(|| loads.join(" "))
        })
        .unwrap_or_else(|| "?".into())
}

/// The process's resident memory, from `/proc` (Linux), in bytes.
fn resident_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn shared_timer() {
    println!(
        "\n{THROTTLES} throttles on one SharedTimer (2 workers, lead 200 us), threshold \
         {THRESHOLD:?}; load average {}",
        load_average()
    );
    let _ = DefaultClock::calibrate();
    let timer = SharedTimer::new();
    let probes = probes();
    let mut jobs = Vec::with_capacity(THROTTLES);
    let bytes_before = LIVE_BYTES.load(Relaxed);
    let rss_before = resident_bytes();
    for i in 0..THROTTLES {
        jobs.push(
            Detached::builder(Throttle::new(THRESHOLD))
                .timer(&timer)
                .leading_run(LeadingRun::Inline)
                .spawn(work(&probes, i))
                .unwrap(),
        );
    }
    let registered = LIVE_BYTES.load(Relaxed) - bytes_before;
    println!(
        "  {:<44} {:>10} {:>10} {:>10}",
        "deferred run lateness", "p50", "p99", "max"
    );
    let mut all = Vec::new();
    for (what, spread) in [
        (
            "deadlines spread over 4 s (2,500/s)",
            Duration::from_secs(4),
        ),
        (
            "deadlines spread over 1 s (10,000/s)",
            Duration::from_secs(1),
        ),
    ] {
        let late = round(&jobs, &probes, spread);
        all.extend_from_slice(&late);
        print_lateness(what, late);
    }
    print_lateness("both rounds", all);
    let used = LIVE_BYTES.load(Relaxed) - bytes_before;
    let rss = resident_bytes()
        .zip(rss_before)
        .map(|(after, before)| after.saturating_sub(before) / THROTTLES);
    println!(
        "  memory per throttle: {} B allocated when registered, {} B once used (heap and queues \
         grown), {} B resident; plus the handle, {} B, wherever it is kept",
        registered / THROTTLES,
        used / THROTTLES,
        rss.map_or("?".into(), |b| b.to_string()),
        std::mem::size_of_val(&jobs[0]),
    );
    let started = Instant::now();
    drop(jobs);
    timer.shutdown();
    println!(
        "  dropping all and shutting down: {:.1?}",
        started.elapsed()
    );
}

fn per_throttle_threads() {
    println!(
        "\n{THROTTLES} throttles with a timer thread each, threshold {THRESHOLD:?}; load \
         average {}",
        load_average()
    );
    let probes = probes();
    let mut jobs = Vec::with_capacity(THROTTLES);
    let bytes_before = LIVE_BYTES.load(Relaxed);
    let rss_before = resident_bytes();
    let started = Instant::now();
    for i in 0..THROTTLES {
        let spawned = Detached::builder(Throttle::new(THRESHOLD))
            .leading_run(LeadingRun::Inline)
            .spawn(work(&probes, i));
        match spawned {
            Ok(job) => jobs.push(job),
            Err(err) => {
                println!(
                    "  could not start the timer thread of throttle {i} after {:.1?}: {err}",
                    started.elapsed()
                );
                break;
            }
        }
    }
    if jobs.len() < THROTTLES {
        println!("  (no lateness measured: not every throttle has its thread)");
        return;
    }
    println!(
        "  started {} timer threads in {:.1?}",
        jobs.len(),
        started.elapsed()
    );
    let registered = LIVE_BYTES.load(Relaxed) - bytes_before;
    let rss = resident_bytes()
        .zip(rss_before)
        .map(|(after, before)| after.saturating_sub(before) / THROTTLES);
    println!(
        "  {:<44} {:>10} {:>10} {:>10}",
        "deferred run lateness", "p50", "p99", "max"
    );
    let late = round(&jobs, &probes, Duration::from_secs(4));
    print_lateness("deadlines spread over 4 s (2,500/s)", late);
    println!(
        "  memory per throttle: {} B allocated, {} B resident (its thread's stack pages; the \
         kernel's stack and task for it are not counted), 2 MiB of address space",
        registered / THROTTLES,
        rss.map_or("?".into(), |b| b.to_string()),
    );
    let started = Instant::now();
    drop(jobs);
    println!(
        "  dropping all (joining every thread): {:.1?}",
        started.elapsed()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = hand_off
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Under `cargo test --benches` the harness only checks that benches run.
    if !std::env::args().any(|arg| arg == "--test" || arg == "--list") {
        shared_timer();
        per_throttle_threads();
    }
}
