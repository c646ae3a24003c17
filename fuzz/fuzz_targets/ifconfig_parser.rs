//! The parser of `ifconfig -a` output never panics and returns no loopback address.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for a in kleene_rdr::sys::parse::parse_ifconfig(text) {
        assert!(!a.is_loopback() && !a.is_unspecified());
    }
});
