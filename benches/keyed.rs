//! Keyed admission against governor's keyed limiter (its default DashMap store), in the same
//! run: a hit and a miss at 1,000, 100,000 and 1,000,000 keys, on one and two threads; then
//! the bytes each keeps per key, measured by a counting allocator.
//!
//! ```text
//! cargo bench --bench keyed                     # everything, about four minutes
//! python3 benches/keyed_medians.py              # medians and ratios from criterion's files
//! ```
//!
//! - Each is measured with its default hasher (SipHash-1-3 under a random key, std's
//!   `RandomState`, for both) and with foldhash's fast hasher (`_foldhash`): at these costs
//!   the hash is most of a hit.
//! - *hit*: a key that has an entry and a deferral pending for the whole run (a saturated
//!   key: this crate answers Coalesced, governor rejects it). Each call takes the next key of
//!   a shuffled list of all `N` keys, so the table's size shows; `keyed_hot` calls one key.
//! - *miss*: a key never seen before. This crate's table holds `N` keys whose windows (1 us)
//!   have passed, so each miss takes an idle entry over and runs Now; governor's map starts
//!   at `N` keys and gains one per miss (it is rebuilt at `N` keys whenever it has grown by
//!   half, outside the timing).
//! - The table's capacity is `2 N`, so that `N` random keys fit without a refusal; the
//!   bytes per key are shown for `1.5 N` too.
//! - Two threads: both call at once behind a barrier; the time per call is the slower
//!   thread's time divided by its calls.

use atomic_throttle::{DefaultClock, KeyedAdmission, KeyedThrottle};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion};
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Counts the bytes this thread holds, while counting is on.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);

thread_local! {
    static HELD: Cell<isize> = const { Cell::new(0) };
}

fn count(bytes: isize) {
    // Relaxed: only the thread that turned counting on reads the count.
    if COUNTING.load(Ordering::Relaxed) {
        let _ = HELD.try_with(|held| held.set(held.get() + bytes));
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What `f` returns, and the bytes it left allocated on this thread.
fn bytes_held_by<R>(f: impl FnOnce() -> R) -> (R, isize) {
    let before = HELD.with(Cell::get);
    COUNTING.store(true, Ordering::Relaxed);
    let result = f();
    COUNTING.store(false, Ordering::Relaxed);
    (result, HELD.with(Cell::get) - before)
}

const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];
const SATURATED: Duration = Duration::from_secs(3600);
/// Short enough that a key's window has passed by the time the next miss comes.
const MISS_THRESHOLD: Duration = Duration::from_micros(1);

/// This crate's default hasher: SipHash-1-3 under a random key, as std's `HashMap` and
/// governor use. The other hasher measured is foldhash's fast one (randomly seeded, not
/// claimed to resist an attacker who studies the program).
type Sip = RandomState;
type Fold = foldhash::fast::RandomState;
type Table<S> = KeyedThrottle<u64, DefaultClock, S>;
type Governor<S> = RateLimiter<u64, DashMapStateStore<u64, S>, governor::clock::DefaultClock>;

/// Half full with `keys` keys: random keys first meet a full pair of buckets at 68% to 73%
/// of a million entries live, so none is refused.
fn capacity_for(keys: usize) -> usize {
    keys * 2
}

/// `keys` distinct keys in a shuffled order (a fixed shuffle, the same every run), repeated
/// from the start up to a power of two, so that a call finds its key with a mask instead of
/// a division (which would cost as much as a hit).
fn call_order(keys: usize) -> Vec<u64> {
    let order = shuffled(keys);
    order
        .iter()
        .cycle()
        .take(keys.next_power_of_two())
        .copied()
        .collect()
}

/// `keys` distinct keys in a shuffled order (a fixed shuffle, the same every run).
fn shuffled(keys: usize) -> Vec<u64> {
    let mut order: Vec<u64> = (0..keys as u64).collect();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for i in (1..order.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    order
}

fn table<S: BuildHasher>(threshold: Duration, keys: usize, hasher: S) -> Table<S> {
    KeyedThrottle::builder(threshold, capacity_for(keys))
        .hasher(hasher)
        .build()
        .unwrap()
}

fn governor<S: BuildHasher + Clone + Default>(hasher: S) -> Governor<S> {
    RateLimiter::dashmap_with_hasher(Quota::with_period(SATURATED).unwrap(), hasher)
}

/// A table with a deferral pending for good on each of `keys`: every admission of them is
/// Coalesced.
fn saturated_table<S: BuildHasher>(keys: &[u64], hasher: S) -> Table<S> {
    let table = table(SATURATED, keys.len(), hasher);
    for key in keys {
        assert!(table.admit(key).is_now());
        let KeyedAdmission::Deferred(deferral) = table.admit(key) else {
            panic!("expected Deferred")
        };
        std::mem::forget(deferral); // pending for good: the saturated state under test
    }
    assert_eq!(table.refused(), 0, "the keys did not fit");
    table
}

/// A governor limiter that rejects each of `keys`.
fn saturated_governor<S: BuildHasher + Clone + Default>(keys: &[u64], hasher: S) -> Governor<S> {
    let limiter = governor(hasher);
    for key in keys {
        assert!(limiter.check_key(key).is_ok());
        assert!(limiter.check_key(key).is_err());
    }
    limiter
}

/// A table holding `keys` keys whose windows are long over.
fn idle_table<S: BuildHasher>(keys: &[u64], hasher: S) -> Table<S> {
    let table = table(MISS_THRESHOLD, keys.len(), hasher);
    for key in keys {
        assert!(table.admit(key).is_now());
    }
    std::thread::sleep(Duration::from_millis(1));
    table
}

/// `threads` threads each make `iters` calls at once, behind a barrier; the slower thread's
/// time. `call(thread, i)` makes call `i` of thread `thread`.
fn timed<F: Fn(usize, u64) + Sync>(threads: usize, iters: u64, call: F) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let (barrier, call) = (&barrier, &call);
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iters {
                        call(thread, i);
                    }
                    start.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap())
            .max()
            .unwrap()
    })
}

/// The `i`-th key of `order` (whose length is a power of two) for `thread`: threads start
/// half the list apart.
#[inline(always)]
fn nth(order: &[u64], thread: usize, i: u64) -> &u64 {
    let mask = order.len() - 1;
    &order[(i as usize + thread * (order.len() / 2)) & mask]
}

/// A key never seen before: call `i` of `thread` in sample `sample`.
#[inline(always)]
fn fresh(sample: u64, thread: usize, i: u64) -> u64 {
    (1 << 63) | (sample << 40) | ((thread as u64) << 36) | i
}

fn name(what: &str, threads: usize) -> BenchmarkId {
    BenchmarkId::new(what, format!("{threads}t"))
}

/// Hits on this crate's table with hasher `S`, each call the next key of `order`.
fn table_hits<S: BuildHasher + Sync>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    what: &str,
    table: &Table<S>,
    order: &[u64],
) {
    for threads in [1, 2] {
        group.bench_function(name(what, threads), |b| {
            b.iter_custom(|iters| {
                timed(threads, iters, |thread, i| {
                    let answer = black_box(table).admit(nth(order, thread, i));
                    black_box(answer.is_coalesced());
                })
            })
        });
    }
}

/// Hits on governor's limiter with hasher `S`.
fn governor_hits<S: BuildHasher + Clone + Sync + Send>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    what: &str,
    limiter: &Governor<S>,
    order: &[u64],
) {
    for threads in [1, 2] {
        group.bench_function(name(what, threads), |b| {
            b.iter_custom(|iters| {
                timed(threads, iters, |thread, i| {
                    let answer = black_box(limiter).check_key(nth(order, thread, i));
                    black_box(answer.is_err());
                })
            })
        });
    }
}

fn hits(c: &mut Criterion) {
    // One key, over and over: the floor.
    let order = shuffled(SIZES[0]);
    let hot = [7u64];
    let mut group = c.benchmark_group("keyed_hot");
    table_hits(
        &mut group,
        "atomic_throttle",
        &saturated_table(&order, Sip::new()),
        &hot,
    );
    table_hits(
        &mut group,
        "atomic_throttle_foldhash",
        &saturated_table(&order, Fold::default()),
        &hot,
    );
    governor_hits(
        &mut group,
        "governor",
        &saturated_governor(&order, Sip::new()),
        &hot,
    );
    governor_hits(
        &mut group,
        "governor_foldhash",
        &saturated_governor(&order, Fold::default()),
        &hot,
    );
    group.finish();
    for keys in SIZES {
        let order = shuffled(keys);
        let mut group = c.benchmark_group(format!("keyed_hit/{keys}"));
        let ours = saturated_table(&order, Sip::new());
        let ours_fold = saturated_table(&order, Fold::default());
        let theirs = saturated_governor(&order, Sip::new());
        let theirs_fold = saturated_governor(&order, Fold::default());
        let order = call_order(keys);
        table_hits(&mut group, "atomic_throttle", &ours, &order);
        table_hits(&mut group, "atomic_throttle_foldhash", &ours_fold, &order);
        governor_hits(&mut group, "governor", &theirs, &order);
        governor_hits(&mut group, "governor_foldhash", &theirs_fold, &order);
        group.finish();
    }
}

/// Misses on this crate's table holding `keys` idle keys.
fn table_misses<S: BuildHasher + Sync>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    what: &str,
    keys: usize,
    hasher: S,
) {
    let table = idle_table(&shuffled(keys), hasher);
    let mut sample = 0u64;
    for threads in [1, 2] {
        group.bench_function(name(what, threads), |b| {
            b.iter_custom(|iters| {
                sample += 1;
                let sample = sample;
                timed(threads, iters, |thread, i| {
                    let answer = black_box(&table).admit(&fresh(sample, thread, i));
                    black_box(answer.is_now());
                })
            })
        });
    }
    assert!(table.refused() < 1000, "{} misses refused", table.refused());
}

/// Misses on governor's map of `keys` keys, in chunks that grow it by at most half; it is
/// rebuilt in between, outside the timing.
fn governor_misses<S: BuildHasher + Clone + Default + Sync + Send>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    what: &str,
    keys: usize,
    hasher: S,
) {
    let base = shuffled(keys);
    let rebuild = || {
        let limiter = governor(hasher.clone());
        for key in &base {
            let _ = limiter.check_key(key);
        }
        limiter
    };
    let mut limiter = rebuild();
    let mut sample = 0u64;
    for threads in [1, 2] {
        group.bench_function(name(what, threads), |b| {
            b.iter_custom(|iters| {
                let chunk = (keys as u64 / 2).max(500) / threads as u64;
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let calls = chunk.min(iters - done);
                    if limiter.len() > keys + keys / 2 {
                        limiter = rebuild();
                    }
                    sample += 1;
                    let sample = sample;
                    let current = &limiter;
                    total += timed(threads, calls, |thread, i| {
                        let answer = black_box(current).check_key(&fresh(sample, thread, i));
                        black_box(answer.is_ok());
                    });
                    done += calls;
                }
                total
            })
        });
    }
}

fn misses(c: &mut Criterion) {
    for keys in SIZES {
        let mut group = c.benchmark_group(format!("keyed_miss/{keys}"));
        table_misses(&mut group, "atomic_throttle", keys, Sip::new());
        table_misses(
            &mut group,
            "atomic_throttle_foldhash",
            keys,
            Fold::default(),
        );
        governor_misses(&mut group, "governor", keys, Sip::new());
        governor_misses(&mut group, "governor_foldhash", keys, Fold::default());
        group.finish();
    }
}

/// Bytes per key for both, with the counting allocator: the table is allocated when it is
/// built and admission allocates nothing; governor's map grows with its keys.
fn bytes_per_key() {
    println!("\nbytes per key (counting allocator; keys are u64)");
    println!(
        "  {:>9}  {:>34}  {:>34}  {:>18}  {:>26}",
        "keys",
        "atomic-throttle, 2 entries per key",
        "atomic-throttle, 1.5 entries/key",
        "governor (DashMap)",
        "allocated by admissions"
    );
    for keys in SIZES {
        let order = shuffled(keys);
        let mut ours = Vec::new();
        let mut admitting = 0;
        for capacity in [keys * 2, keys * 3 / 2] {
            let (table, table_bytes) = bytes_held_by(|| {
                KeyedThrottle::<u64>::builder(SATURATED, capacity)
                    .build()
                    .unwrap()
            });
            let ((), admitted) = bytes_held_by(|| {
                for key in &order {
                    let _ = table.admit(key); // Now, or Full (counted by `refused`)
                }
            });
            admitting += admitted;
            ours.push(format!(
                "{:.1} B/key ({} refused)",
                table_bytes as f64 / keys as f64,
                table.refused()
            ));
        }
        let (limiter, governor_bytes) = bytes_held_by(|| {
            let limiter = governor(Sip::new());
            for key in &order {
                let _ = limiter.check_key(key);
            }
            limiter
        });
        println!(
            "  {keys:>9}  {:>34}  {:>34}  {:>12.1} B/key  {:>10} B vs {:>10} B",
            ours[0],
            ours[1],
            governor_bytes as f64 / keys as f64,
            admitting,
            governor_bytes,
        );
        drop(limiter);
    }
    println!(
        "  (an entry is 16 B: a 64-bit fingerprint and the state word; tables add 8 KiB at most)"
    );
    // A hostile stream: ten times the capacity in distinct keys.
    let table = table(SATURATED, SIZES[1], Sip::new());
    let limiter = governor(Sip::new());
    let flood = 10 * table.capacity() as u64;
    let ((), table_growth) = bytes_held_by(|| {
        for key in 0..flood {
            let _ = table.admit(&key);
        }
    });
    let ((), governor_growth) = bytes_held_by(|| {
        for key in 0..flood {
            let _ = limiter.check_key(&key);
        }
    });
    println!(
        "  {flood} distinct keys into a {}-entry table: it grew by {table_growth} B ({} refused); \
         governor's map grew by {governor_growth} B to {} keys",
        table.capacity(),
        table.refused(),
        limiter.len()
    );
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(10)
        .configure_from_args();
    hits(&mut criterion);
    misses(&mut criterion);
    criterion.final_summary();
    // Under `cargo test --benches` the harness only checks that benches run.
    if !std::env::args().any(|arg| arg == "--test" || arg == "--list") {
        bytes_per_key();
    }
}
