//! What the broker stamps on an event: its id, the context of a delivery
//! published without one, and the publish time. Built by hand: one of each
//! per event.

use std::time::{SystemTime, UNIX_EPOCH};

/// `<16 hex digits>`, without the formatting machinery (one per event).
pub(super) fn hex_id(id: u64) -> String {
    let mut s = String::with_capacity(16);
    push_hex(&mut s, id);
    s
}

fn push_hex(s: &mut String, id: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((id >> ((15 - i) * 4)) & 0xf) as usize];
    }
    // ASCII by construction, so the check cannot fail.
    s.push_str(std::str::from_utf8(&digits).unwrap_or_default());
}

/// `<event id>.<i + 1>`: the context of a delivery of an event published
/// without one.
pub(super) fn event_context(event_id: u64, i: usize) -> String {
    let mut s = String::with_capacity(24);
    push_hex(&mut s, event_id);
    s.push('.');
    let mut n = i + 1;
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
    s
}

pub(super) fn now_unix_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_contexts_match_fmt() {
        for (id, i) in [
            (0u64, 0usize),
            (0xff, 8),
            (u64::MAX, 9),
            (0x5f0c9a1e2b3d4c6f, 12_345),
        ] {
            assert_eq!(hex_id(id), format!("{id:016x}"));
            assert_eq!(event_context(id, i), format!("{id:016x}.{}", i + 1));
        }
    }
}
