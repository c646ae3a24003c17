//! The parser of `jls --libxo json` output never panics; what it returns is validated.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(jails) = kleene_rdr::sys::parse::parse_jls(text) {
        for j in jails {
            assert!(j.ip4.iter().all(|a| a.is_ipv4()));
            assert!(j.ip6.iter().all(|a| a.is_ipv6()));
            assert!(!j.name.as_str().is_empty());
        }
    }
});
