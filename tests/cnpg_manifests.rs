//! Every manifest the cnpg driver generates passes CNPG's CRD schemas with unknown fields
//! rejected, and the schema check itself rejects what it must.

#[path = "common/fake_kube/schema.rs"]
#[allow(dead_code)]
mod schema;

use chrono::Utc;
use schema::CrdSchemas;
use serde_json::{json, Value};
use visage_dr::cnpg::backup::{backup_manifest, Target};
use visage_dr::cnpg::restore::{cluster_manifest, RestoreSettings};
use visage_dr::cnpg::scratch;
use visage_dr::postgres::config::{CnpgMethod, DatabaseSpec, Driver, ObjectStore};
use visage_dr::postgres::target_time::TargetTime;

fn schemas() -> Option<CrdSchemas> {
    schema::crd_dir().map(|dir| CrdSchemas::load(&dir))
}

fn spec(method: CnpgMethod) -> DatabaseSpec {
    DatabaseSpec {
        name: "app".into(),
        driver: Driver::Cnpg,
        object_store: ObjectStore {
            destination_path: "s3://pg-backups/prod".into(),
            server_name: "visage-db".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: None,
            credentials_secret: Some("pg-backups-s3".into()),
            access_key_id_file: None,
            secret_access_key_file: None,
            barman_object_name: Some("pg-backups".into()),
        },
        schedule: None,
        retention: None,
        connection: None,
        cluster: Some("visage-db".into()),
        namespace: Some("visage".into()),
        method: Some(method),
    }
}

fn settings(recover_to_end_of_archive: bool) -> RestoreSettings {
    RestoreSettings {
        name: "visage-db-pitr".into(),
        namespace: "visage".into(),
        target: TargetTime::parse("2026-05-28T12:00:00.123456Z", Utc::now()).unwrap(),
        recover_to_end_of_archive,
        backup_id: "20260528T110000".into(),
        instances: 1,
        storage_size: "10Gi".into(),
        image_name: Some("ghcr.io/cloudnative-pg/postgresql:15".into()),
    }
}

fn assert_valid(errors: Vec<String>, what: &str, manifest: &Value) {
    assert!(errors.is_empty(), "{what} fails the CRD schema: {errors:?}\n{manifest:#}");
}

#[test]
fn backup_manifests_match_crd() {
    let Some(schemas) = schemas() else { return };
    for method in [CnpgMethod::BarmanObjectStore, CnpgMethod::Plugin] {
        let target = Target { namespace: "visage".into(), cluster: "visage-db".into(), method };
        let manifest = serde_json::to_value(backup_manifest(&target, Utc::now())).unwrap();
        assert_valid(schemas.validate_backup(&manifest), &format!("Backup ({method:?})"), &manifest);
    }
}

#[test]
fn recovery_cluster_manifests_match_crd() {
    let Some(schemas) = schemas() else { return };
    for method in [CnpgMethod::BarmanObjectStore, CnpgMethod::Plugin] {
        for to_end in [false, true] {
            let cluster = cluster_manifest(&spec(method), &settings(to_end)).unwrap();
            let manifest = serde_json::to_value(&cluster).unwrap();
            assert_valid(schemas.validate_cluster(&manifest), &format!("Cluster ({method:?}, end of archive {to_end})"), &manifest);
        }
    }
}

#[test]
fn recovery_target_time_is_canonical() {
    let cluster = cluster_manifest(&spec(CnpgMethod::BarmanObjectStore), &settings(false)).unwrap();
    let manifest = serde_json::to_value(&cluster).unwrap();
    let target = &manifest["spec"]["bootstrap"]["recovery"]["recoveryTarget"];
    assert_eq!(target["targetTime"], "2026-05-28 12:00:00.123456+00:00");
    assert_eq!(target["backupID"], "20260528T110000");
    let to_end = serde_json::to_value(cluster_manifest(&spec(CnpgMethod::BarmanObjectStore), &settings(true)).unwrap()).unwrap();
    assert!(to_end["spec"]["bootstrap"]["recovery"]["recoveryTarget"].get("targetTime").is_none(), "{to_end:#}");
}

#[test]
fn reference_backups_pass_schema() {
    let Some(dir) = schema::crd_dir() else { return };
    let schemas = CrdSchemas::load(&dir);
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("backup-") && name.ends_with(".json")) {
            continue;
        }
        let object: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_valid(schemas.validate_backup(&object), &name, &object);
        let typed: visage_dr::cnpg::resources::Backup = serde_json::from_value(object.clone()).unwrap();
        assert!(!typed.phase().is_empty(), "{name}: no phase read");
        let instance = typed.status.as_ref().and_then(|s| s.instance_id.as_ref());
        assert!(instance.and_then(|i| i.container_id.as_ref()).is_some(), "{name}: status.instanceID.ContainerID not read");
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} sample Backups found in {}", dir.display());
}

#[test]
fn schema_rejects_unknown_and_wrong_fields() {
    let Some(schemas) = schemas() else { return };
    let mut manifest = serde_json::to_value(cluster_manifest(&spec(CnpgMethod::BarmanObjectStore), &settings(false)).unwrap()).unwrap();
    manifest["spec"]["bootstrap"]["recovery"]["recoveryTarget"]["targetTimes"] = json!("2026-05-28 12:00:00+00:00");
    let errors = schemas.validate_cluster(&manifest);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("spec.bootstrap.recovery.recoveryTarget.targetTimes: unknown field"), "{errors:?}");

    let backup = json!({
        "apiVersion": "postgresql.cnpg.io/v1", "kind": "Backup", "metadata": {"name": "b"},
        "spec": {"cluster": {"name": "c"}, "method": "snapshot"},
    });
    let errors = schemas.validate_backup(&backup);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("spec.method:"), "{errors:?}");

    let missing = json!({"apiVersion": "postgresql.cnpg.io/v1", "kind": "Backup", "metadata": {"name": "b"}, "spec": {}});
    let errors = schemas.validate_backup(&missing);
    assert!(errors.iter().any(|e| e.contains("spec.cluster: required field missing")), "{errors:?}");
}

#[test]
fn scratch_manifest_matches_crd() {
    let Some(schemas) = schemas() else { return };
    let started = Utc::now();
    for (method, to_end) in [(CnpgMethod::BarmanObjectStore, false), (CnpgMethod::Plugin, true)] {
        let settings = RestoreSettings {
            name: scratch::scratch_name(started, 1),
            namespace: "scratch".into(),
            ..settings(to_end)
        };
        let manifest = scratch::scratch_manifest(&spec(method), &settings, started + chrono::Duration::hours(1)).unwrap();
        assert_valid(schemas.validate_cluster(&manifest), &format!("the {method:?} scratch Cluster"), &manifest);
        assert!(manifest["spec"].get("backup").is_none(), "{manifest:#}");
    }

    // The schema check rejects an unknown field, so the checks above can fail.
    let settings = RestoreSettings {
        name: scratch::scratch_name(started, 0),
        namespace: "scratch".into(),
        storage_size: "1Gi".into(),
        image_name: None,
        ..settings(false)
    };
    let mut invalid = scratch::scratch_manifest(&spec(CnpgMethod::BarmanObjectStore), &settings, started).unwrap();
    invalid["spec"]["resources"]["requestz"] = json!({"cpu": "1"});
    assert!(!schemas.validate_cluster(&invalid).is_empty(), "an unknown resources field passed the schema");
}
