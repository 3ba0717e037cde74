//! The SDK conformance suite: every scenario of
//! `tests/conformance/scenarios.json`, run against each SDK's agent (see
//! `tests/conformance/README.md`) through a real node. The driver speaks raw
//! `kernel.v1` gRPC, so it sees what each SDK put on the wire.
//!
//! Step kinds (every string has `{P}` replaced by the agent's prefix):
//!
//! - `{"call": service, "input": v, "headers": {..}, "timeout_ms": n,
//!    "via": "unary" | "stream", "cancel_after_ms": n, "expect": v,
//!    "expect_error": {"code", "message", "chain"}, "save": name}`: one call
//!   by the driver. `cancel_after_ms` sends a cancel frame on the CallStream;
//!   the kernel sends no reply for a cancelled call, so the stream's end
//!   without one counts as `CANCELLED`.
//!   Unary calls also see the response's `x-kernel-context` and
//!   `x-kernel-trace-id`, as `{@context}` and `{@trace_id}` in `expect`.
//! - `{"wait": <call step>, "within_ms": n}`: repeats the call until its
//!   expectation holds.
//! - `{"count": [<call step>, ...], "total": n, "within_ms": n}`: repeats the
//!   calls until the lengths of their (array) answers add up to `total`.
//! - `{"publish": topic, "payload": v}`: a unary Publish by the driver.
//! - `{"start_agent": {"tag": t, "replace": bool}}`: another instance of the
//!   agent under test, waited for until it is READY.
//! - `{"restart_node": true}`: the node stops and starts again on its port.
//!
//! An expected value matches when it is equal, or for objects when every
//! key it names matches; `"*"` matches any non-null value, `"^s"` a string
//! starting with `s`, `{"$range": [lo, hi]}` a number between them, and
//! `{"$len": n}` an array of n items. `{name.key}` and `{name.@context}`
//! refer to the answer of the step saved as `name`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use kernel_proto::v1 as pb;
use kernel_tests::{Node, PluginProcess};
use serde_json::{json, Value};
use tonic::metadata::MetadataValue;

/// How to start one SDK's agent.
struct Agent {
    sdk: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Agent {
    fn rust() -> Agent {
        Agent {
            sdk: "rust",
            program: kernel_tests::binary("conformance-agent"),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    fn python() -> Agent {
        let python = std::env::var("KERNEL_TEST_PYTHON").expect(
            "KERNEL_TEST_PYTHON is not set: run the tests with `make test`, which prepares the Python environment",
        );
        Agent {
            sdk: "python",
            program: python.into(),
            args: vec![concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../sdk-python/conformance/agent.py"
            )
            .to_owned()],
            env: vec![("PYTHONUNBUFFERED".into(), "1".into())],
        }
    }

    /// Starts an instance against `url`, waits for its READY line.
    async fn start(&self, url: &str, prefix: &str, tag: &str, replace: bool) -> PluginProcess {
        let mut env: Vec<(&str, &str)> = vec![
            ("KERNEL_URL", url),
            ("CONFORMANCE_PREFIX", prefix),
            ("CONFORMANCE_TAG", tag),
            ("CONFORMANCE_REPLACE", if replace { "1" } else { "0" }),
        ];
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut p = PluginProcess::spawn_program(&self.program, &args, &env);
        p.expect_line("READY", Duration::from_secs(20)).await;
        p
    }
}

/// What one call gave back.
#[derive(Debug, Clone)]
struct Outcome {
    result: Result<Value, Value>,
    context: Option<String>,
    trace_id: Option<String>,
}

/// One run of the scenarios against one agent.
struct Run {
    node: Node,
    agent: Agent,
    prefix: String,
    agents: Vec<PluginProcess>,
    saved: HashMap<String, Outcome>,
    scenario: String,
}

fn scenarios() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conformance/scenarios.json"
    ))
    .expect("tests/conformance/scenarios.json");
    serde_json::from_str::<Value>(&text)
        .expect("scenarios.json is JSON")
        .as_array()
        .expect("a list of scenarios")
        .clone()
}

/// The failure behind a status: the message without its origin suffix,
/// and the chain's services, innermost first.
fn failure_json(status: &tonic::Status) -> Value {
    let failure = kernel_proto::failure::status_to_failure(status);
    json!({
        "code": kernel_proto::failure::code_name(failure.code),
        "message": failure.message,
        "chain": failure.causality.iter().map(|h| h.service.clone()).collect::<Vec<_>>(),
    })
}

fn failure_of(f: &pb::Failure) -> Value {
    json!({
        "code": kernel_proto::failure::code_name(f.code),
        "message": f.message,
        "chain": f.causality.iter().map(|h| h.service.clone()).collect::<Vec<_>>(),
    })
}

impl Run {
    /// `{P}`, `{@context}`, `{@trace_id}` and `{name.key}` filled in.
    fn fill(&self, v: &Value, current: Option<&Outcome>) -> Value {
        match v {
            Value::String(s) => Value::String(self.fill_str(s, current)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.fill(x, current)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| (self.fill_str(k, current), self.fill(x, current)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn fill_str(&self, s: &str, current: Option<&Outcome>) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            let Some(len) = rest[open..].find('}') else {
                break;
            };
            out.push_str(&rest[..open]);
            let name = &rest[open + 1..open + len];
            out.push_str(
                &self
                    .lookup(name, current)
                    .unwrap_or_else(|| format!("{{{name}}}")),
            );
            rest = &rest[open + len + 1..];
        }
        out.push_str(rest);
        out
    }

    fn lookup(&self, name: &str, current: Option<&Outcome>) -> Option<String> {
        if name == "P" {
            return Some(self.prefix.clone());
        }
        let (from, key) = match name.split_once('.') {
            Some((saved, key)) => (self.saved.get(saved), key),
            None => (current, name),
        };
        let o = from?;
        match key {
            "@context" => o.context.clone(),
            "@trace_id" => o.trace_id.clone(),
            key => o
                .result
                .as_ref()
                .ok()?
                .get(key)?
                .as_str()
                .map(str::to_owned),
        }
    }

    async fn call(&self, step: &Value) -> Outcome {
        let service = self.fill_str(step["call"].as_str().expect("call: a service"), None);
        let input = self.fill(&step["input"], None);
        let payload = serde_json::to_vec(&input).expect("json");
        let mut headers: Vec<(String, String)> = step["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                (
                    k.clone(),
                    self.fill_str(v.as_str().unwrap_or_default(), None),
                )
            })
            .collect();
        let timeout = step["timeout_ms"].as_u64().map(Duration::from_millis);
        let streamed = step["via"] == "stream" || step.get("cancel_after_ms").is_some();
        if !streamed {
            let mut req = tonic::Request::new(pb::CallRequest {
                service,
                payload: payload.into(),
                ..Default::default()
            });
            for (k, v) in headers.drain(..) {
                let key: tonic::metadata::MetadataKey<_> = k.parse().expect("header name");
                req.metadata_mut()
                    .insert(key, MetadataValue::try_from(v.as_str()).expect("header"));
            }
            if let Some(t) = timeout {
                req.set_timeout(t);
            }
            return match self.node.raw().await.call(req).await {
                Ok(resp) => {
                    let meta = |k: &str| {
                        resp.metadata()
                            .get(k)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let (context, trace_id) = (meta("x-kernel-context"), meta("x-kernel-trace-id"));
                    let body = resp.into_inner().payload;
                    Outcome {
                        result: Ok(serde_json::from_slice(&body).unwrap_or(Value::Null)),
                        context,
                        trace_id,
                    }
                }
                Err(status) => Outcome {
                    result: Err(failure_json(&status)),
                    context: None,
                    trace_id: None,
                },
            };
        }
        let (up, rx) = tokio::sync::mpsc::unbounded_channel();
        up.send(pb::CallStreamUp {
            calls: vec![pb::CallFrame {
                id: 1,
                service,
                payload: payload.into(),
                headers: headers.into_iter().collect(),
                timeout_us: timeout.map_or(0, |t| t.as_micros() as u64),
                ..Default::default()
            }],
            ..Default::default()
        })
        .expect("queue the call");
        let mut down = self
            .node
            .raw()
            .await
            .call_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .expect("open CallStream")
            .into_inner();
        if let Some(ms) = step["cancel_after_ms"].as_u64() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            up.send(pb::CallStreamUp {
                cancels: vec![1],
                ..Default::default()
            })
            .expect("queue the cancel");
        }
        // Half-closed: the stream ends once nothing is in flight.
        drop(up);
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(20), down.message())
                .await
                .unwrap_or_else(|_| panic!("no reply within 20 s to {step}"))
                .expect("the stream ends well");
            // No reply is sent for a cancelled call (PROTOCOL §4.2).
            let Some(frame) = frame else {
                return Outcome {
                    result: Err(
                        json!({"code": "CANCELLED", "message": "no reply: cancelled", "chain": []}),
                    ),
                    context: None,
                    trace_id: None,
                };
            };
            if let Some(r) = frame.replies.into_iter().find(|r| r.id == 1) {
                let result = match &r.error {
                    Some(f) => Err(failure_of(f)),
                    None => Ok(serde_json::from_slice(&r.payload).unwrap_or(Value::Null)),
                };
                return Outcome {
                    result,
                    context: None,
                    trace_id: None,
                };
            }
        }
    }

    /// Whether `got` satisfies the step's expectation; why not otherwise.
    fn check(&self, step: &Value, got: &Outcome) -> Result<(), String> {
        let (want, have) = match (step.get("expect"), step.get("expect_error"), &got.result) {
            (Some(w), _, Ok(v)) | (None, Some(w), Err(v)) => (w, v),
            (Some(w), _, Err(e)) => return Err(format!("expected {w}, got the error {e}")),
            (None, Some(w), Ok(v)) => return Err(format!("expected the error {w}, got {v}")),
            (None, None, r) => return r.as_ref().map(|_| ()).map_err(|e| e.to_string()),
        };
        let want = self.fill(want, Some(got));
        if matches(&want, have) {
            Ok(())
        } else {
            Err(format!("expected {want}\n          got {have}"))
        }
    }

    async fn step(&mut self, step: &Value) {
        let here = format!("[{} / {}] {step}", self.agent.sdk, self.scenario);
        if step.get("call").is_some() {
            let got = self.call(step).await;
            if let Err(e) = self.check(step, &got) {
                panic!("{here}\n  {e}");
            }
            if let Some(name) = step["save"].as_str() {
                self.saved.insert(name.to_owned(), got);
            }
        } else if let Some(inner) = step.get("wait") {
            let within = Duration::from_millis(step["within_ms"].as_u64().unwrap_or(5_000));
            let start = tokio::time::Instant::now();
            loop {
                let got = self.call(inner).await;
                match self.check(inner, &got) {
                    Ok(()) => break,
                    Err(e) if start.elapsed() > within => panic!("{here}\n  {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
                }
            }
        } else if let Some(calls) = step.get("count") {
            let total = step["total"].as_u64().expect("count: a total") as usize;
            let within = Duration::from_millis(step["within_ms"].as_u64().unwrap_or(5_000));
            let start = tokio::time::Instant::now();
            loop {
                let mut sum = 0;
                for c in calls.as_array().expect("count: a list of calls") {
                    let got = self.call(c).await;
                    sum += got
                        .result
                        .ok()
                        .and_then(|v| v.as_array().map(Vec::len))
                        .unwrap_or(0);
                }
                if sum == total {
                    break;
                }
                assert!(start.elapsed() < within, "{here}\n  counted {sum}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        } else if let Some(topic) = step.get("publish") {
            let topic = self.fill_str(topic.as_str().expect("publish: a topic"), None);
            let payload = serde_json::to_vec(&self.fill(&step["payload"], None)).expect("json");
            self.node
                .raw()
                .await
                .publish(pb::PublishRequest {
                    topic,
                    payload: payload.into(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("{here}\n  publish refused: {e}"));
        } else if let Some(spec) = step.get("start_agent") {
            let tag = spec["tag"].as_str().expect("start_agent: a tag");
            let replace = spec["replace"].as_bool().unwrap_or(false);
            let p = self
                .agent
                .start(&self.node.url, &self.prefix, tag, replace)
                .await;
            self.agents.push(p);
        } else if step.get("restart_node").is_some() {
            // A stand-in node holds the place while the real one restarts
            // on its port (the agents only know that port).
            let addr = self.node.addr;
            let old = std::mem::replace(&mut self.node, Node::start().await);
            old.stop().await;
            let stand_in = std::mem::replace(&mut self.node, Node::start_at(addr).await);
            stand_in.stop().await;
        } else {
            panic!("{here}\n  unknown step kind");
        }
    }
}

/// Whether `have` satisfies `want` (see the module doc).
fn matches(want: &Value, have: &Value) -> bool {
    match want {
        Value::String(s) if s == "*" => !have.is_null(),
        Value::String(s) if s.starts_with('^') => {
            have.as_str().is_some_and(|h| h.starts_with(&s[1..]))
        }
        Value::Object(o) if o.contains_key("$range") => {
            let r = &o["$range"];
            have.as_f64().is_some_and(|h| {
                h >= r[0].as_f64().unwrap_or(0.0) && h <= r[1].as_f64().unwrap_or(0.0)
            })
        }
        Value::Object(o) if o.contains_key("$len") => {
            have.as_array().map(Vec::len) == o["$len"].as_u64().map(|n| n as usize)
        }
        Value::Object(o) => {
            let Some(h) = have.as_object() else {
                return false;
            };
            o.iter()
                .all(|(k, w)| matches(w, h.get(k).unwrap_or(&Value::Null)))
        }
        Value::Array(a) => have
            .as_array()
            .is_some_and(|h| h.len() == a.len() && a.iter().zip(h).all(|(w, x)| matches(w, x))),
        other => other == have,
    }
}

async fn run_suite(agent: Agent) {
    let prefix = format!("conf.{}", agent.sdk);
    let node = Node::start().await;
    let mut run = Run {
        node,
        agent,
        prefix: prefix.clone(),
        agents: Vec::new(),
        saved: HashMap::new(),
        scenario: String::new(),
    };
    let first = run
        .agent
        .start(&run.node.url, &prefix, "first", false)
        .await;
    run.agents.push(first);
    for s in scenarios() {
        run.scenario = s["name"].as_str().unwrap_or("?").to_owned();
        for step in s["steps"].as_array().expect("steps") {
            run.step(step).await;
        }
    }
    run.agents.clear();
    run.node.stop().await;
}

#[tokio::test]
async fn the_rust_sdk_passes_the_conformance_suite() {
    run_suite(Agent::rust()).await;
}

#[tokio::test]
async fn the_python_sdk_passes_the_conformance_suite() {
    run_suite(Agent::python()).await;
}
