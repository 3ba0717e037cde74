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
            name: excerpt(name, 80),
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
                return bad(format!("token `{}` contains {:?}", excerpt(token, 64), c));
            }
        }
        let has_wild = token.bytes().any(|b| b == b'*' || b == b'>');
        if has_wild {
            if !wildcards {
                return bad(format!(
                    "token `{}` is a wildcard; wildcards are only allowed in subscription patterns",
                    excerpt(token, 64)
                ));
            }
            if token != "*" && token != ">" {
                return bad(format!(
                    "token `{}` mixes a wildcard with other characters",
                    excerpt(token, 64)
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

/// At most `max` characters of `s` for an error message, control characters
/// escaped: a refused name is the sender's input, and it ends up in logs.
pub(crate) fn excerpt(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().take(max) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
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

    #[test]
    fn huge_names_are_refused_by_length_with_a_short_message() {
        let huge = "a".repeat(1 << 20);
        for e in [
            validate_service(&huge),
            validate_topic(&huge, 256, 16),
            validate_pattern(&huge, 256, 16),
        ] {
            let e = e.expect_err("too long").to_string();
            assert!(e.contains("longer than 256 bytes"), "{e}");
            assert!(e.len() < 200, "{e}");
        }
    }

    #[test]
    fn messages_escape_control_characters_and_cut_long_tokens() {
        let e = validate_topic("a.b\nc", 256, 16)
            .expect_err("newline")
            .to_string();
        assert!(
            e.contains("`a.b\\nc`") && e.contains("`b\\nc` contains '\\n'"),
            "{e}"
        );
        let long = format!("x.{}*", "y".repeat(200));
        let e = validate_pattern(&long, 256, 16)
            .expect_err("mixed")
            .to_string();
        assert!(e.contains(&format!("`{}…` mixes", "y".repeat(64))), "{e}");
        assert!(e.len() < 250, "{e}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_names_never_panic(
            name in "\\PC{0,40}",
            odd in "[a.*> \t\\x00\u{e9}\u{200b}]{0,40}",
            max_bytes in 0usize..64,
            max_tokens in 0usize..8,
        ) {
            for n in [&name, &odd] {
                let _ = validate_service(n);
                let _ = validate_topic(n, max_bytes, max_tokens);
                let _ = validate_pattern(n, max_bytes, max_tokens);
                let _ = validate_pattern(n, MAX_NAME_BYTES, MAX_TOKENS);
            }
        }

        #[test]
        fn names_built_from_valid_tokens_are_accepted(
            toks in proptest::collection::vec("[a-z0-9_$/:-]{1,6}|[\\p{L}\\p{N}]{1,3}", 1..=MAX_TOKENS),
        ) {
            let name = toks.join(".");
            proptest::prop_assume!(name.len() <= MAX_NAME_BYTES);
            proptest::prop_assert!(validate_service(&name).is_ok(), "{}", name);
            proptest::prop_assert!(validate_topic(&name, MAX_NAME_BYTES, MAX_TOKENS).is_ok());
            proptest::prop_assert!(validate_pattern(&name, MAX_NAME_BYTES, MAX_TOKENS).is_ok());
            proptest::prop_assert_eq!(tokens(&name).collect::<Vec<_>>(), toks.iter().map(String::as_str).collect::<Vec<_>>());
        }

        #[test]
        fn errors_name_the_kind_of_name(name in "[a.*> ]{0,20}") {
            if let Err(e) = validate_topic(&name, 16, 4) {
                proptest::prop_assert!(e.to_string().starts_with("invalid topic"), "{}", e);
            }
            if let Err(e) = validate_pattern(&name, 16, 4) {
                proptest::prop_assert!(e.to_string().starts_with("invalid pattern"), "{}", e);
            }
        }

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
