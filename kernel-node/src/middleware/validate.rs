//! The validate layer: checks names and payload size, and validates JSON
//! arguments against the schema the provider declared for the method.
//!
//! Schemas are compiled once, at Register ([`compile`]); a schema that does
//! not compile is refused there. At call time, a method with a schema gets
//! its payload parsed and validated, and every failing path is listed in the
//! `INVALID_ARGUMENT` message; a payload that is not JSON is refused the
//! same way. Without a schema, a payload whose content type says
//! `application/json` is still checked to be JSON; other payloads are
//! opaque. Hostile input is bounded: payloads are capped by
//! `router.max_payload_bytes`, serde_json refuses nesting deeper than 128,
//! and at most [`MAX_REPORTED`] errors are collected.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use kernel_proto::v1::{Failure, ServiceDecl};
use rustc_hash::FxHashMap;
use tower::{Layer, Service};

use crate::error::{push_hop, Error};
use crate::middleware::{Invocation, Stage};
use crate::names;
use crate::provider::Reply;
use crate::registry::Registry;
use futures::future::{Either, Ready};

/// Most validation errors listed in one message.
pub const MAX_REPORTED: usize = 10;

/// Compiled schemas of one service: method → validator.
pub type MethodSchemas = FxHashMap<String, Arc<jsonschema::Validator>>;

/// Compiled schemas of one instance, by service.
pub type Schemas = FxHashMap<String, Arc<MethodSchemas>>;

/// Compiles the schemas a provider declared; the error names the service,
/// the method and what is wrong.
pub fn compile(services: &[ServiceDecl]) -> Result<Schemas, Error> {
    let mut out = Schemas::default();
    for s in services {
        let mut methods = MethodSchemas::default();
        for (method, text) in &s.method_schemas {
            let validator = compile_one(text, |detail| Error::InvalidArgument {
                service: s.name.clone(),
                detail: format!("schema for method `{method}` {detail}"),
            })?;
            methods.insert(method.clone(), validator);
        }
        if !methods.is_empty() {
            out.insert(s.name.clone(), Arc::new(methods));
        }
    }
    Ok(out)
}

/// Compiles the topic schemas a provider declared (pattern → schema text);
/// the error names the pattern and what is wrong.
pub fn compile_topics(
    schemas: &std::collections::HashMap<String, String>,
) -> Result<Vec<(String, Arc<jsonschema::Validator>)>, Error> {
    let mut out = Vec::with_capacity(schemas.len());
    for (pattern, text) in schemas {
        names::validate_pattern(pattern, names::MAX_NAME_BYTES, names::MAX_TOKENS)?;
        let validator = compile_one(text, |detail| Error::InvalidEvent {
            topic: pattern.clone(),
            detail: format!("schema {detail}"),
        })?;
        out.push((pattern.clone(), validator));
    }
    Ok(out)
}

/// Compiles one schema text; `invalid` turns "is not JSON: …" or "does not
/// compile: …" into the caller's error.
fn compile_one(
    text: &str,
    invalid: impl Fn(String) -> Error,
) -> Result<Arc<jsonschema::Validator>, Error> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("is not JSON: {e}")))?;
    let validator =
        jsonschema::validator_for(&value).map_err(|e| invalid(format!("does not compile: {e}")))?;
    Ok(Arc::new(validator))
}

/// Payloads up to this size get each failing path listed (at most
/// [`MAX_REPORTED`]); bigger ones that fail get the first failure only.
/// Listing makes the `jsonschema` crate build every error before the first
/// is returned, and a few MiB of a hostile array would be millions of them;
/// finding the first stops there.
pub const LIST_ERRORS_UP_TO: usize = 64 * 1024;

/// Each way `value` (parsed from `payload_len` bytes) fails `schema`, as
/// "at `<path>`: <reason>": empty when it passes, at most [`MAX_REPORTED`],
/// and only the first for payloads over [`LIST_ERRORS_UP_TO`].
pub fn schema_errors(
    schema: &jsonschema::Validator,
    value: &serde_json::Value,
    payload_len: usize,
) -> Vec<String> {
    if schema.is_valid(value) {
        return Vec::new();
    }
    if payload_len > LIST_ERRORS_UP_TO {
        return schema
            .validate(value)
            .err()
            .map(|e| {
                vec![format!(
                    "{} (only the first failure is listed for payloads over {} KiB)",
                    describe(&e),
                    LIST_ERRORS_UP_TO / 1024
                )]
            })
            .unwrap_or_default();
    }
    schema
        .iter_errors(value)
        .take(MAX_REPORTED)
        .map(|e| describe(&e))
        .collect()
}

/// "at `<path>`: <reason>".
fn describe(e: &jsonschema::ValidationError<'_>) -> String {
    let path = e.instance_path().to_string();
    let at = if path.is_empty() {
        "/".to_owned()
    } else {
        path
    };
    format!("at `{at}`: {e}")
}

/// Adds [`ValidateService`].
#[derive(Debug, Clone)]
pub struct ValidateLayer {
    registry: Arc<Registry>,
    max_payload: usize,
}

impl ValidateLayer {
    /// Validation against the schemas in `registry`.
    pub fn new(registry: Arc<Registry>, max_payload: usize) -> Self {
        ValidateLayer {
            registry,
            max_payload,
        }
    }
}

impl<S> Layer<S> for ValidateLayer {
    type Service = ValidateService<S>;
    fn layer(&self, inner: S) -> ValidateService<S> {
        ValidateService {
            inner,
            layer: Arc::new(self.clone()),
        }
    }
}

/// Argument checks before the inner service.
#[derive(Debug, Clone)]
pub struct ValidateService<S> {
    inner: S,
    /// Shared, so cloning the service per call costs one reference count.
    layer: Arc<ValidateLayer>,
}

impl<S> Service<Box<Invocation>> for ValidateService<S>
where
    S: Service<Box<Invocation>, Response = Reply, Error = Failure>,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = Failure;
    /// The inner future as is when the arguments pass; no allocation.
    type Future = Either<Ready<Result<Reply, Failure>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Failure>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, inv: Box<Invocation>) -> Self::Future {
        let ValidateService { inner, layer } = self;
        validated(layer, inv, |inv| inner.call(inv))
    }
}

impl<S: Stage> Stage for ValidateService<S> {
    /// The inner future as is when the arguments pass; no allocation.
    type Future = Either<Ready<Result<Reply, Failure>>, S::Future>;

    fn run(&self, inv: Box<Invocation>) -> Self::Future {
        validated(&self.layer, inv, |inv| self.inner.run(inv))
    }
}

/// Runs `inner` if the arguments pass; shared by the tower `Service` and
/// the [`Stage`] impl.
fn validated<F>(
    layer: &ValidateLayer,
    mut inv: Box<Invocation>,
    inner: impl FnOnce(Box<Invocation>) -> F,
) -> Either<Ready<Result<Reply, Failure>>, F> {
    match layer.check(&mut inv) {
        Ok(()) => Either::Right(inner(inv)),
        Err(e) => {
            let mut f = e.into_failure();
            push_hop(&mut f, "", &inv.req.service, "");
            Either::Left(futures::future::ready(Err(f)))
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
fn check_payload(pool: &crate::registry::Pool, req: &crate::router::Request) -> Result<(), Error> {
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
