//! Typed domain values.
//!
//! Raw strings from the command line, the socket or the state file become one of these types at
//! the edge, through a validating constructor. Everything downstream (rendering, conflict checks,
//! planning) handles only these values, so nothing unvalidated can reach pf rule text.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A value that failed validation: what it was, and what is accepted instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct InvalidValue {
    /// The kind of value ("jail name", "interface name", ...).
    pub what: &'static str,
    /// The offending input, as given.
    pub value: String,
    /// What is wrong and what is accepted.
    pub reason: String,
}

impl InvalidValue {
    pub(crate) fn new(what: &'static str, value: &str, reason: impl Into<String>) -> Self {
        InvalidValue { what, value: value.to_string(), reason: reason.into() }
    }
}

/// Implements Display, FromStr-based serde (as a string) for a validated type.
macro_rules! string_serde {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use string_serde;

/// Transport protocol of a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Every protocol, in canonical order.
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The keyword pf and the spec language use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| InvalidValue::new("protocol", s, "protocol must be tcp, udp or sctp"))
    }
}
string_serde!(Protocol);

/// Address family of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Inet,
    Inet6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const BOTH: [Family; 2] = [Family::Inet, Family::Inet6];

    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Inet,
            IpAddr::V6(_) => Family::Inet6,
        }
    }

    /// pf's keyword for the family.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Inet6 => "inet6",
        }
    }

    /// The name people use: "IPv4" or "IPv6".
    pub fn human(self) -> &'static str {
        match self {
            Family::Inet => "IPv4",
            Family::Inet6 => "IPv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive range of ports, 1-65535, start <= end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    start: u16,
    end: u16,
}

impl PortRange {
    /// A range; `None` when a bound is 0 or start > end.
    pub fn new(start: u16, end: u16) -> Option<PortRange> {
        (start >= 1 && start <= end).then_some(PortRange { start, end })
    }

    /// A single port; `None` for 0.
    pub fn single(port: u16) -> Option<PortRange> {
        PortRange::new(port, port)
    }

    pub fn start(self) -> u16 {
        self.start
    }

    pub fn end(self) -> u16 {
        self.end
    }

    /// Number of ports in the range, minus one (0 for a single port).
    pub fn span(self) -> u16 {
        self.end - self.start
    }

    pub fn is_single(self) -> bool {
        self.start == self.end
    }

    /// Whether two ranges share at least one port.
    pub fn overlaps(self, other: PortRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// pf's spelling: `8080` or `8000:8010`.
    pub fn pf(self) -> String {
        if self.is_single() { self.start.to_string() } else { format!("{}:{}", self.start, self.end) }
    }
}

impl fmt::Display for PortRange {
    /// The spec language's spelling: `8080` or `8000-8010`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() { write!(f, "{}", self.start) } else { write!(f, "{}-{}", self.start, self.end) }
    }
}

/// A range travels as its Display form, `"8080"` or `"8000-8010"` (the socket protocol's
/// `host_ports` and `jail_ports`).
impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as Deserialize>::deserialize(d)?;
        let port = |p: &str| p.bytes().all(|b| b.is_ascii_digit()).then(|| p.parse::<u16>().ok()).flatten();
        let (start, end) = s.split_once('-').unwrap_or((&s, &s));
        port(start).zip(port(end)).and_then(|(start, end)| PortRange::new(start, end)).ok_or_else(|| {
            serde::de::Error::custom(format!("invalid port range {s:?}: expected 1-65535 or FIRST-LAST"))
        })
    }
}

/// A host interface name: 1-15 characters of letters, digits, `_`, `.`, `-`, starting with a
/// letter (em0, vtnet0, igb0.100, epair3a, bridge0, lagg0).
///
/// Kept inline (FreeBSD's `IFNAMSIZ` leaves 15 bytes), so that a copy costs no allocation:
/// every claim of a publication on an interface holds one. Zero-padded, so that the derived
/// order is the names' alphabetical order.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InterfaceName {
    bytes: [u8; MAX_INTERFACE_NAME],
    len: u8,
}

/// The longest interface name.
const MAX_INTERFACE_NAME: usize = 15;

impl InterfaceName {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).expect("validated ASCII")
    }
}

impl fmt::Debug for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("InterfaceName").field(&self.as_str()).finish()
    }
}

impl FromStr for InterfaceName {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const RULE: &str = "an interface name is 1-15 letters, digits, '_', '.' or '-', starting \
                            with a letter (em0, vtnet0, igb0.100)";
        let ok = (1..=MAX_INTERFACE_NAME).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(InvalidValue::new("interface name", s, RULE));
        }
        let mut bytes = [0; MAX_INTERFACE_NAME];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(InterfaceName { bytes, len: s.len() as u8 })
    }
}

impl InterfaceName {
    /// The name as pf rule text: quoted when it is a word of pf's grammar (an interface named
    /// `any` or `inet6` is a syntax error bare, and parses quoted), bare otherwise.
    pub fn pf(&self) -> std::borrow::Cow<'_, str> {
        if PF_KEYWORDS.binary_search(&self.as_str()).is_ok() {
            std::borrow::Cow::Owned(format!("\"{}\"", self.as_str()))
        } else {
            std::borrow::Cow::Borrowed(self.as_str())
        }
    }
}

/// The keywords of pf.conf's grammar (the `keywords[]` table of sbin/pfctl/parse.y, FreeBSD 14.3,
/// with the words later releases added), sorted for binary search. A bare keyword where pf
/// expects an interface name is a syntax error.
const PF_KEYWORDS: &[&str] = &[
    "af-to",
    "all",
    "allow-opts",
    "altq",
    "anchor",
    "antispoof",
    "any",
    "bandwidth",
    "binat",
    "binat-anchor",
    "binat-to",
    "bitmask",
    "block",
    "block-policy",
    "bridge-to",
    "buckets",
    "cbq",
    "code",
    "codelq",
    "debug",
    "divert-reply",
    "divert-to",
    "dnpipe",
    "dnqueue",
    "drop",
    "dup-to",
    "ether",
    "fail-policy",
    "fairq",
    "fastroute",
    "file",
    "fingerprints",
    "flags",
    "floating",
    "flush",
    "for",
    "fragment",
    "from",
    "global",
    "group",
    "hfsc",
    "hogs",
    "hostid",
    "icmp-type",
    "icmp6-type",
    "if-bound",
    "in",
    "include",
    "inet",
    "inet6",
    "interval",
    "keep",
    "keepcounters",
    "l3",
    "label",
    "limit",
    "linkshare",
    "load",
    "log",
    "loginterface",
    "map-e-portset",
    "match",
    "max",
    "max-mss",
    "max-pkt-rate",
    "max-pkt-size",
    "max-src-conn",
    "max-src-conn-rate",
    "max-src-nodes",
    "max-src-states",
    "min-ttl",
    "modulate",
    "nat",
    "nat-anchor",
    "nat-to",
    "no",
    "no-df",
    "no-route",
    "no-sync",
    "on",
    "once",
    "optimization",
    "os",
    "out",
    "overload",
    "pass",
    "port",
    "prio",
    "priority",
    "priq",
    "probability",
    "proto",
    "qlimit",
    "queue",
    "quick",
    "random",
    "random-id",
    "rdr",
    "rdr-anchor",
    "rdr-to",
    "realtime",
    "reassemble",
    "reply-to",
    "require-order",
    "return",
    "return-icmp",
    "return-icmp6",
    "return-rst",
    "ridentifier",
    "round-robin",
    "route",
    "route-to",
    "rtable",
    "rule",
    "ruleset-optimization",
    "scrub",
    "set",
    "set-tos",
    "skip",
    "sloppy",
    "source-hash",
    "source-track",
    "state",
    "state-defaults",
    "state-policy",
    "static-port",
    "sticky-address",
    "syncookies",
    "synproxy",
    "table",
    "tag",
    "tagged",
    "target",
    "tbrsize",
    "timeout",
    "to",
    "tos",
    "ttl",
    "upperlimit",
    "urpf-failed",
    "user",
];

impl fmt::Display for InterfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
string_serde!(InterfaceName);

/// Name of a network jails attach to (a key of the agent's config).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetworkName(String);

impl NetworkName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NetworkName {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if is_safe_component(s) {
            Ok(NetworkName(s.to_string()))
        } else {
            Err(InvalidValue::new(
                "network name",
                s,
                "a network name is 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit",
            ))
        }
    }
}

impl fmt::Display for NetworkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_serde!(NetworkName);

/// `[A-Za-z0-9][A-Za-z0-9_.-]{0,62}`: usable verbatim as a pf anchor component and in labels.
pub(crate) fn is_safe_component(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A jail's name: 1-255 bytes of printable ASCII other than whitespace, `"`, `'` and `\`.
/// Shared, not copied: every publication, plan entry and loaded anchor of a jail names it, and
/// at 10,000 publications one string each was 0.5 MB of the agent's memory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JailName(std::sync::Arc<str>);

impl JailName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The jail's stable key: the name of its state file and the stem of its labels, and the
    /// base of its anchor component ([`JailName::anchor_component`]).
    ///
    /// A name that is already a safe component is used as is; any other name maps to `j-` plus
    /// 16 hex digits of its FNV-1a 64-bit hash. The mapping never changes between versions,
    /// because anchors loaded by an earlier agent must be found again.
    pub fn component(&self) -> String {
        if is_safe_component(&self.0) { self.0.to_string() } else { self.hashed() }
    }
}

/// The longest anchor path pf accepts: pfctl copies `-a PATH` into a 64-byte field, and a
/// longer path fails with `pfctl_rules: strlcpy`.
pub const MAX_ANCHOR_PATH: usize = 63;

/// The length of a hashed component: `j-` and 16 hex digits.
const HASHED_COMPONENT: usize = 18;

/// The longest parent anchor (the config's `anchor`): it must leave room for `/` and a hashed
/// component, so that every jail has an anchor path pf accepts.
pub const MAX_PARENT_ANCHOR: usize = MAX_ANCHOR_PATH - 1 - HASHED_COMPONENT;

impl JailName {
    /// The component of this jail's anchor below `parent`, chosen so that `parent/component`
    /// fits pf's [`MAX_ANCHOR_PATH`]: [`JailName::component`] when it fits, else the hashed form
    /// (`j-` and 16 hex digits). `parent` is at most [`MAX_PARENT_ANCHOR`] long (the config
    /// checks it).
    pub fn anchor_component(&self, parent: &str) -> String {
        let room = MAX_ANCHOR_PATH.saturating_sub(parent.len() + 1);
        let c = self.component();
        if c.len() <= room { c } else { self.hashed() }
    }

    fn hashed(&self) -> String {
        format!("j-{:016x}", fnv1a64(self.0.as_bytes()))
    }
}

impl JailName {
    /// The label every pass rule of this jail carries besides its publication's own, so that
    /// one `pfctl -k label -k LABEL` kills all the jail's states: `kleene/<component>`, or
    /// `kleene/#` and 16 hex digits when that would pass pf's 63 characters. It cannot equal
    /// a publication label (those start with `kleene:`).
    pub fn label(&self) -> String {
        LabelKind::Jail.label(&self.component())
    }
}

/// The stem of every label this agent puts on its rules: a rule that carries none is not the
/// agent's (see [`is_own_label`]).
const LABEL_STEM: &str = "kleene";

/// The longest label pf keeps (`PF_RULE_LABEL_SIZE` is 64 bytes with the terminating NUL).
const MAX_LABEL: usize = 63;

/// The two kinds of label this agent writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelKind {
    /// A jail's (`kleene/...`): on every pass rule of the jail's anchor.
    Jail,
    /// A publication's (`kleene:...`): on the pass rules of that publication.
    Publication,
}

impl LabelKind {
    fn separator(self) -> char {
        match self {
            LabelKind::Jail => '/',
            LabelKind::Publication => ':',
        }
    }

    /// The kind of one of this agent's labels; `None` for anybody else's.
    pub fn of(label: &str) -> Option<LabelKind> {
        let rest = label.strip_prefix(LABEL_STEM)?;
        [LabelKind::Jail, LabelKind::Publication].into_iter().find(|k| rest.starts_with(k.separator()))
    }

    /// The stem, the separator and `body`; when that would pass pf's 63 characters, the stem,
    /// the separator and 16 hex digits of a hash instead (a jail's: `#` and the hash of `body`;
    /// a publication's: the hash of the whole label). The forms never change between versions,
    /// because the states of rules loaded by an earlier agent must be found again.
    pub(crate) fn label(self, body: &str) -> String {
        let sep = self.separator();
        let full = format!("{LABEL_STEM}{sep}{body}");
        if full.len() <= MAX_LABEL {
            return full;
        }
        match self {
            LabelKind::Jail => format!("{LABEL_STEM}{sep}#{:016x}", fnv1a64(body.as_bytes())),
            LabelKind::Publication => format!("{LABEL_STEM}{sep}{:016x}", fnv1a64(full.as_bytes())),
        }
    }
}

/// The third label of a publication's `pass out` rules (VNET targets): a connection forwarded
/// to a VNET jail passes a `pass in` rule where it enters the host and a `pass out` rule where
/// it leaves towards the jail, and both count its packets. Traffic counters skip the rules
/// carrying this label, so that each packet is counted once, in the direction it travels.
pub const OUTBOUND_LABEL: &str = "kleene:outbound";

/// Whether a label is one this agent puts on its rules: a publication's (`kleene:...`) or a
/// jail's (`kleene/...`).
pub fn is_own_label(label: &str) -> bool {
    LabelKind::of(label).is_some()
}

/// FNV-1a, 64 bits: small, stable and specified, which is all the naming needs (collisions are
/// detected by the agent, not assumed away).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl FromStr for JailName {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const RULE: &str = "a jail name is 1-255 printable ASCII characters other than spaces, \
                            quotes and backslashes";
        if s.is_empty() || s.len() > 255 {
            return Err(InvalidValue::new("jail name", s, RULE));
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic() || matches!(c, '"' | '\'' | '\\')) {
            return Err(InvalidValue::new("jail name", s, format!("{RULE}; found {c:?}")));
        }
        Ok(JailName(s.into()))
    }
}

impl fmt::Display for JailName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_serde!(JailName);

/// An address prefix such as `192.0.2.0/24` or `2001:db8::/32`; a bare address is a full-length
/// prefix. Host bits must be zero, so that what pf matches is exactly what was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    fn max_prefix(addr: &IpAddr) -> u8 {
        match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }

    /// Builds a prefix; `None` when the length is too long or host bits are set.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        (prefix <= Self::max_prefix(&addr) && mask(addr, prefix) == addr).then_some(Cidr { addr, prefix })
    }

    /// Whether `ip` lies inside this prefix.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        Family::of(ip) == self.family() && mask(*ip, self.prefix) == self.addr
    }
}

/// `addr` with every bit past `prefix` cleared.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix.min(128))) };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == Self::max_prefix(&self.addr) {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl FromStr for Cidr {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| InvalidValue::new("address prefix", s, why);
        let (addr_s, prefix_s) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s.parse().map_err(|_| {
            bad("expected an IPv4 or IPv6 address, optionally with /LENGTH (192.0.2.0/24, 2001:db8::/32)".into())
        })?;
        let max = Self::max_prefix(&addr);
        let prefix = match prefix_s {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.chars().all(|c| c.is_ascii_digit()) => n,
                _ => return Err(bad(format!("prefix length must be 0-{max}"))),
            },
        };
        let masked = mask(addr, prefix);
        if masked != addr {
            return Err(bad(format!("host bits are set; did you mean {masked}/{prefix}?")));
        }
        Ok(Cidr { addr, prefix })
    }
}
string_serde!(Cidr);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for ok in ["em0", "vtnet0", "igb0.100", "epair3a", "bridge0", "lagg0", "a", "abcdefghijklmno"] {
            assert!(ok.parse::<InterfaceName>().is_ok(), "{ok}");
        }
        for bad in ["", "0em", "em 0", "em0;", "abcdefghijklmnop", "(em0)", "em0\n", "é0"] {
            assert!(bad.parse::<InterfaceName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn jail_names_and_components() {
        let web: JailName = "web".parse().unwrap();
        assert_eq!(web.component(), "web");
        let odd: JailName = "_web/1".parse().unwrap();
        let c = odd.component();
        assert!(c.starts_with("j-") && c.len() == 18, "{c}");
        assert_eq!(c, odd.component(), "deterministic");
        let long: JailName = "a".repeat(64).parse().unwrap();
        assert!(long.component().starts_with("j-"));
        assert_eq!("a".repeat(63).parse::<JailName>().unwrap().component(), "a".repeat(63));
        assert_eq!(web.label(), "kleene/web");
        assert_eq!(odd.label(), format!("kleene/{c}"));
        let label = "a".repeat(63).parse::<JailName>().unwrap().label();
        assert_eq!(label, "kleene/#51c1e07b2aee9066", "the hashed form never changes");
        assert!("a".repeat(255).parse::<JailName>().is_ok());
        for bad in ["", "a b", "a\"b", "a'b", "a\\b", "a\nb", "a\tb", "é"] {
            assert!(bad.parse::<JailName>().is_err(), "{bad:?}");
        }
        assert!("a".repeat(256).parse::<JailName>().is_err());
    }

    #[test]
    fn own_labels_are_told_from_others() {
        let web: JailName = "web".parse().unwrap();
        assert_eq!(LabelKind::of(&web.label()), Some(LabelKind::Jail));
        assert_eq!(LabelKind::of("kleene:web:8080:80/tcp"), Some(LabelKind::Publication));
        assert_eq!(LabelKind::of(&"a".repeat(63).parse::<JailName>().unwrap().label()), Some(LabelKind::Jail));
        for other in ["kleene", "kleenex/web", "ssh", "", "Kleene/web"] {
            assert!(!is_own_label(other), "{other:?}");
        }
    }

    #[test]
    fn anchor_components_fit_pf() {
        let fits: JailName = "a".repeat(56).parse().unwrap();
        assert_eq!(fits.anchor_component("kleene"), "a".repeat(56));
        for n in 57..=63 {
            let j: JailName = "a".repeat(n).parse().unwrap();
            let c = j.anchor_component("kleene");
            assert!(c.starts_with("j-") && format!("kleene/{c}").len() <= MAX_ANCHOR_PATH, "{n}: {c}");
            assert_eq!(j.component(), "a".repeat(n), "the state key does not change");
        }
        let parent = "p".repeat(MAX_PARENT_ANCHOR);
        let j: JailName = "web".parse().unwrap();
        assert_eq!(format!("{parent}/{}", j.anchor_component(&parent)).len(), 48);
        let odd: JailName = "a b".replace(' ', "_").parse().unwrap();
        assert_eq!(odd.anchor_component(&parent), "a_b");
        let long: JailName = "x".repeat(40).parse().unwrap();
        assert_eq!(format!("{parent}/{}", long.anchor_component(&parent)).len(), MAX_ANCHOR_PATH);
    }

    #[test]
    fn interface_names_keep_their_text_and_order() {
        let names = ["a", "abcdefghijklmno", "em", "em0", "em0.100", "em1", "igb0", "vtnet0"];
        let parsed: Vec<InterfaceName> = names.iter().map(|n| n.parse().unwrap()).collect();
        assert_eq!(parsed.iter().map(InterfaceName::as_str).collect::<Vec<_>>(), names);
        assert!(parsed.windows(2).all(|w| w[0] < w[1]), "alphabetical, as the text");
        assert_eq!(format!("{:?}", parsed[3]), "InterfaceName(\"em0\")");
    }

    #[test]
    fn keywords_are_quoted_in_rule_text() {
        assert!(PF_KEYWORDS.windows(2).all(|w| w[0] < w[1]), "sorted, for binary search");
        for kw in ["any", "all", "on", "log", "inet", "inet6", "label", "no", "tag", "quick", "in", "out", "port"] {
            assert_eq!(kw.parse::<InterfaceName>().unwrap().pf(), format!("\"{kw}\""));
        }
        for plain in ["em0", "self", "bridge0", "lo0", "wan"] {
            assert_eq!(plain.parse::<InterfaceName>().unwrap().pf(), plain);
        }
    }

    #[test]
    fn fnv_known_vector() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn cidrs() {
        assert_eq!("192.0.2.0/24".parse::<Cidr>().unwrap().to_string(), "192.0.2.0/24");
        assert_eq!("198.51.100.7".parse::<Cidr>().unwrap().to_string(), "198.51.100.7");
        assert_eq!("198.51.100.7/32".parse::<Cidr>().unwrap().to_string(), "198.51.100.7");
        assert_eq!("2001:0db8::/32".parse::<Cidr>().unwrap().to_string(), "2001:db8::/32");
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().to_string(), "0.0.0.0/0");
        let e = "192.0.2.1/24".parse::<Cidr>().unwrap_err();
        assert!(e.reason.contains("did you mean 192.0.2.0/24"), "{e}");
        for bad in ["", "any", "192.0.2.0/33", "192.0.2.0/", "192.0.2.0/+8", "::/129", "{1.2.3.4}", "1.2.3.4 "] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
        let net: Cidr = "10.13.37.0/24".parse().unwrap();
        assert!(net.contains(&"10.13.37.9".parse().unwrap()));
        assert!(!net.contains(&"10.13.38.9".parse().unwrap()));
        assert!(!net.contains(&"fd00::1".parse().unwrap()));
    }

    #[test]
    fn port_ranges() {
        assert!(PortRange::new(0, 1).is_none());
        assert!(PortRange::new(5, 4).is_none());
        let r = PortRange::new(8000, 8010).unwrap();
        assert_eq!(r.to_string(), "8000-8010");
        assert_eq!(r.pf(), "8000:8010");
        assert!(r.overlaps(PortRange::single(8010).unwrap()));
        assert!(!r.overlaps(PortRange::single(8011).unwrap()));
        assert_eq!(PortRange::single(80).unwrap().pf(), "80");
    }

    #[test]
    fn protocols() {
        assert_eq!("UDP".parse::<Protocol>().unwrap(), Protocol::Udp);
        assert!("icmp".parse::<Protocol>().is_err());
    }
}
