//! The edge auth layer (transport tier): with auth on, every request but a
//! health check must carry `authorization: Bearer <token>` naming a known
//! plugin, or it is answered `UNAUTHENTICATED` before any service sees it.
//! The verified plugin replaces whatever `x-kernel-plugin` the client
//! claimed, so everything inside (caller identity, capability checks,
//! delivery nodes) works from the verified name. A stream is one request:
//! its token is checked once, when it opens, not per call on it.

use std::future::Ready;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use http::HeaderValue;
use kernel_proto::headers;
use tower::{Layer, Service};

use crate::identity::Identities;

/// Requests that need no token: health checks (load balancers, probes).
const OPEN_PREFIX: &str = "/grpc.health.v1.Health/";

/// Adds [`EdgeAuth`].
#[derive(Debug, Clone)]
pub(crate) struct EdgeAuthLayer {
    identities: Option<Arc<Identities>>,
}

impl EdgeAuthLayer {
    /// Checking tokens against `identities` (None: auth off, a pass-through).
    pub(crate) fn new(identities: Option<Arc<Identities>>) -> Self {
        EdgeAuthLayer { identities }
    }
}

impl<S> Layer<S> for EdgeAuthLayer {
    type Service = EdgeAuth<S>;
    fn layer(&self, inner: S) -> EdgeAuth<S> {
        EdgeAuth {
            inner,
            identities: self.identities.clone(),
        }
    }
}

/// Answers `UNAUTHENTICATED` for a request without a valid token.
#[derive(Debug, Clone)]
pub(crate) struct EdgeAuth<S> {
    inner: S,
    identities: Option<Arc<Identities>>,
}

/// The token of an `authorization: Bearer …` header.
fn bearer(req: &http::request::Parts) -> Option<&str> {
    let v = req
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl<S, B, R> Service<http::Request<B>> for EdgeAuth<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    /// The inner future as is, or the refusal: no allocation either way.
    type Future = Either<S::Future, Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(ids) = &self.identities else {
            return Either::Left(self.inner.call(req));
        };
        if req.uri().path().starts_with(OPEN_PREFIX) {
            return Either::Left(self.inner.call(req));
        }
        let (mut parts, body) = req.into_parts();
        let who = match bearer(&parts) {
            None => Err("no `authorization: Bearer <token>` header"),
            Some(token) => ids.verify(token).ok_or("the token is not valid"),
        };
        let value = who.and_then(|p| {
            HeaderValue::from_str(&p).map_err(|_| "the plugin name is not a header value")
        });
        match value {
            Ok(value) => {
                parts.headers.insert(headers::PLUGIN, value);
                Either::Left(self.inner.call(http::Request::from_parts(parts, body)))
            }
            Err(why) => {
                tracing::warn!(target: "audit", path = %parts.uri.path(), reason = why, "unauthenticated");
                Either::Right(std::future::ready(Ok(tonic::Status::unauthenticated(
                    format!("{why} (auth is on: see docs/OPERATIONS.md, Security)"),
                )
                .into_http())))
            }
        }
    }
}
