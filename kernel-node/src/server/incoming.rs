//! Accepting connections (transport tier, below HTTP/2): at most
//! `server.max_connections` open at once (one more is accepted and closed
//! at once, so the kernel's backlog does not fill), and a connection that
//! sends nothing within `server.handshake_timeout_ms` of being accepted
//! (not even the HTTP/2 preface) is closed, so silent sockets cannot pile
//! up. What a connection may do once it speaks is bounded by the HTTP/2
//! settings and the per-request layers.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A connection that must say something before its deadline, holding its
/// place among the open connections until it closes.
#[derive(Debug)]
pub(crate) struct Guarded {
    inner: TcpStream,
    /// Until the first byte arrives.
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        let Some(deadline) = self.first_byte.as_mut() else {
            return read;
        };
        match &read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.first_byte = None,
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nothing received within server.handshake_timeout_ms",
                )));
            }
            _ => {}
        }
        read
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The connections `listener` accepts, guarded as the module says.
pub(crate) fn guarded(
    listener: TcpListener,
    max_connections: usize,
    handshake_timeout: Duration,
) -> impl Stream<Item = io::Result<Guarded>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    futures::stream::unfold((listener, slots), move |(listener, slots)| async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                // A transient accept error (out of descriptors): pause, go on.
                Err(e) => {
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, max_connections, "connection refused: server.max_connections reached");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = Guarded {
                inner: stream,
                first_byte: Some(Box::pin(tokio::time::sleep(handshake_timeout))),
                _slot: slot,
            };
            return Some((Ok(conn), (listener, slots)));
        }
    })
}
