//! `sightline-demo burst <kind>`: on demand, the traffic the shipped alerts
//! watch for, sent to a running demo's gateway as a client would send it.
//!
//! - `failed-logins`: logins with a wrong password from one address
//!   (`X-Forwarded-For`, as behind a proxy): the gateway logs
//!   `login failed` with the address, the collector counts those lines in
//!   `failed_logins_total`, and `TooManyFailedLogins` fires past 10 a minute;
//! - `requests`: a flood from one address past the gateway's rate limit:
//!   `429`s, counted in `gateway_rate_limited_total`, and
//!   `RateLimitRejections` fires past 100 a minute.

use std::net::IpAddr;

use anyhow::Context as _;
use reqwest::StatusCode;

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BurstKind {
    /// Logins with a wrong password (`TooManyFailedLogins`).
    FailedLogins,
    /// Requests past the rate limit (`RateLimitRejections`).
    Requests,
}

/// `sightline-demo burst`.
#[derive(Debug, Clone, clap::Args)]
pub struct BurstArgs {
    /// What to send.
    #[arg(value_enum)]
    pub kind: BurstKind,
    /// How many requests [default: 15 failed logins, 300 requests].
    #[arg(long)]
    pub count: Option<usize>,
    /// The client address the gateway sees (sent as `X-Forwarded-For`).
    #[arg(long, default_value = "203.0.113.7")]
    pub from: IpAddr,
    /// The demo's gateway.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub gateway: String,
}

/// What a burst got back: requests per status.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BurstOutcome {
    pub sent: usize,
    pub refused_login: usize,
    pub rate_limited: usize,
}

/// Sends the burst; most requests at most 10 000.
pub async fn run(args: &BurstArgs) -> anyhow::Result<BurstOutcome> {
    let count = args
        .count
        .unwrap_or(match args.kind {
            BurstKind::FailedLogins => 15,
            BurstKind::Requests => 300,
        })
        .min(10_000);
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .context("failed to build the HTTP client")?;
    let gateway = args.gateway.trim_end_matches('/');
    let mut outcome = BurstOutcome::default();
    for attempt in 0..count {
        let request = match args.kind {
            BurstKind::FailedLogins => client.post(format!("{gateway}/api/login")).json(
                &serde_json::json!({ "user_id": "u1", "password": format!("guess-{attempt}") }),
            ),
            BurstKind::Requests => client.get(format!("{gateway}/api/products")),
        };
        let response = request
            .header("x-forwarded-for", args.from.to_string())
            .send()
            .await
            .with_context(|| format!("the gateway at {gateway} did not answer"))?;
        outcome.sent += 1;
        match response.status() {
            StatusCode::UNAUTHORIZED => outcome.refused_login += 1,
            StatusCode::TOO_MANY_REQUESTS => outcome.rate_limited += 1,
            _ => {}
        }
    }
    Ok(outcome)
}
