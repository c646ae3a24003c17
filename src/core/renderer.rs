//! Rendering anchors with a memory: an anchor is rendered again only when what it is rendered
//! from changed, so that a plan costs work proportional to what changed, not to the host.
//!
//! The memory changes only speed: what [`Renderer::render`] returns is what a fresh render of
//! the same inputs returns. Planning stays a function of its inputs.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use super::model::{InterfaceName, JailName};
use super::plan::{Loaded, RunningJail, Stored};
use super::reach::Reached;
use super::render::{HostView, Targets, render_anchor};
use super::spec::PortSpec;

/// What one anchor rendered to, with the targets it was rendered for.
///
/// Kept for every running jail with publications, so it is compact: per publication one
/// [`Item`] (its seq, targets, interface list by index, reaches), and what only a publication
/// without rules or with notes has, boxed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The anchor; `None` when it holds no rule.
    pub loaded: Option<Arc<Loaded>>,
    /// The distinct interface lists of the publications (mostly one per anchor).
    interfaces: Box<[Arc<[InterfaceName]>]>,
    /// Per publication, in the order given.
    items: Box<[Item]>,
}

/// One publication of a [`Rendered`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    seq: u64,
    /// What it was rendered for (part of the inputs).
    targets: Targets,
    /// Its interface list, in [`Rendered::interfaces`].
    interfaces: u32,
    reached: Reached,
    /// Why it has no rule, and the reaches that cannot work: `None` for most publications.
    remarks: Option<Box<Remarks>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Remarks {
    no_rules: Option<String>,
    notes: Vec<String>,
}

/// What one publication rendered to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubRendered<'a> {
    pub seq: u64,
    /// The interfaces its rules are on (shared between the publications of one anchor).
    pub interfaces: &'a Arc<[InterfaceName]>,
    /// Why it has no rule at all, when it has none.
    pub no_rules: Option<&'a str>,
    /// Where it can be reached from.
    pub reached: Reached,
    /// Reaches asked for that cannot work here, and why.
    pub notes: &'a [String],
}

impl Rendered {
    /// Per publication, in the order given.
    pub fn publications(&self) -> impl Iterator<Item = PubRendered<'_>> {
        self.items.iter().map(|i| {
            let remarks = i.remarks.as_deref();
            PubRendered {
                seq: i.seq,
                interfaces: &self.interfaces[i.interfaces as usize],
                no_rules: remarks.and_then(|r| r.no_rules.as_deref()),
                reached: i.reached,
                notes: remarks.map_or(&[][..], |r| &r.notes),
            }
        })
    }

    /// Whether this was rendered from `items` (compared in place: no allocation).
    fn rendered_from(&self, items: &[(&Stored, Targets)]) -> bool {
        self.items.len() == items.len()
            && self.items.iter().zip(items).all(|(i, (s, t))| i.seq == s.seq && i.targets == *t)
    }
}

/// The inputs one anchor was rendered from beyond its publications (whose part, the seqs and
/// targets, [`Rendered`] keeps). A publication never changes once stored (a new one gets a new
/// `seq`), so the seqs and their targets identify the publications' part.
#[derive(Debug)]
struct Inputs {
    jail: JailName,
    jid: u32,
    vnet: bool,
    /// Shared between the anchors rendered under the same host view.
    host: Arc<HostView>,
}

impl Inputs {
    /// Whether these are the inputs of `jail` under `host` (compared in place).
    fn matches(&self, jail: &RunningJail, host: &HostView) -> bool {
        self.jid == jail.jid && self.jail == jail.name && self.vnet == jail.vnet && *self.host == *host
    }
}

struct Entry {
    inputs: Inputs,
    rendered: Rendered,
    /// Rendered (or found) since the last [`Renderer::sweep`].
    used: bool,
}

/// Renders anchors, remembering the last rendering of each anchor component. Owned by whoever
/// plans repeatedly (the engine), lent to each plan; a fresh one renders everything.
#[derive(Default)]
pub struct Renderer {
    entries: HashMap<Box<str>, Entry>,
    /// The host view the last anchor was rendered under, shared by the entries rendered under
    /// it (every anchor holds one).
    host: Option<Arc<HostView>>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer").field("anchors", &self.entries.len()).finish()
    }
}

impl Renderer {
    /// The anchor `component` of running `jail` holding `items` (accepted publications with
    /// their targets, in seq order) under `host`: the remembered one when these are the
    /// inputs it was rendered from, else rendered now and remembered.
    pub fn render(
        &mut self,
        component: &str,
        jail: &RunningJail,
        items: &[(&Stored, Targets)],
        host: &HostView,
    ) -> &Rendered {
        let found = self.entries.get_mut(component);
        if let Some(e) = found.filter(|e| e.inputs.matches(jail, host) && e.rendered.rendered_from(items)) {
            e.used = true;
        } else {
            let shared = match &self.host {
                Some(h) if **h == *host => Arc::clone(h),
                _ => Arc::clone(self.host.insert(Arc::new(host.clone()))),
            };
            let inputs = Inputs { jail: jail.name.clone(), jid: jail.jid, vnet: jail.vnet, host: shared };
            let entry = Entry { inputs, rendered: render_jail(jail, items, host), used: true };
            self.entries.insert(component.into(), entry);
        }
        &self.entries[component].rendered
    }

    /// Forgets the anchors not rendered since the last sweep (their jails stopped, or publish
    /// nothing any more). A full plan sweeps once it has rendered every anchor.
    pub fn sweep(&mut self) {
        self.entries.retain(|_, e| std::mem::replace(&mut e.used, false));
        self.entries.shrink_to_fit();
    }

    /// How many anchors are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Renders one running jail's anchor.
fn render_jail(jail: &RunningJail, items: &[(&Stored, Targets)], host: &HostView) -> Rendered {
    let anchor = render_anchor(items.iter().map(|(s, t)| (&s.publication, t.clone())), host, jail.vnet);
    // The anchor is in spec order; the items go in the order given.
    let by_spec: BTreeMap<&PortSpec, usize> =
        anchor.publications.iter().enumerate().map(|(i, (p, _))| (&p.spec, i)).collect();
    let mut interfaces: Vec<Arc<[InterfaceName]>> = Vec::new();
    let items = items
        .iter()
        .map(|(s, t)| {
            let r = &anchor.publications[by_spec[&s.publication.spec]].1;
            let no_rules = (!r.is_active()).then(|| {
                let why: Vec<String> =
                    r.skipped.iter().map(|k| format!("no {} rules: {}", k.family.human(), k.reason)).collect();
                why.join("; ")
            });
            // Publications of one jail mostly share their interface list: share it too.
            let index = match interfaces.iter().position(|l| l[..] == r.interfaces[..]) {
                Some(i) => i,
                None => {
                    interfaces.push(Arc::from(r.interfaces.clone()));
                    interfaces.len() - 1
                }
            };
            let remarks = (no_rules.is_some() || !r.notes.is_empty())
                .then(|| Box::new(Remarks { no_rules, notes: r.notes.clone() }));
            Item {
                seq: s.seq,
                targets: t.clone(),
                interfaces: u32::try_from(index).expect("fewer interface lists than publications"),
                reached: r.reached,
                remarks,
            }
        })
        .collect();
    let loaded = (!anchor.is_empty()).then(|| Arc::new(Loaded::new(jail.name.clone(), jail.jid, &anchor.text())));
    Rendered { loaded, interfaces: interfaces.into_boxed_slice(), items }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::publication::Publication;
    use crate::core::render::Gateways;

    fn stored(seq: u64, spec: &str) -> Stored {
        Stored {
            seq,
            publication: Publication::new("web".parse().unwrap(), spec.parse().unwrap(), vec![], false, None),
        }
    }

    fn web(jid: u32) -> RunningJail {
        RunningJail { name: "web".parse().unwrap(), jid, vnet: false, addrs: Ok(vec!["10.13.37.2".parse().unwrap()]) }
    }

    fn gateways(inet: &str) -> HostView {
        HostView::new(Gateways { inet: Some(inet.parse().unwrap()), inet6: None })
    }

    fn targets(ip: &str) -> Targets {
        Targets::from_addrs([ip.parse().unwrap()])
    }

    fn anchor(r: &Rendered) -> Arc<Loaded> {
        Arc::clone(r.loaded.as_ref().expect("rules"))
    }

    #[test]
    fn same_inputs_give_the_same_anchor() {
        let (a, b) = (stored(1, "8080:80"), stored(2, "8443:443"));
        let items = [(&a, targets("10.13.37.2")), (&b, targets("10.13.37.2"))];
        let mut r = Renderer::default();
        let first = r.render("web", &web(3), &items, &gateways("em0")).clone();
        let again = r.render("web", &web(3), &items, &gateways("em0")).clone();
        assert!(Arc::ptr_eq(&anchor(&first), &anchor(&again)), "not rendered again");
        let interfaces = |r: &Rendered| Arc::clone(r.publications().next().expect("a publication").interfaces);
        assert!(Arc::ptr_eq(&interfaces(&first), &interfaces(&again)));
        assert_eq!(first, render_jail(&web(3), &items, &gateways("em0")), "what a fresh render gives");
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn changed_inputs_are_rendered_again() {
        let (a, b) = (stored(1, "8080:80"), stored(2, "8443:443"));
        let one = [(&a, targets("10.13.37.2"))];
        let two = [(&a, targets("10.13.37.2")), (&b, targets("10.13.37.2"))];
        let moved = [(&a, targets("10.13.37.9"))];
        let mut r = Renderer::default();
        let base = anchor(r.render("web", &web(3), &one, &gateways("em0")));
        for (what, jail, items, gw) in [
            ("another publication", web(3), &two[..], gateways("em0")),
            ("another target", web(3), &moved[..], gateways("em0")),
            ("another incarnation", web(4), &one[..], gateways("em0")),
            ("another gateway", web(3), &one[..], gateways("em9")),
        ] {
            let got = r.render("web", &jail, items, &gw).clone();
            assert!(!Arc::ptr_eq(&base, &anchor(&got)), "{what}");
            assert_eq!(got, render_jail(&jail, items, &gw), "{what}");
            r.render("web", &web(3), &one, &gateways("em0"));
        }
        let with_b = r.render("web", &web(3), &two, &gateways("em0"));
        assert!(anchor(with_b).text().contains("8443"));
        assert_eq!(with_b.publications().map(|p| p.seq).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn anchors_not_rendered_since_the_last_sweep_are_forgotten() {
        let a = stored(1, "8080:80");
        let items = [(&a, targets("10.13.37.2"))];
        let mut r = Renderer::default();
        let first = anchor(r.render("web", &web(3), &items, &gateways("em0")));
        r.render("db", &web(4), &items, &gateways("em0"));
        r.sweep();
        assert_eq!(r.len(), 2, "both were rendered in the round that ended");
        let kept = anchor(r.render("web", &web(3), &items, &gateways("em0")));
        assert!(Arc::ptr_eq(&first, &kept));
        r.sweep();
        assert_eq!(r.len(), 1, "db (stopped) is forgotten");
        r.sweep();
        assert!(r.is_empty());
    }

    #[test]
    fn publications_without_rules_say_why() {
        let v6 = stored(1, "[2001:db8::1]:8080:80");
        let r = Renderer::default().render("web", &web(3), &[(&v6, targets("10.13.37.2"))], &gateways("em0")).clone();
        assert!(r.loaded.is_none());
        let no_rules = r.publications().next().expect("a publication").no_rules;
        assert!(no_rules.is_some_and(|w| w.contains("no IPv6 rules")), "{r:?}");
    }
}
