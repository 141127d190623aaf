//! Sightline's metrics pipeline: everything around the time-series engine
//! (`sightline-tsdb`) that turns the outside world into samples and samples
//! into notifications.
//!
//! - [`scrape`]: Prometheus scraping: jobs and targets from
//!   `scrape_configs` (static and file discovery), [`scrape::relabel`],
//!   the exposition parsers, `up` and the `scrape_*` series, staleness;
//! - [`remote_write`]: the Prometheus remote-write 1.0 receiver;
//! - [`otlp`]: OTLP metrics translated to Prometheus series (the OTLP
//!   services that receive them are the collector's);
//! - [`log_metrics`] and [`span_metrics`]: metrics derived from acknowledged
//!   log records and spans;
//! - [`search_alerts`]: alerts made from saved searches (a counter, its
//!   history from the stored records, a rule), applied at run time;
//! - [`alerting`]: the rule groups' runtime (evaluation loop, `for`,
//!   `keep_firing_for`) and the Alertmanager notifier;
//! - [`silences`]: Alertmanager's silence endpoints passed through for the
//!   UI's Alerts view;
//! - [`config_file`]: the `prometheus.yml`-shaped configuration file;
//! - [`share`]: which rule groups and scrape targets this collector works
//!   on (all, or in cluster mode its share);
//! - [`pipeline`]: all of the above as one part of the collector,
//!   [`MetricsPipeline`], built from the config file and the store.
//!
//! This crate never writes a file itself (samples go to the
//! [`MetricStore`](sightline_tsdb::MetricStore)) and never serves the
//! collector's ports: it hands routers and tasks to the collector, which
//! decides where they run.

pub mod alerting;
pub mod config_file;
pub mod log_metrics;
pub mod otlp;
pub mod pipeline;
pub mod remote_write;
pub mod scrape;
pub mod search_alerts;
pub mod share;
pub mod silences;
pub mod span_metrics;

pub use pipeline::{MetricsConfig, MetricsPipeline, Observers, QueryListener};

#[cfg(any(test, feature = "testing"))]
pub mod testing;
