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

/// The calls of the `cnpg` driver: Backup resources for backups and their
/// retention, Cluster resources for point-in-time restores and scratch
/// verification clusters, the pod a backup runs on, and the credentials
/// Secret of a restored cluster.
pub const API_CALLS: &[ApiCall] = &[
    call(CNPG_GROUP, "backups", "create"),
    call(CNPG_GROUP, "backups", "get"),
    call(CNPG_GROUP, "backups", "list"),
    call(CNPG_GROUP, "backups", "watch"),
    call(CNPG_GROUP, "backups", "delete"),
    call(CNPG_GROUP, "clusters", "create"),
    call(CNPG_GROUP, "clusters", "get"),
    call(CNPG_GROUP, "clusters", "list"),
    call(CNPG_GROUP, "clusters", "watch"),
    call(CNPG_GROUP, "clusters", "patch"),
    call(CNPG_GROUP, "clusters", "delete"),
    call("", "pods", "get"),
    call("", "pods", "list"),
    call("", "secrets", "get"),
];
