//! The error type of the program edge: one message that states what failed, on
//! which value, and what to do next, with the exit status it maps to.

use crate::repository::lock::LockError;
use crate::repository::RepoError;
use crate::s3::S3Error;
use crate::sources::bucket::BucketError;

/// An error reported to the user, with its exit status.
#[derive(Debug)]
pub struct CliError {
    message: String,
    code: u8,
}

impl CliError {
    /// Creates an error for a failed operation (exit status 1).
    pub fn failed(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 1 }
    }

    /// Creates an error for invalid usage or configuration (exit status 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 2 }
    }

    pub fn exit_code(&self) -> u8 {
        self.code
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

fn s3_code(e: &S3Error) -> u8 {
    match e {
        S3Error::CredentialFile { .. } | S3Error::MissingCredentials { .. } | S3Error::InvalidEndpoint { .. } => 2,
        _ => 1,
    }
}

fn repo_code(e: &RepoError) -> u8 {
    match e {
        RepoError::InvalidUrl { .. } | RepoError::AmbiguousSnapshot { .. } => 2,
        RepoError::S3(s) => s3_code(s),
        RepoError::Backend(crate::repository::backend::BackendError::S3(s)) => s3_code(s),
        RepoError::Lock(LockError::Backend(crate::repository::backend::BackendError::S3(s))) => s3_code(s),
        _ => 1,
    }
}

impl From<RepoError> for CliError {
    fn from(e: RepoError) -> Self {
        Self { code: repo_code(&e), message: e.to_string() }
    }
}

impl From<S3Error> for CliError {
    fn from(e: S3Error) -> Self {
        Self { code: s3_code(&e), message: e.to_string() }
    }
}

impl From<BucketError> for CliError {
    fn from(e: BucketError) -> Self {
        let code = match &e {
            BucketError::S3(s) => s3_code(s),
            BucketError::Repo(r) => repo_code(r),
            BucketError::AmbiguousSource { .. } => 2,
            _ => 1,
        };
        Self { code, message: e.to_string() }
    }
}

impl From<LockError> for CliError {
    fn from(e: LockError) -> Self {
        RepoError::from(e).into()
    }
}
