//! What the unit tests share.

use core::time::Duration;

/// Whether `done` came true within 10 s (looked at every millisecond): the bound of the unit
/// tests that wait for another thread, which they leave, rather than join, if it runs out.
pub(crate) fn within(done: impl Fn() -> bool) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}
