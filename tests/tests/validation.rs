//! JSON Schema validation end to end: bad arguments, hostile payloads and
//! uncompilable schemas are refused before any provider runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kernel_proto::v1 as pb;
use kernel_sdk::{Bytes, CallOptions, Plugin};
use kernel_tests::Node;
use tonic::Code;

const ORDER_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["sku", "qty"],
  "properties": { "sku": { "type": "string" }, "qty": { "type": "integer", "minimum": 1 } }
}"#;

#[tokio::test]
async fn schema_validation_refuses_bad_arguments_before_the_provider() {
    let node = Node::start().await;
    let invoked = Arc::new(AtomicUsize::new(0));
    let i = invoked.clone();
    let _reg = Plugin::new("orders")
        .provide("orders.place", move |_ctx, p: Bytes| {
            let i = i.clone();
            async move {
                i.fetch_add(1, Ordering::SeqCst);
                Ok(p)
            }
        })
        .schema("orders.place", "", ORDER_SCHEMA)
        .attach(&node.kernel)
        .expect("attach");
    let client = node.client();
    for (payload, path) in [
        (r#"{"sku":"A1","qty":"two"}"#, "/qty"),
        (r#"{"qty":3}"#, "sku"),
        ("not json at all", "not valid JSON"),
        (
            &format!("{}1{}", "[".repeat(200), "]".repeat(200)),
            "not valid JSON",
        ),
    ] {
        let err = client
            .call("orders.place", payload.to_owned())
            .await
            .expect_err(payload);
        assert_eq!(err.code(), Code::InvalidArgument, "{payload}: {err}");
        assert!(err.message().contains(path), "{payload}: {err}");
    }
    let err = client
        .call("orders.place", r#"{"sku":7,"qty":0}"#)
        .await
        .expect_err("two failures");
    assert!(
        err.message().contains("/sku") && err.message().contains("/qty"),
        "each failing path listed: {err}"
    );
    assert_eq!(
        invoked.load(Ordering::SeqCst),
        0,
        "the provider is never invoked"
    );
    assert_eq!(
        client
            .call("orders.place", r#"{"sku":"A1","qty":2}"#)
            .await
            .expect("valid"),
        r#"{"sku":"A1","qty":2}"#
    );
    assert_eq!(invoked.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn hostile_arrays_are_refused_with_their_first_failure_and_json_content_is_checked() {
    let node = Node::start().await;
    let invoked = Arc::new(AtomicUsize::new(0));
    let (i, j) = (invoked.clone(), invoked.clone());
    let _reg = Plugin::new("batches")
        .provide("batch.put", move |_ctx, p: Bytes| {
            i.fetch_add(1, Ordering::SeqCst);
            async move { Ok(p) }
        })
        .schema(
            "batch.put",
            "",
            r#"{"type":"array","items":{"type":"string"}}"#,
        )
        .provide("raw.put", move |_ctx, p: Bytes| {
            j.fetch_add(1, Ordering::SeqCst);
            async move { Ok(p) }
        })
        .attach(&node.kernel)
        .expect("attach");
    let client = node.client();

    // Small: every failing item listed.
    let err = client
        .call("batch.put", r#"[1,"a",2]"#)
        .await
        .expect_err("two bad items");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.message().contains("at `/0`") && err.message().contains("at `/2`"),
        "{err}"
    );

    // About 2 MiB of failing items: refused with the first failure only
    // (listing would build a million errors first).
    let huge = format!("[{}1]", "1,".repeat(1_000_000));
    let err = client
        .call("batch.put", huge)
        .await
        .expect_err("a million bad items");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("at `/0`"), "{err}");
    assert!(!err.message().contains("at `/1`"), "{err}");
    assert!(err.message().contains("only the first failure"), "{err}");

    // No schema, but the content type says JSON: the payload must be JSON.
    let json = CallOptions {
        content_type: "application/json".into(),
        ..Default::default()
    };
    let err = client
        .call_with("raw.put", "{not json", json.clone())
        .await
        .expect_err("declared JSON, is not");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("not valid JSON"), "{err}");
    assert_eq!(invoked.load(Ordering::SeqCst), 0, "no provider invoked");

    // The same bytes as opaque content, and valid JSON, go through.
    let opaque = CallOptions {
        content_type: "application/octet-stream".into(),
        ..Default::default()
    };
    client
        .call_with("raw.put", "{not json", opaque)
        .await
        .expect("opaque payload");
    client
        .call_with("raw.put", r#"{"ok":true}"#, json)
        .await
        .expect("declared JSON, is JSON");
    assert_eq!(invoked.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_schema_that_does_not_compile_is_refused_at_register() {
    let node = Node::start().await;
    let mut decl = pb::ServiceDecl {
        name: "bad.schema".into(),
        ..Default::default()
    };
    decl.method_schemas
        .insert("".into(), r#"{"type": 12}"#.into());
    let hello = pb::ProviderUp {
        hello: Some(pb::Hello {
            plugin: "bad".into(),
            services: vec![decl],
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = node
        .raw()
        .await
        .register(futures::stream::iter(vec![hello]))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("does not compile"),
        "{}",
        err.message()
    );
    assert!(node.kernel.registry().pool("bad.schema").is_none());
}
