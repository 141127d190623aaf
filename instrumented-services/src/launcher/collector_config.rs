//! The collector's configuration for the demo: what to scrape, which rules
//! to evaluate, which log lines to count.
//!
//! The launcher writes it as `<data-dir>/collector/sightline.yml` (a
//! `prometheus.yml` with Sightline's own `log_metrics` section) and the
//! shipped rule files beside it under `rules/`, then starts the collector
//! with `--config`. The file is plain text on purpose: it is the example a
//! user copies for their own services.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::service::ServiceRole;

/// The rule files shipped in `dashboards/rules/`, by file name.
const RULE_FILES: [(&str, &str); 2] = [
    (
        "shop.rules.yml",
        include_str!("../../../dashboards/rules/shop.rules.yml"),
    ),
    (
        "node.rules.yml",
        include_str!("../../../dashboards/rules/node.rules.yml"),
    ),
];

/// Where the demo's platform and services listen, as the config needs it.
#[derive(Debug, Clone)]
pub struct ScrapeTargets {
    /// The agent's `/metrics` (host and container metrics).
    pub agent: String,
    /// Each shop service and its address; empty with `--platform-only`.
    pub services: Vec<(ServiceRole, String)>,
    /// The UI's base address, for links in alert notifications.
    pub ui: String,
    /// Rule files beyond the shipped ones, absolute.
    pub extra_rule_files: Vec<PathBuf>,
    pub scrape_interval: Duration,
    pub evaluation_interval: Duration,
    /// Alertmanagers (`host:port`) the alerts go to.
    pub alertmanagers: Vec<String>,
}

/// Writes the config and the rule files under `dir`; returns the config's
/// path.
pub fn write(dir: &Path, targets: &ScrapeTargets) -> anyhow::Result<PathBuf> {
    let rules_dir = dir.join("rules");
    std::fs::create_dir_all(&rules_dir)
        .with_context(|| format!("failed to create {}", rules_dir.display()))?;
    for (name, text) in RULE_FILES {
        let path = rules_dir.join(name);
        std::fs::write(&path, text)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    let path = dir.join("sightline.yml");
    std::fs::write(&path, render(targets))
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(path)
}

/// The config file's text.
pub fn render(targets: &ScrapeTargets) -> String {
    let mut text = format!(
        "# Written by sightline-demo; a prometheus.yml plus Sightline's own sections.\n\
         global:\n  scrape_interval: {scrape}ms\n  evaluation_interval: {evaluation}ms\n\
         external_url: {ui}\n\
         rule_files:\n  - rules/*.yml\n{extra_rules}\
         scrape_configs:\n\
         \x20 - job_name: sightline-agent\n\
         \x20   static_configs:\n\
         \x20     - targets: [\"{agent}\"]\n",
        ui = targets.ui,
        agent = targets.agent,
        scrape = targets.scrape_interval.as_millis(),
        evaluation = targets.evaluation_interval.as_millis(),
        extra_rules = targets
            .extra_rule_files
            .iter()
            .map(|path| format!("  - {:?}\n", path.display().to_string()))
            .collect::<String>(),
    );
    if !targets.services.is_empty() {
        text.push_str("  - job_name: shop\n    static_configs:\n");
        for (role, address) in &targets.services {
            let _ = writeln!(
                text,
                "      - targets: [\"{address}\"]\n        labels: {{ service: {} }}",
                role.name()
            );
        }
    }
    if !targets.alertmanagers.is_empty() {
        let _ = writeln!(
            text,
            "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [{}]",
            targets
                .alertmanagers
                .iter()
                .map(|target| format!("{target:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    text.push_str(
        "log_metrics:\n\
         \x20 - name: failed_logins_total\n\
         \x20   help: Failed logins seen by the gateway, per client address.\n\
         \x20   query: 'body:\"login failed\"'\n\
         \x20   labels: [ip_address]\n",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_scrapes_every_service_with_its_name_and_loads_the_rules() {
        let targets = ScrapeTargets {
            agent: "127.0.0.1:2020".into(),
            services: vec![
                (ServiceRole::Gateway, "127.0.0.1:8000".into()),
                (ServiceRole::Payment, "127.0.0.1:8004".into()),
            ],
            ui: "http://127.0.0.1:7070".into(),
            extra_rule_files: vec![PathBuf::from("/tmp/my rules/fast.yml")],
            scrape_interval: Duration::from_secs(1),
            evaluation_interval: Duration::from_millis(500),
            alertmanagers: vec!["127.0.0.1:9093".into()],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &targets).unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        let config: serde_json::Value = serde_norway::from_str(&text).unwrap();
        let jobs = config["scrape_configs"].as_array().unwrap();
        assert_eq!(jobs[0]["static_configs"][0]["targets"][0], "127.0.0.1:2020");
        assert_eq!(jobs[1]["job_name"], "shop");
        assert_eq!(jobs[1]["static_configs"][1]["targets"][0], "127.0.0.1:8004");
        assert_eq!(jobs[1]["static_configs"][1]["labels"]["service"], "payment");
        assert_eq!(config["log_metrics"][0]["labels"][0], "ip_address");
        assert_eq!(config["rule_files"][0], "rules/*.yml");
        assert_eq!(config["rule_files"][1], "/tmp/my rules/fast.yml");
        assert_eq!(config["global"]["scrape_interval"], "1000ms");
        assert_eq!(config["global"]["evaluation_interval"], "500ms");
        assert_eq!(
            config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0],
            "127.0.0.1:9093"
        );
        assert!(dir.path().join("rules/shop.rules.yml").is_file());
        assert!(dir.path().join("rules/node.rules.yml").is_file());
    }
}
