//! The process between the host and a plugin.
//!
//! The host does not start a plugin directly: it starts its own executable
//! again in shim mode (`SHIM_FLAG` as the first argument), in a process
//! group of its own, and the shim starts the plugin in that group. The shim
//! is what makes the host's death take the plugin with it, children
//! included, with no `unsafe` code in the host:
//! - it watches its parent: once it is no longer the host (the host died
//!   and the shim was handed to init), it SIGKILLs its whole group (the
//!   plugin and anything the plugin started), itself last. A
//!   `PR_SET_PDEATHSIG` signal would be faster, but Linux sends it when the
//!   host *thread* that started the shim ends, and two such signals
//!   coalesce while one is pending; so the shim looks every
//!   [`WATCH_INTERVAL`] instead;
//! - it ignores SIGTERM: a graceful stop signals the whole group, and the
//!   shim waits for the plugin to finish and exits with it.
//!
//! Resource limits are set by a second, short stage (`LIMITS_FLAG`): a
//! fresh copy of the executable that sets them on itself and then replaces
//! itself with the plugin (`exec`), so the plugin starts under them and
//! the shim is not bound by them.
//!
//! The shim exits with the plugin's exit code, or 128 + the signal that
//! killed it.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;

use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{killpg, SigSet, Signal};
use nix::unistd::{getpgrp, getppid};

/// First argument that turns an executable into the shim.
pub const SHIM_FLAG: &str = "--plugin-host-shim";
/// First argument of the limits stage.
pub const LIMITS_FLAG: &str = "--plugin-host-limits";

/// How often the shim checks that the host is still its parent.
pub const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Exit code of a shim that could not start its plugin.
pub const SPAWN_FAILED: i32 = 127;

/// Runs the shim or the limits stage and never returns, when the process
/// was started as one; returns at once otherwise. Call it first thing in
/// `main` of every binary that hosts plugins.
pub fn run_if_requested() {
    let mut args = std::env::args_os();
    let _exe = args.next();
    match args.next() {
        Some(flag) if flag == SHIM_FLAG => shim(args.collect()),
        Some(flag) if flag == LIMITS_FLAG => limits(args.collect()),
        _ => {}
    }
}

/// `SHIM_FLAG <host pid> <limits> -- <command> <args…>`.
fn shim(args: Vec<OsString>) -> ! {
    // The host names itself: had it died between starting the shim and the
    // shim's first look, `getppid` would already be init's, and the shim
    // would watch the wrong parent.
    let Some((host, args)) = args.split_first() else {
        die("no host pid");
    };
    let Some(host) = host.to_str().and_then(|h| h.parse::<i32>().ok()) else {
        die("the host pid is not a number");
    };
    let host = nix::unistd::Pid::from_raw(host);
    if getppid() != host {
        // The host is gone already: start nothing.
        std::process::exit(1);
    }
    let args = args.to_vec();
    let me = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => die(&format!("cannot find own executable: {e}")),
    };
    let mut child = match Command::new(me).arg(LIMITS_FLAG).args(&args).spawn() {
        Ok(c) => c,
        Err(e) => die(&format!("cannot start: {e}")),
    };
    // SIGTERM is blocked from here on in this thread and the watcher below
    // (which inherits the mask): a graceful stop's SIGTERM is for the
    // plugin. The plugin was started before: its mask is its own.
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    let _ = set.thread_block();
    std::thread::spawn(move || loop {
        std::thread::sleep(WATCH_INTERVAL);
        if getppid() != host {
            // The host is gone: the whole group goes, plugin first.
            let _ = killpg(getpgrp(), Signal::SIGKILL);
        }
    });
    match child.wait() {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => std::process::exit(code),
            (None, Some(sig)) => std::process::exit(128 + sig),
            _ => std::process::exit(1),
        },
        Err(e) => die(&format!("cannot wait for the plugin: {e}")),
    }
}

/// `LIMITS_FLAG <as|-> <cpu|-> <nofile|-> -- <command> <args…>`: sets the
/// limits on this process, then becomes the plugin.
fn limits(args: Vec<OsString>) -> ! {
    let Some(split) = args.iter().position(|a| a == "--") else {
        die("no `--` before the command");
    };
    let (limits, rest) = args.split_at(split);
    let rest = &rest[1..];
    let resources = [
        Resource::RLIMIT_AS,
        Resource::RLIMIT_CPU,
        Resource::RLIMIT_NOFILE,
    ];
    for (value, resource) in limits.iter().zip(resources) {
        let Some(v) = value.to_str().and_then(|v| v.parse::<u64>().ok()) else {
            continue; // "-": no limit
        };
        if let Err(e) = setrlimit(resource, v, v) {
            die(&format!("cannot set {resource:?} to {v}: {e}"));
        }
    }
    let Some((command, args)) = rest.split_first() else {
        die("no command");
    };
    // `exec` only returns on failure.
    let err = Command::new(command).args(args).exec();
    die(&format!(
        "cannot run `{}`: {err}",
        command.to_string_lossy()
    ))
}

fn die(msg: &str) -> ! {
    eprintln!("plugin-host shim: {msg}");
    std::process::exit(SPAWN_FAILED)
}

/// The shim's arguments: this host's pid, `limits`, and a command line.
pub(crate) fn args(
    limits: &crate::manifest::Limits,
    command: &str,
    args: &[String],
) -> Vec<String> {
    let fmt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let mut out = vec![
        SHIM_FLAG.to_owned(),
        std::process::id().to_string(),
        fmt(limits.address_space_bytes),
        fmt(limits.cpu_seconds),
        fmt(limits.open_files),
        "--".to_owned(),
        command.to_owned(),
    ];
    out.extend(args.iter().cloned());
    out
}
