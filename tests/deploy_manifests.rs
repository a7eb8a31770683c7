//! Renders the kustomize bases under `deploy/` with `kubectl kustomize`, which
//! works offline, and checks the objects. Each one parses into its Kubernetes
//! type with no field lost. The RBAC rules grant exactly the API calls of
//! `visage_dr::kube_api::API_CALLS`. Pods are locked down, and the CronJobs
//! and container arguments agree with the policy and the command line.
//!
//! Without kubectl these tests print a warning and pass, except under
//! `CI=true`, where a missing kubectl fails them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use chrono::{TimeZone, Utc};
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use visage_dr::cli::Cli;
use visage_dr::kube_api::{ApiCall, API_CALLS};
use visage_dr::policy::Policy;
use visage_dr::schedule::Schedule;

/// Namespace of the Visage stack, where visage-dr runs.
const NAMESPACE: &str = "visage";
const SERVICE_ACCOUNT: &str = "visage-dr";
const POLICY_CONFIGMAP: &str = "visage-dr-policy";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Runs `kubectl kustomize DIR` and returns its output, or `None` when kubectl
/// is not installed outside CI.
fn kustomize(dir: &str) -> Option<String> {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo_path(dir))
        // Rendering needs no cluster, and an empty configuration makes sure none is used.
        .env("KUBECONFIG", "/dev/null")
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var_os("CI").is_some() {
                panic!("kubectl was not found on PATH, and CI requires it. Run scripts/install-deps.");
            }
            // Written to stderr directly, because the test harness hides
            // eprintln! output of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "WARNING: kubectl is not installed, so {dir} was not rendered and its tests passed unchecked; run scripts/install-deps"
            );
            return None;
        }
        Err(e) => panic!("failed to start kubectl: {e}"),
    };
    assert!(
        output.status.success(),
        "kubectl kustomize {dir} failed with {}:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).expect("kubectl writes UTF-8"))
}

/// Parses the objects of a rendered kustomization into JSON values.
fn parse_documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .expect("kubectl kustomize writes valid YAML")
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// Returns the objects of `deploy/`, rendered once for all tests of this file.
fn deploy_objects() -> Option<&'static [Value]> {
    static OBJECTS: OnceLock<Option<Vec<Value>>> = OnceLock::new();
    OBJECTS.get_or_init(|| kustomize("deploy").map(|yaml| parse_documents(&yaml))).as_deref()
}

fn monitoring_objects() -> Option<&'static [Value]> {
    static OBJECTS: OnceLock<Option<Vec<Value>>> = OnceLock::new();
    OBJECTS
        .get_or_init(|| kustomize("deploy/monitoring").map(|yaml| parse_documents(&yaml)))
        .as_deref()
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().expect("every object has a kind")
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().expect("every object has a name")
}

fn namespace(object: &Value) -> Option<&str> {
    object["metadata"]["namespace"].as_str()
}

/// Parses every object of `kind` into `T`.
fn typed<T: DeserializeOwned>(objects: &[Value], expected_kind: &str) -> Vec<T> {
    objects
        .iter()
        .filter(|o| kind(o) == expected_kind)
        .map(|o| serde_json::from_value(o.clone()).unwrap_or_else(|e| panic!("{expected_kind} {}: {e}", name(o))))
        .collect()
}

/// Returns the path of the first place where `a` and `b` differ.
fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(u), Some(v)) => first_difference(u, v, format!("{path}.{k}")),
                (Some(_), None) => Some(format!("{path}.{k} (dropped)")),
                (None, Some(_)) => Some(format!("{path}.{k} (added)")),
                (None, None) => unreachable!(),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| first_difference(u, v, format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} != {b}")),
    }
}

/// Parses `object` into `T` and serialises it back. The Kubernetes types skip
/// unknown fields silently, so a misspelt or misplaced field shows up as a
/// field that the round trip dropped.
fn round_trip<T: DeserializeOwned + Serialize>(object: &Value) -> Result<(), String> {
    let parsed: T = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    let written = serde_json::to_value(&parsed).map_err(|e| e.to_string())?;
    match first_difference(object, &written, String::new()) {
        None => Ok(()),
        Some(at) => Err(format!("the field {at} does not survive parsing into its type")),
    }
}

/// Custom resources of the Prometheus Operator, reduced to the fields these
/// files use, so that any other field is rejected.
mod operator {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct ServiceMonitor {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: ServiceMonitorSpec,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct ServiceMonitorSpec {
        pub selector: LabelSelector,
        pub endpoints: Vec<Endpoint>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Endpoint {
        pub port: String,
        pub path: String,
        pub scheme: String,
        pub interval: String,
        pub tls_config: TlsConfig,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct TlsConfig {
        pub insecure_skip_verify: bool,
    }

    /// Only the envelope: tests/monitoring_rules.rs checks the rules themselves.
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct PrometheusRule {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: Value,
    }
}

fn check_round_trip(object: &Value) -> Result<(), String> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    match (api_version, kind(object)) {
        ("v1", "Namespace") => round_trip::<Namespace>(object),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(object),
        ("v1", "ConfigMap") => round_trip::<ConfigMap>(object),
        ("v1", "Service") => round_trip::<Service>(object),
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(object),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(object),
        ("apps/v1", "Deployment") => round_trip::<Deployment>(object),
        ("batch/v1", "CronJob") => round_trip::<CronJob>(object),
        ("monitoring.coreos.com/v1", "ServiceMonitor") => round_trip::<operator::ServiceMonitor>(object),
        ("monitoring.coreos.com/v1", "PrometheusRule") => round_trip::<operator::PrometheusRule>(object),
        (api_version, kind) => Err(format!("no type for {api_version} {kind}; add it to check_round_trip")),
    }
}

/// Collects the pod specs of the Deployment and the CronJobs, with the name of each object.
fn pod_specs(objects: &[Value]) -> Vec<(String, PodSpec)> {
    let mut specs = Vec::new();
    for d in typed::<Deployment>(objects, "Deployment") {
        let spec = d.spec.and_then(|s| s.template.spec).expect("the Deployment has a pod spec");
        specs.push((d.metadata.name.unwrap(), spec));
    }
    for c in typed::<CronJob>(objects, "CronJob") {
        let spec = c
            .spec
            .and_then(|s| s.job_template.spec)
            .and_then(|s| s.template.spec)
            .expect("the CronJob has a pod spec");
        specs.push((c.metadata.name.unwrap(), spec));
    }
    specs
}

fn only_container(name: &str, spec: &PodSpec) -> Container {
    assert_eq!(spec.containers.len(), 1, "{name} has one container");
    spec.containers[0].clone()
}

fn cronjob(objects: &[Value], cronjob_name: &str) -> CronJob {
    typed::<CronJob>(objects, "CronJob")
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(cronjob_name))
        .unwrap_or_else(|| panic!("no CronJob {cronjob_name}"))
}

fn policy() -> Policy {
    Policy::load(&repo_path("deploy/base/policy/visage.yaml"))
        .unwrap_or_else(|e| panic!("the deployed policy is invalid: {e}"))
        .policy
}

fn kind_and_names(objects: &[Value]) -> BTreeSet<(String, String, String)> {
    objects
        .iter()
        .map(|o| (kind(o).to_owned(), namespace(o).unwrap_or("").to_owned(), name(o).to_owned()))
        .collect()
}

fn set(items: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    items.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect()
}

#[test]
fn deploy_renders_expected_objects() {
    let Some(objects) = deploy_objects() else { return };
    let expected = set(&[
        ("Namespace", "", "visage-dr-scratch"),
        ("ServiceAccount", NAMESPACE, SERVICE_ACCOUNT),
        ("Role", NAMESPACE, "visage-dr"),
        ("Role", "visage-dr-scratch", "visage-dr"),
        ("RoleBinding", NAMESPACE, "visage-dr"),
        ("RoleBinding", "visage-dr-scratch", "visage-dr"),
        ("ConfigMap", NAMESPACE, POLICY_CONFIGMAP),
        ("Deployment", NAMESPACE, "visage-dr"),
        ("Service", NAMESPACE, "visage-dr"),
        ("CronJob", NAMESPACE, "visage-dr-run"),
        ("CronJob", NAMESPACE, "visage-dr-verification"),
    ]);
    assert_eq!(kind_and_names(objects), expected);
}

#[test]
fn monitoring_renders_expected_objects() {
    let Some(objects) = monitoring_objects() else { return };
    let expected = set(&[
        ("ConfigMap", NAMESPACE, "visage-dr-dashboard"),
        ("PrometheusRule", NAMESPACE, "visage-dr"),
        ("ServiceMonitor", NAMESPACE, "visage-dr"),
    ]);
    assert_eq!(kind_and_names(objects), expected);
}

#[test]
fn objects_parse_into_their_types() {
    let Some(deploy) = deploy_objects() else { return };
    let Some(monitoring) = monitoring_objects() else { return };
    for object in deploy.iter().chain(monitoring) {
        if let Err(e) = check_round_trip(object) {
            panic!("{} {}: {e}", kind(object), name(object));
        }
    }
}

#[test]
fn round_trip_catches_misspelt_field() {
    let Some(objects) = deploy_objects() else { return };
    let mut deployment = objects.iter().find(|o| kind(o) == "Deployment").unwrap().clone();
    deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonroot"] = Value::Bool(true);
    let error = check_round_trip(&deployment).expect_err("an unknown field is reported");
    assert!(error.contains("runAsNonroot"), "{error}");
}

#[test]
fn objects_carry_visage_labels() {
    let Some(deploy) = deploy_objects() else { return };
    let Some(monitoring) = monitoring_objects() else { return };
    for object in deploy.iter().chain(monitoring) {
        let labels = &object["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/name"], "visage-dr", "{} {}", kind(object), name(object));
        assert_eq!(labels["app.kubernetes.io/part-of"], "visage", "{} {}", kind(object), name(object));
    }
}

/// Expands Role rules into one call per group, resource and verb.
fn granted_calls(role: &Role) -> Vec<(String, String, String)> {
    let mut calls = Vec::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none(), "rules name no single objects");
        assert!(rule.non_resource_urls.is_none(), "a Role cannot grant non-resource URLs");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    calls.push((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    calls
}

#[test]
fn rbac_grants_exactly_api_calls() {
    let Some(objects) = deploy_objects() else { return };
    let expected: BTreeSet<(String, String, String)> = API_CALLS
        .iter()
        .map(|ApiCall { group, resource, verb }| (group.to_string(), resource.to_string(), verb.to_string()))
        .collect();
    assert_eq!(expected.len(), API_CALLS.len(), "API_CALLS lists each call once");

    let roles = typed::<Role>(objects, "Role");
    let namespaces: BTreeSet<String> = roles.iter().map(|r| r.metadata.namespace.clone().unwrap()).collect();
    let scratch = policy().verification.unwrap().scratch_namespace.unwrap();
    assert_eq!(namespaces, BTreeSet::from([NAMESPACE.to_owned(), scratch]));

    for role in &roles {
        let role_namespace = role.metadata.namespace.as_deref().unwrap();
        let calls = granted_calls(role);
        let granted: BTreeSet<(String, String, String)> = calls.iter().cloned().collect();
        assert_eq!(granted.len(), calls.len(), "Role in {role_namespace} grants no call twice");
        let extra: Vec<_> = granted.difference(&expected).collect();
        let missing: Vec<_> = expected.difference(&granted).collect();
        assert!(extra.is_empty(), "Role in {role_namespace} grants calls missing from API_CALLS: {extra:?}");
        assert!(missing.is_empty(), "Role in {role_namespace} lacks calls of API_CALLS: {missing:?}");
    }
    assert!(objects.iter().all(|o| kind(o) != "ClusterRole"), "no cluster-wide grant");
}

#[test]
fn rolebindings_bind_service_account() {
    let Some(objects) = deploy_objects() else { return };
    let bindings = typed::<RoleBinding>(objects, "RoleBinding");
    assert_eq!(bindings.len(), 2);
    for binding in bindings {
        let at = binding.metadata.namespace.clone().unwrap();
        assert_eq!(binding.role_ref.kind, "Role", "binding in {at}");
        assert_eq!(binding.role_ref.name, "visage-dr", "binding in {at}");
        let subjects = binding.subjects.unwrap_or_default();
        assert_eq!(subjects.len(), 1, "binding in {at}");
        assert_eq!(subjects[0].kind, "ServiceAccount", "binding in {at}");
        assert_eq!(subjects[0].name, SERVICE_ACCOUNT, "binding in {at}");
        assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE), "binding in {at}");
    }
}

#[test]
fn policy_copy_matches_policies_dir() {
    let shipped = std::fs::read(repo_path("policies/visage.yaml")).unwrap();
    let deployed = std::fs::read(repo_path("deploy/base/policy/visage.yaml")).unwrap();
    assert!(
        shipped == deployed,
        "deploy/base/policy/visage.yaml differs from policies/visage.yaml; copy the policy over it"
    );
}

#[test]
fn policy_configmap_holds_policy_file() {
    let Some(objects) = deploy_objects() else { return };
    let configmap = typed::<ConfigMap>(objects, "ConfigMap").pop().unwrap();
    let data = configmap.data.unwrap();
    let expected = std::fs::read_to_string(repo_path("policies/visage.yaml")).unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["visage.yaml"]);
    assert_eq!(data["visage.yaml"], expected);
}

#[test]
fn pods_run_locked_down() {
    let Some(objects) = deploy_objects() else { return };
    let specs = pod_specs(objects);
    assert_eq!(specs.len(), 3, "the Deployment and two CronJobs");
    for (name, spec) in specs {
        assert_eq!(spec.service_account_name.as_deref(), Some(SERVICE_ACCOUNT), "{name}");
        let pod_security = spec.security_context.clone().expect("a pod security context");
        assert_eq!(pod_security.run_as_non_root, Some(true), "{name}: runAsNonRoot");
        assert!(pod_security.run_as_user.is_some_and(|uid| uid > 0), "{name}: runAsUser is not root");
        assert_eq!(pod_security.seccomp_profile.map(|p| p.type_), Some("RuntimeDefault".into()), "{name}");

        let container = only_container(&name, &spec);
        let security = container.security_context.clone().expect("a container security context");
        assert_eq!(security.read_only_root_filesystem, Some(true), "{name}: readOnlyRootFilesystem");
        assert_eq!(security.allow_privilege_escalation, Some(false), "{name}: allowPrivilegeEscalation");
        let dropped = security.capabilities.and_then(|c| c.drop).unwrap_or_default();
        assert_eq!(dropped, ["ALL"], "{name}: capabilities dropped");
    }
}

#[test]
fn pods_set_resources_and_scratch_space() {
    let Some(objects) = deploy_objects() else { return };
    for (name, spec) in pod_specs(objects) {
        let container = only_container(&name, &spec);
        let resources = container.resources.clone().expect("resources");
        let requests = resources.requests.unwrap_or_default();
        let limits = resources.limits.unwrap_or_default();
        assert!(requests.contains_key("cpu"), "{name}: CPU request");
        assert!(requests.contains_key("memory"), "{name}: memory request");
        assert!(limits.contains_key("memory"), "{name}: memory limit");

        // The root file system is read-only, so /tmp must be a volume of its own.
        let tmp = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/tmp")
            .unwrap_or_else(|| panic!("{name}: /tmp is mounted"));
        let volume = spec.volumes.iter().flatten().find(|v| v.name == tmp.name).unwrap();
        assert!(volume.empty_dir.is_some(), "{name}: /tmp is an emptyDir");
    }
}

#[test]
fn containers_log_json_and_pin_image() {
    let Some(objects) = deploy_objects() else { return };
    for (name, spec) in pod_specs(objects) {
        let container = only_container(&name, &spec);
        let env: BTreeMap<String, Option<String>> =
            container.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone())).collect();
        assert_eq!(env.get("VISAGE_DR_LOG_FORMAT"), Some(&Some("json".to_owned())), "{name}");
        for (variable, value) in &env {
            let lower = variable.to_lowercase();
            let secret_like = ["secret", "password", "token", "access_key"].iter().any(|w| lower.contains(w));
            if secret_like {
                assert!(value.is_none(), "{name}: {variable} has a literal value, so mount a Secret instead");
            }
        }

        let image = container.image.clone().expect("an image");
        let (_, tag) = image.rsplit_once(':').unwrap_or_else(|| panic!("{name}: image {image} has a tag"));
        assert_ne!(tag, "latest", "{name}: image {image}");
    }
}

#[test]
fn secrets_are_referenced_not_committed() {
    let Some(objects) = deploy_objects() else { return };
    assert!(objects.iter().all(|o| kind(o) != "Secret"), "no Secret values are committed");
    let readme = std::fs::read_to_string(repo_path("deploy/README.md")).unwrap();
    let mut referenced = BTreeSet::new();
    for (name, spec) in pod_specs(objects) {
        for volume in spec.volumes.iter().flatten() {
            if let Some(secret) = &volume.secret {
                referenced.insert(secret.secret_name.clone().unwrap_or_else(|| panic!("{name}: {}", volume.name)));
            }
        }
    }
    assert!(referenced.contains("visage-backups-s3"));
    for secret in referenced {
        assert!(readme.contains(&secret), "deploy/README.md says how to create the Secret {secret}");
    }
}

/// Mount paths of the Secret volumes and the policy file agree with the
/// `*_file` paths of the policy.
#[test]
fn mounts_match_policy_paths() {
    let Some(objects) = deploy_objects() else { return };
    let policy_text = std::fs::read_to_string(repo_path("deploy/base/policy/visage.yaml")).unwrap();
    let file_paths: Vec<&str> = policy_text
        .lines()
        .filter_map(|l| l.trim().split_once("_file: "))
        .map(|(_, path)| path.trim())
        .collect();
    assert_eq!(file_paths.len(), 4, "the policy names four credential files");

    for (name, spec) in pod_specs(objects) {
        let container = only_container(&name, &spec);
        let mut mounted = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let volume = spec.volumes.iter().flatten().find(|v| v.name == mount.name).unwrap();
            let keys: Vec<String> = if let Some(secret) = &volume.secret {
                secret.items.iter().flatten().map(|i| i.path.clone()).collect()
            } else if let Some(configmap) = &volume.config_map {
                assert_eq!(configmap.name, POLICY_CONFIGMAP, "{name}");
                vec!["visage.yaml".to_owned()]
            } else {
                continue;
            };
            mounted.extend(keys.into_iter().map(|k| format!("{}/{k}", mount.mount_path)));
        }
        for path in &file_paths {
            assert!(mounted.iter().any(|m| m == path), "{name}: the policy reads {path}, which is not mounted");
        }
        let args = container.args.clone().unwrap_or_default();
        let policy_arg = args.iter().position(|a| a == "--policy").map(|i| &args[i + 1]);
        let policy_arg = policy_arg.unwrap_or_else(|| panic!("{name} passes --policy"));
        assert!(mounted.contains(policy_arg), "{name}: --policy {policy_arg} is not a mounted file");
    }
}

#[test]
fn container_args_parse_with_cli() {
    let Some(objects) = deploy_objects() else { return };
    for (name, spec) in pod_specs(objects) {
        let container = only_container(&name, &spec);
        assert!(container.command.is_none(), "{name}: the image's entrypoint runs visage-dr");
        let args = container.args.clone().unwrap_or_default();
        let argv = std::iter::once("visage-dr".to_owned()).chain(args.iter().cloned());
        if let Err(e) = Cli::try_parse_from(argv) {
            panic!("{name}: visage-dr rejects the arguments {args:?}:\n{e}");
        }
    }
}

#[test]
fn cronjobs_forbid_overlap() {
    let Some(objects) = deploy_objects() else { return };
    let cronjobs = typed::<CronJob>(objects, "CronJob");
    assert_eq!(cronjobs.len(), 2);
    for cronjob in cronjobs {
        let name = cronjob.metadata.name.clone().unwrap();
        let spec = cronjob.spec.unwrap();
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"), "{name}");
        assert!(spec.starting_deadline_seconds.is_some_and(|s| s > 0), "{name}: startingDeadlineSeconds");
        assert_eq!(spec.time_zone.as_deref(), Some("UTC"), "{name}: the policy's time zone");
        let job = spec.job_template.spec.unwrap();
        assert!(job.active_deadline_seconds.is_some(), "{name}: activeDeadlineSeconds");
        assert_eq!(job.template.spec.unwrap().restart_policy.as_deref(), Some("Never"), "{name}");
    }
}

/// The backup CronJob fires at every slot of every backup and prune job, so
/// no job waits for a later fire.
#[test]
fn run_cronjob_fires_at_policy_slots() {
    let Some(objects) = deploy_objects() else { return };
    let policy = policy();
    assert_eq!(policy.timezone.name(), "UTC");
    let spec = cronjob(objects, "visage-dr-run").spec.unwrap();
    let (fires, _) = Schedule::parse(&spec.schedule, "UTC").expect("the CronJob schedule parses");

    let mut schedules: Vec<(String, Schedule)> = Vec::new();
    for db in &policy.postgres {
        schedules.push((format!("postgres:{}", db.spec.name), db.schedule.clone().unwrap()));
    }
    for bucket in &policy.buckets {
        schedules.push((format!("bucket:{}", bucket.name), bucket.schedule.clone().unwrap()));
    }
    schedules.push(("prune".into(), policy.prune.clone().unwrap().schedule));
    assert_eq!(schedules.len(), 5);

    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    for (job, schedule) in schedules {
        for slot in schedule.upcoming(start, 30) {
            assert_eq!(fires.slot_at_or_before(slot), Some(slot), "{job}: the CronJob does not fire at {slot}");
        }
    }
}

#[test]
fn verification_cronjob_follows_policy() {
    let Some(objects) = deploy_objects() else { return };
    let verification = policy().verification.unwrap();
    let cronjob = cronjob(objects, "visage-dr-verification");
    let spec = cronjob.spec.unwrap();
    assert_eq!(spec.schedule, verification.schedule.expr.as_str());

    let job = spec.job_template.spec.unwrap();
    let deadline = job.active_deadline_seconds.unwrap() as u64;
    assert!(
        deadline > verification.timeout.as_secs(),
        "activeDeadlineSeconds {deadline} leaves visage-dr time to report its own timeout"
    );
    let container = only_container("visage-dr-verification", &job.template.spec.unwrap());
    let args = container.args.unwrap();
    assert!(args.windows(2).any(|w| w == ["--job", "verification"]), "{args:?}");
}

#[test]
fn scratch_namespace_matches_policy() {
    let Some(objects) = deploy_objects() else { return };
    let scratch = policy().verification.unwrap().scratch_namespace.unwrap();
    let namespaces: Vec<Namespace> = typed(objects, "Namespace");
    assert_eq!(namespaces.len(), 1);
    assert_eq!(namespaces[0].metadata.name.as_deref(), Some(scratch.as_str()));
}

#[test]
fn serve_probes_and_scrape_port() {
    let Some(objects) = deploy_objects() else { return };
    let deployment = typed::<Deployment>(objects, "Deployment").pop().unwrap();
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(1), "one scheduler fires the policy's jobs");
    assert_eq!(spec.strategy.and_then(|s| s.type_).as_deref(), Some("Recreate"));

    let template = spec.template;
    let container = only_container("visage-dr", template.spec.as_ref().unwrap());
    let args = container.args.clone().unwrap();
    assert!(args.windows(2).any(|w| w == ["--listen", "0.0.0.0:8080"]), "{args:?}");
    assert!(args.contains(&"--tls-cert".to_owned()), "{args:?}");
    assert!(!args.contains(&"--insecure-http".to_owned()), "{args:?}");

    let port = &container.ports.as_ref().unwrap()[0];
    assert_eq!(port.container_port, 8080);
    let port_name = port.name.clone().unwrap();
    for (probe, path) in [(&container.liveness_probe, "/healthz"), (&container.readiness_probe, "/readyz")] {
        let get = probe.clone().and_then(|p| p.http_get).unwrap_or_else(|| panic!("an HTTP probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"), "{path}");
        assert_eq!(serde_json::to_value(&get.port).unwrap(), Value::String(port_name.clone()), "{path}");
    }

    let annotations = template.metadata.unwrap().annotations.unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.container_port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    assert_eq!(annotations["prometheus.io/scheme"], "https");

    let service = typed::<Service>(objects, "Service").pop().unwrap().spec.unwrap();
    let selector = service.selector.unwrap();
    let pod_labels = deployment_pod_labels(objects);
    for (key, value) in &selector {
        assert_eq!(pod_labels.get(key), Some(value), "the Service selects the serve pod by {key}");
    }
    let service_port = &service.ports.unwrap()[0];
    assert_eq!(serde_json::to_value(&service_port.target_port).unwrap(), Value::String(port_name));
}

fn deployment_pod_labels(objects: &[Value]) -> BTreeMap<String, String> {
    let deployment = typed::<Deployment>(objects, "Deployment").pop().unwrap();
    deployment.spec.unwrap().template.metadata.unwrap().labels.unwrap()
}

#[test]
fn servicemonitor_selects_service() {
    let Some(deploy) = deploy_objects() else { return };
    let Some(monitoring) = monitoring_objects() else { return };
    let monitor = monitoring.iter().find(|o| kind(o) == "ServiceMonitor").unwrap();
    let monitor: operator::ServiceMonitor = serde_json::from_value(monitor.clone()).unwrap();
    let service = deploy.iter().find(|o| kind(o) == "Service").unwrap();
    let service: Service = serde_json::from_value(service.clone()).unwrap();

    let service_labels = service.metadata.labels.unwrap();
    for (key, value) in monitor.spec.selector.match_labels.unwrap() {
        assert_eq!(service_labels.get(&key), Some(&value), "the ServiceMonitor selects the Service by {key}");
    }
    let port_names: Vec<String> = service.spec.unwrap().ports.unwrap().into_iter().filter_map(|p| p.name).collect();
    for endpoint in &monitor.spec.endpoints {
        assert!(port_names.contains(&endpoint.port), "the Service has the port {}", endpoint.port);
        assert_eq!(endpoint.path, "/metrics");
    }
}

#[test]
fn dashboard_configmap_holds_dashboard() {
    let Some(objects) = monitoring_objects() else { return };
    let configmap = typed::<ConfigMap>(objects, "ConfigMap").pop().unwrap();
    assert_eq!(configmap.metadata.labels.unwrap()["grafana_dashboard"], "1");
    let data = configmap.data.unwrap();
    let expected = std::fs::read_to_string(repo_path("deploy/monitoring/dashboard.json")).unwrap();
    assert_eq!(data["dashboard.json"], expected);
}
