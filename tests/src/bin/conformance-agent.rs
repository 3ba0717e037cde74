//! The Rust SDK's conformance agent: what the SDK can do, exposed as the
//! services `tests/conformance/README.md` lists, for the driver in
//! `tests/tests/conformance.rs` to exercise through a real node.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use kernel_sdk::{
    Bytes, CallOptions, CancellationToken, Client, Code, Context, Error, Plugin, SubscribeOptions,
};
use parking_lot::Mutex;
use serde_json::{json, Value};

fn code_name(code: Code) -> &'static str {
    kernel_proto::failure::code_name(code as i32)
}

fn code_of(name: &str) -> Code {
    kernel_proto::failure::code_of(name).map_or(Code::Unknown, Code::from_i32)
}

/// What the agent remembers between calls.
#[derive(Default)]
struct State {
    /// `P.sleep` outcomes by key.
    observed: Mutex<HashMap<String, &'static str>>,
    /// Events received, by subscription key.
    received: Mutex<HashMap<String, Vec<Value>>>,
}

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

fn str_field(v: &Value, key: &str) -> Result<String, Error> {
    field(v, key)
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::invalid_argument(format!("`{key}` must be a string")))
}

fn opt(s: Option<&str>) -> Value {
    s.map_or(Value::Null, |s| Value::String(s.to_owned()))
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

fn error_json(e: &Error) -> Value {
    json!({
        "code": code_name(e.code()),
        "message": e.message(),
        "chain": e.causality().iter().map(|h| h.service.clone()).collect::<Vec<_>>(),
    })
}

/// Waits `ms`; records how the wait ended (a handler whose call was
/// cancelled is dropped: the guard records that).
async fn sleep(state: Arc<State>, ctx: Context, input: Value) -> Result<Value, Error> {
    struct Guard(Arc<State>, String, bool);
    impl Drop for Guard {
        fn drop(&mut self) {
            let outcome = if self.2 { "finished" } else { "cancelled" };
            self.0.observed.lock().insert(self.1.clone(), outcome);
        }
    }
    let ms = field(&input, "ms").as_u64().unwrap_or(0);
    let mut guard = Guard(state, str_field(&input, "key")?, false);
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
        _ = ctx.cancelled() => return Err(Error::new(Code::Cancelled, "cancelled")),
    }
    guard.2 = true;
    Ok(json!({ "slept": ms }))
}

async fn subscribe(state: Arc<State>, client: Client, input: Value) -> Result<Value, Error> {
    let key = str_field(&input, "key")?;
    let mut opts = SubscribeOptions::default();
    for p in field(&input, "patterns").as_array().into_iter().flatten() {
        opts = opts.pattern(p.as_str().unwrap_or_default());
    }
    if let Some(g) = field(&input, "group").as_str() {
        opts = opts.queue_group(g);
    }
    let explicit = field(&input, "explicit").as_bool().unwrap_or(false);
    if explicit {
        opts = opts.explicit_ack();
    }
    if let Some(n) = field(&input, "max_deliver").as_u64() {
        opts = opts.max_deliver(n as u32);
    }
    let mut sub = client.subscriber(opts).await?;
    state.received.lock().entry(key.clone()).or_default();
    tokio::spawn(async move {
        while let Some(ev) = sub.next().await {
            let payload = json_of(&ev.payload);
            state
                .received
                .lock()
                .entry(key.clone())
                .or_default()
                .push(json!({
                    "topic": ev.topic,
                    "payload": payload,
                    "path": opt(ev.headers.get("x-kernel-context").map(String::as_str)),
                }));
            if explicit {
                if payload.get("nack") == Some(&Value::Bool(true)) {
                    sub.nack(&ev, Duration::ZERO);
                } else {
                    sub.ack(&ev);
                }
            }
        }
    });
    Ok(json!({}))
}

/// One service's work; `ctx` is the invocation's context.
async fn serve(
    state: Arc<State>,
    client: Client,
    tag: String,
    service: String,
    ctx: Context,
    input: Value,
) -> Result<Value, Error> {
    let name = service.rsplit('.').next().unwrap_or_default();
    match name {
        "whoami" => Ok(json!({ "tag": tag })),
        "fail" => Err(Error::new(
            code_of(&str_field(&input, "code")?),
            str_field(&input, "message")?,
        )),
        "inspect" => Ok(json!({
            "service": ctx.service(),
            "path": ctx.path(),
            "caller": opt(ctx.caller()),
            "baggage": opt(ctx.baggage()),
            "trace_id": opt(ctx.trace_id()),
            "remaining_ms": ctx.remaining().map_or(Value::Null, |d| json!(d.as_millis() as u64)),
        })),
        "relay" => {
            let reply = ctx
                .call(
                    &str_field(&input, "service")?,
                    serde_json::to_vec(field(&input, "payload"))?,
                )
                .await?;
            Ok(json!({ "path": ctx.path(), "reply": json_of(&reply) }))
        }
        "sleep" => sleep(state, ctx, input).await,
        "observed" => {
            let key = str_field(&input, "key")?;
            Ok(json!({ "state": opt(state.observed.lock().get(&key).copied()) }))
        }
        "charge" => {
            let amount = field(&input, "amount").as_u64().unwrap_or(0);
            let total = ctx.charge(&str_field(&input, "counter")?, amount).await?;
            Ok(json!({ "remaining": total }))
        }
        "emit" => {
            ctx.emit(
                &str_field(&input, "topic")?,
                serde_json::to_vec(field(&input, "payload"))?,
            )
            .await?;
            Ok(json!({}))
        }
        "subscribe" => subscribe(state, client, input).await,
        "received" => {
            let key = str_field(&input, "key")?;
            let got = state.received.lock().get(&key).cloned().unwrap_or_default();
            Ok(Value::Array(got))
        }
        "call" => {
            let opts = CallOptions {
                timeout: field(&input, "timeout_ms")
                    .as_u64()
                    .map(Duration::from_millis),
                ..CallOptions::default()
            };
            let payload = serde_json::to_vec(field(&input, "payload"))?;
            match client
                .call_with(&str_field(&input, "service")?, payload, opts)
                .await
            {
                Ok(r) => Ok(json!({ "ok": json_of(&r.payload) })),
                Err(e) => Ok(json!({ "error": error_json(&e) })),
            }
        }
        "publish" => {
            let published = client
                .publish(
                    &str_field(&input, "topic")?,
                    serde_json::to_vec(field(&input, "payload"))?,
                )
                .await?;
            Ok(json!({ "id": published.event_id() }))
        }
        other => Err(Error::new(
            Code::Unimplemented,
            format!("the agent has no `{other}`"),
        )),
    }
}

const SERVICES: [&str; 13] = [
    "whoami",
    "fail",
    "inspect",
    "relay",
    "sleep",
    "observed",
    "charge",
    "emit",
    "subscribe",
    "received",
    "call",
    "publish",
    "echo",
];

#[tokio::main]
async fn main() -> Result<(), Error> {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let url = env("KERNEL_URL");
    let prefix = env("CONFORMANCE_PREFIX");
    let tag = env("CONFORMANCE_TAG");
    let ours = tag.clone();
    let client = Client::connect(&url)?.with_plugin(&prefix);
    let state = Arc::new(State::default());
    let mut plugin = Plugin::new(&prefix);
    if env("CONFORMANCE_REPLACE") == "1" {
        plugin = plugin.replace();
    }
    for name in SERVICES {
        let service = format!("{prefix}.{name}");
        if name == "echo" {
            plugin = plugin.provide(&service, |_ctx: Context, payload: Bytes| async move {
                Ok(payload)
            });
            continue;
        }
        let (state, client, tag, svc) =
            (state.clone(), client.clone(), tag.clone(), service.clone());
        plugin = plugin.provide(&service, move |ctx: Context, payload: Bytes| {
            let (state, client, tag, svc) =
                (state.clone(), client.clone(), tag.clone(), svc.clone());
            async move {
                let input = json_of(&payload);
                let out = serve(state, client, tag, svc, ctx, input).await?;
                Ok(Bytes::from(serde_json::to_vec(&out)?))
            }
        });
    }
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    // Stdin closing (the driver went away) ends the agent.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        stop.cancel();
    });
    let ready = client.clone();
    let first = format!("{prefix}.whoami");
    tokio::spawn(async move {
        // Registered once a call to our own service reaches this instance
        // (a replaced one may still answer for a moment).
        loop {
            let reply = ready.call(&first, "{}").await.map(|r| json_of(&r));
            if reply.is_ok_and(|r| r["tag"] == ours.as_str()) {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "READY");
                let _ = out.flush();
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    plugin.serve(&url, shutdown).await.map(|_| ())
}
