//! Structural validation of manifests against CNPG's CRD schemas (OpenAPI v3), with unknown
//! fields rejected as `kubectl apply --validate=strict` does.
//!
//! The schemas are read from `CNPG_CRD_DIR`. Under CI (`CI` set) a missing directory fails
//! the test, because a skipped schema check would let a wrong manifest pass unnoticed.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The `openAPIV3Schema` of the CRDs the driver writes.
pub struct CrdSchemas {
    backup: Value,
    cluster: Value,
}

/// Returns `CNPG_CRD_DIR`, or `None` outside CI when it is unset. Panics under CI when it
/// is unset or is not a directory.
pub fn crd_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("CNPG_CRD_DIR").map(PathBuf::from);
    let in_ci = std::env::var_os("CI").is_some_and(|v| v == "true" || v == "1");
    match dir {
        Some(dir) if dir.is_dir() => Some(dir),
        Some(dir) => panic!("CNPG_CRD_DIR={} is not a directory; point it at the CNPG CRD YAML files", dir.display()),
        None if in_ci => panic!("CNPG_CRD_DIR is not set: CI must validate manifests against the CNPG CRD schemas"),
        None => {
            eprintln!("note: CNPG_CRD_DIR is not set, so manifests are not validated against the CRD schemas");
            None
        }
    }
}

fn load(dir: &Path, file: &str) -> Value {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let crd: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

impl CrdSchemas {
    pub fn from_env() -> Option<CrdSchemas> {
        crd_dir().map(|dir| CrdSchemas::load(&dir))
    }

    pub fn load(dir: &Path) -> CrdSchemas {
        let schemas = CrdSchemas {
            backup: load(dir, "postgresql.cnpg.io_backups.yaml"),
            cluster: load(dir, "postgresql.cnpg.io_clusters.yaml"),
        };
        assert!(schemas.backup.is_object(), "the Backup CRD file in {} has no openAPIV3Schema", dir.display());
        assert!(schemas.cluster.is_object(), "the Cluster CRD file in {} has no openAPIV3Schema", dir.display());
        schemas
    }

    pub fn validate_backup(&self, object: &Value) -> Vec<String> {
        validate_object(&self.backup, object)
    }

    pub fn validate_cluster(&self, object: &Value) -> Vec<String> {
        validate_object(&self.cluster, object)
    }
}

/// Validates a whole resource; `metadata` is checked by the API server itself, not by the
/// CRD schema, so only its type is checked here.
fn validate_object(schema: &Value, object: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    validate(schema, object, "", &mut errors);
    errors
}

/// Checks `value` against `schema` and appends one message per problem, naming the path.
pub fn validate(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            errors.push(format!("{path}: expected an integer or a string, got {value}"));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            errors.push(format!("{path}: {value} is not one of {}", Value::Array(allowed.clone())));
        }
    }
    match schema["type"].as_str() {
        Some("object") => {
            let Some(map) = value.as_object() else {
                errors.push(format!("{path}: expected an object, got {value}"));
                return;
            };
            for required in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if !map.contains_key(required) {
                    errors.push(format!("{path}.{required}: required field missing"));
                }
            }
            let properties = schema["properties"].as_object();
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
            for (key, child) in map {
                let child_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                if path.is_empty() && key == "metadata" {
                    if !child.is_object() {
                        errors.push("metadata: expected an object".into());
                    }
                    continue;
                }
                if let Some(child_schema) = properties.and_then(|p| p.get(key)) {
                    validate(child_schema, child, &child_path, errors);
                } else if schema["additionalProperties"].is_object() {
                    validate(&schema["additionalProperties"], child, &child_path, errors);
                } else if !preserve {
                    errors.push(format!("{child_path}: unknown field"));
                }
            }
        }
        Some("array") => match value.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    validate(&schema["items"], item, &format!("{path}[{i}]"), errors);
                }
            }
            None => errors.push(format!("{path}: expected an array, got {value}")),
        },
        Some("string") if !value.is_string() => errors.push(format!("{path}: expected a string, got {value}")),
        Some("integer") if !(value.is_i64() || value.is_u64()) => errors.push(format!("{path}: expected an integer, got {value}")),
        Some("number") if !value.is_number() => errors.push(format!("{path}: expected a number, got {value}")),
        Some("boolean") if !value.is_boolean() => errors.push(format!("{path}: expected a boolean, got {value}")),
        _ => {}
    }
}
