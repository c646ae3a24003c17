//! Rendering one jail's anchor: structured pf rules, then their text.
//!
//! One `rdr` and one `pass in quick` rule per publication x family x interface; every
//! translation rule comes before every filter rule, as pf requires. The text is built only from
//! validated values (see `model`), so nothing a user typed reaches pf verbatim.

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use super::model::{Cidr, Family, InterfaceName, PortRange, Protocol};
use super::publication::Publication;
use super::spec::{Place, PortSpec};

/// The jail's addresses that traffic is redirected to: at most one per family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    pub inet: Option<IpAddr>,
    pub inet6: Option<IpAddr>,
}

impl Targets {
    /// Targets from a list of addresses: the first of each family wins.
    pub fn from_addrs(addrs: impl IntoIterator<Item = IpAddr>) -> Targets {
        let mut t = Targets::default();
        for a in addrs {
            let slot = match Family::of(&a) {
                Family::Inet => &mut t.inet,
                Family::Inet6 => &mut t.inet6,
            };
            slot.get_or_insert(a);
        }
        t
    }

    pub fn get(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::Inet => self.inet,
            Family::Inet6 => self.inet6,
        }
    }
}

/// The host's gateway interfaces (those of the default routes), per family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gateways {
    pub inet: Option<InterfaceName>,
    pub inet6: Option<InterfaceName>,
}

impl Gateways {
    pub fn get(&self, family: Family) -> Option<&InterfaceName> {
        match family {
            Family::Inet => self.inet.as_ref(),
            Family::Inet6 => self.inet6.as_ref(),
        }
    }
}

/// The destination a translation rule matches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dest {
    /// `(em0)`: the interface's addresses, followed when they change.
    Interface(InterfaceName),
    /// One host address.
    Address(IpAddr),
}

/// One pf rule, structured. `kind` decides which fields apply.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// `rdr [on IF] FAMILY proto P from SRC to DEST port HOST -> TARGET port JAIL`
    Rdr {
        on: Option<InterfaceName>,
        family: Family,
        proto: Protocol,
        from: Vec<Cidr>,
        to: Dest,
        port: PortRange,
        target: IpAddr,
        target_port: PortRange,
    },
    /// `pass in [log] quick [on IF] FAMILY proto P from SRC to TARGET port JAIL [label "L"]...`
    Pass {
        log: bool,
        on: Option<InterfaceName>,
        family: Family,
        proto: Protocol,
        from: Vec<Cidr>,
        to: IpAddr,
        port: PortRange,
        /// pf keeps up to five labels per rule; `pfctl -k label -k L` matches any of them.
        labels: Vec<String>,
    },
}

fn write_from(f: &mut fmt::Formatter<'_>, from: &[Cidr]) -> fmt::Result {
    match from {
        [] => f.write_str("from any"),
        [one] => write!(f, "from {one}"),
        many => {
            f.write_str("from { ")?;
            for (i, c) in many.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str(" }")
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Rdr { on, family, proto, from, to, port, target, target_port } => {
                f.write_str("rdr ")?;
                if let Some(i) = on {
                    write!(f, "on {} ", i.pf())?;
                }
                write!(f, "{family} proto {proto} ")?;
                write_from(f, from)?;
                match to {
                    Dest::Interface(i) => write!(f, " to ({})", i.pf())?,
                    Dest::Address(a) => write!(f, " to {a}")?,
                }
                let tp = if port.is_single() { target_port.pf() } else { format!("{}:*", target_port.start()) };
                write!(f, " port {} -> {target} port {tp}", port.pf())
            }
            Rule::Pass { log, on, family, proto, from, to, port, labels } => {
                f.write_str(if *log { "pass in log quick " } else { "pass in quick " })?;
                if let Some(i) = on {
                    write!(f, "on {} ", i.pf())?;
                }
                write!(f, "{family} proto {proto} ")?;
                write_from(f, from)?;
                write!(f, " to {to} port {}", port.pf())?;
                for l in labels {
                    write!(f, " label \"{l}\"")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a family of a publication produced no rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub spec: PortSpec,
    pub family: Family,
    pub reason: String,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: no {} rules: {}", self.spec, self.family.human(), self.reason)
    }
}

/// What one publication rendered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub rdr: Vec<Rule>,
    pub pass: Vec<Rule>,
    pub skipped: Vec<Skip>,
    /// Interfaces the rules are on (empty for an address publication).
    pub interfaces: Vec<InterfaceName>,
}

impl Rendered {
    /// Whether any rule was produced.
    pub fn is_active(&self) -> bool {
        !self.rdr.is_empty()
    }
}

/// Renders one publication for the given targets and gateways.
pub fn render_publication(p: &Publication, targets: &Targets, gateways: &Gateways) -> Rendered {
    let mut out = Rendered { rdr: vec![], pass: vec![], skipped: vec![], interfaces: vec![] };
    let spec = &p.spec;
    let labels = vec![p.label(), p.jail.label()];
    for family in Family::BOTH {
        let skip = |reason: String| Skip { spec: spec.clone(), family, reason };
        if spec.fixed_family().is_some_and(|f| f != family) {
            continue;
        }
        let Some(target) = targets.get(family) else {
            out.skipped.push(skip(format!("the jail has no {} address", family.human())));
            continue;
        };
        let (on, to) = match &spec.place {
            Place::Gateway => match gateways.get(family) {
                Some(i) => (Some(i.clone()), Dest::Interface(i.clone())),
                None => {
                    out.skipped.push(skip(format!("the host has no {} default route", family.human())));
                    continue;
                }
            },
            Place::Interface(i) => (Some(i.clone()), Dest::Interface(i.clone())),
            Place::Address(a) => (None, Dest::Address(*a)),
        };
        let from = match p.sources_of(family) {
            None => vec![],
            Some(s) if s.is_empty() => {
                out.skipped.push(skip(format!("no {} source is allowed", family.human())));
                continue;
            }
            Some(s) => s,
        };
        if let Some(i) = &on {
            if !out.interfaces.contains(i) {
                out.interfaces.push(i.clone());
            }
        }
        out.rdr.push(Rule::Rdr {
            on: on.clone(),
            family,
            proto: spec.proto,
            from: from.clone(),
            to,
            port: spec.host,
            target,
            target_port: spec.jail,
        });
        out.pass.push(Rule::Pass {
            log: p.log,
            on,
            family,
            proto: spec.proto,
            from,
            to: target,
            port: spec.jail,
            labels: labels.clone(),
        });
    }
    out
}

/// A jail's whole anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// Per publication, in the order rendered (sorted by spec).
    pub publications: Vec<(Publication, Rendered)>,
}

impl Anchor {
    /// Every rule, translation rules first.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        let rdr = self.publications.iter().flat_map(|(_, r)| r.rdr.iter());
        rdr.chain(self.publications.iter().flat_map(|(_, r)| r.pass.iter()))
    }

    /// The text to load with `pfctl -a ANCHOR -f -`; empty when there is no rule.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for r in self.rules() {
            writeln!(s, "{r}").expect("writing to a String");
        }
        s
    }

    pub fn skipped(&self) -> impl Iterator<Item = &Skip> {
        self.publications.iter().flat_map(|(_, r)| r.skipped.iter())
    }

    pub fn is_empty(&self) -> bool {
        self.rules().next().is_none()
    }
}

/// Renders the anchor of one jail from its publications, each with the targets chosen for it
/// (sorted here by spec, so that the text does not depend on the order they were published in).
pub fn render_anchor<'a>(items: impl IntoIterator<Item = (&'a Publication, Targets)>, gateways: &Gateways) -> Anchor {
    let mut items: Vec<(&Publication, Targets)> = items.into_iter().collect();
    items.sort_by(|a, b| a.0.spec.cmp(&b.0.spec));
    Anchor { publications: items.into_iter().map(|(p, t)| (p.clone(), render_publication(p, &t, gateways))).collect() }
}

/// Renders publications that all share one set of targets.
pub fn render_uniform<'a>(
    pubs: impl IntoIterator<Item = &'a Publication>,
    targets: &Targets,
    gateways: &Gateways,
) -> Anchor {
    render_anchor(pubs.into_iter().map(|p| (p, targets.clone())), gateways)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(spec: &str) -> Publication {
        Publication::new("web".parse().unwrap(), spec.parse().unwrap(), vec![], false, None)
    }

    fn v4() -> Targets {
        Targets::from_addrs(["10.13.37.2".parse().unwrap()])
    }

    fn em0() -> Gateways {
        Gateways { inet: Some("em0".parse().unwrap()), inet6: Some("em0".parse().unwrap()) }
    }

    fn text(specs: &[&str], t: &Targets, g: &Gateways) -> String {
        let pubs: Vec<Publication> = specs.iter().map(|s| publication(s)).collect();
        render_uniform(&pubs, t, g).text()
    }

    #[test]
    fn the_issue_forms() {
        let t = text(&["em1:8080:80/udp"], &v4(), &em0());
        assert_eq!(
            t,
            "rdr on em1 inet proto udp from any to (em1) port 8080 -> 10.13.37.2 port 80\n\
             pass in quick on em1 inet proto udp from any to 10.13.37.2 port 80 label \"kleene:web:em1:8080:80/udp\" label \"kleene/web\"\n"
        );
        let t = text(&["8000-8010:9000"], &v4(), &em0());
        assert!(
            t.contains("rdr on em0 inet proto tcp from any to (em0) port 8000:8010 -> 10.13.37.2 port 9000:*\n"),
            "{t}"
        );
        assert!(t.contains("pass in quick on em0 inet proto tcp from any to 10.13.37.2 port 9000:9010 label"), "{t}");
        let both = Targets::from_addrs(["10.13.37.2".parse().unwrap(), "fd00:13:37::2".parse().unwrap()]);
        let t = text(&["8080:80"], &both, &em0());
        assert!(t.contains("rdr on em0 inet6 proto tcp from any to (em0) port 8080 -> fd00:13:37::2 port 80\n"), "{t}");
        let t = text(&["192.0.2.10:8080:80"], &both, &em0());
        assert!(t.starts_with("rdr inet proto tcp from any to 192.0.2.10 port 8080 -> 10.13.37.2 port 80\n"), "{t}");
        assert!(t.contains("\npass in quick inet proto tcp from any to 10.13.37.2 port 80 label"), "{t}");
        assert!(!t.contains("inet6"), "an IPv4 address publication has no IPv6 rules: {t}");
    }

    #[test]
    fn translation_before_filtering() {
        let t = text(&["8080:80", "em1:53:53/udp", "9000-9001"], &v4(), &em0());
        let kinds: Vec<&str> = t.lines().map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(kinds, ["rdr", "rdr", "rdr", "pass", "pass", "pass"]);
    }

    #[test]
    fn order_does_not_depend_on_publish_order() {
        assert_eq!(
            text(&["8080:80", "em1:53:53/udp"], &v4(), &em0()),
            text(&["em1:53:53/udp", "8080:80"], &v4(), &em0())
        );
    }

    #[test]
    fn families_skipped_and_reported() {
        let pubs = [publication("8080:80")];
        let a = render_uniform(&pubs, &v4(), &Gateways { inet: Some("em0".parse().unwrap()), inet6: None });
        let skipped: Vec<String> = a.skipped().map(|s| s.to_string()).collect();
        assert_eq!(skipped, ["8080:80/tcp: no IPv6 rules: the jail has no IPv6 address"]);
        let v6only = Targets::from_addrs(["fd00::2".parse().unwrap()]);
        let a = render_uniform(&pubs, &v6only, &Gateways { inet: Some("em0".parse().unwrap()), inet6: None });
        assert!(a.is_empty());
        let skipped: Vec<String> = a.skipped().map(|s| s.to_string()).collect();
        assert_eq!(
            skipped,
            [
                "8080:80/tcp: no IPv4 rules: the jail has no IPv4 address",
                "8080:80/tcp: no IPv6 rules: the host has no IPv6 default route"
            ]
        );
        let v6pub = [publication("[2001:db8::10]:8080:80")];
        let a = render_uniform(&v6pub, &v4(), &em0());
        assert!(a.is_empty());
        assert_eq!(a.skipped().count(), 1);
    }

    #[test]
    fn sources_and_log() {
        let p = Publication::new(
            "web".parse().unwrap(),
            "8080:80".parse().unwrap(),
            vec!["198.51.100.7".parse().unwrap(), "192.0.2.0/24".parse().unwrap(), "2001:db8::/32".parse().unwrap()],
            true,
            None,
        );
        let both = Targets::from_addrs(["10.13.37.2".parse().unwrap(), "fd00::2".parse().unwrap()]);
        let t = render_uniform([&p], &both, &em0()).text();
        assert!(t.contains("rdr on em0 inet proto tcp from { 192.0.2.0/24, 198.51.100.7 } to (em0) port 8080 -> 10.13.37.2 port 80\n"), "{t}");
        assert!(t.contains("rdr on em0 inet6 proto tcp from 2001:db8::/32 to (em0)"), "{t}");
        assert!(t.contains("pass in log quick on em0 inet proto tcp from { 192.0.2.0/24, 198.51.100.7 } to 10.13.37.2 port 80 label"), "{t}");
        let v6src = Publication::new(
            "web".parse().unwrap(),
            "8080:80".parse().unwrap(),
            vec!["2001:db8::/32".parse().unwrap()],
            false,
            None,
        );
        let a = render_uniform([&v6src], &both, &em0());
        assert!(!a.text().contains(" inet "), "no IPv4 source means no IPv4 rules");
        assert_eq!(a.skipped().next().unwrap().reason, "no IPv4 source is allowed");
    }

    #[test]
    fn gateway_families_may_differ() {
        let both = Targets::from_addrs(["10.13.37.2".parse().unwrap(), "fd00::2".parse().unwrap()]);
        let g = Gateways { inet: Some("em0".parse().unwrap()), inet6: Some("em1".parse().unwrap()) };
        let pubs = [publication("8080:80")];
        let a = render_uniform(&pubs, &both, &g);
        assert!(a.text().contains("rdr on em1 inet6"));
        assert_eq!(a.publications[0].1.interfaces.len(), 2);
    }

    #[test]
    fn interface_names_that_are_pf_keywords_are_quoted() {
        let t = text(&["any:8080:80", "inet6:53:53/udp"], &v4(), &em0());
        assert!(
            t.contains("rdr on \"any\" inet proto tcp from any to (\"any\") port 8080 -> 10.13.37.2 port 80\n"),
            "{t}"
        );
        assert!(t.contains("pass in quick on \"inet6\" inet proto udp"), "{t}");
        assert!(text(&["em1:8080:80"], &v4(), &em0()).contains("rdr on em1 inet"));
    }

    #[test]
    fn empty_anchor_is_empty_text() {
        let none: [Publication; 0] = [];
        assert_eq!(render_uniform(&none, &v4(), &em0()).text(), "");
    }
}
