//! W3C `traceparent`: any value parses or is refused with an error naming
//! the header; what parses prints back as the same text (trimmed); ids and
//! flags taken from the input round-trip through print and parse.

#![no_main]

use kernel_proto::headers::trace_id;
use kernel_proto::trace::{check_traceparent, parse_traceparent, traceparent};
use libfuzzer_sys::fuzz_target;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match check_traceparent(&text) {
        Ok(sc) => {
            let printed = traceparent(&Context::new().with_remote_span_context(sc));
            assert_eq!(printed, text.trim());
            assert_eq!(trace_id(text.trim()), Some(&printed[3..35]));
        }
        Err(e) => {
            assert!(
                e.to_string().starts_with("invalid `traceparent` header: "),
                "{e}"
            );
            assert!(e.reason.len() < 256, "{e}");
            assert!(!e.reason.chars().any(char::is_control), "{e}");
            assert!(parse_traceparent(&text).is_none());
        }
    }
    let _ = trace_id(&text);

    // The same bytes as ids and flags.
    if let Some((ids, _)) = data.split_first_chunk::<25>() {
        let trace = u128::from_le_bytes(ids[..16].try_into().expect("16 bytes"));
        let span = u64::from_le_bytes(ids[16..24].try_into().expect("8 bytes"));
        let tp = format!("00-{trace:032x}-{span:016x}-{:02x}", ids[24]);
        match check_traceparent(&tp) {
            Ok(sc) => {
                assert_eq!(
                    traceparent(&Context::new().with_remote_span_context(sc)),
                    tp
                );
            }
            Err(_) => assert!(trace == 0 || span == 0, "{tp}"),
        }
    }
});
