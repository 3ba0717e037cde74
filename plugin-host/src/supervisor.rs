//! One plugin's supervisor: start it, watch it, restart it by its policy
//! with backoff, stop restarting in a crash loop, stop it gracefully.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use parking_lot::Mutex;
use rand::Rng;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::manifest::{Manifest, Restart};
use crate::shim;
use crate::status::{Event, Exit, PluginStatus, Run, State, HISTORY};
use crate::transport::KernelUrls;

/// What the host asks of the kernel it serves (the node's registry, when
/// the host is embedded); nothing else of the kernel is needed.
pub trait Readiness: Send + Sync + 'static {
    /// True when some instance provides `service`.
    fn is_provided(&self, service: &str) -> bool;

    /// True when the instance registered as `instance` provides every one
    /// of `services` (a reload's new instance, told apart from the old).
    fn instance_ready(&self, instance: &str, services: &[String]) -> bool {
        let _ = instance;
        services.iter().all(|s| self.is_provided(s))
    }

    /// Calls the instance registered as `instance` has failed (instance
    /// failures: `UNAVAILABLE`, `INTERNAL`, `UNKNOWN`, `DEADLINE_EXCEEDED`),
    /// when the kernel can tell.
    fn instance_failures(&self, instance: &str) -> Option<u64> {
        let _ = instance;
        None
    }

    /// Asks the kernel to drain the instance registered as `instance`: no
    /// new calls, the running ones finish, the session closes. False when
    /// it cannot (then the old instance is stopped with SIGTERM).
    fn drain(&self, instance: &str) -> bool {
        let _ = instance;
        false
    }
}

/// The instance id a supervised plugin registers with (its
/// `KERNEL_INSTANCE_ID`): the plugin's name and which start it is.
pub fn instance_id(plugin: &str, instance: u64) -> String {
    format!("{plugin}-{instance}")
}

/// What an operator (or the host) asks of a supervisor.
#[derive(Debug)]
pub(crate) enum Order {
    /// Leave the crash-loop (or exited) state and start again now.
    Reset,
    /// Start a new instance beside the running one; once it is ready,
    /// drain and stop the old one; if it never gets ready, stop it and
    /// keep the old one (rollback). With a manifest: the new instance runs
    /// by it, and so does every later start once the reload succeeded.
    Reload(Option<Box<Manifest>>),
    /// A changed manifest was refused: the running instance serves on.
    Refused(String),
    /// Stop the plugin and the supervisor.
    Stop,
}

/// The shared status of one plugin, and where its events go.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) status: Arc<Mutex<PluginStatus>>,
    pub(crate) events: mpsc::UnboundedSender<Event>,
}

impl Shared {
    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, PluginStatus> {
        self.status.lock()
    }

    fn tell(&self, event: Event) {
        let _ = self.events.send(event);
    }
}

/// Runs `manifest` until ordered to stop.
pub(crate) async fn supervise(
    mut manifest: Manifest,
    urls: Arc<KernelUrls>,
    readiness: Option<Arc<dyn Readiness>>,
    status: Shared,
    mut orders: mpsc::UnboundedReceiver<Order>,
) {
    let name = manifest.name.clone();
    let mut delay = Duration::from_millis(manifest.backoff.initial_ms);
    // Starts within the crash-loop window.
    let mut recent: Vec<Instant> = Vec::new();
    let mut instance = 0u64;
    loop {
        instance += 1;
        set_state(&status, State::Starting);
        let started = Instant::now();
        let exit = match start(&manifest, &urls, instance) {
            Ok(child) => {
                match run(
                    &mut manifest,
                    &urls,
                    readiness.as_deref(),
                    &status,
                    child,
                    &mut instance,
                    &mut orders,
                )
                .await
                {
                    Outcome::Exited(exit) => exit,
                    Outcome::Stopped => {
                        set_state(&status, State::Stopped);
                        return;
                    }
                }
            }
            Err(why) => {
                let exit = Exit::SpawnFailed(why);
                record_start(&status, instance, 0);
                record_end(&status, exit.clone());
                exit
            }
        };
        tracing::warn!(plugin = %name, instance, reason = %exit, "plugin exited");
        let restart = match manifest.restart {
            Restart::Always => true,
            Restart::OnFailure => exit.is_failure(),
            Restart::Never => false,
        };
        if !restart {
            set_state(&status, State::Exited);
            if !wait_for_reset(&mut orders).await {
                set_state(&status, State::Stopped);
                return;
            }
            reset(&status, &mut recent, &mut delay, &manifest);
            continue;
        }
        // A long healthy run starts the backoff over.
        if started.elapsed() >= Duration::from_millis(manifest.backoff.reset_after_ms) {
            delay = Duration::from_millis(manifest.backoff.initial_ms);
        }
        let window = Duration::from_millis(manifest.crash_loop.window_ms);
        recent.retain(|t| t.elapsed() < window);
        if recent.len() as u32 >= manifest.crash_loop.max_restarts {
            tracing::error!(plugin = %name, restarts = recent.len(), window_ms = manifest.crash_loop.window_ms, "plugin in a crash loop: not restarted until reset");
            set_state(&status, State::CrashLoop);
            if !wait_for_reset(&mut orders).await {
                set_state(&status, State::Stopped);
                return;
            }
            reset(&status, &mut recent, &mut delay, &manifest);
            continue;
        }
        set_state(&status, State::Backoff);
        let jitter = rand::thread_rng().gen_range(0.0..=manifest.backoff.jitter);
        let pause = delay.mul_f64(1.0 + jitter);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            order = orders.recv() => match order {
                Some(Order::Reset) => reset(&status, &mut recent, &mut delay, &manifest),
                // The next start runs the new binary anyway.
                Some(Order::Reload(new)) => {
                    if let Some(m) = new {
                        manifest = *m;
                    }
                }
                Some(Order::Refused(_)) => {}
                Some(Order::Stop) | None => {
                    set_state(&status, State::Stopped);
                    return;
                }
            },
        }
        recent.push(Instant::now());
        status.lock().restarts += 1;
        delay = delay
            .mul_f64(manifest.backoff.multiplier)
            .min(Duration::from_millis(manifest.backoff.max_ms));
    }
}

fn reset(status: &Shared, recent: &mut Vec<Instant>, delay: &mut Duration, m: &Manifest) {
    recent.clear();
    *delay = Duration::from_millis(m.backoff.initial_ms);
    status.lock().restarts = 0;
    tracing::info!(plugin = %m.name, "plugin reset by an operator");
}

/// Waits for a reset or a reload (true: start again) or a stop (false).
async fn wait_for_reset(orders: &mut mpsc::UnboundedReceiver<Order>) -> bool {
    loop {
        match orders.recv().await {
            Some(Order::Reset | Order::Reload(_)) => return true,
            Some(Order::Refused(_)) => continue,
            Some(Order::Stop) | None => return false,
        }
    }
}

fn set_state(status: &Shared, state: State) {
    let name = {
        let mut s = status.lock();
        if s.state == state {
            return;
        }
        s.state = state;
        s.name.clone()
    };
    status.tell(Event::State {
        plugin: name,
        state,
    });
}

fn record_start(status: &Shared, instance: u64, pid: u32) {
    let name = {
        let mut s = status.lock();
        if s.runs.len() == HISTORY {
            s.runs.remove(0);
        }
        s.runs.push(Run {
            instance,
            pid,
            started: SystemTime::now(),
            ended: None,
        });
        s.name.clone()
    };
    status.tell(Event::Started {
        plugin: name,
        instance,
        pid,
    });
}

fn record_end(status: &Shared, exit: Exit) {
    let (name, instance) = {
        let mut s = status.lock();
        let name = s.name.clone();
        match s.runs.last_mut() {
            Some(run) if run.ended.is_none() => {
                run.ended = Some((SystemTime::now(), exit.clone()));
                (name, run.instance)
            }
            _ => return,
        }
    };
    status.tell(Event::Exited {
        plugin: name,
        instance,
        exit,
    });
}

/// Starts the plugin through the shim, in a process group of its own,
/// with a cleared environment.
fn start(m: &Manifest, urls: &KernelUrls, instance: u64) -> Result<Child, String> {
    let kernel_url = urls.get(m.transport)?;
    let program = crate::manifest::resolve(&m.command, m.cwd.as_deref())
        .ok_or_else(|| format!("`{}` is not an executable file (nor on PATH)", m.command))?;
    let me =
        std::env::current_exe().map_err(|e| format!("cannot find the host's executable: {e}"))?;
    let mut cmd = Command::new(me);
    cmd.args(shim::args(&m.limits, &program.to_string_lossy(), &m.args))
        .env_clear()
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Not killed on drop: SIGKILL to the shim alone would orphan the
        // plugin; a shim whose host is gone kills the whole group itself.
        .kill_on_drop(false);
    for key in &m.env_allow {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.envs(&m.env);
    cmd.env("KERNEL_URL", kernel_url);
    cmd.env("KERNEL_PLUGIN_INSTANCE", instance.to_string());
    cmd.env("KERNEL_INSTANCE_ID", instance_id(&m.name, instance));
    if let Some(dir) = &m.cwd {
        cmd.current_dir(dir);
    }
    cmd.spawn().map_err(|e| e.to_string())
}

enum Outcome {
    Exited(Exit),
    Stopped,
}

/// Watches one run: logs, readiness, exit, reloads, or a stop order.
/// `instance` follows the run through reloads.
async fn run(
    m: &mut Manifest,
    urls: &KernelUrls,
    readiness: Option<&dyn Readiness>,
    status: &Shared,
    mut child: Child,
    instance: &mut u64,
    orders: &mut mpsc::UnboundedReceiver<Order>,
) -> Outcome {
    let mut pid = child.id().unwrap_or_default();
    record_start(status, *instance, pid);
    tracing::info!(plugin = %m.name, instance = *instance, pid, "plugin started");
    forward_logs(&m.name, *instance, &mut child);
    let ready_by = Instant::now() + Duration::from_millis(m.ready_timeout_ms);
    let mut ready = false;
    loop {
        if !ready {
            ready = match readiness {
                None => true,
                Some(r) => r.instance_ready(&instance_id(&m.name, *instance), &m.services),
            };
            if ready {
                set_state(status, State::Running);
            } else if Instant::now() >= ready_by {
                tracing::warn!(plugin = %m.name, instance = *instance, services = ?m.services, "plugin not ready in time: stopping it");
                stop(m, &mut child, pid).await;
                record_end(status, Exit::NotReady);
                return Outcome::Exited(Exit::NotReady);
            }
        }
        let poll = if ready {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(20)
        };
        tokio::select! {
            done = child.wait() => {
                let exit = match done {
                    Ok(st) => exit_of(st),
                    Err(e) => Exit::SpawnFailed(e.to_string()),
                };
                record_end(status, exit.clone());
                return Outcome::Exited(exit);
            }
            order = orders.recv() => match order {
                Some(Order::Reset) => {}
                Some(Order::Reload(_)) if !ready => {
                    tracing::warn!(plugin = %m.name, "reload asked before the plugin is ready: ignored");
                }
                Some(Order::Reload(new)) => {
                    let next = *instance + 1;
                    let by = new.as_deref().unwrap_or(m);
                    match reload(by, urls, readiness, status, &mut child, pid, next).await {
                        Ok(new_child) => {
                            child = new_child;
                            pid = child.id().unwrap_or_default();
                            *instance = next;
                            if let Some(new) = new {
                                *m = *new;
                            }
                        }
                        Err(why) => reload_failed(status, next, why),
                    }
                }
                Some(Order::Refused(why)) => reload_failed(status, *instance + 1, why),
                Some(Order::Stop) | None => {
                    stop(m, &mut child, pid).await;
                    if let Ok(Some(st)) = child.try_wait() {
                        record_end(status, exit_of(st));
                    }
                    return Outcome::Stopped;
                }
            },
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Reports a reload that did not happen: the running instance serves on.
fn reload_failed(status: &Shared, instance: u64, why: String) {
    let name = status.lock().name.clone();
    tracing::error!(plugin = %name, instance, reason = %why, "reload rolled back: the running instance keeps serving");
    status.lock().reload_failures += 1;
    status.tell(Event::ReloadFailed {
        plugin: name,
        instance,
        reason: why,
    });
}

/// A hot reload: the new instance starts beside the old one and must get
/// ready (registered with every declared service) within the ready timeout;
/// then the old one is drained by the kernel and stopped once its calls
/// are done, and the new child is returned. If the new one exits or never
/// gets ready, it is stopped and the old one keeps serving (rollback).
async fn reload(
    m: &Manifest,
    urls: &KernelUrls,
    readiness: Option<&dyn Readiness>,
    status: &Shared,
    old: &mut Child,
    old_pid: u32,
    next: u64,
) -> Result<Child, String> {
    let mut new = start(m, urls, next)?;
    let new_pid = new.id().unwrap_or_default();
    forward_logs(&m.name, next, &mut new);
    tracing::info!(plugin = %m.name, instance = next, pid = new_pid, "reload: new instance started");
    let id = instance_id(&m.name, next);
    let started = tokio::time::Instant::now();
    let ready_by = started + Duration::from_millis(m.ready_timeout_ms);
    loop {
        let ready = match readiness {
            Some(r) => r.instance_ready(&id, &m.services),
            // Without a kernel to ask: alive for a moment counts.
            None => started.elapsed() >= Duration::from_millis(500),
        };
        if ready {
            break;
        }
        if tokio::time::Instant::now() >= ready_by {
            stop(m, &mut new, new_pid).await;
            return Err(format!(
                "instance {next} not ready within {} ms",
                m.ready_timeout_ms
            ));
        }
        tokio::select! {
            done = new.wait() => {
                let exit = done.map(exit_of).unwrap_or_else(|e| Exit::SpawnFailed(e.to_string()));
                stop(m, &mut new, new_pid).await;
                return Err(format!("instance {next} exited before it was ready: {exit}"));
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    // Probation: both instances serve; a new one that fails calls (or
    // exits) in this time is rolled back while the old one still runs.
    if m.probation_ms > 0 {
        let failed = tokio::select! {
            done = new.wait() => {
                let exit = done.map(exit_of).unwrap_or_else(|e| Exit::SpawnFailed(e.to_string()));
                Some(format!("instance {next} exited in its probation: {exit}"))
            }
            _ = tokio::time::sleep(Duration::from_millis(m.probation_ms)) => {
                readiness
                    .and_then(|r| r.instance_failures(&id))
                    .filter(|n| *n > 0)
                    .map(|n| format!("instance {next} failed {n} calls in its first {} ms", m.probation_ms))
            }
        };
        if let Some(why) = failed {
            if let Some(r) = readiness {
                // No new calls to it while it is being stopped.
                r.drain(&id);
            }
            stop(m, &mut new, new_pid).await;
            return Err(why);
        }
    }
    // Switch: the old instance takes no new calls and finishes its own.
    let old_id = instance_id(&m.name, next - 1);
    let drained = readiness.is_some_and(|r| r.drain(&old_id));
    if drained {
        // It closes its session and exits once its calls are done; the
        // grace bounds the wait.
        let grace = Duration::from_millis(m.stop_grace_ms);
        let _ = tokio::time::timeout(grace, old.wait()).await;
    }
    stop(m, old, old_pid).await;
    if let Ok(Some(st)) = old.try_wait() {
        record_end(status, exit_of(st));
    }
    record_start(status, next, new_pid);
    let name = status.lock().name.clone();
    status.tell(Event::Reloaded {
        plugin: name,
        from: next - 1,
        to: next,
    });
    Ok(new)
}

/// How the shim (and so the plugin) ended: the shim exits with the
/// plugin's code, or 128 + the signal that killed the plugin.
fn exit_of(status: std::process::ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(shim::SPAWN_FAILED), _) => Exit::SpawnFailed("see the plugin's stderr".into()),
        (Some(c), _) if c > 128 && c < 128 + 65 => Exit::Signal(c - 128),
        (Some(c), _) => Exit::Code(c),
        (None, Some(sig)) => Exit::Signal(sig),
        _ => Exit::Code(-1),
    }
}

/// Graceful stop: SIGTERM to the whole group, SIGKILL after the grace.
async fn stop(m: &Manifest, child: &mut Child, pid: u32) {
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    let grace = Duration::from_millis(m.stop_grace_ms);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(plugin = %m.name, pid, grace_ms = m.stop_grace_ms, "plugin ignored SIGTERM: killing its group");
    }
    // Whatever is left of the group (children the plugin started) goes too.
    let _ = killpg(group, Signal::SIGKILL);
    let _ = child.wait().await;
}

/// Each line of the plugin's stdout and stderr into the host's log, with
/// the plugin, the instance and the stream as fields.
fn forward_logs(name: &str, instance: u64, child: &mut Child) {
    if let Some(out) = child.stdout.take() {
        let name = name.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(plugin = %name, instance, stream = "stdout", "{line}");
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        let name = name.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(plugin = %name, instance, stream = "stderr", "{line}");
            }
        });
    }
}
