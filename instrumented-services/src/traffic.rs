//! The load generator: orders from random users at a steady rate, each with
//! a fresh `X-Request-ID`, so the UI has something to show.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng as _;
use rand::seq::IndexedRandom as _;
use serde_json::json;
use tokio::sync::{Semaphore, watch};

use crate::propagation::{REQUEST_ID_HEADER, generate_request_id};
use crate::service::catalog::PRODUCTS;

/// Requests in flight at most; ticks beyond it are skipped, not queued.
const MAX_IN_FLIGHT: usize = 32;

/// How often the traffic counters are logged.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// How many distinct demo users place orders.
const USERS: u32 = 25;

/// Counters of the requests sent so far.
#[derive(Debug, Default)]
pub struct TrafficStats {
    /// Requests answered with a 2xx.
    pub succeeded: AtomicU64,
    /// Requests answered otherwise, or not answered.
    pub failed: AtomicU64,
    /// Ticks skipped because too many requests were in flight.
    pub skipped: AtomicU64,
}

/// A random order body for `POST /api/orders`.
pub fn random_order() -> serde_json::Value {
    let mut rng = rand::rng();
    let product = PRODUCTS.choose(&mut rng).map_or("p1", |product| product.id);
    json!({
        "user_id": format!("u{}", rng.random_range(1..=USERS)),
        "product_id": product,
        "quantity": rng.random_range(1..=3),
    })
}

/// Sends `rate` orders per second to `<gateway_url>/api/orders` until `stop`
/// turns true. Returns the counters.
pub async fn run(
    gateway_url: &str,
    rate: f64,
    mut stop: watch::Receiver<bool>,
) -> Arc<TrafficStats> {
    let stats = Arc::new(TrafficStats::default());
    if !(rate.is_finite() && rate > 0.0) {
        return stats;
    }
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "failed to build the traffic HTTP client");
            return stats;
        }
    };
    let url = format!("{}/api/orders", gateway_url.trim_end_matches('/'));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = tokio::time::interval(REPORT_EVERY);
    report.tick().await;
    tracing::info!(%url, rate, "traffic started");

    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = report.tick() => tracing::info!(
                succeeded = stats.succeeded.load(Ordering::Relaxed),
                failed = stats.failed.load(Ordering::Relaxed),
                skipped = stats.skipped.load(Ordering::Relaxed),
                "traffic so far"
            ),
            _ = ticks.tick() => {
                let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
                    stats.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let request = client
                    .post(&url)
                    .header(REQUEST_ID_HEADER, generate_request_id())
                    .json(&random_order());
                let stats = Arc::clone(&stats);
                tokio::spawn(async move {
                    let _permit = permit;
                    record_outcome(&stats, request.send().await);
                });
            }
        }
    }
    stats
}

fn record_outcome(stats: &TrafficStats, outcome: reqwest::Result<reqwest::Response>) {
    match outcome {
        Ok(response) if response.status().is_success() => {
            stats.succeeded.fetch_add(1, Ordering::Relaxed);
        }
        Ok(response) => {
            let failed_before = stats.failed.fetch_add(1, Ordering::Relaxed);
            if failed_before == 0 {
                tracing::warn!(
                    status = response.status().as_u16(),
                    "first failed demo order"
                );
            }
        }
        Err(error) => {
            let failed_before = stats.failed.fetch_add(1, Ordering::Relaxed);
            if failed_before == 0 {
                tracing::warn!(%error, "first failed demo order");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::catalog;

    #[test]
    fn random_orders_use_known_products_and_users() {
        for _ in 0..50 {
            let order = random_order();
            assert!(catalog::find(order["product_id"].as_str().unwrap()).is_some());
            let user = order["user_id"].as_str().unwrap();
            let number: u32 = user.strip_prefix('u').unwrap().parse().unwrap();
            assert!((1..=USERS).contains(&number));
            assert!((1..=3).contains(&order["quantity"].as_u64().unwrap()));
        }
    }

    #[tokio::test]
    async fn zero_rate_sends_nothing() {
        let (_stop, stopped) = watch::channel(false);
        let stats = run("http://127.0.0.1:9", 0.0, stopped).await;
        assert_eq!(stats.succeeded.load(Ordering::Relaxed), 0);
        assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
    }
}
