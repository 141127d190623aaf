//! End-to-end tests: the real binaries on loopback, one test per module.

mod alertmanager;
mod browser;
mod cluster;
mod cluster_metrics;
mod cluster_queries;
mod durability;
mod engines;
mod fluent_forward;
mod kubernetes_agent;
mod kubernetes_sd;
mod loki_api;
mod otel_clients;
mod prometheus_diff;
mod request_flow;
mod rotation_storm;
mod secure;
mod shop;
mod walkthroughs;
