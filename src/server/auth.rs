//! Bearer-token authentication: the tokens file, scopes, and the
//! constant-time lookup of a presented token.
//!
//! The tokens file has one token per line, `TOKEN SCOPE[,SCOPE]`, with the
//! scopes `push`, `read` and `admin`. Blank lines and lines starting with `#`
//! are ignored. Scopes are independent: `admin` does not imply `push` or
//! `read`, so a token lists every scope it needs.

use std::path::Path;

use axum::http::HeaderMap;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// Shortest token accepted, in characters. Shorter tokens are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// Permission that a token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Push checkpoints (PUT).
    Push,
    /// List and download checkpoints (GET).
    Read,
    /// Delete checkpoints (DELETE).
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Push => "push",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Scope> {
        match s {
            "push" => Some(Scope::Push),
            "read" => Some(Scope::Read),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// A tokens file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tokens file {path}, line {line}: {reason}; the form is `TOKEN SCOPE[,SCOPE]` with the scopes push, read and admin")]
    Malformed { path: String, line: usize, reason: String },
    #[error("tokens file {path} lists no token; add a line `TOKEN SCOPE[,SCOPE]`")]
    Empty { path: String },
}

struct TokenEntry {
    /// SHA-256 of the token, so every comparison has the same length.
    digest: [u8; 32],
    scopes: Vec<Scope>,
}

/// The accepted tokens with their scopes.
pub struct TokenSet {
    entries: Vec<TokenEntry>,
}

/// Reason a request was not authorised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that the tokens file does not list.
    Unknown,
    /// A listed token without the scope the request needs.
    MissingScope(Scope),
}

impl TokenSet {
    /// Reads a tokens file.
    pub fn load(path: &Path) -> Result<TokenSet, TokensError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TokensError::Read { path: path.display().to_string(), source })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses the text of a tokens file; `path` names it in errors.
    pub fn parse(path: &str, text: &str) -> Result<TokenSet, TokensError> {
        let mut entries: Vec<TokenEntry> = Vec::new();
        for (number, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed = |reason: String| TokensError::Malformed { path: path.to_owned(), line: number + 1, reason };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [token, scope_list] = fields.as_slice() else {
                return Err(malformed(format!("expected 2 fields separated by spaces, found {}", fields.len())));
            };
            if token.chars().count() < MIN_TOKEN_LEN {
                return Err(malformed(format!("the token has fewer than {MIN_TOKEN_LEN} characters")));
            }
            let mut scopes = Vec::new();
            for name in scope_list.split(',') {
                let scope = Scope::parse(name).ok_or_else(|| malformed(format!("unknown scope {name:?}")))?;
                scopes.push(scope);
            }
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if entries.iter().any(|e| e.digest == digest) {
                return Err(malformed("the token is listed on an earlier line too".into()));
            }
            entries.push(TokenEntry { digest, scopes });
        }
        if entries.is_empty() {
            return Err(TokensError::Empty { path: path.to_owned() });
        }
        Ok(TokenSet { entries })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks the request's bearer token for `needed`. Every listed token is
    /// compared in constant time, so the time taken does not depend on which
    /// token, or how much of one, matched.
    pub fn authorize(&self, headers: &HeaderMap, needed: Scope) -> Result<(), AuthFailure> {
        let token = bearer_token(headers).ok_or(AuthFailure::Missing)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found: Option<&TokenEntry> = None;
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(entry);
            }
        }
        let entry = found.ok_or(AuthFailure::Unknown)?;
        if entry.scopes.contains(&needed) {
            Ok(())
        } else {
            Err(AuthFailure::MissingScope(needed))
        }
    }
}

/// Extracts the token of an `Authorization: Bearer TOKEN` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    const FILE: &str = "# workers\n\npush-token-0123456789 push,read\n  admin-token-0123456789   admin\n";

    #[test]
    fn tokens_file_parses_scopes() {
        let set = TokenSet::parse("t", FILE).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.authorize(&headers("Bearer push-token-0123456789"), Scope::Push), Ok(()));
        assert_eq!(set.authorize(&headers("bearer push-token-0123456789"), Scope::Read), Ok(()));
        assert_eq!(
            set.authorize(&headers("Bearer push-token-0123456789"), Scope::Admin),
            Err(AuthFailure::MissingScope(Scope::Admin))
        );
        assert_eq!(set.authorize(&headers("Bearer admin-token-0123456789"), Scope::Admin), Ok(()));
    }

    #[test]
    fn unknown_and_missing_tokens_fail() {
        let set = TokenSet::parse("t", FILE).unwrap();
        assert_eq!(set.authorize(&headers("Bearer push-token-012345678"), Scope::Push), Err(AuthFailure::Unknown));
        assert_eq!(set.authorize(&headers("Basic abc"), Scope::Push), Err(AuthFailure::Missing));
        assert_eq!(set.authorize(&HeaderMap::new(), Scope::Push), Err(AuthFailure::Missing));
    }

    #[test]
    fn malformed_lines_name_their_number() {
        let cases = [
            ("ok-token-0123456789 push\nbad-token-0123456789\n", 2),
            ("# c\nok-token-0123456789 push,write\n", 2),
            ("short push\n", 1),
            ("a-token-0123456789 push\na-token-0123456789 read\n", 2),
            ("a-token-0123456789 push extra\n", 1),
        ];
        for (text, line) in cases {
            match TokenSet::parse("tokens.txt", text) {
                Err(TokensError::Malformed { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: expected a malformed line, got {:?}", other.map(|s| s.len())),
            }
        }
    }

    #[test]
    fn empty_file_is_an_error() {
        assert!(matches!(TokenSet::parse("t", "# nothing\n"), Err(TokensError::Empty { .. })));
    }
}
