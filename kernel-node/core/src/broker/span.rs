//! The span of one delivery attempt (`kernel.deliver`, CONSUMER kind): it
//! starts when the event enters the subscription, so it covers the time
//! the event waited there, and ends when the event was sent (auto ack) or
//! acked (explicit ack). A nack or an expired ack wait ends the attempt's
//! span with an error, and the redelivery gets a span of its own, with its
//! attempt number, under the same publish span. Made only when tracing is
//! on; an attempt whose event is dropped (cancelled branch, closed
//! subscription) ends its span when the span is dropped.

use kernel_proto::trace::{self as telemetry, SpanKind, SpanParent, Telemetry};
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};

/// One delivery's spans: the current attempt's, and what a redelivery's
/// needs.
#[derive(Debug)]
pub struct DeliverySpan {
    telemetry: Telemetry,
    /// The publish span every attempt hangs under.
    publish: Context,
    topic: String,
    subscription: String,
    context: String,
    /// The open attempt's span.
    attempt: Option<Context>,
}

impl DeliverySpan {
    /// The first attempt's span, under `publish`; None when tracing is off.
    pub fn start(
        telemetry: &Telemetry,
        publish: &Context,
        topic: &str,
        subscription: String,
        context: &str,
    ) -> Option<Box<DeliverySpan>> {
        let mut d = Box::new(DeliverySpan {
            telemetry: telemetry.clone(),
            publish: publish.clone(),
            topic: topic.to_owned(),
            subscription,
            context: context.to_owned(),
            attempt: None,
        });
        d.open(1)?;
        Some(d)
    }

    /// Opens attempt `n`'s span.
    fn open(&mut self, n: u32) -> Option<()> {
        let cx = self.telemetry.start(
            "kernel.deliver",
            SpanKind::Consumer,
            SpanParent::Span(&self.publish),
            || {
                vec![
                    KeyValue::new("messaging.system", "kernel"),
                    KeyValue::new("messaging.operation.type", "process"),
                    KeyValue::new("messaging.destination.name", self.topic.clone()),
                    KeyValue::new("kernel.topic", self.topic.clone()),
                    KeyValue::new("kernel.subscription", self.subscription.clone()),
                    KeyValue::new("kernel.context", self.context.clone()),
                    KeyValue::new("kernel.attempt", i64::from(n)),
                ]
            },
        )?;
        self.attempt = Some(cx);
        Some(())
    }

    /// The open attempt's `traceparent`: the subscriber's parent.
    pub fn traceparent(&self) -> Option<String> {
        self.attempt.as_ref().map(telemetry::traceparent)
    }

    /// The attempt ended well: sent (auto ack) or acked.
    pub fn done(&mut self) {
        if let Some(cx) = self.attempt.take() {
            cx.span().set_status(Status::Ok);
            cx.span().end();
        }
    }

    /// The attempt failed (`why`); when `next` is given, that attempt's
    /// span opens now, its wait for redelivery included.
    pub fn failed(&mut self, why: &'static str, next: Option<u32>) {
        if let Some(cx) = self.attempt.take() {
            cx.span().set_status(Status::error(why));
            cx.span().end();
        }
        if let Some(n) = next {
            self.open(n);
        }
    }
}
