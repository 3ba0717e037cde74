//! TLS and mTLS on a real node process (`[server.tls]`), with certificates
//! made for the test (rcgen): an SDK client and plugin over `https://`, a
//! plaintext or untrusting client refused, a client certificate required
//! under mTLS, and a half-configured `[server.tls]` refused at start.

use std::path::Path;
use std::time::Duration;

use kernel_sdk::{CancellationToken, Client, Code, Plugin, Tls};
use kernel_tests::{binary, eventually, NodeProcess};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client
/// certificate, written as PEM files into `dir`.
struct Pki {
    ca: Vec<u8>,
    client_cert: Vec<u8>,
    client_key: Vec<u8>,
}

fn make_pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kernel test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let leaf = |names: Vec<String>, cn: &str| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &ca, &ca_key).expect("sign");
        (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
    };
    let (server_cert, server_key) =
        leaf(vec!["127.0.0.1".into(), "localhost".into()], "kernel-node");
    let (client_cert, client_key) = leaf(vec!["orders".into()], "orders");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.join("server.pem"), &server_cert).expect("write");
    std::fs::write(dir.join("server.key"), &server_key).expect("write");
    Pki {
        ca: ca.pem().into_bytes(),
        client_cert,
        client_key,
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kernel-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir
}

async fn tls_node(dir: &Path, mtls: bool) -> (NodeProcess, String) {
    let f = |n: &str| dir.join(n).display().to_string();
    let (cert, key, ca) = (f("server.pem"), f("server.key"), f("ca.pem"));
    let mut env = vec![
        ("KERNEL_SERVER__TLS__CERT_FILE", cert.as_str()),
        ("KERNEL_SERVER__TLS__KEY_FILE", key.as_str()),
    ];
    if mtls {
        env.push(("KERNEL_SERVER__TLS__CLIENT_CA_FILE", ca.as_str()));
    }
    let node = NodeProcess::start(&env).await;
    let https = node.url.replace("http://", "https://");
    (node, https)
}

/// A call to a service nobody provides: `NOT_FOUND` proves the request
/// reached the kernel; anything else says how the connection failed.
async fn reach(client: &Client) -> Code {
    match client.call("nobody.here", "x").await {
        Ok(_) => Code::Ok,
        Err(e) => e.code(),
    }
}

#[tokio::test]
async fn tls_serves_trusting_clients_and_refuses_the_others() {
    let dir = tmp("tls");
    let pki = make_pki(&dir);
    let (node, https) = tls_node(&dir, false).await;
    let trusting = Tls {
        ca_pem: Some(pki.ca.clone()),
        ..Tls::default()
    };
    let client = Client::connect_tls(&https, &trusting).expect("client");
    eventually(Duration::from_secs(10), "a call over TLS", || async {
        match reach(&client).await {
            Code::NotFound => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // A plugin over TLS serves calls made over TLS.
    let stop = CancellationToken::new();
    let plugin = Plugin::new("tlsecho")
        .tls(trusting.clone())
        .provide("tlsecho.echo", |_ctx, p| async move { Ok(p) });
    let (url, s) = (https.clone(), stop.clone());
    tokio::spawn(async move { plugin.serve(&url, s).await });
    let echoed = eventually(Duration::from_secs(10), "the TLS plugin", || async {
        client
            .call("tlsecho.echo", "over tls")
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(&echoed[..], b"over tls");
    // Plaintext to a TLS port, and TLS without trusting its CA: refused.
    let plain = Client::connect_tls(&node.url, &Tls::default()).expect("client");
    assert_ne!(
        reach(&plain).await,
        Code::NotFound,
        "plaintext reached the kernel"
    );
    let untrusting = Client::connect_tls(&https, &Tls::default()).expect("client");
    assert_eq!(
        reach(&untrusting).await,
        Code::Unavailable,
        "an unknown CA was accepted"
    );
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_its_ca() {
    let dir = tmp("mtls");
    let pki = make_pki(&dir);
    let (_node, https) = tls_node(&dir, true).await;
    let with_cert = Tls {
        ca_pem: Some(pki.ca.clone()),
        cert_pem: Some(pki.client_cert.clone()),
        key_pem: Some(pki.client_key.clone()),
    };
    let client = Client::connect_tls(&https, &with_cert).expect("client");
    eventually(Duration::from_secs(10), "a call over mTLS", || async {
        match reach(&client).await {
            Code::NotFound => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let without = Client::connect_tls(
        &https,
        &Tls {
            ca_pem: Some(pki.ca.clone()),
            ..Tls::default()
        },
    )
    .expect("client");
    assert_ne!(
        reach(&without).await,
        Code::NotFound,
        "no client certificate, yet served"
    );
    // A certificate from another CA is refused too.
    let other = make_pki(&tmp("mtls-other"));
    let foreign = Client::connect_tls(
        &https,
        &Tls {
            ca_pem: Some(pki.ca.clone()),
            cert_pem: Some(other.client_cert),
            key_pem: Some(other.client_key),
        },
    )
    .expect("client");
    assert_ne!(
        reach(&foreign).await,
        Code::NotFound,
        "a foreign client certificate was accepted"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(tmp("mtls-other"));
}

#[tokio::test]
async fn half_a_tls_config_is_refused_at_start_naming_the_key() {
    let dir = tmp("half");
    make_pki(&dir);
    let out = tokio::process::Command::new(binary("kernel-node"))
        .args(["--listen", "127.0.0.1:0"])
        .env("KERNEL_TELEMETRY__ADMIN_LISTEN", "")
        .env("KERNEL_SERVER__TLS__CERT_FILE", dir.join("server.pem"))
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.tls.key_file"), "{err}");
    let out = tokio::process::Command::new(binary("kernel-node"))
        .args(["--listen", "127.0.0.1:0"])
        .env("KERNEL_TELEMETRY__ADMIN_LISTEN", "")
        .env("KERNEL_SERVER__TLS__CERT_FILE", dir.join("server.pem"))
        .env("KERNEL_SERVER__TLS__KEY_FILE", dir.join("missing.key"))
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.tls.key_file") && err.contains("missing.key"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Python SDK over `https://`, trusting the CA in `KERNEL_TLS_CA`
/// (needs the environment `make test` prepares).
#[tokio::test]
async fn the_python_sdk_connects_over_tls() {
    let dir = tmp("python");
    make_pki(&dir);
    let (_node, https) = tls_node(&dir, false).await;
    let code = r#"
import asyncio, sys
from kernel_sdk import Client, KernelError

async def main() -> None:
    client = Client(sys.argv[1])
    for _ in range(50):
        try:
            await client.call("nobody.here", b"x")
        except KernelError as e:
            if e.code.name == "NOT_FOUND":
                print("reached", e.code.name)
                return
            last = e
        await asyncio.sleep(0.1)
    print("never reached:", last)

asyncio.run(main())
"#;
    let ca = dir.join("ca.pem");
    let ca = ca.to_str().expect("utf-8 path");
    kernel_tests::python_prints(
        code,
        &[&https],
        &[("KERNEL_TLS_CA", ca)],
        "reached NOT_FOUND",
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}
