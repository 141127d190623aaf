//! The load generator: user journeys at a steady rate, so the UI has
//! something to show.
//!
//! One journey is what a shopper does: log in (`POST /api/login`), browse
//! (`GET /api/products`), order (`POST /api/orders` with the session
//! token, which charges the card), and look at the order
//! (`GET /api/orders/{id}`). Every request has a fresh `X-Request-ID`.
//! A realistic share goes wrong on the client's side: a mistyped password
//! (about 3% of logins), a product that no longer exists (about 2% of
//! orders), an unusually large order that may hit a stock-out; the shop adds
//! its own failures (payment declines, injected faults).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng as _;
use rand::seq::IndexedRandom as _;
use serde_json::json;
use tokio::sync::{Semaphore, watch};

use crate::propagation::{REQUEST_ID_HEADER, generate_request_id};
use crate::service::catalog::PRODUCTS;

/// Journeys in flight at most; ticks beyond it are skipped, not queued.
const MAX_IN_FLIGHT: usize = 32;

/// How often the traffic counters are logged.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// How many distinct demo users shop.
const USERS: u32 = 25;

/// The password every demo user has (see the auth service).
const PASSWORD: &str = "demo";

/// Counters of the journeys run so far.
#[derive(Debug, Default)]
pub struct TrafficStats {
    /// Journeys that ended with an order confirmed and shown.
    pub succeeded: AtomicU64,
    /// Journeys that failed somewhere (a request answered otherwise, or
    /// not answered).
    pub failed: AtomicU64,
    /// Ticks skipped because too many journeys were in flight.
    pub skipped: AtomicU64,
}

/// A random order body for `POST /api/orders` (without the user: the
/// session says who orders).
pub fn random_order() -> serde_json::Value {
    let mut rng = rand::rng();
    let product = if rng.random_bool(0.02) {
        "p-discontinued"
    } else {
        PRODUCTS.choose(&mut rng).map_or("p1", |product| product.id)
    };
    let quantity = if rng.random_bool(0.03) {
        rng.random_range(20..=60)
    } else {
        rng.random_range(1..=3)
    };
    json!({ "product_id": product, "quantity": quantity })
}

/// A random demo user id, `u1` to `u25`.
pub fn random_user() -> String {
    format!("u{}", rand::rng().random_range(1..=USERS))
}

/// Runs `rate` journeys per second against `gateway_url` until `stop` turns
/// true. Returns the counters.
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
    let gateway = Arc::new(gateway_url.trim_end_matches('/').to_owned());
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = tokio::time::interval(REPORT_EVERY);
    report.tick().await;
    tracing::info!(gateway = %gateway, rate, "traffic started");

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
                let stats = Arc::clone(&stats);
                let client = client.clone();
                let gateway = Arc::clone(&gateway);
                tokio::spawn(async move {
                    let _permit = permit;
                    record_outcome(&stats, journey(&client, &gateway).await);
                });
            }
        }
    }
    stats
}

/// Where a journey stopped.
#[derive(Debug)]
struct JourneyFailure {
    step: &'static str,
    detail: String,
}

fn step_failed(step: &'static str, detail: impl ToString) -> JourneyFailure {
    JourneyFailure {
        step,
        detail: detail.to_string(),
    }
}

/// One shopper: login, browse, order, look at the order.
async fn journey(client: &reqwest::Client, gateway: &str) -> Result<(), JourneyFailure> {
    let user_id = random_user();
    let password = if rand::rng().random_bool(0.03) {
        "demo-typo"
    } else {
        PASSWORD
    };
    // Each user comes from their own address, as seen through a proxy.
    let address = format!("10.0.0.{}", user_id.trim_start_matches('u'));
    let send = |request: reqwest::RequestBuilder| {
        request
            .header(REQUEST_ID_HEADER, generate_request_id())
            .header("x-forwarded-for", address.as_str())
            .send()
    };

    let login = send(
        client
            .post(format!("{gateway}/api/login"))
            .json(&json!({ "user_id": user_id, "password": password })),
    )
    .await
    .map_err(|error| step_failed("login", error))?;
    if !login.status().is_success() {
        return Err(step_failed("login", login.status()));
    }
    let session: serde_json::Value = login
        .json()
        .await
        .map_err(|error| step_failed("login", error))?;
    let token = session["token"].as_str().unwrap_or_default().to_owned();

    let products = send(client.get(format!("{gateway}/api/products")))
        .await
        .map_err(|error| step_failed("browse", error))?;
    if !products.status().is_success() {
        return Err(step_failed("browse", products.status()));
    }

    let order = send(
        client
            .post(format!("{gateway}/api/orders"))
            .bearer_auth(&token)
            .json(&random_order()),
    )
    .await
    .map_err(|error| step_failed("order", error))?;
    if !order.status().is_success() {
        return Err(step_failed("order", order.status()));
    }
    let order: serde_json::Value = order
        .json()
        .await
        .map_err(|error| step_failed("order", error))?;
    let order_id = order["order_id"].as_str().unwrap_or_default();

    let shown = send(
        client
            .get(format!("{gateway}/api/orders/{order_id}"))
            .bearer_auth(&token),
    )
    .await
    .map_err(|error| step_failed("view", error))?;
    if !shown.status().is_success() {
        return Err(step_failed("view", shown.status()));
    }
    Ok(())
}

fn record_outcome(stats: &TrafficStats, outcome: Result<(), JourneyFailure>) {
    match outcome {
        Ok(()) => {
            stats.succeeded.fetch_add(1, Ordering::Relaxed);
        }
        Err(failure) => {
            let failed_before = stats.failed.fetch_add(1, Ordering::Relaxed);
            if failed_before == 0 {
                tracing::warn!(step = failure.step, detail = %failure.detail, "first failed journey");
            } else {
                tracing::debug!(step = failure.step, detail = %failure.detail, "journey failed");
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
        let orders: Vec<_> = (0..2000).map(|_| random_order()).collect();
        let known = orders
            .iter()
            .filter(|order| catalog::find(order["product_id"].as_str().unwrap()).is_some())
            .count();
        assert!((1900..2000).contains(&known), "about 2% unknown: {known}");
        assert!(
            orders
                .iter()
                .all(|order| (1..=60).contains(&order["quantity"].as_u64().unwrap()))
        );
        for _ in 0..50 {
            let user = random_user();
            let number: u32 = user.strip_prefix('u').unwrap().parse().unwrap();
            assert!((1..=USERS).contains(&number));
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
