//! Reconcile planning: from what is desired, what is observed and what the agent last applied,
//! the status of every publication and the pf actions that bring pf in step.
//!
//! One [`plan`] serves publish, unpublish, the periodic tick and start-up, in three phases:
//! claims (which publications get their host ports, older first, and which can be loaded at
//! all), render (each running jail's anchor) and diff (the pf actions). It is idempotent:
//! applying its actions and planning again yields no action.
//!
//! A publish changes one jail and takes ports nobody held, so [`plan_publish`] plans just that
//! jail against what the last plan held ([`Held`]), and agrees with [`plan`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use super::address::{self, Context, Network, select_targets};
use super::conflict::{self, Claims, NameClash, name_clash};
use super::model::{Family, InterfaceName, JailName};
use super::publication::Publication;
use super::reach::{Reach, Reached};
use super::readback;
use super::render::{Gateways, HostView, Targets};
use super::renderer::Renderer;
use super::spec::Place;

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
    /// The running jails, sorted by name.
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
    /// The host's own addresses with their interfaces (where jail networks' traffic arrives).
    pub host_links: Vec<(InterfaceName, IpAddr)>,
    /// The host's interfaces, when they were read (a publication on another is an error).
    pub host_ifaces: Option<BTreeSet<InterfaceName>>,
}

impl Observed {
    /// What rendering needs of the host, under `desired`'s settings.
    pub fn host_view(&self, desired: &Desired) -> HostView {
        let networks: Vec<_> = desired.networks.iter().flat_map(|n| [n.subnet, n.subnet6]).flatten().collect();
        let links = self.host_links.iter().filter(|(_, a)| networks.iter().any(|n| n.contains(a))).cloned().collect();
        HostView { gateways: self.gateways.clone(), reach: desired.reach, networks, links }
    }
}

/// What is desired: the publications, and the settings they are planned under.
#[derive(Debug, Clone, Copy)]
pub struct Desired<'a> {
    pub publications: &'a [Stored],
    pub networks: &'a [Network],
    /// The parent anchor (`kleene`): a jail's anchor component is chosen to fit below it.
    pub anchor: &'a str,
    /// The reaches the configuration switches on.
    pub reach: Reach,
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
    /// The anchor's rules, deflated: every anchor's text is kept for the agent's life (to load
    /// it, verify pf against it and show it), and at 1,000 jails the texts were the largest part
    /// of the agent's memory (5.3 of 19 MB at 10,000 publications); rule text is repetitive and
    /// deflates about tenfold. Deflating is deterministic, so equal texts have equal bytes.
    packed: Box<[u8]>,
}

impl Loaded {
    pub fn new(jail: JailName, jid: u32, text: &str) -> Loaded {
        Loaded { jail, jid, packed: deflate(text.as_bytes()).into_boxed_slice() }
    }

    /// The anchor's rules; its labels are read from them when needed (`readback::labels`).
    pub fn text(&self) -> String {
        let bytes =
            miniz_oxide::inflate::decompress_to_vec(&self.packed).expect("the agent's own deflated text inflates");
        String::from_utf8(bytes).expect("the agent's own text is UTF-8")
    }
}

/// Raw deflate at level 1, as `miniz_oxide::deflate::compress_to_vec` does it, with one
/// compressor kept for the process: a new one allocates and clears its tables each time (95 µs
/// for a 4 KB anchor, against 15 µs reused).
fn deflate(mut input: &[u8]) -> Vec<u8> {
    use miniz_oxide::deflate::core::{
        CompressorOxide, TDEFLFlush, TDEFLStatus, compress, create_comp_flags_from_zip_params,
    };
    static COMPRESSOR: std::sync::Mutex<Option<Box<CompressorOxide>>> = std::sync::Mutex::new(None);
    let mut kept = COMPRESSOR.lock().unwrap_or_else(|p| p.into_inner());
    let compressor =
        kept.get_or_insert_with(|| Box::new(CompressorOxide::new(create_comp_flags_from_zip_params(1, 0, 0))));
    compressor.reset();
    let mut output = vec![0; (input.len() / 4).max(64)];
    let mut out_pos = 0;
    loop {
        let (status, bytes_in, bytes_out) = compress(compressor, input, &mut output[out_pos..], TDEFLFlush::Finish);
        out_pos += bytes_out;
        match status {
            TDEFLStatus::Done => {
                output.truncate(out_pos);
                return output;
            }
            TDEFLStatus::Okay if bytes_in <= input.len() => {
                input = &input[bytes_in..];
                if output.len() - out_pos < 64 {
                    output.resize(output.len() * 2, 0);
                }
            }
            status => unreachable!("deflate into a growing buffer cannot fail: {status:?}"),
        }
    }
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
    /// Where it can be reached from (empty unless active).
    pub reached: Reached,
    /// Reaches asked for that cannot work here, and why.
    pub notes: Vec<String>,
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
    /// What the claims phase decided, for the next publish ([`plan_publish`]).
    pub held: Held,
}

/// What the claims phase of a plan decided, owned, so that a publish can be checked against it
/// in O(log n) instead of planning every publication again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    /// The host ports held, by the seq of the publication holding them.
    claims: conflict::Index<u64>,
    /// Every jail's publications, by seq, in seq order.
    jails: HashMap<JailName, Vec<u64>>,
    /// The jail each anchor component belongs to: the first to publish of those mapping to it.
    anchors: HashMap<String, JailName>,
    /// Addresses more than one running jail reports (nobody gets those).
    contested: BTreeMap<IpAddr, Vec<JailName>>,
    /// The highest seq planned.
    last_seq: u64,
}

/// A publish planned alone ([`plan_publish`]): its jail's part of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPlan {
    pub jail: JailName,
    /// The jail's anchor component; `None` when the name is another jail's (the jail's
    /// publications are then errors, and the anchor is none of this plan's business).
    pub component: Option<String>,
    /// The status of each of the jail's publications, the new ones included.
    pub statuses: BTreeMap<u64, PubStatus>,
    /// What the jail's anchor should hold; `None` when it should hold no rule.
    pub wanted: Option<Arc<Loaded>>,
    /// The actions that bring the jail's anchor in step.
    pub actions: Vec<Action>,
    /// The new publications, in seq order, and the claims of those that got their ports.
    new: Vec<(u64, Option<Claims>)>,
}

impl Plan {
    /// Takes in a publish planned by [`plan_publish`] against this plan's [`Plan::held`]:
    /// afterwards this is the plan [`plan`] makes with the new publications, and the next
    /// publish can be planned against it.
    pub fn merge(&mut self, publish: JailPlan) {
        self.statuses.extend(publish.statuses);
        if let Some(c) = &publish.component {
            match publish.wanted {
                Some(w) => self.wanted.insert(c.clone(), w),
                None => self.wanted.remove(c),
            };
            self.actions.retain(|a| a.component() != c);
            self.actions.extend(publish.actions);
            self.actions.sort_by(|a, b| action_order(a).cmp(&action_order(b)));
            self.held.anchors.entry(c.clone()).or_insert_with(|| publish.jail.clone());
        }
        let seqs = self.held.jails.entry(publish.jail).or_default();
        for (seq, claims) in publish.new {
            seqs.push(seq);
            self.held.last_seq = self.held.last_seq.max(seq);
            if let Some(c) = claims {
                self.held.claims.hold(c, seq);
            }
        }
    }
}

/// The order [`diff`] gives actions in: loads, then flushes, each by component.
fn action_order(a: &Action) -> (bool, &str) {
    (matches!(a, Action::Flush { .. }), a.component())
}

/// Plans: [`claims`], then [`render`] (through `renderer`, which the caller keeps between
/// plans so that only what changed is rendered again), then [`diff`].
pub fn plan(desired: &Desired, observed: &Observed, applied: &Applied, renderer: &mut Renderer) -> Plan {
    let (mut statuses, jails, held) = claims(desired, observed);
    let host = observed.host_view(desired);
    let wanted = render(&jails, &mut statuses, &host, applied, renderer);
    let actions = diff(&wanted, observed, applied);
    Plan { statuses: statuses.into_iter().collect(), actions, wanted, held }
}

/// Plans a publish alone. The new publications are the last of `desired.publications`, with
/// seqs above every seq the last plan saw, all of one jail; each is checked against the ports
/// `held` holds in O(log n), and only that jail is planned again and its anchor rendered.
///
/// `held` is [`Plan::held`] of the last plan, made from the same observation and settings and
/// from the publications without the new ones (whatever `applied` is now). Then the outcome is
/// that jail's part of what [`plan`] would plan now, and [`Plan::merge`] makes the last plan
/// into it. `desired.publications` should be in seq order (the agent's state keeps them so):
/// otherwise finding a publication by seq takes a scan.
///
/// `None` (plan in full) when there is no new publication, the new ones are of more than one
/// jail or not in seq order, or the jail's earlier publications are not the ones `held` knows.
pub fn plan_publish(
    desired: &Desired,
    observed: &Observed,
    applied: &Applied,
    held: &Held,
    renderer: &mut Renderer,
) -> Option<JailPlan> {
    let all = desired.publications;
    let first_new = all.iter().rposition(|s| s.seq <= held.last_seq).map_or(0, |i| i + 1);
    let new = &all[first_new..];
    let jail = &new.first()?.publication.jail;
    let in_order = new.windows(2).all(|w| w[0].seq < w[1].seq);
    if !in_order || new.iter().any(|s| &s.publication.jail != jail) {
        return None;
    }
    let mut earlier: Vec<&Stored> = Vec::new();
    for seq in held.jails.get(jail).into_iter().flatten() {
        earlier.push(by_seq(all, *seq).filter(|s| &s.publication.jail == jail)?);
    }

    let component = jail.anchor_component(desired.anchor);
    let clash = held.anchors.get(&component).and_then(|first| name_clash(jail, first, desired.anchor));
    let running = observed.jails.iter().find(|j| &j.name == jail);
    let mut facts = JailFacts::new(jail, component, clash, running);
    let scope = Scope::new(desired, observed, &held.contested);
    let mut statuses: Vec<(u64, PubStatus)> = Vec::with_capacity(earlier.len() + new.len());
    // The earlier publications decide as they did: against the older holders only (a port
    // they hold themselves is held by their own seq).
    for s in earlier {
        let older = |c: &Claims| held.claims.owner(c).filter(|o| *o < s.seq).and_then(|o| by_seq(all, o));
        let (status, _) = admit(s, &mut facts, &scope, &older);
        statuses.push((s.seq, status));
    }
    let mut taken = conflict::Index::default();
    let mut out = Vec::with_capacity(new.len());
    for s in new {
        let older =
            |c: &Claims| held.claims.owner(c).into_iter().chain(taken.owner(c)).min().and_then(|o| by_seq(all, o));
        let (status, claims) = admit(s, &mut facts, &scope, &older);
        if let Some(c) = &claims {
            taken.hold(c.clone(), s.seq);
        }
        statuses.push((s.seq, status));
        out.push((s.seq, claims));
    }

    let owns_anchor = facts.clash.is_none();
    let host = observed.host_view(desired);
    let wanted = render_jail(&facts, &mut statuses, &host, applied.pf_errors, renderer);
    let actions = if owns_anchor { action(&facts.component, wanted.as_ref(), observed, applied) } else { None };
    Some(JailPlan {
        jail: jail.clone(),
        component: owns_anchor.then_some(facts.component),
        statuses: statuses.into_iter().collect(),
        wanted,
        actions: actions.into_iter().collect(),
        new: out,
    })
}

/// The publication `seq` of `publications`: by binary search when they are in seq order, else
/// by a scan.
fn by_seq(publications: &[Stored], seq: u64) -> Option<&Stored> {
    match publications.binary_search_by_key(&seq, |s| s.seq) {
        Ok(i) => Some(&publications[i]),
        Err(_) => publications.iter().find(|s| s.seq == seq),
    }
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
    /// Every publication's seq, in seq order.
    seqs: Vec<u64>,
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
            seqs: vec![],
        }
    }
}

/// What deciding one publication needs beyond its jail.
struct Scope<'a> {
    observed: &'a Observed,
    ctx: Context<'a>,
    anchor: &'a str,
    reach: Reach,
    /// The interfaces of a publication without rules (one list, shared).
    no_interfaces: Arc<[InterfaceName]>,
}

impl<'a> Scope<'a> {
    fn new(desired: &Desired<'a>, observed: &'a Observed, contested: &'a BTreeMap<IpAddr, Vec<JailName>>) -> Scope<'a> {
        Scope {
            observed,
            ctx: Context { networks: desired.networks, contested, host: &observed.host_addrs },
            anchor: desired.anchor,
            reach: desired.reach,
            no_interfaces: Arc::from(Vec::new()),
        }
    }
}

/// Claims: decides, in seq order (the older first, so the older wins), each publication's
/// jail facts (its anchor name, whether it runs, its targets) and whether it gets its host
/// ports. Returns the statuses so far in seq order, the jails with their accepted publications,
/// and what was held.
fn claims<'a>(desired: &Desired<'a>, observed: &'a Observed) -> (Vec<(u64, PubStatus)>, Vec<JailFacts<'a>>, Held) {
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
        if let Some(i) = index.get(name) {
            jails[*i].seqs.push(s.seq);
            continue;
        }
        let component = name.anchor_component(desired.anchor);
        let first = *owner_of.entry(component.clone()).or_insert(jails.len());
        let clash = (first != jails.len()).then(|| name_clash(name, jails[first].name, desired.anchor)).flatten();
        index.insert(name, jails.len());
        let mut facts = JailFacts::new(name, component, clash, running.get(name).copied());
        facts.seqs.push(s.seq);
        jails.push(facts);
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

    let held = Held {
        claims: held,
        jails: jails.iter_mut().map(|f| (f.name.clone(), std::mem::take(&mut f.seqs))).collect(),
        anchors: owner_of.into_iter().map(|(c, i)| (c, jails[i].name.clone())).collect(),
        contested,
        last_seq: order.last().map_or(0, |s| s.seq),
    };
    (statuses, jails, held)
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
    let mut st = PubStatus {
        status: Status::Active,
        interfaces: Arc::clone(&scope.no_interfaces),
        targets: Targets::default(),
        reached: Reached::default(),
        notes: vec![],
    };
    let reach = &scope.reach;
    let taken = |owner: &Stored| {
        let o = &owner.publication;
        Status::Conflict(format!("the host port is already published by {} as {}", o.holder(), o.spec))
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
        // A container's runtime gave its addresses: what the jail reports does not matter.
        (Some(_), _) if p.container.is_some() => {
            Some(address::given_targets(p.container.as_ref().map_or(&[][..], |c| &c.addresses)).map_err(Status::Error))
        }
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
        None => (conflict::claims(p, None, gateways, reach), None),
        Some(Err(status @ Status::Pending(_))) => {
            // The port stays claimed while the jail's addresses are being read.
            let claims = conflict::claims(p, None, gateways, reach);
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
            (conflict::claims(p, Some(fams), gateways, reach), Some(t))
        }
    };
    if let Some(owner) = older(&claims) {
        st.status = taken(owner);
        return (st, None);
    }
    if let (Place::Interface(i), Some(have)) = (&p.spec.place, &scope.observed.host_ifaces) {
        if !have.contains(i) {
            st.status = Status::Error(format!(
                "the host has no interface {i} (when it appears, the publication becomes active: the agent \
                 reads the host's interfaces again periodically and on kleenectl reconcile)"
            ));
            return (st, None);
        }
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
    host: &HostView,
    applied: &Applied,
    renderer: &mut Renderer,
) -> BTreeMap<String, Arc<Loaded>> {
    let mut wanted = BTreeMap::new();
    for facts in jails {
        if let Some(l) = render_jail(facts, statuses, host, applied.pf_errors, renderer) {
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
    host: &HostView,
    pf_errors: &BTreeMap<String, String>,
    renderer: &mut Renderer,
) -> Option<Arc<Loaded>> {
    let jail = facts.running.filter(|_| !facts.items.is_empty())?;
    let rendered = renderer.render(&facts.component, jail, &facts.items, host);
    let pf_error = pf_errors.get(&facts.component);
    for r in rendered.publications() {
        let i = statuses.binary_search_by_key(&r.seq, |(q, _)| *q).expect("status recorded in the claims phase");
        let st = &mut statuses[i].1;
        st.interfaces = Arc::clone(r.interfaces);
        st.notes = r.notes.to_vec();
        if st.status == Status::Active && pf_error.is_none() && r.no_rules.is_none() {
            st.reached = r.reached;
        }
        if let Some(err) = pf_error {
            st.status = Status::Error(format!("pf refused the anchor: {err}"));
        } else if let Some(why) = r.no_rules {
            st.status = Status::Error(why.to_string());
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
        Some(l) => (vec![], readback::labels(&l.text()).difference(&readback::labels(&want.text())).cloned().collect()),
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
        let desired = Desired { publications: desired, networks, anchor: "kleene", reach: Reach::default() };
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
        assert!(l.text().starts_with(
            "rdr on em1 inet proto udp from any to (em1) port 8080 tag \"kleene:web:em1:8080:80/udp\" -> 10.13.37.2 port 80\n"
        ));
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
        assert!(l.text().contains("-> 10.13.37.9 port 80"));
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
        assert!(!l.text().contains("8081"));
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
        assert!(!db.text().contains("5432"), "nothing conflicting is loaded: {}", db.text());
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
        assert!(l.text().contains("(em2)"));
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
        assert!(!p.wanted[&twin].text().contains("8081"));
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
            let d = Desired { publications: &desired, networks: &[], anchor: "kleene", reach: Reach::default() };
            super::plan(&d, obs, &Applied { loaded: &loaded, force: &f, pf_errors: &e }, &mut renderer)
        };
        let first = with_renderer(&obs);
        obs.jails[1] = jail("db", 5, &["10.13.37.9"]);
        let second = with_renderer(&obs);
        assert!(Arc::ptr_eq(&first.wanted["web"], &second.wanted["web"]), "web was not rendered again");
        assert!(!Arc::ptr_eq(&first.wanted["db"], &second.wanted["db"]));
        assert!(second.wanted["db"].text().contains("10.13.37.9"));
        assert_eq!(second, plan(&desired, &obs, &loaded, &[], &f, &e), "the same plan as with a fresh renderer");
        obs.gateways.inet = Some("em9".parse().unwrap());
        let third = with_renderer(&obs);
        assert!(third.wanted["web"].text().contains("(em9)"), "a gateway change renders again");
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

    /// Plans in full, then the publish of `new` alone against that plan, with one renderer as
    /// the agent keeps it. Returns (full plan of `old`, the publish, full plan of both).
    fn publish(
        old: &[Stored],
        new: &[Stored],
        obs: &Observed,
        applied: &Applied,
        networks: &[Network],
    ) -> (Plan, Option<JailPlan>, Plan) {
        let mut renderer = Renderer::default();
        let all: Vec<Stored> = old.iter().chain(new).cloned().collect();
        let desired = |publications| Desired { publications, networks, anchor: "kleene", reach: Reach::default() };
        let before = super::plan(&desired(old), obs, applied, &mut renderer);
        let alone = plan_publish(&desired(&all), obs, applied, &before.held, &mut renderer);
        let after = super::plan(&desired(&all), obs, applied, &mut Renderer::default());
        (before, alone, after)
    }

    #[test]
    fn a_publish_is_planned_alone() {
        let old = vec![stored(1, "web", "8080:80"), stored(2, "db", "5432"), stored(3, "web", "8443:443")];
        let mut obs = observed(vec![jail("web", 3, &["10.13.37.2"]), jail("db", 4, &["10.13.37.3"])], &[]);
        let loaded = settle(&old, &mut obs);
        let (f, e) = none();
        let applied = Applied { loaded: &loaded, force: &f, pf_errors: &e };
        let new = [stored(7, "web", "9090:90"), stored(8, "web", "5432:5432")];
        let (mut before, alone, after) = publish(&old, &new, &obs, &applied, &[]);
        let alone = alone.expect("one jail's publish");
        assert_eq!(alone.component.as_deref(), Some("web"));
        assert_eq!(alone.statuses.keys().copied().collect::<Vec<_>>(), [1, 3, 7, 8], "the jail's publications only");
        assert_eq!(alone.statuses[&7].status, Status::Active);
        assert_eq!(
            alone.statuses[&8].status,
            Status::Conflict("the host port is already published by jail db as 5432:5432/tcp".into())
        );
        let [Action::Load { component, loaded: l, kill_before, kill_after }] = &alone.actions[..] else {
            panic!("{:?}", alone.actions)
        };
        assert_eq!(component, "web");
        assert!(l.text().contains("port 9090") && !l.text().contains("port 5432"), "{}", l.text());
        assert!(kill_before.is_empty() && kill_after.is_empty());
        before.merge(alone);
        assert_eq!(before, after, "merged, the plan is the full plan");
    }

    #[test]
    fn a_publish_plans_alone_only_what_it_can() {
        let old = vec![stored(1, "web", "8080:80")];
        let obs = observed(vec![jail("web", 3, &["10.13.37.2"])], &[]);
        let (f, e) = none();
        let loaded = BTreeMap::new();
        let applied = Applied { loaded: &loaded, force: &f, pf_errors: &e };
        let (_, alone, _) = publish(&old, &[], &obs, &applied, &[]);
        assert!(alone.is_none(), "nothing new");
        let two = [stored(2, "web", "8081:81"), stored(3, "db", "8082:82")];
        assert!(publish(&old, &two, &obs, &applied, &[]).1.is_none(), "two jails");
        let late = [stored(1, "db", "8082:82")];
        let mut renderer = Renderer::default();
        let desired = Desired { publications: &old, networks: &[], anchor: "kleene", reach: Reach::default() };
        let before = super::plan(&desired, &obs, &applied, &mut renderer);
        let all: Vec<Stored> = old.iter().chain(&late).cloned().collect();
        let desired = Desired { publications: &all, networks: &[], anchor: "kleene", reach: Reach::default() };
        assert!(plan_publish(&desired, &obs, &applied, &before.held, &mut renderer).is_none(), "not newer");
        let gone = Desired { publications: &two[..1], networks: &[], anchor: "kleene", reach: Reach::default() };
        assert!(plan_publish(&gone, &obs, &applied, &before.held, &mut renderer).is_none(), "web's seq 1 is gone");
    }

    #[test]
    fn a_publish_into_a_clashing_name_leaves_the_anchor_alone() {
        let odd: JailName = "_x".parse().unwrap();
        let twin = odd.component();
        let old = vec![stored(1, "_x", "8080")];
        let mut obs = observed(vec![jail("_x", 3, &["10.13.37.2"]), jail(&twin, 4, &["10.13.37.3"])], &[]);
        let loaded = settle(&old, &mut obs);
        let (f, e) = none();
        let applied = Applied { loaded: &loaded, force: &f, pf_errors: &e };
        let (mut before, alone, after) = publish(&old, &[stored(2, &twin, "8081")], &obs, &applied, &[]);
        let alone = alone.expect("one jail's publish");
        assert_eq!(alone.component, None, "the anchor is jail _x's");
        assert!(alone.actions.is_empty());
        assert!(matches!(&alone.statuses[&2].status, Status::Error(r) if r.contains("maps to the same anchor name")));
        before.merge(alone);
        assert_eq!(before, after);
    }

    type Running = (u32, u8, u8, bool);
    type NewPublication = (u8, u8, u8, u8, bool);

    /// A small random host: up to four jails (one of them named like another's anchor), some
    /// running, some with unknown addresses; publications on the gateway, an interface or an
    /// address, colliding often; pf settled or not, with forced and refused anchors.
    #[derive(Debug, Clone)]
    struct Host {
        /// A name (of `names` in the test) and, when the jail runs, its jid, addresses (bits of
        /// `ADDRS`), whether they are known (0, 1), being read (2) or unreadable (3), and VNET.
        jails: Vec<(u8, Option<Running>)>,
        inet6_gateway: bool,
        networks: bool,
        /// The jail's name, then the spec's place, port, span and protocol, and a network.
        old: Vec<(u8, NewPublication)>,
        new_jail: u8,
        new: Vec<NewPublication>,
        settled: bool,
        force: u8,
        refused: u8,
        foreign: u8,
    }

    fn host() -> impl proptest::strategy::Strategy<Value = Host> {
        use proptest::prelude::*;
        let running = proptest::option::of((1u32..3, any::<u8>(), 0u8..4, any::<bool>()));
        let publication = || (0u8..4, 0u8..5, 0u8..2, 0u8..2, any::<bool>());
        let old = proptest::collection::vec((0u8..5, publication()), 0..10);
        let new = proptest::collection::vec(publication(), 1..4);
        (
            proptest::collection::vec((0u8..5, running), 0..5),
            any::<bool>(),
            any::<bool>(),
            old,
            0u8..5,
            new,
            any::<bool>(),
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
        )
            .prop_map(
                |(jails, inet6_gateway, networks, old, new_jail, new, settled, force, refused, foreign)| Host {
                    jails,
                    inet6_gateway,
                    networks,
                    old,
                    new_jail,
                    new,
                    settled,
                    force,
                    refused,
                    foreign,
                },
            )
    }

    /// Adds a publication with the next seq, unless the jail publishes the spec already.
    fn add(all: &mut Vec<Stored>, jail: &str, spec: String, network: bool) {
        let spec: crate::core::spec::PortSpec = spec.parse().unwrap();
        if !all.iter().any(|s| s.publication.jail.as_str() == jail && s.publication.spec == spec) {
            let mut s = stored(all.len() as u64 * 2 + 1, jail, &spec.to_string());
            s.publication.network = network.then(|| "kleenet".parse().unwrap());
            all.push(s);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        #[test]
        fn a_publish_planned_alone_agrees_with_the_full_plan(h in host()) {
            let twin = "_x".parse::<JailName>().unwrap().component();
            let names = ["web", "db", "_x", twin.as_str(), "idle"];
            const ADDRS: [&str; 6] = ["10.13.37.2", "10.13.37.3", "10.13.37.255", "fd00::2", "fd00::3", "192.0.2.9"];
            let mut jails = Vec::new();
            for (name, running) in &h.jails {
                let name = names[usize::from(*name)];
                let Some((jid, mask, known, vnet)) = running else { continue };
                if jails.iter().any(|j: &RunningJail| j.name.as_str() == name) {
                    continue;
                }
                let addrs: Vec<&str> = ADDRS.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, a)| *a).collect();
                let mut j = jail(name, *jid, &addrs);
                j.vnet = *vnet;
                if *known >= 2 {
                    j.addrs = Err(AddrsUnknown { reason: "reading".into(), pending: *known == 2 });
                }
                jails.push(j);
            }
            let spec = |place: u8, port: u8, span: u8, proto: u8| {
                let place = ["", "em1:", "192.0.2.1:", "[2001:db8::1]:"][usize::from(place)];
                let host = 8000 + u16::from(port);
                let proto = ["tcp", "udp"][usize::from(proto)];
                format!("{place}{host}-{}:80/{proto}", host + u16::from(span))
            };
            let mut all: Vec<Stored> = Vec::new();
            for (jail, (place, port, span, proto, network)) in &h.old {
                add(&mut all, names[usize::from(*jail)], spec(*place, *port, *span, *proto), *network);
            }
            let old_len = all.len();
            let new_jail = names[usize::from(h.new_jail)];
            for (place, port, span, proto, network) in &h.new {
                add(&mut all, new_jail, spec(*place, *port, *span, *proto), *network);
            }
            proptest::prop_assume!(all.len() > old_len);
            let networks: Vec<Network> = if h.networks {
                vec![Network {
                    name: "kleenet".parse().unwrap(),
                    subnet: Some("10.13.37.0/24".parse().unwrap()),
                    subnet6: Some("fd00::/64".parse().unwrap()),
                }]
            } else {
                vec![]
            };
            let mut obs = observed(jails, &[]);
            if h.inet6_gateway {
                obs.gateways.inet6 = Some("em1".parse().unwrap());
            }
            let components: Vec<String> = names.iter().map(|n| n.parse::<JailName>().unwrap().anchor_component("kleene")).collect();
            let pick = |mask: u8| -> BTreeSet<String> {
                components.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, c)| c.clone()).collect()
            };
            let (f, e) = none();
            let mut loaded = BTreeMap::new();
            if h.settled {
                let d = Desired { publications: &all[..old_len], networks: &networks, anchor: "kleene", reach: Reach::default() };
                let first = super::plan(&d, &obs, &Applied { loaded: &loaded, force: &f, pf_errors: &e }, &mut Renderer::default());
                apply(&first, &mut loaded, &mut obs);
            }
            obs.anchors.as_mut().unwrap().extend(pick(h.foreign >> 5));
            obs.foreign = pick(h.foreign & 0x1f);
            let force = pick(h.force);
            let pf_errors: BTreeMap<String, String> = pick(h.refused).into_iter().map(|c| (c, "syntax error".into())).collect();
            let applied = Applied { loaded: &loaded, force: &force, pf_errors: &pf_errors };

            let (mut before, alone, after) = publish(&all[..old_len], &all[old_len..], &obs, &applied, &networks);
            let alone = alone.expect("one jail's publish");
            proptest::prop_assert!(alone.statuses.keys().all(|seq| after.statuses.contains_key(seq)));
            before.merge(alone);
            proptest::prop_assert_eq!(before, after);
        }
    }

    #[test]
    fn a_loaded_text_is_kept_deflated_and_comes_back_as_it_was() {
        let text: String = (0..40)
            .map(|i| {
                format!(
                    "rdr on em0 inet proto tcp from any to (em0) port {} tag \"kleene:web:{i}\" -> 10.1.2.3 port 80\n",
                    10000 + i
                )
            })
            .collect();
        let l = Loaded::new("web".parse().unwrap(), 7, &text);
        assert_eq!(l.text(), text);
        assert!(l.packed.len() * 5 < text.len(), "{} bytes kept for {}", l.packed.len(), text.len());
        assert_eq!(l, Loaded::new("web".parse().unwrap(), 7, &text), "equal texts compare equal");
        assert_ne!(l, Loaded::new("web".parse().unwrap(), 7, &text.replace("10.1.2.3", "10.1.2.4")));
        assert_eq!(Loaded::new("web".parse().unwrap(), 7, "").text(), "");
        // Text that hardly deflates outgrows the first output buffer.
        let noise: String =
            (0u64..20_000).map(|i| char::from(b'!' + (i.wrapping_mul(2_654_435_761) >> 7) as u8 % 90)).collect();
        assert_eq!(Loaded::new("web".parse().unwrap(), 7, &noise).text(), noise);
    }
}
