//! S3 client settings shared by the repository backend and the bucket source.
//!
//! Settings come from the standard AWS environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`),
//! from `AWS_ACCESS_KEY_ID_FILE` / `AWS_SECRET_ACCESS_KEY_FILE` (mounted Kubernetes
//! Secrets), or from the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`,
//! default `~/.aws/credentials`, profile `AWS_PROFILE` or `default`). Flags and
//! policy settings override each of them separately for the source bucket and for
//! the repository, which may live on different servers.
//!
//! `AWS_REQUEST_CHECKSUM_CALCULATION=when_supported` turns on request checksums
//! for every upload; the default, `when_required`, suits Garage and older MinIO.
//!
//! No instance-metadata endpoint is ever contacted: credentials come only from the
//! places above.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use serde::{Deserialize, Serialize};

/// Region used when none is configured; Garage and MinIO default to it too.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Attempts per request, the first included. Five attempts with the SDK's
/// exponential backoff ride out a server restart of a few seconds.
const MAX_ATTEMPTS: u32 = 5;

/// Errors raised while building S3 settings or talking to an S3 server.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("cannot read {what} from {path}: {source}")]
    CredentialFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no S3 credentials for {role}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, their *_FILE variants, or a shared credentials file")]
    MissingCredentials { role: &'static str },
    #[error("invalid S3 endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("S3 endpoint {endpoint} is unreachable ({detail}); check the endpoint URL and that the server is running")]
    Unreachable { endpoint: String, detail: String },
    #[error("S3 server {endpoint} rejected the credentials for bucket {bucket:?} ({code}); check the access key id and secret key (the secret is not shown)")]
    Credentials { endpoint: String, bucket: String, code: String },
    #[error("access denied by {endpoint} on bucket {bucket:?} ({detail}); the credentials lack a permission")]
    AccessDenied { endpoint: String, bucket: String, detail: String },
    #[error("bucket {bucket:?} not found on {endpoint}; create it or check its name")]
    NoSuchBucket { endpoint: String, bucket: String },
    #[error("object {key:?} not found in bucket {bucket:?}")]
    NoSuchKey { bucket: String, key: String },
    #[error("S3 {operation} on bucket {bucket:?} key {key:?} failed at {endpoint}: {detail}")]
    Other {
        operation: &'static str,
        endpoint: String,
        bucket: String,
        key: String,
        detail: String,
    },
}

impl S3Error {
    pub fn is_not_found(&self) -> bool {
        matches!(self, S3Error::NoSuchKey { .. })
    }
}

/// Settings that override the environment for one S3 role (source or repository).
///
/// Every field is optional; an unset field falls back to the AWS environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Overrides {
    /// Endpoint URL, for example `http://127.0.0.1:3900`.
    pub endpoint: Option<String>,
    /// Signing region.
    pub region: Option<String>,
    /// File holding the access key id (a mounted Secret key).
    pub access_key_id_file: Option<PathBuf>,
    /// File holding the secret access key.
    pub secret_access_key_file: Option<PathBuf>,
    /// Path-style addressing (`endpoint/bucket/key`); on by default because
    /// self-hosted servers rarely have wildcard DNS.
    pub path_style: Option<bool>,
}

impl S3Overrides {
    /// Returns `self` with unset fields taken from `fallback`.
    pub fn or(&self, fallback: &S3Overrides) -> S3Overrides {
        S3Overrides {
            endpoint: self.endpoint.clone().or_else(|| fallback.endpoint.clone()),
            region: self.region.clone().or_else(|| fallback.region.clone()),
            access_key_id_file: self
                .access_key_id_file
                .clone()
                .or_else(|| fallback.access_key_id_file.clone()),
            secret_access_key_file: self
                .secret_access_key_file
                .clone()
                .or_else(|| fallback.secret_access_key_file.clone()),
            path_style: self.path_style.or(fallback.path_style),
        }
    }
}

/// Resolved settings for one S3 client.
#[derive(Clone)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    pub path_style: bool,
    /// Compute request checksums for every upload (`when_supported`) or only
    /// where an operation requires one (`when_required`, the default).
    pub checksums_when_supported: bool,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("path_style", &self.path_style)
            .field("checksums_when_supported", &self.checksums_when_supported)
            .finish()
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn read_secret_file(what: &'static str, path: &Path) -> Result<String, S3Error> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| S3Error::CredentialFile { what, path: path.to_owned(), source })
}

/// Reads static keys of one profile from an AWS shared credentials file.
fn shared_credentials(profile: &str) -> Option<(String, String, Option<String>)> {
    let path = env_nonempty("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| env_nonempty("HOME").map(|h| Path::new(&h).join(".aws/credentials")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let mut in_profile = false;
    let (mut key, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') && line.ends_with(']') {
            in_profile = line[1..line.len() - 1].trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_owned();
            match k.trim() {
                "aws_access_key_id" => key = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some((key?, secret?, token))
}

impl S3Settings {
    /// Resolves settings for `role` (`"source"` or `"repository"`, used in
    /// messages) from `overrides` and then the AWS environment.
    pub fn resolve(role: &'static str, overrides: &S3Overrides) -> Result<Self, S3Error> {
        let endpoint = overrides.endpoint.clone().or_else(|| env_nonempty("AWS_ENDPOINT_URL"));
        if let Some(ep) = &endpoint {
            let parsed = url::Url::parse(ep).map_err(|e| S3Error::InvalidEndpoint {
                endpoint: ep.clone(),
                reason: format!("{e}; use a URL such as http://127.0.0.1:3900"),
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(S3Error::InvalidEndpoint {
                    endpoint: ep.clone(),
                    reason: "the scheme must be http or https".into(),
                });
            }
        }
        let region = overrides
            .region
            .clone()
            .or_else(|| env_nonempty("AWS_REGION"))
            .or_else(|| env_nonempty("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| DEFAULT_REGION.to_owned());

        let file_key = match &overrides.access_key_id_file {
            Some(p) => Some(read_secret_file("the access key id", p)?),
            None => match env_nonempty("AWS_ACCESS_KEY_ID_FILE") {
                Some(p) => Some(read_secret_file("the access key id", Path::new(&p))?),
                None => None,
            },
        };
        let file_secret = match &overrides.secret_access_key_file {
            Some(p) => Some(read_secret_file("the secret access key", p)?),
            None => match env_nonempty("AWS_SECRET_ACCESS_KEY_FILE") {
                Some(p) => Some(read_secret_file("the secret access key", Path::new(&p))?),
                None => None,
            },
        };
        let (key, secret, token) = match (file_key, file_secret) {
            (Some(k), Some(s)) => (k, s, None),
            _ => match (env_nonempty("AWS_ACCESS_KEY_ID"), env_nonempty("AWS_SECRET_ACCESS_KEY")) {
                (Some(k), Some(s)) => (k, s, env_nonempty("AWS_SESSION_TOKEN")),
                _ => {
                    let profile = env_nonempty("AWS_PROFILE").unwrap_or_else(|| "default".into());
                    shared_credentials(&profile).ok_or(S3Error::MissingCredentials { role })?
                }
            },
        };
        let checksums_when_supported = match env_nonempty("AWS_REQUEST_CHECKSUM_CALCULATION").as_deref() {
            None | Some("when_required") | Some("WHEN_REQUIRED") => false,
            Some("when_supported") | Some("WHEN_SUPPORTED") => true,
            Some(other) => {
                return Err(S3Error::InvalidEndpoint {
                    endpoint: endpoint.clone().unwrap_or_default(),
                    reason: format!(
                        "AWS_REQUEST_CHECKSUM_CALCULATION is {other:?}; use when_required (the default, which Garage and older MinIO accept) or when_supported"
                    ),
                })
            }
        };
        Ok(Self {
            endpoint,
            region,
            access_key_id: key,
            secret_access_key: secret,
            session_token: token,
            path_style: overrides.path_style.unwrap_or(true),
            checksums_when_supported,
        })
    }

    /// Environment variables that give a child process, such as a barman-cloud command, these
    /// credentials and region. The values include the secret: never log them.
    pub fn credential_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("AWS_ACCESS_KEY_ID", self.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.clone()),
            ("AWS_DEFAULT_REGION", self.region.clone()),
            ("AWS_REGION", self.region.clone()),
        ];
        if let Some(token) = &self.session_token {
            env.push(("AWS_SESSION_TOKEN", token.clone()));
        }
        env
    }

    /// Returns the endpoint as shown in messages.
    pub fn endpoint_display(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| format!("the AWS S3 endpoint of region {}", self.region))
    }

    /// Builds a client. By default request checksums are computed only when
    /// an operation requires them: Garage and older MinIO reject the SDK's
    /// aws-chunked uploads with a trailing checksum over plain HTTP.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let creds = Credentials::new(
            self.access_key_id.clone(),
            self.secret_access_key.clone(),
            self.session_token.clone(),
            None,
            "visage-dr",
        );
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .credentials_provider(creds)
            .force_path_style(self.path_style)
            .request_checksum_calculation(if self.checksums_when_supported {
                RequestChecksumCalculation::WhenSupported
            } else {
                RequestChecksumCalculation::WhenRequired
            })
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(Duration::from_millis(200)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(120))
                    .build(),
            );
        if let Some(ep) = &self.endpoint {
            builder = builder.endpoint_url(ep);
        }
        aws_sdk_s3::Client::from_conf(builder.build())
    }

    /// Classifies an SDK error into an [`S3Error`] that names the endpoint,
    /// bucket and key, and never the secret.
    pub fn classify<E, R>(
        &self,
        operation: &'static str,
        bucket: &str,
        key: &str,
        err: SdkError<E, R>,
    ) -> S3Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + HttpStatus,
    {
        let endpoint = self.endpoint_display();
        let status = err.raw_response().map(|r| r.http_status());
        match &err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                return S3Error::Unreachable { endpoint, detail: error_chain(&err) };
            }
            _ => {}
        }
        let code = err.code().unwrap_or("").to_owned();
        let message = err.message().unwrap_or("").to_owned();
        match code.as_str() {
            "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken"
            | "AuthorizationHeaderMalformed" => {
                return S3Error::Credentials { endpoint, bucket: bucket.into(), code }
            }
            "AccessDenied" if message.to_lowercase().contains("signature") || message.to_lowercase().contains("access key") => {
                return S3Error::Credentials { endpoint, bucket: bucket.into(), code: format!("{code}: {message}") }
            }
            "AccessDenied" => {
                return S3Error::AccessDenied {
                    endpoint,
                    bucket: bucket.into(),
                    detail: if message.is_empty() { code } else { message },
                }
            }
            "NoSuchBucket" => return S3Error::NoSuchBucket { endpoint, bucket: bucket.into() },
            "NoSuchKey" | "NotFound" if !key.is_empty() => {
                return S3Error::NoSuchKey { bucket: bucket.into(), key: key.into() }
            }
            "NotFound" => return S3Error::NoSuchBucket { endpoint, bucket: bucket.into() },
            _ => {}
        }
        match status {
            Some(404) if key.is_empty() => S3Error::NoSuchBucket { endpoint, bucket: bucket.into() },
            Some(404) => S3Error::NoSuchKey { bucket: bucket.into(), key: key.into() },
            Some(403) => S3Error::Credentials {
                endpoint,
                bucket: bucket.into(),
                code: if code.is_empty() { "HTTP 403".into() } else { code },
            },
            _ => S3Error::Other {
                operation,
                endpoint,
                bucket: bucket.into(),
                key: key.into(),
                detail: if code.is_empty() && message.is_empty() {
                    error_chain(&err)
                } else {
                    format!("{code}: {message} (HTTP {})", status.unwrap_or(0))
                },
            },
        }
    }
}

/// Access to the HTTP status of a raw SDK response.
pub trait HttpStatus {
    fn http_status(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn http_status(&self) -> u16 {
        self.status().as_u16()
    }
}

/// Joins an error and its sources into one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_debug_hides_secret() {
        let s = S3Settings {
            endpoint: Some("http://127.0.0.1:1".into()),
            region: "us-east-1".into(),
            access_key_id: "AKID".into(),
            secret_access_key: "very-secret-value".into(),
            session_token: None,
            path_style: true,
            checksums_when_supported: false,
        };
        let text = format!("{s:?}");
        assert!(!text.contains("very-secret-value"));
        assert!(text.contains("AKID"));
    }

    #[test]
    fn overrides_fall_back_field_by_field() {
        let a = S3Overrides { endpoint: Some("http://a".into()), ..Default::default() };
        let b = S3Overrides {
            endpoint: Some("http://b".into()),
            region: Some("eu-west-1".into()),
            ..Default::default()
        };
        let merged = a.or(&b);
        assert_eq!(merged.endpoint.as_deref(), Some("http://a"));
        assert_eq!(merged.region.as_deref(), Some("eu-west-1"));
    }
}
