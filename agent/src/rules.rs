//! The compiled, reloadable part of the configuration: which files are
//! tailed, how each is decoded, joined and parsed, what is dropped and what
//! is masked. Built once per (re)load, shared as `Arc<Rules>`; readers pick
//! up a new version at their next read.

use std::sync::Arc;

use glob::Pattern;
use regex::{Regex, RegexSet};

use crate::config::{
    Config, ContainerPatterns, ContainerRule, Format, MultilineMode, ParserKind, ResourceConfig,
};
use crate::enrich::ContainerInfo;
use crate::error::Result;
use crate::multiline::MultilineSpec;
use crate::parse::{FieldNames, Parser};
use crate::redact::Redactor;

/// Everything a reader needs to know from the config, compiled.
#[derive(Debug)]
pub(crate) struct Rules {
    pub(crate) include: Vec<String>,
    exclude_paths: Vec<Pattern>,
    exclude_namespaces: Vec<Pattern>,
    exclude_containers: Vec<Pattern>,
    exclude_label: String,
    pub(crate) drop: Option<RegexSet>,
    pub(crate) redactor: Arc<Redactor>,
    pub(crate) fields: Arc<FieldNames>,
    pub(crate) resource: ResourceConfig,
    containers: Vec<CompiledRule>,
    multiline_default: MultilineMode,
    multiline_max_bytes: usize,
}

#[derive(Debug)]
struct CompiledRule {
    namespace: Option<Pattern>,
    pod: Option<Pattern>,
    container: Option<Pattern>,
    path: Option<Pattern>,
    exclude: bool,
    format: Format,
    parser: Parser,
    multiline: Option<MultilineMode>,
    multiline_start: Option<Arc<Regex>>,
}

/// How one file is read.
#[derive(Debug, Clone)]
pub(crate) struct FilePlan {
    pub(crate) format: Format,
    pub(crate) parser: Parser,
    pub(crate) multiline: MultilineSpec,
}

impl Rules {
    /// Compiles the config; the error names the bad key.
    pub(crate) fn compile(config: &Config) -> Result<Rules> {
        let patterns = config.rule_patterns()?;
        let containers = config
            .containers
            .iter()
            .zip(patterns.containers)
            .map(|(rule, patterns)| compile_rule(rule, patterns))
            .collect();
        Ok(Rules {
            include: config.include.clone(),
            exclude_paths: patterns.exclude_paths,
            exclude_namespaces: patterns.exclude_namespaces,
            exclude_containers: patterns.exclude_containers,
            exclude_label: config.filters.exclude_label.clone(),
            drop: patterns.drop,
            redactor: Arc::new(Redactor::compile(&config.redact)?),
            fields: Arc::new(FieldNames::from_config(&config.fields)),
            resource: config.resource.clone(),
            containers,
            multiline_default: config.multiline.default,
            multiline_max_bytes: config.multiline.max_bytes,
        })
    }

    /// Whether discovery should skip `path` outright.
    pub(crate) fn path_excluded(&self, path: &std::path::Path) -> bool {
        self.exclude_paths
            .iter()
            .any(|pattern| pattern.matches_path(path))
    }

    /// How to read the file of `container` at `path`; `None` when filters
    /// exclude it.
    pub(crate) fn plan(
        &self,
        path: &std::path::Path,
        container: &ContainerInfo,
    ) -> Option<FilePlan> {
        if self.path_excluded(path) {
            return None;
        }
        let matches_any = |patterns: &[Pattern], value: &Option<String>| {
            value
                .as_deref()
                .is_some_and(|value| patterns.iter().any(|pattern| pattern.matches(value)))
        };
        if matches_any(&self.exclude_namespaces, &container.namespace)
            || matches_any(&self.exclude_containers, &container.name)
        {
            return None;
        }
        if !self.exclude_label.is_empty()
            && container
                .setting(&self.exclude_label)
                .is_some_and(|value| value.eq_ignore_ascii_case("true"))
        {
            return None;
        }
        let rule = self
            .containers
            .iter()
            .find(|rule| rule.matches(path, container));
        if rule.is_some_and(|rule| rule.exclude) {
            return None;
        }
        let mut mode = self.multiline_default;
        let mut start = None;
        // The container label or pod annotation `sightline.io/multiline`
        // picks a preset too.
        if let Some(label) = container.setting("sightline.io/multiline")
            && let Ok(labelled) = serde_json::from_value::<MultilineMode>(label.into())
        {
            mode = labelled;
        }
        let (format, mut parser) = match rule {
            Some(rule) => {
                if let Some(rule_mode) = rule.multiline {
                    mode = rule_mode;
                }
                start.clone_from(&rule.multiline_start);
                (rule.format, rule.parser.clone())
            }
            None => (Format::Auto, Parser::Auto),
        };
        // The container label or pod annotation `sightline.io/parser`
        // names a parser too (`regex` needs a rule's regex, so only a rule
        // can pick it).
        if let Some(label) = container.setting("sightline.io/parser") {
            match serde_json::from_value::<ParserKind>(label.into()) {
                Ok(ParserKind::Auto) => parser = Parser::Auto,
                Ok(ParserKind::Json) => parser = Parser::Json,
                Ok(ParserKind::Logfmt) => parser = Parser::Logfmt,
                Ok(ParserKind::Text) => parser = Parser::Text,
                Ok(ParserKind::None) => parser = Parser::None,
                Ok(ParserKind::Regex) | Err(_) => {}
            }
        }
        if mode == MultilineMode::Start && start.is_none() {
            mode = MultilineMode::None;
        }
        Some(FilePlan {
            format,
            parser,
            multiline: MultilineSpec {
                mode,
                start,
                max_bytes: self.multiline_max_bytes,
            },
        })
    }
}

fn compile_rule(rule: &ContainerRule, patterns: ContainerPatterns) -> CompiledRule {
    let parser = match patterns.parser_regex {
        // Present exactly when `parser = "regex"`.
        Some(regex) => Parser::Regex(Arc::new(regex)),
        None => match rule.parser {
            ParserKind::Logfmt => Parser::Logfmt,
            ParserKind::Text => Parser::Text,
            ParserKind::None => Parser::None,
            ParserKind::Json => Parser::Json,
            ParserKind::Auto | ParserKind::Regex => Parser::Auto,
        },
    };
    CompiledRule {
        namespace: patterns.namespace,
        pod: patterns.pod,
        container: patterns.container,
        path: patterns.path,
        exclude: rule.exclude,
        format: rule.format,
        parser,
        multiline: rule.multiline,
        multiline_start: patterns.multiline_start.map(Arc::new),
    }
}

impl CompiledRule {
    fn matches(&self, path: &std::path::Path, container: &ContainerInfo) -> bool {
        let field = |pattern: &Option<Pattern>, value: &Option<String>| match pattern {
            None => true,
            Some(pattern) => value.as_deref().is_some_and(|value| pattern.matches(value)),
        };
        field(&self.namespace, &container.namespace)
            && field(&self.pod, &container.pod)
            && field(&self.container, &container.name)
            && self
                .path
                .as_ref()
                .is_none_or(|pattern| pattern.matches_path(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn rules(toml: &str) -> Rules {
        Rules::compile(&Config::from_toml(toml).unwrap()).unwrap()
    }

    fn kube(namespace: &str, container: &str) -> ContainerInfo {
        ContainerInfo {
            namespace: Some(namespace.to_owned()),
            pod: Some("p-1".to_owned()),
            name: Some(container.to_owned()),
            ..ContainerInfo::default()
        }
    }

    #[test]
    fn filters_and_container_rules() {
        let rules = rules(
            r#"
            exclude_paths = ["/var/log/pods/skip_*/**"]
            [filters]
            exclude_namespaces = ["kube-*"]
            exclude_containers = ["istio-proxy"]
            [[containers]]
            namespace = "shop"
            container = "payment"
            parser = "logfmt"
            multiline = "java"
            [[containers]]
            container = "legacy"
            parser = "regex"
            regex = '^(?P<level>\w+) (?P<message>.*)$'
            multiline = "start"
            multiline_start = '^\w+ '
            [[containers]]
            container = "noisy"
            exclude = true
            "#,
        );
        let path = Path::new("/var/log/pods/x/y/0.log");
        assert!(rules.plan(path, &kube("kube-system", "dns")).is_none());
        assert!(rules.plan(path, &kube("shop", "istio-proxy")).is_none());
        assert!(rules.plan(path, &kube("shop", "noisy")).is_none());
        assert!(
            rules
                .plan(
                    Path::new("/var/log/pods/skip_a/c/0.log"),
                    &kube("shop", "x")
                )
                .is_none()
        );
        let payment = rules.plan(path, &kube("shop", "payment")).unwrap();
        assert!(matches!(payment.parser, Parser::Logfmt));
        assert_eq!(payment.multiline.mode, MultilineMode::Java);
        let legacy = rules.plan(path, &kube("other", "legacy")).unwrap();
        assert!(matches!(legacy.parser, Parser::Regex(_)));
        assert_eq!(legacy.multiline.mode, MultilineMode::Start);
        let default = rules.plan(path, &kube("shop", "order")).unwrap();
        assert!(matches!(default.parser, Parser::Auto));
        assert_eq!(default.multiline.mode, MultilineMode::None);
    }

    #[test]
    fn docker_labels_exclude_and_pick_multiline_and_parser() {
        let rules = rules("");
        let mut container = ContainerInfo::default();
        container
            .labels
            .insert("sightline.io/multiline".to_owned(), "python".to_owned());
        let plan = rules.plan(Path::new("/x-json.log"), &container).unwrap();
        assert_eq!(plan.multiline.mode, MultilineMode::Python);
        assert!(matches!(plan.parser, Parser::Auto));
        for (label, expected) in [
            ("text", "Text"),
            ("json", "Json"),
            ("none", "None"),
            ("regex", "Auto"),
            ("bogus", "Auto"),
        ] {
            container
                .labels
                .insert("sightline.io/parser".to_owned(), label.to_owned());
            let plan = rules.plan(Path::new("/x-json.log"), &container).unwrap();
            let picked = format!("{:?}", plan.parser);
            assert_eq!(picked, expected, "label {label}");
        }
        container
            .labels
            .insert("sightline.io/exclude".to_owned(), "true".to_owned());
        assert!(rules.plan(Path::new("/x-json.log"), &container).is_none());
    }

    #[test]
    fn pod_annotations_steer_like_docker_labels_and_per_container_ones_win() {
        use crate::kubernetes::PodInfo;
        let rules = rules("");
        let path = Path::new("/var/log/pods/shop_api-1_uid/api/0.log");
        let pod = |steering: &[(&str, &str)]| {
            let mut container = kube("shop", "api");
            container.pod_info = Some(std::sync::Arc::new(PodInfo {
                attributes: Vec::new(),
                steering: steering
                    .iter()
                    .map(|(key, value)| (key.to_string(), value.to_string()))
                    .collect(),
            }));
            container
        };
        let plan = rules
            .plan(
                path,
                &pod(&[
                    ("sightline.io/parser", "logfmt"),
                    ("sightline.io/multiline", "python"),
                    // For container `api` only: wins over the pod-wide one.
                    ("sightline.io/multiline-api", "java"),
                    ("sightline.io/multiline-sidecar", "go"),
                ]),
            )
            .unwrap();
        assert!(matches!(plan.parser, Parser::Logfmt), "{:?}", plan.parser);
        assert_eq!(plan.multiline.mode, MultilineMode::Java);
        assert!(
            rules
                .plan(path, &pod(&[("sightline.io/exclude", "true")]))
                .is_none()
        );
        // Another container's exclusion leaves this one alone.
        assert!(
            rules
                .plan(path, &pod(&[("sightline.io/exclude-sidecar", "true")]))
                .is_some()
        );
    }

    #[test]
    fn bad_rules_name_their_key() {
        for (toml, key) in [
            ("[[containers]]\nparser = \"regex\"", "containers.regex"),
            (
                "[[containers]]\nmultiline = \"start\"",
                "containers.multiline_start",
            ),
            (
                "[filters]\nexclude_namespaces = [\"[\"]",
                "filters.exclude_namespaces",
            ),
            ("[redact]\npatterns = [\"(\"]", "redact.patterns"),
        ] {
            let config = Config::from_toml(toml).unwrap();
            let error = Rules::compile(&config).unwrap_err().to_string();
            assert!(error.contains(key), "{toml}: {error}");
        }
    }
}
