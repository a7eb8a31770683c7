//! Checks the monitoring files under `deploy/monitoring/`. `metrics.txt`
//! lists exactly what the metrics registry exports. The alerting rules and
//! the dashboard queries parse as PromQL and name only the metrics and labels
//! of that list. Every exported metric is shown or alerted on, and the rules'
//! `for:` durations and labels are sane.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use promql_parser::parser::{self, Expr, LabelModifier};
use promql_parser::util::{parse_duration, walk_expr, ExprVisitor};
use serde::Deserialize;
use serde_json::Value;
use visage_dr::server::metrics::Metrics;

/// Labels that Prometheus attaches to every scraped series. `job` is left
/// out on purpose, because a selector on `job` almost always means `job_name`.
const TARGET_LABELS: &[&str] = &["instance", "namespace", "pod", "service", "container", "endpoint"];

/// Grafana's built-in interval variables, replaced by a duration before parsing.
const GRAFANA_INTERVALS: &[&str] = &["$__rate_interval", "$__interval", "$__range"];

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()))
}

/// Reads the exported metrics of `metrics.txt`, each with its label names.
fn exported_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let mut metrics = BTreeMap::new();
    for line in read("deploy/monitoring/metrics.txt").lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let name = fields.next().unwrap().to_owned();
        let labels: BTreeSet<String> = fields.map(str::to_owned).collect();
        assert!(metrics.insert(name.clone(), labels).is_none(), "metrics.txt lists {name} twice");
    }
    metrics
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PrometheusRule {
    #[allow(dead_code)]
    api_version: String,
    kind: String,
    #[allow(dead_code)]
    metadata: Value,
    spec: RuleSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn rules() -> Vec<Rule> {
    let text = read("deploy/monitoring/prometheusrule.yaml");
    let rule: PrometheusRule = serde_saphyr::from_str(&text).expect("prometheusrule.yaml matches the PrometheusRule fields");
    assert_eq!(rule.kind, "PrometheusRule");
    let mut group_names = BTreeSet::new();
    for group in &rule.spec.groups {
        assert!(group_names.insert(group.name.clone()), "rule group {} appears twice", group.name);
        assert!(!group.rules.is_empty(), "rule group {} has rules", group.name);
    }
    rule.spec.groups.into_iter().flat_map(|g| g.rules).collect()
}

/// Metric names and label names that an expression uses.
#[derive(Default)]
struct Names {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

impl Names {
    fn add_labels(&mut self, modifier: &Option<LabelModifier>) {
        if let Some(modifier) = modifier {
            self.labels.extend(modifier.labels().labels.iter().cloned());
        }
    }
}

impl ExprVisitor for Names {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        let selector = match expr {
            Expr::VectorSelector(vs) => Some(vs),
            Expr::MatrixSelector(ms) => Some(&ms.vs),
            Expr::Aggregate(aggregate) => {
                self.add_labels(&aggregate.modifier);
                None
            }
            Expr::Binary(binary) => {
                if let Some(modifier) = &binary.modifier {
                    self.add_labels(&modifier.matching);
                    if let Some(labels) = modifier.card.labels() {
                        self.labels.extend(labels.labels.iter().cloned());
                    }
                }
                None
            }
            _ => None,
        };
        if let Some(selector) = selector {
            let name = selector.name.clone().or_else(|| {
                selector.matchers.matchers.iter().find(|m| m.name == "__name__").map(|m| m.value.clone())
            });
            let name = name.ok_or_else(|| format!("the selector {selector} names no metric"))?;
            self.metrics.insert(name);
            let matchers = selector.matchers.matchers.iter().chain(selector.matchers.or_matchers.iter().flatten());
            self.labels.extend(matchers.map(|m| m.name.clone()).filter(|n| n != "__name__"));
        }
        Ok(true)
    }
}

fn names_in(expr: &str) -> Result<Names, String> {
    let parsed = parser::parse(expr)?;
    let mut names = Names::default();
    walk_expr(&mut names, &parsed)?;
    Ok(names)
}

/// Returns what `names` uses beyond the exported metrics and their labels.
fn unknown_names(names: &Names, exported: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut unknown = Vec::new();
    let mut allowed: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    for metric in &names.metrics {
        match exported.get(metric) {
            Some(labels) => allowed.extend(labels.iter().map(String::as_str)),
            None if metric.starts_with("visage_dr_") => unknown.push(format!("metric {metric}")),
            None => {}
        }
    }
    for label in &names.labels {
        if !allowed.contains(label.as_str()) {
            unknown.push(format!("label {label}"));
        }
    }
    unknown
}

/// Collects the dashboard's PromQL queries with the panel title of each.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("the dashboard has panels") {
        let title = panel["title"].as_str().unwrap_or("untitled").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("panel {title}: a target has no expr"));
            queries.push((title.clone(), expr.to_owned()));
        }
    }
    queries
}

fn dashboard() -> Value {
    serde_json::from_str(&read("deploy/monitoring/dashboard.json")).expect("dashboard.json is JSON")
}

/// Returns the dashboard's template variables by name.
fn dashboard_variables(dashboard: &Value) -> BTreeMap<String, Value> {
    dashboard["templating"]["list"]
        .as_array()
        .expect("the dashboard has template variables")
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_owned(), v.clone()))
        .collect()
}

/// Replaces Grafana variables with values that PromQL accepts: intervals by
/// a duration, and other variables by a regular expression that matches all.
fn substitute_variables(query: &str, variables: &BTreeMap<String, Value>) -> Result<String, String> {
    let mut text = query.to_owned();
    for interval in GRAFANA_INTERVALS {
        text = text.replace(interval, "5m");
    }
    for name in variables.keys() {
        text = text.replace(&format!("${{{name}}}"), ".+").replace(&format!("${name}"), ".+");
    }
    match text.find('$') {
        Some(at) => Err(format!("undefined variable at {:?}", &text[at..])),
        None => Ok(text),
    }
}

#[test]
fn metrics_list_is_well_formed() {
    let exported = exported_metrics();
    assert!(exported.len() >= 15, "metrics.txt lists the exported metrics");
    for (name, labels) in &exported {
        assert!(name.starts_with("visage_dr_"), "{name} has the visage_dr_ prefix");
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{name}");
        assert!(!labels.contains("job"), "{name}: `job` is Prometheus's own target label");
        for label in labels {
            assert!(label.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{name}: label {label}");
        }
    }
}

/// Parses the samples of an OpenMetrics text into metric names and the label
/// names of each.
fn sampled_metrics(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut metrics: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let series = line.rsplit_once(' ').map_or(line, |(series, _value)| series);
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let label_names = labels.split(',').filter(|l| !l.is_empty()).map(|l| l.split('=').next().unwrap().to_owned());
        metrics.entry(name.to_owned()).or_default().extend(label_names);
    }
    metrics
}

/// The metrics registry of the code exports exactly the metrics and labels of
/// `metrics.txt`, once every labelled series exists.
#[test]
fn metrics_list_matches_registry() {
    let metrics = Metrics::new();
    metrics.declare_job("bucket:uploads", 21_600.0, None);
    metrics.declare_components(&["bucket:uploads".to_owned()]);
    metrics.set_last_push("llama-lora", 1_767_225_600.0);
    let sampled = sampled_metrics(&metrics.encode());
    let exported = exported_metrics();

    let missing: Vec<&String> = sampled.keys().filter(|m| !exported.contains_key(*m)).collect();
    let stale: Vec<&String> = exported.keys().filter(|m| !sampled.contains_key(*m)).collect();
    assert!(missing.is_empty(), "the code exports metrics that metrics.txt lacks: {missing:?}");
    assert!(stale.is_empty(), "metrics.txt lists metrics that the code does not export: {stale:?}");
    for (name, labels) in &sampled {
        assert_eq!(Some(labels), exported.get(name), "labels of {name}");
    }
}

#[test]
fn rule_expressions_parse() {
    for rule in rules() {
        if let Err(e) = parser::parse(&rule.expr) {
            panic!("{}: the expression does not parse: {e}\n{}", rule.alert, rule.expr);
        }
    }
}

#[test]
fn rules_name_only_exported_metrics() {
    let exported = exported_metrics();
    for rule in rules() {
        let names = names_in(&rule.expr).unwrap_or_else(|e| panic!("{}: {e}", rule.alert));
        assert!(
            names.metrics.iter().any(|m| m.starts_with("visage_dr_")),
            "{} uses a visage-dr metric",
            rule.alert
        );
        let unknown = unknown_names(&names, &exported);
        assert!(unknown.is_empty(), "{} uses names that visage-dr does not export: {unknown:?}", rule.alert);
    }
}

#[test]
fn unknown_metric_is_reported() {
    let exported = exported_metrics();
    let names = names_in(r#"visage_dr_backup_age_seconds{job="prune"} > 0"#).unwrap();
    let unknown = unknown_names(&names, &exported);
    assert_eq!(unknown, ["metric visage_dr_backup_age_seconds", "label job"]);
}

#[test]
fn rule_durations_and_labels_are_sane() {
    let rules = rules();
    let mut alerts = BTreeSet::new();
    for rule in &rules {
        let alert = &rule.alert;
        assert!(alerts.insert(alert.clone()), "the alert {alert} is defined twice");
        assert!(alert.starts_with("VisageDr"), "{alert} starts with VisageDr");
        assert!(alert.chars().all(|c| c.is_ascii_alphanumeric()), "{alert} is CamelCase");

        let pending = parse_duration(&rule.for_).unwrap_or_else(|e| panic!("{alert}: for: {}: {e}", rule.for_));
        assert!(pending >= Duration::from_secs(60), "{alert}: for: {} rides out one failed scrape", rule.for_);
        assert!(pending <= Duration::from_secs(3600), "{alert}: for: {} delays the alert by at most an hour", rule.for_);

        assert_eq!(rule.labels.keys().collect::<Vec<_>>(), ["severity"], "{alert}: labels");
        let severity = rule.labels["severity"].as_str();
        assert!(["critical", "warning"].contains(&severity), "{alert}: severity {severity}");

        for key in ["summary", "description"] {
            let text = rule.annotations.get(key).map(|s| s.trim()).unwrap_or_default();
            assert!(!text.is_empty(), "{alert}: a {key} annotation");
        }
        assert_eq!(rule.annotations.len(), 2, "{alert}: only summary and description");
    }
}

/// The rules cover the failure modes that an operator of backups must be alerted to.
#[test]
fn rules_cover_failure_modes() {
    let rules = rules();
    let find = |alert: &str| {
        rules.iter().find(|r| r.alert == alert).unwrap_or_else(|| panic!("no alert {alert}"))
    };
    let overdue = find("VisageDrBackupOverdue");
    assert!(overdue.expr.contains("> 2 * (visage_dr_job_schedule_interval_seconds"), "{}", overdue.expr);
    assert_eq!(overdue.labels["severity"], "critical");
    assert!(find("VisageDrVerificationFailed").expr.contains("visage_dr_verify_last_status == 0"));
    assert!(find("VisageDrVerificationOverdue").expr.contains("visage_dr_last_verified_restorable_timestamp_seconds"));
    assert!(find("VisageDrCheckpointPushesFailing").expr.contains("visage_dr_checkpoint_pushes_total"));
    assert_eq!(find("VisageDrMetricsAbsent").expr.trim(), "absent(visage_dr_up)");
}

#[test]
fn dashboard_queries_parse_and_use_exported_metrics() {
    let dashboard = dashboard();
    let variables = dashboard_variables(&dashboard);
    let exported = exported_metrics();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 10, "the dashboard has its queries");
    for (title, query) in queries {
        let text = substitute_variables(&query, &variables).unwrap_or_else(|e| panic!("panel {title}: {e}"));
        let names = names_in(&text).unwrap_or_else(|e| panic!("panel {title}: {e}\n{query}"));
        let unknown = unknown_names(&names, &exported);
        assert!(unknown.is_empty(), "panel {title} uses names that visage-dr does not export: {unknown:?}");
    }
}

#[test]
fn dashboard_variables_use_exported_labels() {
    let dashboard = dashboard();
    let exported = exported_metrics();
    let variables = dashboard_variables(&dashboard);
    assert_eq!(variables["datasource"]["type"], "datasource");
    assert_eq!(variables["datasource"]["query"], "prometheus");
    for (name, variable) in &variables {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"].as_str().unwrap_or_else(|| panic!("variable {name} has no query"));
        let arguments = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: {query} is label_values(METRIC, LABEL)"));
        let (metric, label) = arguments.split_once(',').unwrap();
        let labels = exported.get(metric.trim()).unwrap_or_else(|| panic!("variable {name}: {metric} is not exported"));
        assert!(labels.contains(label.trim()), "variable {name}: {metric} has no label {label}");
    }
}

#[test]
fn dashboard_panels_are_well_formed() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "visage-dr");
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "panel {title}: its id is unique");
        let grid = &panel["gridPos"];
        let right = grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap();
        assert!(right <= 24, "panel {title} fits the 24-column grid");
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {title}: the data source variable");
        }
    }
}

#[test]
fn every_exported_metric_is_monitored() {
    let exported = exported_metrics();
    let mut used = BTreeSet::new();
    for rule in rules() {
        used.extend(names_in(&rule.expr).unwrap().metrics);
    }
    let dashboard = dashboard();
    let variables = dashboard_variables(&dashboard);
    for (_, query) in dashboard_queries(&dashboard) {
        used.extend(names_in(&substitute_variables(&query, &variables).unwrap()).unwrap().metrics);
    }
    let unused: Vec<&String> = exported.keys().filter(|m| !used.contains(*m)).collect();
    assert!(unused.is_empty(), "exported metrics on no dashboard panel and in no rule: {unused:?}");
}
