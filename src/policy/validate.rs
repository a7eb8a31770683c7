//! Checks a [`Document`] and builds the [`Policy`]: values that serde accepts but that cannot
//! work, such as an empty retention block, a duplicate source or a database driver without
//! the fields it needs.

use std::collections::HashMap;

use chrono_tz::Tz;
use serde_saphyr::Spanned;

use super::diagnostics::{yaml_error, Position, Report};
use super::document::{
    BucketDocument, CheckpointsDocument, DatabaseFieldPositions, DatabasePositions, Document,
    PruneDocument, RepositoryDocument, VerificationDocument,
};
use super::{
    Bucket, Checkpoints, Database, ParsedPolicy, Policy, PolicyError, Prune, Repository, S3Options,
    SchemaCheck, Verification, DEFAULT_GC_GRACE, DEFAULT_SAMPLE_OBJECTS,
};
use crate::postgres::config::{DatabaseSpec, Driver};
use crate::retention::RetentionRules;
use crate::schedule::{parse_time_zone, CronExpr, Schedule};
use crate::units::Duration;

/// Parses and checks a policy text. See [`Policy::parse`].
pub(super) fn parse(text: &str, file: &str) -> Result<ParsedPolicy, PolicyError> {
    let document: Document =
        serde_saphyr::from_str(text).map_err(|error| PolicyError::Invalid {
            problems: vec![yaml_error(file, &error)],
        })?;
    // If this second read fails, database problems are reported at the start of their entry.
    let positions: DatabasePositions = serde_saphyr::from_str(text).unwrap_or_default();

    let mut checker = Checker {
        report: Report::new(file),
        timezone: Tz::UTC,
        source_ids: HashMap::new(),
    };
    let policy = checker.policy(document, positions);
    checker.report.errors.sort_by_key(|d| (d.line, d.column));
    checker.report.warnings.sort_by_key(|d| (d.line, d.column));
    if checker.report.errors.is_empty() {
        Ok(ParsedPolicy {
            policy,
            warnings: checker.report.warnings,
        })
    } else {
        Err(PolicyError::Invalid {
            problems: checker.report.errors,
        })
    }
}

struct Checker {
    report: Report,
    timezone: Tz,
    /// Source identities seen so far, with the line of their first use.
    source_ids: HashMap<String, u64>,
}

impl Checker {
    fn policy(&mut self, document: Document, positions: DatabasePositions) -> Policy {
        if let Some(name) = &document.timezone {
            match parse_time_zone(&name.value) {
                Ok(tz) => self.timezone = tz,
                Err(error) => self.report.error(Position::of(name), error.to_string()),
            }
        }

        let repository = self.repository(document.repository);
        let source_s3 = document
            .source_s3
            .map(|options| self.s3_options(options, "source_s3"));
        let default_s3 = source_s3.clone().unwrap_or_default();

        let mut postgres = Vec::new();
        for (index, entry) in document.postgres.into_iter().enumerate() {
            let fields = positions.postgres.get(index);
            postgres.push(self.database(entry, fields, &postgres));
        }
        let mut buckets = Vec::new();
        for entry in document.buckets {
            let bucket = self.bucket(entry, &default_s3, &buckets);
            buckets.push(bucket);
        }
        let checkpoints = document.checkpoints.map(|c| self.checkpoints(c));

        if postgres.is_empty() && buckets.is_empty() && checkpoints.is_none() {
            self.report.error(
                Position::START,
                "the policy backs up nothing: add at least one entry to `postgres` or `buckets`, \
                 or a `checkpoints` section",
            );
        }

        let prune = document.prune.and_then(|p| self.prune(p));
        let verification = document
            .verification
            .and_then(|v| self.verification(v, &postgres, &buckets));

        Policy {
            repository,
            timezone: self.timezone,
            postgres,
            buckets,
            source_s3,
            checkpoints,
            prune,
            verification,
        }
    }

    fn repository(&mut self, spanned: Spanned<RepositoryDocument>) -> Repository {
        let document = spanned.value;
        let url = &document.url;
        let is_s3 = url.value.starts_with("s3://");
        if let Some(path) = url.value.strip_prefix("file://") {
            if !path.starts_with('/') {
                self.report.error(
                    Position::of(url),
                    format!(
                        "invalid repository URL `{}`: a file URL needs an absolute path, with \
                         three slashes as in `file:///var/lib/visage-dr/repo`",
                        url.value
                    ),
                );
            }
        } else if let Some(rest) = url.value.strip_prefix("s3://") {
            let bucket = rest.split('/').next().unwrap_or_default();
            if let Err(reason) = check_bucket_name(bucket) {
                self.report.error(
                    Position::of(url),
                    format!("invalid repository URL `{}`: {reason}", url.value),
                );
            }
        } else {
            self.report.error(
                Position::of(url),
                format!(
                    "invalid repository URL `{}`: use `s3://bucket/prefix` or \
                     `file:///absolute/path`",
                    url.value
                ),
            );
        }

        let s3 = document.s3.map(|options| {
            if !is_s3 {
                self.report.error(
                    Position::of(&options),
                    "`repository.s3` applies only to an `s3://` repository URL; remove it",
                );
            }
            self.s3_options(options, "repository.s3")
        });
        Repository {
            url: url.value.clone(),
            s3,
        }
    }

    fn s3_options(&mut self, spanned: Spanned<S3Options>, field: &str) -> S3Options {
        let at = Position::of(&spanned);
        let options = spanned.value;
        if let Some(endpoint) = &options.endpoint {
            if let Err(reason) = check_endpoint(endpoint) {
                self.report
                    .error(at, format!("invalid `{field}.endpoint`: {reason}"));
            }
        }
        if options.region.as_deref() == Some("") {
            self.report.error(
                at,
                format!("`{field}.region` is empty; remove it to use AWS_REGION or us-east-1"),
            );
        }
        options
    }

    fn database(
        &mut self,
        entry: Spanned<DatabaseSpec>,
        fields: Option<&DatabaseFieldPositions>,
        earlier: &[Database],
    ) -> Database {
        let entry_at = Position::of(&entry);
        let at = |field: Option<&Spanned<serde::de::IgnoredAny>>| {
            field.map(Position::of).unwrap_or(entry_at)
        };
        let field =
            |select: fn(&DatabaseFieldPositions) -> Option<&Spanned<serde::de::IgnoredAny>>| {
                at(fields.and_then(select))
            };
        let spec = entry.value;
        let name_at = field(|f| f.name.as_ref());

        if spec.name.trim().is_empty() {
            self.report.error(name_at, "database `name` is empty");
        } else if earlier.iter().any(|d| d.spec.name == spec.name) {
            self.report.error(
                name_at,
                format!(
                    "duplicate database name `{}`; names must be unique",
                    spec.name
                ),
            );
        }

        let source_id = match spec.driver {
            Driver::Cnpg => {
                let driver_at = field(|f| f.driver.as_ref());
                for (value, key) in [(&spec.cluster, "cluster"), (&spec.namespace, "namespace")] {
                    if value.is_none() {
                        self.report.error(
                            driver_at,
                            format!(
                                "database `{}` uses `driver: cnpg` but has no `{key}`; set the \
                                 CNPG Cluster's {key}",
                                spec.name
                            ),
                        );
                    }
                }
                if let Some(cluster) = &spec.cluster {
                    if let Err(reason) = check_kubernetes_name(cluster, 253) {
                        self.report.error(
                            field(|f| f.cluster.as_ref()),
                            format!("invalid `cluster` `{cluster}`: {reason}"),
                        );
                    }
                }
                if let Some(namespace) = &spec.namespace {
                    if let Err(reason) = check_kubernetes_label(namespace) {
                        self.report.error(
                            field(|f| f.namespace.as_ref()),
                            format!("invalid `namespace` `{namespace}`: {reason}"),
                        );
                    }
                }
                if spec.connection.is_some() {
                    self.report.error(
                        field(|f| f.connection.as_ref()),
                        "`connection` applies only to `driver: local`; a CNPG cluster is \
                         reached through Kubernetes",
                    );
                }
                format!(
                    "cnpg:{}/{}",
                    spec.namespace.as_deref().unwrap_or_default(),
                    spec.cluster.as_deref().unwrap_or_default()
                )
            }
            Driver::Local => {
                if spec.connection.is_none() {
                    self.report.error(
                        field(|f| f.driver.as_ref()),
                        format!(
                            "database `{}` uses `driver: local` but has no `connection`; add \
                             `connection: {{ host, port, user }}`",
                            spec.name
                        ),
                    );
                }
                for (is_set, key, select) in [
                    (
                        spec.cluster.is_some(),
                        "cluster",
                        (|f| f.cluster.as_ref())
                            as fn(
                                &DatabaseFieldPositions,
                            )
                                -> Option<&Spanned<serde::de::IgnoredAny>>,
                    ),
                    (spec.namespace.is_some(), "namespace", |f| {
                        f.namespace.as_ref()
                    }),
                    (spec.method.is_some(), "method", |f| f.method.as_ref()),
                ] {
                    if is_set {
                        self.report.error(
                            field(select),
                            format!("`{key}` applies only to `driver: cnpg`; remove it"),
                        );
                    }
                }
                format!("postgres:{}", spec.name)
            }
        };

        let store = &spec.object_store;
        let store_at = fields
            .and_then(|f| f.object_store.as_ref())
            .and_then(|store| store.destination_path.as_ref())
            .map(Position::of)
            .unwrap_or(entry_at);
        match store.destination_path.strip_prefix("s3://") {
            Some(rest) => {
                let bucket = rest.split('/').next().unwrap_or_default();
                if let Err(reason) = check_bucket_name(bucket) {
                    self.report.error(
                        store_at,
                        format!(
                            "invalid `object_store.destination_path` `{}`: {reason}",
                            store.destination_path
                        ),
                    );
                }
            }
            None => self.report.error(
                store_at,
                format!(
                    "invalid `object_store.destination_path` `{}`: use `s3://bucket/prefix`",
                    store.destination_path
                ),
            ),
        }
        if store.server_name.trim().is_empty() {
            self.report
                .error(store_at, "`object_store.server_name` is empty");
        }
        if let Some(endpoint) = &store.endpoint {
            if let Err(reason) = check_endpoint(endpoint) {
                let endpoint_at = fields
                    .and_then(|f| f.object_store.as_ref())
                    .and_then(|store| store.endpoint.as_ref())
                    .map(Position::of)
                    .unwrap_or(entry_at);
                self.report.error(
                    endpoint_at,
                    format!("invalid `object_store.endpoint`: {reason}"),
                );
            }
        }

        let schedule = spec.schedule.as_ref().and_then(|expr| {
            let label = format!("database `{}`", spec.name);
            self.schedule(expr, field(|f| f.schedule.as_ref()), &label)
        });

        let retention_at = field(|f| f.retention.as_ref());
        match &spec.retention {
            Some(rules) => self.retention(rules, retention_at),
            None => self.report.warn(
                entry_at,
                format!(
                    "database `{}` has no `retention`, so its backups are never pruned",
                    spec.name
                ),
            ),
        }

        self.claim_source(&source_id, entry_at);
        Database {
            spec,
            source_id,
            schedule,
        }
    }

    fn bucket(
        &mut self,
        entry: Spanned<BucketDocument>,
        default_s3: &S3Options,
        earlier: &[Bucket],
    ) -> Bucket {
        let entry_at = Position::of(&entry);
        let document = entry.value;
        let name = &document.name;

        if name.value.trim().is_empty() {
            self.report
                .error(Position::of(name), "bucket `name` is empty");
        } else if earlier.iter().any(|b| b.name == name.value) {
            self.report.error(
                Position::of(name),
                format!(
                    "duplicate bucket name `{}`; names must be unique",
                    name.value
                ),
            );
        }
        if let Err(reason) = check_bucket_name(&document.bucket.value) {
            self.report.error(
                Position::of(&document.bucket),
                format!("invalid bucket name `{}`: {reason}", document.bucket.value),
            );
        }

        let label = format!("bucket `{}`", name.value);
        let schedule = document
            .schedule
            .as_ref()
            .and_then(|expr| self.schedule(&expr.value, Position::of(expr), &label));
        self.retention(&document.retention.value, Position::of(&document.retention));
        let s3 = document
            .s3
            .map(|options| self.s3_options(options, "s3"))
            .unwrap_or_default()
            .or(default_s3);

        let source_id = format!("s3:{}", document.bucket.value);
        self.claim_source(&source_id, entry_at);
        Bucket {
            name: name.value.clone(),
            bucket: document.bucket.value,
            prefix: document.prefix,
            schedule,
            retention: document.retention.value,
            s3,
            source_id,
        }
    }

    fn checkpoints(&mut self, spanned: Spanned<CheckpointsDocument>) -> Checkpoints {
        let document = spanned.value;
        self.retention(&document.retention.value, Position::of(&document.retention));
        if let Some(size) = &document.max_size {
            if size.value.bytes() == 0 {
                self.report.error(
                    Position::of(size),
                    "`max_size` is 0, which rejects every checkpoint; remove it for no limit",
                );
            }
        }
        let schedule = document
            .schedule
            .as_ref()
            .and_then(|expr| self.schedule(&expr.value, Position::of(expr), "checkpoints"));
        Checkpoints {
            retention: document.retention.value,
            max_size: document.max_size.map(|size| size.value),
            schedule,
        }
    }

    fn prune(&mut self, spanned: Spanned<PruneDocument>) -> Option<Prune> {
        let document = spanned.value;
        let schedule = self.schedule(
            &document.schedule.value,
            Position::of(&document.schedule),
            "prune",
        );
        if let Some(age) = &document.max_snapshot_age {
            if age.value.is_zero() {
                self.report.error(
                    Position::of(age),
                    "`max_snapshot_age` is zero, so prune would skip every source; remove it to \
                     prune without this check",
                );
            }
        }
        let gc_grace = match &document.gc_grace {
            Some(grace) => {
                self.fixed_duration(grace, "gc_grace");
                grace.value
            }
            None => DEFAULT_GC_GRACE,
        };
        Some(Prune {
            schedule: schedule?,
            max_snapshot_age: document.max_snapshot_age.map(|age| age.value),
            gc_grace,
        })
    }

    fn verification(
        &mut self,
        spanned: Spanned<VerificationDocument>,
        postgres: &[Database],
        buckets: &[Bucket],
    ) -> Option<Verification> {
        let section_at = Position::of(&spanned);
        let document = spanned.value;
        let schedule = self.schedule(
            &document.schedule.value,
            Position::of(&document.schedule),
            "verification",
        );

        let timeout = self.fixed_duration(&document.timeout, "timeout");
        if timeout.is_some_and(|t| t.is_zero()) {
            self.report.error(
                Position::of(&document.timeout),
                "`timeout` is zero; set the time a verification run may take, such as `30min`",
            );
        }

        if let Some(namespace) = &document.scratch_namespace {
            if let Err(reason) = check_kubernetes_label(&namespace.value) {
                self.report.error(
                    Position::of(namespace),
                    format!(
                        "invalid `scratch_namespace` `{}`: {reason}",
                        namespace.value
                    ),
                );
            }
        }
        if let Some(dir) = &document.scratch_dir {
            if !dir.value.is_absolute() {
                self.report.error(
                    Position::of(dir),
                    format!(
                        "`scratch_dir` `{}` is not an absolute path",
                        dir.value.display()
                    ),
                );
            }
        }
        let uses = |driver| postgres.iter().any(|d| d.spec.driver == driver);
        if uses(Driver::Cnpg) && document.scratch_namespace.is_none() {
            self.report.error(
                section_at,
                "`verification` needs `scratch_namespace` because a database uses `driver: \
                 cnpg`; scratch clusters are created there",
            );
        }
        if document.scratch_namespace.is_none() && document.scratch_dir.is_none() {
            self.report.error(
                section_at,
                "`verification` needs `scratch_namespace` (Kubernetes) or `scratch_dir` (a \
                 local directory) to restore into",
            );
        } else if uses(Driver::Local) && document.scratch_dir.is_none() {
            self.report.error(
                section_at,
                "`verification` needs `scratch_dir` because a database uses `driver: local`; \
                 the scratch server's data directory is created there",
            );
        }

        let sample_objects = match &document.sample_objects {
            Some(count) if count.value == 0 => {
                self.report.error(
                    Position::of(count),
                    "`sample_objects` is 0; compare at least 1 object per bucket",
                );
                0
            }
            Some(count) => count.value,
            None => DEFAULT_SAMPLE_OBJECTS,
        };

        let database_names: Vec<&str> = postgres.iter().map(|d| d.spec.name.as_str()).collect();
        let bucket_names: Vec<&str> = buckets.iter().map(|b| b.name.as_str()).collect();
        if let Some(boundary) = &document.data_boundary {
            self.reference(
                &boundary.value.database,
                Position::of(boundary),
                "database",
                &database_names,
            );
        }
        for reference in &document.references {
            let at = Position::of(reference);
            self.reference(&reference.value.database, at, "database", &database_names);
            self.reference(&reference.value.bucket, at, "bucket", &bucket_names);
        }
        let mut check_names: Vec<&str> = Vec::new();
        for check in &document.checks {
            let at = Position::of(check);
            self.reference(&check.value.database, at, "database", &database_names);
            if check_names.contains(&check.value.name.as_str()) {
                self.report.error(
                    at,
                    format!(
                        "duplicate check name `{}`; names must be unique",
                        check.value.name
                    ),
                );
            }
            check_names.push(&check.value.name);
        }

        let schema = document.schema.map(|spanned| {
            let at = Position::of(&spanned);
            let schema = spanned.value;
            let database = match (&schema.database, database_names.as_slice()) {
                (Some(name), _) => {
                    self.reference(&name.value, Position::of(name), "database", &database_names);
                    name.value.clone()
                }
                (None, [only]) => (*only).to_owned(),
                (None, _) => {
                    self.report.error(
                        at,
                        "`schema` needs `database` because the policy does not have exactly one \
                         database",
                    );
                    String::new()
                }
            };
            SchemaCheck {
                database,
                tables: schema.tables,
                extensions: schema.extensions,
            }
        });

        Some(Verification {
            schedule: schedule?,
            scratch_namespace: document.scratch_namespace.map(|n| n.value),
            scratch_dir: document.scratch_dir.map(|d| d.value),
            timeout: timeout?,
            sample_objects,
            data_boundary: document.data_boundary.map(|b| b.value),
            references: document.references.into_iter().map(|r| r.value).collect(),
            schema,
            checks: document.checks.into_iter().map(|c| c.value).collect(),
        })
    }

    /// Reports `name` when it is not one of `known`, the names of the policy's `kind` entries.
    fn reference(&mut self, name: &str, at: Position, kind: &str, known: &[&str]) {
        if known.contains(&name) {
            return;
        }
        let mut message = format!("unknown {kind} `{name}`");
        match super::diagnostics::nearest(name, known) {
            Some(nearest) => message.push_str(&format!(", did you mean `{nearest}`?")),
            None if known.is_empty() => {
                message.push_str(&format!("; the policy has no {kind} entries"))
            }
            None => message.push_str(&format!(
                "; the policy's {kind} names are {}",
                known
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
        self.report.error(at, message);
    }

    /// Parses a schedule in the policy's time zone and records its warnings.
    fn schedule(&mut self, expr: &str, at: Position, label: &str) -> Option<Schedule> {
        match CronExpr::parse(expr) {
            Ok(cron) => {
                for warning in cron.warnings() {
                    self.report.warn(at, format!("{label} schedule: {warning}"));
                }
                Some(Schedule::new(cron, self.timezone))
            }
            Err(error) => {
                self.report
                    .error(at, format!("invalid {label} schedule: {error}"));
                None
            }
        }
    }

    /// Rejects a block with no rule and warns about rules that are written but set nothing.
    fn retention(&mut self, rules: &RetentionRules, at: Position) {
        if rules.is_empty() {
            self.report.error(
                at,
                "the retention block sets no rule, so it would remove every snapshot; set at \
                 least one of keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, \
                 keep_yearly, keep_within or recovery_window to a non-zero value",
            );
            return;
        }
        let counts = [
            ("keep_last", rules.keep_last),
            ("keep_hourly", rules.keep_hourly),
            ("keep_daily", rules.keep_daily),
            ("keep_weekly", rules.keep_weekly),
            ("keep_monthly", rules.keep_monthly),
            ("keep_yearly", rules.keep_yearly),
        ];
        for (name, count) in counts {
            if count == Some(0) {
                self.report.warn(
                    at,
                    format!("`{name}: 0` sets no rule; remove it or set a positive count"),
                );
            }
        }
        let durations = [
            ("keep_within", rules.keep_within),
            ("recovery_window", rules.recovery_window),
        ];
        for (name, duration) in durations {
            if duration.is_some_and(|d| d.is_zero()) {
                self.report.warn(
                    at,
                    format!("`{name}` is zero, which sets no rule; remove it or set a duration"),
                );
            }
        }
    }

    /// Converts a duration that must have a fixed length, rejecting months and years.
    fn fixed_duration(
        &mut self,
        duration: &Spanned<Duration>,
        field: &str,
    ) -> Option<std::time::Duration> {
        let value = duration.value;
        if let Some(fixed) = value.to_std() {
            return Some(fixed);
        }
        let mut message = format!(
            "`{field}: {value}` has months or years, which have no fixed length; use s, min, h, \
             d or w"
        );
        if value.months != 0 && value.years == 0 {
            message.push_str(&format!(
                ". `m` means months in every duration, so write `{}min` for minutes",
                value.months
            ));
        }
        self.report.error(Position::of(duration), message);
        None
    }

    /// Records that an entry backs up `source_id`, and reports a second entry with the same one.
    fn claim_source(&mut self, source_id: &str, at: Position) {
        if let Some(first_line) = self.source_ids.get(source_id) {
            self.report.error(
                at,
                format!(
                    "duplicate source `{source_id}`: the entry at line {first_line} backs up the \
                     same source, and two entries would mix their snapshots"
                ),
            );
        } else {
            self.source_ids.insert(source_id.to_owned(), at.line);
        }
    }
}

/// Checks an S3 bucket name against the general-purpose bucket naming rules of AWS S3.
pub(crate) fn check_bucket_name(name: &str) -> Result<(), String> {
    if name.len() < 3 || name.len() > 63 {
        return Err(format!(
            "a bucket name has 3 to 63 characters, this one has {}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '.' || *c == '-'))
    {
        return Err(format!(
            "`{c}` is not allowed; a bucket name contains lowercase letters, digits, `.` and `-`"
        ));
    }
    let first_and_last = [name.chars().next(), name.chars().last()];
    if first_and_last
        .iter()
        .flatten()
        .any(|c| !c.is_ascii_alphanumeric())
    {
        return Err("a bucket name starts and ends with a letter or digit".to_owned());
    }
    if name.contains("..") {
        return Err("a bucket name has no two adjacent periods".to_owned());
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err("a bucket name is not formatted as an IP address".to_owned());
    }
    for prefix in ["xn--", "sthree-"] {
        if name.starts_with(prefix) {
            return Err(format!("a bucket name does not start with `{prefix}`"));
        }
    }
    for suffix in ["-s3alias", "--ol-s3"] {
        if name.ends_with(suffix) {
            return Err(format!("a bucket name does not end with `{suffix}`"));
        }
    }
    Ok(())
}

/// Checks a Kubernetes namespace name: an RFC 1123 label.
fn check_kubernetes_label(name: &str) -> Result<(), String> {
    check_kubernetes_name(name, 63)?;
    if name.contains('.') {
        return Err("a namespace name contains no `.`".to_owned());
    }
    Ok(())
}

/// Checks a Kubernetes object name: an RFC 1123 subdomain of at most `max_len` characters.
fn check_kubernetes_name(name: &str, max_len: usize) -> Result<(), String> {
    if name.is_empty() || name.len() > max_len {
        return Err(format!("a name has 1 to {max_len} characters"));
    }
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let valid_ends = name
        .split('.')
        .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'));
    if !valid_chars || !valid_ends {
        return Err(
            "use lowercase letters, digits and `-`, starting and ending with a letter or digit"
                .to_owned(),
        );
    }
    Ok(())
}

/// Checks an S3 endpoint URL: `http://` or `https://` followed by a host.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| format!("`{endpoint}` does not start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("`{endpoint}` has no host"));
    }
    Ok(())
}
