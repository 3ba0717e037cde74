//! [`Service`]: a service name resolved once, for callers that call the
//! same service again and again.

use std::sync::Arc;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::client::{CallOptions, Client, Handle, Reply};
use crate::error::Error;
use crate::origin::Origin;

/// A handle on one service, from [`Client::service`]. An in-process
/// client's handle is the kernel's `ServiceHandle`: the name is checked
/// once, when it is made, and calls through it skip the kernel's name
/// lookup; it stays valid across hot swaps, reloads and providers coming
/// and going (the kernel reads its registry again only after it changed).
/// Over the network a handle is the name, nothing more: its calls are the
/// client's own, and the kernel checks the name on each. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    client: Client,
    name: Arc<str>,
    handle: Option<Arc<Handle>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("name", &self.name).finish()
    }
}

impl Client {
    /// A handle on `service` for repeated calls; in process,
    /// `INVALID_ARGUMENT` at once when the name is not a valid service name.
    pub fn service(&self, service: &str) -> Result<Service, Error> {
        #[cfg(feature = "in-process")]
        if let Some(kernel) = self.kernel() {
            let handle = kernel
                .service(service)
                .map_err(|e| Error::from(e.into_failure()))?;
            return Ok(Service {
                client: self.clone(),
                name: service.into(),
                handle: Some(Arc::new(handle)),
            });
        }
        Ok(Service {
            client: self.clone(),
            name: service.into(),
            handle: None,
        })
    }
}

impl Service {
    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls the service with `payload`; returns the reply payload.
    pub async fn call(&self, payload: impl Into<Bytes>) -> Result<Bytes, Error> {
        self.call_with(payload, CallOptions::default())
            .await
            .map(|r| r.payload)
    }

    /// Calls with options.
    pub async fn call_with(
        &self,
        payload: impl Into<Bytes>,
        opts: CallOptions,
    ) -> Result<Reply, Error> {
        self.client
            .call_in(
                &Origin::Root,
                &self.name,
                self.handle.as_deref(),
                payload.into(),
                opts,
            )
            .await
    }

    /// Calls with JSON in and out.
    pub async fn call_json<T: Serialize, R: DeserializeOwned>(&self, args: &T) -> Result<R, Error> {
        let bytes = self.call(serde_json::to_vec(args)?).await?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}
