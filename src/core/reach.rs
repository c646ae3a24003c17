//! Who can reach a published port besides the outside world: other jails through the published
//! address (hairpin), jails of the configured networks directly (Kleene's promise), the host
//! itself (through lo0), and publications on the host's loopback only.
//!
//! The agent's configuration switches each reach on or off for every publication ([`Reach`]);
//! a publication can turn some off for itself ([`ReachOff`], stored with it). What one
//! publication gets is [`Reach::for_publication`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// The reaches switched on in the agent's configuration (`reach:`). Every one is on by default:
/// a published port is meant to be reachable, and users coming from Docker expect all of them;
/// each rule admits only traffic to the published port that this publication's own rdr
/// translated (or, for `networks`, traffic from the configured networks to the jail's port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reach {
    /// Other jails reach the published address and port (rdr on lo0 and on the jail networks'
    /// interfaces; a nat for VNET jails of the target's own network).
    pub hairpin: bool,
    /// Jails of the configured networks reach the jail's own address and port, whatever the
    /// main ruleset says about traffic between networks (every protocol).
    pub networks: bool,
    /// The host reaches the published port on 127.0.0.1 / ::1 and on its own address.
    pub host: bool,
    /// Publications on the host's loopback only (`127.0.0.1:8080:80`, `[::1]:...`,
    /// `localhost:...`) are allowed.
    pub loopback: bool,
}

impl Default for Reach {
    fn default() -> Self {
        Reach { hairpin: true, networks: true, host: true, loopback: true }
    }
}

/// The reaches one publication turned off for itself (`--no-hairpin`, `--no-networks`,
/// `--no-host`). Stored with the publication; absent in state files of earlier releases, which
/// therefore load as "nothing turned off".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReachOff {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hairpin: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub networks: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub host: bool,
}

impl ReachOff {
    /// Nothing turned off.
    pub fn is_none(&self) -> bool {
        *self == ReachOff::default()
    }
}

impl Reach {
    /// What a publication that turned `off` off gets under this configuration.
    pub fn for_publication(&self, off: &ReachOff) -> Reach {
        Reach {
            hairpin: self.hairpin && !off.hairpin,
            networks: self.networks && !off.networks,
            host: self.host && !off.host,
            loopback: self.loopback,
        }
    }
}

/// Where a publication can be reached from, as `ls --json` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum From {
    /// Through the published interface or address, from outside the host.
    Outside,
    /// From other jails, through the published address and port.
    Jails,
    /// From jails of the configured networks, at the jail's own address and port.
    Networks,
    /// From the host itself (127.0.0.1 / ::1 and the published address).
    Host,
}

/// A set of [`From`]s, kept in a byte: every publication's plan entry and rendering holds one,
/// and a vector each was two allocations per publication.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Reached(u8);

impl Reached {
    const ALL: [From; 4] = [From::Outside, From::Jails, From::Networks, From::Host];

    pub fn insert(&mut self, from: From) {
        self.0 |= 1 << from as u8;
    }

    pub fn contains(self, from: From) -> bool {
        self.0 & (1 << from as u8) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The members, in [`From`]'s order.
    pub fn iter(self) -> impl Iterator<Item = From> {
        Reached::ALL.into_iter().filter(move |f| self.contains(*f))
    }

    pub fn to_vec(self) -> Vec<From> {
        self.iter().collect()
    }
}

impl FromIterator<From> for Reached {
    fn from_iter<I: IntoIterator<Item = From>>(froms: I) -> Reached {
        let mut r = Reached::default();
        for f in froms {
            r.insert(f);
        }
        r
    }
}

impl fmt::Display for From {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            From::Outside => "outside",
            From::Jails => "jails",
            From::Networks => "networks",
            From::Host => "host",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reached_set_holds_each_from_once_in_order() {
        let r: Reached = [From::Host, From::Outside, From::Host].into_iter().collect();
        assert_eq!(r.to_vec(), [From::Outside, From::Host]);
        assert!(r.contains(From::Host) && !r.contains(From::Jails) && !r.is_empty());
        assert!(Reached::default().is_empty());
        let all: Reached = Reached::ALL.into_iter().rev().collect();
        assert_eq!(all.to_vec(), Reached::ALL);
    }

    #[test]
    fn defaults_are_all_on_and_a_publication_only_turns_off() {
        let all = Reach::default();
        assert_eq!(all.for_publication(&ReachOff::default()), all);
        let off = ReachOff { hairpin: true, ..ReachOff::default() };
        assert!(!all.for_publication(&off).hairpin && all.for_publication(&off).host);
        let none = Reach { hairpin: false, networks: false, host: false, loopback: false };
        assert_eq!(none.for_publication(&ReachOff::default()), none, "a publication cannot turn on");
    }

    #[test]
    fn serde_forms() {
        assert!(ReachOff::default().is_none());
        let off = ReachOff { host: true, ..ReachOff::default() };
        assert_eq!(serde_yaml::to_string(&off).unwrap(), "host: true\n");
        assert_eq!(serde_yaml::from_str::<ReachOff>("host: true\n").unwrap(), off);
        assert!(serde_yaml::from_str::<ReachOff>("bogus: true\n").is_err());
        assert!(serde_yaml::from_str::<Reach>("hairpin: false\n").unwrap().host);
    }
}
