//! Exactly `iters` operations of one kind, with no warm-up, clock or
//! statistics: what `make bench-check` runs under callgrind, twice at two
//! counts, so that the difference divided by the difference in counts is
//! the instructions of one operation, setup excluded.

use kernel_core::{Config, Kernel, Trie};
use kernel_sdk::{Bytes, Client, SubscribeOptions};

use crate::local::{echo_kernel, CALL_PAYLOAD, EVENT_PAYLOAD};

/// The operations `make bench-check` counts.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Op {
    /// An in-process call through the full pipeline to an echo handler.
    Call,
    /// An in-process publish and its wildcard subscriber taking it.
    Emit,
    /// A trie match finding 2 of 1,000 subscriptions.
    Trie,
}

pub(crate) async fn run(op: Op, iters: usize) {
    match op {
        Op::Call => {
            let (_kernel, _reg, local) = echo_kernel();
            let payload = Bytes::from(vec![7u8; CALL_PAYLOAD]);
            for _ in 0..iters {
                local
                    .call("bench.echo", payload.clone())
                    .await
                    .expect("in-process call");
            }
        }
        Op::Emit => {
            let local = Client::in_process(Kernel::new(Config::default()));
            let mut sub = local
                .subscriber(SubscribeOptions::new("bench.*"))
                .await
                .expect("subscribe");
            let payload = Bytes::from(vec![1u8; EVENT_PAYLOAD]);
            for _ in 0..iters {
                local
                    .publish("bench.ev", payload.clone())
                    .await
                    .expect("publish");
                sub.next().await.expect("delivery");
            }
        }
        Op::Trie => {
            let mut t: Trie<u64> = Trie::new();
            t.insert("bench.match.*", 0);
            t.insert("bench.>", 1);
            for i in 2..1_000u64 {
                let p = match i % 3 {
                    0 => format!("svc{i}.created"),
                    1 => format!("svc{i}.*"),
                    _ => format!("bench.other{i}.>"),
                };
                t.insert(&p, i);
            }
            let mut found = 0usize;
            for _ in 0..iters {
                t.for_each_match(std::hint::black_box("bench.match.x"), |_| found += 1);
            }
            assert_eq!(found, 2 * iters);
        }
    }
}
