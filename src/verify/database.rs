//! Checks that run on a restored database over tokio-postgres: recovery finished, the data
//! boundary, schema presence, the policy's SQL assertions and cross-component references.
//!
//! Every query result is read as PostgreSQL's text output (the simple query protocol), so a
//! check accepts any column type: `count(*)` is a `bigint`, `sum(...)` a `numeric`, and both
//! compare as numbers. The session sets `TimeZone` to UTC and `DateStyle` to ISO, so
//! timestamps come back as `2026-12-05 04:00:00.123+00`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, SimpleQueryMessage, Socket};

use crate::policy::{DataBoundary, QueryCheck, ReferenceCheck, SchemaCheck};
use crate::repository::manifest::Manifest;

/// Session settings of every check connection. Read-only transactions keep a check query
/// from changing the restored data that later checks read.
const SESSION_SETTINGS: &str =
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET default_transaction_read_only = on";

/// Missing or mismatched references that a check's details list. The rest are only counted.
const LISTED_REFERENCES: usize = 20;

/// Connects to a restored instance through its Unix socket.
pub async fn connect(socket_dir: &Path, port: u16, user: &str, dbname: &str, password: Option<&str>) -> Result<Client, String> {
    let mut config = tokio_postgres::Config::new();
    config.host_path(socket_dir).port(port);
    finish_connect(config, user, dbname, password, tokio_postgres::NoTls).await
}

/// Connects to a restored instance over TCP, such as a scratch CNPG cluster's service.
///
/// With `ca_pem`, the connection uses TLS whenever the server offers it (libpq's
/// `sslmode=prefer`), and the server certificate must chain to a certificate of `ca_pem` and
/// cover `host`. A certificate that does not verify fails the connection: it never falls back
/// to plain text. Only a server that declines TLS gets a plain connection. Without `ca_pem` the
/// connection is plain.
pub async fn connect_tcp(
    host: &str,
    port: u16,
    user: &str,
    dbname: &str,
    password: Option<&str>,
    ca_pem: Option<&[u8]>,
) -> Result<TcpSession, String> {
    let mut config = tokio_postgres::Config::new();
    config.host(host).port(port);
    let client = match ca_pem {
        Some(pem) => {
            config.ssl_mode(tokio_postgres::config::SslMode::Prefer);
            finish_connect(config, user, dbname, password, tls_connector(pem)?).await?
        }
        None => finish_connect(config, user, dbname, password, tokio_postgres::NoTls).await?,
    };
    // The server reports whether the session is encrypted, so a plain session is never reported as TLS.
    let tls = single_value(&client, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await
        .map_err(|e| format!("cannot read whether the connection uses TLS: {e}"))?;
    Ok(TcpSession { client, tls: tls.as_deref() == Some("t") })
}

/// A TCP connection to a restored instance.
pub struct TcpSession {
    pub client: Client,
    /// Whether the server reports the session as encrypted (`pg_stat_ssl.ssl`).
    pub tls: bool,
}

/// Builds a rustls connector that trusts only the certificates of `ca_pem`.
fn tls_connector(ca_pem: &[u8]) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem) {
        let certificate = certificate.map_err(|e| format!("the CA certificate is not valid PEM: {e}"))?;
        roots.add(certificate).map_err(|e| format!("the CA certificate is invalid: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA data contains no PEM certificate".to_owned());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

async fn finish_connect<T>(mut config: tokio_postgres::Config, user: &str, dbname: &str, password: Option<&str>, tls: T) -> Result<Client, String>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    config.user(user).dbname(dbname).application_name("visage-dr verify").connect_timeout(Duration::from_secs(10));
    if let Some(password) = password {
        config.password(password);
    }
    let (client, connection) = config
        .connect(tls)
        .await
        .map_err(|e| format!("cannot connect to the restored instance as {user:?} to database {dbname:?}: {}", error_text(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "check connection closed");
        }
    });
    client.batch_execute(SESSION_SETTINGS).await.map_err(|e| error_text(&e))?;
    Ok(client)
}

/// Returns PostgreSQL's own message of a failed query, which `Display` of the client error
/// leaves out.
pub fn error_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

/// Rows of a query as text, one `Option<String>` per column (`None` for NULL).
pub async fn query_text(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let messages = client.simple_query(sql).await.map_err(|e| format!("the query failed: {}", error_text(&e)))?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some((0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect()),
            _ => None,
        })
        .collect())
}

/// The single value of a query that must return one row.
async fn single_value(client: &Client, sql: &str) -> Result<Option<String>, String> {
    let rows = query_text(client, sql).await?;
    match rows.as_slice() {
        [row] => Ok(row.first().cloned().flatten()),
        [] => Err("the query returned no row; it must return exactly one".to_owned()),
        more => Err(format!("the query returned {} rows; it must return exactly one", more.len())),
    }
}

/// Parses PostgreSQL's ISO text of a `timestamptz` (`2026-12-05 04:00:00.5+00`) or an RFC 3339
/// time. A `timestamp` without time zone is read as UTC, and the returned flag is then true.
pub fn parse_time(text: &str) -> Option<(DateTime<Utc>, bool)> {
    let text = text.trim();
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Some((t.with_timezone(&Utc), false));
        }
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some((t.with_timezone(&Utc), false));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").ok().map(|t| (t.and_utc(), true))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    super::rfc3339(t)
}

/// Findings of the recovery check.
pub struct RecoveryState {
    /// Commit time of the last replayed transaction.
    pub last_replayed: Option<DateTime<Utc>>,
}

/// Checks that recovery finished and the instance was promoted: `pg_is_in_recovery()` is
/// false. An instance paused at its target fails, with details that name the pause.
pub async fn check_recovery(client: &Client) -> (Result<String, String>, RecoveryState) {
    let mut state = RecoveryState { last_replayed: None };
    let in_recovery = match single_value(client, "SELECT pg_is_in_recovery()").await {
        Ok(value) => value.as_deref() == Some("t"),
        Err(e) => return (Err(e), state),
    };
    // After promotion this keeps the commit time of the last transaction recovery applied.
    if let Ok(Some(text)) = single_value(client, "SELECT pg_last_xact_replay_timestamp()").await {
        state.last_replayed = parse_time(&text).map(|(t, _)| t);
    }
    let replayed = state
        .last_replayed
        .map(|t| format!("the last replayed transaction committed at {}", rfc3339(t)))
        .unwrap_or_else(|| "no transaction was replayed after the base backup".to_owned());
    if !in_recovery {
        return (Ok(format!("pg_is_in_recovery() is false: recovery finished and the instance was promoted; {replayed}")), state);
    }
    let pause = single_value(client, "SELECT pg_get_wal_replay_pause_state()").await.ok().flatten();
    let outcome = if pause.as_deref() == Some("paused") {
        Err(format!(
            "recovery is paused at its target and the instance was not promoted ({replayed}); \
             a paused instance serves no writes, so set recovery_target_action to promote"
        ))
    } else {
        Err(format!("pg_is_in_recovery() is true: the instance is still replaying WAL ({replayed})"))
    };
    (outcome, state)
}

/// Checks the data boundary: the query's value is at or before `target`, so the restore
/// contains no row newer than the target.
pub async fn check_data_boundary(client: &Client, boundary: &DataBoundary, target: DateTime<Utc>) -> Result<String, String> {
    let value = single_value(client, &boundary.query).await?;
    let Some(value) = value else {
        return Err(format!("the query `{}` returned NULL, so the restored data has no boundary; check that the table has rows at the target time", boundary.query));
    };
    let Some((newest, assumed_utc)) = parse_time(&value) else {
        return Err(format!("the query returned {value:?}, which is not a timestamp; return a timestamptz such as max(created_at)"));
    };
    let zone = if assumed_utc { " (a timestamp without time zone, read as UTC)" } else { "" };
    let gap = (target - newest).num_milliseconds() as f64 / 1000.0;
    if newest <= target {
        Ok(format!(
            "newest row at {}{zone}, {} before the target; no row is newer than the target",
            rfc3339(newest),
            crate::report::duration_text(gap)
        ))
    } else {
        Err(format!(
            "newest row at {}{zone} is {} after the target {}: the restore holds data newer than the target",
            rfc3339(newest),
            crate::report::duration_text(-gap),
            rfc3339(target)
        ))
    }
}

/// Checks a policy SQL assertion: the query's single value meets the expectation.
pub async fn check_assertion(client: &Client, check: &QueryCheck) -> Result<String, String> {
    let value = single_value(client, &check.query).await?;
    let Some(value) = value else {
        return Err(format!("the query returned NULL, which does not meet {}", check.expect));
    };
    if check.expect.is_numeric() && value.trim().parse::<f64>().is_err() {
        return Err(format!("the query returned {value:?}, which is not a number, so it cannot meet {}", check.expect));
    }
    if check.expect.accepts_text(&value) {
        Ok(format!("value {value} meets {}", check.expect))
    } else {
        Err(format!("value {value} does not meet {}", check.expect))
    }
}

/// Checks that the listed tables and extensions exist.
pub async fn check_schema(client: &Client, schema: &SchemaCheck) -> Result<String, String> {
    let mut missing_tables = Vec::new();
    for table in &schema.tables {
        let row = client
            .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[table])
            .await
            .map_err(|e| format!("looking up table {table:?} failed: {}", error_text(&e)))?;
        if !row.get::<_, bool>(0) {
            missing_tables.push(table.as_str());
        }
    }
    let mut missing_extensions = Vec::new();
    for extension in &schema.extensions {
        let row = client
            .query_one("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = $1::text)", &[extension])
            .await
            .map_err(|e| format!("looking up extension {extension:?} failed: {}", error_text(&e)))?;
        if !row.get::<_, bool>(0) {
            missing_extensions.push(extension.as_str());
        }
    }
    if missing_tables.is_empty() && missing_extensions.is_empty() {
        return Ok(format!(
            "{} table(s) and {} extension(s) present: {}",
            schema.tables.len(),
            schema.extensions.len(),
            schema.tables.iter().chain(&schema.extensions).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let mut problems = Vec::new();
    if !missing_tables.is_empty() {
        problems.push(format!("missing table(s): {}", missing_tables.join(", ")));
    }
    if !missing_extensions.is_empty() {
        problems.push(format!("missing extension(s): {}", missing_extensions.join(", ")));
    }
    Err(problems.join("; "))
}

/// Checks that every key the reference query returns exists in `manifest`, the bucket
/// snapshot chosen for the same target. A second column, when the query returns one, is the
/// size the database expects, and must match the snapshot's.
pub async fn check_references(client: &Client, reference: &ReferenceCheck, manifest: &Manifest) -> Result<String, String> {
    let rows = query_text(client, &reference.query).await?;
    let sizes: HashMap<&str, u64> = manifest.entries.iter().map(|e| (e.key.as_str(), e.size)).collect();

    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut nulls = 0usize;
    let mut with_size = 0usize;
    for row in &rows {
        let Some(Some(key)) = row.first() else {
            nulls += 1;
            continue;
        };
        let Some(actual) = sizes.get(key.as_str()) else {
            missing.push(key.as_str());
            continue;
        };
        if let Some(Some(expected)) = row.get(1) {
            with_size += 1;
            match expected.trim().parse::<u64>() {
                Ok(expected) if expected == *actual => {}
                Ok(expected) => mismatched.push(format!("{key:?} ({expected} bytes in the database, {actual} in the snapshot)")),
                Err(_) => mismatched.push(format!("{key:?} (the database size {expected:?} is not a number)")),
            }
        }
    }

    let referenced = rows.len() - nulls;
    let null_note = if nulls > 0 { format!("; {nulls} row(s) with a NULL key were skipped") } else { String::new() };
    if missing.is_empty() && mismatched.is_empty() {
        let size_note = if with_size > 0 { " with matching sizes" } else { "" };
        return Ok(format!(
            "{referenced} referenced key(s), all present in snapshot {} of bucket {}{size_note}{null_note}",
            manifest.id, reference.bucket
        ));
    }

    let mut problems = Vec::new();
    if !missing.is_empty() {
        let listed: Vec<String> = missing.iter().take(LISTED_REFERENCES).map(|k| format!("{k:?}")).collect();
        let more = missing.len().saturating_sub(LISTED_REFERENCES);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        problems.push(format!(
            "{} of {referenced} referenced key(s) are missing from snapshot {} of bucket {}: {}{more}",
            missing.len(),
            manifest.id,
            reference.bucket,
            listed.join(", ")
        ));
    }
    if !mismatched.is_empty() {
        let more = mismatched.len().saturating_sub(LISTED_REFERENCES);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        problems.push(format!(
            "{} key(s) differ in size: {}{more}",
            mismatched.len(),
            mismatched.iter().take(LISTED_REFERENCES).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    Err(format!("{}{null_note}", problems.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn parse_time_reads_postgres_output() {
        let cases = [
            ("2026-12-05 04:00:00+00", Utc.with_ymd_and_hms(2026, 12, 5, 4, 0, 0).unwrap(), false),
            ("2026-12-05 04:00:00.25+00", Utc.with_ymd_and_hms(2026, 12, 5, 4, 0, 0).unwrap() + chrono::Duration::milliseconds(250), false),
            ("2026-12-05 06:00:00+02", Utc.with_ymd_and_hms(2026, 12, 5, 4, 0, 0).unwrap(), false),
            ("2026-12-05 04:00:00+05:30", Utc.with_ymd_and_hms(2026, 12, 4, 22, 30, 0).unwrap(), false),
            ("2026-12-05T04:00:00Z", Utc.with_ymd_and_hms(2026, 12, 5, 4, 0, 0).unwrap(), false),
            ("2026-12-05 04:00:00.5", Utc.with_ymd_and_hms(2026, 12, 5, 4, 0, 0).unwrap() + chrono::Duration::milliseconds(500), true),
        ];
        for (text, expected, assumed) in cases {
            assert_eq!(parse_time(text), Some((expected, assumed)), "{text}");
        }
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("42"), None);
    }

    #[test]
    fn tls_connector_rejects_bad_ca() {
        let empty = tls_connector(b"").err().expect("an empty CA was accepted");
        assert!(empty.contains("no PEM certificate"), "{empty}");
        let text = tls_connector(b"not a certificate").err().expect("a CA without PEM was accepted");
        assert!(text.contains("no PEM certificate"), "{text}");
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let invalid = tls_connector(garbage).err().expect("a CA that is not a certificate was accepted");
        assert!(invalid.contains("the CA certificate is invalid"), "{invalid}");
    }
}
