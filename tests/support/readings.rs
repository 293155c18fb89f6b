//! Clock readings a work records, one per run, and the gaps between them.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Clock readings the work takes when it starts (or its stamps), one per run.
#[derive(Clone, Default)]
pub struct Readings(Arc<Mutex<Vec<u64>>>);

impl Readings {
    pub fn push(&self, reading: u64) {
        self.0.lock().unwrap().push(reading);
    }
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    pub fn sorted(&self) -> Vec<u64> {
        let mut readings = self.0.lock().unwrap().clone();
        readings.sort_unstable();
        readings
    }
    /// The smallest gap between two readings, and how many pairs are closer than `threshold`.
    pub fn closest(&self, threshold: Duration) -> (u64, usize) {
        let readings = self.sorted();
        let gaps = readings.windows(2).map(|pair| pair[1] - pair[0]);
        let close = gaps
            .clone()
            .filter(|gap| *gap < threshold.as_nanos() as u64)
            .count();
        (gaps.min().unwrap_or(u64::MAX), close)
    }
    pub fn assert_spaced(&self, threshold: Duration) {
        let (closest, close) = self.closest(threshold);
        assert_eq!(
            close, 0,
            "{close} pairs of runs closer than {threshold:?}; the closest {closest} ns apart"
        );
    }
}
