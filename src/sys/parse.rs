//! Parsers of what FreeBSD's tools print: `jls --libxo json`, `route -n get`, `ifconfig -a`,
//! `pfctl -s Anchors` and `pfctl -s info`. Pure functions, so they are tested (and fuzzed) on
//! any host. Every value that comes out is validated: a jail name that is not a valid
//! [`JailName`] or an address that does not parse is dropped, never passed on raw.

use std::net::IpAddr;

use serde_json::Value;

use crate::core::model::{InterfaceName, JailName};

/// One running jail, as jls reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailInfo {
    pub jid: u32,
    pub name: JailName,
    pub ip4: Vec<IpAddr>,
    pub ip6: Vec<IpAddr>,
    pub vnet: bool,
}

/// What a tool printed that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Addresses of an `ip4.addr` / `ip6.addr` value. jls prints a JSON array of strings; a single
/// comma-separated string and libxo's leaf-list form (`{"ipv4_addr": [...]}` items) are read
/// too, so that a libxo version difference cannot make a jail look address-less.
fn addr_list(v: Option<&Value>) -> Vec<IpAddr> {
    fn collect(v: &Value, out: &mut Vec<IpAddr>) {
        match v {
            Value::String(s) => out.extend(s.split([',', ' ']).filter_map(|a| a.trim().parse::<IpAddr>().ok())),
            Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
            Value::Object(m) => m.values().for_each(|x| collect(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Some(v) = v {
        collect(v, &mut out);
    }
    out
}

/// Parses `jls --libxo json jid name ip4.addr ip6.addr vnet`:
/// `{"__version": "2", "jail-information": {"jail": [{"jid": "3", "name": "web",
/// "ip4.addr": ["10.13.37.2"], "ip6.addr": [], "vnet": "inherit"}]}}`.
/// Values may be strings or numbers; jails whose name or jid is invalid are skipped.
pub fn parse_jls(text: &str) -> Result<Vec<JailInfo>, ParseError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ParseError(format!("jls printed invalid JSON: {e}")))?;
    let jails = v
        .get("jail-information")
        .and_then(|j| j.get("jail"))
        .ok_or_else(|| ParseError("jls output has no jail-information.jail".into()))?;
    let Value::Array(jails) = jails else {
        return Err(ParseError("jls output: jail-information.jail is not an array".into()));
    };
    let mut out = Vec::new();
    for j in jails {
        let Some(jid) = j.get("jid").and_then(as_text).and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Some(name) = j.get("name").and_then(as_text).and_then(|s| s.parse::<JailName>().ok()) else { continue };
        let vnet = j.get("vnet").and_then(as_text).is_some_and(|s| matches!(s.as_str(), "new" | "1" | "true"));
        out.push(JailInfo {
            jid,
            name,
            ip4: addr_list(j.get("ip4.addr")).into_iter().filter(IpAddr::is_ipv4).collect(),
            ip6: addr_list(j.get("ip6.addr")).into_iter().filter(IpAddr::is_ipv6).collect(),
            vnet,
        });
    }
    Ok(out)
}

/// The `interface:` of `route -n get default`; `None` when the line is absent.
pub fn parse_route_interface(text: &str) -> Option<InterfaceName> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "interface").then(|| v.trim().parse().ok()).flatten()
    })
}

/// Whether jls(8)'s stderr says the jail asked for is not running: `jls: jail "NAME" not found`,
/// or `jls: jail "NAME" is dying` for one being removed (jls.c).
pub fn jail_not_running(stderr: &str) -> bool {
    stderr.contains("not found") || stderr.contains("is dying")
}

/// Whether route(8)'s stderr says there is no such route.
pub fn route_not_found(stderr: &str) -> bool {
    stderr.contains("not in table") || stderr.contains("has not been found")
}

/// Addresses in `ifconfig -a` output, interface by interface, skipping loopback interfaces,
/// loopback and link-local addresses, and tentative/duplicated IPv6 addresses.
pub fn parse_ifconfig(text: &str) -> Vec<IpAddr> {
    parse_host_interfaces(text).addrs.into_iter().map(|(_, a)| a).collect()
}

/// The host's interfaces as `ifconfig -a` shows them: every interface's name, and the usable
/// addresses (as [`parse_ifconfig`] picks them) with their interfaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInterfaces {
    pub names: Vec<InterfaceName>,
    pub addrs: Vec<(InterfaceName, IpAddr)>,
}

/// The interfaces and addresses in `ifconfig -a` output. A heading line is `NAME: flags=...`;
/// a name that is not a valid interface name is skipped with its addresses.
pub fn parse_host_interfaces(text: &str) -> HostInterfaces {
    let mut out = HostInterfaces::default();
    let mut loopback_if = false;
    let mut current: Option<InterfaceName> = None;
    for line in text.lines() {
        if !line.starts_with([' ', '\t']) {
            loopback_if = line.contains("LOOPBACK") || line.starts_with("lo");
            current = line.split_once(':').and_then(|(n, _)| n.parse::<InterfaceName>().ok());
            if let Some(n) = &current {
                out.names.push(n.clone());
            }
            continue;
        }
        let Some(iface) = &current else { continue };
        if loopback_if {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(kw), Some(addr)) = (words.next(), words.next()) else { continue };
        if kw != "inet" && kw != "inet6" {
            continue;
        }
        let rest: Vec<&str> = words.collect();
        if rest.iter().any(|w| matches!(*w, "tentative" | "duplicated" | "detached")) {
            continue;
        }
        let addr = addr.split('%').next().unwrap_or(addr);
        let Ok(ip) = addr.parse::<IpAddr>() else { continue };
        let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        if ip.is_loopback() || ip.is_unspecified() || link_local {
            continue;
        }
        if (kw == "inet") == ip.is_ipv4() {
            out.addrs.push((iface.clone(), ip));
        }
    }
    out
}

/// The lines of `pfctl -s Interfaces -v`: a name, and ` (skip)` after one pf skips
/// (pfctl.c's print_iface).
pub fn parse_pf_interfaces(text: &str) -> Vec<(String, bool)> {
    text.lines()
        .filter(|l| !l.starts_with([' ', '\t']) && !l.trim().is_empty())
        .map(|l| match l.trim_end().strip_suffix(" (skip)") {
            Some(name) => (name.to_string(), true),
            None => (l.trim_end().to_string(), false),
        })
        .collect()
}

/// Child anchor paths printed by `pfctl -a PARENT -s Anchors` on stdout, one per line, indented
/// (`  kleene/web`). What pfctl prints on stderr (`Anchor 'kleene' not found.`, from its
/// Ethernet-anchor lookup, even when children exist) is not read here.
pub fn parse_anchors(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains(char::is_whitespace))
        .map(str::to_string)
        .collect()
}

/// The `Status:` line of `pfctl -s info`: `Some(true)` for Enabled.
pub fn parse_pf_status(text: &str) -> Option<bool> {
    let line = text.lines().find(|l| l.trim_start().starts_with("Status:"))?;
    let word = line.trim_start().trim_start_matches("Status:").split_whitespace().next()?;
    match word {
        "Enabled" => Some(true),
        "Disabled" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jls_json() {
        let text = r#"{"__version": "2", "jail-information": {"jail": [
            {"jid": "3", "name": "web", "ip4.addr": ["10.13.37.2", "192.0.2.5"], "ip6.addr": ["fd00:13:37::2"], "vnet": "inherit"},
            {"jid": 7, "name": "client", "ip4.addr": [], "ip6.addr": [], "vnet": "new"},
            {"jid": "8", "name": "bad name", "ip4.addr": [], "ip6.addr": [], "vnet": "inherit"},
            {"jid": "x", "name": "nojid"}
        ]}}"#;
        let j = parse_jls(text).unwrap();
        assert_eq!(j.len(), 2);
        assert_eq!(j[0].jid, 3);
        assert_eq!(j[0].name.as_str(), "web");
        assert_eq!(j[0].ip4.len(), 2);
        assert_eq!(j[0].ip6, vec!["fd00:13:37::2".parse::<IpAddr>().unwrap()]);
        assert!(!j[0].vnet);
        assert!(j[1].vnet);
        assert_eq!(parse_jls(r#"{"__version": "2", "jail-information": {"jail": []}}"#).unwrap(), vec![]);
        let leaf = r#"{"jail-information": {"jail": [{"jid": "4", "name": "db", "ip4.addr": [{"ipv4_addr": ["10.0.0.4", "10.0.0.5"]}], "ip6.addr": "fd00::4", "vnet": "inherit"}]}}"#;
        let j = parse_jls(leaf).unwrap();
        assert_eq!(j[0].ip4.len(), 2);
        assert_eq!(j[0].ip6.len(), 1);
        assert!(parse_jls("not json").is_err());
        assert!(parse_jls("{}").is_err());
    }

    #[test]
    fn route_get() {
        let text = "   route to: default\ndestination: default\n       mask: default\n    gateway: 10.0.2.2\n        fib: 0\n  interface: em0\n      flags: <UP,GATEWAY,DONE,STATIC>\n recvpipe  sendpipe  ssthresh  rtt,msec    mtu        weight    expire\n       0         0         0         0      1500         1         0 \n";
        assert_eq!(parse_route_interface(text).unwrap().as_str(), "em0");
        assert_eq!(parse_route_interface("destination: default\n"), None);
        assert_eq!(parse_route_interface("  interface: em0;rm\n"), None);
        assert!(route_not_found("route: route has not been found\n"));
        assert!(route_not_found("route: writing to routing socket: No such process\nroute: route has not been found"));
        assert!(route_not_found("route: route has not been found: No such process\n"));
        assert!(jail_not_running("jls: jail \"web\" not found\n"));
        assert!(jail_not_running("jls: jail \"web\" is dying\n"));
        assert!(!jail_not_running("jls: sysctl: Operation not permitted\n"));
    }

    #[test]
    fn ifconfig() {
        let text = "lo0: flags=1008049<UP,LOOPBACK,RUNNING,MULTICAST,LOWER_UP> metric 0 mtu 16384\n\
            \toptions=680003<RXCSUM,TXCSUM,LINKSTATE,RXCSUM_IPV6,TXCSUM_IPV6>\n\
            \tinet 127.0.0.1 netmask 0xff000000\n\
            \tinet6 ::1 prefixlen 128\n\
            epair0b: flags=1008843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST,LOWER_UP> metric 0 mtu 1500\n\
            \tether 02:5c:3a:0c:43:0b\n\
            \tinet 10.13.37.5 netmask 0xffffff00 broadcast 10.13.37.255\n\
            \tinet6 fe80::5c:3aff:fe0c:430b%epair0b prefixlen 64 scopeid 0x2\n\
            \tinet6 fd00:13:37::5 prefixlen 64\n\
            \tinet6 fd00:13:37::6 prefixlen 64 tentative\n";
        let a = parse_ifconfig(text);
        assert_eq!(a, vec!["10.13.37.5".parse::<IpAddr>().unwrap(), "fd00:13:37::5".parse().unwrap()]);
        let h = parse_host_interfaces(text);
        let names: Vec<&str> = h.names.iter().map(InterfaceName::as_str).collect();
        assert_eq!(names, ["lo0", "epair0b"]);
        assert_eq!(h.addrs[0], ("epair0b".parse().unwrap(), "10.13.37.5".parse().unwrap()));
    }

    #[test]
    fn pf_interfaces() {
        let got = parse_pf_interfaces("all\nem0\nlo\nlo0 (skip)\n\tCleared:     Tue Dec  1 10:00:00 2026\n");
        assert_eq!(got, [("all".into(), false), ("em0".into(), false), ("lo".into(), false), ("lo0".into(), true)]);
    }

    #[test]
    fn anchors_and_status() {
        assert_eq!(parse_anchors("  kleene/web\n  kleene/db\n"), vec!["kleene/web", "kleene/db"]);
        assert_eq!(parse_anchors(""), Vec::<String>::new());
        assert_eq!(parse_pf_status("Status: Enabled for 0 days 00:01:02           Debug: Urgent\n"), Some(true));
        assert_eq!(parse_pf_status("Status: Disabled for 0 days\n"), Some(false));
        assert_eq!(parse_pf_status("nothing"), None);
    }
}
