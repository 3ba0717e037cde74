//! The Python samples of `docs/PLUGINS.md`, run as written against a real
//! node (only the node's address is put in): the docs are the contract a
//! Python author reads, so their code must work. Needs the Python
//! environment `make test` prepares.

use kernel_tests::Node;

/// The first ```python block after `heading` in `docs/PLUGINS.md`.
fn python_block(heading: &str) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PLUGINS.md"))
        .expect("docs/PLUGINS.md");
    let from = doc
        .find(heading)
        .unwrap_or_else(|| panic!("no `{heading}` in PLUGINS.md"));
    let rest = &doc[from..];
    let start = rest.find("```python\n").expect("a python block") + "```python\n".len();
    let len = rest[start..].find("```").expect("the block's end");
    rest[start..start + len].to_owned()
}

/// Runs `code` with the test Python and the generated stubs; its stdout.
async fn run_python(code: &str) -> String {
    let get = |key: &str| {
        std::env::var(key).unwrap_or_else(|_| {
            panic!("{key} is not set: run the tests with `make test`, which prepares the Python environment")
        })
    };
    let out = tokio::process::Command::new(get("KERNEL_TEST_PYTHON"))
        .arg("-c")
        .arg(code)
        .env("PYTHONPATH", get("KERNEL_TEST_PYTHONPATH"))
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the sample failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn the_python_caller_sample_decodes_the_kernels_failure_and_its_causality() {
    let node = Node::start().await;
    // Nobody provides greet.hello: the sample's call fails, and its
    // `failure_of` must give back the kernel's own Failure.
    let code =
        python_block("### 3.2 Python: a caller").replace("127.0.0.1:50051", &node.addr.to_string());
    let out = run_python(&code).await;
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("StatusCode.NOT_FOUND no provider for service `greet.hello`"),
        "{out}"
    );
    let hop = lines.next().expect("a causality hop");
    assert!(hop.starts_with("  greet.hello (-) at "), "{out}");
    node.stop().await;
}
