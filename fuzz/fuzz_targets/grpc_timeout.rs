//! `grpc-timeout`: any value parses or is refused with an error naming the
//! header; what parses is 1 to 8 digits and a unit, and means what a
//! separate reading of those digits and that unit means.

#![no_main]

use std::time::Duration;

use kernel_proto::headers::{parse_grpc_timeout, MAX_GRPC_TIMEOUT_DIGITS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse_grpc_timeout(&text) {
        Ok(d) => {
            let (digits, unit) = text.split_at(text.len() - 1);
            assert!(
                (1..=MAX_GRPC_TIMEOUT_DIGITS).contains(&digits.len()),
                "{text:?}"
            );
            let n: u64 = digits.parse().expect("digits");
            let want = match unit {
                "H" => Duration::from_secs(n * 3600),
                "M" => Duration::from_secs(n * 60),
                "S" => Duration::from_secs(n),
                "m" => Duration::from_millis(n),
                "u" => Duration::from_micros(n),
                "n" => Duration::from_nanos(n),
                _ => panic!("accepted unit {unit:?}"),
            };
            assert_eq!(d, want, "{text:?}");
        }
        Err(e) => {
            assert!(
                e.to_string().starts_with("invalid `grpc-timeout` header: "),
                "{e}"
            );
            assert!(e.reason.len() < 256, "{e}");
            assert!(!e.reason.chars().any(char::is_control), "{e}");
        }
    }
});
