//! The vocabulary every Sightline crate shares, so that two crates never
//! disagree on what a word means.
//!
//! - [`severity`]: level words and numbers to OTLP `SeverityNumber`, one
//!   table decided from the OTLP log data model.
//! - [`names`]: Prometheus metric and label name rules, the request id's
//!   field names.
//! - [`exposition`]: the Prometheus text format, written.
//! - [`clock`]: the wall clock in the units records and samples carry.
//! - [`secret`]: a string that never prints.
//! - [`fs`]: directory sizes.
//!
//! This crate has no dependencies (serde only with the `serde` feature, for
//! [`secret::Secret`] in config files) and no I/O beyond reading a
//! directory's size: the agent links it, so it must never pull in tantivy,
//! the stores or a network stack.

pub mod clock;
pub mod exposition;
pub mod fs;
pub mod names;
pub mod secret;
pub mod severity;
