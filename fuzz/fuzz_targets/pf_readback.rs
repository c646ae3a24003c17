//! The parser of what `pfctl -s nat` / `-s rules` print never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let keys = kleene_rdr::core::readback::readback_keys(text);
    assert_eq!(keys.len(), text.lines().filter(|l| !l.trim().is_empty()).count());
});
