//! JSON Schemas: compiled once when a provider registers (method schemas)
//! or declares topic schemas, and the bounded error listing both the call
//! validation and the event validation use.
//!
//! Hostile input is bounded: at most [`MAX_REPORTED`] errors are collected,
//! and a big failing payload gets its first failure only.

use std::sync::Arc;

use kernel_proto::v1::ServiceDecl;
use rustc_hash::FxHashMap;

use crate::error::Error;
use crate::names;

/// Most validation errors listed in one message.
pub(crate) const MAX_REPORTED: usize = 10;

/// Compiled schemas of one service: method → validator.
pub(crate) type MethodSchemas = FxHashMap<String, Arc<jsonschema::Validator>>;

/// Compiled schemas of one instance, by service.
pub(crate) type Schemas = FxHashMap<String, Arc<MethodSchemas>>;

/// Compiles the schemas a provider declared; the error names the service,
/// the method and what is wrong.
pub(crate) fn compile(services: &[ServiceDecl]) -> Result<Schemas, Error> {
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
pub(crate) fn compile_topics(
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
pub(crate) const LIST_ERRORS_UP_TO: usize = 64 * 1024;

/// Each way `value` (parsed from `payload_len` bytes) fails `schema`, as
/// "at `<path>`: <reason>": empty when it passes, at most [`MAX_REPORTED`],
/// and only the first for payloads over [`LIST_ERRORS_UP_TO`].
pub(crate) fn schema_errors(
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
