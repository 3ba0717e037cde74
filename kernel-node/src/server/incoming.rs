//! Accepting connections (transport tier, below HTTP/2) on the TCP port
//! and, when `server.unix_socket` is set, on a Unix-domain socket beside it
//! (co-located plugins skip the TCP/IP stack; one cap covers both): at most
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
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Where the node accepts connections: its TCP port, and optionally a
/// Unix-domain socket.
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC port.
    pub tcp: TcpListener,
    /// `server.unix_socket`, bound.
    pub unix: Option<UnixListener>,
}

impl From<TcpListener> for Listeners {
    fn from(tcp: TcpListener) -> Listeners {
        Listeners { tcp, unix: None }
    }
}

/// An accepted connection of either kind.
#[derive(Debug)]
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Forwards an I/O method to whichever socket it is.
macro_rules! either {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Socket::Tcp($s) => $e,
            Socket::Unix($s) => $e,
        }
    };
}

/// A connection that must say something before its deadline, holding its
/// place among the open connections until it closes.
#[derive(Debug)]
pub(crate) struct Guarded {
    inner: Socket,
    /// Until the first byte arrives.
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        match &self.inner {
            Socket::Tcp(s) => s.connect_info(),
            Socket::Unix(_) => TcpConnectInfo {
                local_addr: None,
                remote_addr: None,
            },
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = either!(&mut self.inner, s => Pin::new(s).poll_read(cx, buf));
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
        either!(&mut self.inner, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(&mut self.inner, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(&mut self.inner, s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        either!(&mut self.inner, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        either!(&self.inner, s => s.is_write_vectored())
    }
}

/// The connections `listeners` accept, guarded as the module says.
pub(crate) fn guarded(
    listeners: Listeners,
    max_connections: usize,
    handshake_timeout: Duration,
) -> impl Stream<Item = io::Result<Guarded>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    futures::stream::unfold((listeners, slots), move |(listeners, slots)| async move {
        loop {
            let accepted = match &listeners.unix {
                None => listeners
                    .tcp
                    .accept()
                    .await
                    .map(|(s, p)| (Socket::Tcp(s), Some(p))),
                Some(unix) => tokio::select! {
                    t = listeners.tcp.accept() => t.map(|(s, p)| (Socket::Tcp(s), Some(p))),
                    u = unix.accept() => u.map(|(s, _)| (Socket::Unix(s), None)),
                },
            };
            let (socket, peer) = match accepted {
                Ok(s) => s,
                // A transient accept error (out of descriptors): pause, go on.
                Err(e) => {
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(peer = ?peer, max_connections, "connection refused: server.max_connections reached");
                drop(socket);
                continue;
            };
            if let Socket::Tcp(s) = &socket {
                let _ = s.set_nodelay(true);
            }
            let conn = Guarded {
                inner: socket,
                first_byte: Some(Box::pin(tokio::time::sleep(handshake_timeout))),
                _slot: slot,
            };
            return Some((Ok(conn), (listeners, slots)));
        }
    })
}
