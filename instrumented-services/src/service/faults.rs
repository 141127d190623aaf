//! Faults on demand: added latency (with a probability), an error rate, and
//! "down", per service, changeable at runtime.
//!
//! - At start: `--faults` / `SHOP_FAULTS` with the spec syntax of
//!   [`FaultConfig::parse_spec`], e.g. `latency=800ms@0.3,errors=0.1`; the
//!   launcher's `--fault payment:latency=800ms@0.3,errors=0.1` passes it on.
//! - At runtime: `GET /admin/faults` answers the current [`FaultConfig`] as
//!   JSON, `POST /admin/faults` replaces it (`{}` clears every fault),
//!   `DELETE /admin/faults` clears it.
//!
//! Faults apply to the service's traced routes (inside the request span, so
//! a faulted request is visible in its trace and logs), never to health,
//! metrics or admin endpoints.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AppState;

/// The faults of one service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Latency added to affected requests, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Share of requests (0 to 1) that get the added latency; 1 when a
    /// latency is given without one.
    #[serde(default = "default_probability")]
    pub latency_probability: f64,
    /// Share of requests (0 to 1) answered with `500 injected fault`.
    #[serde(default)]
    pub error_rate: f64,
    /// Every request is answered with `503` and the readiness probe fails.
    #[serde(default)]
    pub down: bool,
}

fn default_probability() -> f64 {
    1.0
}

/// What a fault did to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOutcome {
    /// Pass the request on (after the added latency, if any).
    Proceed,
    /// Answer `500`.
    Error,
    /// Answer `503`.
    Down,
}

impl FaultConfig {
    /// Parses `latency=800ms@0.3,errors=0.1,down` (any subset, any order;
    /// `latency=<duration>[@<probability>]`, `errors=<rate>`, `down`; an
    /// empty spec or `none` means no fault).
    pub fn parse_spec(spec: &str) -> Result<Self, String> {
        let mut config = Self {
            latency_probability: 1.0,
            ..Self::default()
        };
        for part in spec
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            match (key, value) {
                ("none", "") => {}
                ("down", "" | "true") => config.down = true,
                ("down", "false") => config.down = false,
                ("latency", value) => {
                    let (duration, probability) = value.split_once('@').unwrap_or((value, "1"));
                    let duration = humantime_ms(duration)
                        .ok_or_else(|| format!("invalid latency {duration:?} (try 800ms or 2s)"))?;
                    config.latency_ms = duration;
                    config.latency_probability = parse_share(probability, "latency probability")?;
                }
                ("errors", value) => config.error_rate = parse_share(value, "error rate")?,
                _ => {
                    return Err(format!(
                        "unknown fault {part:?}: expected latency=<duration>[@<probability>], \
                         errors=<rate> or down"
                    ));
                }
            }
        }
        Ok(config)
    }

    /// Checks the shares are between 0 and 1.
    pub fn validate(&self) -> Result<(), String> {
        for (name, share) in [
            ("latency_probability", self.latency_probability),
            ("error_rate", self.error_rate),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("{name} must be between 0 and 1, got {share}"));
            }
        }
        Ok(())
    }

    /// Whether any fault is active.
    pub fn is_active(&self) -> bool {
        self.down
            || self.error_rate > 0.0
            || (self.latency_ms > 0 && self.latency_probability > 0.0)
    }

    /// Draws the fate of one request: the latency to add and the outcome.
    pub fn draw(&self) -> (Duration, FaultOutcome) {
        if self.down {
            return (Duration::ZERO, FaultOutcome::Down);
        }
        let mut rng = rand::rng();
        let latency = if self.latency_ms > 0 && rng.random_bool(self.latency_probability) {
            Duration::from_millis(self.latency_ms)
        } else {
            Duration::ZERO
        };
        let outcome = if rng.random_bool(self.error_rate) {
            FaultOutcome::Error
        } else {
            FaultOutcome::Proceed
        };
        (latency, outcome)
    }
}

fn humantime_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((text, "ms"), |at| text.split_at(at));
    let number: f64 = number.parse().ok()?;
    let millis = match unit {
        "ms" => number,
        "s" => number * 1000.0,
        _ => return None,
    };
    (0.0..=600_000.0)
        .contains(&millis)
        .then_some(millis.round() as u64)
}

fn parse_share(text: &str, what: &str) -> Result<f64, String> {
    let share: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("invalid {what} {text:?}: expected a number between 0 and 1"))?;
    if (0.0..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err(format!("{what} must be between 0 and 1, got {share}"))
    }
}

/// The faults of a running service, shared by its handlers.
#[derive(Debug, Default)]
pub struct Faults {
    current: RwLock<FaultConfig>,
}

impl Faults {
    /// Faults starting as `config`.
    pub fn new(config: FaultConfig) -> Self {
        Self {
            current: RwLock::new(config),
        }
    }

    /// The current faults.
    pub fn get(&self) -> FaultConfig {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the faults.
    pub fn set(&self, config: FaultConfig) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
    }
}

/// `GET /admin/faults`.
pub(super) async fn get_faults(State(state): State<Arc<AppState>>) -> Json<FaultConfig> {
    Json(state.faults.get())
}

/// `POST /admin/faults`: replaces the faults with the body.
pub(super) async fn set_faults(
    State(state): State<Arc<AppState>>,
    body: Result<Json<FaultConfig>, JsonRejection>,
) -> Response {
    let config = match body {
        Ok(Json(config)) => config,
        Err(rejection) => {
            let body = json!({ "error": rejection.body_text() });
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    };
    if let Err(message) = config.validate() {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response();
    }
    tracing::warn!(
        latency_ms = config.latency_ms,
        latency_probability = config.latency_probability,
        error_rate = config.error_rate,
        down = config.down,
        "faults changed"
    );
    state.faults.set(config.clone());
    Json(config).into_response()
}

/// `DELETE /admin/faults`: clears every fault.
pub(super) async fn clear_faults(State(state): State<Arc<AppState>>) -> Json<FaultConfig> {
    let config = FaultConfig::parse_spec("").unwrap_or_default();
    tracing::warn!("faults cleared");
    state.faults.set(config.clone());
    Json(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_into_configs() {
        let cases: &[(&str, FaultConfig)] = &[
            (
                "",
                FaultConfig {
                    latency_probability: 1.0,
                    ..FaultConfig::default()
                },
            ),
            (
                "latency=800ms@0.3,errors=0.1",
                FaultConfig {
                    latency_ms: 800,
                    latency_probability: 0.3,
                    error_rate: 0.1,
                    down: false,
                },
            ),
            (
                "latency=2s",
                FaultConfig {
                    latency_ms: 2000,
                    latency_probability: 1.0,
                    ..FaultConfig::default()
                },
            ),
            (
                "down",
                FaultConfig {
                    latency_probability: 1.0,
                    down: true,
                    ..FaultConfig::default()
                },
            ),
            (
                " errors=1 , down=false ",
                FaultConfig {
                    latency_probability: 1.0,
                    error_rate: 1.0,
                    ..FaultConfig::default()
                },
            ),
        ];
        for (spec, expected) in cases {
            assert_eq!(
                &FaultConfig::parse_spec(spec).unwrap(),
                expected,
                "{spec:?}"
            );
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, message) in [
            ("errors=2", "error rate must be between 0 and 1"),
            ("latency=fast", "invalid latency"),
            ("latency=10ms@x", "invalid latency probability"),
            ("explode", "unknown fault"),
        ] {
            let error = FaultConfig::parse_spec(spec).unwrap_err();
            assert!(error.contains(message), "{spec}: {error}");
        }
    }

    #[test]
    fn draws_follow_the_configured_rates() {
        let config = FaultConfig::parse_spec("errors=0.3,latency=5ms@0.5").unwrap();
        let draws: Vec<_> = (0..10_000).map(|_| config.draw()).collect();
        let errors = draws
            .iter()
            .filter(|(_, o)| *o == FaultOutcome::Error)
            .count();
        let slow = draws
            .iter()
            .filter(|(latency, _)| !latency.is_zero())
            .count();
        assert!((2_500..3_500).contains(&errors), "{errors}");
        assert!((4_500..5_500).contains(&slow), "{slow}");
        let down = FaultConfig::parse_spec("down").unwrap().draw();
        assert_eq!(down, (Duration::ZERO, FaultOutcome::Down));
        assert!(!FaultConfig::parse_spec("").unwrap().is_active());
    }

    #[test]
    fn json_configs_are_strict_and_default_missing_fields() {
        let config: FaultConfig = serde_json::from_str(r#"{"error_rate":0.5}"#).unwrap();
        assert_eq!(config.error_rate, 0.5);
        assert_eq!(config.latency_probability, 1.0);
        assert!(serde_json::from_str::<FaultConfig>(r#"{"eror_rate":0.5}"#).is_err());
        let bad = FaultConfig {
            error_rate: 1.5,
            ..config
        };
        assert!(bad.validate().is_err());
    }
}
