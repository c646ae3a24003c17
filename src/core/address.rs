//! Choosing the jail address traffic is redirected to, and refusing the ones that must never be.
//!
//! A VNET jail's root sets the jail's own interface addresses, so whatever such a jail reports
//! is a claim, not a fact: the defence is validation here, not trust in the tool that read them.
//! A target is the jail's first acceptable address (per family) inside a configured network, in
//! the order the networks are listed, or inside the one network a publication names. An address
//! is acceptable when it is routable unicast (never loopback, link-local, multicast,
//! unspecified, 0.0.0.0/8, 240.0.0.0/4, broadcast, IPv4-mapped or IPv4-compatible IPv6), not
//! its network's network or broadcast address, not claimed by another running jail, and, for a
//! VNET jail, not one of the host's own addresses. A VNET jail needs configured networks; a
//! non-VNET jail's addresses are set by the host's administrator, and with no networks
//! configured its first acceptable address of each family is used.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::model::{Cidr, Family, JailName, NetworkName};
use super::render::Targets;

/// A network jails attach to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub name: NetworkName,
    #[serde(default)]
    pub subnet: Option<Cidr>,
    #[serde(default)]
    pub subnet6: Option<Cidr>,
}

impl Network {
    fn subnet_of(&self, family: Family) -> Option<&Cidr> {
        match family {
            Family::Inet => self.subnet.as_ref(),
            Family::Inet6 => self.subnet6.as_ref(),
        }
    }

    fn describe(&self) -> String {
        let nets: Vec<String> = [self.subnet, self.subnet6].iter().flatten().map(Cidr::to_string).collect();
        format!("{} ({})", self.name, nets.join(", "))
    }
}

/// Why an address is never a redirect target, whatever the configuration; `None` for a
/// routable unicast address.
pub fn never_target(ip: &IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            if a.is_loopback() {
                Some("a loopback address")
            } else if a.is_link_local() {
                Some("a link-local address")
            } else if a.is_multicast() {
                Some("a multicast address")
            } else if a.is_broadcast() {
                Some("the broadcast address")
            } else if o[0] == 0 {
                Some("in 0.0.0.0/8 (this network)")
            } else if o[0] >= 240 {
                Some("in 240.0.0.0/4 (reserved)")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            let seg = a.segments();
            if a.is_unspecified() {
                Some("the unspecified address")
            } else if a.is_loopback() {
                Some("a loopback address")
            } else if a.is_multicast() {
                Some("a multicast address")
            } else if (seg[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address")
            } else if seg[..5] == [0; 5] && seg[5] == 0xffff {
                Some("an IPv4-mapped IPv6 address")
            } else if seg[..6] == [0; 6] {
                Some("an IPv4-compatible IPv6 address")
            } else {
                None
            }
        }
    }
}

/// What the planner knows of the host beyond one jail.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub networks: &'a [Network],
    /// Addresses reported by more than one running jail, with the jails that report them:
    /// nobody gets those.
    pub contested: &'a BTreeMap<IpAddr, Vec<JailName>>,
    /// The host's own addresses (read from the host, never from a jail).
    pub host: &'a BTreeSet<IpAddr>,
}

/// The jail the targets are chosen for.
#[derive(Debug, Clone, Copy)]
pub struct Jail<'a> {
    pub name: &'a JailName,
    pub vnet: bool,
    pub addrs: &'a [IpAddr],
}

/// Why `ip` may not be a target of `jail` in `net` (`None`: no network applies).
fn refusal(ip: &IpAddr, jail: &Jail, net: Option<&Cidr>, ctx: &Context) -> Option<String> {
    if let Some(why) = never_target(ip) {
        return Some(format!("{ip} is {why}"));
    }
    if let Some(net) = net {
        let special = match *ip {
            IpAddr::V4(a) if net.prefix() <= 30 => {
                let host_bits = u32::MAX.checked_shr(u32::from(net.prefix())).unwrap_or(0);
                if u32::from(a) & host_bits == 0 {
                    Some("the network address")
                } else if u32::from(a) & host_bits == host_bits {
                    Some("the broadcast address")
                } else {
                    None
                }
            }
            IpAddr::V6(_) if net.prefix() <= 126 && *ip == net.addr() => Some("the subnet-router anycast address"),
            _ => None,
        };
        if let Some(what) = special {
            return Some(format!("{ip} is {what} of {net}"));
        }
    }
    if jail.vnet && ctx.host.contains(ip) {
        return Some(format!("{ip} is the host's own address"));
    }
    if let Some(claimants) = ctx.contested.get(ip) {
        let others: Vec<String> = claimants.iter().filter(|j| *j != jail.name).map(|j| format!("jail {j}")).collect();
        return Some(format!("{ip} is also claimed by {}", others.join(", ")));
    }
    None
}

/// The targets for `jail`. `Err` says why there is none, naming every address that was refused
/// and why.
pub fn select_targets(jail: &Jail, ctx: &Context, only: Option<&NetworkName>) -> Result<Targets, String> {
    let networks: &[Network] = match only {
        Some(name) => std::slice::from_ref(
            ctx.networks.iter().find(|n| &n.name == name).ok_or_else(|| format!("network {name} is not configured"))?,
        ),
        None => ctx.networks,
    };
    if jail.vnet && networks.is_empty() {
        return Err("the jail has its own network stack (VNET) and sets its own addresses, so the agent \
                    redirects only to addresses inside configured networks: add the jail's network to \
                    `networks` in the agent's configuration"
            .into());
    }
    let mut refused: Vec<String> = Vec::new();
    let mut t = Targets::default();
    for family in Family::BOTH {
        let found = if networks.is_empty() {
            jail.addrs.iter().filter(|a| Family::of(a) == family).find(|a| match refusal(a, jail, None, ctx) {
                None => true,
                Some(why) => {
                    refused.push(why);
                    false
                }
            })
        } else {
            networks.iter().filter_map(|n| n.subnet_of(family)).find_map(|subnet| {
                jail.addrs.iter().filter(|a| subnet.contains(a)).find(|a| match refusal(a, jail, Some(subnet), ctx) {
                    None => true,
                    Some(why) => {
                        refused.push(why);
                        false
                    }
                })
            })
        };
        match family {
            Family::Inet => t.inet = found.copied(),
            Family::Inet6 => t.inet6 = found.copied(),
        }
    }
    if t.inet.is_some() || t.inet6.is_some() {
        return Ok(t);
    }
    let have: Vec<String> = jail.addrs.iter().map(IpAddr::to_string).collect();
    let have = if have.is_empty() { "none".to_string() } else { have.join(", ") };
    let mut why = match only {
        Some(_) => {
            format!("the jail has no usable address in network {} (its addresses: {have})", networks[0].describe())
        }
        None if networks.is_empty() => format!("the jail has no usable address (its addresses: {have})"),
        None => {
            let nets: Vec<String> = networks.iter().map(Network::describe).collect();
            format!(
                "the jail has no usable address in the configured networks {} (its addresses: {have})",
                nets.join(", ")
            )
        }
    };
    refused.dedup();
    if !refused.is_empty() {
        why.push_str(&format!("; refused: {}", refused.join("; ")));
    }
    Err(why)
}

/// The targets of a container publication: the first acceptable address of each family among
/// those its runtime gave it (see [`crate::core::container`]). The runtime is the authority on
/// where the container is, so neither the jail's addresses nor the networks are consulted; only
/// addresses that are never a target are refused. `Err` says why there is none.
pub fn given_targets(addrs: &[IpAddr]) -> Result<Targets, String> {
    let (good, bad): (Vec<IpAddr>, Vec<IpAddr>) = addrs.iter().partition(|ip| never_target(ip).is_none());
    if good.is_empty() {
        let refused: Vec<String> =
            bad.iter().filter_map(|ip| never_target(ip).map(|why| format!("{ip} is {why}"))).collect();
        return Err(format!("the container has no usable address (refused: {})", refused.join("; ")));
    }
    Ok(Targets::from_addrs(good))
}

/// Addresses that more than one of `jails` reports, with the jails that report each.
pub fn contested<'a>(jails: impl IntoIterator<Item = (&'a JailName, &'a [IpAddr])>) -> BTreeMap<IpAddr, Vec<JailName>> {
    let mut by_addr: BTreeMap<IpAddr, Vec<JailName>> = BTreeMap::new();
    for (name, addrs) in jails {
        for a in addrs {
            let holders = by_addr.entry(*a).or_default();
            if !holders.contains(name) {
                holders.push(name.clone());
            }
        }
    }
    by_addr.retain(|_, holders| holders.len() > 1);
    by_addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_containers_given_addresses_are_its_targets_unless_never_a_target() {
        let t = given_targets(&ips(&["127.0.0.1", "10.88.0.5", "10.88.0.6", "fe80::1", "fd00::5"])).unwrap();
        assert_eq!(t, Targets::from_addrs(ips(&["10.88.0.5", "fd00::5"])));
        assert_eq!(given_targets(&ips(&["fd00::5"])).unwrap().inet, None);
        assert_eq!(
            given_targets(&ips(&["127.0.0.1", "ff02::1"])).unwrap_err(),
            "the container has no usable address (refused: 127.0.0.1 is a loopback address; ff02::1 is a multicast \
             address)"
        );
    }

    fn ips(s: &[&str]) -> Vec<IpAddr> {
        s.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn net(name: &str, v4: Option<&str>, v6: Option<&str>) -> Network {
        Network {
            name: name.parse().unwrap(),
            subnet: v4.map(|s| s.parse().unwrap()),
            subnet6: v6.map(|s| s.parse().unwrap()),
        }
    }

    struct Fixture {
        networks: Vec<Network>,
        contested: BTreeMap<IpAddr, Vec<JailName>>,
        host: BTreeSet<IpAddr>,
    }

    impl Fixture {
        fn new(networks: Vec<Network>) -> Fixture {
            Fixture { networks, contested: BTreeMap::new(), host: BTreeSet::new() }
        }

        fn select(&self, vnet: bool, addrs: &[&str], only: Option<&str>) -> Result<Targets, String> {
            let name: JailName = "web".parse().unwrap();
            let addrs = ips(addrs);
            let ctx = Context { networks: &self.networks, contested: &self.contested, host: &self.host };
            let only: Option<NetworkName> = only.map(|o| o.parse().unwrap());
            select_targets(&Jail { name: &name, vnet, addrs: &addrs }, &ctx, only.as_ref())
        }
    }

    fn kleenet() -> Vec<Network> {
        vec![net("kleenet", Some("10.13.37.0/24"), Some("fd00:13:37::/64")), net("other", Some("192.0.2.0/24"), None)]
    }

    #[test]
    fn without_networks_the_first_usable_address_per_family() {
        let f = Fixture::new(vec![]);
        let t = f.select(false, &["127.0.0.1", "fe80::1", "192.0.2.5", "10.0.0.1", "fd00::5"], None).unwrap();
        assert_eq!(t.inet, Some("192.0.2.5".parse().unwrap()));
        assert_eq!(t.inet6, Some("fd00::5".parse().unwrap()));
        let e = f.select(false, &["127.0.0.1"], None).unwrap_err();
        assert!(e.contains("no usable address (its addresses: 127.0.0.1)"), "{e}");
        assert!(e.contains("127.0.0.1 is a loopback address"), "{e}");
    }

    #[test]
    fn networks_in_the_order_listed() {
        let f = Fixture::new(kleenet());
        let t = f.select(false, &["192.0.2.5", "10.13.37.2", "fd00:13:37::2"], None).unwrap();
        assert_eq!(t.inet, Some("10.13.37.2".parse().unwrap()));
        assert_eq!(t.inet6, Some("fd00:13:37::2".parse().unwrap()));
        let t = f.select(false, &["192.0.2.5", "10.13.37.2"], Some("other")).unwrap();
        assert_eq!(t.inet, Some("192.0.2.5".parse().unwrap()));
        assert_eq!(t.inet6, None);
        let e = f.select(false, &["198.51.100.1"], None).unwrap_err();
        assert!(
            e.contains("no usable address in the configured networks kleenet (10.13.37.0/24, fd00:13:37::/64)"),
            "{e}"
        );
        let e = f.select(false, &["10.13.37.2"], Some("other")).unwrap_err();
        assert!(e.contains("no usable address in network other (192.0.2.0/24)"), "{e}");
        assert_eq!(f.select(false, &["10.13.37.2"], Some("nope")).unwrap_err(), "network nope is not configured");
    }

    #[test]
    fn a_vnet_jail_needs_networks() {
        let e = Fixture::new(vec![]).select(true, &["10.13.37.5"], None).unwrap_err();
        assert!(e.contains("VNET") && e.contains("`networks`"), "{e}");
        let e = Fixture::new(vec![]).select(true, &["198.51.100.9"], None).unwrap_err();
        assert!(e.contains("configuration"), "any address at all is refused: {e}");
    }

    #[test]
    fn what_a_vnet_jail_may_never_become() {
        let mut f = Fixture::new(kleenet());
        f.host.insert("10.13.37.1".parse().unwrap());
        for (addr, why) in [
            ("10.13.37.0", "the network address of 10.13.37.0/24"),
            ("10.13.37.255", "the broadcast address of 10.13.37.0/24"),
            ("10.13.37.1", "the host's own address"),
            ("fd00:13:37::", "subnet-router anycast"),
        ] {
            let e = f.select(true, &[addr], None).unwrap_err();
            assert!(e.contains(why), "{addr}: {e}");
        }
        let wide = Fixture::new(vec![net("wide", Some("0.0.0.0/0"), Some("::/0"))]);
        for (addr, why) in [
            ("240.0.0.1", "240.0.0.0/4"),
            ("255.255.255.255", "the broadcast address"),
            ("127.0.0.1", "loopback"),
            ("0.1.2.3", "0.0.0.0/8"),
            ("169.254.1.1", "link-local"),
            ("224.0.0.1", "multicast"),
            ("::ffff:127.0.0.1", "IPv4-mapped"),
            ("::10.13.37.2", "IPv4-compatible"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
        ] {
            let e = wide.select(true, &[addr], None).unwrap_err();
            assert!(e.contains(why), "{addr}: {e}");
        }
        let t = f.select(true, &["10.13.37.1", "10.13.37.5"], None).unwrap();
        assert_eq!(t.inet, Some("10.13.37.5".parse().unwrap()), "the next acceptable address is taken");
        let t = f.select(false, &["10.13.37.1"], None).unwrap();
        assert_eq!(t.inet, Some("10.13.37.1".parse().unwrap()), "a non-VNET jail's address is a host alias");
    }

    #[test]
    fn small_prefixes_have_no_network_or_broadcast_address() {
        let f = Fixture::new(vec![net("p2p", Some("10.0.0.0/31"), Some("fd00::/127"))]);
        assert!(f.select(true, &["10.0.0.0"], None).is_ok());
        assert!(f.select(true, &["10.0.0.1"], None).is_ok());
        assert!(f.select(true, &["fd00::"], None).is_ok());
        let f = Fixture::new(vec![net("one", Some("10.0.0.7/32"), None)]);
        assert!(f.select(true, &["10.0.0.7"], None).is_ok());
    }

    #[test]
    fn an_address_two_jails_claim_goes_to_neither() {
        let web: JailName = "web".parse().unwrap();
        let db: JailName = "db".parse().unwrap();
        let a = ips(&["10.13.37.2", "10.13.37.3"]);
        let b = ips(&["10.13.37.2"]);
        let c = contested([(&web, &a[..]), (&db, &b[..]), (&db, &b[..])]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[&"10.13.37.2".parse::<IpAddr>().unwrap()], vec![web.clone(), db.clone()]);
        let mut f = Fixture::new(kleenet());
        f.contested = c;
        let e = f.select(true, &["10.13.37.2"], None).unwrap_err();
        assert!(e.contains("10.13.37.2 is also claimed by jail db"), "{e}");
        let t = f.select(true, &["10.13.37.2", "10.13.37.3"], None).unwrap();
        assert_eq!(t.inet, Some("10.13.37.3".parse().unwrap()));
    }
}
