//! Header names shared by gRPC metadata and stream frame header maps, the
//! W3C `traceparent` helpers, and bounded checks of the header values that
//! arrive from outside (`baggage`, `grpc-timeout`; `traceparent` is checked
//! in [`crate::trace`]).

use std::fmt;
use std::time::Duration;

use rand::Rng;

/// W3C Trace Context parent.
pub const TRACEPARENT: &str = "traceparent";
/// W3C Trace Context vendor state.
pub const TRACESTATE: &str = "tracestate";
/// W3C Baggage.
pub const BAGGAGE: &str = "baggage";
/// The context path of the current call.
pub const CONTEXT: &str = "x-kernel-context";
/// The trace id (32 hex digits) a unary call ran under, in its response.
pub const TRACE_ID: &str = "x-kernel-trace-id";
/// What the tree may still spend.
pub const BUDGET: &str = "x-kernel-budget";
/// The calling plugin, set by the kernel only.
pub const CALLER: &str = "x-kernel-caller";
/// The plugin identity a connection claims (used when auth is off).
pub const PLUGIN: &str = "x-kernel-plugin";
/// Dead-letter reason.
pub const DLQ_REASON: &str = "x-kernel-dlq-reason";
/// On an event relayed from the outbox: the context it was emitted in.
pub const EMITTED_IN: &str = "x-kernel-emitted-in";
/// Dead-letter attempt count.
pub const DLQ_ATTEMPTS: &str = "x-kernel-dlq-attempts";
/// The gRPC deadline of a unary request (`TimeoutValue TimeoutUnit`).
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Headers that the kernel copies from a caller to the provider unchanged.
pub const PASSTHROUGH: [&str; 3] = [TRACEPARENT, TRACESTATE, BAGGAGE];

/// Longest `baggage` value [`check_baggage`] accepts, in bytes: the W3C
/// Baggage limit a platform must be able to propagate.
pub const MAX_BAGGAGE_BYTES: usize = 8192;
/// Most list members in a `baggage` value (the W3C Baggage limit).
pub const MAX_BAGGAGE_MEMBERS: usize = 180;
/// Most digits in a `grpc-timeout` value (the gRPC over HTTP/2 spec).
pub const MAX_GRPC_TIMEOUT_DIGITS: usize = 8;

/// A header value that failed its check: which header, and what was wrong
/// with it. The value itself is not kept: it may be large, and it is the
/// sender's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidHeader {
    /// The header's name, e.g. `baggage`.
    pub header: &'static str,
    /// What was wrong, naming the offending part.
    pub reason: String,
}

impl fmt::Display for InvalidHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}` header: {}", self.header, self.reason)
    }
}

impl std::error::Error for InvalidHeader {}

impl InvalidHeader {
    pub(crate) fn new(header: &'static str, reason: impl Into<String>) -> InvalidHeader {
        InvalidHeader {
            header,
            reason: reason.into(),
        }
    }
}

/// The start of `s`, escaped, in at most `max` bytes (and `…` when cut),
/// for an error message: a hostile value must not make the message large
/// or unprintable, and escaping can make a character ten bytes long.
pub(crate) fn excerpt(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let escaped = c.escape_debug();
        if out.len() + escaped.len() > max {
            out.push('…');
            break;
        }
        out.extend(escaped);
    }
    out
}

/// A fresh `traceparent` for a request that arrived without one.
pub fn new_traceparent() -> String {
    let mut rng = rand::thread_rng();
    let trace: u128 = rng.gen::<u128>() | 1;
    let span: u64 = rng.gen::<u64>() | 1;
    format!("00-{trace:032x}-{span:016x}-01")
}

/// The trace id of a `traceparent`, when it is well formed.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    let trace = parts.next()?;
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit())).then_some(trace)
}

/// Checks a W3C `baggage` value: at most [`MAX_BAGGAGE_BYTES`] bytes and
/// [`MAX_BAGGAGE_MEMBERS`] list members, each `key=value` with optional
/// `;property` parts, keys being HTTP tokens and values baggage octets
/// (printable ASCII but space, `"`, `,`, `;` and `\`; anything else is
/// percent-encoded). The kernel forwards baggage without reading it; this is
/// for an edge that wants to refuse or drop baggage it could not propagate.
pub fn check_baggage(value: &str) -> Result<(), InvalidHeader> {
    let bad = |reason: String| Err(InvalidHeader::new(BAGGAGE, reason));
    if value.len() > MAX_BAGGAGE_BYTES {
        return bad(format!(
            "{} bytes, longer than {MAX_BAGGAGE_BYTES}",
            value.len()
        ));
    }
    let members = value.bytes().filter(|&b| b == b',').count() + 1;
    if members > MAX_BAGGAGE_MEMBERS {
        return bad(format!(
            "{members} list members, more than {MAX_BAGGAGE_MEMBERS}"
        ));
    }
    for (i, member) in value.split(',').enumerate() {
        let n = i + 1;
        let member = trim_ows(member);
        if member.is_empty() {
            return bad(format!("list member {n} is empty"));
        }
        let mut parts = member.split(';');
        let pair = parts.next().unwrap_or_default();
        let Some((key, val)) = pair.split_once('=') else {
            return bad(format!(
                "list member {n} `{}` has no `=`",
                excerpt(pair, 64)
            ));
        };
        check_baggage_part(n, "key", trim_ows(key), Some(trim_ows(val))).or_else(bad)?;
        for property in parts {
            let property = trim_ows(property);
            let (key, val) = match property.split_once('=') {
                Some((k, v)) => (trim_ows(k), Some(trim_ows(v))),
                None => (property, None),
            };
            check_baggage_part(n, "property", key, val).or_else(bad)?;
        }
    }
    Ok(())
}

/// One `key[=value]` of a baggage list member; the error names the member.
fn check_baggage_part(
    member: usize,
    what: &str,
    key: &str,
    value: Option<&str>,
) -> Result<(), String> {
    if key.is_empty() {
        return Err(format!("list member {member} has an empty {what}"));
    }
    if let Some(c) = key.chars().find(|&c| !is_tchar(c)) {
        return Err(format!(
            "list member {member}: {what} `{}` contains {c:?}",
            excerpt(key, 64)
        ));
    }
    if let Some(c) = value.and_then(|v| v.chars().find(|&c| !is_baggage_octet(c))) {
        return Err(format!(
            "list member {member}: the value of `{}` contains {c:?} (percent-encode it)",
            excerpt(key, 64)
        ));
    }
    Ok(())
}

/// Optional white space around list separators (RFC 7230 `OWS`).
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// An RFC 7230 `tchar`: what a baggage key is made of.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// A W3C `baggage-octet`: printable ASCII but space, `"`, `,`, `;`, `\`.
fn is_baggage_octet(c: char) -> bool {
    matches!(c, '!' | '#'..='+' | '-'..=':' | '<'..='[' | ']'..='~')
}

/// Parses a gRPC `grpc-timeout` value (`TimeoutValue TimeoutUnit`): 1 to
/// [`MAX_GRPC_TIMEOUT_DIGITS`] ASCII digits, then one of `H M S m u n`;
/// e.g. `250m`, `3S`.
pub fn parse_grpc_timeout(raw: &str) -> Result<Duration, InvalidHeader> {
    let bad = |reason: String| Err(InvalidHeader::new(GRPC_TIMEOUT, reason));
    // Bytes, not chars: the unit is one ASCII byte, and a multi-byte last
    // character must not be split.
    let Some((&unit, digits)) = raw.as_bytes().split_last() else {
        return bad("empty".into());
    };
    if digits.is_empty() || digits.len() > MAX_GRPC_TIMEOUT_DIGITS {
        return bad(format!(
            "`{}`: expected 1 to {MAX_GRPC_TIMEOUT_DIGITS} digits and a unit",
            excerpt(raw, 16)
        ));
    }
    let unit = match unit {
        b'H' => Duration::from_secs(3600),
        b'M' => Duration::from_secs(60),
        b'S' => Duration::from_secs(1),
        b'm' => Duration::from_millis(1),
        b'u' => Duration::from_micros(1),
        b'n' => Duration::from_nanos(1),
        _ => {
            return bad(format!(
                "`{}`: unknown unit (expected one of H M S m u n)",
                excerpt(raw, 16)
            ))
        }
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return bad(format!(
            "`{}`: the value is not all digits",
            excerpt(raw, 16)
        ));
    }
    // At most 8 digits: no overflow, in the value or in hours.
    let n = digits
        .iter()
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    Ok(unit * n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_traceparent_is_valid() {
        let tp = new_traceparent();
        assert_eq!(tp.len(), 55);
        assert!(trace_id(&tp).is_some());
        assert_eq!(trace_id("garbage"), None);
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("250m"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Ok(Duration::from_secs(2)));
        assert_eq!(
            parse_grpc_timeout("99999999H"),
            Ok(Duration::from_secs(99_999_999 * 3600))
        );
        for (bad, needle) in [
            ("", "empty"),
            ("x", "1 to 8 digits"),
            ("m", "1 to 8 digits"),
            ("123456789S", "1 to 8 digits"),
            ("12q", "unknown unit"),
            ("+5m", "not all digits"),
            ("-5m", "not all digits"),
        ] {
            let e = parse_grpc_timeout(bad).expect_err(bad).to_string();
            assert!(
                e.contains("grpc-timeout") && e.contains(needle),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn grpc_timeout_with_a_multibyte_last_character_is_an_error_not_a_panic() {
        // Slicing at `len - 1` would split the `é`.
        let e = parse_grpc_timeout("1é").expect_err("not a unit");
        assert!(e.reason.contains("unknown unit"), "{e}");
    }

    #[test]
    fn baggage_limits_and_syntax() {
        assert_eq!(check_baggage("tenant=acme"), Ok(()));
        assert_eq!(
            check_baggage("userId=alice , serverNode = DF%2028;p1;p2=v, isProduction=false"),
            Ok(())
        );
        let at_limit = vec!["k=v"; MAX_BAGGAGE_MEMBERS].join(",");
        assert_eq!(check_baggage(&at_limit), Ok(()));
        for (bad, needle) in [
            (format!("{at_limit},k=v"), "181 list members, more than 180"),
            (
                format!("k={}", "v".repeat(8191)),
                "8193 bytes, longer than 8192",
            ),
            ("a=1,,b=2".into(), "list member 2 is empty"),
            ("a=1,b".into(), "list member 2 `b` has no `=`"),
            ("=1".into(), "empty key"),
            ("a b=1".into(), "key `a b` contains ' '"),
            ("a=x y".into(), "the value of `a` contains ' '"),
            ("a=\"x\"".into(), "the value of `a` contains '\"'"),
            ("a=1;".into(), "empty property"),
            ("a=1;p=\u{e9}".into(), "the value of `p` contains"),
        ] {
            let e = check_baggage(&bad).expect_err(&bad).to_string();
            assert!(e.contains("`baggage`") && e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn error_excerpts_are_bounded_and_printable() {
        let e = check_baggage(&format!("{}\n=1", "k".repeat(1000))).expect_err("newline");
        assert!(e.reason.len() < 200, "{e}");
        assert!(!e.reason.contains('\n'), "{e}");
    }

    fn baggage_member() -> impl Strategy<Value = String> {
        (
            "[A-Za-z0-9!#$&'*+.^_`|~-]{1,12}",
            "[!#-+\\--:<-\\[\\]-~]{0,12}",
            proptest::collection::vec("[a-z]{1,6}(=[a-z0-9%]{0,6})?", 0..3),
            "[ \t]{0,2}",
        )
            .prop_map(|(k, v, props, ows)| {
                let mut m = format!("{ows}{k}{ows}={ows}{v}");
                for p in props {
                    m.push_str(&format!("{ows};{ows}{p}"));
                }
                m
            })
    }

    proptest! {
        #[test]
        fn arbitrary_header_values_never_panic(s in "\\PC{0,64}", bytes in any::<Vec<u8>>()) {
            let _ = check_baggage(&s);
            let _ = parse_grpc_timeout(&s);
            let _ = trace_id(&s);
            let lossy = String::from_utf8_lossy(&bytes);
            let _ = check_baggage(&lossy);
            let _ = parse_grpc_timeout(&lossy);
        }

        #[test]
        fn well_formed_baggage_passes(members in proptest::collection::vec(baggage_member(), 1..20)) {
            let value = members.join(",");
            prop_assert_eq!(check_baggage(&value), Ok(()), "{}", value);
        }

        #[test]
        fn grpc_timeouts_parse_back(n in 0u64..100_000_000, unit in "[HMSmun]") {
            let expected = match unit.as_str() {
                "H" => Duration::from_secs(n * 3600),
                "M" => Duration::from_secs(n * 60),
                "S" => Duration::from_secs(n),
                "m" => Duration::from_millis(n),
                "u" => Duration::from_micros(n),
                _ => Duration::from_nanos(n),
            };
            prop_assert_eq!(parse_grpc_timeout(&format!("{n}{unit}")), Ok(expected));
        }
    }
}
