//! Conflict checks: which host ports a publication claims, the one index that says whether a
//! claim collides with held ones, and the one rule for jails whose anchor names clash.
//!
//! pf's `rdr` is first-match and `kleene/*` evaluates child anchors alphabetically, so when two
//! publications claim the same port the alphabetically first jail would win silently. Conflicts
//! are therefore refused before anything is loaded.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use rustc_hash::FxHashMap as HashMap;

use super::model::{Family, InterfaceName, JailName, PortRange, Protocol};
use super::publication::Publication;
use super::reach::Reach;
use super::render::Gateways;
use super::spec::Place;

/// Where on the host a claim lands.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClaimPlace {
    Interface(InterfaceName),
    Address(IpAddr),
}

/// What two claims must share to collide: protocol, family and place.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClaimKey {
    pub proto: Protocol,
    pub family: Family,
    pub place: ClaimPlace,
}

/// One (protocol, family, place, host ports) a publication occupies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Claim {
    pub key: ClaimKey,
    pub ports: PortRange,
}

/// The claims of `p`. `families` are the families the jail has target addresses in, or `None`
/// when that is not known yet (the jail is not running): then both families are claimed.
/// A gateway publication claims the current gateway interface of each family and, when the host
/// reaches it (`reach`, the configuration's, narrowed by the publication), the host's loopback
/// address: a loopback publication of the same port would redirect the same connections.
pub fn claims(p: &Publication, families: Option<&[Family]>, gateways: &Gateways, reach: &Reach) -> Claims {
    let mut out = Claims { items: [None, None, None, None] };
    let host = reach.for_publication(&p.reach_off).host;
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
        let lo = match family {
            Family::Inet => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            Family::Inet6 => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        let key = |place| ClaimKey { proto: p.spec.proto, family, place };
        let place = match &p.spec.place {
            Place::Gateway => match gateways.get(family) {
                Some(i) => {
                    if host {
                        out.items[slot + 2] = Some(Claim { key: key(ClaimPlace::Address(lo)), ports: p.spec.host });
                    }
                    ClaimPlace::Interface(i.clone())
                }
                None => continue,
            },
            Place::Interface(i) => ClaimPlace::Interface(i.clone()),
            Place::Address(a) => ClaimPlace::Address(*a),
            Place::Localhost => ClaimPlace::Address(lo),
        };
        out.items[slot] = Some(Claim { key: key(place), ports: p.spec.host });
    }
    out
}

impl IntoIterator for Claims {
    type Item = Claim;
    type IntoIter = std::iter::Flatten<std::array::IntoIter<Option<Claim>, 4>>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter().flatten()
    }
}

/// The claims of one publication: at most two per family, its place and the host's loopback
/// (no allocation of their own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    items: [Option<Claim>; 4],
}

impl Claims {
    pub fn iter(&self) -> impl Iterator<Item = &Claim> {
        self.items.iter().flatten()
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Held claims, so that a claim is checked against all of them in O(log n) (plus the held
/// ranges in its way): per key, the held port ranges by first port, each with its holder `O`.
/// Held ranges never overlap (a claim is held only once [`Index::owner`] found nothing in its
/// way), so the ranges overlapping a claim are the ones just below its last port.
///
/// The one conflict check: the planner holds the accepted publications by seq (older first, so
/// the older wins), and a batch of new publications is checked among itself with
/// [`first_collision`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index<O> {
    by_key: HashMap<ClaimKey, BTreeMap<u16, (u16, O)>>,
}

impl<O> Default for Index<O> {
    fn default() -> Self {
        Index { by_key: HashMap::default() }
    }
}

impl<O: Copy + Ord> Index<O> {
    /// The first holder (the least `O`) of a held range that collides with any of `claims`.
    pub fn owner(&self, claims: &Claims) -> Option<O> {
        claims
            .iter()
            .filter_map(|c| {
                let held = self.by_key.get(&c.key)?;
                let overlapping =
                    held.range(..=c.ports.end()).rev().take_while(|(_, (end, _))| *end >= c.ports.start());
                overlapping.map(|(_, (_, owner))| *owner).min()
            })
            .min()
    }

    /// Holds `claims` for `owner`. Only claims that [`Index::owner`] found free may be held.
    pub fn hold(&mut self, claims: Claims, owner: O) {
        for c in claims {
            self.by_key.entry(c.key).or_default().insert(c.ports.start(), (c.ports.end(), owner));
        }
    }
}

/// The first of `items` whose claims collide with an earlier item's, and the first earlier item
/// it collides with: `(earlier, later)`. For a batch of new publications, before they are
/// planned.
pub fn first_collision<T>(items: impl IntoIterator<Item = (T, Claims)>) -> Option<(T, T)> {
    let mut seen: Vec<T> = Vec::new();
    let mut held = Index::default();
    for (item, claims) in items {
        if let Some(i) = held.owner(&claims) {
            return Some((seen.swap_remove(i), item));
        }
        held.hold(claims, seen.len());
        seen.push(item);
    }
    None
}

/// Two jails that cannot both publish: their anchors below the same parent (or their state
/// files) would be one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameClash<'a> {
    pub jail: &'a JailName,
    /// The jail that has the name already.
    pub other: &'a JailName,
    /// `jail`'s anchor component.
    pub component: String,
}

impl fmt::Display for NameClash<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "jail {} maps to the same anchor name ({}) as jail {}; rename one of them",
            self.jail, self.component, self.other
        )
    }
}

/// Whether `jail` clashes with `other`, another jail: the same anchor component below `parent`,
/// or the same state key ([`JailName::component`], which implies the same anchor component).
pub fn name_clash<'a>(jail: &'a JailName, other: &'a JailName, parent: &str) -> Option<NameClash<'a>> {
    if jail == other {
        return None;
    }
    let component = jail.anchor_component(parent);
    let clash = component == other.anchor_component(parent) || jail.component() == other.component();
    clash.then_some(NameClash { jail, other, component })
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

    fn collide(a: &Claims, b: &Claims) -> bool {
        first_collision([(0, a.clone()), (1, b.clone())]).is_some()
    }

    fn conflict(a: &str, b: &str, g: &Gateways) -> bool {
        let both = Some(&Family::BOTH[..]);
        collide(
            &claims(&publication("a", a), both, g, &Reach::default()),
            &claims(&publication("b", b), both, g, &Reach::default()),
        )
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
        let v4_only = claims(&a, Some(&[Family::Inet]), &g, &Reach::default());
        let v6_gw = claims(&b, Some(&[Family::Inet6]), &g, &Reach::default());
        assert!(!collide(&v4_only, &v6_gw), "IPv4 on em1 and IPv6 on em1 do not collide");
        let pending = claims(&a, None, &g, &Reach::default());
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
        let c = claims(&p, None, &g, &Reach::default());
        assert_eq!(c.len(), 2, "em0 and 127.0.0.1");
        assert!(c.iter().all(|c| c.key.family == Family::Inet));
    }

    #[test]
    fn the_loopback_is_claimed_by_gateway_publications_that_the_host_reaches() {
        let g = gw("em0", Some("em0"));
        assert!(conflict("8080:80", "127.0.0.1:8080:80", &g), "both redirect 127.0.0.1:8080");
        assert!(conflict("8080:80", "localhost:8080:80", &g));
        assert!(conflict("[::1]:8080:80", "localhost:8080:80", &g));
        assert!(!conflict("em1:8080:80", "127.0.0.1:8080:80", &g), "an interface publication keeps off 127.0.0.1");
        assert!(!conflict("8080:80", "127.0.0.1:8081:80", &g));
        let no_host = Reach { host: false, ..Reach::default() };
        let both = Some(&Family::BOTH[..]);
        let a = claims(&publication("a", "8080:80"), both, &g, &no_host);
        let b = claims(&publication("b", "127.0.0.1:8080:80"), both, &g, &no_host);
        assert!(!collide(&a, &b), "without host reach the gateway publication leaves 127.0.0.1 alone");
    }

    #[test]
    fn the_first_holder_is_named() {
        let g = gw("em0", None);
        let c = |spec: &str| claims(&publication("a", spec), None, &g, &Reach::default());
        let mut held = Index::default();
        held.hold(c("8000"), 3);
        held.hold(c("8005"), 1);
        held.hold(c("8000/udp"), 0);
        assert_eq!(held.owner(&c("8000-8010")), Some(1), "the least of the two holders in the way");
        assert_eq!(held.owner(&c("7990-8000")), Some(3));
        assert_eq!(held.owner(&c("8001-8004")), None);
        assert_eq!(held.owner(&c("em1:8000:80")), None, "another place");
        let batch = ["8000", "8005", "9000", "8000-8010"].map(|s| (s, c(s)));
        assert_eq!(first_collision(batch), Some(("8000", "8000-8010")), "the first earlier item, as given");
        assert_eq!(first_collision(["8000", "8001"].map(|s| (s, c(s)))), None);
    }

    /// The one rule, spelled pairwise: same key, overlapping ports.
    fn collides(a: &Claim, b: &Claim) -> bool {
        a.key == b.key && a.ports.overlaps(b.ports)
    }

    proptest::proptest! {
        #[test]
        fn the_index_agrees_with_the_pairwise_rule(
            items in proptest::collection::vec((0u8..2, 0u8..2, 1u16..40, 0u16..6), 1..40)
        ) {
            let g = gw("em0", Some("em1"));
            let mut held = Index::default();
            let mut accepted: Vec<(usize, Claims)> = Vec::new();
            for (i, (proto, place, start, span)) in items.into_iter().enumerate() {
                let proto = ["tcp", "udp"][usize::from(proto)];
                let place = ["", "em1:"][usize::from(place)];
                let ports = format!("{start}-{}", start + span);
                let spec = format!("{place}{ports}:{ports}/{proto}");
                let c = claims(&publication("a", &spec), None, &g, &Reach::default());
                let pairwise = accepted
                    .iter()
                    .filter(|(_, a)| a.iter().any(|x| c.iter().any(|y| collides(x, y))))
                    .map(|(j, _)| *j)
                    .min();
                proptest::prop_assert_eq!(held.owner(&c), pairwise, "{}", spec);
                if pairwise.is_none() {
                    held.hold(c.clone(), i);
                    accepted.push((i, c));
                }
            }
        }
    }
}
