//! Retries of idempotent methods and circuit breakers per provider
//! instance, through a real kernel and its full pipeline, with in-process
//! providers whose failures the test controls.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kernel_core::{BoxFuture, Config, Kernel, LocalCall, LocalHandler, Request};
use kernel_proto::v1::{Failure, RegisterMode, ServiceDecl};
use kernel_tests::eventually;

/// Fails its first `failures` calls with `code`, then answers; counts calls.
struct Flaky {
    failures: u32,
    code: tonic::Code,
    calls: Arc<AtomicU32>,
    /// While set, every call fails.
    broken: Arc<AtomicBool>,
}

impl LocalHandler for Flaky {
    fn invoke(&self, call: LocalCall) -> BoxFuture<Result<Bytes, Failure>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let fail = n <= self.failures || self.broken.load(Ordering::SeqCst);
        let code = self.code;
        Box::pin(async move {
            if fail {
                Err(Failure {
                    code: code as i32,
                    message: format!("attempt {n} failed"),
                    causality: Vec::new(),
                })
            } else {
                Ok(call.payload)
            }
        })
    }
}

fn kernel(breaker_failures: u32, breaker_open_ms: u64) -> Arc<Kernel> {
    let mut config = Config::default();
    config.router.breaker_failures = breaker_failures;
    config.router.breaker_open_ms = breaker_open_ms;
    Kernel::new(config)
}

/// Registers `service` (with `idempotent` methods) served by `handler`.
fn provide(
    kernel: &Arc<Kernel>,
    service: &str,
    idempotent: &[&str],
    handler: Flaky,
) -> kernel_core::LocalRegistration {
    provide_with(kernel, service, idempotent, handler, 0)
}

/// The same with any handler and `max_concurrency` slots (0: the default).
fn provide_with(
    kernel: &Arc<Kernel>,
    service: &str,
    idempotent: &[&str],
    handler: impl LocalHandler,
    max_concurrency: u32,
) -> kernel_core::LocalRegistration {
    let decl = ServiceDecl {
        name: service.into(),
        idempotent_methods: idempotent.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    };
    kernel
        .register_local(
            "flaky",
            vec![decl],
            Arc::new(handler),
            RegisterMode::Pool,
            max_concurrency,
            &Default::default(),
        )
        .expect("register")
}

fn request(service: &str, method: &str, timeout: Duration) -> Request {
    Request {
        service: service.into(),
        method: method.into(),
        payload: Bytes::from_static(b"ping"),
        deadline: Some(Instant::now() + timeout),
        ..Default::default()
    }
}

fn flaky(failures: u32, code: tonic::Code) -> (Flaky, Arc<AtomicU32>, Arc<AtomicBool>) {
    let calls = Arc::new(AtomicU32::new(0));
    let broken = Arc::new(AtomicBool::new(false));
    (
        Flaky {
            failures,
            code,
            calls: calls.clone(),
            broken: broken.clone(),
        },
        calls,
        broken,
    )
}

#[tokio::test]
async fn an_idempotent_method_succeeds_through_retries_and_another_is_never_retried() {
    let kernel = kernel(0, 1_000);
    let (h, calls, _) = flaky(2, tonic::Code::Unavailable);
    let _reg = provide(&kernel, "stock.check", &["get"], h);
    let reply = kernel
        .call(request("stock.check", "get", Duration::from_secs(2)))
        .await
        .expect("the third attempt answers");
    assert_eq!(reply.payload, "ping");
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // The same failures on a method not declared idempotent: one attempt.
    let (h, calls, _) = flaky(2, tonic::Code::Unavailable);
    let _reg2 = provide(&kernel, "stock.reserve", &["get"], h);
    let err = kernel
        .call(request("stock.reserve", "take", Duration::from_secs(2)))
        .await
        .expect_err("not retried");
    assert_eq!(err.code, tonic::Code::Unavailable as i32);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A business error is not retried even on an idempotent method.
    let (h, calls, _) = flaky(2, tonic::Code::FailedPrecondition);
    let _reg3 = provide(&kernel, "stock.count", &["get"], h);
    let err = kernel
        .call(request("stock.count", "get", Duration::from_secs(2)))
        .await
        .expect_err("business error");
    assert_eq!(err.code, tonic::Code::FailedPrecondition as i32);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn retries_stay_within_the_callers_deadline() {
    let kernel = kernel(0, 1_000);
    let (h, calls, broken) = flaky(0, tonic::Code::Unavailable);
    broken.store(true, Ordering::SeqCst);
    let _reg = provide(&kernel, "slow.get", &[""], h);
    let err = kernel
        .call(request("slow.get", "", Duration::from_millis(15)))
        .await
        .expect_err("always failing");
    // 3 attempts are allowed, but the pauses (10 ms, then 20 ms) do not fit
    // in 15 ms: the call ends with the last failure, not a late attempt.
    assert!(
        calls.load(Ordering::SeqCst) < 3,
        "{}",
        calls.load(Ordering::SeqCst)
    );
    assert!(
        err.code == tonic::Code::Unavailable as i32
            || err.code == tonic::Code::DeadlineExceeded as i32,
        "{err:?}"
    );
}

#[tokio::test]
async fn a_breaker_opens_after_consecutive_failures_fails_fast_and_closes_after_a_good_probe() {
    let kernel = kernel(3, 1_000);
    let (h, calls, broken) = flaky(0, tonic::Code::Internal);
    broken.store(true, Ordering::SeqCst);
    let _reg = provide(&kernel, "pay.charge", &[], h);
    for _ in 0..3 {
        let err = kernel
            .call(request("pay.charge", "", Duration::from_secs(2)))
            .await
            .expect_err("broken");
        assert_eq!(err.code, tonic::Code::Internal as i32);
    }
    // Open: the next call fails fast without reaching the provider.
    let err = kernel
        .call(request("pay.charge", "", Duration::from_secs(2)))
        .await
        .expect_err("open");
    assert_eq!(err.code, tonic::Code::Unavailable as i32, "{err:?}");
    assert!(err.message.contains("circuit open"), "{}", err.message);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // The provider recovers; after the pause one probe goes through, and
    // its success closes the breaker.
    broken.store(false, Ordering::SeqCst);
    let k = kernel.clone();
    eventually(
        Duration::from_secs(10),
        "a probe closes the breaker",
        || {
            let k = k.clone();
            async move {
                k.call(request("pay.charge", "", Duration::from_secs(2)))
                    .await
                    .map(|_| ())
                    .map_err(|f| f.message)
            }
        },
    )
    .await;
    for _ in 0..5 {
        kernel
            .call(request("pay.charge", "", Duration::from_secs(2)))
            .await
            .expect("closed again");
    }
}

/// Panics in `invoke` itself, before it returns a future, while `panics`
/// is set (a handler that is not the SDK's, which catches its own).
struct Eager {
    panics: Arc<AtomicBool>,
}

impl LocalHandler for Eager {
    fn invoke(&self, call: LocalCall) -> BoxFuture<Result<Bytes, Failure>> {
        assert!(!self.panics.load(Ordering::SeqCst), "invoke panicked");
        Box::pin(async move { Ok(call.payload) })
    }
}

/// A panic out of an in-process handler's `invoke` reaches the caller, and
/// holds nothing: the provider's one slot, the caller's one place under
/// `router.max_in_flight_per_plugin` and the instance's in-flight count
/// are free for the next call.
#[tokio::test]
async fn a_panic_in_invoke_leaves_no_slot_place_or_count_held() {
    use futures::FutureExt;
    let mut config = Config::default();
    config.router.max_in_flight_per_plugin = 1;
    let kernel = Kernel::new(config);
    let panics = Arc::new(AtomicBool::new(true));
    let handler = Eager {
        panics: panics.clone(),
    };
    let _reg = provide_with(&kernel, "eager.echo", &[], handler, 1);
    let call = || Request {
        caller: Some("caller".into()),
        ..request("eager.echo", "", Duration::from_secs(5))
    };
    for _ in 0..3 {
        let out = std::panic::AssertUnwindSafe(async { kernel.call(call()).await })
            .catch_unwind()
            .await;
        assert!(out.is_err(), "the panic reaches the caller");
    }
    panics.store(false, Ordering::SeqCst);
    let reply = kernel.call(call()).await.expect("a slot and a place");
    assert_eq!(&reply.payload[..], b"ping");
    let instances = kernel.registry().instances();
    assert_eq!(instances[0].in_flight.load(Ordering::Relaxed), 0);
}
