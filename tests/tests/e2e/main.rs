//! End-to-end tests: the real binaries on loopback, one test per module.

mod alertmanager;
mod browser;
mod durability;
mod otel_clients;
mod request_flow;
mod shop;
