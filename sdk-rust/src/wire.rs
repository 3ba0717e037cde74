//! The SDK's connection to a node: the endpoint settings (no Nagle,
//! keepalive, flow-control windows), TLS for an `https://` node, a
//! Unix-domain socket for a `unix:///path` one, and the bearer token every
//! request carries when the node has auth on.

use std::time::Duration;

use kernel_proto::v1::kernel_client::KernelClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

use crate::error::Error;

/// Puts the bearer token (when there is one) on every request.
#[derive(Clone, Default)]
pub(crate) struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// `authorization: Bearer <token>`, or nothing for an empty token.
    pub(crate) fn new(token: &str) -> Bearer {
        Bearer(
            (!token.is_empty())
                .then(|| format!("Bearer {token}").parse().ok())
                .flatten(),
        )
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A generated client over the SDK's connection, token included.
pub(crate) type Wire =
    KernelClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// TLS to an `https://` node: the CA to trust (PEM; else the system's
/// roots) and, for a node that asks for client certificates (mTLS), this
/// client's certificate and key (PEM).
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// CA certificate(s) to trust, PEM.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain, PEM (mTLS).
    pub cert_pem: Option<Vec<u8>>,
    /// Client private key, PEM (mTLS).
    pub key_pem: Option<Vec<u8>>,
}

impl Tls {
    /// From the files named by `KERNEL_TLS_CA`, `KERNEL_TLS_CERT` and
    /// `KERNEL_TLS_KEY` (each optional; a plugin the node supervises gets
    /// the node's environment).
    pub fn from_env() -> Result<Tls, Error> {
        let read = |var: &str| -> Result<Option<Vec<u8>>, Error> {
            match std::env::var(var) {
                Ok(path) if !path.is_empty() => std::fs::read(&path).map(Some).map_err(|e| {
                    Error::new(
                        Code::InvalidArgument,
                        format!("{var}={path}: cannot read: {e}"),
                    )
                }),
                _ => Ok(None),
            }
        };
        Ok(Tls {
            ca_pem: read("KERNEL_TLS_CA")?,
            cert_pem: read("KERNEL_TLS_CERT")?,
            key_pem: read("KERNEL_TLS_KEY")?,
        })
    }

    fn client_config(&self) -> Result<ClientTlsConfig, Error> {
        let mut c = ClientTlsConfig::new();
        c = match &self.ca_pem {
            Some(ca) => c.ca_certificate(Certificate::from_pem(ca)),
            None => c.with_native_roots(),
        };
        match (&self.cert_pem, &self.key_pem) {
            (Some(cert), Some(key)) => Ok(c.identity(Identity::from_pem(cert, key))),
            (None, None) => Ok(c),
            _ => Err(Error::invalid_argument(
                "a client certificate needs its key and the other way round (KERNEL_TLS_CERT, KERNEL_TLS_KEY)",
            )),
        }
    }
}

/// A channel to `url` with the settings the SDK wants (no Nagle,
/// keepalive), and `tls` when the URL is `https://`.
/// The (lazily connected) channel to the node at `url`: `http://`,
/// `https://` (TLS) or `unix:///path/to/socket` (the node's
/// `server.unix_socket`, for a plugin on the same host).
pub(crate) fn channel(url: &str, tls: &Tls) -> Result<Channel, Error> {
    let Some(path) = url.strip_prefix("unix://") else {
        return Ok(endpoint(url, tls)?.connect_lazy());
    };
    if path.is_empty() {
        return Err(Error::invalid_argument(format!(
            "{url}: a unix:// URL names the socket's path (unix:///run/kernel.sock)"
        )));
    }
    let path = std::sync::Arc::<std::path::Path>::from(std::path::Path::new(path));
    // The authority is never dialled: the connector below opens the socket.
    let e = endpoint("http://localhost", tls)?;
    Ok(
        e.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(&*path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        })),
    )
}

fn endpoint(url: &str, tls: &Tls) -> Result<Endpoint, Error> {
    let connect_error = |source| Error::Connect {
        url: url.to_owned(),
        source,
    };
    let e = Endpoint::from_shared(url.to_owned())
        .map(|e| {
            e.tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(20))
                .connect_timeout(Duration::from_secs(5))
                .initial_stream_window_size(Some(4 << 20))
                .initial_connection_window_size(Some(8 << 20))
                .max_frame_size(Some(256 << 10))
        })
        .map_err(connect_error)?;
    if url.starts_with("https://") {
        e.tls_config(tls.client_config()?).map_err(connect_error)
    } else {
        Ok(e)
    }
}

/// Sets metadata `k: v` on `req`; a name or value that is not a valid
/// header is left out.
pub(crate) fn insert_meta<T>(req: &mut tonic::Request<T>, k: &str, v: &str) {
    if let (Ok(k), Ok(v)) = (
        tonic::metadata::MetadataKey::from_bytes(k.as_bytes()),
        tonic::metadata::MetadataValue::try_from(v),
    ) {
        req.metadata_mut().insert(k, v);
    }
}
