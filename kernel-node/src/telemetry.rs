//! Telemetry: structured logs (`tracing`) and OpenTelemetry traces over OTLP.
//!
//! Traces are exported only when an OTLP endpoint is configured
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or
//! `[telemetry] otlp_endpoint`); otherwise no span is created at all, so the
//! hot path pays nothing. Export is batched on a background thread: a call
//! never waits on it. Sampling follows `[telemetry] sampler`/`sampler_arg`,
//! else `OTEL_TRACES_SAMPLER(_ARG)` (an unknown sampler or a ratio outside
//! [0, 1] is a startup error, not a silent fallback); the service name
//! `OTEL_SERVICE_NAME` (default `kernel-node`).
//!
//! The span helpers the kernel and the SDK share (the [`Telemetry`] handle,
//! `traceparent`) live in `kernel_proto::trace`; this module only builds
//! the exporter behind it.

pub use kernel_proto::trace::Telemetry;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::EnvFilter;

use crate::config::TelemetryConfig;

/// Installs the global `tracing` subscriber for logs. Safe to call more
/// than once (later calls are ignored), which tests rely on.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr (as OPERATIONS.md says): stdout carries only the
    // "listening" line, and a reader that closed it must not make a log
    // line fail.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Builds the OTLP exporter when an endpoint is configured. Must run
/// inside a tokio runtime (the exporter's channel lives on it).
pub fn from_config(config: &TelemetryConfig) -> Result<Telemetry, String> {
    let endpoint = config
        .otlp_endpoint
        .clone()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok())
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.is_empty());
    let Some(endpoint) = endpoint else {
        return Ok(Telemetry::disabled());
    };
    let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    let (name, name_from) = match &config.sampler {
        Some(n) => (Some(n.clone()), "telemetry.sampler"),
        None => (env("OTEL_TRACES_SAMPLER"), "OTEL_TRACES_SAMPLER"),
    };
    let arg = match config.sampler_arg {
        Some(a) => Some((a, "telemetry.sampler_arg")),
        None => match env("OTEL_TRACES_SAMPLER_ARG") {
            Some(text) => Some((
                text.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("OTEL_TRACES_SAMPLER_ARG: `{text}` is not a number"))?,
                "OTEL_TRACES_SAMPLER_ARG",
            )),
            None => None,
        },
    };
    let sampler = sampler(name.as_deref(), arg).map_err(|e| match e {
        SamplerError::Name(n) => format!(
            "{name_from}: unknown sampler `{n}` (one of {})",
            SAMPLERS.join(", ")
        ),
        SamplerError::Arg(a, from) => {
            format!("{from}: {a} is not a sampling ratio in [0, 1]")
        }
    })?;
    let timeout = std::time::Duration::from_millis(config.export_timeout_ms.max(1));
    otlp_export(&endpoint, config.service_name.as_deref(), sampler, timeout)
}

/// Exports every span to the OTLP/gRPC collector at `endpoint`.
pub fn otlp(endpoint: &str, service_name: Option<&str>) -> Result<Telemetry, String> {
    otlp_sampled(
        endpoint,
        service_name,
        Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
    )
}

/// Exports to the OTLP/gRPC collector at `endpoint`, sampled by `sampler`.
pub fn otlp_sampled(
    endpoint: &str,
    service_name: Option<&str>,
    sampler: Sampler,
) -> Result<Telemetry, String> {
    let timeout = std::time::Duration::from_millis(TelemetryConfig::default().export_timeout_ms);
    otlp_export(endpoint, service_name, sampler, timeout)
}

/// Exports to `endpoint`, each export and the final flush at shutdown
/// bounded by `timeout`.
fn otlp_export(
    endpoint: &str,
    service_name: Option<&str>,
    sampler: Sampler,
    timeout: std::time::Duration,
) -> Result<Telemetry, String> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(timeout)
        .build()
        .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
    let name = service_name
        .map(str::to_owned)
        .or_else(|| std::env::var("OTEL_SERVICE_NAME").ok())
        .unwrap_or_else(|| "kernel-node".into());
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_batch_exporter(exporter)
        .with_resource(resource(name))
        .build();
    tracing::info!(endpoint, "exporting traces over OTLP");
    Ok(Telemetry::from_provider(provider, "kernel-node").with_shutdown_timeout(timeout))
}

/// The node's resource: its name, version, this process's instance id and
/// the host (`OTEL_RESOURCE_ATTRIBUTES` adds to it; the SDK reads it).
pub fn resource(service_name: String) -> opentelemetry_sdk::Resource {
    use opentelemetry::KeyValue;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty());
    let instance = format!(
        "{}-{}-{:08x}",
        host.as_deref().unwrap_or("host"),
        std::process::id(),
        rand::random::<u32>()
    );
    let mut attrs = vec![
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", instance),
    ];
    if let Some(h) = host {
        attrs.push(KeyValue::new("host.name", h));
    }
    opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name)
        .with_attributes(attrs)
        .build()
}

/// The OpenTelemetry sampler names the node accepts.
pub const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// Why a sampler setting was refused.
#[derive(Debug, PartialEq)]
pub enum SamplerError<'a> {
    /// Not one of [`SAMPLERS`].
    Name(&'a str),
    /// A ratio outside [0, 1] (or not a number), and where it came from.
    Arg(f64, &'a str),
}

/// The sampler `name` (default `parentbased_always_on`) with the ratio
/// `arg` (default 1; only the `*traceidratio` samplers use it) and where
/// that ratio came from, for the error.
pub fn sampler<'a>(
    name: Option<&'a str>,
    arg: Option<(f64, &'a str)>,
) -> Result<Sampler, SamplerError<'a>> {
    let ratio = match arg {
        Some((a, from)) if !(0.0..=1.0).contains(&a) => return Err(SamplerError::Arg(a, from)),
        Some((a, _)) => a,
        None => 1.0,
    };
    let parent = |root: Sampler| Sampler::ParentBased(Box::new(root));
    Ok(match name.unwrap_or("parentbased_always_on").trim() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio),
        "parentbased_always_on" => parent(Sampler::AlwaysOn),
        "parentbased_always_off" => parent(Sampler::AlwaysOff),
        "parentbased_traceidratio" => parent(Sampler::TraceIdRatioBased(ratio)),
        _ => return Err(SamplerError::Name(name.unwrap_or_default())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samplers_by_their_opentelemetry_names_and_loud_errors() {
        let from = "OTEL_TRACES_SAMPLER_ARG";
        assert!(matches!(sampler(None, None), Ok(Sampler::ParentBased(_))));
        assert!(matches!(
            sampler(Some("always_off"), None),
            Ok(Sampler::AlwaysOff)
        ));
        match sampler(Some("traceidratio"), Some((0.25, from))) {
            Ok(Sampler::TraceIdRatioBased(r)) => assert_eq!(r, 0.25),
            other => panic!("{other:?}"),
        }
        for name in SAMPLERS {
            assert!(sampler(Some(name), None).is_ok(), "{name}");
        }
        assert_eq!(
            sampler(Some("alwayson"), None).err(),
            Some(SamplerError::Name("alwayson"))
        );
        assert_eq!(
            sampler(Some("traceidratio"), Some((1.5, from))).err(),
            Some(SamplerError::Arg(1.5, from))
        );
        assert!(sampler(Some("always_on"), Some((f64::NAN, from))).is_err());
    }
}
