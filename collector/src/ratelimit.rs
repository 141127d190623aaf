//! Per-client ingest rate limit: a token bucket of bytes per client address.
//!
//! A request is admitted while its client's bucket is not in debt and then
//! pays its full size, so one large request always gets through and the
//! client waits afterwards; the refusal says how long (`Retry-After` on
//! HTTP, the message of `RESOURCE_EXHAUSTED` on gRPC, see
//! [`crate::error`]). Off unless `--ingest-rate-limit-bytes` is set.
//! Buckets are kept for at most [`MAX_CLIENTS`] addresses; past that, full
//! buckets (idle clients) are forgotten first.
//!
//! Every ingest path charges the same buckets through [`admit`]: the OTLP
//! services (gRPC and HTTP, all three signals), `_bulk` and remote-write.
//! gRPC charges a request's decoded size, HTTP its `Content-Length`
//! (before the body is read; a body without one is charged nothing).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::{CollectorMetrics, Limit};

/// Most client addresses tracked at once.
pub const MAX_CLIENTS: usize = 100_000;

/// Why a request was refused: the limit and how long to wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "ingest rate limit of {bytes_per_second} bytes/s exceeded for client {client}; retry after {} s",
    retry_after.as_secs()
)]
pub struct RateLimited {
    pub client: IpAddr,
    pub bytes_per_second: u64,
    /// Whole seconds, at least one.
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// The buckets of every client, shared by all receivers.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_second: u64,
    burst_bytes: u64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    metrics: Arc<CollectorMetrics>,
}

impl RateLimiter {
    /// `None` when `bytes_per_second` is 0 (no limit).
    pub fn new(
        bytes_per_second: u64,
        burst_bytes: u64,
        metrics: Arc<CollectorMetrics>,
    ) -> Option<Arc<RateLimiter>> {
        (bytes_per_second > 0).then(|| {
            Arc::new(RateLimiter {
                bytes_per_second,
                burst_bytes: burst_bytes.max(1),
                buckets: Mutex::new(HashMap::new()),
                metrics,
            })
        })
    }

    /// Admits a request of `bytes` from `client`, or says how long to wait.
    pub fn charge(&self, client: IpAddr, bytes: usize) -> Result<(), RateLimited> {
        self.charge_at(client, bytes, Instant::now())
    }

    fn charge_at(&self, client: IpAddr, bytes: usize, now: Instant) -> Result<(), RateLimited> {
        let rate = self.bytes_per_second as f64;
        let burst = self.burst_bytes as f64;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&client) {
            buckets.retain(|_, bucket| {
                let idle = now.saturating_duration_since(bucket.refilled).as_secs_f64();
                bucket.tokens + idle * rate < burst
            });
            if buckets.len() >= MAX_CLIENTS {
                // Every tracked client is in debt: forget one to stay bounded.
                if let Some(any) = buckets.keys().next().copied() {
                    buckets.remove(&any);
                }
            }
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: burst,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.refilled = now;
        if bucket.tokens < 0.0 {
            self.metrics.limited(Limit::IngestRate);
            let seconds = (-bucket.tokens / rate).ceil().max(1.0);
            return Err(RateLimited {
                client,
                bytes_per_second: self.bytes_per_second,
                retry_after: Duration::from_secs(seconds as u64),
            });
        }
        bucket.tokens -= bytes as f64;
        Ok(())
    }
}

/// Charges a request of `bytes` from `client` to its rate when there is a
/// limit; a request whose client is unknown is not charged. Every ingest
/// path calls this ([`crate::service::OtlpService::admit`], `_bulk`,
/// remote-write) before it reads or decodes the request.
pub fn admit(
    limiter: Option<&RateLimiter>,
    client: Option<IpAddr>,
    bytes: usize,
) -> Result<(), RateLimited> {
    match (limiter, client) {
        (Some(limiter), Some(client)) => limiter.charge(client, bytes),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_client_over_its_rate_waits_while_others_pass() {
        let limiter = RateLimiter::new(1000, 2000, Arc::default()).unwrap();
        let (greedy, other) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let start = Instant::now();
        // One large request passes and puts the bucket 3000 bytes in debt.
        assert_eq!(limiter.charge_at(greedy, 5000, start), Ok(()));
        let refused = limiter.charge_at(greedy, 10, start).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(3));
        assert_eq!(
            refused.to_string(),
            "ingest rate limit of 1000 bytes/s exceeded for client 10.0.0.1; retry after 3 s"
        );
        assert_eq!(limiter.charge_at(other, 10, start), Ok(()));
        // Paid off after the announced wait.
        let later = start + Duration::from_secs(3);
        assert_eq!(limiter.charge_at(greedy, 10, later), Ok(()));
    }

    #[test]
    fn idle_clients_are_forgotten_to_stay_bounded() {
        let limiter = RateLimiter::new(1000, 1000, Arc::default()).unwrap();
        let start = Instant::now();
        for index in 0..MAX_CLIENTS as u32 {
            let client = IpAddr::V4(Ipv4Addr::from(index));
            limiter.charge_at(client, 1, start).unwrap();
        }
        let later = start + Duration::from_secs(1);
        limiter
            .charge_at("192.0.2.1".parse().unwrap(), 1, later)
            .unwrap();
        assert!(limiter.buckets.lock().unwrap().len() <= 2);
    }
}
