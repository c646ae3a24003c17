//! Reconcile planning: from what is desired, what is observed and what the agent last applied,
//! the status of every publication and the pf actions that bring pf in step.
//!
//! One [`plan`] serves publish, unpublish, the periodic tick and start-up, in three phases:
//! claims (which publications get their host ports, older first, and which can be loaded at
//! all), render (each running jail's anchor) and diff (the pf actions). It is idempotent:
//! applying its actions and planning again yields no action.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use super::address::{self, Context, Network, select_targets};
use super::conflict::{self, Claims, NameClash, name_clash};
use super::model::{Family, InterfaceName, JailName};
use super::publication::Publication;
use super::readback;
use super::render::{Gateways, Targets};
use super::renderer::Renderer;

/// A desired publication with its age: lower `seq` was published first and wins conflicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub publication: Publication,
}

/// A running jail (one incarnation: a restart gives a new jid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningJail {
    pub name: JailName,
    pub jid: u32,
    /// Whether the jail has its own network stack (its addresses are whatever it says).
    pub vnet: bool,
    /// Every address the jail has (jls for a non-VNET jail, the jail's vnet for a VNET jail),
    /// or why they are not known.
    pub addrs: Result<Vec<IpAddr>, AddrsUnknown>,
}

/// Why a jail's addresses are not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrsUnknown {
    pub reason: String,
    /// A first read is under way (pending), as opposed to the last read having failed (error).
    pub pending: bool,
}

/// What the agent observed on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub jails: Vec<RunningJail>,
    pub gateways: Gateways,
    /// Components of the anchors below the parent that pf holds; `None` when pf could not be
    /// asked.
    pub anchors: Option<BTreeSet<String>>,
    /// Components of anchors below the parent that hold rules this agent did not write (none
    /// carries its labels): never flushed, never loaded into.
    pub foreign: BTreeSet<String>,
    /// The host's own addresses (a VNET jail may not claim one).
    pub host_addrs: BTreeSet<IpAddr>,
}

/// What is desired: the publications, and the settings they are planned under.
#[derive(Debug, Clone, Copy)]
pub struct Desired<'a> {
    pub publications: &'a [Stored],
    pub networks: &'a [Network],
    /// The parent anchor (`kleene`): a jail's anchor component is chosen to fit below it.
    pub anchor: &'a str,
}

/// What the agent has done to pf, as far as it knows.
#[derive(Debug, Clone, Copy)]
pub struct Applied<'a> {
    /// What the agent loaded, by component.
    pub loaded: &'a BTreeMap<String, Arc<Loaded>>,
    /// Components to load even when the agent believes they are current (start-up, failed
    /// verification).
    pub force: &'a BTreeSet<String>,
    /// Why pf refused the last load of a component: its publications are errors (and the load
    /// is tried again).
    pub pf_errors: &'a BTreeMap<String, String>,
}

/// What the agent loaded into one anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub jail: JailName,
    pub jid: u32,
    /// The anchor's rules; its labels are read from it when needed (`readback::labels`).
    pub text: String,
}

/// The state of one publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Active,
    Pending(String),
    Conflict(String),
    Error(String),
}

impl Status {
    /// `active`, `pending`, `conflict` or `error`.
    pub fn word(&self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Pending(_) => "pending",
            Status::Conflict(_) => "conflict",
            Status::Error(_) => "error",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Status::Active => None,
            Status::Pending(r) | Status::Conflict(r) | Status::Error(r) => Some(r),
        }
    }
}

/// Where one publication stands after planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubStatus {
    pub status: Status,
    pub interfaces: Arc<[InterfaceName]>,
    pub targets: Targets,
}

/// One pf operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Kill the states of `kill_before` (the jail label of an earlier incarnation of the jail),
    /// load `loaded.text` into the anchor, then kill the states of `kill_after` (labels of
    /// publications whose rules are gone).
    Load { component: String, loaded: Arc<Loaded>, kill_before: Vec<String>, kill_after: Vec<String> },
    /// Flush the anchor, then kill the states of `kill` (the jail's label); `None` when the
    /// labels are not known (an anchor left by another process): read them from pf first.
    Flush { component: String, kill: Option<Vec<String>> },
}

impl Action {
    pub fn component(&self) -> &str {
        match self {
            Action::Load { component, .. } | Action::Flush { component, .. } => component,
        }
    }
}

/// The outcome of planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub statuses: BTreeMap<u64, PubStatus>,
    pub actions: Vec<Action>,
    /// What every anchor that should hold rules should hold, by component.
    pub wanted: BTreeMap<String, Arc<Loaded>>,
}

/// Plans: [`claims`], then [`render`] (through `renderer`, which the caller keeps between
/// plans so that only what changed is rendered again), then [`diff`].
pub fn plan(desired: &Desired, observed: &Observed, applied: &Applied, renderer: &mut Renderer) -> Plan {
    let (mut statuses, jails) = claims(desired, observed);
    let wanted = render(&jails, &mut statuses, observed, applied, renderer);
    let actions = diff(&wanted, observed, applied);
    Plan { statuses: statuses.into_iter().collect(), actions, wanted }
}

/// What the planner knows of one jail that has publications.
struct JailFacts<'a> {
    name: &'a JailName,
    component: String,
    /// A jail that published first has the same anchor name.
    clash: Option<NameClash<'a>>,
    running: Option<&'a RunningJail>,
    /// Targets for publications that name no network, computed once.
    default_targets: Option<Result<Targets, String>>,
    /// The running jail's addresses, when known.
    addrs: Result<&'a [IpAddr], &'a AddrsUnknown>,
    /// Accepted publications of a running jail, with their targets.
    items: Vec<(&'a Stored, Targets)>,
}

impl<'a> JailFacts<'a> {
    fn new(
        name: &'a JailName,
        component: String,
        clash: Option<NameClash<'a>>,
        running: Option<&'a RunningJail>,
    ) -> JailFacts<'a> {
        JailFacts {
            name,
            component,
            clash,
            running,
            default_targets: None,
            addrs: running.map_or(Ok(&[][..]), |j| j.addrs.as_ref().map(Vec::as_slice)),
            items: vec![],
        }
    }
}

/// What deciding one publication needs beyond its jail.
struct Scope<'a> {
    observed: &'a Observed,
    ctx: Context<'a>,
    anchor: &'a str,
    /// The interfaces of a publication without rules (one list, shared).
    no_interfaces: Arc<[InterfaceName]>,
}

impl<'a> Scope<'a> {
    fn new(desired: &Desired<'a>, observed: &'a Observed, contested: &'a BTreeMap<IpAddr, Vec<JailName>>) -> Scope<'a> {
        Scope {
            observed,
            ctx: Context { networks: desired.networks, contested, host: &observed.host_addrs },
            anchor: desired.anchor,
            no_interfaces: Arc::from(Vec::new()),
        }
    }
}

/// Claims: decides, in seq order (the older first, so the older wins), each publication's
/// jail facts (its anchor name, whether it runs, its targets) and whether it gets its host
/// ports. Returns the statuses so far in seq order, and the jails with their accepted
/// publications.
fn claims<'a>(desired: &Desired<'a>, observed: &'a Observed) -> (Vec<(u64, PubStatus)>, Vec<JailFacts<'a>>) {
    let running: HashMap<&JailName, &RunningJail> = observed.jails.iter().map(|j| (&j.name, j)).collect();
    let contested = address::contested(
        observed.jails.iter().filter_map(|j| j.addrs.as_ref().ok().map(|a| (&j.name, a.as_slice()))),
    );
    let mut order: Vec<&Stored> = desired.publications.iter().collect();
    order.sort_by_key(|s| s.seq);

    // One entry per jail, in the order of its first publication.
    let mut index: HashMap<&JailName, usize> = HashMap::default();
    let mut jails: Vec<JailFacts> = Vec::new();
    let mut owner_of: HashMap<String, usize> = HashMap::default();
    for s in &order {
        let name = &s.publication.jail;
        if index.contains_key(name) {
            continue;
        }
        let component = name.anchor_component(desired.anchor);
        let first = *owner_of.entry(component.clone()).or_insert(jails.len());
        let clash = (first != jails.len()).then(|| name_clash(name, jails[first].name, desired.anchor)).flatten();
        index.insert(name, jails.len());
        jails.push(JailFacts::new(name, component, clash, running.get(name).copied()));
    }

    let scope = Scope::new(desired, observed, &contested);
    let mut statuses: Vec<(u64, PubStatus)> = Vec::with_capacity(order.len());
    let mut held = conflict::Index::default();
    let find = |seq: u64| order.binary_search_by_key(&seq, |s| s.seq).ok().map(|i| order[i]);
    for s in &order {
        let facts = &mut jails[index[&s.publication.jail]];
        let (status, claims) = admit(s, facts, &scope, &|c| held.owner(c).and_then(find));
        if let Some(c) = claims {
            held.hold(c, s.seq);
        }
        statuses.push((s.seq, status));
    }

    (statuses, jails)
}

/// Decides one publication of `facts`' jail in the claims phase: its status so far, and the
/// claims it holds from now on (`None`: it holds no port). `older` names the older publication
/// that holds a port of given claims, if any.
fn admit<'a>(
    s: &'a Stored,
    facts: &mut JailFacts<'a>,
    scope: &Scope,
    older: &dyn Fn(&Claims) -> Option<&'a Stored>,
) -> (PubStatus, Option<Claims>) {
    let p = &s.publication;
    let gateways = &scope.observed.gateways;
    let mut st =
        PubStatus { status: Status::Active, interfaces: Arc::clone(&scope.no_interfaces), targets: Targets::default() };
    let taken = |owner: &Stored| {
        let o = &owner.publication;
        Status::Conflict(format!("the host port is already published by jail {} as {}", o.jail, o.spec))
    };
    if let Some(clash) = &facts.clash {
        st.status = Status::Error(clash.to_string());
        return (st, None);
    }
    if let Some(other) = scope.observed.foreign.get(&facts.component) {
        let anchor = scope.anchor;
        st.status = Status::Error(format!(
            "the anchor {anchor}/{other} holds rules this agent did not write; it is left alone: rename the jail, \
             or remove those rules (pfctl -a {anchor}/{other} -F all) if they are stale"
        ));
        return (st, None);
    }
    let addrs = match facts.addrs {
        Ok(a) => Ok(a),
        Err(unknown) => Err(if unknown.pending {
            Status::Pending(unknown.reason.clone())
        } else {
            Status::Error(unknown.reason.clone())
        }),
    };
    let targets = match (facts.running, addrs) {
        (None, _) => None,
        (Some(_), Err(status)) => Some(Err(status)),
        (Some(j), Ok(addrs)) => {
            let jail = address::Jail { name: &j.name, vnet: j.vnet, addrs };
            Some(
                match &p.network {
                    None => {
                        facts.default_targets.get_or_insert_with(|| select_targets(&jail, &scope.ctx, None)).clone()
                    }
                    Some(n) => select_targets(&jail, &scope.ctx, Some(n)),
                }
                .map_err(Status::Error),
            )
        }
    };
    let (claims, targets) = match targets {
        None => (conflict::claims(p, None, gateways), None),
        Some(Err(status @ Status::Pending(_))) => {
            // The port stays claimed while the jail's addresses are being read.
            let claims = conflict::claims(p, None, gateways);
            if let Some(owner) = older(&claims) {
                st.status = taken(owner);
                return (st, None);
            }
            st.status = status;
            return (st, Some(claims));
        }
        Some(Err(status)) => {
            st.status = status;
            return (st, None);
        }
        Some(Ok(t)) => {
            let fams: &[Family] = match (t.inet.is_some(), t.inet6.is_some()) {
                (true, true) => &Family::BOTH,
                (true, false) => &Family::BOTH[..1],
                (false, true) => &Family::BOTH[1..],
                (false, false) => &[],
            };
            (conflict::claims(p, Some(fams), gateways), Some(t))
        }
    };
    if let Some(owner) = older(&claims) {
        st.status = taken(owner);
        return (st, None);
    }
    match targets {
        Some(t) => {
            st.targets = t.clone();
            facts.items.push((s, t));
        }
        None => st.status = Status::Pending(format!("jail {} is not running", p.jail)),
    }
    (st, Some(claims))
}

/// Render: each running jail's accepted publications become its anchor (through `renderer`,
/// which renders again only what changed, and forgets the anchors no jail wants any more).
/// Each publication learns the interfaces its rules are on; one that got no rule at all, or
/// whose anchor pf refused last time, is an error after all. Returns what every anchor that
/// should hold rules should hold.
fn render(
    jails: &[JailFacts],
    statuses: &mut [(u64, PubStatus)],
    observed: &Observed,
    applied: &Applied,
    renderer: &mut Renderer,
) -> BTreeMap<String, Arc<Loaded>> {
    let mut wanted = BTreeMap::new();
    for facts in jails {
        if let Some(l) = render_jail(facts, statuses, &observed.gateways, applied.pf_errors, renderer) {
            wanted.insert(facts.component.clone(), l);
        }
    }
    renderer.sweep();
    wanted
}

/// The render phase of one jail: its anchor, when it runs and has accepted publications and
/// the anchor holds rules. `statuses` (in seq order) holds at least the jail's publications.
fn render_jail(
    facts: &JailFacts,
    statuses: &mut [(u64, PubStatus)],
    gateways: &Gateways,
    pf_errors: &BTreeMap<String, String>,
    renderer: &mut Renderer,
) -> Option<Arc<Loaded>> {
    let jail = facts.running.filter(|_| !facts.items.is_empty())?;
    let rendered = renderer.render(&facts.component, jail, &facts.items, gateways);
    let pf_error = pf_errors.get(&facts.component);
    for r in &rendered.publications {
        let i = statuses.binary_search_by_key(&r.seq, |(q, _)| *q).expect("status recorded in the claims phase");
        let st = &mut statuses[i].1;
        st.interfaces = Arc::clone(&r.interfaces);
        if let Some(err) = pf_error {
            st.status = Status::Error(format!("pf refused the anchor: {err}"));
        } else if let Some(why) = &r.no_rules {
            st.status = Status::Error(why.clone());
        }
    }
    rendered.loaded.clone()
}

/// Diff: the pf actions that make pf hold what is wanted. A load for each anchor that pf does
/// not hold as wanted (or that is forced), with the labels whose states to kill; a flush for
/// each anchor that holds rules nobody wants, except anchors holding rules this agent did not
/// write. Loads come first, each kind in component order.
fn diff(wanted: &BTreeMap<String, Arc<Loaded>>, observed: &Observed, applied: &Applied) -> Vec<Action> {
    let loads = wanted.iter().filter_map(|(c, w)| action(c, Some(w), observed, applied));
    let stale: BTreeSet<&String> = applied
        .loaded
        .keys()
        .chain(observed.anchors.iter().flatten().filter(|c| !observed.foreign.contains(*c)))
        .filter(|c| !wanted.contains_key(*c))
        .collect();
    let flushes = stale.into_iter().filter_map(|c| action(c, None, observed, applied));
    loads.chain(flushes).collect()
}

/// The action that brings one anchor in step, if it is not: `want` is what it should hold
/// (`None`: no rule).
fn action(component: &str, want: Option<&Arc<Loaded>>, observed: &Observed, applied: &Applied) -> Option<Action> {
    let before = applied.loaded.get(component);
    let Some(want) = want else {
        let in_pf = observed.anchors.as_ref().is_some_and(|a| a.contains(component));
        let stale = before.is_some() || (in_pf && !observed.foreign.contains(component));
        let kill = before.map(|l| vec![l.jail.label()]);
        return stale.then(|| Action::Flush { component: component.to_string(), kill });
    };
    let present = observed.anchors.as_ref().is_none_or(|a| a.contains(component));
    let current = before.is_some_and(|l| Arc::ptr_eq(l, want) || **l == **want);
    if current && present && !applied.force.contains(component) {
        return None;
    }
    let (kill_before, kill_after) = match before {
        Some(l) if l.jid != want.jid => (vec![l.jail.label()], vec![]),
        Some(l) => (vec![], readback::labels(&l.text).difference(&readback::labels(&want.text)).cloned().collect()),
        None => (vec![], vec![]),
    };
    Some(Action::Load { component: component.to_string(), loaded: Arc::clone(want), kill_before, kill_after })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plans with a fresh renderer (the memo has its own tests, and one below).
    fn plan(
        desired: &[Stored],
        observed: &Observed,
        loaded: &BTreeMap<String, Arc<Loaded>>,
        networks: &[Network],
        force: &BTreeSet<String>,
        pf_errors: &BTreeMap<String, String>,
    ) -> Plan {
        let desired = Desired { publications: desired, networks, anchor: "kleene" };
        super::plan(&desired, observed, &Applied { loaded, force, pf_errors }, &mut Renderer::default())
    }

    fn stored(seq: u64, jail: &str, spec: &str) -> Stored {
        Stored { seq, publication: Publication::new(jail.parse().unwrap(), spec.parse().unwrap(), vec![], false, None) }
    }

    fn jail(name: &str, jid: u32, addrs: &[&str]) -> RunningJail {
        RunningJail {
            name: name.parse().unwrap(),
            jid,
            vnet: false,
            addrs: Ok(addrs.iter().map(|a| a.parse().unwrap()).collect()),
        }
    }

    fn observed(jails: Vec<RunningJail>, anchors: &[&str]) -> Observed {
        Observed {
            jails,
            gateways: Gateways { inet: Some("em0".parse().unwrap()), inet6: None },
            anchors: Some(anchors.iter().map(|s| s.to_string()).collect()),
            ..Observed::default()
        }
    }

    fn none() -> (BTreeSet<String>, BTreeMap<String, String>) {
        (BTreeSet::new(), BTreeMap::new())
    }

    /// Applies a plan to (loaded, pf anchors) the way a flawless executor would.
    fn apply(p: &Plan, loaded: &mut BTreeMap<String, Arc<Loaded>>, obs: &mut Observed) {
        for a in &p.actions {
            match a {
                Action::Load { component, loaded: l, .. } => {
                    loaded.insert(component.clone(), Arc::clone(l));
                    obs.anchors.as_mut().unwrap().insert(component.clone());
                }
                Action::Flush { component, .. } => {
                    loaded.remove(component);
                    obs.anchors.as_mut().unwrap().remove(component);
                }
            }
        }
    }

    /// Plans and applies once: the host the tests change starts settled.
    fn settle(desired: &[Stored], obs: &mut Observed) -> BTreeMap<String, Arc<Loaded>> {
        let (f, e) = none();
        let mut loaded = BTreeMap::new();
        let first = plan(desired, obs, &loaded, &[], &f, &e);
        apply(&first, &mut loaded, obs);
        loaded
    }

    #[test]
    fn publish_loads_then_idle_does_nothing() {
        let desired = vec![stored(1, "web", "em1:8080:80/udp")];
        let mut obs = observed(vec![jail("web", 3, &["10.13.37.2"])], &[]);
        let (f, e) = none();
        let mut loaded = BTreeMap::new();
        let p = plan(&desired, &obs, &loaded, &[], &f, &e);
        assert_eq!(p.actions.len(), 1);
        let Action::Load { component, loaded: l, kill_before, kill_after } = &p.actions[0] else { panic!() };
        assert_eq!(component, "web");
        assert!(l.text.starts_with("rdr on em1 inet proto udp from any to (em1) port 8080 -> 10.13.37.2 port 80\n"));
        assert!(kill_before.is_empty() && kill_after.is_empty());
        assert_eq!(p.statuses[&1].status, Status::Active);
        apply(&p, &mut loaded, &mut obs);
        let again = plan(&desired, &obs, &loaded, &[], &f, &e);
        assert!(again.actions.is_empty(), "idempotent: {:?}", again.actions);
    }

    #[test]
    fn jail_stop_flushes_and_kills_its_labels() {
        let desired = vec![stored(1, "web", "8080:80"), stored(2, "web", "8081:81")];
        let mut obs = observed(vec![jail("web", 3, &["10.13.37.2"])], &[]);
        let (f, e) = none();
        let mut loaded = settle(&desired, &mut obs);
        obs.jails.clear();
        let p = plan(&desired, &obs, &loaded, &[], &f, &e);
        assert_eq!(p.actions, vec![Action::Flush { component: "web".into(), kill: Some(vec!["kleene/web".into()]) }]);
        assert!(matches!(p.statuses[&1].status, Status::Pending(_)));
        apply(&p, &mut loaded, &mut obs);
        assert!(plan(&desired, &obs, &loaded, &[], &f, &e).actions.is_empty());
    }

    #[test]
    fn restart_with_new_address_reloads_and_kills_old_states() {
        let desired = vec![stored(1, "web", "8080:80")];
        let mut obs = observed(vec![jail("web", 3, &["10.13.37.2"])], &[]);
        let (f, e) = none();
        let mut loaded = settle(&desired, &mut obs);
        obs.jails = vec![jail("web", 4, &["10.13.37.9"])];
        let p = plan(&desired, &obs, &loaded, &[], &f, &e);
        let [Action::Load { loaded: l, kill_before, kill_after, .. }] = &p.actions[..] else {
            panic!("{:?}", p.actions)
        };
        assert!(l.text.contains("-> 10.13.37.9 port 80"));
        assert_eq!(l.jid, 4);
        assert_eq!(kill_before, &vec!["kleene/web".to_string()], "the old incarnation's states, before the load");
        assert!(kill_after.is_empty());
        // Same address, new jid: still reloaded (a new incarnation).
        apply(&p, &mut loaded, &mut obs);
        obs.jails = vec![jail("web", 5, &["10.13.37.9"])];
        assert_eq!(plan(&desired, &obs, &loaded, &[], &f, &e).actions.len(), 1);
    }

    #[test]
    fn unpublish_reloads_without_and_kills_the_removed() {
        let mut desired = vec![stored(1, "web", "8080:80"), stored(2, "web", "8081:81")];
        let mut obs = observed(vec![jail("web", 3, &["10.13.37.2"])], &[]);
        let (f, e) = none();
        let mut loaded = settle(&desired, &mut obs);
        desired.remove(1);
        let p = plan(&desired, &obs, &loaded, &[], &f, &e);
        let [Action::Load { loaded: l, kill_before, kill_after, .. }] = &p.actions[..] else {
            panic!("{:?}", p.actions)
        };
        assert!(!l.text.contains("8081"));
        assert!(kill_before.is_empty());
        assert_eq!(kill_after, &vec!["kleene:web:8081:81/tcp".to_string()], "only the removed publication's states");
        apply(&p, &mut loaded, &mut obs);
        desired.clear();
        let p = plan(&desired, &obs, &loaded, &[], &f, &e);
        assert!(
            matches!(&p.actions[..], [Action::Flush { kill: Some(k), .. }] if k == &vec!["kleene/web".to_string()])
        );
    }

    #[test]
    fn orphan_anchor_is_flushed_with_unknown_labels() {
        let obs = observed(vec![], &["old"]);
        let (f, e) = none();
        let p = plan(&[], &obs, &BTreeMap::new(), &[], &f, &e);
        assert_eq!(p.actions, vec![Action::Flush { component: "old".into(), kill: None }]);
    }

    #[test]
    fn missing_anchor_is_loaded_again() {
        let desired = vec![stored(1, "web", "8080:80")];
        let mut obs = observed(vec![jail("web", 3, &["10.13.37.2"])], &[]);
        let (f, e) = none();
        let loaded = settle(&desired, &mut obs);
        obs.anchors = Some(BTreeSet::new());
        let p = plan(&desired, &obs, &loaded, &[], &f, &e);
        assert!(
            matches!(&p.actions[..], [Action::Load { kill_before, kill_after, .. }] if kill_before.is_empty() && kill_after.is_empty())
        );
    }

    #[test]
    fn force_reloads_current_anchors() {
        let desired = vec![stored(1, "web", "8080:80")];
        let mut obs = observed(vec![jail("web", 3, &["10.13.37.2"])], &[]);
        let (_, e) = none();
        let mut loaded = BTreeMap::new();
        apply(&plan(&desired, &obs, &loaded, &[], &BTreeSet::new(), &e), &mut loaded, &mut obs);
        let force: BTreeSet<String> = ["web".to_string()].into();
        assert_eq!(plan(&desired, &obs, &loaded, &[], &force, &e).actions.len(), 1);
    }

    #[test]
    fn conflicts_keep_the_older() {
        let desired = vec![stored(2, "db", "8080:5432"), stored(1, "web", "8080:80"), stored(3, "db", "em1:8080:80")];
        let obs = observed(vec![jail("web", 3, &["10.13.37.2"]), jail("db", 4, &["10.13.37.3"])], &[]);
        let (f, e) = none();
        let p = plan(&desired, &obs, &BTreeMap::new(), &[], &f, &e);
        assert_eq!(p.statuses[&1].status, Status::Active);
        assert_eq!(
            p.statuses[&2].status,
            Status::Conflict("the host port is already published by jail web as 8080:80/tcp".into())
        );
        assert_eq!(p.statuses[&3].status, Status::Active);
        let db = &p.wanted["db"];
        assert!(!db.text.contains("5432"), "nothing conflicting is loaded: {}", db.text);
    }

    #[test]
    fn gateway_move_reloads_and_may_create_a_conflict() {
        let desired = vec![stored(1, "web", "em1:8080:80"), stored(2, "db", "8080:80")];
        let mut obs = observed(vec![jail("web", 3, &["10.13.37.2"]), jail("db", 4, &["10.13.37.3"])], &[]);
        let (f, e) = none();
        let mut loaded = BTreeMap::new();
        let p = plan(&desired, &obs, &loaded, &[], &f, &e);
        assert_eq!(p.statuses[&2].status, Status::Active);
        apply(&p, &mut loaded, &mut obs);
        obs.gateways.inet = Some("em2".parse().unwrap());
        let p = plan(&desired, &obs, &loaded, &[], &f, &e);
        let [Action::Load { component, loaded: l, .. }] = &p.actions[..] else { panic!("{:?}", p.actions) };
        assert_eq!(component, "db");
        assert!(l.text.contains("(em2)"));
        apply(&p, &mut loaded, &mut obs);
        obs.gateways.inet = Some("em1".parse().unwrap());
        let p = plan(&desired, &obs, &loaded, &[], &f, &e);
        assert!(matches!(p.statuses[&2].status, Status::Conflict(_)));
        assert!(matches!(&p.actions[..], [Action::Flush { component, .. }] if component == "db"));
    }

    #[test]
    fn pending_becomes_active_when_the_jail_starts() {
        let desired = vec![stored(1, "web", "8080:80")];
        let mut obs = observed(vec![], &[]);
        let (f, e) = none();
        let p = plan(&desired, &obs, &BTreeMap::new(), &[], &f, &e);
        assert_eq!(p.statuses[&1].status, Status::Pending("jail web is not running".into()));
        assert!(p.actions.is_empty());
        obs.jails.push(jail("web", 9, &["10.13.37.2"]));
        let p = plan(&desired, &obs, &BTreeMap::new(), &[], &f, &e);
        assert_eq!(p.statuses[&1].status, Status::Active);
        assert_eq!(p.actions.len(), 1);
    }

    #[test]
    fn no_address_is_an_error_and_loads_nothing() {
        let desired = vec![stored(1, "web", "8080:80")];
        let obs = observed(vec![jail("web", 3, &[])], &[]);
        let (f, e) = none();
        let p = plan(&desired, &obs, &BTreeMap::new(), &[], &f, &e);
        assert!(matches!(&p.statuses[&1].status, Status::Error(r) if r.contains("no usable address")));
        assert!(p.actions.is_empty());
        let v6 = vec![stored(1, "web", "[2001:db8::1]:8080:80")];
        let obs = observed(vec![jail("web", 3, &["10.13.37.2"])], &[]);
        let p = plan(&v6, &obs, &BTreeMap::new(), &[], &f, &e);
        assert!(matches!(&p.statuses[&1].status, Status::Error(r) if r.contains("no IPv6 rules")), "{:?}", p.statuses);
    }

    #[test]
    fn pf_errors_are_reported_per_jail() {
        let desired = vec![stored(1, "web", "8080:80")];
        let obs = observed(vec![jail("web", 3, &["10.13.37.2"])], &[]);
        let errs: BTreeMap<String, String> = [("web".to_string(), "stdin:1: syntax error".to_string())].into();
        let p = plan(&desired, &obs, &BTreeMap::new(), &[], &BTreeSet::new(), &errs);
        assert_eq!(p.statuses[&1].status, Status::Error("pf refused the anchor: stdin:1: syntax error".into()));
        assert_eq!(p.actions.len(), 1, "retried");
    }

    #[test]
    fn anchor_name_collisions_are_refused() {
        let odd: JailName = "_x".parse().unwrap();
        let twin = odd.component();
        assert!(twin.starts_with("j-"));
        let desired = vec![stored(1, "_x", "8080"), stored(2, &twin, "8081")];
        let obs = observed(vec![jail("_x", 3, &["10.13.37.2"]), jail(&twin, 4, &["10.13.37.3"])], &[]);
        let (f, e) = none();
        let p = plan(&desired, &obs, &BTreeMap::new(), &[], &f, &e);
        assert_eq!(p.statuses[&1].status, Status::Active);
        assert!(matches!(&p.statuses[&2].status, Status::Error(r) if r.contains("maps to the same anchor name")));
        assert!(!p.wanted[&twin].text.contains("8081"));
    }

    #[test]
    fn foreign_anchors_are_never_flushed_nor_loaded_into() {
        let desired = vec![stored(1, "22", "8022:22")];
        let mut obs = observed(vec![jail("22", 3, &["10.13.37.2"])], &["22", "old", "ssh"]);
        obs.foreign = ["22".to_string(), "ssh".to_string()].into();
        let (f, e) = none();
        let p = plan(&desired, &obs, &BTreeMap::new(), &[], &f, &e);
        assert_eq!(p.actions, vec![Action::Flush { component: "old".into(), kill: None }], "only the unknown one");
        assert!(
            matches!(&p.statuses[&1].status, Status::Error(r) if r.contains("holds rules this agent did not write")),
            "{:?}",
            p.statuses[&1]
        );
    }

    #[test]
    fn unknown_addresses_are_pending_or_an_error_and_keep_the_port() {
        let desired = vec![stored(1, "web", "8080:80"), stored(2, "db", "8080:80")];
        let mut web = jail("web", 3, &[]);
        web.vnet = true;
        web.addrs = Err(AddrsUnknown { reason: "reading its addresses".into(), pending: true });
        let obs = observed(vec![web.clone(), jail("db", 4, &["10.13.37.3"])], &[]);
        let (f, e) = none();
        let p = plan(&desired, &obs, &BTreeMap::new(), &[], &f, &e);
        assert_eq!(p.statuses[&1].status, Status::Pending("reading its addresses".into()));
        assert!(matches!(p.statuses[&2].status, Status::Conflict(_)), "the older publication keeps its port");
        assert!(p.actions.is_empty());
        web.addrs = Err(AddrsUnknown { reason: "/sbin/ifconfig did not finish".into(), pending: false });
        let obs = observed(vec![web], &[]);
        let p = plan(&desired[..1], &obs, &BTreeMap::new(), &[], &f, &e);
        assert_eq!(p.statuses[&1].status, Status::Error("/sbin/ifconfig did not finish".into()));
    }

    #[test]
    fn a_vnet_jail_cannot_take_another_jails_address() {
        let net = [Network {
            name: "kleenet".parse().unwrap(),
            subnet: Some("10.13.37.0/24".parse().unwrap()),
            subnet6: None,
        }];
        let desired = vec![stored(1, "web", "8080:80"), stored(2, "evil", "9090:80")];
        let mut evil = jail("evil", 4, &["10.13.37.2"]);
        evil.vnet = true;
        let obs = observed(vec![jail("web", 3, &["10.13.37.2"]), evil], &[]);
        let (f, e) = none();
        let p = plan(&desired, &obs, &BTreeMap::new(), &net, &f, &e);
        for seq in [1, 2] {
            assert!(
                matches!(&p.statuses[&seq].status, Status::Error(r) if r.contains("10.13.37.2 is also claimed by jail")),
                "{:?}",
                p.statuses[&seq]
            );
        }
        assert!(p.actions.is_empty(), "neither gets the address");
    }

    #[test]
    fn long_jail_names_get_anchor_paths_pf_accepts() {
        let name = "a".repeat(60);
        let desired = vec![stored(1, &name, "8080:80")];
        let obs = observed(vec![jail(&name, 3, &["10.13.37.2"])], &[]);
        let (f, e) = none();
        let p = plan(&desired, &obs, &BTreeMap::new(), &[], &f, &e);
        let [Action::Load { component, .. }] = &p.actions[..] else { panic!("{:?}", p.actions) };
        assert!(format!("kleene/{component}").len() <= crate::core::model::MAX_ANCHOR_PATH, "{component}");
    }

    #[test]
    fn the_renderer_renders_only_what_changed() {
        let desired = vec![stored(1, "web", "8080:80"), stored(2, "db", "5432")];
        let mut obs = observed(vec![jail("web", 3, &["10.13.37.2"]), jail("db", 4, &["10.13.37.3"])], &[]);
        let (f, e) = none();
        let loaded = BTreeMap::new();
        let mut renderer = Renderer::default();
        let mut with_renderer = |obs: &Observed| {
            let d = Desired { publications: &desired, networks: &[], anchor: "kleene" };
            super::plan(&d, obs, &Applied { loaded: &loaded, force: &f, pf_errors: &e }, &mut renderer)
        };
        let first = with_renderer(&obs);
        obs.jails[1] = jail("db", 5, &["10.13.37.9"]);
        let second = with_renderer(&obs);
        assert!(Arc::ptr_eq(&first.wanted["web"], &second.wanted["web"]), "web was not rendered again");
        assert!(!Arc::ptr_eq(&first.wanted["db"], &second.wanted["db"]));
        assert!(second.wanted["db"].text.contains("10.13.37.9"));
        assert_eq!(second, plan(&desired, &obs, &loaded, &[], &f, &e), "the same plan as with a fresh renderer");
        obs.gateways.inet = Some("em9".parse().unwrap());
        let third = with_renderer(&obs);
        assert!(third.wanted["web"].text.contains("(em9)"), "a gateway change renders again");
        obs.jails.remove(1);
        with_renderer(&obs);
        assert_eq!(renderer.len(), 1, "stopped jails are forgotten");
    }

    #[test]
    fn conflicts_are_found_among_many() {
        let mut desired: Vec<Stored> =
            (0..2000u16).map(|i| stored(u64::from(i) + 1, &format!("j{i}"), &format!("{}", 10000 + i * 3))).collect();
        desired.push(stored(5000, "late", "13000-13001"));
        desired.push(stored(5001, "ok", "13002"));
        let obs = observed(vec![], &[]);
        let (f, e) = none();
        let p = plan(&desired, &obs, &BTreeMap::new(), &[], &f, &e);
        assert!(
            matches!(&p.statuses[&5000].status, Status::Conflict(r) if r.contains("jail j1000 as 13000:13000/tcp")),
            "{:?}",
            p.statuses[&5000]
        );
        assert!(matches!(p.statuses[&5001].status, Status::Pending(_)), "13002 is free");
    }
}
