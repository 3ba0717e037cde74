//! The SDK's connection to a node: the endpoint settings (no Nagle,
//! keepalive, flow-control windows) and the bearer token every request
//! carries when the node has auth on.

use std::time::Duration;

use kernel_proto::v1::kernel_client::KernelClient;
use tonic::transport::{Channel, Endpoint};

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

/// A channel to `url` with the settings the SDK wants (no Nagle, keepalive).
pub(crate) fn endpoint(url: &str) -> Result<Endpoint, Error> {
    Endpoint::from_shared(url.to_owned())
        .map(|e| {
            e.tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(20))
                .connect_timeout(Duration::from_secs(5))
                .initial_stream_window_size(Some(4 << 20))
                .initial_connection_window_size(Some(8 << 20))
                .max_frame_size(Some(256 << 10))
        })
        .map_err(|source| Error::Connect {
            url: url.to_owned(),
            source,
        })
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
