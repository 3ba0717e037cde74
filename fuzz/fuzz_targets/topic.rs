//! Service names, topics and patterns (`kernel_core::validate_*`): any
//! input is accepted or refused with an error that names the kind of name
//! and stays short; what is accepted keeps to the limits; every topic is
//! also a pattern, and a service name is a topic under the fixed limits.

#![no_main]

use kernel_core::{validate_pattern, validate_service, validate_topic, MAX_NAME_BYTES, MAX_TOKENS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks small limits, so that both sides of them are reached.
    let (limits, rest) = data.split_first().unwrap_or((&0, data));
    let name = String::from_utf8_lossy(rest);
    let max_bytes = usize::from(limits & 0x3f);
    let max_tokens = usize::from(limits >> 6) + 1;

    for (max_bytes, max_tokens) in [(max_bytes, max_tokens), (MAX_NAME_BYTES, MAX_TOKENS)] {
        let topic = validate_topic(&name, max_bytes, max_tokens);
        let pattern = validate_pattern(&name, max_bytes, max_tokens);
        if topic.is_ok() {
            assert!(pattern.is_ok(), "a topic is a pattern: {name:?}");
        }
        if pattern.is_ok() {
            assert!(!name.is_empty() && name.len() <= max_bytes, "{name:?}");
            assert!(name.split('.').count() <= max_tokens, "{name:?}");
            assert!(name.split('.').all(|t| !t.is_empty()), "{name:?}");
        }
        for (what, result) in [("topic", topic), ("pattern", pattern)] {
            if let Err(e) = result {
                let e = e.to_string();
                assert!(e.starts_with(&format!("invalid {what} ")), "{e}");
                // The name is cut to 80 characters and the token the reason
                // names to 64, control characters escaped (6 bytes at most).
                assert!(e.len() < 6 * (80 + 64) + 200, "{e}");
                assert!(!e.chars().any(char::is_control), "{e}");
            }
        }
    }
    assert_eq!(
        validate_service(&name).is_ok(),
        validate_topic(&name, MAX_NAME_BYTES, MAX_TOKENS).is_ok(),
        "{name:?}"
    );
});
