//! The parsers of `route -n get default` output never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(i) = kleene_rdr::sys::parse::parse_route_interface(text) {
        assert!((1..=15).contains(&i.as_str().len()));
    }
    let _ = kleene_rdr::sys::parse::route_not_found(text);
});
