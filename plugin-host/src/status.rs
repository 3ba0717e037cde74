//! What the host knows about each plugin, as operators and the node see it.

use std::time::{Duration, SystemTime};

/// Where a plugin is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Its process is starting (or started and not yet ready).
    Starting,
    /// Running and ready (every declared service is provided).
    Running,
    /// Exited; waiting out the backoff delay before the next start.
    Backoff,
    /// Restarted too often within the window: not started again until an
    /// operator resets it.
    CrashLoop,
    /// Exited and not to be restarted (restart policy).
    Exited,
    /// Stopped by the host (shutdown or an operator).
    Stopped,
}

impl State {
    /// The state's name in status listings and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff => "backoff",
            State::CrashLoop => "crash-loop",
            State::Exited => "exited",
            State::Stopped => "stopped",
        }
    }

    /// Whether the plugin serves now.
    pub fn is_up(self) -> bool {
        self == State::Running
    }
}

/// One run of a plugin's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Which start this was (1 = the first).
    pub instance: u64,
    /// Its pid (the shim's, which is its process group's id).
    pub pid: u32,
    /// When it was started.
    pub started: SystemTime,
    /// When it ended, and how.
    pub ended: Option<(SystemTime, Exit)>,
}

/// How a plugin's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It could not be started.
    SpawnFailed(String),
    /// It did not provide its services in time, and was stopped.
    NotReady,
}

impl Exit {
    /// Whether the exit counts as a failure (for `restart = on-failure`).
    pub fn is_failure(&self) -> bool {
        !matches!(self, Exit::Code(0))
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
            Exit::SpawnFailed(why) => write!(f, "could not start: {why}"),
            Exit::NotReady => f.write_str("not ready in time"),
        }
    }
}

/// A plugin's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginStatus {
    /// Its name.
    pub name: String,
    /// Whether the node is not ready while it is down.
    pub critical: bool,
    /// Where it is.
    pub state: State,
    /// Restarts since the host started it (or an operator reset it).
    pub restarts: u32,
    /// Reloads rolled back.
    pub reload_failures: u32,
    /// Its recent runs, oldest first (at most [`HISTORY`]).
    pub runs: Vec<Run>,
}

/// Something that happened to a plugin, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A run started.
    Started {
        /// The plugin.
        plugin: String,
        /// Which start.
        instance: u64,
        /// The shim's pid (its process group).
        pid: u32,
    },
    /// A run ended.
    Exited {
        /// The plugin.
        plugin: String,
        /// Which start.
        instance: u64,
        /// How.
        exit: Exit,
    },
    /// A reload switched traffic from instance `from` to `to`.
    Reloaded {
        /// The plugin.
        plugin: String,
        /// The old instance.
        from: u64,
        /// The new one.
        to: u64,
    },
    /// A reload was rolled back: the new instance was stopped, the old one
    /// serves on.
    ReloadFailed {
        /// The plugin.
        plugin: String,
        /// The instance that failed.
        instance: u64,
        /// Why.
        reason: String,
    },
    /// The plugin's state changed.
    State {
        /// The plugin.
        plugin: String,
        /// The new state.
        state: State,
    },
}

/// Runs kept per plugin.
pub const HISTORY: usize = 32;

impl PluginStatus {
    /// The current run's pid, while one runs.
    pub fn pid(&self) -> Option<u32> {
        self.runs
            .last()
            .filter(|r| r.ended.is_none())
            .map(|r| r.pid)
    }

    /// How the last run that ended, ended.
    pub fn last_exit(&self) -> Option<&Exit> {
        self.runs
            .iter()
            .rev()
            .find_map(|r| r.ended.as_ref().map(|e| &e.1))
    }

    /// How long the current run has been up.
    pub fn uptime(&self) -> Option<Duration> {
        self.runs
            .last()
            .filter(|r| r.ended.is_none())
            .and_then(|r| r.started.elapsed().ok())
    }

    /// The pauses between one run's end and the next run's start.
    pub fn restart_delays(&self) -> Vec<Duration> {
        self.runs
            .windows(2)
            .filter_map(|w| {
                let (ended, _) = w[0].ended.as_ref()?;
                w[1].started.duration_since(*ended).ok()
            })
            .collect()
    }
}
