//! Keyed throttles: one throttle per key, for any number of keys, in memory fixed when the
//! table is built.
//!
//! A [`KeyedThrottle`] gives every key the decisions and guarantees of a [`Throttle`]: one run
//! per threshold per key, one deferred trailing run per key, coalesced callers. Its entries
//! live in a table whose capacity is chosen at construction and never grows: an entry is the
//! key's 64-bit fingerprint and its state word, 16 bytes, eight to a cache line. An entry
//! whose window has passed with nothing pending answers like a fresh throttle, so another key
//! takes it over on the spot; no sweeper thread runs. When every entry a key may use is live,
//! the key is refused with [`KeyedAdmission::Full`]. See `table.rs` for the layout and the
//! protocol that hands an entry from one key to another.
//!
//! [`Throttle`]: crate::Throttle

mod deferral;
mod hash;
mod table;

pub use deferral::{KeyedDeferral, OwnedKeyedDeferral};

use crate::clock::{nanos_saturating, Clock, DefaultClock};
use crate::counters::{Counters, Stats};
use crate::error::ThresholdError;
use crate::state::{self, Decision, Mode, Rules, NO_LEASE};
use crate::sync::{AtomicU64, Ordering};
use crate::throttle::Throttle;
use crate::word::{Answer, Core, Word};
use core::fmt;
use core::hash::{BuildHasher, Hash};
use core::marker::PhantomData;
use core::time::Duration;
use crossbeam_utils::CachePadded;
use hash::{fingerprint, Candidates};
use std::collections::hash_map::RandomState;
use std::sync::Arc;
use table::{Found, Inserted, Table, WAYS};

/// Counts a round of a lookup or admission loop and, in debug builds, fails the call after
/// 2^16 rounds: a round is retried only after another caller changed the entry, so that many
/// in one call means no progress is being made (a bug), and a test fails instead of hanging.
/// (A macro, so that mutation testing does not mutate the check itself.)
macro_rules! count_round {
    ($rounds:ident) => {
        $rounds = $rounds.wrapping_add(1);
        debug_assert!(
            $rounds < 1 << 16,
            "a keyed lookup went round 2^16 times without progress"
        );
    };
}

/// One throttle per key, in a table of fixed capacity: [`admit`](KeyedThrottle::admit) answers
/// for `key` exactly as [`Throttle::admit`] answers for one throttle, or refuses a key that
/// finds the table full.
///
/// - **Bounded memory.** The table is allocated once, at construction: 16 bytes per entry
///   (a 64-bit fingerprint of the key and the key's state word, eight entries to a 128-byte
///   cache line), plus a few kilobytes. Keys themselves are never stored. Admission never
///   allocates, so no stream of keys, however hostile, makes the table grow.
/// - **Reuse without a sweeper.** An entry whose window has passed with no deferral pending
///   (idle) answers like a fresh throttle, so a key without an entry takes an idle one of
///   the 16 it may use (two buckets of eight) when it first calls: in the bucket with more
///   idle entries, one that never had a key if there is one. A key whose entry went to
///   another key starts afresh, but its next run still comes at least a threshold after its
///   last: after a clock step backwards (or a raised threshold) its first call may be
///   Deferred where a fresh throttle would run it.
/// - **Full.** When all 16 are live (a deferral pending, or inside their window) the call is
///   refused with [`KeyedAdmission::Full`], counted by [`refused`](KeyedThrottle::refused).
///   A live entry is never taken: that would let its key run again inside its window and
///   leave its deferral's callers uncovered. A shared fallback throttle would tie unrelated
///   keys' runs together (a flood of new keys would decide when a legitimate key runs), so
///   the table says what happened and the caller decides: reject the request, serve it
///   unthrottled, or retry later. Size the capacity for the keys that are live within one
///   threshold, not for all keys ever seen: a key goes to the emptier of its two buckets, so
///   with random keys a table refuses its first key at about 70% of its entries live (a
///   million entries; about 75% at a hundred thousand, 80% to 85% at a thousand), and
///   offered as many keys as it has entries, it takes 96% of them.
/// - **Lock-free.** Admission on a key that has an entry is a hash, a few loads in its
///   bucket's cache line, and the throttle's own CAS path; a key's first call takes an idle
///   entry over by CAS, and an unfinished takeover is finished by whoever meets it. Nothing
///   ever waits for another thread.
///
/// # Hashing
///
/// A key is looked for in its two buckets only, so a flood of keys cannot make a lookup
/// longer, whatever the hasher. The hash picks the buckets and is the fingerprint: a new key
/// matches another key's entry with probability at most 2^-60 per call (16 comparisons of 64
/// bits). The default hasher, std's [`RandomState`] (SipHash-1-3 under a random key chosen
/// per table), lets nobody who does not know that key aim keys at one key's buckets, to fill
/// its 16 entries and have it refused. It is also most of the cost of a hit: on keys that an
/// attacker does not choose, a fast seeded hasher such as foldhash's
/// (`.hasher(foldhash::fast::RandomState::default())`, see
/// [`KeyedThrottleBuilder::hasher`]) makes a hit several times cheaper.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{KeyedAdmission, KeyedThrottle};
/// use std::time::Duration;
///
/// let per_client: KeyedThrottle<str> = KeyedThrottle::new(Duration::from_millis(100), 10_000);
/// match per_client.admit("10.0.0.7") {
///     KeyedAdmission::Now => println!("leading run for 10.0.0.7"),
///     KeyedAdmission::Deferred(deferral) => {
///         deferral.run(|| println!("trailing run for 10.0.0.7")).ok();
///     }
///     KeyedAdmission::Coalesced => {} // 10.0.0.7's pending run covers this call
///     KeyedAdmission::Suppressed { .. } => {} // leading-only mode only
///     KeyedAdmission::Full => println!("no room for 10.0.0.7: reject, or serve unthrottled"),
/// };
/// ```
pub struct KeyedThrottle<K: ?Sized, C: Clock = DefaultClock, S = RandomState> {
    table: Table,
    /// The threshold, mode, lease, counters and clock that every key shares.
    core: Core<C>,
    hasher: S,
    /// Calls refused because the table was full.
    refused: CachePadded<AtomicU64>,
    keys: PhantomData<fn(&K)>,
}

/// The answer to one keyed admission: [`Admission`](crate::Admission)'s answers for the key,
/// or [`Full`](KeyedAdmission::Full). `T` is how a deferral holds its table: `&KeyedThrottle`
/// from [`KeyedThrottle::admit`], `Arc<KeyedThrottle>` from [`KeyedThrottle::admit_owned`].
///
/// # Examples
///
/// ```
/// use atomic_throttle::{KeyedAdmission, KeyedThrottle};
/// use std::time::Duration;
///
/// let throttle: KeyedThrottle<u32> = KeyedThrottle::new(Duration::from_millis(1), 64);
/// match throttle.admit(&7) {
///     KeyedAdmission::Now => println!("run the work for key 7 now"),
///     KeyedAdmission::Deferred(deferral) => {
///         deferral.run(|| println!("run it at key 7's deadline")).ok();
///     }
///     KeyedAdmission::Coalesced => println!("key 7's pending deferral covers this call"),
///     KeyedAdmission::Suppressed { .. } => println!("leading-only: nothing covers this call"),
///     KeyedAdmission::Full => println!("key 7 has no entry and none is free"),
/// };
/// ```
#[must_use = "a Deferred answer releases its deferral when dropped; match on the answer"]
pub enum KeyedAdmission<T: KeyedThrottleRef> {
    /// No run of this key in the last threshold: the caller runs the work at once. The run
    /// is already stamped. (With a lease, also the answer that takes over the key's deferral
    /// whose owner never came back.)
    Now,
    /// The caller owns the key's single deferred run: it must run it at the deadline, or drop
    /// it to give it up.
    Deferred(KeyedDeferral<T>),
    /// The key's deferral is pending; its run will come after this call.
    Coalesced,
    /// [Leading-only](Mode::LeadingOnly): inside the key's window, and no run will cover this
    /// call.
    Suppressed {
        /// When the key's window ends, in the clock's nanoseconds (`u64::MAX` if that lies
        /// past the end of the throttle's time).
        until: u64,
    },
    /// The key has no entry, and every entry it may use is live (or being handed to another
    /// key): nothing was recorded for it and no run covers this call. See
    /// [`KeyedThrottle`] for why the table refuses instead of evicting.
    Full,
}

/// A [`KeyedAdmission`] whose deferral holds its table through an [`Arc`]: the answer to
/// [`KeyedThrottle::admit_owned`].
///
/// # Examples
///
/// ```
/// use atomic_throttle::{KeyedThrottle, OwnedKeyedAdmission};
/// use std::{sync::Arc, time::Duration};
///
/// let throttle: Arc<KeyedThrottle<u64>> =
///     Arc::new(KeyedThrottle::new(Duration::from_millis(1), 64));
/// let answer: OwnedKeyedAdmission<u64> = throttle.admit_owned(&1);
/// assert!(answer.is_now());
/// ```
pub type OwnedKeyedAdmission<K, C = DefaultClock, S = RandomState> =
    KeyedAdmission<Arc<KeyedThrottle<K, C, S>>>;

/// A handle to a keyed throttle that a [`KeyedDeferral`] can hold: `&KeyedThrottle`,
/// `Arc<KeyedThrottle>`, or anything else that dereferences to one.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{KeyedThrottle, KeyedThrottleRef};
/// use std::time::Duration;
///
/// fn capacity<T: KeyedThrottleRef>(handle: T) -> usize {
///     handle.capacity()
/// }
/// let throttle: KeyedThrottle<u8> = KeyedThrottle::new(Duration::from_secs(1), 16);
/// assert_eq!(capacity(&throttle), 16);
/// ```
pub trait KeyedThrottleRef:
    core::ops::Deref<Target = KeyedThrottle<Self::Key, Self::Clock, Self::Hasher>>
{
    /// The key type.
    type Key: ?Sized;
    /// The table's clock.
    type Clock: Clock;
    /// The table's hasher.
    type Hasher;
}

impl<K: ?Sized, C: Clock, S, T: core::ops::Deref<Target = KeyedThrottle<K, C, S>>> KeyedThrottleRef
    for T
{
    type Key = K;
    type Clock = C;
    type Hasher = S;
}

impl<T: KeyedThrottleRef> KeyedAdmission<T> {
    /// Whether the answer is [`KeyedAdmission::Now`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::KeyedThrottle;
    /// # use std::time::Duration;
    /// let throttle: KeyedThrottle<u8> = KeyedThrottle::new(Duration::from_secs(1), 8);
    /// assert!(throttle.admit(&1).is_now());
    /// ```
    pub fn is_now(&self) -> bool {
        matches!(self, KeyedAdmission::Now)
    }

    /// Whether the answer is [`KeyedAdmission::Deferred`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::KeyedThrottle;
    /// # use std::time::Duration;
    /// let throttle: KeyedThrottle<u8> = KeyedThrottle::new(Duration::from_secs(1), 8);
    /// let _ = throttle.admit(&1);
    /// assert!(throttle.admit(&1).is_deferred());
    /// ```
    pub fn is_deferred(&self) -> bool {
        matches!(self, KeyedAdmission::Deferred(_))
    }

    /// Whether the answer is [`KeyedAdmission::Coalesced`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::KeyedThrottle;
    /// # use std::time::Duration;
    /// let throttle: KeyedThrottle<u8> = KeyedThrottle::new(Duration::from_secs(1), 8);
    /// let _ = throttle.admit(&1);
    /// let _owner = throttle.admit(&1);
    /// assert!(throttle.admit(&1).is_coalesced());
    /// assert!(throttle.admit(&2).is_now()); // another key, another throttle
    /// ```
    pub fn is_coalesced(&self) -> bool {
        matches!(self, KeyedAdmission::Coalesced)
    }

    /// Whether the answer is [`KeyedAdmission::Suppressed`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{KeyedThrottle, Mode};
    /// # use std::time::Duration;
    /// let throttle: KeyedThrottle<u8> =
    ///     KeyedThrottle::builder(Duration::from_secs(1), 8).mode(Mode::LeadingOnly).build()?;
    /// let _ = throttle.admit(&1);
    /// assert!(throttle.admit(&1).is_suppressed());
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn is_suppressed(&self) -> bool {
        matches!(self, KeyedAdmission::Suppressed { .. })
    }

    /// Whether the answer is [`KeyedAdmission::Full`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::KeyedThrottle;
    /// # use std::time::Duration;
    /// // One bucket of eight entries: eight keys inside their window fill it.
    /// let throttle: KeyedThrottle<u8> = KeyedThrottle::new(Duration::from_secs(1), 8);
    /// for key in 0..8 {
    ///     assert!(throttle.admit(&key).is_now());
    /// }
    /// assert!(throttle.admit(&8).is_full());
    /// assert_eq!(throttle.refused(), 1);
    /// ```
    pub fn is_full(&self) -> bool {
        matches!(self, KeyedAdmission::Full)
    }
}

impl<T: KeyedThrottleRef> fmt::Debug for KeyedAdmission<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyedAdmission::Now => f.write_str("Now"),
            KeyedAdmission::Deferred(deferral) => {
                f.debug_tuple("Deferred").field(deferral).finish()
            }
            KeyedAdmission::Coalesced => f.write_str("Coalesced"),
            KeyedAdmission::Suppressed { until } => {
                f.debug_struct("Suppressed").field("until", until).finish()
            }
            KeyedAdmission::Full => f.write_str("Full"),
        }
    }
}

/// Configures a [`KeyedThrottle`]: its clock, [`Mode`], lease, counters and hasher.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{KeyedThrottle, ManualClock, Mode};
/// use std::time::Duration;
///
/// let throttle: KeyedThrottle<str, ManualClock> =
///     KeyedThrottle::builder(Duration::from_millis(100), 1024)
///         .clock(ManualClock::new())
///         .mode(Mode::TrailingOnly)
///         .lease(Duration::from_secs(1))
///         .counting(true)
///         .build()?;
/// assert!(throttle.admit("a").is_deferred()); // trailing only: no leading run
/// # Ok::<(), atomic_throttle::ThresholdError>(())
/// ```
#[must_use = "a builder does nothing until `build`"]
pub struct KeyedThrottleBuilder<K: ?Sized, C: Clock = DefaultClock, S = RandomState> {
    threshold: Duration,
    capacity: usize,
    clock: C,
    mode: Mode,
    lease: Option<Duration>,
    counting: bool,
    hasher: S,
    keys: PhantomData<fn(&K)>,
}

impl<K: ?Sized, C: Clock + fmt::Debug, S: fmt::Debug> fmt::Debug for KeyedThrottleBuilder<K, C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedThrottleBuilder")
            .field("threshold", &self.threshold)
            .field("capacity", &self.capacity)
            .field("clock", &self.clock)
            .field("mode", &self.mode)
            .field("lease", &self.lease)
            .field("counting", &self.counting)
            .field("hasher", &self.hasher)
            .finish()
    }
}

impl<K: ?Sized, C: Clock, S> KeyedThrottleBuilder<K, C, S> {
    /// The clock the table reads; [`DefaultClock`] unless set.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Clock, KeyedThrottle, ManualClock};
    /// use std::time::Duration;
    ///
    /// let throttle: KeyedThrottle<u8, ManualClock> =
    ///     KeyedThrottle::builder(Duration::from_secs(1), 8).clock(ManualClock::new()).build()?;
    /// assert_eq!(throttle.clock().now_nanos(), 0);
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn clock<D: Clock>(self, clock: D) -> KeyedThrottleBuilder<K, D, S> {
        KeyedThrottleBuilder {
            threshold: self.threshold,
            capacity: self.capacity,
            clock,
            mode: self.mode,
            lease: self.lease,
            counting: self.counting,
            hasher: self.hasher,
            keys: PhantomData,
        }
    }

    /// Which calls run, for every key; [`Mode::LeadingAndTrailing`] unless set.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{KeyedThrottle, Mode};
    /// # use std::time::Duration;
    /// let throttle: KeyedThrottle<u8> =
    ///     KeyedThrottle::builder(Duration::from_secs(1), 8).mode(Mode::LeadingOnly).build()?;
    /// assert_eq!(throttle.mode(), Mode::LeadingOnly);
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Lets a key's deferral that is not stamped by `deadline + lease` be taken over by the
    /// key's next admission, as [`ThrottleBuilder::lease`](crate::ThrottleBuilder::lease)
    /// does for one throttle. A pending entry is never handed to another key, lease or not:
    /// only its own key takes it over.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{KeyedAdmission, KeyedThrottle, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let throttle: KeyedThrottle<u8, ManualClock> =
    ///     KeyedThrottle::builder(Duration::from_millis(10), 8)
    ///         .clock(clock.clone())
    ///         .lease(Duration::from_millis(5))
    ///         .build()?;
    /// let _ = throttle.admit(&1);
    /// let KeyedAdmission::Deferred(deferral) = throttle.admit(&1) else { unreachable!() };
    /// std::mem::forget(deferral); // an owner that never comes back
    /// clock.advance(Duration::from_millis(15));
    /// assert!(throttle.admit(&1).is_now()); // taken over
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Counts the calls that no run of their own covers, and the runs, releases, cancels and
    /// takeovers, over all keys together, as
    /// [`ThrottleBuilder::counting`](crate::ThrottleBuilder::counting) does.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::KeyedThrottle;
    /// # use std::time::Duration;
    /// let throttle: KeyedThrottle<u8> =
    ///     KeyedThrottle::builder(Duration::from_secs(1), 8).counting(true).build()?;
    /// assert!(throttle.stats().is_some());
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn counting(mut self, counting: bool) -> Self {
        self.counting = counting;
        self
    }

    /// The hasher that picks a key's buckets and fingerprint; a [`RandomState`] (SipHash-1-3
    /// under a random key) unless set. A hasher whose outputs an attacker can predict lets
    /// them fill one key's buckets and have that key refused; a fixed one makes runs
    /// reproducible (loom models, tests).
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::KeyedThrottle;
    /// use std::collections::hash_map::DefaultHasher;
    /// use std::hash::BuildHasherDefault;
    /// use std::time::Duration;
    ///
    /// let throttle: KeyedThrottle<u8, _, BuildHasherDefault<DefaultHasher>> =
    ///     KeyedThrottle::builder(Duration::from_secs(1), 8)
    ///         .hasher(BuildHasherDefault::default())
    ///         .build()?;
    /// assert!(throttle.admit(&1).is_now());
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn hasher<H>(self, hasher: H) -> KeyedThrottleBuilder<K, C, H> {
        KeyedThrottleBuilder {
            threshold: self.threshold,
            capacity: self.capacity,
            clock: self.clock,
            mode: self.mode,
            lease: self.lease,
            counting: self.counting,
            hasher,
            keys: PhantomData,
        }
    }

    /// Builds the table, allocating all of its memory.
    ///
    /// # Errors
    ///
    /// [`ThresholdError`] if the threshold or the lease exceeds [`Throttle::MAX_THRESHOLD`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::KeyedThrottle;
    /// # use std::time::Duration;
    /// assert!(KeyedThrottle::<u8>::builder(Duration::MAX, 8).build().is_err());
    /// ```
    pub fn build(self) -> Result<KeyedThrottle<K, C, S>, ThresholdError> {
        let threshold = checked(self.threshold, ThresholdError::threshold)?;
        let lease = match self.lease {
            None => NO_LEASE,
            Some(lease) => checked(lease, ThresholdError::lease)?,
        };
        let counters = self.counting.then(|| Box::new(Counters::new()));
        let buckets = self.capacity.div_ceil(WAYS).max(1);
        // One class per 64 buckets, at most 64: few enough to cost nothing per entry, enough
        // that first calls of different keys seldom meet on one class word.
        let classes = (buckets / 64).clamp(1, 64).next_power_of_two();
        Ok(KeyedThrottle {
            table: Table::new(buckets, classes),
            core: Core::new(threshold, self.mode, lease, counters, self.clock),
            hasher: self.hasher,
            refused: CachePadded::new(AtomicU64::new(0)),
            keys: PhantomData,
        })
    }
}

/// `value` in nanoseconds, or the error `refuse` makes of it if it exceeds the largest
/// threshold.
fn checked(value: Duration, refuse: fn(Duration) -> ThresholdError) -> Result<u64, ThresholdError> {
    if value > Throttle::MAX_THRESHOLD {
        Err(refuse(value))
    } else {
        Ok(nanos_saturating(value))
    }
}

impl<K: Hash + ?Sized> KeyedThrottle<K> {
    /// The most entries a table can have: 2^30 (16 GiB of entries).
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::KeyedThrottle;
    /// assert_eq!(KeyedThrottle::<u64>::MAX_CAPACITY, 1 << 30);
    /// ```
    pub const MAX_CAPACITY: usize = table::MAX_ENTRIES;

    /// A table of `capacity` entries on the process's [`DefaultClock`], in the default
    /// [mode](Mode::LeadingAndTrailing), with no lease and no counters. The capacity is
    /// rounded up to a whole number of buckets of eight entries.
    ///
    /// # Panics
    ///
    /// If `threshold` exceeds [`Throttle::MAX_THRESHOLD`], or `capacity` exceeds
    /// [`KeyedThrottle::MAX_CAPACITY`]. Use [`try_new`](KeyedThrottle::try_new) for a
    /// threshold that comes from input.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::KeyedThrottle;
    /// use std::time::Duration;
    ///
    /// let throttle: KeyedThrottle<str> = KeyedThrottle::new(Duration::from_secs(1), 1000);
    /// assert_eq!(throttle.capacity(), 1000);
    /// assert!(throttle.admit("alice").is_now());
    /// ```
    pub fn new(threshold: Duration, capacity: usize) -> Self {
        match Self::try_new(threshold, capacity) {
            Ok(throttle) => throttle,
            Err(err) => panic!("atomic-throttle: KeyedThrottle::new: {err}"),
        }
    }

    /// A table of `capacity` entries on the process's [`DefaultClock`], or an error for a
    /// threshold it cannot represent.
    ///
    /// # Errors
    ///
    /// [`ThresholdError`] if `threshold` exceeds [`Throttle::MAX_THRESHOLD`].
    ///
    /// # Panics
    ///
    /// If `capacity` exceeds [`KeyedThrottle::MAX_CAPACITY`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{KeyedThrottle, Throttle};
    /// # use std::time::Duration;
    /// assert!(KeyedThrottle::<u64>::try_new(Duration::ZERO, 8).is_ok());
    /// assert!(KeyedThrottle::<u64>::try_new(Throttle::MAX_THRESHOLD * 2, 8).is_err());
    /// ```
    pub fn try_new(threshold: Duration, capacity: usize) -> Result<Self, ThresholdError> {
        Self::builder(threshold, capacity).build()
    }

    /// Configures a table of `capacity` entries: clock, [`Mode`], lease, counters, hasher.
    ///
    /// # Panics
    ///
    /// If `capacity` exceeds [`KeyedThrottle::MAX_CAPACITY`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{KeyedThrottle, Mode};
    /// # use std::time::Duration;
    /// let throttle: KeyedThrottle<u8> =
    ///     KeyedThrottle::builder(Duration::from_secs(1), 8).mode(Mode::TrailingOnly).build()?;
    /// assert!(throttle.admit(&1).is_deferred());
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn builder(threshold: Duration, capacity: usize) -> KeyedThrottleBuilder<K> {
        assert!(
            capacity <= Self::MAX_CAPACITY,
            "atomic-throttle: KeyedThrottle: a capacity of {capacity} entries exceeds \
             KeyedThrottle::MAX_CAPACITY (2^30 entries)"
        );
        KeyedThrottleBuilder {
            threshold,
            capacity,
            clock: DefaultClock::new(),
            mode: Mode::default(),
            lease: None,
            counting: false,
            hasher: RandomState::new(),
            keys: PhantomData,
        }
    }
}

impl<K: Hash + ?Sized, C: Clock> KeyedThrottle<K, C> {
    /// A table of `capacity` entries reading time from `clock`, in the default mode.
    ///
    /// # Errors
    ///
    /// [`ThresholdError`] if `threshold` exceeds [`Throttle::MAX_THRESHOLD`].
    ///
    /// # Panics
    ///
    /// If `capacity` exceeds [`KeyedThrottle::MAX_CAPACITY`].
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{KeyedThrottle, ManualClock};
    /// use std::time::Duration;
    ///
    /// let throttle = KeyedThrottle::<u32, _>::with_clock(Duration::from_secs(1), 64, ManualClock::new())?;
    /// assert!(!throttle.is_pending(&3));
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn with_clock(
        threshold: Duration,
        capacity: usize,
        clock: C,
    ) -> Result<Self, ThresholdError> {
        KeyedThrottle::builder(threshold, capacity)
            .clock(clock)
            .build()
    }
}

impl<K: Hash + ?Sized, C: Clock, S: BuildHasher> KeyedThrottle<K, C, S> {
    /// Decides this call for `key`: run [`Now`](KeyedAdmission::Now), own the key's
    /// [`Deferred`](KeyedAdmission::Deferred) run, be [`Coalesced`](KeyedAdmission::Coalesced)
    /// into its pending one ([`Suppressed`](KeyedAdmission::Suppressed) in leading-only
    /// mode), or be refused because the table is [`Full`](KeyedAdmission::Full).
    ///
    /// Never blocks, allocates or panics, and never waits for another thread. On a key that
    /// has an entry, a Coalesced answer is a hash and a few loads from its bucket's cache line
    /// (two lines if the key lives in its second bucket), with no clock read and no write;
    /// Now and Deferred add a clock read and a CAS. A key's first call (or its first after
    /// its entry went to another key) also reads its two buckets' entries, takes an idle one
    /// over with three CASes, and decides in the same step.
    ///
    /// As with [`Throttle::admit`], a Coalesced caller's earlier writes are not guaranteed to
    /// be visible to the run that covers it.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{KeyedAdmission, KeyedThrottle};
    /// use std::time::Duration;
    ///
    /// let throttle: KeyedThrottle<&str> = KeyedThrottle::new(Duration::from_secs(60), 128);
    /// assert!(matches!(throttle.admit(&"a"), KeyedAdmission::Now));
    /// assert!(matches!(throttle.admit(&"b"), KeyedAdmission::Now));
    /// assert!(throttle.admit(&"a").is_deferred());
    /// ```
    #[inline]
    pub fn admit(&self, key: &K) -> KeyedAdmission<&Self> {
        self.admit_as(self, key, &mut 0)
    }

    /// Like [`admit`](KeyedThrottle::admit), but a Deferred answer owns a clone of the `Arc`,
    /// so the deferral can move to another thread or task.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{KeyedThrottle, OwnedKeyedAdmission};
    /// use std::{sync::Arc, thread, time::Duration};
    ///
    /// let throttle: Arc<KeyedThrottle<u64>> =
    ///     Arc::new(KeyedThrottle::new(Duration::from_millis(1), 64));
    /// let _ = throttle.admit_owned(&9); // Now
    /// if let OwnedKeyedAdmission::Deferred(deferral) = throttle.admit_owned(&9) {
    ///     thread::spawn(move || deferral.run(|| println!("trailing run for 9")))
    ///         .join()
    ///         .unwrap()
    ///         .unwrap();
    /// }
    /// ```
    #[inline]
    pub fn admit_owned(self: &Arc<Self>, key: &K) -> OwnedKeyedAdmission<K, C, S> {
        self.admit_as(Arc::clone(self), key, &mut 0)
    }

    /// Like [`admit`](KeyedThrottle::admit), but also says how many compare-and-swaps this
    /// call lost to other callers (on the key's state word, or to another key's takeover of
    /// its entry): a direct measure of contention, for tests and diagnostics.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::KeyedThrottle;
    /// # use std::time::Duration;
    /// let throttle: KeyedThrottle<u8> = KeyedThrottle::new(Duration::from_secs(1), 8);
    /// let (answer, lost) = throttle.admit_counting_retries(&1);
    /// assert!(answer.is_now());
    /// assert_eq!(lost, 0);
    /// ```
    pub fn admit_counting_retries(&self, key: &K) -> (KeyedAdmission<&Self>, u32) {
        let mut lost = 0;
        let answer = self.admit_as(self, key, &mut lost);
        (answer, lost)
    }

    /// Withdraws `key`'s pending deferral, from any thread. Returns whether one was pending.
    ///
    /// The next admission of the key is decided as if its owner had dropped the deferral.
    /// Its owner learns it when it next looks: [`try_run`](KeyedDeferral::try_run) says so at
    /// once, and a waiting [`run`](KeyedDeferral::run) returns [`Revoked`](crate::Revoked) at
    /// the deadline at the latest (a keyed entry has no room for a waker, so the wait is not
    /// cut short). No other key's deferral is touched.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{KeyedAdmission, KeyedThrottle, NotRun, Revoked};
    /// use std::time::Duration;
    ///
    /// let throttle: KeyedThrottle<u8> = KeyedThrottle::new(Duration::from_secs(60), 8);
    /// let _ = throttle.admit(&1);
    /// let KeyedAdmission::Deferred(deferral) = throttle.admit(&1) else { unreachable!() };
    /// assert!(throttle.cancel(&1));
    /// assert!(!throttle.cancel(&1));
    /// assert!(matches!(deferral.try_run(|| ()), Err(NotRun::Revoked(Revoked::Cancelled))));
    /// ```
    pub fn cancel(&self, key: &K) -> bool {
        self.change_entry(key, |slot, key| {
            self.word(slot)
                .cancel_while(|word| self.table.holds(slot, key, word))
        })
    }

    /// Runs `key`'s pending deferral now instead of at its deadline, from any thread. Returns
    /// whether one was pending. The exception to the spacing guarantee that a caller asks
    /// for, as [`Throttle::flush`]; the owner learns it when it next looks (a waiting
    /// [`run`](KeyedDeferral::run) at its deadline at the latest).
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{KeyedAdmission, KeyedThrottle, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let throttle = KeyedThrottle::<u8, _>::with_clock(Duration::from_secs(60), 8, clock.clone())?;
    /// let _ = throttle.admit(&1);
    /// let KeyedAdmission::Deferred(deferral) = throttle.admit(&1) else { unreachable!() };
    /// assert!(throttle.flush(&1));
    /// assert_eq!(deferral.try_run(|| clock.now()).ok(), Some(Duration::ZERO)); // no wait
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn flush(&self, key: &K) -> bool {
        self.change_entry(key, |slot, key| {
            self.word(slot)
                .flush_while(|word| self.table.holds(slot, key, word))
        })
    }

    /// Finds `key`'s entry and applies `change` to its slot (with the key's fingerprint);
    /// false if the key has no entry.
    fn change_entry(&self, key: &K, change: impl Fn(usize, u64) -> bool) -> bool {
        let (key, candidates) = self.locate(key);
        let mut rounds = 0u32;
        loop {
            count_round!(rounds);
            match self.table.find(key, &candidates) {
                Found::Entry { slot, .. } => return change(slot, key),
                Found::Absent => return false,
                Found::Moved => {}
            }
        }
    }

    /// Whether `key` has a deferral pending: its next admission would be Coalesced.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::KeyedThrottle;
    /// # use std::time::Duration;
    /// let throttle: KeyedThrottle<u8> = KeyedThrottle::new(Duration::from_secs(1), 8);
    /// let _ = throttle.admit(&1);
    /// let deferral = throttle.admit(&1);
    /// assert!(throttle.is_pending(&1));
    /// assert!(!throttle.is_pending(&2));
    /// drop(deferral);
    /// assert!(!throttle.is_pending(&1));
    /// ```
    pub fn is_pending(&self, key: &K) -> bool {
        self.entry_word(key).is_some_and(state::is_pending)
    }

    /// The stamp of `key`'s last run, in the clock's nanoseconds, while the key has an entry;
    /// `None` before its first run, or once its entry went to another key.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{KeyedThrottle, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// clock.advance(Duration::from_millis(3));
    /// let throttle = KeyedThrottle::<u8, _>::with_clock(Duration::from_secs(1), 8, clock)?;
    /// assert_eq!(throttle.last_run(&1), None);
    /// assert!(throttle.admit(&1).is_now());
    /// assert_eq!(throttle.last_run(&1), Some(3_000_000));
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn last_run(&self, key: &K) -> Option<u64> {
        self.entry_word(key)
            .filter(|word| state::is_stamped(*word))
            .map(state::stamp_nanos)
    }

    /// The state word of `key`'s entry, if it has one.
    fn entry_word(&self, key: &K) -> Option<u64> {
        let (key, candidates) = self.locate(key);
        let mut rounds = 0u32;
        loop {
            count_round!(rounds);
            match self.table.find(key, &candidates) {
                Found::Entry { word, .. } => return Some(word),
                Found::Absent => return None,
                Found::Moved => {}
            }
        }
    }

    /// The fingerprint of `key` and the entries it may use.
    #[inline(always)]
    fn locate(&self, key: &K) -> (u64, Candidates) {
        let hash = self.hasher.hash_one(key);
        (
            fingerprint(hash),
            Candidates::of(hash, self.table.buckets()),
        )
    }

    /// Decides an admission of `key`, and wraps the answer for `handle`.
    #[inline(always)]
    fn admit_as<T: KeyedThrottleRef<Clock = C>>(
        &self,
        handle: T,
        key: &K,
        lost: &mut u32,
    ) -> KeyedAdmission<T> {
        let (key, candidates) = self.locate(key);
        // The candidates whose insert this call finished for another key: see `Table::insert`.
        let mut excluded = 0;
        let mut rounds = 0u32;
        loop {
            count_round!(rounds);
            let (slot, answer) = match self.table.find(key, &candidates) {
                Found::Entry { slot, word } => {
                    if self.core.coalesces(word) {
                        self.core.skipped();
                        return KeyedAdmission::Coalesced;
                    }
                    match self.decide(slot, key, word, lost) {
                        Some(answer) => (slot, answer),
                        // The entry went to another key under this call: look again.
                        None => continue,
                    }
                }
                Found::Moved => {
                    *lost += 1;
                    continue;
                }
                Found::Absent => match self.insert(key, &candidates, &mut excluded, lost) {
                    Some(Ok(decided)) => decided,
                    Some(Err(Full)) => return KeyedAdmission::Full,
                    None => continue,
                },
            };
            return match answer {
                Answer::Now => KeyedAdmission::Now,
                Answer::Claimed(word) => {
                    KeyedAdmission::Deferred(KeyedDeferral::new(handle, slot, word))
                }
                Answer::Coalesced(_) => KeyedAdmission::Coalesced,
                Answer::Suppressed { until } => KeyedAdmission::Suppressed { until },
            };
        }
    }

    /// Decides an admission that saw `word` in the entry at `slot`, on the slow path.
    #[inline(never)]
    fn decide(&self, slot: usize, key: u64, word: u64, lost: &mut u32) -> Option<Answer> {
        self.word(slot)
            .decide_and_install_while(word, lost, |seen| self.table.holds(slot, key, seen))
    }

    /// Gives `key` an entry and decides its first call there, in one step: `Some(Ok)` with
    /// the entry and the answer, `Some(Err(Full))` if there is no room, `None` to look again.
    #[cold]
    #[inline(never)]
    fn insert(
        &self,
        key: u64,
        candidates: &Candidates,
        excluded: &mut u32,
        lost: &mut u32,
    ) -> Option<Result<(usize, Answer), Full>> {
        // One reading finds the idle entry and decides the first call on it.
        let now = self.core.clock.now_nanos();
        let rules = Rules {
            threshold: self.core.threshold_nanos(),
            mode: self.core.mode,
            lease: self.core.lease,
        };
        let class = self.table.class_of(key);
        match self
            .table
            .insert(key, class, candidates, now, rules.threshold, excluded)
        {
            Inserted::Retry => None,
            Inserted::Full => {
                // Relaxed: a statistic, ordered with nothing.
                self.refused.fetch_add(1, Ordering::Relaxed);
                Some(Err(Full))
            }
            Inserted::Published { slot, idle, active } => {
                // The first decision is the completion itself, so that the new entry is
                // never idle and undecided in the open, where another first call could take
                // it before its key decided.
                let first = self.table.first_word(class, idle);
                let (next, answer) = match state::decide(first, now, &rules) {
                    Decision::Now(next) => (next, Some(Answer::Now)),
                    Decision::Deferred(next) => (next, Some(Answer::Claimed(next))),
                    Decision::Suppressed => (
                        first,
                        Some(Answer::Suppressed {
                            until: state::deadline(first, rules.threshold),
                        }),
                    ),
                    // A first word is never pending: decided as usual, once completed.
                    Decision::Coalesced | Decision::TakeOver(_) => (first, None),
                };
                let completed = self.table.complete(slot, idle, next);
                self.table.finish(class, active);
                match answer {
                    Some(answer) if completed => {
                        match answer {
                            Answer::Now => self.core.count(|stats| &stats.leading),
                            Answer::Suppressed { .. } => self.core.skipped(),
                            Answer::Claimed(_) | Answer::Coalesced(_) => {}
                        }
                        Some(Ok((slot, answer)))
                    }
                    _ => {
                        // Someone finished the insert first: the entry is the key's, with
                        // its first word. Decide on it as on any entry.
                        *lost += u32::from(!completed);
                        None
                    }
                }
            }
        }
    }
}

/// The table had no room for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Full;

impl<K: ?Sized, C: Clock, S> KeyedThrottle<K, C, S> {
    /// How many entries the table has: the capacity asked for, rounded up to a whole number
    /// of buckets of eight.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::KeyedThrottle;
    /// # use std::time::Duration;
    /// assert_eq!(KeyedThrottle::<u8>::new(Duration::from_secs(1), 10).capacity(), 16);
    /// ```
    pub fn capacity(&self) -> usize {
        self.table.buckets() * WAYS
    }

    /// How many calls were refused because the table was [full](KeyedAdmission::Full).
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::KeyedThrottle;
    /// # use std::time::Duration;
    /// let throttle: KeyedThrottle<u8> = KeyedThrottle::new(Duration::from_secs(1), 8);
    /// assert_eq!(throttle.refused(), 0);
    /// ```
    pub fn refused(&self) -> u64 {
        // Relaxed: a statistic, ordered with nothing.
        self.refused.load(Ordering::Relaxed)
    }

    /// How many entries are live now: a deferral pending, or inside their window. An entry
    /// that is not live is free for any key. Reads every entry; for diagnostics and tests.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::KeyedThrottle;
    /// # use std::time::Duration;
    /// let throttle: KeyedThrottle<u32> = KeyedThrottle::new(Duration::from_secs(60), 64);
    /// for key in 0..10 {
    ///     let _ = throttle.admit(&key);
    /// }
    /// assert_eq!(throttle.live_entries(), 10);
    /// ```
    pub fn live_entries(&self) -> usize {
        let now = self.core.clock.now_nanos();
        let threshold = self.core.threshold_nanos();
        self.table
            .slots()
            // Acquire: as an admission's load.
            .map(|slot| slot.state.load(Ordering::Acquire))
            .filter(|word| !table::is_idle(*word, now, threshold))
            .count()
    }

    /// The threshold in force, for every key.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::KeyedThrottle;
    /// # use std::time::Duration;
    /// let throttle: KeyedThrottle<u8> = KeyedThrottle::new(Duration::from_secs(3), 8);
    /// assert_eq!(throttle.threshold(), Duration::from_secs(3));
    /// ```
    pub fn threshold(&self) -> Duration {
        Duration::from_nanos(self.core.threshold_nanos())
    }

    /// Changes the threshold of every key, lock-free, from any thread. As with
    /// [`Throttle::set_threshold`], across a change two runs of a key are at least
    /// `min(old, new)` apart, and `new` once the change is visible to every caller. Owners
    /// waiting for a deadline are not woken: each looks again at the deadline it was waiting
    /// for.
    ///
    /// # Errors
    ///
    /// [`ThresholdError`] if `threshold` exceeds [`Throttle::MAX_THRESHOLD`]; nothing changes.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::KeyedThrottle;
    /// # use std::time::Duration;
    /// let throttle: KeyedThrottle<u8> = KeyedThrottle::new(Duration::from_secs(3), 8);
    /// throttle.set_threshold(Duration::from_secs(1))?;
    /// assert_eq!(throttle.threshold(), Duration::from_secs(1));
    /// assert!(throttle.set_threshold(Duration::MAX).is_err());
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn set_threshold(&self, threshold: Duration) -> Result<(), ThresholdError> {
        checked(threshold, ThresholdError::threshold)?;
        self.core.set_threshold(threshold);
        Ok(())
    }

    /// The [`Mode`] of every key.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{KeyedThrottle, Mode};
    /// # use std::time::Duration;
    /// let throttle: KeyedThrottle<u8> = KeyedThrottle::new(Duration::from_secs(1), 8);
    /// assert_eq!(throttle.mode(), Mode::LeadingAndTrailing);
    /// ```
    pub fn mode(&self) -> Mode {
        self.core.mode
    }

    /// The lease set with [`KeyedThrottleBuilder::lease`], if any.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::KeyedThrottle;
    /// # use std::time::Duration;
    /// let throttle: KeyedThrottle<u8> = KeyedThrottle::new(Duration::from_secs(1), 8);
    /// assert_eq!(throttle.lease(), None);
    /// ```
    pub fn lease(&self) -> Option<Duration> {
        let lease = self.core.lease;
        (lease != NO_LEASE).then(|| Duration::from_nanos(lease))
    }

    /// The clock this table reads.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Clock, KeyedThrottle, ManualClock};
    /// use std::time::Duration;
    ///
    /// let throttle = KeyedThrottle::<u8, _>::with_clock(Duration::from_secs(1), 8, ManualClock::new())?;
    /// throttle.clock().advance(Duration::from_secs(2));
    /// assert_eq!(throttle.clock().now_nanos(), 2_000_000_000);
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn clock(&self) -> &C {
        &self.core.clock
    }

    /// A snapshot of the counters over all keys, if the table was built with
    /// [`counting`](KeyedThrottleBuilder::counting). Refusals are counted by
    /// [`refused`](KeyedThrottle::refused), always.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::KeyedThrottle;
    /// # use std::time::Duration;
    /// let throttle: KeyedThrottle<u8> =
    ///     KeyedThrottle::builder(Duration::from_secs(1), 8).counting(true).build()?;
    /// let _ = throttle.admit(&1);
    /// let _ = throttle.admit(&2);
    /// let _owner = throttle.admit(&1);
    /// let _ = throttle.admit(&1);
    /// let stats = throttle.stats().unwrap();
    /// assert_eq!((stats.leading, stats.coalesced), (2, 1));
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn stats(&self) -> Option<Stats> {
        self.core
            .counters
            .as_deref()
            .map(|counters| counters.snapshot(self.core.mode))
    }

    /// How many calls, over all keys, were coalesced or suppressed since the count was last
    /// taken, as [`Throttle::take_skipped`] counts them. Zero without
    /// [`counting`](KeyedThrottleBuilder::counting).
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{KeyedThrottle, Mode};
    /// use std::time::Duration;
    ///
    /// let throttle: KeyedThrottle<u8> = KeyedThrottle::builder(Duration::from_secs(60), 8)
    ///     .mode(Mode::LeadingOnly)
    ///     .counting(true)
    ///     .build()?;
    /// for key in [1, 1, 2, 1, 2] {
    ///     let _ = throttle.admit(&key);
    /// }
    /// assert_eq!(throttle.take_skipped(), 3);
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn take_skipped(&self) -> u64 {
        self.core.counters.as_deref().map_or(0, Counters::take)
    }

    /// The state word of the entry at `slot`, through the table's core. A keyed entry has no
    /// wake slot: its owner is woken only by its own wait ending.
    #[inline(always)]
    pub(crate) fn word(&self, slot: usize) -> Word<'_, C> {
        Word {
            state: &self.table.slot(slot).state,
            core: &self.core,
            owner: None,
        }
    }

    /// The table's core: threshold, mode, lease, counters, clock.
    #[inline(always)]
    pub(crate) fn core(&self) -> &Core<C> {
        &self.core
    }
}

impl<K: ?Sized, C: Clock, S> fmt::Debug for KeyedThrottle<K, C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedThrottle")
            .field("capacity", &self.capacity())
            .field("threshold", &self.threshold())
            .field("mode", &self.core.mode)
            .field("lease", &self.lease())
            .field("refused", &self.refused())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ManualClock;

    #[test]
    fn a_table_at_rest_has_no_insert_unfinished() {
        let throttle =
            KeyedThrottle::<u32, _>::with_clock(Duration::from_millis(1), 256, ManualClock::new())
                .unwrap();
        for key in 0..200 {
            let _ = throttle.admit(&key);
        }
        assert!(!throttle.table.inserting());
        assert!(throttle.table.classes() >= 1);
    }

    #[test]
    fn classes_grow_with_the_table_and_stop_at_sixty_four() {
        let classes = |capacity| {
            KeyedThrottle::<u8>::new(Duration::from_secs(1), capacity)
                .table
                .classes()
        };
        assert_eq!(classes(8), 1);
        assert_eq!(classes(8 * 64 * 4), 4);
        assert_eq!(classes(1 << 20), 64);
    }
}
