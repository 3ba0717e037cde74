//! Every Python block in `docs/` and `README.md`, run as written against a
//! real node (only the node's address is put in): the docs are the contract
//! a Python author reads, so their code must work (the SDK's own README
//! is run by its tests, `sdk-python/tests/test_readme.py`). Needs the Python
//! environment `make test` prepares (the SDK installed, the raw stubs on
//! `KERNEL_TEST_PYTHONPATH`).
//!
//! Each ```` ```python ```` block is preceded by a directive line saying how
//! it runs; a block without one fails the test:
//!
//! ```text
//! <!-- doctest: KIND [name=N] [with=A,B] [expect="…"] [ready='…']
//!      [call="service:payload"] [publish="topic:payload"] -->
//! ```
//!
//! - `run`: runs to completion; exit status 0, stdout contains `expect`.
//! - `define`: only defines things (imported as a module, so a
//!   `__main__` guard does not fire); must import cleanly.
//! - `serve`: starts in the background; once stdout shows `ready`, the test
//!   makes the `call` (its reply must contain `expect`) or the `publish`
//!   (the block's stdout must then show `expect`), then stops it.
//!
//! `with=A,B` puts the code of the blocks named `A` and `B` first (helpers
//! such as `failure_of`, defined once in the docs).
//!
//! `db=1` gives the block a PostgreSQL database of its own (its URL put in
//! for `postgres://postgres@127.0.0.1:5432/app`) and the node an outbox
//! relay on it; `receive=T` subscribes to `T` before the block runs and
//! requires an event on it afterwards.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use kernel_node::config::OutboxConfig;
use kernel_node::store::Store;
use kernel_proto::v1 as pb;
use kernel_sdk::SubscribeOptions;
use kernel_tests::pg::TestDb;
use kernel_tests::Node;
use tokio::io::{AsyncBufReadExt, BufReader};

/// One Python block and how it runs.
#[derive(Debug, Clone)]
struct Block {
    file: &'static str,
    line: usize,
    code: String,
    kind: String,
    opts: HashMap<String, String>,
}

const DOCS: [&str; 5] = [
    "docs/PLUGINS.md",
    "docs/PROTOCOL.md",
    "docs/OPERATIONS.md",
    "docs/ARCHITECTURE.md",
    "README.md",
];

/// `key=value` and `key="a value"` pairs after the kind.
fn parse_directive(text: &str) -> (String, HashMap<String, String>) {
    let mut rest = text.trim();
    let kind_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let kind = rest[..kind_end].to_owned();
    rest = rest[kind_end..].trim_start();
    let mut opts = HashMap::new();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().to_owned();
        let after = &rest[eq + 1..];
        let quote = after.chars().next().filter(|c| *c == '"' || *c == '\'');
        let (value, tail) = match quote {
            Some(q) => {
                let inner = &after[1..];
                let end = inner
                    .find(q)
                    .expect("a closing quote in a doctest directive");
                (inner[..end].to_owned(), &inner[end + 1..])
            }
            None => {
                let end = after.find(char::is_whitespace).unwrap_or(after.len());
                (after[..end].to_owned(), &after[end..])
            }
        };
        opts.insert(key, value);
        rest = tail.trim_start();
    }
    (kind, opts)
}

fn blocks() -> Vec<Block> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut out = Vec::new();
    for file in DOCS {
        let Ok(text) = std::fs::read_to_string(format!("{root}/{file}")) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            if lines[i].trim_start() != "```python" {
                i += 1;
                continue;
            }
            let directive = (0..i)
                .rev()
                .map(|j| lines[j].trim())
                .find(|l| !l.is_empty())
                .and_then(|l| l.strip_prefix("<!-- doctest:"))
                .and_then(|l| l.strip_suffix("-->"))
                .unwrap_or_else(|| {
                    panic!(
                        "{file}:{}: a Python block without a `<!-- doctest: … -->` line before it",
                        i + 1
                    )
                });
            let (kind, opts) = parse_directive(directive);
            let start = i + 1;
            let len = lines[start..]
                .iter()
                .position(|l| l.trim_start() == "```")
                .expect("the block's end");
            out.push(Block {
                file,
                line: i + 1,
                code: lines[start..start + len].join("\n") + "\n",
                kind,
                opts,
            });
            i = start + len + 1;
        }
    }
    out
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| {
        panic!("{key} is not set: run the tests with `make test`, which prepares the Python environment")
    })
}

/// Writes the block's program into a fresh directory, the node's address
/// put in: `doc_sample.py`, and a module per `with` block (recursively),
/// star-imported first, so a `__main__` guard in a helper block does not
/// fire. The directory.
fn module(block: &Block, all: &[Block], node: &Node, n: usize) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kernel-doctest-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let code = with_imports(block, all, node, &dir);
    std::fs::write(dir.join("doc_sample.py"), code).expect("write sample");
    dir
}

fn with_imports(block: &Block, all: &[Block], node: &Node, dir: &std::path::Path) -> String {
    let mut code = String::new();
    for name in block
        .opts
        .get("with")
        .into_iter()
        .flat_map(|w| w.split(','))
    {
        let dep = all
            .iter()
            .find(|b| b.opts.get("name").map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("{}:{}: no block named `{name}`", block.file, block.line));
        let module = format!("doc_{}", name.replace('-', "_"));
        let dep_code = with_imports(dep, all, node, dir);
        std::fs::write(dir.join(format!("{module}.py")), dep_code).expect("write helper");
        code.push_str(&format!("from {module} import *  # noqa\n"));
    }
    code.push_str(&block.code);
    code.replace("127.0.0.1:50051", &node.addr.to_string())
}

fn python(dir: &std::path::Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env("KERNEL_TEST_PYTHON"));
    cmd.args(args)
        .current_dir(dir)
        .env(
            "PYTHONPATH",
            format!("{}:{}", dir.display(), env("KERNEL_TEST_PYTHONPATH")),
        )
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true);
    cmd
}

/// The DSN the docs' outbox samples name.
const DOC_DSN: &str = "postgres://postgres@127.0.0.1:5432/app";

async fn run_block(block: &Block, all: &[Block], node: &Node, n: usize) {
    let here = format!("{}:{} ({})", block.file, block.line, block.kind);
    let dir = module(block, all, node, n);
    let mut db = None;
    if block.opts.contains_key("db") {
        let test_db = TestDb::create().await;
        let outbox = OutboxConfig {
            start_delay_ms: 0,
            poll_ms: 200,
            ..OutboxConfig::default()
        };
        let store = Store::start(
            &test_db.url,
            outbox,
            Default::default(),
            node.kernel.clone(),
        )
        .expect("store");
        kernel_tests::wait_until(Duration::from_secs(30), "the database ready", || {
            store.not_ready().is_none()
        })
        .await;
        let sample = dir.join("doc_sample.py");
        let code = std::fs::read_to_string(&sample).expect("sample");
        assert!(code.contains(DOC_DSN), "{here}: a db block names {DOC_DSN}");
        std::fs::write(&sample, code.replace(DOC_DSN, &test_db.url)).expect("write sample");
        db = Some(test_db);
    }
    let mut receiver = match block.opts.get("receive") {
        Some(topic) => Some(
            node.client()
                .subscriber(SubscribeOptions::new(topic))
                .await
                .expect("subscribe"),
        ),
        None => None,
    };
    let expect = block.opts.get("expect").cloned().unwrap_or_default();
    match block.kind.as_str() {
        "run" | "define" => {
            let args: &[&str] = if block.kind == "run" {
                &["doc_sample.py"]
            } else {
                &["-c", "import doc_sample"]
            };
            let out = tokio::time::timeout(Duration::from_secs(60), python(&dir, args).output())
                .await
                .unwrap_or_else(|_| panic!("{here}: still running after 60 s"))
                .expect("python runs");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{here} failed:\n{}\n{stdout}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                stdout.contains(&expect),
                "{here}: no `{expect}` in:\n{stdout}"
            );
        }
        "serve" => {
            let mut child = python(&dir, &["doc_sample.py"])
                .stdout(Stdio::piped())
                .spawn()
                .expect("python starts");
            let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
            let mut seen = String::new();
            let ready = block.opts.get("ready").cloned().unwrap_or_default();
            wait_for(&mut lines, &mut seen, &ready, &here).await;
            if let Some(call) = block.opts.get("call") {
                let (service, payload) = call.split_once(':').unwrap_or((call, ""));
                let reply = tokio::time::timeout(
                    Duration::from_secs(20),
                    node.raw().await.call(pb::CallRequest {
                        service: service.into(),
                        payload: payload.to_owned().into(),
                        ..Default::default()
                    }),
                )
                .await
                .unwrap_or_else(|_| panic!("{here}: no reply to {service}"))
                .unwrap_or_else(|e| panic!("{here}: {service} failed: {e:?}"))
                .into_inner();
                let text = String::from_utf8_lossy(&reply.payload);
                assert!(text.contains(&expect), "{here}: {service} said `{text}`");
            }
            if let Some(publish) = block.opts.get("publish") {
                let (topic, payload) = publish.split_once(':').unwrap_or((publish, ""));
                node.raw()
                    .await
                    .publish(pb::PublishRequest {
                        topic: topic.into(),
                        payload: payload.to_owned().into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{here}: publish refused: {e:?}"));
                wait_for(&mut lines, &mut seen, &expect, &here).await;
            }
            let _ = child.kill().await;
        }
        other => panic!("{here}: unknown doctest kind `{other}`"),
    }
    if let Some(sub) = &mut receiver {
        let topic = &block.opts["receive"];
        let event = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap_or_else(|_| panic!("{here}: nothing arrived on {topic}"))
            .expect("subscription open");
        assert_eq!(&event.topic, topic, "{here}");
    }
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads `lines` until one contains `needle` (30 s at most).
async fn wait_for(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: &mut String,
    needle: &str,
    here: &str,
) {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(l)) = lines.next_line().await {
            seen.push_str(&l);
            seen.push('\n');
            if l.contains(needle) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "{here}: never printed `{needle}`; printed:\n{seen}"
    );
}

#[tokio::test]
async fn every_python_block_in_the_docs_runs_against_a_real_node() {
    let all = blocks();
    assert!(all.len() >= 6, "found only {} Python blocks", all.len());
    for (n, block) in all.iter().enumerate() {
        // Each block gets a node of its own: nothing one leaves behind
        // (a registration, a subscription) changes what the next sees.
        let node = Node::start().await;
        run_block(block, &all, &node, n).await;
        node.stop().await;
    }
}

#[tokio::test]
async fn the_raw_python_caller_decodes_the_kernels_failure_and_its_causality() {
    let all = blocks();
    let caller = all
        .iter()
        .find(|b| b.opts.get("name").map(String::as_str) == Some("raw-caller"))
        .expect("the raw caller sample (PLUGINS §3.3)");
    let node = Node::start().await;
    // Nobody provides greet.hello: the sample's call fails, and its
    // `failure_of` must give back the kernel's own Failure.
    let dir = module(caller, &all, &node, 9_999);
    let out = python(&dir, &["doc_sample.py"])
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("StatusCode.NOT_FOUND no provider for service `greet.hello`"),
        "{stdout}"
    );
    let hop = lines.next().expect("a causality hop");
    assert!(hop.starts_with("  greet.hello (-) at "), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
    node.stop().await;
}
