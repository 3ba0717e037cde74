//! W3C `baggage`: any value is accepted or refused with an error naming the
//! header; what is accepted is within the byte and member limits. The input
//! is also checked repeated across the limits (libFuzzer's inputs stay
//! shorter than the byte limit by default).

#![no_main]

use kernel_proto::headers::{check_baggage, MAX_BAGGAGE_BYTES, MAX_BAGGAGE_MEMBERS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let accepted = check(&text);
    if text.is_empty() {
        return;
    }
    // Past the member limit, and past the byte limit.
    let members = vec![&*text; MAX_BAGGAGE_MEMBERS + 1].join(",");
    assert!(
        !check(&members),
        "{} members accepted",
        MAX_BAGGAGE_MEMBERS + 1
    );
    let bytes = vec![&*text; MAX_BAGGAGE_BYTES / text.len() + 1].concat();
    assert!(!check(&bytes), "{} bytes accepted", bytes.len());
    // Within both: what was accepted once is accepted repeated.
    if accepted && text.split(',').count() == 1 && text.len() * 4 < MAX_BAGGAGE_BYTES {
        assert!(check(&[&*text; 4].join(",")), "{text:?} four times");
    }
});

/// Checks one value, and the invariants of the answer.
fn check(text: &str) -> bool {
    match check_baggage(text) {
        Ok(()) => {
            assert!(text.len() <= MAX_BAGGAGE_BYTES);
            assert!(text.split(',').count() <= MAX_BAGGAGE_MEMBERS);
            assert!(text.is_ascii(), "{text:?}");
            true
        }
        Err(e) => {
            assert!(
                e.to_string().starts_with("invalid `baggage` header: "),
                "{e}"
            );
            assert!(e.reason.len() < 512, "{e}");
            assert!(!e.reason.chars().any(char::is_control), "{e}");
            false
        }
    }
}
