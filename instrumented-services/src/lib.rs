//! The Sightline demo: an instrumented e-commerce system and the launcher
//! that runs the whole stack with one command.
//!
//! # Brief overview
//!
//! Two binaries, one library:
//!
//! - `shop-service --service <role>` runs one service of the shop: gateway,
//!   auth, order, inventory, payment or notification. The role
//!   ([`service::ServiceRole`]) picks the routes; everything else (HTTP
//!   server, request ids, trace propagation, telemetry, `/metrics`,
//!   injected faults, health, graceful shutdown) is shared, so adding a
//!   service is one module and one enum variant.
//! - `sightline-demo` ([`launcher`]) is the product's front door: it starts
//!   the collector, the agent and the six shop services as child processes
//!   on loopback, plays the container runtime for the services (their
//!   stdout/stderr become kubelet-style CRI log files, see [`cri`]; a
//!   crashed service is restarted into `1.log`), drives user journeys
//!   ([`traffic`]) and shuts everything down on Ctrl-C.
//!
//! The instrumentation lives in [`telemetry`] (OTLP trace export and the JSON
//! log lines, see [`json_log`]) and [`propagation`] (`X-Request-ID` and W3C
//! `traceparent` across HTTP hops). Metrics are Prometheus text
//! ([`service::metrics`], written with `sightline_vocab`'s exposition
//! writer); faults are [`service::faults`].
//!
//! # What this crate must never do
//!
//! - call into the collector or the agent: the demo talks to the stack only
//!   through its processes, OTLP and log files, like a user's services would.
//!   Its manifest names their packages only so that `cargo run -p
//!   sightline-demo` compiles their libraries with the features the
//!   launcher's own `cargo build` of their binaries uses (one compile, see
//!   [`launcher`]); no code here uses them;
//! - crash a service because the collector is down: exporting is best effort.

pub mod cri;
pub mod json_log;
pub mod kube_api;
pub mod launcher;
pub mod propagation;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod traffic;

/// Formats `time` as RFC 3339 in UTC with nanoseconds, for example
/// `2026-11-21T05:48:48.123456789Z`: the timestamp format of CRI log lines
/// and of our JSON log lines.
pub fn format_rfc3339_nanos(time: time::OffsetDateTime) -> String {
    let utc = time.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second(),
        utc.nanosecond()
    )
}

/// Random lowercase hex, `len` characters.
pub(crate) fn random_hex(len: usize) -> String {
    use rand::Rng;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(HEX[rng.random_range(0..16)]))
        .collect()
}

/// A random UUID-like identifier (`8-4-4-4-12` lowercase hex), used for
/// request ids and pod uids.
pub fn random_uuid_like() -> String {
    let hex = random_hex(32);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_nanos_keeps_nine_digits_and_utc() {
        let time = time::macros::datetime!(2026-11-21 07:48:48.000123 +02:00);
        assert_eq!(format_rfc3339_nanos(time), "2026-11-21T05:48:48.000123000Z");
    }

    #[test]
    fn uuid_like_has_the_uuid_shape() {
        let id = random_uuid_like();
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert_ne!(id, random_uuid_like());
    }
}
