//! Context paths: `<16 hex digits>(.<n>)*`, built by hand (every call that
//! names its context builds one) and parsed from remote callers' headers.

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
pub(crate) fn root_path(id: u64, n: u64) -> String {
    let mut buf = [0u8; 37];
    write_hex(&mut buf, id);
    buf[16] = b'.';
    let len = 17 + write_decimal(&mut buf[17..], n);
    ascii(&buf[..len]).to_owned()
}

/// `<parent>.<n>`.
pub(crate) fn child_path(parent: &str, n: u32) -> String {
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
}
