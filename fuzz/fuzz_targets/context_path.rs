//! Context paths (`x-kernel-context`): any input parses or is refused with
//! an error naming the context path; what parses is within the length limit
//! and rebuilds, from its root id and child numbers, into a path that parses
//! the same. Paths the kernel builds from arbitrary ids and child numbers
//! parse back to them.

#![no_main]

use kernel_core::fuzzing::{check_path, child_path, path_key, root_path, MAX_PATH_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match check_path(&text) {
        Ok((id, depth)) => {
            assert!(text.len() <= MAX_PATH_BYTES);
            let segments = path_key(&text);
            assert_eq!(segments.len() as u64, depth, "{text:?}");
            if let Some((first, rest)) = segments.split_first() {
                let mut rebuilt = root_path(id, *first);
                for &n in rest {
                    let n = u32::try_from(n).expect("child numbers fit a u32");
                    rebuilt = child_path(&rebuilt, n);
                }
                // A short root comes back as 16 digits: it may not fit.
                if rebuilt.len() <= MAX_PATH_BYTES {
                    assert_eq!(check_path(&rebuilt).ok(), Some((id, depth)), "{rebuilt}");
                    assert_eq!(path_key(&rebuilt), segments);
                }
            }
        }
        Err(e) => {
            let e = e.to_string();
            assert!(e.starts_with("invalid context path "), "{e}");
            // The path cut to 64 characters and the offending part to 24,
            // control characters escaped (6 bytes at most).
            assert!(e.len() < 6 * (64 + 24) + 200, "{e}");
            assert!(!e.chars().any(char::is_control), "{e}");
        }
    }

    // The same bytes as a root id and child numbers.
    let mut words = data
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    let (Some(hi), Some(lo), Some(first)) = (words.next(), words.next(), words.next()) else {
        return;
    };
    let id = u64::from(hi) << 32 | u64::from(lo);
    let rest: Vec<u32> = words.take(80).collect();
    let mut path = root_path(id, first.into());
    for &n in &rest {
        path = child_path(&path, n);
    }
    assert_eq!(
        check_path(&path).ok(),
        Some((id, 1 + rest.len() as u64)),
        "{path}"
    );
});
