//! The example system end to end: the `kernel-system` node with inventory
//! in-process, and the Rust `orders` plugin and the Python `notifier`
//! supervised by it; an order flows through all three. Needs the Python
//! environment `make test` prepares (`KERNEL_TEST_PYTHON`,
//! `KERNEL_TEST_PYTHONPATH`).

use std::path::PathBuf;
use std::time::Duration;

use kernel_tests::{binary, eventually, NodeProcess};

/// The Python interpreter and stub directory `make test` prepared.
fn python() -> (String, String) {
    let get = |key: &str| {
        std::env::var(key).unwrap_or_else(|_| {
            panic!("{key} is not set: run the tests with `make test`, which prepares the Python environment")
        })
    };
    (get("KERNEL_TEST_PYTHON"), get("KERNEL_TEST_PYTHONPATH"))
}

fn notifier_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/notifier/notifier.py")
        .canonicalize()
        .expect("examples/notifier/notifier.py")
}

#[tokio::test]
async fn an_order_flows_from_a_rust_plugin_through_an_in_process_one_to_a_python_subscriber() {
    let (python, stubs) = python();
    let script = notifier_script();
    let dir = std::env::temp_dir().join(format!("kernel-system-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("system.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [[plugins]]
            name = "orders"
            command = "{orders}"
            services = ["orders.create"]
            critical = true

            [[plugins]]
            name = "notifier"
            command = "{python}"
            args = ["{script}"]
            env = {{ PYTHONPATH = "{stubs}", PYTHONUNBUFFERED = "1" }}
            services = ["notify.send"]
            "#,
            orders = binary("orders").display(),
            script = script.display(),
        ),
    )
    .expect("config");
    let config_text = config.display().to_string();
    let mut node =
        NodeProcess::start_program("kernel-system", &["--config", &config_text], &[]).await;
    let client = kernel_sdk::Client::connect(&node.url).expect("client");
    for service in ["orders.create", "notify.send", "inventory.check_stock"] {
        eventually(
            Duration::from_secs(30),
            &format!("{service} served"),
            || {
                let c = client.clone();
                async move {
                    let body = if service == "inventory.check_stock" {
                        r#"{"sku":"sku-1"}"#
                    } else {
                        r#""ping""#
                    };
                    match c.call(service, body).await {
                        // orders.create with a bad body is still an answer from it.
                        Err(e) if e.code() == tonic::Code::InvalidArgument => Ok(()),
                        Err(e) => Err(e.to_string()),
                        Ok(_) => Ok(()),
                    }
                }
            },
        )
        .await;
    }

    // Admin shows the supervised plugins and the in-process one alike.
    let admin = kernel_proto::v1::admin_client::AdminClient::connect(node.url.clone())
        .await
        .expect("admin");
    // The host sees a plugin ready a moment after it serves (it polls).
    let listed = eventually(Duration::from_secs(10), "all plugins running", || {
        let mut admin = admin.clone();
        async move {
            let listed = admin
                .list_supervised(kernel_proto::v1::ListSupervisedRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .plugins;
            let up = |n: &str| listed.iter().any(|p| p.plugin == n && p.state == "running");
            (up("orders") && up("notifier") && up("inventory"))
                .then_some(listed.clone())
                .ok_or(format!("{listed:?}"))
        }
    })
    .await;
    let state_of = |name: &str| {
        listed
            .iter()
            .find(|p| p.plugin == name)
            .map(|p| (p.state.clone(), p.pid))
            .unwrap_or_else(|| panic!("{name} not listed: {listed:?}"))
    };
    assert!(state_of("orders").1 > 0);
    let node_pid = node.child.id().expect("node pid");
    assert_eq!(state_of("inventory"), ("running".to_owned(), node_pid));

    // orders (Rust, supervised) → inventory (Rust, in-process) → an event.
    let order: serde_json::Value = serde_json::from_slice(
        &client
            .call("orders.create", r#"{"sku":"sku-1","qty":2}"#)
            .await
            .expect("order placed"),
    )
    .expect("json");
    let order_context = order["context"].as_str().expect("context").to_owned();
    assert_eq!(order["reservation"]["left"], 98, "{order}");
    let reserved_at = order["reservation"]["context"]
        .as_str()
        .expect("reservation context");
    assert!(
        reserved_at.starts_with(&format!("{order_context}.")),
        "the reservation runs below the order: {reserved_at} vs {order_context}"
    );

    // The Python notifier heard order.created, delivered below the order.
    let seen = eventually(
        Duration::from_secs(10),
        "the notifier heard the order",
        || {
            let c = client.clone();
            let id = order["id"].clone();
            async move {
                let reply = c
                    .call("notify.send", r#""hello""#)
                    .await
                    .map_err(|e| e.to_string())?;
                let seen: serde_json::Value =
                    serde_json::from_slice(&reply).map_err(|e| e.to_string())?;
                (seen["last"]["id"] == id)
                    .then_some(seen.clone())
                    .ok_or(seen.to_string())
            }
        },
    )
    .await;
    assert_eq!(seen["last_topic"], "order.created");
    let delivered_at = seen["last_context"].as_str().expect("delivery context");
    assert!(
        delivered_at.starts_with(&format!("{order_context}.")),
        "the delivery hangs below the order: {delivered_at} vs {order_context}"
    );

    // More than the stock: inventory refuses, the order fails with its cause.
    let err = client
        .call("orders.create", r#"{"sku":"sku-2","qty":50}"#)
        .await
        .expect_err("out of stock");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("not enough `sku-2`"), "{err}");

    // SIGTERM stops the node and both supervised plugins.
    node.terminate().await;
    let status = tokio::time::timeout(Duration::from_secs(20), node.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    let script_text = script.display().to_string();
    let orders_text = binary("orders").display().to_string();
    eventually(Duration::from_secs(10), "no plugin process left", || {
        let left: Vec<u32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| {
                        let c = String::from_utf8_lossy(&c).replace('\0', " ");
                        c.contains(&script_text) || c.starts_with(&orders_text)
                    })
                    .unwrap_or(false)
            })
            .collect();
        async move {
            left.is_empty()
                .then_some(())
                .ok_or(format!("left: {left:?}"))
        }
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
