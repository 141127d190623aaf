//! The wall clock, read in the units the data model uses.
//!
//! Every "now" in Sightline that ends up in a record, a sample or an
//! evaluation time comes from here, so a test or a reader has one place to
//! look. A clock before 1970 reads as 0 rather than panicking.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (OTLP's `time_unix_nano`).
pub fn now_nanos() -> i64 {
    nanos_at(SystemTime::now())
}

/// Nanoseconds since the Unix epoch, unsigned, as OTLP's `fixed64` fields
/// carry them (the agent's records).
pub fn now_nanos_u64() -> u64 {
    now_nanos().unsigned_abs()
}

/// Milliseconds since the Unix epoch (Prometheus sample timestamps).
pub fn now_ms() -> i64 {
    now_nanos() / 1_000_000
}

/// `time` as nanoseconds since the Unix epoch; 0 before it, saturating far after it.
pub fn nanos_at(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |elapsed| {
        i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX)
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[test]
    fn reads_the_epoch_in_nanos_and_millis() {
        assert_eq!(
            super::nanos_at(UNIX_EPOCH + Duration::from_millis(1_500)),
            1_500_000_000
        );
        assert_eq!(super::nanos_at(UNIX_EPOCH - Duration::from_secs(1)), 0);
        let before = super::nanos_at(SystemTime::now());
        assert!(super::now_ms() >= before / 1_000_000);
        assert!(super::now_nanos_u64() >= before.unsigned_abs());
    }
}
