//! What the broker stamps on an event: its id, the context of a delivery
//! published without one, and the publish time. Built by hand: one of each
//! per event, with the context module's digit writers.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::context::path::{push_hex, root_path};

/// `<16 hex digits>` (one per event).
pub(super) fn hex_id(id: u64) -> String {
    let mut s = String::with_capacity(16);
    push_hex(&mut s, id);
    s
}

/// `<event id>.<i + 1>`: the context of a delivery of an event published
/// without one, shaped like a root-level context path.
pub(super) fn event_context(event_id: u64, i: usize) -> String {
    root_path(event_id, i as u64 + 1)
}

/// Now, in nanoseconds since the Unix epoch (an event's publish time).
pub(crate) fn now_unix_ns() -> i64 {
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
