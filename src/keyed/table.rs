//! The table of a keyed throttle: a fixed array of cache-line buckets of entries, each entry a
//! key's fingerprint and its state word, and the lock-free protocol that hands an idle entry
//! to another key.
//!
//! # Layout
//!
//! ```text
//!  bucket (128 bytes, one cache line)
//! +-------------+-------------+-------------+-----+-------------+-------------+
//! | key 0 (u64) | state 0     | key 1       | ... | key 7       | state 7     |
//! +-------------+-------------+-------------+-----+-------------+-------------+
//! ```
//!
//! An entry is two `AtomicU64`s, 16 bytes: the key's 64-bit fingerprint (0 for no key) and
//! the state word of `state.rs`, the very word a `Throttle` keeps. A key hashes (with the
//! table's own hasher, a randomly seeded SipHash-1-3 by default) to two buckets and is looked
//! for in their 16 entries only, so no stream of keys can make a lookup longer. Buckets are
//! padded to the cache line, entries are not.
//!
//! # Handing an entry over
//!
//! An entry that is neither pending nor inside its window (idle) answers like a fresh
//! throttle, so a key that has no entry may take one over. The key and the state are two
//! words, so the handover goes through states that nobody decides on:
//!
//! | step | state word | key word | who |
//! |------|------------|----------|-----|
//! | idle entry of key A | `I` | A | |
//! | 1. reserve | `I \| FLUSH`: *reserved* | A | the inserter, by CAS from exactly `I` |
//! | 2. name | reserved | B | the inserter |
//! | 3. publish | reserved | B | the inserter, by CAS on B's *class* word: `IDLE(n)` to `ACTIVE(n, slot)` |
//! | 4. complete | `first(I)` | B | anyone who sees `ACTIVE(n, slot)`, by CAS from exactly `I \| FLUSH` |
//! | 5. finish | `first(I)` | B | anyone, by CAS on the class word: `ACTIVE(n, slot)` to `IDLE(n + 1)` |
//!
//! - *Reserved* is `FLUSH` without `PENDING`, a pattern no throttle word ever takes: every
//!   compare-and-swap of an owner (stamp, release) fails on it, `cancel` and `flush` see
//!   nothing pending, and an admission that meets it after a lost CAS stops and looks the key
//!   up again. Step 1 is where key A loses its entry.
//! - `first(I)` is `I` with its generation advanced (state.rs's `cancelled`), its stamp
//!   kept, and lifted to the class's *horizon* (below). Every pass through a reservation
//!   advances (stamp, generation), so no word of A's tenure, and in particular no claim a
//!   revoked deferral of A still holds, ever comes back: a stale owner's stamp or release
//!   compares against a word the entry will never hold again.
//! - A key word is written only while its entry is reserved, by whoever holds the
//!   reservation. An admission reads key, state, key: if the key is the same both times, the
//!   state word was this key's. An admission's retry after a lost CAS reads the key again
//!   before deciding on the new word.
//! - Two first admissions of one key must not give it two entries. Each key belongs to one
//!   of a few *classes* (fingerprint bits), and each class has an insert word: an insert is
//!   published only by CAS from the class word it read before it looked for the key, so no
//!   other insert of that class was published in between; the class word names the entry
//!   while the insert is unfinished, and anyone finishes it, so a stalled inserter holds
//!   nobody up (lock-free). An insert that loses the publishing CAS backs out: key 0, state
//!   `cancelled(I)`.
//! - While a class word names an entry, no other insert reserves that entry: an inserter
//!   reads the entry's state, then the class word of the entry's key, and finishes that
//!   insert first if the class word names the entry. So a finisher that reads a reserved
//!   state and then still finds the class word unchanged knows the reservation is the one
//!   the class word names.
//!
//! The insert protocol's operations are `SeqCst`: the last two points reason about one
//! order of reads and writes across the entry and the class words. The hit path is three
//! loads (key `Relaxed`, state `Acquire`, key `Acquire`) and the shared word operations of
//! `word.rs`.
//!
//! # Horizon
//!
//! A key whose entry was taken over starts again in another entry, without its last stamp.
//! With a clock that only moves forward that changes nothing: its entry was taken over
//! because its window had passed. With a clock that steps back, it could run again less
//! than the threshold after its last run. So a takeover records the stamp of the entry it
//! takes in the evicted key's class (`fetch_max`), and an entry handed to a key of that class
//! starts with a stamp no earlier than that: a key's next run is at least a threshold after
//! its last one, whatever its entry, and a backward step only delays it. (A first call after
//! the threshold was raised may be delayed too: it waits out the new threshold from the
//! latest stamp taken over in its class.)

use super::hash::Candidates;
use crate::state::{self, FLUSH, PENDING};
use crate::sync::{self, AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

/// Entries per bucket: eight pairs of words fill one 128-byte cache line. Under loom, two,
/// so that a model reaches a full bucket in two keys.
#[cfg(not(loom))]
pub(crate) const WAYS: usize = 8;
/// Entries per bucket: eight pairs of words fill one 128-byte cache line. Under loom, two,
/// so that a model reaches a full bucket in two keys.
#[cfg(loom)]
pub(crate) const WAYS: usize = 2;

/// The most entries a table can have: the class word names an entry in 30 bits.
pub(crate) const MAX_ENTRIES: usize = 1 << SLOT_BITS;

/// The key word of an entry that belongs to no key.
pub(crate) const NO_KEY: u64 = 0;

/// Bits of the class word that name an entry.
const SLOT_BITS: u32 = 30;
/// Mask of the entry named by a class word.
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// Set while the insert the class word names is unfinished.
const ACTIVE: u64 = 1 << 63;
/// One step of the class word's count of finished inserts (33 bits, above the entry).
const SEQ_ONE: u64 = 1 << SLOT_BITS;
/// Mask of the count of finished inserts.
const SEQ_MASK: u64 = !ACTIVE & !SLOT_MASK;

/// An entry's state word while it is reserved for another key (see the module docs).
#[inline(always)]
pub(crate) const fn reserved(word: u64) -> u64 {
    word | FLUSH
}

/// Whether `word` is a reservation, not a throttle state.
#[inline(always)]
pub(crate) const fn is_reserved(word: u64) -> bool {
    word & (FLUSH | PENDING) == FLUSH
}

/// The class word of an insert of `slot` published from `idle`.
#[inline(always)]
const fn activated(idle: u64, slot: usize) -> u64 {
    ACTIVE | (idle & SEQ_MASK) | slot as u64
}

/// The class word once the insert `active` names is finished: idle, one more counted.
#[inline(always)]
const fn finished(active: u64) -> u64 {
    (active & SEQ_MASK).wrapping_add(SEQ_ONE) & SEQ_MASK
}

/// Whether a class word names an unfinished insert.
#[inline(always)]
const fn is_active(class_word: u64) -> bool {
    class_word & ACTIVE != 0
}

/// The entry an active class word names.
#[inline(always)]
const fn slot_of(class_word: u64) -> usize {
    (class_word & SLOT_MASK) as usize
}

/// Whether an entry whose state word is `word` may be handed to another key at `now`: it is
/// no reservation, nothing is pending, and its window has passed.
#[inline]
pub(crate) fn is_idle(word: u64, now: u64, threshold: u64) -> bool {
    if sync::is_mutant(sync::mutant!(EvictPending)) {
        return evict_pending(word);
    }
    !is_reserved(word) && !state::is_pending(word) && state::window_passed(word, now, threshold)
}

/// The position of entry `way` of the candidates' bucket `half` among the candidates, as
/// [`Candidates::slots`](super::hash::Candidates::slots) counts them.
// Only for the mark `excluded`, which an insert makes only when it finds another thread's
// insert unfinished: no test without a race can tell a mutant here (see the mutants
// configuration; loom model k3 and its control cover the race).
#[cfg_attr(mutants, mutants::skip)]
const fn position(half: usize, way: usize) -> usize {
    half * WAYS + way
}

/// Raises a class's horizon to just past the stamp of `word`, the idle word of an entry of the
/// class that is being taken from its key.
#[inline]
fn raise_horizon(horizon: &AtomicU64, word: u64) {
    // Acquire: spares the write below when the horizon is already there, and then orders this
    // takeover after the `fetch_max` that put it there, so whoever sees the key gone sees it
    // too (pairs with that `fetch_max`).
    if state::is_stamped(word) && horizon.load(Ordering::Acquire) < horizon_of(word) {
        // SeqCst, before the reservation: whoever sees the key gone sees the horizon too
        // (pairs with the load in `first_word`).
        horizon.fetch_max(horizon_of(word), Ordering::SeqCst);
    }
}

/// The mark of the candidate at `position` (see [`position`]).
#[cfg_attr(mutants, mutants::skip)]
const fn mark(position: usize) -> u32 {
    1 << position
}

/// Whether the candidate at `position` is marked in `excluded` (see [`position`]).
#[cfg_attr(mutants, mutants::skip)]
const fn is_excluded(excluded: u32, position: usize) -> bool {
    excluded & mark(position) != 0
}

/// Whether the class word `class_word` names an unfinished insert of the entry `slot`: only
/// while another thread's insert is under way, a race (see [`position`]).
#[cfg_attr(mutants, mutants::skip)]
const fn names_unfinished(class_word: u64, slot: usize) -> bool {
    is_active(class_word) && slot_of(class_word) == slot
}

/// Whether an idle entry last held by `holder` is a better choice for a new key than one last
/// held by `chosen_holder`: an entry that never held a key goes first.
#[inline(always)]
const fn never_held_first(chosen_holder: u64, holder: u64) -> bool {
    chosen_holder != NO_KEY && holder == NO_KEY
}

/// The broken variant of [`Table::holds`], for the negative control of loom model k1: the
/// entry is taken for the key's without reading its key word. Never run by the tests that
/// cargo-mutants runs, so not mutated.
#[cfg_attr(mutants, mutants::skip)]
const fn unchecked_key(word: u64) -> bool {
    !is_reserved(word)
}

/// The broken variant of [`is_idle`], for the negative controls of loom models k1 and k2: any
/// entry that is not being handed over is taken, pending or not. Never run by the tests that
/// cargo-mutants runs, so not mutated.
#[cfg_attr(mutants, mutants::skip)]
const fn evict_pending(word: u64) -> bool {
    !is_reserved(word)
}

/// The first state word of an entry handed over from the idle word `idle`: the generation
/// advanced, so that no word of the last tenure comes back, and the stamp no earlier than the
/// class's horizon.
#[inline]
pub(crate) fn first_word(idle: u64, horizon: u64) -> u64 {
    let word = if sync::is_mutant(sync::mutant!(HandoverKeepsWord)) {
        idle
    } else {
        state::cancelled(idle)
    };
    match horizon.checked_sub(1) {
        None => word,
        // A later stamp stays where it is; a reading in whole microseconds is its own stamp.
        Some(stamp) => state::stamped(word, stamp * state::NANOS_PER_STAMP),
    }
}

/// The horizon that the taking over of an entry whose stamped word is `word` sets: its stamp
/// plus one, in microseconds, so that 0 means none.
#[inline]
const fn horizon_of(word: u64) -> u64 {
    state::stamp(word) + 1
}

/// One entry: a key's fingerprint and its state word, 16 bytes.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The fingerprint of the key whose entry this is, or [`NO_KEY`].
    pub(crate) key: AtomicU64,
    /// The entry's state word (see `state.rs`), or a reservation.
    pub(crate) state: AtomicU64,
}

/// Eight entries in one cache line.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Bucket {
    pub(crate) slots: [Slot; WAYS],
}

#[cfg(not(loom))]
const _: () = {
    assert!(core::mem::size_of::<Slot>() == 16, "an entry is 16 bytes");
    assert!(
        core::mem::size_of::<Bucket>() == 128,
        "a bucket is one cache line"
    );
};

/// The insert word and the horizon of one class of keys.
#[derive(Debug)]
pub(crate) struct Class {
    /// `ACTIVE | count | slot` while an insert of a key of this class is unfinished, `count`
    /// otherwise.
    insert: AtomicU64,
    /// The latest stamp of an entry of a key of this class that was taken over, plus one, in
    /// microseconds; 0 for none.
    horizon: AtomicU64,
}

/// Where a lookup found a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// The key's entry, and the state word it holds.
    Entry { slot: usize, word: u64 },
    /// No entry of the key is in use; one may be on its way.
    Absent,
    /// The entry changed hands while it was read: look again.
    Moved,
}

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inserted {
    /// The key has an entry, or another insert moved on: look it up again.
    Retry,
    /// Every entry the key may use is live (pending, or inside its window), being handed
    /// over, or was just finished by this caller for another key.
    Full,
    /// The key's insert is published: its caller completes it with its first decision
    /// ([`Table::complete`]), then [`finish`](Table::finish)es it, unless someone else
    /// finished it first.
    Published {
        slot: usize,
        /// The idle word the entry held, which its reservation keeps.
        idle: u64,
        /// The class word that names the insert.
        active: u64,
    },
}

/// The entries, the classes, and the protocol between them.
#[derive(Debug)]
pub(crate) struct Table {
    buckets: Box<[Bucket]>,
    classes: Box<[CachePadded<Class>]>,
}

impl Table {
    /// A table of `buckets` buckets (at least one) and `classes` classes (a power of two).
    pub(crate) fn new(buckets: usize, classes: usize) -> Self {
        debug_assert!(classes.is_power_of_two());
        let slot = || Slot {
            key: AtomicU64::new(NO_KEY),
            state: AtomicU64::new(state::FRESH),
        };
        Self {
            buckets: (0..buckets.max(1))
                .map(|_| Bucket {
                    slots: core::array::from_fn(|_| slot()),
                })
                .collect(),
            classes: (0..classes)
                .map(|_| {
                    CachePadded::new(Class {
                        insert: AtomicU64::new(0),
                        horizon: AtomicU64::new(0),
                    })
                })
                .collect(),
        }
    }

    /// The number of buckets.
    #[inline(always)]
    pub(crate) fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// The number of classes.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn classes(&self) -> usize {
        self.classes.len()
    }

    /// The entry at `slot` (bucket * WAYS + way).
    #[inline(always)]
    pub(crate) fn slot(&self, slot: usize) -> &Slot {
        &self.buckets[slot / WAYS].slots[slot % WAYS]
    }

    /// Every entry, in order.
    pub(crate) fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.buckets.iter().flat_map(|bucket| bucket.slots.iter())
    }

    /// Whether the entry at `slot` still belongs to `key` and `word` may be decided on: it is
    /// no reservation, and the key word, read after the state word that was `word`, still
    /// names the key. Once the state word that was `word` is seen (Acquire), the key word
    /// that its tenure began with is visible; a later key word means the entry changed hands
    /// since, and then a CAS from `word` fails anyway.
    #[inline(always)]
    pub(crate) fn holds(&self, slot: usize, key: u64, word: u64) -> bool {
        Self::entry_holds(self.slot(slot), key, word)
    }

    /// [`holds`](Table::holds), for the entry itself.
    #[inline(always)]
    fn entry_holds(entry: &Slot, key: u64, word: u64) -> bool {
        if sync::is_mutant(sync::mutant!(UncheckedKey)) {
            return unchecked_key(word);
        }
        // Acquire: pairs with the SeqCst store of the key in `insert`, so that a key word
        // written after a reservation orders this caller's next CAS after that reservation.
        !is_reserved(word) && entry.key.load(sync::ordering(Ordering::Acquire)) == key
    }

    /// Looks `key` up among its candidates: the first entry whose key word names it and
    /// whose state is a throttle word, with that word.
    #[inline(always)]
    pub(crate) fn find(&self, key: u64, candidates: &Candidates) -> Found {
        let [first, second] = candidates.buckets();
        if let Some(found) = self.find_in(first, key) {
            return found;
        }
        if second != first {
            if let Some(found) = self.find_in(second, key) {
                return found;
            }
        }
        Found::Absent
    }

    /// [`find`](Table::find) in one bucket.
    #[inline(always)]
    fn find_in(&self, bucket: usize, key: u64) -> Option<Found> {
        for (way, entry) in self.buckets[bucket].slots.iter().enumerate() {
            // Relaxed: only picks the entry; the key is read again after the state word.
            if entry.key.load(Ordering::Relaxed) != key {
                continue;
            }
            // Acquire: as an admission's load of a throttle's word (pairs with the AcqRel
            // CASes of `word.rs`), and so that the key word read next is at least the one
            // this word's tenure began with (pairs with the SeqCst completion in `complete` or
            // `finish`).
            let word = entry.state.load(sync::ordering(Ordering::Acquire));
            if is_reserved(word) {
                // Being handed to this key, or taken from it: not an entry in use.
                continue;
            }
            if !Self::entry_holds(entry, key, word) {
                return Some(Found::Moved);
            }
            let slot = bucket * WAYS + way;
            return Some(Found::Entry { slot, word });
        }
        None
    }

    /// Gives `key` (of class `class`) an entry among its candidates, taking an idle one over
    /// (in the bucket with more idle entries, one with no key if there is one), unless it has
    /// one already or none is idle at `now`. Reserves, names and publishes; the caller
    /// completes.
    ///
    /// `excluded` marks the candidates (by position) whose insert this caller finished for
    /// another key during this admission: their new key has yet to decide, so its entry
    /// looks idle, and taking it would let two first calls hand one entry back and forth
    /// forever. An admission that finished another key's insert takes another entry, or is
    /// refused.
    #[cold]
    #[inline(never)]
    pub(crate) fn insert(
        &self,
        key: u64,
        class: usize,
        candidates: &Candidates,
        now: u64,
        threshold: u64,
        excluded: &mut u32,
    ) -> Inserted {
        let class_word = &self.classes[class].insert;
        // The insert protocol's operations are all SeqCst (module docs). This load: the class
        // word this insert will publish from; it sees every insert of the class finished
        // before it (pairs with their publishing and finishing CASes), so the scan below sees
        // the entries they completed.
        let idle = class_word.load(Ordering::SeqCst);
        if is_active(idle) {
            self.finish(class, idle);
            *excluded |= candidates.mask_of(slot_of(idle));
            return Inserted::Retry;
        }
        // Look for the key once more (after reading the class word), and for idle entries:
        // in each bucket the first with no key, else the first idle one, and how many are
        // idle. The bucket with more idle entries gets the key (the first on a tie), so the
        // two fill evenly and a key is refused only when both are full.
        let mut choice: [Option<(usize, u64, u64, usize)>; 2] = [None, None];
        let mut idle_entries = [0; 2];
        let buckets = candidates.buckets();
        let distinct = if buckets[0] == buckets[1] { 1 } else { 2 };
        for (half, &bucket) in buckets[..distinct].iter().enumerate() {
            for (way, entry) in self.buckets[bucket].slots.iter().enumerate() {
                let position = position(half, way);
                // State first, then key: the key word changes only while the state is
                // reserved, so a key read after an unreserved state is that state's key, or a
                // later one (and then the state has moved, and a CAS from it fails).
                // SeqCst: pairs with the reservation and completion CASes of other inserts
                // and with admissions' CASes (AcqRel).
                let word = entry.state.load(Ordering::SeqCst);
                // SeqCst: pairs with the store that named the entry's key.
                let holder = entry.key.load(Ordering::SeqCst);
                if holder == key && !is_reserved(word) {
                    return Inserted::Retry; // it has an entry: look it up
                }
                if is_excluded(*excluded, position) || !is_idle(word, now, threshold) {
                    continue;
                }
                idle_entries[half] += 1;
                let better = match choice[half] {
                    None => true,
                    Some((_, _, chosen_holder, _)) => never_held_first(chosen_holder, holder),
                };
                if better {
                    choice[half] = Some((bucket * WAYS + way, word, holder, position));
                }
            }
        }
        let chosen = if idle_entries[1] > idle_entries[0] {
            choice[1]
        } else {
            choice[0]
        };
        let Some((slot, word, holder, position)) = chosen else {
            return Inserted::Full;
        };
        let entry = self.slot(slot);
        if holder != NO_KEY {
            let holder_class = self.class_of(holder);
            // The insert that gave the entry to its key may still be unfinished: finish it,
            // so that its finisher never completes a reservation made after it. SeqCst: read
            // after the entry's state, before the reservation (pairs with that insert's
            // publishing CAS).
            let named = self.classes[holder_class].insert.load(Ordering::SeqCst);
            if names_unfinished(named, slot) {
                self.finish(holder_class, named);
                *excluded |= mark(position);
                return Inserted::Retry;
            }
            raise_horizon(&self.classes[holder_class].horizon, word);
        }
        // 1. Reserve, from exactly the idle word: an admission of the holder that got there
        // first makes this fail. SeqCst: pairs with the holder's admissions (AcqRel CASes,
        // Acquire loads) and with the finishers' reads of the state.
        if entry
            .state
            .compare_exchange(word, reserved(word), Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Inserted::Retry;
        }
        // 2. Name the key. Release: an admission whose key load (Acquire, `holds`) sees it
        // also sees the reservation, so its next CAS on the old word fails; the completion
        // and the class word publish it to everyone who sees them.
        entry.key.store(key, Ordering::Release);
        if sync::is_mutant(sync::mutant!(UnserializedInserts)) {
            // The broken variant: handed to the caller at once, whatever other inserts did
            // meanwhile.
            return Inserted::Published {
                slot,
                idle: word,
                active: idle,
            };
        }
        // 3. Publish: only if no insert of this class was published since `idle` was read.
        // SeqCst: pairs with the class-word loads of other inserts and finishers.
        let active = activated(idle, slot);
        if class_word
            .compare_exchange(idle, active, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // Back out: nobody else touches an unpublished reservation. Release: as in
            // naming; the key goes before the state is released.
            entry.key.store(NO_KEY, Ordering::Release);
            // SeqCst: releases the entry (pairs with the scans' and admissions' loads).
            let _ = entry.state.compare_exchange(
                reserved(word),
                state::cancelled(word),
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            return Inserted::Retry;
        }
        Inserted::Published {
            slot,
            idle: word,
            active,
        }
    }

    /// The first word of an entry of class `class` handed over from the idle word `idle`:
    /// what its new key's first decision is made on.
    pub(crate) fn first_word(&self, class: usize, idle: u64) -> u64 {
        // SeqCst: sees every horizon raised before a takeover this caller saw (pairs with
        // the `fetch_max` in `insert`).
        first_word(idle, self.classes[class].horizon.load(Ordering::SeqCst))
    }

    /// 4, by the inserter: replaces the reservation of the entry at `slot`, taken from the idle
    /// word `idle`, with `next` (its key's first decision on its first word). False if a
    /// finisher completed it first.
    pub(crate) fn complete(&self, slot: usize, idle: u64, next: u64) -> bool {
        // SeqCst (at least AcqRel): publishes the key named before it to whoever sees the new
        // word (pairs with the Acquire state loads of admissions); fails if a finisher came
        // first.
        self.slot(slot)
            .state
            .compare_exchange(reserved(idle), next, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// 4 and 5, by anyone: completes (with its first word, if nobody completed it yet) and
    /// finishes the insert that the class word `active` of `class` names. Every step is a
    /// CAS that only the first to get there wins.
    #[cold]
    #[inline(never)]
    pub(crate) fn finish(&self, class: usize, active: u64) {
        if !is_active(active) {
            return; // the broken variant's inserts are never published
        }
        let class_words = &self.classes[class];
        let entry = self.slot(slot_of(active));
        // SeqCst: the state first, then the class word (pairs with the reservation CAS and the
        // publishing CAS of the insert, and with later inserts' reservations).
        let word = entry.state.load(Ordering::SeqCst);
        // A reservation read before the class word is found unchanged is the one it names.
        if is_reserved(word) && class_words.insert.load(Ordering::SeqCst) == active {
            let first = self.first_word(class, word & !FLUSH);
            // SeqCst: as in `complete`.
            let _ = entry
                .state
                .compare_exchange(word, first, Ordering::SeqCst, Ordering::SeqCst);
        }
        // SeqCst: the insert is over; the next insert of the class may publish (pairs with
        // its class-word load).
        let _ = class_words.insert.compare_exchange(
            active,
            finished(active),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// The class of the key whose fingerprint is `key`.
    #[inline(always)]
    pub(crate) fn class_of(&self, key: u64) -> usize {
        key as usize & (self.classes.len() - 1)
    }

    /// The class words of a table at rest: whether an insert is unfinished in any class.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn inserting(&self) -> bool {
        self.classes
            .iter()
            // SeqCst: a look at a table at rest.
            .any(|class| is_active(class.insert.load(Ordering::SeqCst)))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_is_no_throttle_word() {
        for word in [
            state::FRESH,
            state::stamped(state::FRESH, 5_000),
            state::claimed(state::stamped(state::FRESH, 5_000)),
            state::claimed(state::stamped(state::FRESH, 5_000)) | FLUSH,
        ] {
            assert!(!is_reserved(word), "{word:#x}");
            assert!(is_reserved(reserved(word & !PENDING & !FLUSH)));
        }
    }

    #[test]
    fn the_first_word_moves_on_and_keeps_the_stamp() {
        let idle = state::stamped(state::FRESH, 7_000);
        let first = first_word(idle, 0);
        assert_eq!(state::stamp(first), 7);
        assert_eq!(state::generation(first), 1);
        assert!(!state::is_pending(first) && state::is_stamped(first));
        // Lifted to the horizon; an earlier horizon changes nothing.
        let later = state::stamped(state::FRESH, 20_000);
        assert_eq!(state::stamp(first_word(idle, horizon_of(later))), 20);
        assert_eq!(first_word(idle, 5), first);
        // A horizon at the origin still counts.
        let origin = state::stamped(state::FRESH, 0);
        assert!(state::is_stamped(first_word(
            state::FRESH,
            horizon_of(origin)
        )));
        // A fresh entry stays fresh without a horizon.
        assert!(!state::is_stamped(first_word(state::FRESH, 0)));
        assert!(state::window_passed(first_word(state::FRESH, 0), 0, 1_000));
    }

    /// Keys spread over every class by their low fingerprint bits: inserts of keys of other
    /// classes do not wait on each other, and an evicted key's horizon lifts only the first
    /// words of its own class.
    #[test]
    fn keys_spread_over_every_class() {
        let table = Table::new(2, 8);
        let classes: std::collections::BTreeSet<usize> =
            (0..64u64).map(|key| table.class_of(key)).collect();
        assert_eq!(classes, (0..8).collect());
        assert_eq!(table.class_of(13), 5);
    }

    #[test]
    fn class_words_count_and_name() {
        let idle = finished(activated(0, 5));
        assert_eq!(idle, SEQ_ONE, "one insert counted, no entry named");
        assert_eq!(
            finished(activated(idle, 7)),
            2 * SEQ_ONE,
            "one more counted"
        );
        assert!(!is_active(idle));
        let active = activated(idle, MAX_ENTRIES - 1);
        assert!(is_active(active));
        assert_eq!(slot_of(active), MAX_ENTRIES - 1);
        assert_ne!(finished(active), idle);
        // The count wraps within its bits.
        assert!(!is_active(finished(ACTIVE | SEQ_MASK)));
    }
}
