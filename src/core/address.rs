//! Choosing the jail address traffic is redirected to.
//!
//! The jail's first address (per family) inside a configured network, in the order the networks
//! are listed, or inside the one network a publication names; with no networks configured, the
//! jail's first usable address of each family.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::model::{Cidr, Family, NetworkName};
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

/// Whether an address can be a redirect target at all.
pub fn usable(ip: &IpAddr) -> bool {
    let link_local = match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    };
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || link_local)
}

/// The targets for a jail with addresses `addrs`. `Err` says why there is none.
pub fn select_targets(addrs: &[IpAddr], networks: &[Network], only: Option<&NetworkName>) -> Result<Targets, String> {
    let usable_addrs = addrs.iter().copied().filter(usable);
    let targets = if let Some(name) = only {
        let net =
            networks.iter().find(|n| &n.name == name).ok_or_else(|| format!("network {name} is not configured"))?;
        pick(usable_addrs, std::slice::from_ref(net))
    } else if networks.is_empty() {
        Targets::from_addrs(usable_addrs)
    } else {
        pick(usable_addrs, networks)
    };
    if targets.inet.is_some() || targets.inet6.is_some() {
        return Ok(targets);
    }
    let have: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
    let have = if have.is_empty() { "none".to_string() } else { have.join(", ") };
    Err(match only {
        Some(name) => {
            let net = networks.iter().find(|n| &n.name == name).expect("checked above");
            format!("the jail has no address in network {} (its addresses: {have})", net.describe())
        }
        None if networks.is_empty() => format!("the jail has no usable address (its addresses: {have})"),
        None => {
            let nets: Vec<String> = networks.iter().map(Network::describe).collect();
            format!("the jail has no address in the configured networks {} (its addresses: {have})", nets.join(", "))
        }
    })
}

fn pick(addrs: impl Iterator<Item = IpAddr> + Clone, networks: &[Network]) -> Targets {
    let mut t = Targets::default();
    for family in Family::BOTH {
        let found = networks.iter().find_map(|n| {
            let subnet = n.subnet_of(family)?;
            addrs.clone().find(|a| subnet.contains(a))
        });
        match family {
            Family::Inet => t.inet = found,
            Family::Inet6 => t.inet6 = found,
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn without_networks_the_first_usable_address_per_family() {
        let t = select_targets(&ips(&["127.0.0.1", "fe80::1", "192.0.2.5", "10.0.0.1", "fd00::5"]), &[], None).unwrap();
        assert_eq!(t.inet, Some("192.0.2.5".parse().unwrap()));
        assert_eq!(t.inet6, Some("fd00::5".parse().unwrap()));
        let e = select_targets(&ips(&["127.0.0.1"]), &[], None).unwrap_err();
        assert!(e.contains("no usable address (its addresses: 127.0.0.1)"), "{e}");
    }

    #[test]
    fn networks_in_the_order_listed() {
        let nets =
            [net("kleenet", Some("10.13.37.0/24"), Some("fd00:13:37::/64")), net("other", Some("192.0.2.0/24"), None)];
        let t = select_targets(&ips(&["192.0.2.5", "10.13.37.2", "fd00:13:37::2"]), &nets, None).unwrap();
        assert_eq!(t.inet, Some("10.13.37.2".parse().unwrap()));
        assert_eq!(t.inet6, Some("fd00:13:37::2".parse().unwrap()));
        let t = select_targets(&ips(&["192.0.2.5", "10.13.37.2"]), &nets, Some(&"other".parse().unwrap())).unwrap();
        assert_eq!(t.inet, Some("192.0.2.5".parse().unwrap()));
        assert_eq!(t.inet6, None);
        let e = select_targets(&ips(&["198.51.100.1"]), &nets, None).unwrap_err();
        assert!(e.contains("no address in the configured networks kleenet (10.13.37.0/24, fd00:13:37::/64)"), "{e}");
        let e = select_targets(&ips(&["10.13.37.2"]), &nets, Some(&"other".parse().unwrap())).unwrap_err();
        assert!(e.contains("no address in network other (192.0.2.0/24)"), "{e}");
        let e = select_targets(&ips(&["10.13.37.2"]), &nets, Some(&"nope".parse().unwrap())).unwrap_err();
        assert_eq!(e, "network nope is not configured");
    }
}
