//! The configuration's globs and regexes, compiled, each error naming its
//! key. The runtime parts are built from these ([`crate::rules`], the
//! redactor, the host collector), and [`Config::validate`] checks the
//! configuration by compiling them alone, without building those parts.

use glob::Pattern;
use regex::{Regex, RegexSet};

use super::{Config, ContainerRule, HostMetricsConfig, MultilineMode, ParserKind, RedactConfig};
use crate::config::invalid;
use crate::error::Result;

/// The globs and regexes of the reloadable rules, compiled, in the order
/// they are checked (so the first bad key is the one reported).
#[derive(Debug)]
pub(crate) struct RulePatterns {
    /// `filters.drop_patterns`, `None` when there are none.
    pub(crate) drop: Option<RegexSet>,
    /// Per `[[containers]]` rule, in order.
    pub(crate) containers: Vec<ContainerPatterns>,
    /// `exclude_paths`.
    pub(crate) exclude_paths: Vec<Pattern>,
    /// `filters.exclude_namespaces`.
    pub(crate) exclude_namespaces: Vec<Pattern>,
    /// `filters.exclude_containers`.
    pub(crate) exclude_containers: Vec<Pattern>,
}

/// One container rule's globs and regexes, compiled; an empty glob matches
/// anything and is `None`.
#[derive(Debug)]
pub(crate) struct ContainerPatterns {
    pub(crate) namespace: Option<Pattern>,
    pub(crate) pod: Option<Pattern>,
    pub(crate) container: Option<Pattern>,
    pub(crate) path: Option<Pattern>,
    /// The rule's `regex`: present exactly when `parser = "regex"`.
    pub(crate) parser_regex: Option<Regex>,
    /// `multiline_start`, which `multiline = "start"` requires.
    pub(crate) multiline_start: Option<Regex>,
}

/// The host collector's exclusion regexes, compiled.
#[derive(Debug)]
pub(crate) struct HostExclusions {
    /// `host_metrics.filesystem_types_exclude`.
    pub(crate) filesystem_types: Regex,
    /// `host_metrics.mount_points_exclude`.
    pub(crate) mount_points: Regex,
    /// `host_metrics.disk_devices_exclude`.
    pub(crate) disk_devices: Regex,
}

impl Config {
    /// The rules' globs and regexes, compiled; the error names the bad key.
    pub(crate) fn rule_patterns(&self) -> Result<RulePatterns> {
        let drop =
            if self.filters.drop_patterns.is_empty() {
                None
            } else {
                Some(RegexSet::new(&self.filters.drop_patterns).map_err(|error| {
                    invalid("filters.drop_patterns", format!("bad regex: {error}"))
                })?)
            };
        let containers = self
            .containers
            .iter()
            .map(ContainerRule::patterns)
            .collect::<Result<Vec<_>>>()?;
        Ok(RulePatterns {
            drop,
            containers,
            exclude_paths: globs("exclude_paths", &self.exclude_paths)?,
            exclude_namespaces: globs(
                "filters.exclude_namespaces",
                &self.filters.exclude_namespaces,
            )?,
            exclude_containers: globs(
                "filters.exclude_containers",
                &self.filters.exclude_containers,
            )?,
        })
    }
}

impl ContainerRule {
    /// The rule's globs and regexes, compiled; a regex parser or multiline
    /// mode without its regex is an error naming the missing key.
    pub(crate) fn patterns(&self) -> Result<ContainerPatterns> {
        let parser_regex = match self.parser {
            ParserKind::Regex if self.regex.is_empty() => {
                return Err(invalid(
                    "containers.regex",
                    "parser = \"regex\" needs a regex".to_owned(),
                ));
            }
            ParserKind::Regex => Some(regex("containers.regex", &self.regex)?),
            ParserKind::Auto
            | ParserKind::Json
            | ParserKind::Logfmt
            | ParserKind::Text
            | ParserKind::None => None,
        };
        let multiline_start = if self.multiline_start.is_empty() {
            if self.multiline == Some(MultilineMode::Start) {
                return Err(invalid(
                    "containers.multiline_start",
                    "multiline = \"start\" needs multiline_start".to_owned(),
                ));
            }
            None
        } else {
            Some(regex("containers.multiline_start", &self.multiline_start)?)
        };
        Ok(ContainerPatterns {
            namespace: glob("containers.namespace", &self.namespace)?,
            pod: glob("containers.pod", &self.pod)?,
            container: glob("containers.container", &self.container)?,
            path: glob("containers.path", &self.path)?,
            parser_regex,
            multiline_start,
        })
    }
}

impl RedactConfig {
    /// The extra `patterns`, compiled; the error names the bad one.
    pub(crate) fn compiled_patterns(&self) -> Result<Vec<Regex>> {
        self.patterns
            .iter()
            .map(|pattern| regex("redact.patterns", pattern))
            .collect()
    }
}

impl HostMetricsConfig {
    /// The exclusion regexes, compiled; the error names the bad key.
    pub(crate) fn exclusions(&self) -> Result<HostExclusions> {
        Ok(HostExclusions {
            filesystem_types: regex(
                "host_metrics.filesystem_types_exclude",
                &self.filesystem_types_exclude,
            )?,
            mount_points: regex(
                "host_metrics.mount_points_exclude",
                &self.mount_points_exclude,
            )?,
            disk_devices: regex(
                "host_metrics.disk_devices_exclude",
                &self.disk_devices_exclude,
            )?,
        })
    }
}

/// A glob of the configuration; empty is `None` (no constraint).
fn glob(key: &'static str, text: &str) -> Result<Option<Pattern>> {
    if text.is_empty() {
        return Ok(None);
    }
    Pattern::new(text)
        .map(Some)
        .map_err(|error| invalid(key, format!("bad glob {text:?}: {error}")))
}

/// The non-empty globs of `texts`.
fn globs(key: &'static str, texts: &[String]) -> Result<Vec<Pattern>> {
    texts
        .iter()
        .filter_map(|text| glob(key, text).transpose())
        .collect()
}

/// A regex of the configuration.
fn regex(key: &'static str, text: &str) -> Result<Regex> {
    Regex::new(text).map_err(|error| invalid(key, format!("bad regex {text:?}: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_compiled_as_configured() {
        let config = Config::from_toml(
            r#"
            exclude_paths = ["/var/log/pods/skip_*/**", ""]
            [filters]
            drop_patterns = ["healthz"]
            [[containers]]
            namespace = "shop"
            parser = "regex"
            regex = '^(?P<message>.*)$'
            [[containers]]
            parser = "logfmt"
            regex = "ignored (unless parser = \"regex\""
            "#,
        )
        .unwrap();
        let patterns = config.rule_patterns().unwrap();
        assert!(patterns.drop.unwrap().is_match("GET /healthz"));
        assert_eq!(patterns.exclude_paths.len(), 1, "an empty glob is none");
        let [regex_rule, logfmt_rule] = &patterns.containers[..] else {
            panic!("two rules: {:?}", patterns.containers);
        };
        assert!(regex_rule.namespace.as_ref().unwrap().matches("shop"));
        assert!(regex_rule.pod.is_none());
        assert!(regex_rule.parser_regex.is_some());
        assert!(logfmt_rule.parser_regex.is_none());
        assert!(logfmt_rule.multiline_start.is_none());
    }

    #[test]
    fn a_bad_pattern_names_its_key() {
        for (toml, key) in [
            (
                "[filters]\ndrop_patterns = [\"(\"]",
                "filters.drop_patterns",
            ),
            ("[[containers]]\npod = \"[\"", "containers.pod"),
            (
                "[[containers]]\nmultiline_start = \"(\"",
                "containers.multiline_start",
            ),
            ("exclude_paths = [\"[\"]", "exclude_paths"),
            (
                "[filters]\nexclude_containers = [\"[\"]",
                "filters.exclude_containers",
            ),
        ] {
            let config = Config::from_toml(toml).unwrap();
            let error = config.rule_patterns().unwrap_err().to_string();
            assert!(error.contains(key), "{toml}: {error}");
        }
        let redact = RedactConfig {
            patterns: vec!["ok".to_owned(), "(".to_owned()],
            ..RedactConfig::default()
        };
        let error = redact.compiled_patterns().unwrap_err().to_string();
        assert!(error.contains("redact.patterns"), "{error}");
        let host = HostMetricsConfig {
            mount_points_exclude: "(".to_owned(),
            ..HostMetricsConfig::default()
        };
        let error = host.exclusions().unwrap_err().to_string();
        assert!(
            error.contains("host_metrics.mount_points_exclude"),
            "{error}"
        );
    }
}
