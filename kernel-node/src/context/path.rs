//! Context paths: `<16 hex digits>(.<n>)*`, built by hand (every call that
//! names its context builds one) and parsed from remote callers' headers.

/// `<16 hex digits>.<n>` (a root-level path; also an event delivery's
/// `<event id>.<n>`).
pub(crate) fn root_path(id: u64, n: u64) -> String {
    let mut s = String::with_capacity(28);
    push_hex(&mut s, id);
    s.push('.');
    push_decimal(&mut s, n);
    s
}

/// `<parent>.<n>`.
pub(crate) fn child_path(parent: &str, n: u32) -> String {
    let mut s = String::with_capacity(parent.len() + 11);
    s.push_str(parent);
    s.push('.');
    push_decimal(&mut s, n.into());
    s
}

/// Appends `id` as 16 lowercase hex digits.
pub(crate) fn push_hex(s: &mut String, id: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((id >> ((15 - i) * 4)) & 0xf) as usize];
    }
    // ASCII by construction, so the check cannot fail.
    s.push_str(std::str::from_utf8(&digits).unwrap_or_default());
}

/// Appends `n` in decimal.
fn push_decimal(s: &mut String, mut n: u64) {
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
    s.push_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
}

/// Splits a path into its root id and depth; None when malformed.
pub fn parse_path(path: &str) -> Option<(u64, u64)> {
    if path.len() > 1024 {
        return None;
    }
    let mut parts = path.split('.');
    let root = parts.next()?;
    if root.is_empty() || root.len() > 16 {
        return None;
    }
    let id = u64::from_str_radix(root, 16).ok()?;
    let mut depth = 0;
    for p in parts {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 9 {
            return None;
        }
        depth += 1;
    }
    Some((id, depth))
}

/// Sort key: parents before children, siblings in order.
pub(crate) fn path_key(path: &str) -> Vec<u64> {
    path.split('.')
        .skip(1)
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
