//! The manifest of a supervised plugin: what to run and how to keep it
//! running. TOML, one table per plugin (`[[plugins]]` in the node's config,
//! or one file per plugin in a directory); every key is documented in
//! `docs/PLUGINS.md` §6 with its default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Error;
pub use crate::transport::Transport;

/// One supervised plugin.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The plugin's name: its processes' log field and its status key.
    pub name: String,
    /// The program to run (a path, or a name looked up on `PATH`).
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Working directory (default: the host's).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Names of the host's environment variables the plugin may see; every
    /// other variable is cleared (the kernel address is always set, as
    /// `KERNEL_URL`).
    #[serde(default)]
    pub env_allow: Vec<String>,
    /// Variables set for the plugin, beside the allowed ones.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How the plugin reaches the kernel: over its TCP port (`tcp`, the
    /// default) or its Unix-domain socket (`unix`: `server.unix_socket`,
    /// faster on one host). `KERNEL_URL` is that address.
    #[serde(default)]
    pub transport: Transport,
    /// When a critical plugin is down, the node is not ready.
    #[serde(default)]
    pub critical: bool,
    /// When to start it again after it exits.
    #[serde(default)]
    pub restart: Restart,
    /// Delays between restarts.
    #[serde(default)]
    pub backoff: Backoff,
    /// When restarting stops.
    #[serde(default)]
    pub crash_loop: CrashLoop,
    /// The services the plugin registers; it is ready once all of them
    /// are provided (empty: ready once started).
    #[serde(default)]
    pub services: Vec<String>,
    /// How long it may take to become ready before it counts as failed.
    #[serde(default = "default_ready_timeout_ms")]
    pub ready_timeout_ms: u64,
    /// Between SIGTERM and SIGKILL when it is stopped.
    #[serde(default = "default_stop_grace_ms")]
    pub stop_grace_ms: u64,
    /// Resource limits of its processes.
    #[serde(default)]
    pub limits: Limits,
    /// After a reload's new instance is ready, how long it serves beside
    /// the old one before the old one is drained; an instance failure in
    /// that time rolls the reload back. 0: switch at once.
    #[serde(default = "default_probation_ms")]
    pub probation_ms: u64,
    /// Hot-reload the plugin when its program file (or its manifest file)
    /// changes.
    #[serde(default = "default_true")]
    pub reload_on_change: bool,
    /// The file the manifest was read from, when it has one of its own.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

fn default_probation_ms() -> u64 {
    1_000
}

fn default_true() -> bool {
    true
}

fn default_ready_timeout_ms() -> u64 {
    10_000
}

fn default_stop_grace_ms() -> u64 {
    5_000
}

/// When a plugin that exited is started again.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Whatever the exit (a clean exit too).
    Always,
    /// Only after a failure: a non-zero exit code or a signal.
    #[default]
    OnFailure,
    /// Never: an exit is final until an operator starts it.
    Never,
}

/// Exponential backoff with jitter and a cap.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// The first restart's delay.
    pub initial_ms: u64,
    /// The most any delay grows to.
    pub max_ms: u64,
    /// Each delay is the previous times this.
    pub multiplier: f64,
    /// Up to this fraction of a delay is added at random, so plugins that
    /// failed together do not restart together.
    pub jitter: f64,
    /// A run longer than this counts as healthy: the next delay starts
    /// from `initial_ms` again.
    pub reset_after_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 50,
            max_ms: 30_000,
            multiplier: 2.0,
            jitter: 0.2,
            reset_after_ms: 60_000,
        }
    }
}

/// Crash-loop detection: too many restarts within a window stop the
/// restarts until an operator resets the plugin.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CrashLoop {
    /// Restarts allowed within the window.
    pub max_restarts: u32,
    /// The window.
    pub window_ms: u64,
}

impl Default for CrashLoop {
    fn default() -> Self {
        CrashLoop {
            max_restarts: 5,
            window_ms: 60_000,
        }
    }
}

/// Resource limits (`setrlimit`) of the plugin's processes; absent = none.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Virtual address space, bytes (`RLIMIT_AS`).
    pub address_space_bytes: Option<u64>,
    /// CPU time, seconds (`RLIMIT_CPU`).
    pub cpu_seconds: Option<u64>,
    /// Open files (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
}

impl Manifest {
    /// Checks what TOML cannot: a usable name, a command that exists, sane
    /// numbers. The error names the plugin and the key.
    pub fn check(&self) -> Result<(), Error> {
        let bad = |key: &str, reason: String| Error::Manifest {
            plugin: self.name.clone(),
            key: key.to_owned(),
            reason,
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 128
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return Err(bad(
                "name",
                "must be 1 to 128 letters, digits, `-`, `_` or `.`".into(),
            ));
        }
        if self.command.is_empty() {
            return Err(bad("command", "is empty".into()));
        }
        if resolve(&self.command, self.cwd.as_deref()).is_none() {
            return Err(bad(
                "command",
                format!("`{}` is not an executable file (nor on PATH)", self.command),
            ));
        }
        if let Some(dir) = &self.cwd {
            if !dir.is_dir() {
                return Err(bad(
                    "cwd",
                    format!("`{}` is not a directory", dir.display()),
                ));
            }
        }
        let b = &self.backoff;
        if b.initial_ms == 0 || b.max_ms < b.initial_ms {
            return Err(bad(
                "backoff",
                "initial_ms must be > 0 and max_ms >= initial_ms".into(),
            ));
        }
        if !(b.multiplier >= 1.0 && b.multiplier.is_finite()) {
            return Err(bad("backoff.multiplier", "must be a number >= 1".into()));
        }
        if !(0.0..=1.0).contains(&b.jitter) {
            return Err(bad("backoff.jitter", "must be within [0, 1]".into()));
        }
        if self.crash_loop.max_restarts == 0 || self.crash_loop.window_ms == 0 {
            return Err(bad(
                "crash_loop",
                "max_restarts and window_ms must be > 0".into(),
            ));
        }
        let limits = [
            (
                "limits.address_space_bytes",
                self.limits.address_space_bytes,
                1 << 20,
            ),
            ("limits.cpu_seconds", self.limits.cpu_seconds, 1),
            ("limits.open_files", self.limits.open_files, 3),
        ];
        for (key, value, least) in limits {
            if let Some(v) = value {
                if v < least {
                    return Err(bad(
                        key,
                        format!("{v} is below the least usable value {least}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The executable `command` names: a path (relative to `cwd` when given),
/// or a file on `PATH`.
pub(crate) fn resolve(command: &str, cwd: Option<&Path>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if command.contains('/') {
        let p = match cwd {
            Some(dir) if Path::new(command).is_relative() => dir.join(command),
            _ => PathBuf::from(command),
        };
        return executable(&p).then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(command))
            .find(|p| executable(p))
    })
}

/// Plugins as the node's config declares them: a list of tables.
#[derive(Debug, Default, Deserialize)]
struct Declared {
    #[serde(default)]
    plugins: Vec<toml::Value>,
}

/// Parses the `[[plugins]]` tables of a TOML text. Each plugin is checked
/// on its own: the good ones come back, and each bad one as an error
/// naming it and the key, so one bad manifest does not stop the others.
pub fn parse_list(text: &str) -> (Vec<Manifest>, Vec<Error>) {
    let declared: Declared = match toml::from_str(text) {
        Ok(d) => d,
        Err(e) => {
            return (
                Vec::new(),
                vec![Error::Manifest {
                    plugin: "?".into(),
                    key: "plugins".into(),
                    reason: e.to_string(),
                }],
            )
        }
    };
    from_values(declared.plugins)
}

/// Manifests from already parsed TOML tables (the node's `[[plugins]]`),
/// each checked on its own.
pub fn from_values(values: Vec<toml::Value>) -> (Vec<Manifest>, Vec<Error>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        match from_value(value, &format!("plugins[{i}]")) {
            Ok(m) => good.push(m),
            Err(e) => bad.push(e),
        }
    }
    (good, bad)
}

/// One manifest from a TOML file (a plugin's own file in a directory).
pub fn load_file(path: &Path) -> Result<Manifest, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Manifest {
        plugin: path.display().to_string(),
        key: "(file)".into(),
        reason: e.to_string(),
    })?;
    let value: toml::Value = toml::from_str(&text).map_err(|e| Error::Manifest {
        plugin: path.display().to_string(),
        key: "(toml)".into(),
        reason: e.to_string(),
    })?;
    let mut m = from_value(value, &path.display().to_string())?;
    m.source = Some(path.to_owned());
    Ok(m)
}

/// Every `*.toml` manifest in `dir`, sorted by file name; bad ones as
/// errors beside the good ones.
pub fn load_dir(dir: &Path) -> (Vec<Manifest>, Vec<Error>) {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect(),
        Err(e) => {
            return (
                Vec::new(),
                vec![Error::Manifest {
                    plugin: dir.display().to_string(),
                    key: "plugins_dir".into(),
                    reason: e.to_string(),
                }],
            )
        }
    };
    files.sort();
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for f in files {
        match load_file(&f) {
            Ok(m) => good.push(m),
            Err(e) => bad.push(e),
        }
    }
    (good, bad)
}

/// A manifest from a parsed TOML value, checked; `at` names it in errors
/// until its own name is known.
fn from_value(value: toml::Value, at: &str) -> Result<Manifest, Error> {
    let name = value
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or(at)
        .to_owned();
    let m: Manifest = value
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| Error::Manifest {
            plugin: name,
            key: key_of(&e, &value),
            reason: e.message().to_owned(),
        })?;
    m.check()?;
    Ok(m)
}

/// The key a TOML error is about, as far as the message and the manifest
/// tell.
fn key_of(e: &toml::de::Error, manifest: &toml::Value) -> String {
    /// The keys that take one of a few words (serde says "unknown
    /// variant" without naming the key).
    const WORD_KEYS: [&str; 2] = ["restart", "transport"];
    let msg = e.message();
    match msg.split('`').nth(1) {
        // serde's "unknown field `x`" and "missing field `x`".
        Some(key) if msg.contains(" field `") => key.to_owned(),
        Some(word) if msg.starts_with("unknown variant") => WORD_KEYS
            .iter()
            .find(|k| manifest.get(**k).and_then(|v| v.as_str()) == Some(word))
            .map_or_else(|| "(value)".into(), |k| (*k).to_owned()),
        _ => "(value)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_and_bad_manifests_are_told_apart_each_naming_plugin_and_key() {
        let (good, bad) = parse_list(
            r#"
            [[plugins]]
            name = "ok"
            command = "sh"
            args = ["-c", "true"]

            [[plugins]]
            name = "typo"
            command = "sh"
            restart_policy = "always"

            [[plugins]]
            name = "nocommand"

            [[plugins]]
            name = "missing"
            command = "/no/such/program"

            [[plugins]]
            name = "tiny"
            command = "sh"
            limits = { address_space_bytes = 10 }

            [[plugins]]
            name = "near"
            command = "sh"
            transport = "unix"

            [[plugins]]
            name = "udp"
            command = "sh"
            transport = "udp"
            "#,
        );
        assert_eq!(good.len(), 2);
        assert_eq!(good[0].name, "ok");
        assert_eq!(good[0].restart, Restart::OnFailure);
        assert_eq!(good[0].transport, Transport::Tcp);
        assert_eq!(good[1].transport, Transport::Unix);
        let text: Vec<String> = bad.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 5, "{text:?}");
        assert!(
            text[4].starts_with("plugin `udp`: `transport`"),
            "{}",
            text[4]
        );
        assert!(
            text[0].contains("`typo`") && text[0].contains("restart_policy"),
            "{}",
            text[0]
        );
        assert!(
            text[1].contains("`nocommand`") && text[1].contains("command"),
            "{}",
            text[1]
        );
        assert!(
            text[2].contains("`missing`") && text[2].contains("/no/such/program"),
            "{}",
            text[2]
        );
        assert!(
            text[3].contains("`tiny`") && text[3].contains("limits.address_space_bytes"),
            "{}",
            text[3]
        );
    }
}
