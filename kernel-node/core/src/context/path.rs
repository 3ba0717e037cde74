//! Context paths: `<16 hex digits>(.<n>)*`, built by hand (every call that
//! names its context builds one) and parsed from remote callers' headers.

use crate::error::Error;
use crate::names::excerpt;

/// Longest context path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Most hex digits in a path's root id (a `u64`).
const MAX_ROOT_DIGITS: usize = 16;
/// Most digits in a child number (a `u32`, as the kernel numbers children).
const MAX_CHILD_DIGITS: usize = 10;

/// A new tree's root id: SplitMix64 over a per-thread state seeded from the
/// OS-seeded `rand` generator once. Ids only need to be unique and spread
/// out (they are not secrets), and this costs a few nanoseconds where
/// `rand::random` refills a ChaCha block now and then on the call path.
pub(crate) fn new_root_id() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(rand::random());
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// `<16 hex digits>.<n>` (a root-level path; also an event delivery's
/// `<event id>.<n>`).
pub fn root_path(id: u64, n: u64) -> String {
    let mut buf = [0u8; 37];
    write_hex(&mut buf, id);
    buf[16] = b'.';
    let len = 17 + write_decimal(&mut buf[17..], n);
    ascii(&buf[..len]).to_owned()
}

/// `<parent>.<n>`.
pub fn child_path(parent: &str, n: u32) -> String {
    let mut digits = [0u8; 20];
    let len = write_decimal(&mut digits, n.into());
    let mut s = String::with_capacity(parent.len() + 1 + len);
    s.push_str(parent);
    s.push('.');
    s.push_str(ascii(&digits[..len]));
    s
}

/// Appends `id` as 16 lowercase hex digits.
pub(crate) fn push_hex(s: &mut String, id: u64) {
    let mut buf = [0u8; 16];
    write_hex(&mut buf, id);
    s.push_str(ascii(&buf));
}

/// Writes `id` as 16 lowercase hex digits at the start of `buf`.
fn write_hex(buf: &mut [u8], id: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, d) in buf[..16].iter_mut().enumerate() {
        *d = HEX[((id >> ((15 - i) * 4)) & 0xf) as usize];
    }
}

/// Writes `n` in decimal at the start of `buf` (20 bytes fit any u64);
/// returns how many bytes it wrote.
fn write_decimal(buf: &mut [u8], mut n: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - at;
    buf[..len].copy_from_slice(&digits[at..]);
    len
}

/// The text of bytes this module wrote (ASCII digits and dots, so the
/// check cannot fail).
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// Splits a path into its root id and depth; None when malformed.
pub(crate) fn parse_path(path: &str) -> Option<(u64, u64)> {
    check_path(path).ok()
}

/// Splits a path into its root id and depth, or says what is wrong with
/// it: the root is 1 to 16 hex digits, each child number 1 to 10 decimal
/// digits that fit a `u32` (what [`child_path`] writes), the whole at most
/// [`MAX_PATH_BYTES`].
pub fn check_path(path: &str) -> Result<(u64, u64), Error> {
    let bad = |reason: String| {
        Err(Error::InvalidName {
            what: "context path",
            name: excerpt(path, 64),
            reason,
        })
    };
    if path.is_empty() {
        return bad("must not be empty".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return bad(format!(
            "{} bytes, longer than {MAX_PATH_BYTES}",
            path.len()
        ));
    }
    let mut parts = path.split('.');
    let root = parts.next().unwrap_or_default();
    // Digits only: `from_str_radix` alone would also take a leading `+`.
    if root.is_empty()
        || root.len() > MAX_ROOT_DIGITS
        || !root.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return bad(format!(
            "root `{}` is not 1 to {MAX_ROOT_DIGITS} hex digits",
            excerpt(root, 24)
        ));
    }
    let Ok(id) = u64::from_str_radix(root, 16) else {
        return bad(format!("root `{root}` is not a hex number"));
    };
    let mut depth = 0;
    for (i, p) in parts.enumerate() {
        let is_child = !p.is_empty()
            && p.len() <= MAX_CHILD_DIGITS
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok();
        if !is_child {
            return bad(format!(
                "segment {} `{}` is not a child number (1 to {MAX_CHILD_DIGITS} digits, at most {})",
                i + 1,
                excerpt(p, 24),
                u32::MAX
            ));
        }
        depth += 1;
    }
    Ok((id, depth))
}

/// Sort key: parents before children, siblings in order.
pub fn path_key(path: &str) -> Vec<u64> {
    path.split('.')
        .skip(1)
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_ids_do_not_repeat_and_use_every_bit() {
        let ids: Vec<u64> = (0..10_000).map(|_| new_root_id()).collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        let (ones, zeros) = ids
            .iter()
            .fold((0u64, 0u64), |(o, z), id| (o | id, z | !id));
        assert_eq!(
            (ones, zeros),
            (u64::MAX, u64::MAX),
            "some bit never changes"
        );
    }

    #[test]
    fn path_formatting_matches_fmt() {
        for (id, n) in [
            (0u64, 1u32),
            (0xff, 9),
            (u64::MAX, 10),
            (0x5f0c9a1e2b3d4c6f, u32::MAX),
        ] {
            assert_eq!(root_path(id, n.into()), format!("{id:016x}.{n}"));
            assert_eq!(child_path("ab.1", n), format!("ab.1.{n}"));
        }
    }

    #[test]
    fn malformed_paths_rejected() {
        assert_eq!(parse_path("00000000000000ff.1.2"), Some((255, 2)));
        for bad in ["", "zz", "ff..1", "ff.x", "ff.1.", "11111111111111111.1"] {
            assert!(parse_path(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn malformed_paths_say_what_is_wrong() {
        let long = format!("ff{}", ".1".repeat(600));
        for (bad, needle) in [
            ("", "must not be empty"),
            (long.as_str(), "1202 bytes, longer than 1024"),
            ("zz.1", "root `zz` is not 1 to 16 hex digits"),
            ("+f.1", "root `+f`"),
            ("11111111111111111.1", "root `11111111111111111`"),
            ("ff..1", "segment 1 `` is not a child number"),
            ("ff.1.x", "segment 2 `x`"),
            ("ff.1.+2", "segment 2 `+2`"),
            ("ff.4294967296", "at most 4294967295"),
            ("ff.1\n", "segment 1 `1\\n`"),
        ] {
            let e = check_path(bad).expect_err(bad).to_string();
            assert!(e.starts_with("invalid context path"), "{e}");
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
        let e = check_path(&format!("{}.1", "9".repeat(1000))).expect_err("long root");
        assert!(e.to_string().len() < 200, "{e}");
    }

    /// Found by the `context_path` fuzz target (its bound on the message
    /// was too tight): control characters come back escaped, so the
    /// message is longer than the input, but bounded.
    #[test]
    fn errors_about_control_characters_are_escaped_and_bounded() {
        let mut crash = vec![0x11];
        crash.extend([0x10; 36]);
        crash.push(b'E');
        crash.extend([0; 11]);
        crash.push(0x10);
        crash.extend([0; 15]);
        crash.push(0x15);
        let path = String::from_utf8_lossy(&crash);
        let e = check_path(&path)
            .expect_err("control characters")
            .to_string();
        assert!(e.starts_with("invalid context path `\\u{11}\\u{10}"), "{e}");
        assert!(e.contains("…`: root `\\u{11}"), "{e}");
        assert!(!e.chars().any(char::is_control), "{e}");
        assert!(e.len() < 700, "{} bytes: {e}", e.len());
    }

    #[test]
    fn the_largest_child_number_the_kernel_writes_parses_back() {
        let path = child_path(&root_path(u64::MAX, u32::MAX.into()), u32::MAX);
        assert_eq!(check_path(&path).ok(), Some((u64::MAX, 2)));
        assert_eq!(path_key(&path), vec![u64::from(u32::MAX); 2]);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC{0,40}", dots in "[0-9a-fA-F.+]{0,40}") {
            let _ = check_path(&s);
            let _ = path_key(&s);
            let _ = check_path(&dots);
            let _ = path_key(&dots);
        }

        #[test]
        fn built_paths_parse_back_to_their_segments(
            id in proptest::prelude::any::<u64>(),
            first in 1u32..,
            rest in proptest::collection::vec(1u32.., 0..40),
        ) {
            let mut path = root_path(id, first.into());
            for &n in &rest {
                path = child_path(&path, n);
            }
            let depth = 1 + rest.len() as u64;
            proptest::prop_assert_eq!(check_path(&path).ok(), Some((id, depth)));
            let segments: Vec<u64> = std::iter::once(first).chain(rest).map(u64::from).collect();
            proptest::prop_assert_eq!(path_key(&path), segments);
        }

        #[test]
        fn short_roots_are_hex_numbers(root in "[0-9a-fA-F]{1,16}", n in 1u32..1000) {
            let path = format!("{root}.{n}");
            let id = u64::from_str_radix(&root, 16).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            proptest::prop_assert_eq!(check_path(&path).ok(), Some((id, 1)));
        }
    }
}
