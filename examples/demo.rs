//! Hammers one throttled publisher from every core, then the same load on a port of upstream
//! Neutron's try-lock `throttler` and on a mutex port of the fix proposed in a review of a
//! `Throttler` class, and compares. `--keys N` hammers a `KeyedThrottle` over N keys instead.
//!
//! ```text
//! cargo run --release --example demo [-- --threads N --threshold-us N --seconds N]
//! cargo run --release --example demo -- --detached       # a Detached publisher instead
//! cargo run --release --example demo -- --count          # leading-only, suppressed counts
//! cargo run --release --example demo -- --timeline FILE  # events of one short run, as CSV
//! cargo run --release --example demo -- --keys N         # a KeyedThrottle over N keys
//! ```

#[path = "../benches/support/neutron_mutex.rs"]
mod neutron_mutex;
#[path = "../benches/support/neutron_trylock.rs"]
mod neutron_trylock;
#[path = "../tests/support/stamp_clock.rs"]
mod stamp_clock;

use atomic_throttle::{
    Admission, Clock, DefaultClock, Detached, Dispatch, KeyedAdmission, KeyedDeferral,
    KeyedThrottle, LeadingRun, Mode, NotRun, Outcome, Throttle, Throttled,
};
use neutron_mutex::{MutexAnswer, NeutronMutex};
use neutron_trylock::{NeutronTryLock, TryLockAnswer};
use stamp_clock::{last_reading, StampClock};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

/// Counts the bytes the process holds on the heap, for `--keys`: one relaxed atomic add per
/// allocation or free, which the other modes do not notice.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The bytes the process holds on the heap now.
fn heap_held() -> isize {
    HELD.load(Relaxed)
}

/// Calls timed together; one pair of clock reads costs more than an admission.
const BATCH: u64 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Now,
    Deferred,
    Coalesced,
}

/// One publisher under test.
trait Publisher: Sync {
    fn call(&self) -> Answer;
}

/// What the work records: the stamp of every run.
#[derive(Default)]
struct Runs {
    stamps: Mutex<Vec<u64>>,
    count: AtomicU64,
}

impl Runs {
    fn record(&self) {
        self.stamps.lock().unwrap().push(last_reading());
        self.count.fetch_add(1, Relaxed);
    }
}

impl<F: Fn() + Sync> Publisher for Throttled<F, StampClock> {
    fn call(&self) -> Answer {
        match Throttled::call(self) {
            Outcome::Now(()) => Answer::Now,
            Outcome::Deferred(()) => Answer::Deferred,
            Outcome::Coalesced => Answer::Coalesced,
            other => unreachable!("{other:?}: the demo's throttle trails, and nobody cancels"),
        }
    }
}

impl<F: Fn() + Send + Sync + 'static> Publisher for Detached<F, StampClock> {
    fn call(&self) -> Answer {
        match Detached::call(self) {
            Dispatch::Leading => Answer::Now,
            Dispatch::Deferred => Answer::Deferred,
            Dispatch::Coalesced => Answer::Coalesced,
            other => unreachable!("{other:?}: the demo's throttle trails, and runs until dropped"),
        }
    }
}

struct MutexPublisher<F> {
    throttle: NeutronMutex<StampClock>,
    work: F,
}

impl<F: Fn() + Sync> Publisher for MutexPublisher<F> {
    fn call(&self) -> Answer {
        match self.throttle.call(&self.work).0 {
            MutexAnswer::Now => Answer::Now,
            MutexAnswer::Deferred => Answer::Deferred,
            MutexAnswer::Coalesced => Answer::Coalesced,
        }
    }
}

struct TryLockPublisher<F> {
    throttle: NeutronTryLock<StampClock>,
    work: F,
}

impl<F: Fn() + Sync> Publisher for TryLockPublisher<F> {
    fn call(&self) -> Answer {
        match self.throttle.call(&self.work).0 {
            TryLockAnswer::Now => Answer::Now,
            TryLockAnswer::Deferred => Answer::Deferred,
            TryLockAnswer::Coalesced => Answer::Coalesced,
        }
    }
}

#[derive(Default)]
struct Report {
    calls: u64,
    leading: u64,
    deferred: u64,
    coalesced: u64,
    min_gap: Option<u64>,
    max_coalesced_wait: u64,
    p99_coalesced_wait: u64,
    cost_p50: f64,
    cost_p99: f64,
    seconds: f64,
}

#[derive(Default)]
struct ThreadTally {
    calls: u64,
    leading: u64,
    deferred: u64,
    coalesced: u64,
    /// Per-call cost of batches answered Coalesced throughout, in ns.
    costs: Vec<f64>,
    /// For each window this thread saw, the time just before its first Coalesced call.
    first_coalesced: Vec<u64>,
}

fn hammer(publisher: &dyn Publisher, runs: &Runs, threads: usize, seconds: f64) -> Report {
    let clock = DefaultClock::new();
    let barrier = Barrier::new(threads);
    let end = Arc::new(AtomicU64::new(u64::MAX));
    let started = std::time::Instant::now();
    let tallies: Vec<ThreadTally> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (barrier, end) = (&barrier, end.clone());
                scope.spawn(move || {
                    let mut tally = ThreadTally::default();
                    if barrier.wait().is_leader() {
                        end.store(clock.now_nanos() + (seconds * 1e9) as u64, Relaxed);
                    }
                    barrier.wait();
                    let end = end.load(Relaxed);
                    let mut seen_runs = u64::MAX;
                    let count = |answer: Answer, tally: &mut ThreadTally| {
                        tally.calls += 1;
                        match answer {
                            Answer::Now => tally.leading += 1,
                            Answer::Deferred => tally.deferred += 1,
                            Answer::Coalesced => tally.coalesced += 1,
                        }
                    };
                    loop {
                        // One tracked call: the first Coalesced call of each window marks
                        // the start of the longest wait in that window.
                        let before = clock.now_nanos();
                        if before >= end {
                            break;
                        }
                        let window = runs.count.load(Relaxed);
                        let answer = publisher.call();
                        if answer == Answer::Coalesced && window != seen_runs {
                            seen_runs = window;
                            tally.first_coalesced.push(before);
                        }
                        count(answer, &mut tally);
                        // A timed batch: its cost per call is kept if every call coalesced.
                        let start = clock.now_nanos();
                        let mut all_coalesced = true;
                        for _ in 0..BATCH {
                            let answer = publisher.call();
                            all_coalesced &= answer == Answer::Coalesced;
                            count(answer, &mut tally);
                        }
                        if all_coalesced {
                            let elapsed = clock.now_nanos().saturating_sub(start);
                            tally.costs.push(elapsed as f64 / BATCH as f64);
                        }
                    }
                    tally
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });

    let mut stamps = runs.stamps.lock().unwrap().clone();
    stamps.sort_unstable();
    let mut report = Report {
        // Measured, not the nominal length: a caller that owns a deferral when time is up
        // finishes waiting for it first.
        seconds: started.elapsed().as_secs_f64(),
        min_gap: stamps.windows(2).map(|pair| pair[1] - pair[0]).min(),
        ..Report::default()
    };
    let mut costs = Vec::new();
    let mut waits = Vec::new();
    for tally in tallies {
        report.calls += tally.calls;
        report.leading += tally.leading;
        report.deferred += tally.deferred;
        report.coalesced += tally.coalesced;
        costs.extend(tally.costs);
        for mark in tally.first_coalesced {
            // The run that covers a Coalesced call is the first one stamped after it.
            let covering = stamps.partition_point(|&stamp| stamp <= mark);
            if let Some(&covering) = stamps.get(covering) {
                waits.push(covering - mark);
            }
        }
    }
    waits.sort_unstable();
    if let Some(&max) = waits.last() {
        report.max_coalesced_wait = max;
        report.p99_coalesced_wait = waits[waits.len() * 99 / 100];
    }
    costs.sort_by(f64::total_cmp);
    if !costs.is_empty() {
        report.cost_p50 = costs[costs.len() / 2];
        report.cost_p99 = costs[costs.len() * 99 / 100];
    }
    report
}

/// Which way a measure is better.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

/// How our measure compares with theirs, always as a ratio of at least 1: "N.Nx {better}"
/// when ours is the better one, "N.Nx {worse}" when it is the worse.
fn compared(ours: f64, theirs: f64, better: Better, [if_better, if_worse]: [&str; 2]) -> String {
    let measured = |x: f64| x.is_finite() && x > 0.0;
    if !measured(ours) || !measured(theirs) {
        return format!("no ratio ({ours} against {theirs})");
    }
    let ours_better = match better {
        Better::Higher => ours >= theirs,
        Better::Lower => ours <= theirs,
    };
    let ratio = ours.max(theirs) / ours.min(theirs);
    format!(
        "{ratio:.1}x {}",
        if ours_better { if_better } else { if_worse }
    )
}

fn print_row(label: &str, columns: &[String]) {
    print!("  {label:<38}");
    for column in columns {
        print!(" {column:>18}");
    }
    println!();
}

struct Options {
    threads: usize,
    threshold: Duration,
    seconds: f64,
    detached: bool,
    count: bool,
    timeline: Option<String>,
    keys: Option<usize>,
}

fn options() -> Options {
    let mut options = Options {
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        threshold: Duration::from_micros(1000),
        seconds: 2.0,
        detached: false,
        count: false,
        timeline: None,
        keys: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--threads" => {
                options.threads = value().parse().unwrap_or_else(|_| usage("bad --threads"))
            }
            "--threshold-us" => {
                let micros = value()
                    .parse()
                    .unwrap_or_else(|_| usage("bad --threshold-us"));
                options.threshold = Duration::from_micros(micros);
            }
            "--seconds" => {
                options.seconds = value().parse().unwrap_or_else(|_| usage("bad --seconds"))
            }
            "--detached" => options.detached = true,
            "--count" => options.count = true,
            "--timeline" => options.timeline = Some(value()),
            "--keys" => {
                let keys = value().parse().unwrap_or_else(|_| usage("bad --keys"));
                if keys == 0 || keys > KeyedThrottle::<u64>::MAX_CAPACITY / 2 {
                    usage("--keys must be positive and at most 2^29");
                }
                options.keys = Some(keys);
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if options.threads == 0 || !options.seconds.is_finite() || options.seconds <= 0.0 {
        usage("--threads and --seconds must be positive");
    }
    options
}

fn main() {
    let options = options();
    if let Some(file) = &options.timeline {
        return timeline(&options, file);
    }
    if options.count {
        return count(&options);
    }
    if let Some(keys) = options.keys {
        return keyed(&options, keys);
    }
    let (threads, threshold, seconds) = (options.threads, options.threshold, options.seconds);
    let clock = StampClock(DefaultClock::new());

    println!(
        "atomic-throttle demo: {threads} threads hammer one {} publisher for {seconds} s each, \
         threshold {threshold:?}\n",
        if options.detached {
            "detached"
        } else {
            "throttled"
        }
    );
    let throttle =
        Throttle::with_clock(threshold, clock).unwrap_or_else(|err| usage(&err.to_string()));
    let atomic_runs: &'static Runs = Box::leak(Box::default());
    let a = if options.detached {
        // Leading runs inline, so that every run's work reads its own stamp; deferred runs on
        // the timer thread.
        let publisher = Detached::builder(throttle)
            .leading_run(LeadingRun::Inline)
            .spawn(|| atomic_runs.record())
            .unwrap_or_else(|err| usage(&format!("cannot start the timer thread: {err}")));
        let report = hammer(&publisher, atomic_runs, threads, seconds);
        drop(publisher); // runs the last pending deferral, joins the timer thread
        report
    } else {
        let publisher = Throttled::from_throttle(throttle, || atomic_runs.record());
        hammer(&publisher, atomic_runs, threads, seconds)
    };

    let trylock_runs = Runs::default();
    let trylock = TryLockPublisher {
        throttle: NeutronTryLock::new(threshold, clock),
        work: || trylock_runs.record(),
    };
    let t = hammer(&trylock, &trylock_runs, threads, seconds);

    let mutex_runs = Runs::default();
    let mutex = MutexPublisher {
        throttle: NeutronMutex::new(threshold, clock),
        work: || mutex_runs.record(),
    };
    let m = hammer(&mutex, &mutex_runs, threads, seconds);

    let reports = [&a, &t, &m];
    let row = |label: &str, show: &dyn Fn(&Report) -> String| {
        print_row(label, &reports.map(show));
    };
    print_row(
        "",
        &[
            "atomic-throttle".into(),
            "Neutron try-lock".into(),
            "mutex port".into(),
        ],
    );
    row("calls", &|r| r.calls.to_string());
    row("runs: leading + deferred", &|r| {
        format!("{} + {}", r.leading, r.deferred)
    });
    row("coalesced", &|r| r.coalesced.to_string());
    row("smallest gap between two runs", &|r| {
        r.min_gap
            .map_or("-".into(), |g| format!("{:.3} ms", g as f64 / 1e6))
    });
    row("coalesced call to its run, p99 / longest", &|r| {
        let ms = |nanos: u64| nanos as f64 / 1e6;
        format!(
            "{:.3} / {:.3} ms",
            ms(r.p99_coalesced_wait),
            ms(r.max_coalesced_wait)
        )
    });
    row("admission cost, median / p99", &|r| {
        format!("{:.1} / {:.1} ns", r.cost_p50, r.cost_p99)
    });
    let rate = |r: &Report| r.calls as f64 / r.seconds;
    row("calls per second", &|r| format!("{:.3e}", rate(r)));
    println!();
    for (name, other) in [("Neutron try-lock", &t), ("mutex port", &m)] {
        println!(
            "atomic-throttle against the {name}: {}, {}",
            compared(
                rate(&a),
                rate(other),
                Better::Higher,
                ["more calls per second", "fewer calls per second"]
            ),
            compared(
                a.cost_p50,
                other.cost_p50,
                Better::Lower,
                ["cheaper median admission", "dearer median admission"]
            ),
        );
    }
    let spaced = a
        .min_gap
        .is_none_or(|gap| gap >= threshold.as_nanos() as u64);
    println!(
        "spacing (guarantee 1): every pair of runs at least {threshold:?} apart: {}",
        if spaced { "yes" } else { "NO" }
    );
    if !spaced {
        std::process::exit(1);
    }
}

/// `--count`: a leading-only throttle that counts, the shape of the kernel's
/// `printk_ratelimited`: each run reports how many calls were suppressed since the last.
fn count(options: &Options) {
    let (threads, threshold, seconds) = (options.threads, options.threshold, options.seconds);
    println!(
        "atomic-throttle demo: {threads} threads call one leading-only, counting throttle for \
         {seconds} s, threshold {threshold:?}\n"
    );
    let throttle = Throttle::builder(threshold)
        .mode(Mode::LeadingOnly)
        .counting(true)
        .build()
        .unwrap_or_else(|err| usage(&err.to_string()));
    let reported = AtomicU64::new(0);
    let printed = AtomicU64::new(0);
    let end = std::time::Instant::now() + Duration::from_secs_f64(seconds);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while std::time::Instant::now() < end {
                    if let Admission::Now = throttle.admit() {
                        let skipped = throttle.take_skipped();
                        reported.fetch_add(skipped, Relaxed);
                        if printed.fetch_add(1, Relaxed) < 5 {
                            println!("  run: {skipped} calls suppressed since the last run");
                        }
                    }
                }
            });
        }
    });
    let left = throttle.take_skipped();
    let stats = throttle.stats().expect("a counting throttle");
    println!(
        "  ...\n\n  leading runs                     {:>14}\n  \
         suppressed calls (counted)       {:>14}\n  \
         reported to the runs + left over {:>14} + {}",
        stats.leading,
        stats.suppressed,
        reported.load(Relaxed),
        left
    );
    let exact = reported.load(Relaxed) + left == stats.suppressed;
    println!(
        "every suppressed call reported exactly once: {}",
        if exact { "yes" } else { "NO" }
    );
    if !exact {
        std::process::exit(1);
    }
}

/// `--timeline FILE`: 30 ms of calls from two threads on a 1 ms throttle, every answer but the
/// Coalesced ones (one in 64 of those) and every run, as `nanos,kind` lines, for
/// `benches/report.py --timeline FILE`.
fn timeline(options: &Options, file: &str) {
    let clock = StampClock(DefaultClock::new());
    let events = Mutex::new(vec![(0u64, "start")]);
    let throttle = Throttle::with_clock(Duration::from_millis(1), clock).unwrap();
    let end = clock.now_nanos() + 30_000_000;
    events.lock().unwrap()[0].0 = clock.now_nanos();
    std::thread::scope(|scope| {
        for _ in 0..options.threads.min(2) {
            scope.spawn(|| {
                let mut coalesced = 0u64;
                let mut mine = Vec::new();
                while clock.now_nanos() < end {
                    let before = clock.now_nanos();
                    match throttle.admit() {
                        Admission::Now => {
                            mine.push((last_reading(), "leading"));
                        }
                        Admission::Deferred(deferral) => {
                            mine.push((before, "deferred_call"));
                            let _ = deferral.run(|| mine.push((last_reading(), "deferred_run")));
                        }
                        Admission::Coalesced => {
                            coalesced += 1;
                            if coalesced.is_multiple_of(64) {
                                mine.push((before, "coalesced"));
                            }
                        }
                        Admission::Suppressed { .. } => unreachable!("not leading-only"),
                    }
                }
                events.lock().unwrap().extend(mine);
            });
        }
    });
    let mut events = events.into_inner().unwrap();
    events.sort_unstable();
    let csv: String = std::iter::once("nanos,kind\n".to_string())
        .chain(
            events
                .iter()
                .map(|(nanos, kind)| format!("{nanos},{kind}\n")),
        )
        .collect();
    std::fs::write(file, csv).unwrap_or_else(|err| usage(&format!("cannot write {file}: {err}")));
    println!("wrote {} events to {file}", events.len());
}

/// `--keys N`: how many keys of the N take half the calls.
const HOT_KEYS: u64 = 8;
/// `--keys N`: one call in this many is timed, and is where due deferrals are run.
const SAMPLE_EVERY: u32 = 64;
/// `--keys N`: no run of the key yet.
const NO_RUN: u64 = u64::MAX;

/// The next word of a per-thread xorshift64* generator; `state` must not be zero.
fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// The key of one call, from a random word: bit 0 sends half the calls to the hot keys (the
/// first `min(8, keys)`), the other half anywhere in `0..keys`; the high bits pick the key
/// (a multiply, not a division, which would cost as much as the admission).
fn pick_key(random: u64, keys: u64) -> u64 {
    let span = if random & 1 == 0 {
        keys.min(HOT_KEYS)
    } else {
        keys
    };
    ((u128::from(random) * u128::from(span)) >> 64) as u64
}

/// What the work records for `--keys`: each key's last run, and the smallest gap seen
/// between two runs of one key.
struct KeyRuns {
    last: Vec<AtomicU64>,
    min_gap: AtomicU64,
}

impl KeyRuns {
    fn new(keys: usize) -> Self {
        Self {
            last: (0..keys).map(|_| AtomicU64::new(NO_RUN)).collect(),
            min_gap: AtomicU64::new(u64::MAX),
        }
    }

    /// The work of a run of `key`, started right after its stamp: `last_reading` is the stamp.
    /// Runs of one key may record out of order; any two of them are a real pair of runs.
    fn record(&self, key: u64) {
        let now = last_reading();
        let before = self.last[key as usize].swap(now, Relaxed);
        if before != NO_RUN {
            self.min_gap.fetch_min(now.abs_diff(before), Relaxed);
        }
    }
}

type KeyTable = KeyedThrottle<u64, StampClock>;

/// A deferral a `--keys` thread holds until its deadline, in a heap that pops the earliest.
struct Pending<'a> {
    deadline: u64,
    key: u64,
    deferral: KeyedDeferral<&'a KeyTable>,
}

impl PartialEq for Pending<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.deadline == other.deadline
    }
}

impl Eq for Pending<'_> {}

impl PartialOrd for Pending<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        other.deadline.cmp(&self.deadline) // the earliest deadline on top
    }
}

#[derive(Default)]
struct KeyTally {
    calls: u64,
    leading: u64,
    deferred: u64,
    coalesced: u64,
    full: u64,
    /// Sampled costs of Coalesced admissions (hits), in ns.
    hit_costs: Vec<u64>,
}

/// One `--keys` thread: its calls, and the deferrals it owns until they are due.
struct KeyCaller<'a> {
    throttle: &'a KeyTable,
    runs: &'a KeyRuns,
    pending: BinaryHeap<Pending<'a>>,
    tally: KeyTally,
}

impl<'a> KeyCaller<'a> {
    fn new(throttle: &'a KeyTable, runs: &'a KeyRuns) -> Self {
        Self {
            throttle,
            runs,
            pending: BinaryHeap::new(),
            tally: KeyTally::default(),
        }
    }

    /// One call for `key`; true if it was a hit, answered Coalesced.
    fn call(&mut self, key: u64) -> bool {
        self.tally.calls += 1;
        match self.throttle.admit(&key) {
            KeyedAdmission::Now => {
                self.runs.record(key);
                self.tally.leading += 1;
            }
            KeyedAdmission::Deferred(deferral) => self.pending.push(Pending {
                deadline: deferral.deadline(),
                key,
                deferral,
            }),
            KeyedAdmission::Coalesced => {
                self.tally.coalesced += 1;
                return true;
            }
            KeyedAdmission::Full => self.tally.full += 1,
            KeyedAdmission::Suppressed { .. } => unreachable!("not leading-only"),
        }
        false
    }

    /// Runs the deferrals whose deadline is `now` or earlier.
    fn run_due(&mut self, now: u64) {
        while self.pending.peek().is_some_and(|next| next.deadline <= now) {
            let Pending { key, deferral, .. } = self.pending.pop().unwrap();
            match deferral.try_run(|| self.runs.record(key)) {
                Ok(()) => self.tally.deferred += 1,
                Err(NotRun::NotDue(deferral)) => {
                    let deadline = deferral.deadline();
                    self.pending.push(Pending {
                        deadline,
                        key,
                        deferral,
                    });
                    return;
                }
                Err(NotRun::Revoked(why)) => unreachable!("{why}: the demo cancels nothing"),
            }
        }
    }

    /// Time is up: runs what this thread still owns, each at its deadline.
    fn finish(mut self) -> KeyTally {
        while let Some(Pending { key, deferral, .. }) = self.pending.pop() {
            match deferral.run(|| self.runs.record(key)) {
                Ok(()) => self.tally.deferred += 1,
                Err(why) => unreachable!("{why}: the demo cancels nothing"),
            }
        }
        self.tally
    }
}

/// `--keys N`: every thread calls one keyed throttle over N keys, half the calls on 8 hot
/// keys. Each caller keeps its deferrals and runs them once due, between calls (`try_run`),
/// so that no thread sleeps while others call; the work checks spacing per key. Then the
/// table's memory, and a burst of 10 N new keys that must not make it grow.
fn keyed(options: &Options, keys: usize) {
    let (threads, threshold, seconds) = (options.threads, options.threshold, options.seconds);
    let timer = DefaultClock::new();
    timer.now_nanos(); // calibrate now, outside the measures
    let clock = StampClock(timer);
    let capacity = 2 * keys;
    let held = heap_held();
    let throttle: KeyTable = KeyedThrottle::builder(threshold, capacity)
        .clock(clock)
        .build()
        .unwrap_or_else(|err| usage(&err.to_string()));
    let table_bytes = heap_held() - held;
    println!(
        "atomic-throttle demo: {threads} threads call one keyed throttle over {keys} keys \
         (half the calls on {} hot keys) for {seconds} s, threshold {threshold:?}, \
         capacity {} entries\n",
        HOT_KEYS.min(keys as u64),
        throttle.capacity()
    );
    let clock_cost = {
        let mut pairs: Vec<u64> = (0..1000)
            .map(|_| {
                let first = timer.now_nanos();
                timer.now_nanos().saturating_sub(first)
            })
            .collect();
        pairs.sort_unstable();
        pairs[pairs.len() / 2]
    };

    let runs = KeyRuns::new(keys);
    let barrier = Barrier::new(threads);
    let end = AtomicU64::new(u64::MAX);
    let started = std::time::Instant::now();
    let tallies: Vec<KeyTally> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|index| {
                let (throttle, runs, barrier, end) = (&throttle, &runs, &barrier, &end);
                scope.spawn(move || {
                    let mut caller = KeyCaller::new(throttle, runs);
                    let mut random = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    if barrier.wait().is_leader() {
                        end.store(timer.now_nanos() + (seconds * 1e9) as u64, Relaxed);
                    }
                    barrier.wait();
                    let end = end.load(Relaxed);
                    loop {
                        for _ in 1..SAMPLE_EVERY {
                            caller.call(pick_key(xorshift(&mut random), keys as u64));
                        }
                        // The timed call. `timer` is not the throttle's clock, so its readings
                        // leave the stamp that the work reads alone.
                        let key = pick_key(xorshift(&mut random), keys as u64);
                        let now = timer.now_nanos();
                        if now >= end {
                            break;
                        }
                        if caller.call(key) {
                            let cost = timer.now_nanos().saturating_sub(now);
                            caller.tally.hit_costs.push(cost);
                        }
                        caller.run_due(now);
                    }
                    caller.finish()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let live_at_end = throttle.live_entries();
    let refused = throttle.refused();

    let mut total = KeyTally::default();
    for tally in tallies {
        total.calls += tally.calls;
        total.leading += tally.leading;
        total.deferred += tally.deferred;
        total.coalesced += tally.coalesced;
        total.full += tally.full;
        total.hit_costs.extend(tally.hit_costs);
    }
    total.hit_costs.sort_unstable();
    let costs = &total.hit_costs;
    let percentile = |p: usize| costs.get(costs.len() * p / 100).copied();

    // A burst of new keys, one call each, none seen before: entries are taken over or refused,
    // and nothing is allocated.
    let burst = 10 * keys as u64;
    let (live_before, held_before) = (throttle.live_entries(), heap_held());
    let mut taken = 0u64;
    for key in keys as u64..keys as u64 + burst {
        taken += u64::from(!throttle.admit(&key).is_full());
    }
    let (live_after, held_after) = (throttle.live_entries(), heap_held());

    let min_gap = runs.min_gap.load(Relaxed);
    println!(
        "  calls                                  {:>14}  ({:.3e} per second)",
        total.calls,
        total.calls as f64 / elapsed
    );
    println!(
        "  runs: leading + deferred               {:>14}",
        format!("{} + {}", total.leading, total.deferred)
    );
    println!(
        "  coalesced                              {:>14}",
        total.coalesced
    );
    println!(
        "  full answers / refused()               {:>14}",
        format!("{} / {refused}", total.full)
    );
    println!(
        "  live entries at the end                {:>14}  (of {})",
        live_at_end,
        throttle.capacity()
    );
    println!(
        "  smallest gap between two runs of a key {:>14}  (threshold {threshold:?})",
        if min_gap == u64::MAX {
            "-".to_string()
        } else {
            format!("{:.3} ms", min_gap as f64 / 1e6)
        }
    );
    println!(
        "  keyed throttle's heap                  {table_bytes:>14}  bytes: {:.1} per entry, \
         {:.1} per key",
        table_bytes as f64 / throttle.capacity() as f64,
        table_bytes as f64 / keys as f64
    );
    match (percentile(50), percentile(99)) {
        (Some(p50), Some(p99)) => println!(
            "  admission cost on hits, p50 / p99      {:>14}  (Coalesced calls, 1 call in \
             {SAMPLE_EVERY} timed, {} samples; a clock read, about {clock_cost} ns, included)",
            format!("{p50} / {p99} ns"),
            costs.len()
        ),
        _ => println!("  admission cost on hits                 no Coalesced call was sampled"),
    }
    println!(
        "  {burst} new keys, one call each: {taken} taken, {} full; live entries \
         {live_before} -> {live_after} (of {}), heap {held_before} -> {held_after} bytes",
        burst - taken,
        throttle.capacity()
    );
    println!();
    let spaced = min_gap >= threshold.as_nanos() as u64;
    let bounded = held_after <= held_before && live_after <= throttle.capacity();
    println!(
        "spacing (guarantee 1): every two runs of one key at least {threshold:?} apart: {}",
        if spaced { "yes" } else { "NO" }
    );
    println!(
        "bounded memory: {burst} new keys allocated nothing and the table stayed in capacity: {}",
        if bounded { "yes" } else { "NO" }
    );
    if !spaced || !bounded {
        std::process::exit(1);
    }
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("demo: {problem}");
    }
    eprintln!(
        "usage: cargo run --release --example demo \
         [-- --threads N --threshold-us N --seconds N --detached --count --timeline FILE \
         --keys N]"
    );
    std::process::exit(if problem.is_empty() { 0 } else { 2 })
}

#[cfg(test)]
mod tests {
    use super::{compared, pick_key, xorshift, Better, HOT_KEYS};

    const COST: [&str; 2] = ["cheaper", "dearer"];
    const RATE: [&str; 2] = ["more calls", "fewer calls"];

    #[test]
    fn a_ratio_in_our_favour_says_so() {
        assert_eq!(compared(10.0, 25.0, Better::Lower, COST), "2.5x cheaper");
        assert_eq!(
            compared(30.0, 10.0, Better::Higher, RATE),
            "3.0x more calls"
        );
    }

    #[test]
    fn a_ratio_against_us_says_so_and_is_never_below_one() {
        // Ours costs 20 ns where theirs costs 12: 1.7x dearer, never "0.6x cheaper".
        assert_eq!(compared(20.0, 12.0, Better::Lower, COST), "1.7x dearer");
        assert_eq!(
            compared(10.0, 40.0, Better::Higher, RATE),
            "4.0x fewer calls"
        );
    }

    #[test]
    fn nothing_measured_gives_no_ratio() {
        assert_eq!(
            compared(0.0, 12.0, Better::Lower, COST),
            "no ratio (0 against 12)"
        );
    }

    #[test]
    fn keys_stay_in_the_key_space_and_half_are_hot() {
        assert_eq!(pick_key(u64::MAX, 10_000), 9_999); // odd: anywhere
        assert_eq!(pick_key(u64::MAX - 1, 10_000), HOT_KEYS - 1); // even: hot
        for keys in [1, 3, 8, 10_000] {
            let mut random = 1;
            let picks: Vec<u64> = (0..10_000)
                .map(|_| pick_key(xorshift(&mut random), keys))
                .collect();
            assert!(picks.iter().all(|&key| key < keys));
            let hot = picks.iter().filter(|&&key| key < HOT_KEYS).count();
            if keys == 10_000 {
                assert!((4_800..5_300).contains(&hot), "{hot} hot calls of 10000");
            }
        }
    }
}
