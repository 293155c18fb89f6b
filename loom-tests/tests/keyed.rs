//! Every interleaving of a keyed throttle's entry changing hands while keys are admitted.
//!
//! Under loom a bucket has two entries, so a table of capacity 2 is one bucket that every key
//! shares, and two keys fill it. The hasher is fixed, so that every execution places keys
//! alike. Each model names the mutants it must catch; `.ci/test` runs them.
#![cfg(loom)]

use atomic_throttle::{KeyedThrottle, ManualClock, Mode, NotRun, OwnedKeyedAdmission};
use loom::thread;
use loom_tests::{verify, verify_bounded};
use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_millis(10);
const T_NANOS: u64 = 10_000_000;

type Fixed = BuildHasherDefault<DefaultHasher>;
type Table = KeyedThrottle<u8, ManualClock, Fixed>;
type Answer = OwnedKeyedAdmission<u8, ManualClock, Fixed>;

/// A table of one bucket of two entries, on a manual clock at zero.
fn table(mode: Mode) -> (Arc<Table>, ManualClock) {
    let clock = ManualClock::new();
    let table = KeyedThrottle::builder(T, 2)
        .clock(clock.clone())
        .mode(mode)
        .hasher(Fixed::default())
        .build()
        .unwrap();
    assert_eq!(table.capacity(), 2, "one bucket of two entries under loom");
    (Arc::new(table), clock)
}

/// Admits `key` on another thread.
fn admit_on_a_thread(table: &Arc<Table>, key: u8) -> thread::JoinHandle<Answer> {
    let table = table.clone();
    thread::spawn(move || table.admit_owned(&key))
}

/// Model k1: key 1's entry is idle and the other entry is live, so a new key 2 can only take
/// key 1's entry over; key 1 is admitted at the same moment. Exactly one of them runs, and a
/// key that ran has its run recorded in its own entry: an admission never lands in an entry
/// that went to another key under it.
#[test]
fn model_k1_a_takeover_races_an_admission_of_the_evicted_key() {
    verify(
        "model k1",
        &[
            ("unchecked_key", "recorded in another key's entry"),
            ("evict_pending", "recorded in another key's entry"),
        ],
        || {
            let (table, clock) = table(Mode::LeadingAndTrailing);
            assert!(table.admit(&1).is_now());
            clock.advance(T);
            assert!(table.admit(&3).is_now()); // the other entry, live from now on
            let one = admit_on_a_thread(&table, 1);
            let two = admit_on_a_thread(&table, 2);
            let (one, two) = (one.join().unwrap(), two.join().unwrap());
            for (key, answer) in [(1, &one), (2, &two)] {
                match answer {
                    OwnedKeyedAdmission::Now => assert_eq!(
                        table.last_run(&key),
                        Some(T_NANOS),
                        "key {key}'s run was recorded in another key's entry"
                    ),
                    OwnedKeyedAdmission::Full => {}
                    other => panic!("key {key}: {other:?}, recorded in another key's entry"),
                }
            }
            assert!(
                one.is_now() != two.is_now(),
                "G1: {one:?} and {two:?} for one entry"
            );
            // Whoever ran is inside its window now.
            let ran = if one.is_now() { 1 } else { 2 };
            assert!(!table.admit(&ran).is_now(), "G1: key {ran} ran twice");
        },
    );
}

/// Model k2: in trailing-only mode, key 1's entry is idle, the other entry holds key 3's
/// pending deferral; key 1 claims a deferral while a new key 2 looks for an entry. A pending
/// entry is never handed over: every deferral that was claimed is still its owner's.
#[test]
fn model_k2_a_takeover_races_a_claim() {
    verify(
        "model k2",
        &[("evict_pending", "a pending deferral was evicted")],
        || {
            let (table, clock) = table(Mode::TrailingOnly);
            // Key 1 opens a window at 0 and gives its deferral up: idle once T has passed.
            assert!(table.admit(&1).is_deferred());
            let OwnedKeyedAdmission::Deferred(three) = table.admit_owned(&3) else {
                panic!("expected Deferred")
            };
            clock.advance(T);
            let one = admit_on_a_thread(&table, 1);
            let two = admit_on_a_thread(&table, 2);
            let answers = [(1, one.join().unwrap()), (2, two.join().unwrap())];
            let mut claims = 0;
            for (key, answer) in answers
                .into_iter()
                .chain([(3, OwnedKeyedAdmission::Deferred(three))])
            {
                match answer {
                    OwnedKeyedAdmission::Deferred(deferral) => {
                        claims += 1;
                        assert!(
                            table.is_pending(&key),
                            "a pending deferral was evicted: key {key}'s"
                        );
                        match deferral.try_run(|| ()) {
                            Err(NotRun::NotDue(deferral)) => drop(deferral),
                            Ok(()) => {} // key 3's deadline has come
                            Err(NotRun::Revoked(_)) => {
                                panic!("a pending deferral was evicted: key {key}'s was revoked")
                            }
                        }
                    }
                    OwnedKeyedAdmission::Full => {}
                    other => panic!("key {key}: {other:?}"),
                }
            }
            assert_eq!(claims, 2, "two entries, two deferrals");
        },
    );
}

/// Model k3: two first admissions of one new key at once. The key gets one entry, so one
/// window: one of them runs, the other owns the deferral.
#[test]
fn model_k3_two_first_admissions_of_one_key() {
    verify(
        "model k3",
        &[("unserialized_inserts", "exactly one leading run")],
        || {
            let (table, _clock) = table(Mode::LeadingAndTrailing);
            let first = admit_on_a_thread(&table, 7);
            let second = admit_on_a_thread(&table, 7);
            let answers = [first.join().unwrap(), second.join().unwrap()];
            let now = answers.iter().filter(|answer| answer.is_now()).count();
            assert_eq!(now, 1, "exactly one leading run: {answers:?}");
            assert!(
                answers.iter().any(|answer| answer.is_deferred()),
                "the other call owns the deferral: {answers:?}"
            );
            assert!(table.is_pending(&7));
            drop(answers);
            assert!(!table.is_pending(&7));
            assert!(
                table.admit(&7).is_deferred(),
                "G1: a second window for one key"
            );
        },
    );
}

/// Model k4: model k1 with a third caller, a new key 4, that may finish key 2's takeover of
/// key 1's entry on its behalf while key 1's admission is in flight. Exactly one of the three
/// runs, in its own entry: a takeover finished by a helper leaves a word that key 1's
/// in-flight CAS cannot match.
#[test]
fn model_k4_a_helper_finishes_a_takeover_under_an_admission_of_the_evicted_key() {
    verify_bounded(
        "model k4",
        Some(3),
        &[("handover_keeps_word", "recorded in another key's entry")],
        || {
            let (table, clock) = table(Mode::LeadingAndTrailing);
            assert!(table.admit(&1).is_now());
            clock.advance(T);
            assert!(table.admit(&3).is_now());
            let callers: Vec<_> = [1, 2, 4]
                .into_iter()
                .map(|key| (key, admit_on_a_thread(&table, key)))
                .collect();
            let mut ran = 0;
            for (key, caller) in callers {
                match caller.join().unwrap() {
                    OwnedKeyedAdmission::Now => {
                        ran += 1;
                        assert_eq!(
                            table.last_run(&key),
                            Some(T_NANOS),
                            "key {key}'s run was recorded in another key's entry"
                        );
                    }
                    OwnedKeyedAdmission::Full => {}
                    other => panic!("key {key}: {other:?}, recorded in another key's entry"),
                }
            }
            assert_eq!(ran, 1, "G1: one idle entry, {ran} runs");
        },
    );
}
