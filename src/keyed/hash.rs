//! From a key's 64-bit hash to its fingerprint and the two buckets it may live in.
//!
//! The fingerprint is the hash itself (0, which marks an entry with no key, becomes 1), so
//! two keys share an entry only if their hashes are equal: with the default hasher, SipHash-1-3
//! under a random 128-bit key chosen per table, a key that has no entry matches another key's
//! entry with probability at most 16 / 2^64 (it is compared with 16 entries), and nobody who
//! does not know the table's key can choose keys that collide. The first bucket comes from the
//! hash's high bits, the second from its middle bits, by multiply-and-shift, so any bucket
//! count works.

use super::table::WAYS;

/// The fingerprint a table stores for a key with this hash: never 0, which means no key.
#[inline(always)]
pub(crate) const fn fingerprint(hash: u64) -> u64 {
    if hash == 0 {
        1
    } else {
        hash
    }
}

/// `hash` scaled to `0..buckets`.
#[inline(always)]
const fn scaled(hash: u64, buckets: usize) -> usize {
    ((hash as u128 * buckets as u128) >> 64) as usize
}

/// The two buckets a key may live in, in the order it is looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidates {
    first: usize,
    second: usize,
}

impl Candidates {
    /// The buckets of the key whose hash is `hash`, in a table of `buckets` buckets.
    #[inline(always)]
    pub(crate) const fn of(hash: u64, buckets: usize) -> Self {
        Self {
            first: scaled(hash, buckets),
            second: scaled(hash.rotate_left(32), buckets),
        }
    }

    /// The key's two buckets (the same one twice in a table of one bucket).
    #[inline(always)]
    pub(crate) const fn buckets(&self) -> [usize; 2] {
        [self.first, self.second]
    }

    /// The entries the key may use, in order: the first bucket's, then the second's (when it
    /// is another bucket).
    #[inline(always)]
    pub(crate) fn slots(&self) -> impl Iterator<Item = usize> {
        let second = if self.second == self.first {
            0..0
        } else {
            self.second * WAYS..(self.second + 1) * WAYS
        };
        (self.first * WAYS..(self.first + 1) * WAYS).chain(second)
    }

    /// The bit of `slot`'s position among the candidates, or 0 if it is not one.
    #[inline]
    pub(crate) fn mask_of(&self, slot: usize) -> u32 {
        self.slots()
            .position(|candidate| candidate == slot)
            .map_or(0, |position| 1 << position)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn candidates_stay_in_the_table() {
        for buckets in [1, 2, 3, 7, 128, 1 << 20] {
            for hash in [0, 1, u64::MAX, 0x8000_0000_0000_0000, 0xdead_beef_f00d_cafe] {
                let candidates = Candidates::of(hash, buckets);
                let slots: Vec<_> = candidates.slots().collect();
                assert!(slots.iter().all(|&slot| slot < buckets * WAYS));
                assert!(slots.len() == WAYS || slots.len() == 2 * WAYS);
            }
        }
        // One bucket: both choices are it, and its entries come once.
        assert_eq!(
            Candidates::of(12345, 1).slots().collect::<Vec<_>>(),
            (0..WAYS).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_candidates_are_both_buckets_in_order_and_each_has_its_own_bit() {
        let mut two_buckets = 0;
        for buckets in [2, 3, 7, 128, 1 << 20] {
            for hash in [0, 1, u64::MAX, 0x8000_0000_0000_0000, 0xdead_beef_f00d_cafe] {
                let candidates = Candidates::of(hash, buckets);
                let [first, second] = candidates.buckets();
                let mut expected: Vec<usize> = (first * WAYS..(first + 1) * WAYS).collect();
                if second != first {
                    expected.extend(second * WAYS..(second + 1) * WAYS);
                    two_buckets += 1;
                }
                assert_eq!(candidates.slots().collect::<Vec<_>>(), expected);
                for (position, &slot) in expected.iter().enumerate() {
                    assert_eq!(candidates.mask_of(slot), 1 << position, "slot {slot}");
                }
                let outside = (0..buckets * WAYS).find(|slot| !expected.contains(slot));
                if let Some(slot) = outside {
                    assert_eq!(candidates.mask_of(slot), 0, "slot {slot} is no candidate");
                }
            }
        }
        assert!(two_buckets >= 5, "{two_buckets} keys with two buckets");
    }

    #[test]
    fn no_key_has_the_fingerprint_of_no_key() {
        assert_eq!(fingerprint(0), 1);
        assert_eq!(fingerprint(7), 7);
    }
}
