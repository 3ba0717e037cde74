//! One trace across languages: a Python caller calls `hop.rust` (a Rust
//! plugin process), which does its own `#[instrument]`ed work, calls
//! `hop.python` (a Python plugin process on the Python SDK) and emits
//! `hop.done`, which a Node.js subscriber receives. Every process exports
//! to one OTLP receiver inside the test; the spans must form one tree.

use std::time::Duration;

use kernel_node::config::Config;
use kernel_tests::otlp::{start_receiver, Seen};
use kernel_tests::{binary, eventually, Node, PluginProcess};

const TRACE: &str = "5b8efff798038103d269b633813fc60c";
const CALLER_SPAN: &str = "eee19b7ec3c1b174";

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| {
        panic!("{key} is not set: run the tests with `make test`, which prepares the Python environment")
    })
}

/// The Python plugin: `hop.python` on the Python SDK, its spans exported
/// over OTLP to `endpoint` as they end.
const PYTHON_PLUGIN: &str = r#"
import asyncio, os, sys
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from kernel_sdk import Context, Plugin

provider = TracerProvider(resource=Resource.create({"service.name": "python-plugin"}))
provider.add_span_processor(SimpleSpanProcessor(
    OTLPSpanExporter(endpoint=os.environ["OTLP"], insecure=True)))
plugin = Plugin("python-hop", tracer=provider.get_tracer("python-hop"))

@plugin.service("hop.python")
async def hop(ctx: Context, args: dict) -> dict:
    return {"python_path": ctx.path, "order": args.get("order")}

async def main() -> None:
    serving = asyncio.create_task(plugin.serve(os.environ["KERNEL_URL"]))
    await plugin.wait_registered(timeout=10)
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    plugin.stop()
    await serving
    provider.shutdown()

asyncio.run(main())
"#;

/// The Python caller: one call with the test's trace as its parent.
const PYTHON_CALLER: &str = r#"
import asyncio, json, os
from kernel_sdk import Client

async def main() -> None:
    async with Client(os.environ["KERNEL_URL"], plugin="python-caller") as client:
        reply = await client.call_json("hop.rust", {"order": 7}, timeout=10.0,
            headers={"traceparent": os.environ["TRACEPARENT"]})
        print(json.dumps(reply), flush=True)

asyncio.run(main())
"#;

fn python_script(name: &str, code: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kernel-trace-lang-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join(name);
    std::fs::write(&path, code).expect("write script");
    path
}

fn one<'a>(spans: &'a [Seen], name: &str, key: &str, value: &str) -> &'a Seen {
    let found: Vec<&Seen> = spans
        .iter()
        .filter(|s| s.name == name && s.attrs.get(key).map(String::as_str) == Some(value))
        .collect();
    assert_eq!(found.len(), 1, "one {name} with {key}={value}: {spans:#?}");
    found[0]
}

#[tokio::test]
async fn a_python_caller_a_rust_plugin_a_python_plugin_and_a_node_subscriber_share_one_trace() {
    let node_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/node");
    assert!(
        std::path::Path::new(node_dir)
            .join("node_modules/@grpc/grpc-js")
            .exists(),
        "run the tests with `make test`, which installs the Node example's packages"
    );
    let (receiver, endpoint) = start_receiver().await;
    let telemetry = kernel_node::telemetry::otlp(&endpoint, Some("kernel-node")).expect("exporter");
    let node = Node::start_full(Config::default(), telemetry).await;
    let python = std::path::PathBuf::from(env("KERNEL_TEST_PYTHON"));

    let py_plugin = python_script("hop_python.py", PYTHON_PLUGIN);
    let mut py = PluginProcess::spawn_program(
        &python,
        &[py_plugin.to_str().expect("utf-8 path")],
        &[("KERNEL_URL", &node.url), ("OTLP", &endpoint)],
    );
    py.expect_line("READY", Duration::from_secs(30)).await;

    let mut rust = PluginProcess::spawn_program(
        &binary("trace-plugin"),
        &["--next", "hop.python"],
        &[
            ("KERNEL_URL", &node.url),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("RUST_LOG", "info"),
        ],
    );
    node.wait_providers("hop.rust", 1).await;

    let mut subscriber = PluginProcess::spawn_program(
        std::path::Path::new("node"),
        &[&format!("{node_dir}/subscriber.js"), "hop.done"],
        &[("KERNEL_URL", &node.url)],
    );
    subscriber
        .expect_line("SUBSCRIBED", Duration::from_secs(30))
        .await;

    let caller = python_script("caller.py", PYTHON_CALLER);
    let out = tokio::process::Command::new(&python)
        .arg(&caller)
        .env("KERNEL_URL", &node.url)
        .env("TRACEPARENT", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .output()
        .await
        .expect("python caller runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(reply.contains("\"order\": 7"), "{reply}");

    // The Node.js subscriber got the event, parented on its delivery span.
    let line = subscriber
        .expect_line("{\"topic\":\"hop.done\"", Duration::from_secs(20))
        .await;
    let delivered: serde_json::Value = serde_json::from_str(&line).expect("json line");
    let traceparent = delivered["traceparent"].as_str().expect("a traceparent");
    assert!(traceparent.starts_with(&format!("00-{TRACE}-")), "{line}");

    // The Rust plugin's log line inside its handler carries the trace.
    let logged = loop {
        let l = rust.expect_line("trace_id=", Duration::from_secs(20)).await;
        if l.contains("order checked") {
            break l;
        }
    };
    assert!(logged.contains(&format!("trace_id={TRACE}")), "{logged}");

    let want = [
        "kernel.call",
        "kernel.dispatch",
        "plugin.handle",
        "check_order",
        "kernel.publish",
        "kernel.deliver",
    ];
    let spans = eventually(Duration::from_secs(30), "the whole trace", || {
        node.kernel.telemetry().flush();
        let spans = receiver.trace(TRACE);
        let handles = spans.iter().filter(|s| s.name == "plugin.handle").count();
        let ok = handles == 2 && want.iter().all(|w| spans.iter().any(|s| s.name == *w));
        async move {
            if ok {
                Ok(spans)
            } else {
                Err(format!(
                    "{:?}",
                    spans.iter().map(|s| &s.name).collect::<Vec<_>>()
                ))
            }
        }
    })
    .await;

    let call_rust = one(&spans, "kernel.call", "kernel.service", "hop.rust");
    assert_eq!(
        call_rust.parent, CALLER_SPAN,
        "under the Python caller's span"
    );
    let dispatch_rust = one(&spans, "kernel.dispatch", "kernel.service", "hop.rust");
    assert_eq!(dispatch_rust.parent, call_rust.span_id);
    let handle_rust = one(&spans, "plugin.handle", "kernel.service", "hop.rust");
    assert_eq!(handle_rust.parent, dispatch_rust.span_id);
    assert_eq!(
        handle_rust.resource.get("service.name").map(String::as_str),
        Some("rust-plugin")
    );
    // The Rust handler's own #[instrument] span, under its plugin.handle.
    let own = spans
        .iter()
        .find(|s| s.name == "check_order")
        .expect("check_order span");
    assert_eq!(own.parent, handle_rust.span_id, "{own:?}");
    let call_py = one(&spans, "kernel.call", "kernel.service", "hop.python");
    assert_eq!(
        call_py.parent, handle_rust.span_id,
        "nested call under the Rust handler"
    );
    let dispatch_py = one(&spans, "kernel.dispatch", "kernel.service", "hop.python");
    assert_eq!(dispatch_py.parent, call_py.span_id);
    let handle_py = one(&spans, "plugin.handle", "kernel.service", "hop.python");
    assert_eq!(handle_py.parent, dispatch_py.span_id);
    assert_eq!(
        handle_py.resource.get("service.name").map(String::as_str),
        Some("python-plugin")
    );
    let publish = one(&spans, "kernel.publish", "kernel.topic", "hop.done");
    assert_eq!(
        publish.parent, handle_rust.span_id,
        "emitted by the Rust handler"
    );
    let deliver = one(&spans, "kernel.deliver", "kernel.topic", "hop.done");
    assert_eq!(deliver.parent, publish.span_id);
    assert_eq!(
        traceparent.split('-').nth(2),
        Some(deliver.span_id.as_str()),
        "the Node.js subscriber's parent is the delivery span"
    );

    drop(subscriber);
    drop(rust);
    drop(py);
    node.stop().await;
}
