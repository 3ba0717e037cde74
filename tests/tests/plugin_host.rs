//! The `plugin-host` binary with real child processes: restarts with
//! growing delays, crash loops and operator resets, exit reasons, memory
//! limits, bad manifests, and no process left behind when the host is
//! killed with SIGKILL.

use std::time::Duration;

use kernel_tests::eventually;
use kernel_tests::supervision::*;

#[tokio::test]
async fn a_failing_plugin_restarts_with_growing_delays_then_stays_in_a_crash_loop_until_reset() {
    let mut host = HostProcess::start(
        "crash",
        r#"
        [[plugins]]
        name = "crasher"
        command = "sh"
        args = ["-c", "exit 3"]
        backoff = { initial_ms = 200, multiplier = 2.0, max_ms = 5000, jitter = 0.1 }
        crash_loop = { max_restarts = 3, window_ms = 60000 }
        "#,
    )
    .await;
    let limit = Duration::from_secs(10);
    let mut delays = Vec::new();
    let mut ended = ms(&host
        .expect("crasher exited instance=1 reason=exit code 3", limit)
        .await);
    for n in 2..=4 {
        let started = ms(&host
            .expect(&format!("crasher started instance={n}"), limit)
            .await);
        delays.push(started - ended);
        ended = ms(&host
            .expect(
                &format!("crasher exited instance={n} reason=exit code 3"),
                limit,
            )
            .await);
    }
    // 200, 400, 800 ms plus up to 10 % jitter: each longer than the last.
    assert!(delays[0] >= 200, "{delays:?}");
    assert!(delays[1] > delays[0] && delays[2] > delays[1], "{delays:?}");
    host.expect("crasher state=crash-loop", limit).await;
    host.send("status").await;
    let status = host.expect("status crasher", limit).await;
    assert!(
        status.contains("state=crash-loop") && status.contains("last_exit=exit code 3"),
        "{status}"
    );
    // It stays there: no start for longer than its last delay...
    assert!(
        !host
            .arrives_within("started", Duration::from_millis(1500))
            .await,
        "restarted in a crash loop: {:?}",
        host.seen
    );
    // ...until an operator resets it.
    host.send("reset crasher").await;
    host.expect("crasher started instance=5", limit).await;
}

#[tokio::test]
async fn a_plugin_over_its_memory_limit_dies_and_is_restarted_and_a_clean_exit_is_final() {
    let mut host = HostProcess::start(
        "limits",
        r#"
        [[plugins]]
        name = "hungry"
        command = "python3"
        args = ["-c", "b = bytearray(800 * 1024 * 1024)"]
        limits = { address_space_bytes = 268435456 }
        backoff = { initial_ms = 100 }

        [[plugins]]
        name = "done"
        command = "sh"
        args = ["-c", "exit 0"]
        "#,
    )
    .await;
    let limit = Duration::from_secs(20);
    // Python's MemoryError exits 1; the plugin is started again.
    host.expect("hungry exited instance=1 reason=exit code 1", limit)
        .await;
    host.expect("hungry started instance=2", limit).await;
    // restart = on-failure (the default): a clean exit is not restarted.
    host.expect("done exited instance=1 reason=exit code 0", limit)
        .await;
    host.expect("done state=exited", limit).await;
}

#[tokio::test]
async fn a_bad_manifest_is_refused_naming_plugin_and_key_and_the_others_start() {
    let mut host = HostProcess::start(
        "bad",
        r#"
        [[plugins]]
        name = "typo"
        command = "sh"
        restart_policy = "always"

        [[plugins]]
        name = "ghost"
        command = "/no/such/plugin"

        [[plugins]]
        name = "good"
        command = "sh"
        args = ["-c", "sleep 30"]
        "#,
    )
    .await;
    host.expect("good started instance=1", Duration::from_secs(10))
        .await;
    let mut refused = Vec::new();
    eventually(Duration::from_secs(10), "both refusals logged", || {
        while let Ok(l) = host.stderr.try_recv() {
            if l.contains("refused") {
                refused.push(l);
            }
        }
        let r = refused.clone();
        async move {
            let typo = r
                .iter()
                .any(|l| l.contains("`typo`") && l.contains("restart_policy"));
            let ghost = r
                .iter()
                .any(|l| l.contains("`ghost`") && l.contains("/no/such/plugin"));
            (typo && ghost).then_some(()).ok_or(format!("{r:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn sigkill_of_the_host_leaves_no_plugin_process_behind_nor_its_child() {
    let secs = 100_000 + rand_suffix();
    let marker = format!("sleep {secs}");
    let mut host = HostProcess::start("orphans", &family_manifest(secs)).await;
    host.expect("family started instance=1", Duration::from_secs(10))
        .await;
    // The plugin (sh) and its child (sleep) both run.
    eventually(Duration::from_secs(10), "plugin and child running", || {
        let n = pids_with(&marker).len();
        async move { (n >= 2).then_some(()).ok_or(format!("{n} processes")) }
    })
    .await;
    host.child.start_kill().expect("SIGKILL the host");
    let _ = host.child.wait().await;
    expect_gone(&marker).await;
}

#[tokio::test]
async fn sigkill_of_the_host_right_after_a_start_leaves_nothing_behind() {
    // The host dies before its shim may even have looked at its parent:
    // the shim is told the host's pid, so it does not mistake init for it.
    for _ in 0..5 {
        let secs = 100_000 + rand_suffix();
        let marker = format!("sleep {secs}");
        let mut host = HostProcess::start("early", &family_manifest(secs)).await;
        host.expect("family started instance=1", Duration::from_secs(10))
            .await;
        host.child.start_kill().expect("SIGKILL the host");
        let _ = host.child.wait().await;
        expect_gone(&marker).await;
    }
}
