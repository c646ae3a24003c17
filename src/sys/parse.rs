//! Parsers of what FreeBSD's tools print: `jls --libxo json`, `route -n get`, `ifconfig -a`,
//! `pfctl -s Anchors` and `pfctl -s info`. Pure functions, so they are tested (and fuzzed) on
//! any host. Every value that comes out is validated: a jail name that is not a valid
//! [`JailName`] or an address that does not parse is dropped, never passed on raw.

use std::net::IpAddr;

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

/// Parses `jls --libxo json jid name ip4.addr ip6.addr vnet`:
/// `{"__version": "2", "jail-information": {"jail": [{"jid": "3", "name": "web",
/// "ip4.addr": ["10.13.37.2"], "ip6.addr": [], "vnet": "inherit"}]}}`.
/// Values may be strings or numbers; jails whose name or jid is invalid are skipped.
///
/// The document is read straight into [`JailInfo`]s, not into a tree of values first (a poll
/// parses a thousand jails five times a second): the `jls` module below says how each value
/// is read.
pub fn parse_jls(text: &str) -> Result<Vec<JailInfo>, ParseError> {
    match serde_json::from_str::<jls::Document>(text) {
        Ok(jls::Document(Some(jls::Jails::List(jails)))) => Ok(jails),
        Ok(jls::Document(Some(jls::Jails::NotAList))) => {
            Err(ParseError("jls output: jail-information.jail is not an array".into()))
        }
        Ok(jls::Document(None)) => Err(ParseError("jls output has no jail-information.jail".into())),
        Err(e) => Err(ParseError(format!("jls printed invalid JSON: {e}"))),
    }
}

/// The reading of jls's JSON, value by value, with what a tree of values
/// (`serde_json::Value`) would make of it: a repeated key counts once, its last value; a value
/// that is not of the expected kind reads as absent; anything else is checked as JSON (nesting
/// depth, escapes, numbers' range) and skipped without being kept.
///
/// - `jid`, `name`, `vnet`: a string, or a number or boolean read as the text JSON prints for
///   it (`3`, `true`); the jid must be a `u32`, the name a valid [`JailName`], `vnet` is set by
///   `new`, `1` or `true`.
/// - `ip4.addr`, `ip6.addr`: every address in the value: a string is split at commas and
///   spaces, an array's items and an object's values are read in turn (an object's by key, as a
///   value tree orders them), other values hold none; an address of the other family or that
///   does not parse is dropped.
mod jls {
    use std::borrow::Cow;
    use std::fmt;
    use std::net::IpAddr;

    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    use super::JailInfo;
    use crate::core::model::JailName;

    /// The visitor methods of every scalar (and null), each answering `$value`; strings too
    /// unless `but strings`.
    macro_rules! scalars_are {
        ($value:expr) => {
            scalars_are!($value, but strings);
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok($value)
            }
        };
        ($value:expr, but strings) => {
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok($value)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok($value)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok($value)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok($value)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok($value)
            }
        };
    }

    /// The whole document: what `jail-information.jail` holds, if anything.
    pub(super) struct Document(pub(super) Option<Jails>);

    pub(super) enum Jails {
        List(Vec<JailInfo>),
        NotAList,
    }

    impl<'de> de::Deserialize<'de> for Document {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Object { key: "jail-information", then: InfoSeed }).map(|v| Document(v.flatten()))
        }
    }

    /// An object whose value at `key` is read by `then`; any other value reads as None.
    struct Object<S> {
        key: &'static str,
        then: S,
    }

    impl<'de, S: DeserializeSeed<'de> + Copy> Visitor<'de> for Object<S> {
        type Value = Option<S::Value>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "any JSON value")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(is) = map.next_key_seed(Key(|k: &str| (k == self.key).then_some(())))? {
                if is.is_some() {
                    found = Some(map.next_value_seed(self.then)?);
                } else {
                    map.next_value_seed(Skip)?;
                }
            }
            Ok(found)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            skip_seq(seq).map(|()| None)
        }

        scalars_are!(None);
    }

    /// `jail-information`: what its `jail` holds.
    #[derive(Clone, Copy)]
    struct InfoSeed;

    impl<'de> DeserializeSeed<'de> for InfoSeed {
        type Value = Option<Jails>;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Object { key: "jail", then: ListSeed }).map(Option::flatten)
        }
    }

    /// `jail`: the array of jails.
    #[derive(Clone, Copy)]
    struct ListSeed;

    impl<'de> DeserializeSeed<'de> for ListSeed {
        type Value = Option<Jails>;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for ListSeed {
        type Value = Option<Jails>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "any JSON value")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut jails = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(jail) = seq.next_element_seed(EntrySeed)? {
                jails.extend(jail);
            }
            Ok(Some(Jails::List(jails)))
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            skip_map(map).map(|()| Some(Jails::NotAList))
        }

        scalars_are!(Some(Jails::NotAList));
    }

    /// One item of `jail`: a jail, or None when it is not an object or its jid or name is not
    /// valid.
    struct EntrySeed;

    impl<'de> DeserializeSeed<'de> for EntrySeed {
        type Value = Option<JailInfo>;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    /// The keys of a jail that are read.
    enum Field {
        Jid,
        Name,
        Ip4,
        Ip6,
        Vnet,
    }

    /// A `match`: a few comparisons inlined, not a call per key and candidate.
    fn field(key: &str) -> Option<Field> {
        match key {
            "jid" => Some(Field::Jid),
            "name" => Some(Field::Name),
            "ip4.addr" => Some(Field::Ip4),
            "ip6.addr" => Some(Field::Ip6),
            "vnet" => Some(Field::Vnet),
            _ => None,
        }
    }

    impl<'de> Visitor<'de> for EntrySeed {
        type Value = Option<JailInfo>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "any JSON value")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let (mut jid, mut name, mut ip4, mut ip6, mut vnet) = (None, None, Vec::new(), Vec::new(), false);
            while let Some(key) = map.next_key_seed(Key(field))? {
                match key {
                    Some(Field::Jid) => jid = map.next_value_seed(ScalarSeed)?.jid(),
                    Some(Field::Name) => {
                        name = map.next_value_seed(ScalarSeed)?.text().and_then(|s| s.parse::<JailName>().ok());
                    }
                    Some(family @ (Field::Ip4 | Field::Ip6)) => {
                        let mut addrs = Vec::new();
                        map.next_value_seed(Addrs(&mut addrs))?;
                        if let Field::Ip4 = family {
                            addrs.retain(IpAddr::is_ipv4);
                            ip4 = addrs;
                        } else {
                            addrs.retain(IpAddr::is_ipv6);
                            ip6 = addrs;
                        }
                    }
                    Some(Field::Vnet) => {
                        let scalar = map.next_value_seed(ScalarSeed)?;
                        vnet = scalar.text().is_some_and(|s| matches!(&*s, "new" | "1" | "true"));
                    }
                    None => map.next_value_seed(Skip)?,
                }
            }
            Ok(jid.zip(name).map(|(jid, name)| JailInfo { jid, name, ip4, ip6, vnet }))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            skip_seq(seq).map(|()| None)
        }

        scalars_are!(None);
    }

    /// What `which` makes of an object's key, read without copying it.
    struct Key<F>(F);

    impl<'de, T, F: FnOnce(&str) -> Option<T>> DeserializeSeed<'de> for Key<F> {
        type Value = Option<T>;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<T, F: FnOnce(&str) -> Option<T>> Visitor<'_> for Key<F> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a key")
        }

        fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
            Ok((self.0)(key))
        }
    }

    /// A scalar as JSON has it; arrays, objects and null are `Other`.
    enum Scalar<'de> {
        Str(Cow<'de, str>),
        U64(u64),
        I64(i64),
        F64(f64),
        Bool(bool),
        Other,
    }

    impl Scalar<'_> {
        /// The text a value tree gives for it: a string's own, a number or boolean as JSON
        /// prints it.
        fn text(&self) -> Option<Cow<'_, str>> {
            Some(match self {
                Scalar::Str(s) => Cow::Borrowed(&**s),
                Scalar::U64(n) => Cow::Owned(n.to_string()),
                Scalar::I64(n) => Cow::Owned(n.to_string()),
                Scalar::F64(x) => Cow::Owned(serde_json::Number::from_f64(*x)?.to_string()),
                Scalar::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
                Scalar::Other => return None,
            })
        }

        /// As a jid: its text as a `u32`.
        fn jid(&self) -> Option<u32> {
            match self {
                Scalar::U64(n) => u32::try_from(*n).ok(),
                other => other.text()?.parse().ok(),
            }
        }
    }

    struct ScalarSeed;

    impl<'de> DeserializeSeed<'de> for ScalarSeed {
        type Value = Scalar<'de>;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for ScalarSeed {
        type Value = Scalar<'de>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "any JSON value")
        }

        fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
            Ok(Scalar::Str(Cow::Borrowed(s)))
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Scalar::Str(Cow::Owned(s.to_string())))
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Scalar::U64(n))
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
            Ok(Scalar::I64(n))
        }

        fn visit_f64<E: de::Error>(self, x: f64) -> Result<Self::Value, E> {
            Ok(Scalar::F64(x))
        }

        fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
            Ok(Scalar::Bool(b))
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Scalar::Other)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            skip_seq(seq).map(|()| Scalar::Other)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            skip_map(map).map(|()| Scalar::Other)
        }
    }

    /// Collects the addresses of an `ip4.addr` / `ip6.addr` value into its vector.
    struct Addrs<'v>(&'v mut Vec<IpAddr>);

    impl<'de> DeserializeSeed<'de> for Addrs<'_> {
        type Value = ();

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Addrs<'_> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "any JSON value")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
            self.0.extend(s.split([',', ' ']).filter_map(|a| a.trim().parse::<IpAddr>().ok()));
            Ok(())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Addrs(self.0))?.is_some() {}
            Ok(())
        }

        /// An object's values in the order of their keys, the last of a repeated key only: as
        /// a value tree (a sorted map) holds them.
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut values: Vec<(String, Vec<IpAddr>)> = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                let mut addrs = Vec::new();
                map.next_value_seed(Addrs(&mut addrs))?;
                values.retain(|(k, _)| *k != key);
                values.push((key, addrs));
            }
            values.sort_by(|a, b| a.0.cmp(&b.0));
            self.0.extend(values.into_iter().flat_map(|(_, addrs)| addrs));
            Ok(())
        }

        scalars_are!((), but strings);
    }

    /// Any value, checked as JSON and not kept.
    #[derive(Clone, Copy)]
    struct Skip;

    impl<'de> DeserializeSeed<'de> for Skip {
        type Value = ();

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            // deserialize_any, not deserialize_ignored_any: serde_json's ignoring reader would
            // accept what a value tree refuses (nesting past its depth limit, a lone surrogate
            // escape, a number out of range).
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Skip {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "any JSON value")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
            skip_seq(seq)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
            skip_map(map)
        }

        scalars_are!(());
    }

    fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }

    fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
        while map.next_entry_seed(Skip, Skip)?.is_some() {}
        Ok(())
    }
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

    use proptest::prelude::*;
    use serde_json::Value;

    /// What [`parse_jls`] must answer, read through a tree of values (how it was first written).
    fn parse_jls_through_a_value_tree(text: &str) -> Result<Vec<JailInfo>, ParseError> {
        fn as_text(v: &Value) -> Option<String> {
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            }
        }
        fn collect(v: &Value, out: &mut Vec<IpAddr>) {
            match v {
                Value::String(s) => out.extend(s.split([',', ' ']).filter_map(|a| a.trim().parse::<IpAddr>().ok())),
                Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
                Value::Object(m) => m.values().for_each(|x| collect(x, out)),
                _ => {}
            }
        }
        let addr_list = |v: Option<&Value>| {
            let mut out = Vec::new();
            if let Some(v) = v {
                collect(v, &mut out);
            }
            out
        };
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
            let Some(name) = j.get("name").and_then(as_text).and_then(|s| s.parse::<JailName>().ok()) else {
                continue;
            };
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

    /// JSON text of any shape, with the keys and values jls's document holds (and repeated
    /// keys, escapes, numbers of every kind).
    fn json() -> impl Strategy<Value = String> {
        const WORDS: &[&str] = &[
            "web",
            "db",
            "bad name",
            "10.0.0.1",
            "fd00::1",
            "10.0.0.1, 10.0.0.2",
            " 10.0.0.3 fd00::2,",
            "new",
            "inherit",
            "1",
            "true",
            "3",
            "+4",
            "",
            r"\u00e9t\u00e9",
            r"we\u0062",
            r"\ud800",
            r#"j\"q"#,
            "4294967296",
        ];
        const NUMBERS: &[&str] =
            &["3.0", "1e400", "-0", "4294967295", "4294967296", "1.5e3", "18446744073709551616", "-3"];
        let leaf = prop_oneof![
            Just("null".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<u32>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            proptest::sample::select(NUMBERS).prop_map(String::from),
            proptest::sample::select(WORDS).prop_map(|w| format!("\"{w}\"")),
        ];
        leaf.prop_recursive(5, 48, 6, |inner| {
            const KEYS: &[&str] = &[
                "__version",
                "jail-information",
                "jail",
                "jid",
                "name",
                "ip4.addr",
                "ip6.addr",
                "vnet",
                "ipv4_addr",
                "a",
                r"ji\u0064",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(", "))),
                proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..7).prop_map(|kv| {
                    let fields: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
                    format!("{{{}}}", fields.join(", "))
                }),
            ]
        })
    }

    /// A document shaped as jls prints it, with entries of any shape inside: mostly the values
    /// jls prints for each key, sometimes anything.
    fn jls_document() -> impl Strategy<Value = String> {
        fn typical(key: &str) -> &'static [&'static str] {
            match key {
                "jid" => &[r#""3""#, "7", r#""x""#, "-1"],
                "name" => &[r#""web""#, r#""db""#, "true", r#""bad name""#, "12"],
                "vnet" => &[r#""new""#, r#""inherit""#, "1", "true", r#""1""#, "1.0"],
                "ip4.addr" | "ip6.addr" => &[
                    r#"["10.0.0.1", "fd00::1"]"#,
                    r#""10.0.0.1,10.0.0.2""#,
                    r#"[{"ipv4_addr": ["10.0.0.4", "fd00::4"]}]"#,
                    "[]",
                    r#"{"b": "10.0.0.6", "a": "10.0.0.5 fd00::5"}"#,
                ],
                _ => &["1"],
            }
        }
        let field =
            (proptest::sample::select(&["jid", "name", "ip4.addr", "ip6.addr", "vnet", "path"][..]), 0usize..8, json())
                .prop_map(|(k, pick, any)| {
                    let values = typical(k);
                    let v = if pick < 6 { values[pick % values.len()].to_string() } else { any };
                    format!("\"{k}\": {v}")
                });
        let entry = proptest::collection::vec(field, 0..7).prop_map(|fields| format!("{{{}}}", fields.join(", ")));
        let item = prop_oneof![4 => entry, 1 => json()];
        (proptest::collection::vec(item, 0..5), json()).prop_map(|(items, extra)| {
            format!(r#"{{"__version": "2", "jail-information": {{"jail": [{}], "x": {extra}}}}}"#, items.join(", "))
        })
    }

    proptest::proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Reading jls's document straight into jails answers exactly what reading it through
        /// a tree of values did, on any input, cut short or not: the same jails, the same
        /// error.
        #[test]
        fn parse_jls_answers_as_a_value_tree_would(
            text in prop_oneof![3 => jls_document(), 1 => json()],
            cut in proptest::option::of(0usize..400),
        ) {
            let text = match cut {
                Some(at) => text.char_indices().map(|(i, _)| i).find(|&i| i >= at).map_or(text.as_str(), |i| &text[..i]),
                None => text.as_str(),
            };
            prop_assert_eq!(parse_jls(text), parse_jls_through_a_value_tree(text), "{}", text);
        }
    }

    #[test]
    fn jls_json_as_a_value_tree_reads_it() {
        let cases = [
            r#"{"jail-information": {"jail": [{"jid": "1", "name": "a", "name": "bad name"}]}}"#,
            r#"{"jail-information": {"jail": [{"jid": "1", "name": "bad name", "name": "a"}]}}"#,
            r#"{"jail-information": {"jail": []}, "jail-information": {"x": 1}}"#,
            r#"{"jail-information": {"jail": 3}}"#,
            r#"{"jail-information": [], "jail-information": {"jail": [{"jid": 4294967295, "name": true}]}}"#,
            r#"{"jail-information": {"jail": [{"jid": 1, "name": "a", "ip4.addr": {"z": "10.0.0.2", "b": ["10.0.0.1"], "z": "10.0.0.3"}}]}}"#,
            r#"{"jail-information": {"jail": [{"jid": 1, "name": "a", "x": [[[[]]]], "ip6.addr": "\ud800"}]}}"#,
            r#"{"jail-information": {"jail": [{"jid": 1, "name": "a", "x": 1e400}]}}"#,
            r#"[{"jail-information": {"jail": []}}]"#,
            r#"{"jail-information": {"jail": []}} x"#,
        ];
        for text in cases {
            assert_eq!(parse_jls(text), parse_jls_through_a_value_tree(text), "{text}");
        }
        let deep = format!(
            r#"{{"jail-information": {{"jail": [{{"jid": 1, "name": "a", "x": {}{}}}]}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(parse_jls(&deep).is_err(), "nesting past serde_json's limit is refused, as in a value tree");
        assert_eq!(parse_jls(&deep), parse_jls_through_a_value_tree(&deep));
    }

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
