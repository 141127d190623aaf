//! The vocabulary every Sightline crate shares, so that two crates never
//! disagree on what a word means.
//!
//! This crate has no dependencies and no I/O beyond reading a directory's
//! size: the agent links it, so it must never pull in tantivy, the stores or
//! a network stack.

pub mod clock;
pub mod exposition;
pub mod fs;
pub mod names;
pub mod severity;
