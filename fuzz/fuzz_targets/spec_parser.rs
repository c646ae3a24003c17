//! The spec parser never panics; what it accepts prints back canonically, parses again to the
//! same value, and renders only well-formed rule lines.
#![no_main]

use kleene_rdr::core::publication::Publication;
use kleene_rdr::core::render::{Gateways, HostView, Targets, render_uniform};
use kleene_rdr::core::spec::PortSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(spec) = PortSpec::parse(text) else { return };
    let canonical = spec.to_string();
    let again = PortSpec::parse(&canonical).expect("the canonical form parses");
    assert_eq!(again, spec);
    assert_eq!(again.to_string(), canonical);
    let p = Publication::new("web".parse().unwrap(), spec, vec![], false, None);
    let targets = Targets::from_addrs(["10.13.37.2".parse().unwrap(), "fd00::2".parse().unwrap()]);
    let gateways = Gateways { inet: Some("em0".parse().unwrap()), inet6: Some("em0".parse().unwrap()) };
    let host = HostView {
        networks: vec!["10.13.37.0/24".parse().unwrap()],
        links: vec![("bridge0".parse().unwrap(), "10.13.37.1".parse().unwrap())],
        ..HostView::new(gateways)
    };
    for vnet in [false, true] {
        let out = render_uniform([&p], &targets, &host, vnet).text();
        for line in out.lines() {
            let kinds = ["rdr ", "nat on ", "pass in ", "pass out "];
            assert!(kinds.iter().any(|k| line.starts_with(k)), "{line}");
            assert!(!line.contains(['#', '\r', '{', ';']), "{line}");
        }
    }
});
