//! A publication: one port spec of one jail, with its options.

use serde::{Deserialize, Serialize};

use super::container::Container;
use super::model::{Cidr, Family, JailName, LabelKind, NetworkName};
use super::reach::ReachOff;
use super::spec::PortSpec;

/// What a user asked for: publish `spec` of `jail`, optionally only to `sources`, optionally
/// logged, optionally targeting the jail's address in `network`. A container publication (made
/// by the `kleene-portmap` CNI plugin) also names its `container`: its owner, and the addresses
/// it targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publication {
    pub jail: JailName,
    pub spec: PortSpec,
    /// Source restriction; empty means from any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub log: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkName>,
    /// The container that owns it, for a container publication; absent in state files of
    /// earlier releases. Boxed: most publications have none, and every publication is kept
    /// in memory (and copied into each `ls` and `stats` answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Box<Container>>,
    /// The reaches this publication turned off for itself (none in earlier releases' state).
    #[serde(default, skip_serializing_if = "ReachOff::is_none")]
    pub reach_off: ReachOff,
}

impl Publication {
    /// A publication with its sources sorted and de-duplicated, so that equal requests compare
    /// equal.
    pub fn new(
        jail: JailName,
        spec: PortSpec,
        mut sources: Vec<Cidr>,
        log: bool,
        network: Option<NetworkName>,
    ) -> Publication {
        sources.sort();
        sources.dedup();
        Publication { jail, spec, sources, log, network, container: None, reach_off: ReachOff::default() }
    }

    /// The same publication, owned by `container`.
    pub fn owned(self, container: Container) -> Publication {
        Publication { container: Some(Box::new(container)), ..self }
    }

    /// Who holds its host port, for messages: `jail web`, or `container 3f6940ab5ab4 (CNI
    /// network podman) in jail web`.
    pub fn holder(&self) -> String {
        match &self.container {
            None => format!("jail {}", self.jail),
            Some(c) => format!("{} in jail {}", c.owner(), self.jail),
        }
    }

    /// The same publication with `off` turned off.
    pub fn with_reach_off(self, off: ReachOff) -> Publication {
        Publication { reach_off: off, ..self }
    }

    /// The sources of one family; `None` means from any.
    pub fn sources_of(&self, family: Family) -> Option<Vec<Cidr>> {
        if self.sources.is_empty() {
            None
        } else {
            Some(self.sources.iter().copied().filter(|c| c.family() == family).collect())
        }
    }

    /// The label carried by this publication's pass rules: `kleene:<jail>:<spec>` when that
    /// fits pf's 63 characters, else `kleene:` and a 16-digit hash of the same text. Unique per
    /// (jail, spec), so that `pfctl -k label -k LABEL` kills only this publication's states.
    pub fn label(&self) -> String {
        LabelKind::Publication.label(&format!("{}:{}", self.jail.component(), self.spec))
    }

    /// The tag this publication's rdr rules put on what they translate, and that its pass and
    /// nat rules require (`tagged`): its label, so unique per (jail, spec) and within pf's 63
    /// characters.
    pub fn tag(&self) -> String {
        self.label()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(jail: &str, spec: &str) -> Publication {
        Publication::new(jail.parse().unwrap(), spec.parse().unwrap(), vec![], false, None)
    }

    #[test]
    fn labels_fit_pf() {
        assert_eq!(publication("web", "8080:80").label(), "kleene:web:8080:80/tcp");
        let long = publication(&"w".repeat(60), "[2001:db8::10]:8000-8010:9000/udp");
        assert!(long.label().len() <= 63);
        assert_eq!(long.label(), "kleene:0a96bbe43515175b", "the hashed form never changes");
        assert_ne!(long.label(), publication(&"w".repeat(60), "[2001:db8::10]:8000-8010:9000/tcp").label());
    }

    #[test]
    fn sources_are_normalised() {
        let a = Publication::new(
            "web".parse().unwrap(),
            "80".parse().unwrap(),
            vec!["198.51.100.7".parse().unwrap(), "192.0.2.0/24".parse().unwrap(), "198.51.100.7".parse().unwrap()],
            false,
            None,
        );
        assert_eq!(a.sources.len(), 2);
        assert_eq!(a.sources[0].to_string(), "192.0.2.0/24");
        assert_eq!(a.sources_of(Family::Inet6), Some(vec![]));
        assert_eq!(publication("web", "80").sources_of(Family::Inet), None);
    }

    #[test]
    fn yaml_round_trip() {
        let p = Publication::new(
            "web".parse().unwrap(),
            "em1:8080:80/udp".parse().unwrap(),
            vec!["192.0.2.0/24".parse().unwrap()],
            true,
            Some("kleenet".parse().unwrap()),
        );
        let text = serde_yaml::to_string(&p).unwrap();
        assert!(text.contains("spec: em1:8080:80/udp"), "{text}");
        assert_eq!(serde_yaml::from_str::<Publication>(&text).unwrap(), p);
        assert!(serde_yaml::from_str::<Publication>("jail: web\nspec: 'em1:8080'\n").is_err());
        assert!(serde_yaml::from_str::<Publication>("jail: web\nspec: '80'\nbogus: 1\n").is_err());
    }

    #[test]
    fn a_container_publication_names_its_owner_and_round_trips() {
        let c = Container {
            id: "3f6940ab5ab43bc522569d15b23f8c1b".parse().unwrap(),
            network: "podman".parse().unwrap(),
            addresses: vec!["10.88.0.5".parse().unwrap()],
        };
        let p = publication("cni-1", "8080:80").owned(c);
        assert_eq!(p.holder(), "container 3f6940ab5ab4 (CNI network podman) in jail cni-1");
        assert_eq!(publication("web", "80").holder(), "jail web");
        let text = serde_yaml::to_string(&p).unwrap();
        assert!(
            text.ends_with(
                "container:\n  id: 3f6940ab5ab43bc522569d15b23f8c1b\n  network: podman\n  addresses:\n  - 10.88.0.5\n"
            ),
            "{text}"
        );
        assert_eq!(serde_yaml::from_str::<Publication>(&text).unwrap(), p);
        assert_eq!(p.label(), "kleene:cni-1:8080:80/tcp", "the label is the jail's and the spec's, as before");
        assert!(!serde_yaml::to_string(&publication("web", "80")).unwrap().contains("container"));
    }

    #[test]
    fn reach_off_is_stored_only_when_something_is_off() {
        let p = publication("web", "8080:80");
        assert!(!serde_yaml::to_string(&p).unwrap().contains("reach_off"), "earlier releases' form");
        let off = p.with_reach_off(ReachOff { hairpin: true, ..ReachOff::default() });
        let text = serde_yaml::to_string(&off).unwrap();
        assert!(text.contains("reach_off:\n  hairpin: true\n"), "{text}");
        assert_eq!(serde_yaml::from_str::<Publication>(&text).unwrap(), off);
        let old = "jail: web\nspec: 8080:80/tcp\nlog: true\n";
        assert_eq!(serde_yaml::from_str::<Publication>(old).unwrap().reach_off, ReachOff::default());
    }
}
