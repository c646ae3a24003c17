//! The port-spec language: `[ADDR:]HOST[:JAIL][/PROTO]`, after Kleene's `-p`.
//!
//! ```text
//! SPEC  = [ADDR ":"] HOST [":" JAIL] ["/" PROTO]
//! ADDR  = INTERFACE | IPV4-ADDRESS | "[" IPV6-ADDRESS "]" | "localhost"
//! HOST  = PORT | PORT "-" PORT
//! JAIL  = PORT | PORT "-" PORT
//! PROTO = "tcp" | "udp" | "sctp"            (default tcp)
//! ```
//!
//! A loopback address (`127.0.0.1`, `[::1]`) or `localhost` (both) publishes on the host's
//! loopback only, Docker's "local only" form: reachable from the host, not from outside.
//!
//! A parsed spec prints back in its canonical form, `[ADDR:]HOST:JAIL/PROTO`, and parsing that
//! text gives the same value.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::model::{Family, InterfaceName, PortRange, Protocol, string_serde};

/// Where a publication listens on the host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Place {
    /// The interface of the host's default route (per family; resolved by the agent).
    Gateway,
    /// A named interface: the rules follow its addresses (`to (em1)`).
    Interface(InterfaceName),
    /// One host address: the rules match only that destination. A loopback address publishes
    /// on the host's loopback only.
    Address(IpAddr),
    /// `localhost`: the host's loopback only, 127.0.0.1 and ::1.
    Localhost,
}

impl Place {
    /// Whether the publication is on the host's loopback only (reachable from the host alone).
    pub fn is_loopback(&self) -> bool {
        match self {
            Place::Localhost => true,
            Place::Address(a) => a.is_loopback(),
            Place::Gateway | Place::Interface(_) => false,
        }
    }
}

/// One parsed port spec.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub place: Place,
    pub host: PortRange,
    pub jail: PortRange,
    pub proto: Protocol,
}

/// Why a spec was refused: the spec as given and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid port spec {spec:?}: {reason}")]
pub struct SpecError {
    pub spec: String,
    pub reason: String,
}

const FULL_IF: &str = "with an interface, give INTERFACE:HOST-PORT:JAIL-PORT[/PROTO] (e.g. em1:8080:80)";
const FULL_ADDR: &str = "with an address, give ADDRESS:HOST-PORT:JAIL-PORT[/PROTO] \
                         (e.g. 192.0.2.10:8080:80 or [2001:db8::10]:8080:80)";
const FORMS: &str = "expected HOST-PORT[:JAIL-PORT][/PROTO] or INTERFACE:HOST-PORT:JAIL-PORT[/PROTO]";

fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() {
        return Err("a port is missing".into());
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a port number; {FORMS}"));
    }
    match s.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err(format!("port {s} is out of range 1-65535")),
    }
}

fn parse_range(s: &str) -> Result<PortRange, String> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (parse_port(a)?, parse_port(b)?),
        None => {
            let p = parse_port(s)?;
            (p, p)
        }
    };
    PortRange::new(a, b).ok_or_else(|| format!("port range {s} starts after it ends"))
}

fn parse_addr_part(s: &str) -> Result<Place, String> {
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        let ip: std::net::Ipv4Addr =
            s.parse().map_err(|_| format!("{s:?} is not an IPv4 address (an interface name starts with a letter)"))?;
        check_host_address(IpAddr::V4(ip))?;
        return Ok(Place::Address(IpAddr::V4(ip)));
    }
    if s == "localhost" {
        return Ok(Place::Localhost);
    }
    s.parse::<InterfaceName>().map(Place::Interface).map_err(|e| e.reason)
}

fn check_host_address(ip: IpAddr) -> Result<(), String> {
    let why = if ip.is_unspecified() {
        "the unspecified address cannot be published on; omit the address to use the gateway \
         interface, or name an interface"
    } else if ip.is_multicast() {
        "a multicast address cannot be published on"
    } else if ip == IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
        "the broadcast address cannot be published on"
    } else {
        return Ok(());
    };
    Err(format!("{ip}: {why}"))
}

impl PortSpec {
    /// Parses one spec; errors name the spec, what is wrong and the accepted form.
    pub fn parse(spec: &str) -> Result<PortSpec, SpecError> {
        Self::parse_inner(spec).map_err(|reason| SpecError { spec: spec.to_string(), reason })
    }

    fn parse_inner(spec: &str) -> Result<PortSpec, String> {
        if spec.is_empty() {
            return Err(format!("the spec is empty; {FORMS}"));
        }
        let (body, proto) = match spec.rsplit_once('/') {
            Some((b, p)) if !b.contains('/') => {
                (b, p.parse::<Protocol>().map_err(|_| "protocol must be tcp, udp or sctp".to_string())?)
            }
            Some(_) => return Err(format!("more than one '/'; {FORMS}")),
            None => (spec, Protocol::Tcp),
        };
        let (place, ports): (Place, Vec<&str>) = if let Some(rest) = body.strip_prefix('[') {
            let (addr, after) = rest
                .split_once(']')
                .ok_or_else(|| "an IPv6 address opened with '[' is not closed with ']'".to_string())?;
            let ip: std::net::Ipv6Addr = addr.parse().map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
            let ip = IpAddr::V6(ip);
            check_host_address(ip)?;
            let ports =
                after.strip_prefix(':').ok_or_else(|| format!("expected ':' after the IPv6 address; {FULL_ADDR}"))?;
            let ports: Vec<&str> = ports.split(':').collect();
            if ports.len() != 2 {
                return Err(FULL_ADDR.to_string());
            }
            (Place::Address(ip), ports)
        } else {
            let parts: Vec<&str> = body.split(':').collect();
            match parts.len() {
                1 => (Place::Gateway, parts),
                2 => {
                    let first = parts[0];
                    if first.starts_with(|c: char| c.is_ascii_alphabetic()) {
                        return Err(FULL_IF.to_string());
                    }
                    if first.contains('.') {
                        return Err(FULL_ADDR.to_string());
                    }
                    (Place::Gateway, parts)
                }
                3 => (parse_addr_part(parts[0])?, parts[1..].to_vec()),
                n if body.parse::<std::net::Ipv6Addr>().is_ok()
                    || parts[..n - 2].join(":").parse::<std::net::Ipv6Addr>().is_ok() =>
                {
                    return Err(format!("an IPv6 address must be in brackets; {FULL_ADDR}"));
                }
                _ => return Err(format!("too many ':'; {FORMS}")),
            }
        };
        let host = parse_range(ports[0])?;
        let jail = match ports.get(1) {
            None => host,
            Some(j) => {
                let j = parse_range(j)?;
                if j.is_single() && !host.is_single() {
                    let end = u32::from(j.start()) + u32::from(host.span());
                    let end = u16::try_from(end)
                        .ok()
                        .filter(|e| *e >= 1)
                        .ok_or_else(|| format!("jail ports {}-{end} run past 65535", j.start()))?;
                    PortRange::new(j.start(), end).expect("end >= start")
                } else if j.span() != host.span() {
                    return Err(format!(
                        "host range {host} has {} ports but jail range {j} has {}; the ranges must be the same length",
                        u32::from(host.span()) + 1,
                        u32::from(j.span()) + 1
                    ));
                } else {
                    j
                }
            }
        };
        if proto == Protocol::Sctp && host != jail {
            return Err(format!(
                "pf does not rewrite SCTP port numbers, so an sctp spec must keep the jail port equal \
                 to the host port (e.g. {host}/sctp)"
            ));
        }
        Ok(PortSpec { place, host, jail, proto })
    }

    /// The family the spec fixes by its host address, if any.
    pub fn fixed_family(&self) -> Option<Family> {
        match &self.place {
            Place::Address(ip) => Some(Family::of(ip)),
            _ => None,
        }
    }
}

impl FromStr for PortSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PortSpec::parse(s)
    }
}

impl fmt::Display for PortSpec {
    /// The canonical form: `[ADDR:]HOST:JAIL/PROTO`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.place {
            Place::Gateway => {}
            Place::Interface(i) => write!(f, "{i}:")?,
            Place::Address(IpAddr::V4(a)) => write!(f, "{a}:")?,
            Place::Address(IpAddr::V6(a)) => write!(f, "[{a}]:")?,
            Place::Localhost => f.write_str("localhost:")?,
        }
        write!(f, "{}:{}/{}", self.host, self.jail, self.proto)
    }
}
string_serde!(PortSpec);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(s: &str) -> String {
        PortSpec::parse(s).unwrap_or_else(|e| panic!("{e}")).to_string()
    }

    #[test]
    fn valid_forms_have_their_canonical_form() {
        let table = [
            ("8080", "8080:8080/tcp"),
            ("8080:80", "8080:80/tcp"),
            ("8080:80/udp", "8080:80/udp"),
            ("8080:80/tcp", "8080:80/tcp"),
            ("8080/UDP", "8080:8080/udp"),
            ("em1:8080:80", "em1:8080:80/tcp"),
            ("em1:8080:80/udp", "em1:8080:80/udp"),
            ("igb0.100:53:53/udp", "igb0.100:53:53/udp"),
            ("192.0.2.10:8080:80", "192.0.2.10:8080:80/tcp"),
            ("[2001:db8::10]:8080:80", "[2001:db8::10]:8080:80/tcp"),
            ("[2001:0db8:0000::0010]:8080:80/udp", "[2001:db8::10]:8080:80/udp"),
            ("8000-8010:9000-9010", "8000-8010:9000-9010/tcp"),
            ("8000-8010:9000", "8000-8010:9000-9010/tcp"),
            ("8000-8010", "8000-8010:8000-8010/tcp"),
            ("8080-8080:80", "8080:80/tcp"),
            ("em0:8000-8010:9000/udp", "em0:8000-8010:9000-9010/udp"),
            ("9999/sctp", "9999:9999/sctp"),
            ("9000-9010/sctp", "9000-9010:9000-9010/sctp"),
            ("127.0.0.1:8080:80", "127.0.0.1:8080:80/tcp"),
            ("[::1]:8080:80/udp", "[::1]:8080:80/udp"),
            ("localhost:8080:80", "localhost:8080:80/tcp"),
            ("1", "1:1/tcp"),
            ("65535:1", "65535:1/tcp"),
            ("080:80", "80:80/tcp"),
        ];
        for (input, want) in table {
            assert_eq!(canon(input), want, "{input}");
        }
    }

    #[test]
    fn kleenes_table_means_what_kleene_says() {
        let p = |s: &str| PortSpec::parse(s).unwrap();
        let s = p("8080");
        assert_eq!(
            (s.place.clone(), s.host.start(), s.jail.start(), s.proto),
            (Place::Gateway, 8080, 8080, Protocol::Tcp)
        );
        let s = p("8080:80");
        assert_eq!(
            (s.place.clone(), s.host.start(), s.jail.start(), s.proto),
            (Place::Gateway, 8080, 80, Protocol::Tcp)
        );
        let s = p("em1:8080:80");
        assert_eq!(s.place, Place::Interface("em1".parse().unwrap()));
        assert_eq!((s.host.start(), s.jail.start(), s.proto), (8080, 80, Protocol::Tcp));
        let s = p("8080:80/udp");
        assert_eq!(
            (s.place.clone(), s.host.start(), s.jail.start(), s.proto),
            (Place::Gateway, 8080, 80, Protocol::Udp)
        );
        assert_ne!(p("8080:80/tcp"), p("8080:80/udp"));
        assert_ne!(p("em0:8080:80"), p("em1:8080:80"));
    }

    #[test]
    fn errors_name_the_spec_and_the_fix() {
        let table = [
            ("em1:8080", "with an interface, give INTERFACE:HOST-PORT:JAIL-PORT"),
            ("70000", "port 70000 is out of range 1-65535"),
            ("0", "port 0 is out of range 1-65535"),
            ("8080:80/icmp", "protocol must be tcp, udp or sctp"),
            ("8080:80/", "protocol must be tcp, udp or sctp"),
            ("", "the spec is empty"),
            ("8010-8000", "starts after it ends"),
            ("8000-8010:9000-9005", "the ranges must be the same length"),
            ("65530-65535:65534", "run past 65535"),
            ("9999:80/sctp", "pf does not rewrite SCTP port numbers"),
            ("192.0.2.10:8080", "with an address, give ADDRESS:HOST-PORT:JAIL-PORT"),
            ("2001:db8::10:8080:80", "must be in brackets"),
            ("[2001:db8::10:8080:80", "not closed"),
            ("[2001:db8::10]8080:80", "expected ':' after the IPv6 address"),
            ("[2001:db8::10]:8080", "with an address"),
            ("[192.0.2.1]:8080:80", "is not an IPv6 address"),
            ("0.0.0.0:8080:80", "unspecified address"),
            ("[::]:8080:80", "unspecified address"),
            ("224.0.0.1:8080:80", "multicast"),
            ("255.255.255.255:8080:80", "broadcast"),
            ("1.2.3:8080:80", "is not an IPv4 address"),
            ("0em:8080:80", "is not an IPv4 address"),
            ("em0;:8080:80", "an interface name is"),
            ("averyveryverylongname0:8080:80", "an interface name is"),
            ("http", "is not a port number"),
            ("+80", "is not a port number"),
            ("8080:80/tcp/udp", "more than one '/'"),
            ("8080:", "a port is missing"),
            (":80", "a port is missing"),
            ("a:b:c:d", "too many ':'"),
            ("em0:8080:80 ", "is not a port number"),
            ("em0:8080:80\n", "is not a port number"),
            ("99999999999999999999", "out of range"),
        ];
        for (input, want) in table {
            let e = PortSpec::parse(input).expect_err(input);
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("invalid port spec {input:?}: ")), "{msg}");
            assert!(msg.contains(want), "{input:?}: {msg}");
        }
    }

    #[test]
    fn loopback_forms_are_local_only() {
        for (spec, local) in
            [("127.0.0.1:8080:80", true), ("[::1]:8080:80", true), ("localhost:8080:80", true), ("8080:80", false)]
        {
            assert_eq!(PortSpec::parse(spec).unwrap().place.is_loopback(), local, "{spec}");
        }
        assert_eq!(PortSpec::parse("localhost:8080:80").unwrap().fixed_family(), None, "both families");
    }

    #[test]
    fn issue_examples_verbatim() {
        assert_eq!(
            PortSpec::parse("em1:8080").unwrap_err().to_string(),
            "invalid port spec \"em1:8080\": with an interface, give INTERFACE:HOST-PORT:JAIL-PORT[/PROTO] (e.g. em1:8080:80)"
        );
        assert_eq!(
            PortSpec::parse("70000").unwrap_err().to_string(),
            "invalid port spec \"70000\": port 70000 is out of range 1-65535"
        );
        assert_eq!(
            PortSpec::parse("8080:80/icmp").unwrap_err().to_string(),
            "invalid port spec \"8080:80/icmp\": protocol must be tcp, udp or sctp"
        );
    }

    fn arb_range() -> impl Strategy<Value = PortRange> {
        (1u16..=65535, 0u16..200).prop_map(|(s, len)| PortRange::new(s, s.saturating_add(len)).unwrap())
    }

    fn arb_place() -> impl Strategy<Value = Place> {
        prop_oneof![
            Just(Place::Gateway),
            Just(Place::Localhost),
            "[a-z][a-z0-9_.-]{0,14}"
                .prop_filter("localhost is the loopback", |s| s != "localhost")
                .prop_map(|s| Place::Interface(s.parse().unwrap())),
            any::<[u8; 4]>()
                .prop_filter("usable", |b| check_host_address(IpAddr::from(*b)).is_ok())
                .prop_map(|b| Place::Address(IpAddr::from(b))),
            any::<[u8; 16]>()
                .prop_filter("usable", |b| check_host_address(IpAddr::from(*b)).is_ok())
                .prop_map(|b| Place::Address(IpAddr::from(b))),
        ]
    }

    fn arb_spec() -> impl Strategy<Value = PortSpec> {
        (
            arb_place(),
            arb_range(),
            1u16..=65535,
            prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp), Just(Protocol::Sctp)],
        )
            .prop_filter_map("jail range fits", |(place, host, jstart, proto)| {
                let jail = if proto == Protocol::Sctp {
                    host
                } else {
                    PortRange::new(jstart, jstart.checked_add(host.span())?)?
                };
                Some(PortSpec { place, host, jail, proto })
            })
    }

    proptest! {
        #[test]
        fn canonical_form_round_trips(spec in arb_spec()) {
            let text = spec.to_string();
            let back = PortSpec::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&back, &spec);
            prop_assert_eq!(back.to_string(), text);
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,40}") {
            let _ = PortSpec::parse(&s);
        }

        #[test]
        fn anything_accepted_is_canonical_after_one_round(s in "[a-z0-9:/\\[\\].-]{1,30}") {
            if let Ok(spec) = PortSpec::parse(&s) {
                let text = spec.to_string();
                prop_assert_eq!(PortSpec::parse(&text).unwrap(), spec);
            }
        }
    }
}
