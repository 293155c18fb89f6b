//! Errors.

use core::fmt;
use core::time::Duration;

/// A duration the throttle cannot represent: a threshold, a lease or a shutdown grace over
/// [`Throttle::MAX_THRESHOLD`](crate::Throttle::MAX_THRESHOLD), 2^62 ns (about 146 years). It
/// is refused, never truncated.
///
/// Its `Display` gives both durations in exact nanoseconds, so that a request just over the
/// limit reads differently from the limit:
///
/// ```text
/// threshold of 4611686018427387905 ns exceeds the largest accepted threshold,
/// 4611686018427387904 ns (Throttle::MAX_THRESHOLD: 2^62 ns, about 146 years)
/// ```
///
/// (on one line). The constructors that panic instead of returning it (`Throttle::new`,
/// `Throttled::new` and the other `new`s) panic with the same text, after
/// `atomic-throttle: ` and the constructor's name.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Throttle, ThresholdError};
/// use std::time::Duration;
///
/// let err = Throttle::try_new(Duration::from_secs(600 * 365 * 24 * 3600)).unwrap_err();
/// assert_eq!(err.requested(), Duration::from_secs(600 * 365 * 24 * 3600));
/// assert_eq!(err.max(), Throttle::MAX_THRESHOLD);
/// assert_eq!(
///     err.to_string(),
///     "threshold of 18921600000000000000 ns exceeds the largest accepted threshold, \
///      4611686018427387904 ns (Throttle::MAX_THRESHOLD: 2^62 ns, about 146 years)"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThresholdError {
    requested: Duration,
    what: &'static str,
}

impl ThresholdError {
    pub(crate) const fn threshold(requested: Duration) -> Self {
        Self {
            requested,
            what: "threshold",
        }
    }

    pub(crate) const fn lease(requested: Duration) -> Self {
        Self {
            requested,
            what: "lease",
        }
    }

    pub(crate) const fn grace(requested: Duration) -> Self {
        Self {
            requested,
            what: "shutdown grace",
        }
    }

    /// The duration that was asked for.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttle;
    /// # use std::time::Duration;
    /// let err = Throttle::try_new(Duration::MAX).unwrap_err();
    /// assert_eq!(err.requested(), Duration::MAX);
    /// ```
    pub const fn requested(&self) -> Duration {
        self.requested
    }

    /// What was refused: `"threshold"`, `"lease"` or `"shutdown grace"`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttle;
    /// # use std::time::Duration;
    /// let err = Throttle::builder(Duration::ZERO).lease(Duration::MAX).build().unwrap_err();
    /// assert_eq!(err.what(), "lease");
    /// ```
    pub const fn what(&self) -> &'static str {
        self.what
    }

    /// The largest duration a throttle accepts.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttle;
    /// # use std::time::Duration;
    /// let err = Throttle::try_new(Duration::MAX).unwrap_err();
    /// assert!(Throttle::try_new(err.max()).is_ok());
    /// ```
    pub const fn max(&self) -> Duration {
        crate::Throttle::<crate::DefaultClock>::MAX_THRESHOLD
    }
}

impl ThresholdError {
    /// The error's text, put together by `const` code so that the `const` constructors can
    /// panic with it too.
    const fn describe(&self, message: Message) -> Message {
        message
            .str(self.what)
            .str(" of ")
            .u128(self.requested.as_nanos())
            .str(" ns exceeds the largest accepted ")
            .str(self.what)
            .str(", ")
            .u128(self.max().as_nanos())
            .str(" ns (Throttle::MAX_THRESHOLD: 2^62 ns, about 146 years)")
    }

    /// Panics with "atomic-throttle: `constructor`: " and the error's text: for the `const`
    /// constructors, which cannot format it with `panic!` (at compile time, in a `static`,
    /// this is the compile error). Under loom the constructors are not `const` and format the
    /// error themselves.
    #[cfg(not(loom))]
    pub(crate) const fn panic_in(&self, constructor: &str) -> ! {
        let message = Message::new()
            .str("atomic-throttle: ")
            .str(constructor)
            .str(": ");
        let message = self.describe(message);
        panic!("{}", message.as_str())
    }
}

impl fmt::Display for ThresholdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe(Message::new()).as_str())
    }
}

/// A short ASCII message built by `const` code, which cannot use `format!`.
struct Message {
    bytes: [u8; Message::CAPACITY],
    len: usize,
}

impl Message {
    /// Room for the longest message above (about 220 bytes); more is cut off, never a panic.
    const CAPACITY: usize = 320;

    const fn new() -> Self {
        Self {
            bytes: [0; Self::CAPACITY],
            len: 0,
        }
    }

    const fn byte(mut self, byte: u8) -> Self {
        if self.len < Self::CAPACITY {
            self.bytes[self.len] = byte;
            self.len += 1;
        }
        self
    }

    const fn str(mut self, text: &str) -> Self {
        let mut rest = text.as_bytes();
        while let [first, tail @ ..] = rest {
            self = self.byte(*first);
            rest = tail;
        }
        self
    }

    /// `value` in decimal, every digit.
    const fn u128(mut self, value: u128) -> Self {
        let mut digits = [0u8; 39]; // u128::MAX has 39 digits
        let (mut value, mut count) = (value, 0);
        loop {
            digits[count] = b'0' + (value % 10) as u8;
            count += 1;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        // Most significant first: the digits were found least significant first.
        let (mut rest, _) = digits.split_at(count);
        while let [head @ .., last] = rest {
            self = self.byte(*last);
            rest = head;
        }
        self
    }

    const fn as_str(&self) -> &str {
        let (text, _) = self.bytes.split_at(self.len);
        // Only ASCII is ever written, so the bytes are always UTF-8.
        match core::str::from_utf8(text) {
            Ok(text) => text,
            Err(_) => "",
        }
    }
}

impl std::error::Error for ThresholdError {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_message_longer_than_its_room_is_cut_off_not_a_panic() {
        let long = "x".repeat(Message::CAPACITY + 80);
        let message = Message::new().str(&long).u128(u128::MAX);
        assert_eq!(message.as_str(), &long[..Message::CAPACITY]);
    }

    #[test]
    fn numbers_are_written_with_every_digit() {
        let message = Message::new()
            .u128(0)
            .str(" ")
            .u128(1_000_907)
            .str(" ")
            .u128(u128::MAX);
        assert_eq!(message.as_str(), format!("0 1000907 {}", u128::MAX));
    }
}
