//! The normaliser of what `pfctl -s nat` / `-s rules` print never panics, yields at least one
//! key per rule line (brace lists expand to several; comments and blank lines yield none), and
//! is deterministic and sorted, so that comparing two read-backs is meaningful.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let keys = kleene_rdr::core::readback::readback_keys(text);
    let rules = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).count();
    assert!(keys.len() >= rules, "{} keys for {rules} rule lines", keys.len());
    assert!(keys.windows(2).all(|w| w[0] <= w[1]), "sorted");
    assert_eq!(keys, kleene_rdr::core::readback::readback_keys(text), "deterministic");
});
