//! Conflict checks: which host ports a publication claims, and whether two claims collide.
//!
//! pf's `rdr` is first-match and `kleene/*` evaluates child anchors alphabetically, so when two
//! publications claim the same port the alphabetically first jail would win silently. Conflicts
//! are therefore refused before anything is loaded.

use std::net::IpAddr;

use super::model::{Family, InterfaceName, PortRange, Protocol};
use super::publication::Publication;
use super::render::Gateways;
use super::spec::Place;

/// Where on the host a claim lands.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClaimPlace<'a> {
    Interface(&'a InterfaceName),
    Address(IpAddr),
}

/// One (protocol, family, place, host ports) a publication occupies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Claim<'a> {
    pub proto: Protocol,
    pub family: Family,
    pub place: ClaimPlace<'a>,
    pub ports: PortRange,
}

impl Claim<'_> {
    /// Same protocol, family and place, and overlapping host ports.
    pub fn collides(&self, other: &Claim) -> bool {
        self.proto == other.proto
            && self.family == other.family
            && self.place == other.place
            && self.ports.overlaps(other.ports)
    }
}

/// The claims of `p`. `families` are the families the jail has target addresses in, or `None`
/// when that is not known yet (the jail is not running): then both families are claimed.
/// A gateway publication claims the current gateway interface of each family.
pub fn claims<'a>(p: &'a Publication, families: Option<&[Family]>, gateways: &'a Gateways) -> Claims<'a> {
    let mut out = Claims { items: [None, None] };
    for (slot, family) in Family::BOTH.into_iter().enumerate() {
        if families.is_some_and(|f| !f.contains(&family)) {
            continue;
        }
        if p.spec.fixed_family().is_some_and(|f| f != family) {
            continue;
        }
        if p.sources_of(family).is_some_and(|s| s.is_empty()) {
            continue;
        }
        let place = match &p.spec.place {
            Place::Gateway => match gateways.get(family) {
                Some(i) => ClaimPlace::Interface(i),
                None => continue,
            },
            Place::Interface(i) => ClaimPlace::Interface(i),
            Place::Address(a) => ClaimPlace::Address(*a),
        };
        out.items[slot] = Some(Claim { proto: p.spec.proto, family, place, ports: p.spec.host });
    }
    out
}

impl<'a> IntoIterator for Claims<'a> {
    type Item = Claim<'a>;
    type IntoIter = std::iter::Flatten<std::array::IntoIter<Option<Claim<'a>>, 2>>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter().flatten()
    }
}

/// The claims of one publication: at most one per family (no allocation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims<'a> {
    items: [Option<Claim<'a>>; 2],
}

impl<'a> Claims<'a> {
    pub fn iter(&self) -> impl Iterator<Item = &Claim<'a>> {
        self.items.iter().flatten()
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether any claim of `a` collides with any claim of `b`.
pub fn collide(a: &Claims, b: &Claims) -> bool {
    a.iter().any(|x| b.iter().any(|y| x.collides(y)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(jail: &str, spec: &str) -> Publication {
        Publication::new(jail.parse().unwrap(), spec.parse().unwrap(), vec![], false, None)
    }

    fn gw(v4: &str, v6: Option<&str>) -> Gateways {
        Gateways { inet: Some(v4.parse().unwrap()), inet6: v6.map(|s| s.parse().unwrap()) }
    }

    fn conflict(a: &str, b: &str, g: &Gateways) -> bool {
        let both = Some(&Family::BOTH[..]);
        collide(&claims(&publication("a", a), both, g), &claims(&publication("b", b), both, g))
    }

    #[test]
    fn the_rules() {
        let g = gw("em0", Some("em0"));
        assert!(conflict("8080", "8080:80", &g));
        assert!(conflict("8000-8010", "8010:80", &g));
        assert!(!conflict("8000-8010", "8011:80", &g));
        assert!(!conflict("8080/tcp", "8080/udp", &g), "protocols differ");
        assert!(!conflict("em1:8080:80", "em0:8080:80", &g), "interfaces differ");
        assert!(conflict("8080", "em0:8080:80", &g), "the gateway is em0");
        assert!(!conflict("8080", "em1:8080:80", &g));
        assert!(conflict("192.0.2.10:8080:80", "192.0.2.10:8080:81", &g));
        assert!(!conflict("192.0.2.10:8080:80", "192.0.2.11:8080:80", &g));
        assert!(!conflict("192.0.2.10:8080:80", "8080", &g), "an address is not an interface");
    }

    #[test]
    fn families_separate_claims() {
        let g = gw("em0", Some("em1"));
        assert!(!conflict("em1:8080:80", "8080", &gw("em0", None)));
        let (a, b) = (publication("a", "em1:8080:80"), publication("b", "8080"));
        let v4_only = claims(&a, Some(&[Family::Inet]), &g);
        let v6_gw = claims(&b, Some(&[Family::Inet6]), &g);
        assert!(!collide(&v4_only, &v6_gw), "IPv4 on em1 and IPv6 on em1 do not collide");
        let pending = claims(&a, None, &g);
        assert!(collide(&pending, &v6_gw), "a pending jail claims both families");
    }

    #[test]
    fn source_restricted_to_one_family_claims_only_it() {
        let p = Publication::new(
            "a".parse().unwrap(),
            "8080".parse().unwrap(),
            vec!["192.0.2.0/24".parse().unwrap()],
            false,
            None,
        );
        let g = gw("em0", Some("em0"));
        let c = claims(&p, None, &g);
        assert_eq!(c.len(), 1);
        assert_eq!(c.iter().next().unwrap().family, Family::Inet);
    }
}
