//! Every Kubernetes API call visage-dr makes, in one place.
//!
//! The RBAC rules in `deploy/` grant exactly these calls; a test renders the
//! kustomize base and compares its Role rules with this list. Code that adds
//! a call to the API server adds its entry here in the same change.

/// One kind of request to the Kubernetes API: a verb on a resource of an API
/// group, in the namespace of the object it acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiCall {
    /// API group; empty for the core group (`v1`).
    pub group: &'static str,
    /// Plural resource name, as in a Role rule.
    pub resource: &'static str,
    /// RBAC verb: `get`, `list`, `watch`, `create`, `patch`, `delete`.
    pub verb: &'static str,
}

const fn call(group: &'static str, resource: &'static str, verb: &'static str) -> ApiCall {
    ApiCall { group, resource, verb }
}

/// Group of CloudNativePG's resources.
pub const CNPG_GROUP: &str = "postgresql.cnpg.io";

/// Group of the barman-cloud plugin's `ObjectStore` resource.
pub const BARMAN_CLOUD_GROUP: &str = "barmancloud.cnpg.io";

/// The calls of the `cnpg` driver. Backups: create one per slot, get it after a 409 on a
/// rerun, list and watch while waiting, delete stale and expired ones. Clusters: `get` to
/// check that a recovery cluster's name is free, server-side apply (`patch`), list and watch
/// while waiting. Verification's scratch Clusters: server-side apply (`patch`), `get` while
/// waiting, `list` by label to find expired ones, and `delete`. The source Cluster's `retentionPolicy` is read with `get`, and so is a
/// plugin ObjectStore's. Pods: `get` of the pod a backup runs on, `list` of the recovery Job's
/// pods and their log. Jobs: `get` of the recovery Job. Secrets: `get` of a restored
/// cluster's `<name>-superuser` Secret.
pub const API_CALLS: &[ApiCall] = &[
    call(CNPG_GROUP, "backups", "create"),
    call(CNPG_GROUP, "backups", "get"),
    call(CNPG_GROUP, "backups", "list"),
    call(CNPG_GROUP, "backups", "watch"),
    call(CNPG_GROUP, "backups", "delete"),
    call(CNPG_GROUP, "clusters", "get"),
    call(CNPG_GROUP, "clusters", "list"),
    call(CNPG_GROUP, "clusters", "watch"),
    call(CNPG_GROUP, "clusters", "patch"),
    call(CNPG_GROUP, "clusters", "delete"),
    call(BARMAN_CLOUD_GROUP, "objectstores", "get"),
    call("", "pods", "get"),
    call("", "pods", "list"),
    call("", "pods/log", "get"),
    call("batch", "jobs", "get"),
    call("", "secrets", "get"),
];
