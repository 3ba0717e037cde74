//! Name grammar shared by services, topics and subscription patterns (as
//! NATS): tokens separated by `.`, each token non-empty, no whitespace or
//! control characters. Patterns may use `*` (exactly one token) and `>` (one
//! or more trailing tokens, last position only).

use crate::error::Error;

/// Longest name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Most tokens in a name.
pub const MAX_TOKENS: usize = 16;

/// Checks a service name: tokens, no wildcards.
pub fn validate_service(name: &str) -> Result<(), Error> {
    check(name, "service", false, MAX_NAME_BYTES, MAX_TOKENS)
}

/// Checks a publish topic: tokens, no wildcards.
pub fn validate_topic(name: &str, max_bytes: usize, max_tokens: usize) -> Result<(), Error> {
    check(name, "topic", false, max_bytes, max_tokens)
}

/// Checks a subscription pattern: tokens, `*` anywhere, `>` last only.
pub fn validate_pattern(name: &str, max_bytes: usize, max_tokens: usize) -> Result<(), Error> {
    check(name, "pattern", true, max_bytes, max_tokens)
}

/// One pass over the bytes for the common name: printable ASCII, no
/// wildcard, no empty token, within the limits. Anything else (an error,
/// a wildcard, non-ASCII) takes the detailed check.
fn plain(name: &str, max_bytes: usize, max_tokens: usize) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > max_bytes {
        return false;
    }
    let (mut tokens, mut empty) = (1, true);
    for &b in bytes {
        if b == b'.' {
            if empty {
                return false;
            }
            tokens += 1;
            empty = true;
        } else if b <= b' ' || b >= 0x7f || b == b'*' || b == b'>' {
            return false;
        } else {
            empty = false;
        }
    }
    !empty && tokens <= max_tokens
}

fn check(
    name: &str,
    what: &'static str,
    wildcards: bool,
    max_bytes: usize,
    max_tokens: usize,
) -> Result<(), Error> {
    if plain(name, max_bytes, max_tokens) {
        return Ok(());
    }
    detailed(name, what, wildcards, max_bytes, max_tokens)
}

/// The full check, which names what is wrong.
fn detailed(
    name: &str,
    what: &'static str,
    wildcards: bool,
    max_bytes: usize,
    max_tokens: usize,
) -> Result<(), Error> {
    let bad = |reason: String| {
        Err(Error::InvalidName {
            what,
            name: name.chars().take(80).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("must not be empty".into());
    }
    if name.len() > max_bytes {
        return bad(format!("longer than {max_bytes} bytes"));
    }
    // Every publish and call checks a name: byte scans, one split.
    let count = name.bytes().filter(|&b| b == b'.').count() + 1;
    if count > max_tokens {
        return bad(format!("more than {max_tokens} tokens"));
    }
    for (i, token) in tokens(name).enumerate() {
        if token.is_empty() {
            return bad(format!("token {} is empty", i + 1));
        }
        let plain_ascii = token.bytes().all(|b| b > b' ' && b < 0x7f);
        if !plain_ascii {
            if let Some(c) = token.chars().find(|c| c.is_whitespace() || c.is_control()) {
                return bad(format!("token `{}` contains {:?}", token.escape_debug(), c));
            }
        }
        let has_wild = token.bytes().any(|b| b == b'*' || b == b'>');
        if has_wild {
            if !wildcards {
                return bad(format!("token `{token}` is a wildcard; wildcards are only allowed in subscription patterns"));
            }
            if token != "*" && token != ">" {
                return bad(format!(
                    "token `{token}` mixes a wildcard with other characters"
                ));
            }
            if token == ">" && i + 1 != count {
                return bad(format!(
                    "token `>` at position {} must be the last token",
                    i + 1
                ));
            }
        }
    }
    Ok(())
}

/// The `.`-separated tokens of a name, found by a byte scan: for names of a
/// few short tokens this is cheaper than the searcher `str::split('.')` sets
/// up on every call, and every publish splits its topic twice.
pub(crate) fn tokens(name: &str) -> impl Iterator<Item = &str> + '_ {
    let mut rest = Some(name);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|b| b == b'.') {
            // `.` is ASCII, so both sides are on character boundaries.
            Some(i) => {
                rest = r.get(i + 1..);
                r.get(..i)
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        assert!(validate_service("inventory.check_stock").is_ok());
        assert!(validate_pattern("order.*.>", 256, 16).is_ok());
        for (bad, needle) in [
            ("", "empty"),
            ("a..b", "token 2 is empty"),
            ("a.b c", "`b c`"),
            ("order.*", "wildcard"),
        ] {
            let e = validate_topic(bad, 256, 16).expect_err(bad).to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        let e = validate_pattern("a.>.b", 256, 16)
            .expect_err("> not last")
            .to_string();
        assert!(e.contains("last"), "{e}");
        let e = validate_pattern("a.b*", 256, 16)
            .expect_err("mixed")
            .to_string();
        assert!(e.contains("`b*`"), "{e}");
        assert!(validate_topic("a.".repeat(20).trim_end_matches('.'), 256, 16).is_err());
    }

    proptest::proptest! {
        #[test]
        fn tokens_split_exactly_like_str_split(name in "[a.\u{e9}]{0,12}") {
            let ours: Vec<&str> = tokens(&name).collect();
            let std: Vec<&str> = name.split('.').collect();
            proptest::prop_assert_eq!(ours, std);
        }

        #[test]
        fn the_fast_pass_accepts_only_what_the_full_check_accepts(
            name in "[a.*> \u{e9}\t]{0,12}",
            max_tokens in 1usize..6,
        ) {
            if plain(&name, 10, max_tokens) {
                proptest::prop_assert!(detailed(&name, "topic", false, 10, max_tokens).is_ok());
            } else if !name.contains('\u{e9}') {
                // Plain ASCII the fast pass refused is refused in full too.
                proptest::prop_assert!(detailed(&name, "topic", false, 10, max_tokens).is_err());
            }
        }
    }
}
