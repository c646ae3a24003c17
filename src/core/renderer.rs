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

/// What one anchor rendered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The anchor; `None` when it holds no rule.
    pub loaded: Option<Arc<Loaded>>,
    /// Per publication, in the order given.
    pub publications: Vec<PubRendered>,
}

/// What one publication rendered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubRendered {
    pub seq: u64,
    /// The interfaces its rules are on (shared between the publications of one anchor).
    pub interfaces: Arc<[InterfaceName]>,
    /// Why it has no rule at all, when it has none.
    pub no_rules: Option<String>,
    /// Where it can be reached from.
    pub reached: Reached,
    /// Reaches asked for that cannot work here, and why.
    pub notes: Vec<String>,
}

/// The inputs one anchor was rendered from. A publication never changes once stored (a new one
/// gets a new `seq`), so the seqs and their targets identify the publications' part.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inputs {
    jail: JailName,
    jid: u32,
    vnet: bool,
    host: HostView,
    items: Vec<(u64, Targets)>,
}

impl Inputs {
    fn of(jail: &RunningJail, host: &HostView, items: &[(&Stored, Targets)]) -> Inputs {
        Inputs {
            jail: jail.name.clone(),
            jid: jail.jid,
            vnet: jail.vnet,
            host: host.clone(),
            items: items.iter().map(|(s, t)| (s.seq, t.clone())).collect(),
        }
    }

    /// Whether these are the inputs of `jail` with `items` under `host` (compared in place:
    /// no allocation when nothing changed).
    fn matches(&self, jail: &RunningJail, host: &HostView, items: &[(&Stored, Targets)]) -> bool {
        self.jid == jail.jid
            && self.jail == jail.name
            && self.vnet == jail.vnet
            && &self.host == host
            && self.items.len() == items.len()
            && self.items.iter().zip(items).all(|((seq, t), (s, u))| *seq == s.seq && t == u)
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
    entries: HashMap<String, Entry>,
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
        let fresh =
            || Entry { inputs: Inputs::of(jail, host, items), rendered: render_jail(jail, items, host), used: true };
        match self.entries.get_mut(component) {
            Some(e) if e.inputs.matches(jail, host, items) => e.used = true,
            Some(e) => *e = fresh(),
            None => {
                self.entries.insert(component.to_string(), fresh());
            }
        }
        let entry = &self.entries[component];
        &entry.rendered
    }

    /// Forgets the anchors not rendered since the last sweep (their jails stopped, or publish
    /// nothing any more). A full plan sweeps once it has rendered every anchor.
    pub fn sweep(&mut self) {
        self.entries.retain(|_, e| std::mem::replace(&mut e.used, false));
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
    let seq_of: BTreeMap<&PortSpec, u64> = items.iter().map(|(s, _)| (&s.publication.spec, s.seq)).collect();
    let anchor = render_anchor(items.iter().map(|(s, t)| (&s.publication, t.clone())), host, jail.vnet);
    let mut shared: Vec<Arc<[InterfaceName]>> = Vec::new();
    let publications = anchor
        .publications
        .iter()
        .map(|(p, r)| {
            let no_rules = (!r.is_active()).then(|| {
                let why: Vec<String> =
                    r.skipped.iter().map(|k| format!("no {} rules: {}", k.family.human(), k.reason)).collect();
                why.join("; ")
            });
            // Publications of one jail mostly share their interface list: share it too.
            let interfaces = match shared.iter().find(|l| l[..] == r.interfaces[..]) {
                Some(l) => Arc::clone(l),
                None => {
                    let l: Arc<[InterfaceName]> = Arc::from(r.interfaces.clone());
                    shared.push(Arc::clone(&l));
                    l
                }
            };
            PubRendered { seq: seq_of[&p.spec], interfaces, no_rules, reached: r.reached, notes: r.notes.clone() }
        })
        .collect();
    let loaded = (!anchor.is_empty()).then(|| Arc::new(Loaded::new(jail.name.clone(), jail.jid, &anchor.text())));
    Rendered { loaded, publications }
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
        assert!(Arc::ptr_eq(&first.publications[0].interfaces, &again.publications[0].interfaces));
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
        assert_eq!(with_b.publications.iter().map(|p| p.seq).collect::<Vec<_>>(), [1, 2]);
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
        assert!(r.publications[0].no_rules.as_deref().is_some_and(|w| w.contains("no IPv6 rules")), "{r:?}");
    }
}
