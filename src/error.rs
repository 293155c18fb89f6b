//! Errors.

use core::fmt;
use core::time::Duration;

/// A duration the throttle cannot represent: a threshold, a lease or a shutdown grace over
/// [`Throttle::MAX_THRESHOLD`](crate::Throttle::MAX_THRESHOLD), 2^62 ns (about 146 years). It
/// is refused, never truncated.
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
/// assert!(err.to_string().contains("largest representable threshold"));
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

const SECONDS_PER_YEAR: f64 = 365.25 * 24.0 * 3600.0;

impl fmt::Display for ThresholdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{what} {:?} ({:.0} years) exceeds the largest representable {what}, {:?} \
             ({:.0} years)",
            self.requested,
            self.requested.as_secs_f64() / SECONDS_PER_YEAR,
            self.max(),
            self.max().as_secs_f64() / SECONDS_PER_YEAR,
            what = self.what,
        )
    }
}

impl std::error::Error for ThresholdError {}
