//! The validate layer: checks names and payload size, and validates JSON
//! arguments against the schema the provider declared for the method.
//!
//! Schemas are compiled once, at Register ([`crate::schema::compile`]); a
//! schema that does not compile is refused there. At call time, a method with a schema gets
//! its payload parsed and validated, and every failing path is listed in the
//! `INVALID_ARGUMENT` message; a payload that is not JSON is refused the
//! same way. Without a schema, a payload whose content type says
//! `application/json` is still checked to be JSON; other payloads are
//! opaque. Hostile input is bounded: payloads are capped by
//! `router.max_payload_bytes`, serde_json refuses nesting deeper than 128,
//! and at most [`crate::schema::MAX_REPORTED`] errors are collected.

use std::sync::Arc;

use futures::future::{Either, Ready};
use kernel_proto::failure::push_hop;
use kernel_proto::v1::Failure;
use tower::Layer;

use crate::call::{Reply, Request};
use crate::error::Error;
use crate::invocation::{Invocation, Stage};
use crate::names;
use crate::registry::{Pool, Registry};
use crate::schema::schema_errors;

/// Adds [`ValidateStage`].
#[derive(Debug, Clone)]
pub(crate) struct ValidateLayer {
    registry: Arc<Registry>,
    max_payload: usize,
}

impl ValidateLayer {
    /// Validation against the schemas in `registry`.
    pub(crate) fn new(registry: Arc<Registry>, max_payload: usize) -> Self {
        ValidateLayer {
            registry,
            max_payload,
        }
    }
}

impl<S> Layer<S> for ValidateLayer {
    type Service = ValidateStage<S>;
    fn layer(&self, inner: S) -> ValidateStage<S> {
        ValidateStage {
            inner,
            layer: Arc::new(self.clone()),
        }
    }
}

/// Argument checks before the inner service.
#[derive(Debug, Clone)]
pub struct ValidateStage<S> {
    inner: S,
    /// Shared, so cloning the service per call costs one reference count.
    layer: Arc<ValidateLayer>,
}

impl<S: Stage> Stage for ValidateStage<S> {
    /// The inner future as is when the arguments pass; no allocation.
    type Future = Either<Ready<Result<Reply, Failure>>, S::Future>;

    fn run(&self, mut inv: Box<Invocation>) -> Self::Future {
        match self.layer.check(&mut inv) {
            Ok(()) => Either::Right(self.inner.run(inv)),
            Err(e) => {
                let mut f = Failure::from(e);
                push_hop(&mut f, "", &inv.req.service, "");
                Either::Left(futures::future::ready(Err(f)))
            }
        }
    }
}

impl ValidateLayer {
    #[inline]
    fn check(&self, inv: &mut Invocation) -> Result<(), Error> {
        let req = &inv.req;
        if req.payload.len() > self.max_payload {
            return Err(Error::PayloadTooLarge {
                size: req.payload.len(),
                limit: self.max_payload,
            });
        }
        // The trace layer above usually looked the pool up already.
        if inv.pool.is_none() {
            inv.pool = self.registry.pool(&req.service);
        }
        let Some(pool) = &inv.pool else {
            // A registered name is valid by construction; an unknown one is
            // checked so a bad name gets INVALID_ARGUMENT, not NOT_FOUND.
            return names::validate_service(&req.service);
        };
        // The common case, decided inline: no schema, no content type.
        if pool.schemas.is_none() && req.content_type.is_empty() {
            return Ok(());
        }
        check_payload(pool, req)
    }
}

/// Checks a payload against the method's schema, or as JSON when its
/// content type says so.
#[inline(never)]
fn check_payload(pool: &Pool, req: &Request) -> Result<(), Error> {
    let schema = pool
        .schemas
        .as_ref()
        .and_then(|m| m.get(&req.method))
        .cloned();
    let declared_json = req.content_type.eq_ignore_ascii_case("application/json");
    if schema.is_none() && !declared_json {
        return Ok(());
    }
    let invalid = |detail: String| Error::InvalidArgument {
        service: req.service.clone(),
        detail,
    };
    let json_ok = req.content_type.is_empty()
        || declared_json
        || req.content_type.to_ascii_lowercase().contains("json");
    if !json_ok {
        return Err(invalid(format!(
            "method `{}` takes JSON, got content type `{}`",
            req.method, req.content_type
        )));
    }
    let value: serde_json::Value = serde_json::from_slice(&req.payload)
        .map_err(|e| invalid(format!("payload is not valid JSON: {e}")))?;
    let Some(schema) = schema else {
        return Ok(());
    };
    let errors = schema_errors(&schema, &value, req.payload.len());
    if errors.is_empty() {
        Ok(())
    } else {
        Err(invalid(format!(
            "arguments do not match the schema: {}",
            errors.join("; ")
        )))
    }
}
