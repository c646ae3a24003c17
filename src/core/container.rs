//! Container publications: the owner a CNI runtime gives a publication, through the
//! `kleene-portmap` plugin.
//!
//! A container engine (Podman, Buildah, containerd) publishes a container's ports through the
//! agent; those publications belong to the container, not to an administrator: they are removed
//! together when the engine tears the container's network down (CNI `DEL`, keyed by the CNI
//! network name and the container id, as the CNI specification keys a plugin's state), and they
//! target the addresses the engine gave the container (its `prevResult`), not whatever the jail
//! reports, since the engine is the authority on where the container is.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::model::{InvalidValue, string_serde};

/// The longest container id or CNI network name accepted (engines use 64 hex digits).
pub const MAX_NAME: usize = 255;

/// How many characters of a container id `ls` shows (as `podman ps` does).
pub const SHORT: usize = 12;

/// A name the CNI specification restricts to an alphanumeric character followed by
/// alphanumerics, `_`, `.` or `-`: a container id (`CNI_CONTAINERID`) or a network name (the
/// network configuration's `name`). At most [`MAX_NAME`] characters here.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CniName(String);

impl CniName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Validates `s` as the value called `what` (`container id`, `CNI network name`).
    pub fn parse_as(what: &'static str, s: &str) -> Result<CniName, InvalidValue> {
        let ok = (1..=MAX_NAME).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if ok {
            Ok(CniName(s.to_string()))
        } else {
            Err(InvalidValue::new(
                what,
                s,
                format!(
                    "it is 1-{MAX_NAME} letters, digits, '_', '.' or '-', starting with a letter or digit (the CNI \
                     specification's rule)"
                ),
            ))
        }
    }

    /// The first [`SHORT`] characters, as `ls` shows a container id.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(SHORT)]
    }
}

impl FromStr for CniName {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CniName::parse_as("container id", s)
    }
}

impl fmt::Display for CniName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_serde!(CniName);

/// Who owns a container publication: the container `id` attached to the CNI network
/// `network`. Unpublishing by owner removes every publication with the same owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    pub id: CniName,
    pub network: CniName,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "container {} (CNI network {})", self.id.short(), self.network)
    }
}

/// What a container publication carries beyond a jail's: its owner and the addresses the
/// runtime gave the container, which are its targets (the first acceptable one of each family).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    pub id: CniName,
    pub network: CniName,
    /// At least one.
    pub addresses: Vec<IpAddr>,
}

impl Container {
    /// Its owner: the id and the network.
    pub fn owner(&self) -> Owner {
        Owner { id: self.id.clone(), network: self.network.clone() }
    }

    /// Whether `owner` owns it.
    pub fn owned_by(&self, owner: &Owner) -> bool {
        self.id == owner.id && self.network == owner.network
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_cni_rule() {
        for ok in ["a", "0123456789abcdef", "pod_1.x-y", &"f".repeat(255)] {
            assert_eq!(ok.parse::<CniName>().unwrap().as_str(), ok);
        }
        for bad in ["", "-a", "_a", ".a", "a b", "a/b", "a;b", "a\n", "é", &"f".repeat(256)] {
            let e = bad.parse::<CniName>().unwrap_err();
            assert!(e.to_string().starts_with("invalid container id "), "{e}");
        }
        let e = CniName::parse_as("CNI network name", "a:b").unwrap_err();
        assert!(e.to_string().starts_with("invalid CNI network name \"a:b\": it is 1-255 letters"), "{e}");
    }

    #[test]
    fn ids_are_shown_short() {
        let id: CniName = "3f6940ab5ab43bc522569d15b23f8c1bbde1d7678b080398506924fc01d72755".parse().unwrap();
        assert_eq!(id.short(), "3f6940ab5ab4");
        assert_eq!("abc".parse::<CniName>().unwrap().short(), "abc");
        let owner = Owner { id, network: "podman".parse().unwrap() };
        assert_eq!(owner.to_string(), "container 3f6940ab5ab4 (CNI network podman)");
    }

    #[test]
    fn a_container_is_stored_flat_and_strictly() {
        let c = Container {
            id: "c1".parse().unwrap(),
            network: "podman".parse().unwrap(),
            addresses: vec!["10.88.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
        };
        let text = serde_yaml::to_string(&c).unwrap();
        assert_eq!(text, "id: c1\nnetwork: podman\naddresses:\n- 10.88.0.5\n- fd00::5\n");
        assert_eq!(serde_yaml::from_str::<Container>(&text).unwrap(), c);
        assert!(serde_yaml::from_str::<Container>("id: c1\nnetwork: podman\naddresses: []\nx: 1\n").is_err());
        assert!(c.owned_by(&c.owner()));
        assert!(serde_yaml::from_str::<Container>("id: -c1\nnetwork: podman\naddresses: []\n").is_err());
    }
}
