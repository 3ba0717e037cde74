//! Hot reload of a plugin a node supervises: under continuous calls, with
//! broken versions rolled back, and by a changed manifest file.

use std::time::Duration;

use kernel_tests::supervision::*;
use kernel_tests::{binary, eventually, NodeProcess};

#[tokio::test]
async fn a_hot_reload_under_load_fails_no_call_and_a_broken_version_is_rolled_back() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let dir = TempDir::new("reload");
    let program = dir.0.join("reloadable-plugin");
    install(&binary("test-plugin"), &program);
    let manifests = dir.0.join("manifests");
    std::fs::create_dir_all(&manifests).expect("dir");
    std::fs::write(
        manifests.join("reloadable.toml"),
        format!(
            r#"
            name = "reloadable"
            command = "{}"
            args = ["--service", "reload.echo", "--name", "reloadable"]
            services = ["reload.echo"]
            ready_timeout_ms = 5000
            "#,
            program.display()
        ),
    )
    .expect("manifest");
    let admin = free_port();
    let admin_listen = format!("127.0.0.1:{admin}");
    let manifests_text = manifests.display().to_string();
    let node = NodeProcess::start(&[
        ("KERNEL_PLUGINS_DIR", manifests_text.as_str()),
        ("KERNEL_TELEMETRY__ADMIN_LISTEN", admin_listen.as_str()),
    ])
    .await;
    let client = kernel_sdk::Client::connect(&node.url).expect("client");
    eventually(Duration::from_secs(20), "reload.echo answering", || {
        let c = client.clone();
        async move {
            c.call("reload.echo", "hi")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    assert_eq!(
        instances_of(&node.url, "reloadable").await.expect("admin"),
        vec!["reloadable-1:active".to_owned()]
    );

    // A good reload under a continuous stream of calls.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let running = callers(&client, "reload.echo", 4, &stop, &ok);
    eventually(Duration::from_secs(20), "calls flowing", || {
        let n = ok.load(Ordering::Relaxed);
        async move { (n >= 300).then_some(()).ok_or(format!("{n} calls")) }
    })
    .await;
    let before = ok.load(Ordering::Relaxed);
    install(&binary("test-plugin"), &program);
    eventually(
        Duration::from_secs(30),
        "traffic on instance 2 only",
        || {
            let url = node.url.clone();
            async move {
                let ids = instances_of(&url, "reloadable").await?;
                (ids == vec!["reloadable-2:active".to_owned()])
                    .then_some(())
                    .ok_or(format!("{ids:?}"))
            }
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "2,000 calls across the reload",
        || {
            let n = ok.load(Ordering::Relaxed) - before;
            async move { (n >= 2000).then_some(()).ok_or(format!("{n} calls")) }
        },
    )
    .await;
    let failures = stop_callers(&stop, running).await;
    assert!(
        failures.is_empty(),
        "failed calls across the reload: {failures:?}"
    );

    // A broken version (exits at start) is rolled back: instance 2 serves on.
    let broken = dir.0.join("broken");
    std::fs::write(&broken, "#!/bin/sh\nexit 1\n").expect("write");
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let running = callers(&client, "reload.echo", 2, &stop, &ok);
    install(&broken, &program);
    metric_shows(
        admin,
        "kernel_plugin_reload_failures_total{plugin=\"reloadable\"} 1",
        "the rollback reported",
    )
    .await;
    let after_rollback = ok.load(Ordering::Relaxed);
    eventually(Duration::from_secs(20), "calls still answered", || {
        let n = ok.load(Ordering::Relaxed);
        async move {
            (n >= after_rollback + 200)
                .then_some(())
                .ok_or(format!("{n}"))
        }
    })
    .await;
    let failures = stop_callers(&stop, running).await;
    assert!(
        failures.is_empty(),
        "failed calls during the rollback: {failures:?}"
    );

    // A version that starts but fails its calls: it serves beside the old
    // one in its probation, fails, and is rolled back; the calls it failed
    // are the only failures, and the old instance answers the rest.
    let failing = dir.0.join("failing");
    std::fs::write(
        &failing,
        format!(
            "#!/bin/sh\nexec {} \"$@\" --mode internal\n",
            binary("test-plugin").display()
        ),
    )
    .expect("write");
    std::fs::set_permissions(
        &failing,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let running = callers(&client, "reload.echo", 2, &stop, &ok);
    install(&failing, &program);
    metric_shows(
        admin,
        "kernel_plugin_reload_failures_total{plugin=\"reloadable\"} 2",
        "the second rollback reported",
    )
    .await;
    let during = stop_callers(&stop, running).await;
    assert!(
        during.iter().all(|f| f.contains("broken build")),
        "only the broken version's own failures: {during:?}"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let running = callers(&client, "reload.echo", 2, &stop, &ok);
    eventually(
        Duration::from_secs(20),
        "calls answered after the rollback",
        || {
            let n = ok.load(Ordering::Relaxed);
            async move { (n >= 200).then_some(()).ok_or(format!("{n}")) }
        },
    )
    .await;
    let failures = stop_callers(&stop, running).await;
    assert!(
        failures.is_empty(),
        "failed calls after the rollback: {failures:?}"
    );
    assert_eq!(
        instances_of(&node.url, "reloadable").await.expect("admin"),
        vec!["reloadable-2:active".to_owned()]
    );
}

#[tokio::test]
async fn a_changed_manifest_reloads_the_plugin_and_a_bad_one_leaves_the_old_serving() {
    let dir = TempDir::new("manifest");
    let manifest = |extra: &str| {
        format!(
            "name = \"conf\"\ncommand = \"{}\"\nargs = [\"--service\", \"conf.echo\", \"--name\", \"conf\"]\nservices = [\"conf.echo\"]\nprobation_ms = 100\n{extra}\n",
            binary("test-plugin").display()
        )
    };
    let file = dir.0.join("conf.toml");
    std::fs::write(&file, manifest("")).expect("write");
    let write = |text: String| {
        let tmp = dir.0.join("conf.toml.new");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
    };
    let admin = free_port();
    let admin_listen = format!("127.0.0.1:{admin}");
    let dir_text = dir.0.display().to_string();
    let node = NodeProcess::start(&[
        ("KERNEL_PLUGINS_DIR", dir_text.as_str()),
        ("KERNEL_TELEMETRY__ADMIN_LISTEN", admin_listen.as_str()),
    ])
    .await;
    let client = kernel_sdk::Client::connect(&node.url).expect("client");
    eventually(Duration::from_secs(20), "conf.echo answering", || {
        let c = client.clone();
        async move {
            c.call("conf.echo", "hi")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    // A bad manifest: refused, counted, and instance 1 serves on.
    write(manifest("restart_policy = \"always\""));
    metric_shows(
        admin,
        "kernel_plugin_reload_failures_total{plugin=\"conf\"} 1",
        "the refusal counted",
    )
    .await;
    assert_eq!(
        client.call("conf.echo", "still").await.expect("old serves"),
        "still"
    );
    assert_eq!(
        instances_of(&node.url, "conf").await.expect("admin"),
        vec!["conf-1:active".to_owned()]
    );
    // A good change: the plugin reloads by it.
    write(manifest("env = { CONF_VERSION = \"2\" }"));
    eventually(Duration::from_secs(20), "instance 2 serving alone", || {
        let url = node.url.clone();
        async move {
            let ids = instances_of(&url, "conf").await?;
            (ids == vec!["conf-2:active".to_owned()])
                .then_some(())
                .ok_or(format!("{ids:?}"))
        }
    })
    .await;
    assert_eq!(
        client.call("conf.echo", "new").await.expect("new serves"),
        "new"
    );
}
