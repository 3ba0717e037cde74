//! The admin HTTP port: `/metrics` (Prometheus text), `/healthz` (the
//! process is up), `/readyz` (serving; 503 once shutdown began, while a
//! critical plugin is down, or while the configured database is not
//! reachable).
//!
//! Three GET endpoints do not justify an HTTP framework: this reads one
//! bounded request head per connection (8 KiB, 5 s), answers, and closes.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use kernel_core::Kernel;

use crate::store::Store;

/// Serves the admin endpoints until the kernel shuts down.
pub async fn serve_admin_http(listener: TcpListener, kernel: Arc<Kernel>) {
    serve_admin_http_with(listener, kernel, None, None).await
}

/// The same, with the node's supervised plugins (their `kernel_plugin_*`
/// metrics, and `/readyz` 503 naming any critical plugin that is down) and
/// its database (`kernel_outbox_*` metrics, `/readyz` 503 naming it while
/// it is unreachable).
pub async fn serve_admin_http_with(
    listener: TcpListener,
    kernel: Arc<Kernel>,
    plugins: Option<Arc<plugin_host::Host>>,
    store: Option<Arc<Store>>,
) {
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(cause = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = kernel.lifecycle().stopped() => return,
        };
        let kernel = kernel.clone();
        let plugins = plugins.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let answered = answer(stream, &kernel, plugins.as_deref(), store.as_deref());
            let _ = tokio::time::timeout(Duration::from_secs(5), answered).await;
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    kernel: &Kernel,
    plugins: Option<&plugin_host::Host>,
    store: Option<&Store>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buf.len() {
            return respond(&mut stream, 431, "text/plain", "request head too large\n").await;
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut first = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (
        first.next().unwrap_or_default(),
        first.next().unwrap_or_default(),
    );
    if method != "GET" {
        return respond(&mut stream, 405, "text/plain", "only GET\n").await;
    }
    match path.split('?').next().unwrap_or_default() {
        "/metrics" => {
            let mut body = kernel.render_metrics();
            if let Some(p) = plugins {
                body.push_str(&p.render_metrics());
            }
            if let Some(s) = store {
                body.push_str(&s.render_metrics());
            }
            respond(&mut stream, 200, "text/plain; version=0.0.4", &body).await
        }
        "/healthz" => respond(&mut stream, 200, "text/plain", "ok\n").await,
        "/readyz" => {
            let down = plugins.map(|p| p.critical_down()).unwrap_or_default();
            if kernel.lifecycle().is_draining() {
                respond(&mut stream, 503, "text/plain", "shutting down\n").await
            } else if let Some(why) = store.and_then(Store::not_ready) {
                respond(&mut stream, 503, "text/plain", &format!("{why}\n")).await
            } else if !down.is_empty() {
                let body = format!("critical plugins down: {}\n", down.join(", "));
                respond(&mut stream, 503, "text/plain", &body).await
            } else {
                respond(&mut stream, 200, "text/plain", "ready\n").await
            }
        }
        _ => respond(&mut stream, 404, "text/plain", "not found\n").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
