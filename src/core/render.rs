//! Rendering one jail's anchor: structured pf rules, then their text.
//!
//! Per publication and family: the `rdr` on the published interface (or to the published
//! address) that the outside world uses, and, as the configuration and the publication allow
//! (see `reach`), an `rdr` on lo0 for the host and the host's non-VNET jails, an `rdr` on each
//! jail network's interface for VNET jails (hairpin), a `nat` that makes a VNET jail's reply to
//! a client of its own network, or to the host's loopback, come back through the host, and a
//! `pass in quick` from the configured networks straight to the jail's port. Every `rdr` tags
//! what it translates with the publication's tag, and the publication's `pass` rules (and
//! `nat`) require that tag (`tagged`): a packet routed straight to the jail's address is not
//! admitted by them. Every translation rule comes before every filter rule, as pf requires. The
//! text is built only from validated values (see `model`), so nothing a user typed reaches pf
//! verbatim.

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use super::model::{Cidr, Family, InterfaceName, OUTBOUND_LABEL, PortRange, Protocol};
use super::publication::Publication;
use super::reach::{From, Reach, Reached};
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

/// What rendering needs to know beyond one jail: the gateways, the reaches the configuration
/// switches on, the configured networks, and the host's own addresses on the jail networks'
/// interfaces (read from `ifconfig -a`: the interface holding a host address inside a
/// configured network is that network's interface, a bridge for VNET jails).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostView {
    pub gateways: Gateways,
    pub reach: Reach,
    /// The configured networks' prefixes, of both families, in the order configured.
    pub networks: Vec<Cidr>,
    /// The host's addresses inside configured networks, with their interfaces.
    pub links: Vec<(InterfaceName, IpAddr)>,
}

impl HostView {
    /// Every reach on, no network, no link: what a host without `networks` looks like.
    pub fn new(gateways: Gateways) -> HostView {
        HostView { gateways, ..HostView::default() }
    }

    /// The configured prefixes of `family`.
    fn networks_of(&self, family: Family) -> Vec<Cidr> {
        self.networks.iter().copied().filter(|c| c.family() == family).collect()
    }

    /// The interfaces of the jail networks of `family` (each once, in order; never lo0).
    fn jail_interfaces(&self, family: Family) -> Vec<&InterfaceName> {
        let mut out: Vec<&InterfaceName> = Vec::new();
        for (i, a) in &self.links {
            if Family::of(a) == family && i.as_str() != "lo0" && !out.contains(&i) {
                out.push(i);
            }
        }
        out
    }

    /// The configured prefix holding `target`, with the host's address inside it (the
    /// address a VNET jail on that network reaches the host at), if the host has one.
    fn link_of(&self, target: IpAddr) -> Option<(Cidr, &InterfaceName, IpAddr)> {
        let net = self.networks.iter().find(|n| n.contains(&target))?;
        let (i, a) = self.links.iter().find(|(i, a)| net.contains(a) && i.as_str() != "lo0")?;
        Some((*net, i, *a))
    }
}

/// The loopback interface: host-originated traffic to the host's own addresses, and a non-VNET
/// jail's traffic to them, arrives on it.
fn lo0() -> InterfaceName {
    "lo0".parse().expect("a valid interface name")
}

/// The host's loopback address of `family`.
fn loopback(family: Family) -> IpAddr {
    match family {
        Family::Inet => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        Family::Inet6 => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    }
}

/// `a` alone, as a prefix.
fn host_prefix(a: IpAddr) -> Cidr {
    Cidr::new(a, if a.is_ipv4() { 32 } else { 128 }).expect("a full-length prefix")
}

/// The destination a translation rule matches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dest {
    /// `(em0)`: the interface's addresses, followed when they change.
    Interface(InterfaceName),
    /// One host address.
    Address(IpAddr),
}

/// The direction of a filter rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    In,
    Out,
}

/// One pf rule, structured. `kind` decides which fields apply.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// `rdr [on IF] FAMILY proto P from SRC to DEST port HOST tag TAG -> TARGET port JAIL`
    Rdr {
        on: Option<InterfaceName>,
        family: Family,
        proto: Protocol,
        from: Vec<Cidr>,
        to: Dest,
        port: PortRange,
        tag: String,
        target: IpAddr,
        target_port: PortRange,
    },
    /// `nat on IF FAMILY proto P from SRC to TARGET port JAIL tagged TAG -> ADDR`: the source of
    /// what the publication's rdr translated, rewritten to the host's address on the target's
    /// network, so that the target's reply comes back through the host.
    Nat {
        on: InterfaceName,
        family: Family,
        proto: Protocol,
        from: Vec<Cidr>,
        to: IpAddr,
        port: PortRange,
        tagged: String,
        nat_to: IpAddr,
    },
    /// `pass in|out [log] quick [on IF] FAMILY proto P from SRC to TARGET port JAIL
    /// [tagged TAG] [label "L"]...`
    Pass {
        dir: Dir,
        log: bool,
        on: Option<InterfaceName>,
        family: Family,
        proto: Protocol,
        from: Vec<Cidr>,
        to: IpAddr,
        port: PortRange,
        tagged: Option<String>,
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
            Rule::Rdr { on, family, proto, from, to, port, tag, target, target_port } => {
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
                write!(f, " port {} tag \"{tag}\" -> {target} port {tp}", port.pf())
            }
            Rule::Nat { on, family, proto, from, to, port, tagged, nat_to } => {
                write!(f, "nat on {} {family} proto {proto} ", on.pf())?;
                write_from(f, from)?;
                write!(f, " to {to} port {} tagged \"{tagged}\" -> {nat_to}", port.pf())
            }
            Rule::Pass { dir, log, on, family, proto, from, to, port, tagged, labels } => {
                f.write_str(if *dir == Dir::In { "pass in " } else { "pass out " })?;
                f.write_str(if *log { "log quick " } else { "quick " })?;
                if let Some(i) = on {
                    write!(f, "on {} ", i.pf())?;
                }
                write!(f, "{family} proto {proto} ")?;
                write_from(f, from)?;
                write!(f, " to {to} port {}", port.pf())?;
                if let Some(t) = tagged {
                    write!(f, " tagged \"{t}\"")?;
                }
                for l in labels {
                    write!(f, " label \"{l}\"")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a family of a publication produced no rules, or a reach of it none.
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
    pub nat: Vec<Rule>,
    pub rdr: Vec<Rule>,
    pub pass: Vec<Rule>,
    pub skipped: Vec<Skip>,
    /// Reaches that were asked for but cannot work here, and why (the publication is active
    /// without them): `publish` warns with these.
    pub notes: Vec<String>,
    /// Interfaces the published rules are on (empty for an address or loopback publication).
    pub interfaces: Vec<InterfaceName>,
    /// Where the publication can be reached from, by its rules.
    pub reached: Reached,
}

impl Rendered {
    /// Whether any rule was produced.
    pub fn is_active(&self) -> bool {
        !self.rdr.is_empty()
    }

    fn reach(&mut self, from: From) {
        self.reached.insert(from);
    }

    fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }
}

/// Renders one publication for the given targets; `vnet` says whether the jail has its own
/// network stack (its traffic then leaves the host through the jail network's interface).
pub fn render_publication(p: &Publication, targets: &Targets, host: &HostView, vnet: bool) -> Rendered {
    let mut out = Rendered {
        nat: vec![],
        rdr: vec![],
        pass: vec![],
        skipped: vec![],
        notes: vec![],
        interfaces: vec![],
        reached: Reached::default(),
    };
    let spec = &p.spec;
    let reach = host.reach.for_publication(&p.reach_off);
    let labels = vec![p.label(), p.jail.label()];
    let tag = p.tag();
    let local_only = spec.place.is_loopback();
    if local_only && !reach.loopback {
        for family in Family::BOTH {
            if spec.fixed_family().is_none_or(|f| f == family) {
                out.skipped.push(Skip {
                    spec: spec.clone(),
                    family,
                    reason: "publications on the host's loopback are switched off (reach.loopback: false in the \
                             agent's configuration)"
                        .into(),
                });
            }
        }
        return out;
    }
    for family in Family::BOTH {
        let skip = |reason: String| Skip { spec: spec.clone(), family, reason };
        if spec.fixed_family().is_some_and(|f| f != family) {
            continue;
        }
        let Some(target) = targets.get(family) else {
            out.skipped.push(skip(format!("the jail has no {} address", family.human())));
            continue;
        };
        // The published place: the interface the outside world comes in on and the address it
        // asks for; none for a loopback publication.
        let (on, to) = match &spec.place {
            Place::Gateway => match host.gateways.get(family) {
                Some(i) => (Some(i.clone()), Some(Dest::Interface(i.clone()))),
                None => {
                    out.skipped.push(skip(format!("the host has no {} default route", family.human())));
                    continue;
                }
            },
            Place::Interface(i) => (Some(i.clone()), Some(Dest::Interface(i.clone()))),
            Place::Address(a) if a.is_loopback() => (None, None),
            Place::Address(a) => (None, Some(Dest::Address(*a))),
            Place::Localhost => (None, None),
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
        let rdr = |on: Option<InterfaceName>, from: Vec<Cidr>, to: Dest| Rule::Rdr {
            on,
            family,
            proto: spec.proto,
            from,
            to,
            port: spec.host,
            tag: tag.clone(),
            target,
            target_port: spec.jail,
        };
        let link = host.link_of(target);
        let mut nat_from: Vec<Cidr> = Vec::new();
        match &to {
            // Local only: the host's loopback address (both for `localhost`).
            None => {
                let a = match spec.place {
                    Place::Address(a) => a,
                    _ => loopback(family),
                };
                out.rdr.push(rdr(Some(lo0()), from.clone(), Dest::Address(a)));
                out.reach(From::Host);
                nat_from.push(host_prefix(a));
            }
            // An address: one rdr without `on` matches it on every interface, as before.
            Some(dest @ Dest::Address(_)) => {
                out.rdr.push(rdr(None, from.clone(), dest.clone()));
                out.reach(From::Outside);
                out.reach(From::Jails);
                out.reach(From::Host);
            }
            Some(dest @ Dest::Interface(ext)) => {
                out.rdr.push(rdr(on.clone(), from.clone(), dest.clone()));
                out.reach(From::Outside);
                // lo0 carries the host's own traffic and that of its non-VNET jails; pf cannot
                // tell them apart by interface, so without host reach only the configured
                // networks' sources are redirected there.
                let lo_from = if reach.host || !from.is_empty() { Some(from.clone()) } else { None };
                let lo_from = lo_from.or_else(|| {
                    let nets = host.networks_of(family);
                    (reach.hairpin && !nets.is_empty()).then_some(nets)
                });
                if let Some(lo_from) = lo_from.filter(|_| reach.host || reach.hairpin) {
                    out.rdr.push(rdr(Some(lo0()), lo_from, dest.clone()));
                    if reach.host {
                        out.reach(From::Host);
                    }
                    if reach.hairpin {
                        out.reach(From::Jails);
                    }
                }
                if reach.host && spec.place == Place::Gateway {
                    out.rdr.push(rdr(Some(lo0()), from.clone(), Dest::Address(loopback(family))));
                    nat_from.push(host_prefix(loopback(family)));
                }
                if reach.hairpin {
                    for i in host.jail_interfaces(family) {
                        if i != ext {
                            out.rdr.push(rdr(Some(i.clone()), from.clone(), dest.clone()));
                            out.reach(From::Jails);
                        }
                    }
                }
            }
        }
        // A VNET jail answers a client of its own network, and the host's loopback, straight
        // (or not at all): their source is rewritten to the host's address on that network.
        if vnet {
            if reach.hairpin && !local_only {
                if let Some((net, _, _)) = link {
                    nat_from.insert(0, net);
                }
            }
            if !nat_from.is_empty() {
                match link {
                    Some((_, bridge, host_addr)) => {
                        for src in nat_from {
                            out.nat.push(Rule::Nat {
                                on: bridge.clone(),
                                family,
                                proto: spec.proto,
                                from: vec![src],
                                to: target,
                                port: spec.jail,
                                tagged: tag.clone(),
                                nat_to: host_addr,
                            });
                        }
                    }
                    None => out.note(format!(
                        "{spec}: the host has no {} address on the network of VNET jail address {target} (or the \
                         network is not configured), so jails of that network and the host's loopback cannot reach \
                         it through the published port",
                        family.human()
                    )),
                }
            }
        }
        let pass = |dir: Dir, from: Vec<Cidr>, tagged: Option<String>| Rule::Pass {
            dir,
            log: p.log,
            on: None,
            family,
            proto: spec.proto,
            from,
            to: target,
            port: spec.jail,
            tagged,
            labels: match dir {
                Dir::In => labels.clone(),
                Dir::Out => labels.iter().cloned().chain([OUTBOUND_LABEL.to_string()]).collect(),
            },
        };
        out.pass.push(pass(Dir::In, from.clone(), Some(tag.clone())));
        if vnet {
            // Translated traffic leaves through the jail network's interface: let it out even
            // where the main ruleset blocks outbound traffic there.
            out.pass.push(pass(Dir::Out, from.clone(), Some(tag.clone())));
        }
        if reach.networks && !local_only {
            let nets = host.networks_of(family);
            if !nets.is_empty() && from.is_empty() {
                out.pass.push(pass(Dir::In, nets.clone(), None));
                if vnet {
                    // Forwarded out through the jail network's interface, like the translated.
                    out.pass.push(pass(Dir::Out, nets, None));
                }
                out.reach(From::Networks);
            }
        }
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
    /// Every rule, translation rules (nat, then rdr) first.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        let nat = self.publications.iter().flat_map(|(_, r)| r.nat.iter());
        let rdr = self.publications.iter().flat_map(|(_, r)| r.rdr.iter());
        nat.chain(rdr).chain(self.publications.iter().flat_map(|(_, r)| r.pass.iter()))
    }

    /// The text to load with `pfctl -a ANCHOR -f -`; empty when there is no rule.
    /// The anchor's rules, one a line. The text is kept for as long as the anchor is loaded (a
    /// thousand anchors at a time), so it holds no spare capacity.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for r in self.rules() {
            writeln!(s, "{r}").expect("writing to a String");
        }
        s.shrink_to_fit();
        s
    }

    pub fn skipped(&self) -> impl Iterator<Item = &Skip> {
        self.publications.iter().flat_map(|(_, r)| r.skipped.iter())
    }

    /// Reaches asked for that cannot work here, and why.
    pub fn notes(&self) -> impl Iterator<Item = &String> {
        self.publications.iter().flat_map(|(_, r)| r.notes.iter())
    }

    pub fn is_empty(&self) -> bool {
        self.rules().next().is_none()
    }
}

/// Renders the anchor of one jail (`vnet`: with its own network stack) from its publications,
/// each with the targets chosen for it (sorted here by spec, so that the text does not depend on
/// the order they were published in).
pub fn render_anchor<'a>(
    items: impl IntoIterator<Item = (&'a Publication, Targets)>,
    host: &HostView,
    vnet: bool,
) -> Anchor {
    let mut items: Vec<(&Publication, Targets)> = items.into_iter().collect();
    items.sort_by(|a, b| a.0.spec.cmp(&b.0.spec));
    Anchor {
        publications: items.into_iter().map(|(p, t)| (p.clone(), render_publication(p, &t, host, vnet))).collect(),
    }
}

/// Renders publications that all share one set of targets.
pub fn render_uniform<'a>(
    pubs: impl IntoIterator<Item = &'a Publication>,
    targets: &Targets,
    host: &HostView,
    vnet: bool,
) -> Anchor {
    render_anchor(pubs.into_iter().map(|p| (p, targets.clone())), host, vnet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::reach::ReachOff;

    fn publication(spec: &str) -> Publication {
        Publication::new("web".parse().unwrap(), spec.parse().unwrap(), vec![], false, None)
    }

    fn v4() -> Targets {
        Targets::from_addrs(["10.13.37.2".parse().unwrap()])
    }

    fn em0() -> Gateways {
        Gateways { inet: Some("em0".parse().unwrap()), inet6: Some("em0".parse().unwrap()) }
    }

    /// The outside world only: every other reach off.
    fn outside_only() -> HostView {
        HostView {
            reach: Reach { hairpin: false, networks: false, host: false, loopback: true },
            ..HostView::new(em0())
        }
    }

    fn text(specs: &[&str], t: &Targets, h: &HostView) -> String {
        let pubs: Vec<Publication> = specs.iter().map(|s| publication(s)).collect();
        render_uniform(&pubs, t, h, false).text()
    }

    /// A VNET host: jails on bridge0 (10.13.37.0/24, the host at .1) and bridge1
    /// (10.13.38.0/24, the host at .1).
    fn bridges() -> HostView {
        HostView {
            networks: vec!["10.13.37.0/24".parse().unwrap(), "10.13.38.0/24".parse().unwrap()],
            links: vec![
                ("bridge0".parse().unwrap(), "10.13.37.1".parse().unwrap()),
                ("bridge1".parse().unwrap(), "10.13.38.1".parse().unwrap()),
            ],
            ..HostView::new(em0())
        }
    }

    const TAG: &str = "\"kleene:web:8080:80/tcp\"";
    const LABELS: &str = "label \"kleene:web:8080:80/tcp\" label \"kleene/web\"";

    #[test]
    fn the_issue_example_non_vnet_on_an_lo1_alias() {
        let t = text(&["8080:80"], &v4(), &HostView::new(em0()));
        assert_eq!(
            t,
            format!(
                "rdr on em0 inet proto tcp from any to (em0) port 8080 tag {TAG} -> 10.13.37.2 port 80\n\
                 rdr on lo0 inet proto tcp from any to (em0) port 8080 tag {TAG} -> 10.13.37.2 port 80\n\
                 rdr on lo0 inet proto tcp from any to 127.0.0.1 port 8080 tag {TAG} -> 10.13.37.2 port 80\n\
                 pass in quick inet proto tcp from any to 10.13.37.2 port 80 tagged {TAG} {LABELS}\n"
            )
        );
    }

    #[test]
    fn a_vnet_jail_on_a_bridge() {
        let t = Targets::from_addrs(["10.13.37.5".parse().unwrap()]);
        let pubs = [publication("8080:80")];
        let a = render_uniform(&pubs, &t, &bridges(), true);
        assert_eq!(
            a.text(),
            format!(
                "nat on bridge0 inet proto tcp from 10.13.37.0/24 to 10.13.37.5 port 80 tagged {TAG} -> 10.13.37.1\n\
                 nat on bridge0 inet proto tcp from 127.0.0.1 to 10.13.37.5 port 80 tagged {TAG} -> 10.13.37.1\n\
                 rdr on em0 inet proto tcp from any to (em0) port 8080 tag {TAG} -> 10.13.37.5 port 80\n\
                 rdr on lo0 inet proto tcp from any to (em0) port 8080 tag {TAG} -> 10.13.37.5 port 80\n\
                 rdr on lo0 inet proto tcp from any to 127.0.0.1 port 8080 tag {TAG} -> 10.13.37.5 port 80\n\
                 rdr on bridge0 inet proto tcp from any to (em0) port 8080 tag {TAG} -> 10.13.37.5 port 80\n\
                 rdr on bridge1 inet proto tcp from any to (em0) port 8080 tag {TAG} -> 10.13.37.5 port 80\n\
                 pass in quick inet proto tcp from any to 10.13.37.5 port 80 tagged {TAG} {LABELS}\n\
                 pass out quick inet proto tcp from any to 10.13.37.5 port 80 tagged {TAG} {LABELS} label \"kleene:outbound\"\n\
                 pass in quick inet proto tcp from {{ 10.13.37.0/24, 10.13.38.0/24 }} to 10.13.37.5 port 80 {LABELS}\n\
                 pass out quick inet proto tcp from {{ 10.13.37.0/24, 10.13.38.0/24 }} to 10.13.37.5 port 80 {LABELS} label \"kleene:outbound\"\n"
            )
        );
        let r = &a.publications[0].1;
        assert_eq!(r.reached.to_vec(), [From::Outside, From::Jails, From::Networks, From::Host]);
        assert!(r.notes.is_empty());
    }

    #[test]
    fn a_vnet_jail_without_the_hosts_address_on_its_network_is_noted() {
        let t = Targets::from_addrs(["10.13.37.5".parse().unwrap()]);
        let host = HostView { links: vec![], ..bridges() };
        let a = render_uniform(&[publication("8080:80")], &t, &host, true);
        assert!(!a.text().contains("nat "), "{}", a.text());
        let notes: Vec<&String> = a.notes().collect();
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("the host has no IPv4 address on the network of VNET jail address 10.13.37.5"));
    }

    #[test]
    fn the_outside_form_is_unchanged_but_tagged() {
        let t = text(&["em1:8080:80/udp"], &v4(), &outside_only());
        let tag = "\"kleene:web:em1:8080:80/udp\"";
        assert_eq!(
            t,
            format!(
                "rdr on em1 inet proto udp from any to (em1) port 8080 tag {tag} -> 10.13.37.2 port 80\n\
                 pass in quick inet proto udp from any to 10.13.37.2 port 80 tagged {tag} label \"kleene:web:em1:8080:80/udp\" label \"kleene/web\"\n"
            )
        );
        let t = text(&["8000-8010:9000"], &v4(), &outside_only());
        assert!(
            t.contains("port 8000:8010 tag \"kleene:web:8000-8010:9000-9010/tcp\" -> 10.13.37.2 port 9000:*\n"),
            "{t}"
        );
        assert!(t.contains("pass in quick inet proto tcp from any to 10.13.37.2 port 9000:9010 tagged"), "{t}");
        let both = Targets::from_addrs(["10.13.37.2".parse().unwrap(), "fd00:13:37::2".parse().unwrap()]);
        let t = text(&["8080:80"], &both, &outside_only());
        assert!(
            t.contains(&format!(
                "rdr on em0 inet6 proto tcp from any to (em0) port 8080 tag {TAG} -> fd00:13:37::2 port 80\n"
            )),
            "{t}"
        );
        let t = text(&["192.0.2.10:8080:80"], &both, &HostView::new(em0()));
        assert!(t.starts_with("rdr inet proto tcp from any to 192.0.2.10 port 8080 tag"), "{t}");
        assert!(!t.contains("lo0"), "an address publication's one rdr matches it on every interface: {t}");
        assert!(!t.contains("inet6"), "an IPv4 address publication has no IPv6 rules: {t}");
    }

    #[test]
    fn each_reach_switched_off() {
        let nets = HostView { networks: vec!["10.13.37.0/24".parse().unwrap()], ..HostView::new(em0()) };
        let render = |off: ReachOff| {
            let p = publication("8080:80").with_reach_off(off);
            render_uniform([&p], &v4(), &nets, false).text()
        };
        let all = render(ReachOff::default());
        assert!(all.contains("rdr on lo0 inet proto tcp from any to 127.0.0.1"), "{all}");
        assert!(all.contains("pass in quick inet proto tcp from 10.13.37.0/24 to 10.13.37.2 port 80 label"), "{all}");
        let no_host = render(ReachOff { host: true, ..ReachOff::default() });
        assert!(!no_host.contains("127.0.0.1"), "{no_host}");
        assert!(
            no_host.contains("rdr on lo0 inet proto tcp from 10.13.37.0/24 to (em0) port 8080"),
            "the jails of the networks keep their hairpin on lo0: {no_host}"
        );
        let no_networks = render(ReachOff { networks: true, ..ReachOff::default() });
        assert!(!no_networks.contains("from 10.13.37.0/24 to 10.13.37.2"), "{no_networks}");
        let none = render(ReachOff { host: true, hairpin: true, networks: true });
        assert_eq!(none.lines().count(), 2, "the outside rdr and its pass: {none}");
        let cfg = HostView { reach: Reach { networks: false, ..Reach::default() }, ..nets.clone() };
        let p = publication("8080:80");
        assert!(!render_uniform([&p], &v4(), &cfg, false).text().contains("from 10.13.37.0/24 to 10.13.37.2"));
    }

    #[test]
    fn local_only_forms() {
        let both = Targets::from_addrs(["10.13.37.2".parse().unwrap(), "fd00:13:37::2".parse().unwrap()]);
        let t = text(&["127.0.0.1:8080:80"], &both, &HostView::new(em0()));
        let tag = "\"kleene:web:127.0.0.1:8080:80/tcp\"";
        assert_eq!(
            t,
            format!(
                "rdr on lo0 inet proto tcp from any to 127.0.0.1 port 8080 tag {tag} -> 10.13.37.2 port 80\n\
                 pass in quick inet proto tcp from any to 10.13.37.2 port 80 tagged {tag} label \"kleene:web:127.0.0.1:8080:80/tcp\" label \"kleene/web\"\n"
            )
        );
        let t = text(&["localhost:8080:80"], &both, &HostView::new(em0()));
        assert!(t.contains("rdr on lo0 inet proto tcp from any to 127.0.0.1 port 8080"), "{t}");
        assert!(t.contains("rdr on lo0 inet6 proto tcp from any to ::1 port 8080"), "{t}");
        assert!(!t.contains("em0"), "never on the outside interface: {t}");
        let vnet = Targets::from_addrs(["10.13.37.5".parse().unwrap()]);
        let a = render_uniform(&[publication("127.0.0.1:8080:80")], &vnet, &bridges(), true);
        assert!(a.text().starts_with("nat on bridge0 inet proto tcp from 127.0.0.1 to 10.13.37.5 port 80 tagged"));
        assert!(!a.text().contains("10.13.37.0/24"), "no hairpin, no networks: {}", a.text());
        assert_eq!(a.publications[0].1.reached.to_vec(), [From::Host]);
        let off = HostView { reach: Reach { loopback: false, ..Reach::default() }, ..HostView::new(em0()) };
        let a = render_uniform(&[publication("[::1]:8080:80")], &both, &off, false);
        assert!(a.is_empty());
        assert!(a.skipped().next().unwrap().reason.contains("reach.loopback: false"));
    }

    #[test]
    fn translation_before_filtering() {
        let t = text(&["8080:80", "em1:53:53/udp", "9000-9001"], &v4(), &HostView::new(em0()));
        let kinds: Vec<&str> = t.lines().map(|l| l.split(' ').next().unwrap()).collect();
        let first_pass = kinds.iter().position(|k| *k == "pass").unwrap();
        assert!(kinds[..first_pass].iter().all(|k| *k == "rdr" || *k == "nat"), "{t}");
        assert!(kinds[first_pass..].iter().all(|k| *k == "pass"), "{t}");
    }

    #[test]
    fn order_does_not_depend_on_publish_order() {
        let h = HostView::new(em0());
        assert_eq!(text(&["8080:80", "em1:53:53/udp"], &v4(), &h), text(&["em1:53:53/udp", "8080:80"], &v4(), &h));
    }

    #[test]
    fn families_skipped_and_reported() {
        let pubs = [publication("8080:80")];
        let v4gw = HostView::new(Gateways { inet: Some("em0".parse().unwrap()), inet6: None });
        let a = render_uniform(&pubs, &v4(), &v4gw, false);
        let skipped: Vec<String> = a.skipped().map(|s| s.to_string()).collect();
        assert_eq!(skipped, ["8080:80/tcp: no IPv6 rules: the jail has no IPv6 address"]);
        let v6only = Targets::from_addrs(["fd00::2".parse().unwrap()]);
        let a = render_uniform(&pubs, &v6only, &v4gw, false);
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
        let a = render_uniform(&v6pub, &v4(), &HostView::new(em0()), false);
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
        let nets = HostView { networks: vec!["10.13.37.0/24".parse().unwrap()], ..HostView::new(em0()) };
        let t = render_uniform([&p], &both, &nets, false).text();
        assert!(
            t.contains("rdr on em0 inet proto tcp from { 192.0.2.0/24, 198.51.100.7 } to (em0) port 8080 tag"),
            "{t}"
        );
        assert!(t.contains("rdr on lo0 inet proto tcp from { 192.0.2.0/24, 198.51.100.7 } to 127.0.0.1"), "{t}");
        assert!(t.contains("rdr on em0 inet6 proto tcp from 2001:db8::/32 to (em0)"), "{t}");
        assert!(
            t.contains(
                "pass in log quick inet proto tcp from { 192.0.2.0/24, 198.51.100.7 } to 10.13.37.2 port 80 tagged"
            ),
            "{t}"
        );
        assert!(!t.contains("from 10.13.37.0/24"), "sources restrict the networks' direct access away: {t}");
        let v6src = Publication::new(
            "web".parse().unwrap(),
            "8080:80".parse().unwrap(),
            vec!["2001:db8::/32".parse().unwrap()],
            false,
            None,
        );
        let a = render_uniform([&v6src], &both, &HostView::new(em0()), false);
        assert!(!a.text().contains(" inet "), "no IPv4 source means no IPv4 rules");
        assert_eq!(a.skipped().next().unwrap().reason, "no IPv4 source is allowed");
    }

    #[test]
    fn gateway_families_may_differ() {
        let both = Targets::from_addrs(["10.13.37.2".parse().unwrap(), "fd00::2".parse().unwrap()]);
        let g = HostView::new(Gateways { inet: Some("em0".parse().unwrap()), inet6: Some("em1".parse().unwrap()) });
        let pubs = [publication("8080:80")];
        let a = render_uniform(&pubs, &both, &g, false);
        assert!(a.text().contains("rdr on em1 inet6"));
        assert!(a.text().contains("rdr on lo0 inet6 proto tcp from any to ::1 port 8080"));
        assert_eq!(a.publications[0].1.interfaces.len(), 2);
    }

    #[test]
    fn interface_names_that_are_pf_keywords_are_quoted() {
        let t = text(&["any:8080:80", "inet6:53:53/udp"], &v4(), &outside_only());
        assert!(t.contains("rdr on \"any\" inet proto tcp from any to (\"any\") port 8080 tag"), "{t}");
        assert!(t.contains("rdr on \"inet6\" inet proto udp"), "{t}");
    }

    #[test]
    fn tags_are_unique_per_publication_and_fit_pf() {
        let long = Publication::new("w".repeat(60).parse().unwrap(), "8080:80".parse().unwrap(), vec![], false, None);
        assert!(long.tag().len() <= 63);
        assert_ne!(publication("8080:80").tag(), publication("8081:80").tag());
        assert_ne!(publication("8080:80").tag(), publication("8080:80/udp").tag());
    }

    #[test]
    fn empty_anchor_is_empty_text() {
        let none: [Publication; 0] = [];
        assert_eq!(render_uniform(&none, &v4(), &HostView::new(em0()), false).text(), "");
    }
}
