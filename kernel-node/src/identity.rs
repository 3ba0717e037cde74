//! Identity: which plugin a bearer token stands for (`[auth.plugins.NAME]`
//! `tokens`, `token_env`, `token_file`).
//!
//! Tokens are kept as salted SHA-256 hashes in the config
//! (`sha256:<salt hex>:<digest hex>`, made by `kernel-node --hash-token`),
//! or read in plain from an environment variable or a file. A verified
//! token is remembered (up to [`CACHE`] of them), so a client's calls after
//! its first cost one map lookup; a `token_file` is read again when it
//! changes (looked at most once a second), which is how a token is rotated
//! without a restart: list the new one beside the old, move the plugin to
//! it, then drop the old one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kernel_core::AuthConfig;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

/// Verified tokens remembered (the cache is emptied when full, and when a
/// token file changes).
pub const CACHE: usize = 4096;

/// Longest token accepted (longer ones are refused unread).
pub const MAX_TOKEN_BYTES: usize = 512;

/// How a token is checked.
#[derive(Debug, Clone)]
enum Credential {
    /// A salted SHA-256 digest.
    Hashed { salt: Vec<u8>, digest: [u8; 32] },
    /// A plain token (from the environment or a file).
    Plain(String),
}

impl Credential {
    fn matches(&self, token: &str) -> bool {
        match self {
            Credential::Hashed { salt, digest } => {
                let mut h = Sha256::new();
                h.update(salt);
                h.update(token.as_bytes());
                same(&h.finalize(), digest)
            }
            Credential::Plain(p) => same(p.as_bytes(), token.as_bytes()),
        }
    }
}

/// Equality that takes as long whatever the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why an `[auth]` section cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A `tokens` entry is not `sha256:<salt hex>:<digest hex>`.
    #[error("auth.plugins.{plugin}.tokens: `{entry}` is not sha256:<salt hex>:<64 hex digits> (make one with `kernel-node --hash-token`)")]
    BadHash {
        /// The plugin.
        plugin: String,
        /// The entry, cut short.
        entry: String,
    },
    /// A `token_env` variable is not set.
    #[error("auth.plugins.{plugin}.token_env: environment variable {var} is not set")]
    MissingEnv {
        /// The plugin.
        plugin: String,
        /// The variable.
        var: String,
    },
    /// A `token_file` cannot be read.
    #[error("auth.plugins.{plugin}.token_file: cannot read {path}: {source}")]
    File {
        /// The plugin.
        plugin: String,
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Auth is on but no plugin has a credential.
    #[error("auth.enabled is true but no auth.plugins.NAME has tokens, token_env or token_file")]
    NoCredentials,
}

#[derive(Debug)]
struct TokenFile {
    plugin: Arc<str>,
    path: String,
    modified: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct State {
    /// Credentials from the config and the environment.
    fixed: Vec<(Arc<str>, Credential)>,
    /// Credentials read from token files, by file.
    from_files: Vec<Vec<(Arc<str>, Credential)>>,
    files: Vec<TokenFile>,
    checked: Option<Instant>,
    cache: HashMap<String, Arc<str>>,
}

/// The token table: bearer token → plugin.
#[derive(Debug)]
pub struct Identities {
    state: Mutex<State>,
}

/// A fresh salted hash of `token`, as a `tokens` entry.
pub fn hash_token(token: &str) -> String {
    let salt: [u8; 16] = rand::random();
    let mut h = Sha256::new();
    h.update(salt);
    h.update(token.as_bytes());
    format!("sha256:{}:{}", hex(&salt), hex(&h.finalize()))
}

/// Lower-case hex of `b`.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn parse_hash(plugin: &str, entry: &str) -> Result<Credential, IdentityError> {
    let bad = || IdentityError::BadHash {
        plugin: plugin.to_owned(),
        entry: entry.chars().take(24).collect(),
    };
    let mut parts = entry.split(':');
    let (Some("sha256"), Some(salt), Some(digest), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let salt = unhex(salt).ok_or_else(bad)?;
    let digest: [u8; 32] = unhex(digest)
        .and_then(|d| d.try_into().ok())
        .ok_or_else(bad)?;
    Ok(Credential::Hashed { salt, digest })
}

fn read_file(plugin: &Arc<str>, path: &str) -> Result<Vec<(Arc<str>, Credential)>, IdentityError> {
    let text = std::fs::read_to_string(path).map_err(|source| IdentityError::File {
        plugin: plugin.to_string(),
        path: path.to_owned(),
        source,
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|t| (plugin.clone(), Credential::Plain(t.to_owned())))
        .collect())
}

impl Identities {
    /// The table `config` describes; None when auth is off.
    pub fn from_config(config: &AuthConfig) -> Result<Option<Arc<Identities>>, IdentityError> {
        if !config.enabled {
            return Ok(None);
        }
        let mut state = State::default();
        for (name, p) in &config.plugins {
            let plugin: Arc<str> = name.as_str().into();
            for entry in &p.tokens {
                state.fixed.push((plugin.clone(), parse_hash(name, entry)?));
            }
            if let Some(var) = &p.token_env {
                let token = std::env::var(var).map_err(|_| IdentityError::MissingEnv {
                    plugin: name.clone(),
                    var: var.clone(),
                })?;
                state.fixed.push((plugin.clone(), Credential::Plain(token)));
            }
            if let Some(path) = &p.token_file {
                state.from_files.push(read_file(&plugin, path)?);
                state.files.push(TokenFile {
                    plugin: plugin.clone(),
                    path: path.clone(),
                    modified: modified(path),
                });
            }
        }
        if state.fixed.is_empty() && state.files.is_empty() {
            return Err(IdentityError::NoCredentials);
        }
        Ok(Some(Arc::new(Identities {
            state: Mutex::new(state),
        })))
    }

    /// The plugin `token` stands for, if any.
    pub fn verify(&self, token: &str) -> Option<Arc<str>> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let mut s = self.state.lock();
        self.reload_changed_files(&mut s);
        if let Some(p) = s.cache.get(token) {
            return Some(p.clone());
        }
        let found = s
            .fixed
            .iter()
            .chain(s.from_files.iter().flatten())
            .find(|(_, c)| c.matches(token))
            .map(|(p, _)| p.clone())?;
        if s.cache.len() >= CACHE {
            s.cache.clear();
        }
        s.cache.insert(token.to_owned(), found.clone());
        Some(found)
    }

    /// Reads token files again when they changed (at most once a second);
    /// the cache is emptied, so a token taken out stops working.
    fn reload_changed_files(&self, s: &mut State) {
        if s.files.is_empty()
            || s.checked
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        s.checked = Some(Instant::now());
        let mut changed = false;
        for i in 0..s.files.len() {
            let now = modified(&s.files[i].path);
            if now == s.files[i].modified {
                continue;
            }
            match read_file(&s.files[i].plugin, &s.files[i].path) {
                Ok(creds) => {
                    s.from_files[i] = creds;
                    s.files[i].modified = now;
                    changed = true;
                    tracing::info!(target: "audit", plugin = %s.files[i].plugin, path = %s.files[i].path, "token file reloaded");
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "token file unreadable; keeping its previous tokens")
                }
            }
        }
        if changed {
            s.cache.clear();
        }
    }
}

fn modified(path: &str) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel_core::PluginAuth;

    fn config(plugins: Vec<(&str, PluginAuth)>) -> AuthConfig {
        AuthConfig {
            enabled: true,
            plugins: plugins
                .into_iter()
                .map(|(n, p)| (n.to_owned(), p))
                .collect(),
        }
    }

    #[test]
    fn hashed_tokens_verify_and_wrong_ones_do_not() {
        let c = config(vec![(
            "orders",
            PluginAuth {
                tokens: vec![hash_token("s3cret"), hash_token("n3w")],
                ..PluginAuth::default()
            },
        )]);
        let ids = Identities::from_config(&c).expect("valid").expect("on");
        assert_eq!(ids.verify("s3cret").as_deref(), Some("orders"));
        assert_eq!(
            ids.verify("n3w").as_deref(),
            Some("orders"),
            "two during a rotation"
        );
        assert_eq!(ids.verify("s3cret").as_deref(), Some("orders"), "cached");
        assert!(ids.verify("s3cre").is_none());
        assert!(ids.verify("").is_none());
        assert!(ids.verify(&"x".repeat(MAX_TOKEN_BYTES + 1)).is_none());
    }

    #[test]
    fn bad_entries_and_no_credentials_are_config_errors() {
        let c = config(vec![(
            "orders",
            PluginAuth {
                tokens: vec!["md5:00:11".into()],
                ..PluginAuth::default()
            },
        )]);
        let e = Identities::from_config(&c)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("auth.plugins.orders.tokens"), "{e}");
        let e = Identities::from_config(&config(vec![("orders", PluginAuth::default())]))
            .expect_err("refused")
            .to_string();
        assert!(e.contains("no auth.plugins"), "{e}");
        assert!(Identities::from_config(&AuthConfig::default())
            .expect("off is fine")
            .is_none());
    }

    #[test]
    fn a_token_file_is_read_again_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("kernel-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("orders.tokens");
        std::fs::write(&path, "old-token\n").expect("write");
        let c = config(vec![(
            "orders",
            PluginAuth {
                token_file: Some(path.to_string_lossy().into_owned()),
                ..PluginAuth::default()
            },
        )]);
        let ids = Identities::from_config(&c).expect("valid").expect("on");
        assert_eq!(ids.verify("old-token").as_deref(), Some("orders"));
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(&path, "# rotated\nnew-token\n").expect("rewrite");
        // A second later the file is looked at again.
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(ids.verify("new-token").as_deref(), Some("orders"));
        assert!(ids.verify("old-token").is_none(), "the old token is gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
