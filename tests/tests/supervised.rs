//! Plugins a node supervises itself: none left behind when the node is
//! killed, calls to a plugin that is down failing at once and naming it,
//! readiness with critical plugins, and their status and reset through
//! Admin.

use std::time::Duration;

use kernel_tests::supervision::*;
use kernel_tests::{eventually, NodeProcess};

#[tokio::test]
async fn sigkill_of_a_node_supervising_plugins_leaves_none_behind() {
    let secs = 100_000 + rand_suffix();
    let marker = format!("sleep {secs}");
    let dir = TempDir::new("node");
    std::fs::write(
        dir.0.join("family.toml"),
        family_manifest(secs).replace("[[plugins]]", ""),
    )
    .expect("manifest");
    let dir_text = dir.0.display().to_string();
    let mut node = NodeProcess::start(&[("KERNEL_PLUGINS_DIR", dir_text.as_str())]).await;
    eventually(Duration::from_secs(10), "plugin and child running", || {
        let n = pids_with(&marker).len();
        async move { (n >= 2).then_some(()).ok_or(format!("{n} processes")) }
    })
    .await;
    node.child.start_kill().expect("SIGKILL the node");
    let _ = node.child.wait().await;
    expect_gone(&marker).await;
}

#[tokio::test]
async fn a_down_plugin_fails_its_calls_at_once_naming_it_and_only_a_critical_one_makes_the_node_unready(
) {
    let dir = TempDir::new("degrade");
    std::fs::write(
        dir.0.join("flaky.toml"),
        failing("flaky", "flaky.echo", false),
    )
    .expect("write");
    let dir_text = dir.0.display().to_string();
    let admin = free_port();
    let admin_listen = format!("127.0.0.1:{admin}");
    let node = NodeProcess::start(&[
        ("KERNEL_PLUGINS_DIR", dir_text.as_str()),
        ("KERNEL_TELEMETRY__ADMIN_LISTEN", admin_listen.as_str()),
    ])
    .await;
    // Another plugin, connected on its own, keeps answering.
    let _other =
        kernel_tests::PluginProcess::spawn_at(&node.url, &["--service", "other.echo"], &[]);
    let client = kernel_sdk::Client::connect(&node.url).expect("client");
    eventually(Duration::from_secs(20), "other.echo answering", || {
        let c = client.clone();
        async move {
            c.call("other.echo", "hi")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    // flaky.echo fails at once, UNAVAILABLE, naming the plugin and its state.
    let started = std::time::Instant::now();
    let err = client
        .call("flaky.echo", "x")
        .await
        .expect_err("flaky is down");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.message().contains("plugin `flaky`"), "{err}");
    eventually(Duration::from_secs(10), "flaky in its crash loop", || {
        let c = client.clone();
        async move {
            let e = c.call("flaky.echo", "x").await.expect_err("down");
            e.message()
                .contains("is crash-loop")
                .then_some(())
                .ok_or(e.message().to_owned())
        }
    })
    .await;
    assert_eq!(
        client.call("other.echo", "still").await.expect("other"),
        "still"
    );
    // A non-critical plugin down: the node stays ready.
    let (code, body) = get(admin, "/readyz").await.expect("readyz");
    assert_eq!(code, 200, "{body}");
    let (_, metrics) = get(admin, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains("kernel_plugin_up{plugin=\"flaky\",state=\"crash-loop\"} 0"),
        "{metrics}"
    );

    // A critical one down: not ready, and /readyz names it.
    let dir2 = TempDir::new("critical");
    std::fs::write(
        dir2.0.join("vital.toml"),
        failing("vital", "vital.echo", true),
    )
    .expect("write");
    let dir2_text = dir2.0.display().to_string();
    let admin2 = free_port();
    let admin2_listen = format!("127.0.0.1:{admin2}");
    let _node2 = NodeProcess::start(&[
        ("KERNEL_PLUGINS_DIR", dir2_text.as_str()),
        ("KERNEL_TELEMETRY__ADMIN_LISTEN", admin2_listen.as_str()),
    ])
    .await;
    eventually(
        Duration::from_secs(10),
        "/readyz 503 naming vital",
        || async move {
            match get(admin2, "/readyz").await {
                Ok((503, body)) if body.contains("vital") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn admin_lists_supervised_plugins_and_resets_one_out_of_its_crash_loop() {
    use kernel_proto::v1::{admin_client::AdminClient, ListSupervisedRequest, PluginRequest};
    let dir = TempDir::new("admin");
    std::fs::write(
        dir.0.join("looper.toml"),
        failing("looper", "looper.echo", false),
    )
    .expect("write");
    std::fs::write(
        dir.0.join("steady.toml"),
        "name = \"steady\"\ncommand = \"sh\"\nargs = [\"-c\", \"sleep 60\"]\n",
    )
    .expect("write");
    let dir_text = dir.0.display().to_string();
    let node = NodeProcess::start(&[("KERNEL_PLUGINS_DIR", dir_text.as_str())]).await;
    let mut admin = AdminClient::connect(node.url.clone()).await.expect("admin");
    let list = |admin: &mut AdminClient<tonic::transport::Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .list_supervised(ListSupervisedRequest {})
                .await
                .map(|r| r.into_inner().plugins)
                .map_err(|e| e.to_string())
        }
    };
    let looping = eventually(Duration::from_secs(10), "looper in its crash loop", || {
        let l = list(&mut admin);
        async move {
            let plugins = l.await?;
            plugins
                .iter()
                .find(|p| p.plugin == "looper" && p.state == "crash-loop")
                .cloned()
                .ok_or(format!("{plugins:?}"))
        }
    })
    .await;
    assert_eq!(looping.last_exit, "exit code 1");
    assert_eq!(looping.restarts, 2);
    assert_eq!(looping.pid, 0);
    assert!(!looping.critical);
    let plugins = list(&mut admin).await.expect("list");
    let steady = plugins
        .iter()
        .find(|p| p.plugin == "steady")
        .expect("steady");
    assert_eq!(steady.state, "running");
    assert!(steady.pid > 0, "{steady:?}");
    // Reset: it starts again, as a later instance, with its count cleared.
    admin
        .reset_plugin(PluginRequest {
            plugin: "looper".into(),
        })
        .await
        .expect("reset");
    eventually(Duration::from_secs(10), "looper started again", || {
        let l = list(&mut admin);
        let before = looping.instance;
        async move {
            let plugins = l.await?;
            let p = plugins
                .iter()
                .find(|p| p.plugin == "looper")
                .ok_or("gone")?;
            (p.instance > before).then_some(()).ok_or(format!("{p:?}"))
        }
    })
    .await;
    let err = admin
        .reset_plugin(PluginRequest {
            plugin: "nobody".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
}
