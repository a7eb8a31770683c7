//! A fake Kubernetes API server for the cnpg driver tests.
//!
//! It serves the generic resource API on 127.0.0.1 over plain HTTP, and the real `kube` client
//! reaches it through a generated kubeconfig. It implements create, get, list with label and
//! field selectors, watch streams from a resourceVersion, server-side apply, JSON merge patch,
//! delete, and pod logs. It returns 404, 409 and 410 where a real API server does. Backups
//! and Clusters are validated against CNPG's CRD schemas with unknown fields rejected, when
//! `CNPG_CRD_DIR` is set (it must be under CI). The simulated operator in [`operator`]
//! reacts to Backups and recovery Clusters.
//!
//! Include it from a test crate with `#[path = "common/fake_kube/mod.rs"] mod fake_kube;`.
#![allow(dead_code)]

pub mod fixture;
pub mod operator;
pub mod schema;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// Maximum time one watch request stays open. kube's watcher requests 290 s and then
/// watches again, so a shorter cap only adds reconnects.
const MAX_WATCH: Duration = Duration::from_secs(30);

/// One stored change, replayed to watchers.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    resource: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

/// Object key: resource (`<group>/<plural>`, core group empty), namespace, name.
type Key = (String, String, String);

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    changes: Vec<Change>,
    /// Watches from a resourceVersion below this get 410 Gone.
    expired_before: u64,
    /// Resources whose next watch closes at once and expires every older resourceVersion.
    drop_next_watch: Vec<String>,
    logs: HashMap<(String, String), String>,
    /// Namespaces in which every request gets 403 Forbidden, as without RBAC rights.
    forbidden: Vec<String>,
}

/// The API server's state, shared by the HTTP handlers, the operator and the test.
pub struct Store {
    state: Mutex<State>,
    changed: tokio::sync::watch::Sender<u64>,
    schemas: Option<schema::CrdSchemas>,
    /// Requests served, by (group, resource, verb).
    requests: Mutex<BTreeMap<(String, String, String), u64>>,
    /// Number of watch requests that got 410 Gone.
    pub gone_served: AtomicU64,
    uid: AtomicU64,
}

/// A running fake API server.
pub struct FakeKube {
    pub store: Arc<Store>,
    pub url: String,
    pub kubeconfig: PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeKube {
    /// Starts the server on a free loopback port and writes a kubeconfig for it into `dir`
    /// with `namespace` as the default namespace.
    pub async fn start(dir: &Path, namespace: &str) -> FakeKube {
        let (changed, _) = tokio::sync::watch::channel(0);
        let store = Arc::new(Store {
            state: Mutex::new(State::default()),
            changed,
            schemas: schema::CrdSchemas::from_env(),
            requests: Mutex::new(BTreeMap::new()),
            gone_served: AtomicU64::new(0),
            uid: AtomicU64::new(0),
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handler_store = store.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let store = handler_store.clone();
            async move { store.handle(method, uri, headers, body).await }
        });
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let kubeconfig = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n\
             current-context: fake\n"
        );
        std::fs::write(&kubeconfig, text).unwrap();
        FakeKube { store, url, kubeconfig, server }
    }
}

/// Kind and API version of each served resource.
fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "postgresql.cnpg.io/backups" => ("Backup", "postgresql.cnpg.io/v1"),
        "postgresql.cnpg.io/clusters" => ("Cluster", "postgresql.cnpg.io/v1"),
        "barmancloud.cnpg.io/objectstores" => ("ObjectStore", "barmancloud.cnpg.io/v1"),
        "/pods" => ("Pod", "v1"),
        "/secrets" => ("Secret", "v1"),
        "batch/jobs" => ("Job", "batch/v1"),
        _ => ("", ""),
    }
}

/// A parsed request path.
struct Target {
    resource: String,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..] if tail.len() <= 2 => Some(Target {
            resource: format!("{group}/{plural}"),
            namespace: ns.to_string(),
            name: tail.first().map(|s| s.to_string()),
            subresource: tail.get(1).map(|s| s.to_string()),
        }),
        _ => None,
    }
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

fn query_params(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Returns whether `object` matches a label selector of `k=v`, `k!=v` and `k` terms, and a field
/// selector of `metadata.name=` and `metadata.namespace=` terms.
fn selected(object: &Value, labels: Option<&String>, fields: Option<&String>) -> bool {
    let meta = &object["metadata"];
    let label_ok = labels.map(|s| s.as_str()).unwrap_or("").split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            meta["labels"][k].as_str() != Some(v)
        } else if let Some((k, v)) = term.split_once('=') {
            meta["labels"][k.trim_end_matches('=')].as_str() == Some(v)
        } else {
            meta["labels"].get(term).is_some()
        }
    });
    let field_ok = fields.map(|s| s.as_str()).unwrap_or("").split(',').filter(|t| !t.is_empty()).all(|term| {
        match term.split_once('=') {
            Some(("metadata.name", v)) => meta["name"].as_str() == Some(v.trim_start_matches('=')),
            Some(("metadata.namespace", v)) => meta["namespace"].as_str() == Some(v.trim_start_matches('=')),
            _ => false,
        }
    });
    label_ok && field_ok
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

impl Store {
    /// Counts a request under its RBAC verb, group and resource (`pods/log` for a log).
    fn count(&self, method: &Method, target: &Target, params: &HashMap<String, String>) {
        let watch = params.get("watch").is_some_and(|w| w == "true" || w == "1");
        let verb = match (method, &target.name) {
            (&Method::GET, Some(_)) => "get",
            (&Method::GET, None) if watch => "watch",
            (&Method::GET, None) => "list",
            (&Method::POST, _) => "create",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, _) => "delete",
            _ => "other",
        };
        let (group, plural) = target.resource.split_once('/').unwrap_or(("", &target.resource));
        let resource = match &target.subresource {
            Some(sub) => format!("{plural}/{sub}"),
            None => plural.to_string(),
        };
        *self.requests.lock().unwrap().entry((group.to_string(), resource, verb.to_string())).or_default() += 1;
    }

    /// Total number of API requests served so far.
    pub fn request_count(&self) -> u64 {
        self.requests.lock().unwrap().values().sum()
    }

    /// Requests served so far, by (group, resource, verb).
    pub fn requests(&self) -> BTreeMap<(String, String, String), u64> {
        self.requests.lock().unwrap().clone()
    }

    /// Makes the next watch of `resource` close at once, and every older resourceVersion
    /// expire, so the client's next watch gets 410 Gone and must list again.
    pub fn drop_next_watch(&self, resource: &str) {
        self.state.lock().unwrap().drop_next_watch.push(resource.to_string());
    }

    /// Makes every request in `namespace` fail with 403 Forbidden.
    pub fn forbid(&self, namespace: &str) {
        self.state.lock().unwrap().forbidden.push(namespace.to_string());
    }

    pub fn set_log(&self, namespace: &str, pod: &str, text: &str) {
        self.state.lock().unwrap().logs.insert((namespace.into(), pod.into()), text.into());
    }

    /// Returns a stored object.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(&(resource.into(), namespace.into(), name.into())).cloned()
    }

    /// Returns every stored object of `resource` in `namespace`.
    pub fn list(&self, resource: &str, namespace: &str) -> Vec<Value> {
        let state = self.state.lock().unwrap();
        state
            .objects
            .iter()
            .filter(|((r, ns, _), _)| r == resource && ns == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Returns a receiver that changes whenever an object changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Creates or replaces an object, as the operator or the test does it. Metadata the API
    /// server owns (uid, creationTimestamp, resourceVersion) is filled in.
    pub fn put(&self, resource: &str, mut object: Value) -> Value {
        let (kind, api_version) = kind_of(resource);
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let name = object["metadata"]["name"].as_str().expect("object has a name").to_string();

        let mut state = self.state.lock().unwrap();
        state.rv += 1;
        let rv = state.rv;
        let key = (resource.to_string(), namespace.clone(), name);
        let existing = state.objects.get(&key).cloned();
        object["apiVersion"] = json!(api_version);
        object["kind"] = json!(kind);
        let meta = object["metadata"].as_object_mut().expect("metadata is an object");
        meta.insert("namespace".into(), json!(namespace));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        match &existing {
            Some(old) => {
                for k in ["uid", "creationTimestamp"] {
                    meta.insert(k.into(), old["metadata"][k].clone());
                }
            }
            None => {
                let uid = self.uid.fetch_add(1, Ordering::SeqCst);
                meta.insert("uid".into(), json!(format!("00000000-0000-4000-8000-{uid:012}")));
                if !meta.contains_key("creationTimestamp") {
                    meta.insert("creationTimestamp".into(), json!(chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()));
                }
            }
        }

        let change_kind = if existing.is_some() { "MODIFIED" } else { "ADDED" };
        state.objects.insert(key, object.clone());
        state.changes.push(Change { rv, resource: resource.into(), namespace, kind: change_kind, object: object.clone() });
        drop(state);
        self.changed.send_replace(rv);
        object
    }

    /// Applies a JSON merge patch to a stored object; returns the result, or `None` when it
    /// does not exist.
    pub fn patch(&self, resource: &str, namespace: &str, name: &str, patch: &Value) -> Option<Value> {
        let mut object = self.get(resource, namespace, name)?;
        merge(&mut object, patch);
        Some(self.put(resource, object))
    }

    /// Deletes an object; returns it, or `None` when it did not exist.
    pub fn delete(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let mut state = self.state.lock().unwrap();
        let object = state.objects.remove(&(resource.into(), namespace.into(), name.into()))?;
        state.rv += 1;
        let rv = state.rv;
        let mut last = object.clone();
        last["metadata"]["resourceVersion"] = json!(rv.to_string());
        state.changes.push(Change { rv, resource: resource.into(), namespace: namespace.into(), kind: "DELETED", object: last });
        drop(state);
        self.changed.send_replace(rv);
        Some(object)
    }

    async fn handle(self: Arc<Self>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let Some(target) = parse_path(uri.path()) else {
            return status(404, "NotFound", format!("the server could not find the requested resource {}", uri.path()));
        };
        let params = query_params(&uri);
        self.count(&method, &target, &params);
        if self.state.lock().unwrap().forbidden.contains(&target.namespace) {
            return status(403, "Forbidden", format!("{} is forbidden in namespace {}", target.resource, target.namespace));
        }
        let (kind, _) = kind_of(&target.resource);
        if kind.is_empty() {
            return status(404, "NotFound", format!("the server does not serve {}", target.resource));
        }
        match (method, &target.name, target.subresource.as_deref()) {
            (Method::GET, Some(name), Some("log")) => self.pod_log(&target.namespace, name, &params),
            (Method::GET, Some(name), None) => match self.get(&target.resource, &target.namespace, name) {
                Some(object) => axum::Json(object).into_response(),
                None => not_found(kind, name),
            },
            (Method::GET, None, None) if params.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                self.watch(target, params)
            }
            (Method::GET, None, None) => self.list_response(&target, &params),
            (Method::POST, None, None) => {
                let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                    return status(400, "BadRequest", "the request body is not JSON".into());
                };
                self.create(&target, object)
            }
            (Method::PATCH, Some(name), None) => {
                let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
                let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                    return status(400, "BadRequest", "the patch body is not JSON".into());
                };
                self.patch_request(&target, name, content_type, patch)
            }
            (Method::DELETE, Some(name), None) => match self.delete(&target.resource, &target.namespace, name) {
                Some(object) => axum::Json(object).into_response(),
                None => not_found(kind, name),
            },
            (method, _, _) => status(405, "MethodNotAllowed", format!("{method} is not supported on {}", uri.path())),
        }
    }

    /// Returns the 422 response for an object that fails its CRD schema.
    fn invalid(&self, resource: &str, object: &Value) -> Option<Response> {
        let schemas = self.schemas.as_ref()?;
        let errors = match resource {
            "postgresql.cnpg.io/backups" => schemas.validate_backup(object),
            "postgresql.cnpg.io/clusters" => schemas.validate_cluster(object),
            _ => Vec::new(),
        };
        if errors.is_empty() {
            None
        } else {
            Some(status(422, "Invalid", format!("{} is invalid: {}", kind_of(resource).0, errors.join("; "))))
        }
    }

    fn create(&self, target: &Target, mut object: Value) -> Response {
        let Some(name) = object["metadata"]["name"].as_str().map(str::to_string) else {
            return status(422, "Invalid", "metadata.name: Required value".into());
        };
        if let Some(response) = self.invalid(&target.resource, &object) {
            return response;
        }
        if self.get(&target.resource, &target.namespace, &name).is_some() {
            return status(409, "AlreadyExists", format!("{} {name:?} already exists", kind_of(&target.resource).0));
        }
        object["metadata"]["namespace"] = json!(target.namespace);
        // The API server ignores a client's status on create.
        if let Some(map) = object.as_object_mut() {
            map.remove("status");
        }
        object["metadata"]["generation"] = json!(1);
        let stored = self.put(&target.resource, object);
        (StatusCode::CREATED, axum::Json(stored)).into_response()
    }

    fn patch_request(&self, target: &Target, name: &str, content_type: &str, patch: Value) -> Response {
        let kind = kind_of(&target.resource).0;
        let existing = self.get(&target.resource, &target.namespace, name);
        if content_type.starts_with("application/apply-patch") {
            if let Some(response) = self.invalid(&target.resource, &patch) {
                return response;
            }
            let created = existing.is_none();
            let mut object = existing.unwrap_or_else(|| json!({"metadata": {"name": name, "generation": 1}}));
            let mut applied = patch;
            if let Some(map) = applied.as_object_mut() {
                map.remove("status");
            }
            merge(&mut object, &applied);
            object["metadata"]["namespace"] = json!(target.namespace);
            let stored = self.put(&target.resource, object);
            let code = if created { StatusCode::CREATED } else { StatusCode::OK };
            (code, axum::Json(stored)).into_response()
        } else if content_type.starts_with("application/merge-patch+json") {
            match self.patch(&target.resource, &target.namespace, name, &patch) {
                Some(object) => axum::Json(object).into_response(),
                None => not_found(kind, name),
            }
        } else {
            status(415, "UnsupportedMediaType", format!("patch type {content_type:?} is not supported"))
        }
    }

    fn list_response(&self, target: &Target, params: &HashMap<String, String>) -> Response {
        let state = self.state.lock().unwrap();
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((r, ns, _), object)| {
                r == &target.resource && ns == &target.namespace && selected(object, params.get("labelSelector"), params.get("fieldSelector"))
            })
            .map(|(_, v)| v.clone())
            .collect();
        let (kind, api_version) = kind_of(&target.resource);
        axum::Json(json!({
            "apiVersion": api_version,
            "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": state.rv.to_string()},
            "items": items,
        }))
        .into_response()
    }

    fn pod_log(&self, namespace: &str, pod: &str, params: &HashMap<String, String>) -> Response {
        if self.get("/pods", namespace, pod).is_none() {
            return not_found("Pod", pod);
        }
        let text = self.state.lock().unwrap().logs.get(&(namespace.into(), pod.into())).cloned().unwrap_or_default();
        let tail: Option<usize> = params.get("tailLines").and_then(|t| t.parse().ok());
        let lines: Vec<&str> = text.lines().collect();
        let start = tail.map(|t| lines.len().saturating_sub(t)).unwrap_or(0);
        let mut out = lines[start..].join("\n");
        out.push('\n');
        (StatusCode::OK, out).into_response()
    }

    /// Streams changes after `resourceVersion` as newline-delimited watch events.
    fn watch(self: Arc<Self>, target: Target, params: HashMap<String, String>) -> Response {
        let since: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let timeout = params
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(MAX_WATCH)
            .min(MAX_WATCH);
        let (sender, receiver) = futures::channel::mpsc::unbounded::<Result<Bytes, Infallible>>();
        let drop_now = {
            let mut state = self.state.lock().unwrap();
            let position = state.drop_next_watch.iter().position(|r| r == &target.resource);
            match position {
                Some(i) => {
                    state.drop_next_watch.remove(i);
                    // Other objects change on a real server too: the version moves on, and
                    // everything the client has seen expires; a fresh list is current.
                    state.rv += 1;
                    state.expired_before = state.rv;
                    true
                }
                None => false,
            }
        };
        let store = self.clone();
        tokio::spawn(async move {
            if drop_now {
                return;
            }
            let mut changed = store.subscribe();
            let deadline = tokio::time::Instant::now() + timeout;
            let mut since = since;
            loop {
                let (events, gone) = {
                    let state = store.state.lock().unwrap();
                    if since < state.expired_before {
                        (Vec::new(), true)
                    } else {
                        let events: Vec<Change> = state
                            .changes
                            .iter()
                            .filter(|c| c.rv > since && c.resource == target.resource && c.namespace == target.namespace)
                            .cloned()
                            .collect();
                        (events, false)
                    }
                };
                if gone {
                    store.gone_served.fetch_add(1, Ordering::SeqCst);
                    let event = json!({"type": "ERROR", "object": {
                        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": format!("too old resource version: {since}"), "reason": "Expired", "code": 410,
                    }});
                    let _ = sender.unbounded_send(Ok(Bytes::from(format!("{event}\n"))));
                    return;
                }
                for change in events {
                    since = change.rv;
                    if !selected(&change.object, params.get("labelSelector"), params.get("fieldSelector")) {
                        continue;
                    }
                    let event = json!({"type": change.kind, "object": change.object});
                    if sender.unbounded_send(Ok(Bytes::from(format!("{event}\n")))).is_err() {
                        return;
                    }
                }
                tokio::select! {
                    result = changed.changed() => if result.is_err() { return },
                    _ = tokio::time::sleep_until(deadline) => return,
                }
            }
        });
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from_stream(receiver))
            .unwrap()
    }
}

fn not_found(kind: &str, name: &str) -> Response {
    status(404, "NotFound", format!("{}s {name:?} not found", kind.to_lowercase()))
}
