//! Errors and warnings about a policy file, each naming the file, line and column it refers to.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;
use serde_saphyr::{Error as YamlError, Location, Spanned};

/// Minimum `strsim::normalized_damerau_levenshtein` similarity for a "did you mean" suggestion.
const MIN_SUGGESTION_SIMILARITY: f64 = 0.6;

/// One error or warning at a place in a policy file.
///
/// Lines and columns count from 1. Both are 0 when the place is unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The policy file as given on the command line, or `<embedded local.yaml>`.
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    /// Prints `file:line:column: message`, the form compilers and editors recognise.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// A policy file that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid policy. `problems` contains at least one entry.
    #[error("{}", join_lines(problems))]
    Invalid { problems: Vec<Diagnostic> },
}

impl PolicyError {
    /// Returns the problems of an invalid file, or an empty slice for a read error.
    pub fn problems(&self) -> &[Diagnostic] {
        match self {
            PolicyError::Read { .. } => &[],
            PolicyError::Invalid { problems } => problems,
        }
    }
}

fn join_lines(problems: &[Diagnostic]) -> String {
    problems
        .iter()
        .map(Diagnostic::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A line and column in a policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Position {
    pub line: u64,
    pub column: u64,
}

impl Position {
    pub const START: Position = Position { line: 1, column: 1 };

    pub fn of<T>(spanned: &Spanned<T>) -> Position {
        Position::from_location(&spanned.referenced)
    }

    fn from_location(location: &Location) -> Position {
        Position {
            line: location.line(),
            column: location.column(),
        }
    }
}

/// Collects the errors and warnings found while checking one file.
pub(crate) struct Report {
    file: String,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Report {
    pub fn new(file: &str) -> Report {
        Report {
            file: file.to_owned(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub fn error(&mut self, at: Position, message: impl Into<String>) {
        let diagnostic = self.diagnostic(at, message.into());
        self.errors.push(diagnostic);
    }

    pub fn warn(&mut self, at: Position, message: impl Into<String>) {
        let diagnostic = self.diagnostic(at, message.into());
        self.warnings.push(diagnostic);
    }

    fn diagnostic(&self, at: Position, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line: at.line,
            column: at.column,
            message,
        }
    }
}

/// Converts a YAML or serde error into a diagnostic with a message for policy authors.
pub(crate) fn yaml_error(file: &str, error: &YamlError) -> Diagnostic {
    let at = error
        .location()
        .map(|location| Position::from_location(&location))
        .unwrap_or_default();
    let message = match error.without_snippet() {
        YamlError::SerdeUnknownField {
            field, expected, ..
        } => unknown_field_message(field, expected),
        YamlError::SerdeUnknownVariant {
            variant, expected, ..
        } => unknown_value_message(variant, expected),
        YamlError::InvalidScalar { ty, .. } => invalid_scalar_message(ty),
        YamlError::Eof { .. } => "the policy file is empty: it needs `repository` and at least \
                                  one of `postgres`, `buckets` or `checkpoints`"
            .to_owned(),
        YamlError::Unexpected { expected, .. } => {
            format!("wrong type: expected {expected} here")
        }
        other => strip_location_suffix(&other.to_string()).to_owned(),
    };
    Diagnostic {
        file: file.to_owned(),
        line: at.line,
        column: at.column,
        message,
    }
}

/// Removes the ` at line N, column M` that serde-saphyr appends, because diagnostics carry the
/// position separately.
fn strip_location_suffix(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(index) if message[index..].contains(", column ") => &message[..index],
        _ => message,
    }
}

fn invalid_scalar_message(ty: &str) -> String {
    let range = match ty {
        "u8" => Some(u8::MAX as u64),
        "u16" => Some(u16::MAX as u64),
        "u32" => Some(u32::MAX as u64),
        "u64" => Some(u64::MAX),
        _ => None,
    };
    match range {
        Some(max) => format!("invalid number: expected a whole number from 0 to {max}"),
        None => format!("invalid value: expected {ty}"),
    }
}

/// Returns the candidate closest to `input`, if one is close enough to be a likely typo.
pub(crate) fn nearest<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|candidate| {
            (
                *candidate,
                strsim::normalized_damerau_levenshtein(input, candidate),
            )
        })
        .filter(|(_, similarity)| *similarity >= MIN_SUGGESTION_SIMILARITY)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(candidate, _)| candidate)
}

/// Returns true for a field name that would hold a credential, such as `password` or
/// `secret_access_key`. Names ending in `_file` hold a path and are not secrets.
pub(crate) fn is_secret_name(field: &str) -> bool {
    let lower = field.to_ascii_lowercase();
    if lower.ends_with("_file") {
        return false;
    }
    [
        "password",
        "passwd",
        "secret",
        "token",
        "private_key",
        "api_key",
    ]
    .iter()
    .any(|word| lower.contains(word))
        || lower == "access_key_id"
        || lower == "access_key"
}

/// The environment variable that supplies a credential field, where one is standard.
fn secret_environment_variable(field: &str) -> Option<&'static str> {
    match field.to_ascii_lowercase().as_str() {
        "secret_access_key" | "secret_key" => Some("AWS_SECRET_ACCESS_KEY"),
        "access_key_id" | "access_key" => Some("AWS_ACCESS_KEY_ID"),
        "session_token" => Some("AWS_SESSION_TOKEN"),
        "password" => Some("PGPASSWORD"),
        _ => None,
    }
}

fn unknown_field_message(field: &str, expected: &[&str]) -> String {
    let suggestion = nearest(field, expected);
    // `credentials_secrett` is a typo of the `credentials_secret` field (a Secret's name), not a
    // credential, so a close non-secret match wins.
    let close_to_plain_field = suggestion.is_some_and(|name| {
        strsim::damerau_levenshtein(field, name) <= 2 && !name.ends_with("_file")
    });
    if is_secret_name(field) && !close_to_plain_field {
        return secret_field_message(field, expected);
    }

    let mut message = format!("unknown field `{field}`");
    match suggestion {
        Some(name) => message.push_str(&format!(", did you mean `{name}`?")),
        None if expected.is_empty() => message.push_str("; this mapping takes no fields"),
        None => message.push_str(&format!("; expected one of {}", backticked(expected))),
    }
    message
}

fn secret_field_message(field: &str, expected: &[&str]) -> String {
    let file_field = format!("{field}_file");
    let mut message = format!("`{field}` is not allowed: policy files never contain credentials. ");
    if expected.contains(&file_field.as_str()) {
        message.push_str(&format!(
            "Write `{file_field}` with the path of a file that contains the value"
        ));
    } else {
        message.push_str(
            "Use the matching `*_file` field with the path of a file that contains the value",
        );
    }
    match secret_environment_variable(field) {
        Some(variable) => message.push_str(&format!(", or set {variable} in the environment")),
        None => message.push_str(", or supply it through an environment variable"),
    }
    message
}

fn unknown_value_message(value: &str, expected: &[&str]) -> String {
    let mut message = format!("unknown value `{value}`");
    match nearest(value, expected) {
        Some(name) => message.push_str(&format!(", did you mean `{name}`?")),
        None => message.push_str(&format!("; expected one of {}", backticked(expected))),
    }
    message
}

fn backticked(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_finds_typo() {
        let fields = ["keep_last", "keep_daily", "keep_weekly", "keep_within"];
        assert_eq!(nearest("keep_dayly", &fields), Some("keep_daily"));
        assert_eq!(nearest("keep_lats", &fields), Some("keep_last"));
        assert_eq!(nearest("zzz", &fields), None);
    }

    #[test]
    fn unknown_field_suggests_nearest() {
        let message = unknown_field_message("keep_dayly", &["keep_daily", "keep_weekly"]);
        assert_eq!(
            message,
            "unknown field `keep_dayly`, did you mean `keep_daily`?"
        );
    }

    #[test]
    fn unknown_field_lists_when_nothing_close() {
        let message = unknown_field_message("colour", &["name", "bucket"]);
        assert_eq!(
            message,
            "unknown field `colour`; expected one of `name`, `bucket`"
        );
    }

    #[test]
    fn secret_names_detected() {
        for name in [
            "password",
            "secret_access_key",
            "token",
            "session_token",
            "access_key_id",
            "db_password",
            "API_KEY",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "password_file",
            "secret_access_key_file",
            "name",
            "credentials_secret_file",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn secret_field_names_file_form() {
        let message =
            unknown_field_message("secret_access_key", &["endpoint", "secret_access_key_file"]);
        assert_eq!(
            message,
            "`secret_access_key` is not allowed: policy files never contain credentials. Write \
             `secret_access_key_file` with the path of a file that contains the value, or set \
             AWS_SECRET_ACCESS_KEY in the environment"
        );
    }

    #[test]
    fn secret_typo_of_plain_field() {
        let message =
            unknown_field_message("credentials_secrett", &["credentials_secret", "endpoint"]);
        assert_eq!(
            message,
            "unknown field `credentials_secrett`, did you mean `credentials_secret`?"
        );
    }

    #[test]
    fn location_suffix_removed() {
        assert_eq!(
            strip_location_suffix("invalid duration \"30x\" at line 3, column 9"),
            "invalid duration \"30x\""
        );
        assert_eq!(strip_location_suffix("no suffix"), "no suffix");
    }
}
