//! The agent's engine: observes the host, plans with `core::plan`, applies the actions to pf,
//! and answers requests. One engine per agent, behind a mutex: requests and ticks are
//! serialised, and so are pfctl calls.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::core::address::usable;
use crate::core::conflict;
use crate::core::model::InterfaceName;
use crate::core::model::{Family, JailName, NetworkName};
use crate::core::plan::{self, Action, Loaded, Observed, Plan, RenderCache, RunningJail, Status, Stored};
use crate::core::publication::Publication;
use crate::core::readback;
use crate::core::spec::{Place, PortSpec};
use crate::proto::{AnchorView, ErrorKind, Finding, PublicationView, Response};
use crate::sys::host::{JailTools, Jails, RouteTool, Routes, SysError};
use crate::sys::parse::JailInfo;
use crate::sys::pf::{Pf, Pfctl, Show};
use crate::sys::runner::Limits;

use super::config::Config;
use super::log;
use super::state::{State, Store};

/// The FreeBSD interfaces the engine drives.
pub struct System {
    pub pf: Box<dyn Pf>,
    pub jails: Box<dyn Jails>,
    pub routes: Box<dyn Routes>,
}

impl System {
    /// The real tools at the configured paths.
    pub fn from_config(cfg: &Config) -> System {
        System {
            pf: Box::new(Pfctl { path: cfg.tools.pfctl.clone(), limits: Limits::default() }),
            jails: Box::new(JailTools {
                jls: cfg.tools.jls.clone(),
                jexec: cfg.tools.jexec.clone(),
                limits: Limits::default(),
            }),
            routes: Box::new(RouteTool { route: cfg.tools.route.clone(), limits: Limits::default() }),
        }
    }
}

/// A request error: its kind decides the client's exit status.
pub struct Refusal(pub ErrorKind, pub String);

/// See the module documentation.
pub struct Engine {
    cfg: Config,
    sys: System,
    store: Store,
    state: State,
    observed: Observed,
    /// Addresses of VNET jails, read once per jid.
    vnet_addrs: BTreeMap<u32, Vec<IpAddr>>,
    loaded: BTreeMap<String, Arc<Loaded>>,
    cache: RenderCache,
    /// Whether something changed since the last plan (state, observation, configuration).
    dirty: bool,
    force: BTreeSet<String>,
    pf_errors: BTreeMap<String, String>,
    /// Why the last observation was incomplete, per source ("jls", "route", "pf").
    problems: BTreeMap<&'static str, String>,
    last: Plan,
    verify_cursor: usize,
    verify_budget: f64,
}

impl Engine {
    /// Opens the state and prepares; nothing is observed or loaded until [`Engine::start`].
    pub fn new(cfg: Config, sys: System) -> anyhow::Result<Engine> {
        let (store, state) = Store::open(&cfg.state_dir)?;
        Ok(Engine {
            cfg,
            sys,
            store,
            state,
            observed: Observed::default(),
            vnet_addrs: BTreeMap::new(),
            loaded: BTreeMap::new(),
            cache: RenderCache::default(),
            dirty: true,
            force: BTreeSet::new(),
            pf_errors: BTreeMap::new(),
            problems: BTreeMap::new(),
            last: Plan::default(),
            verify_cursor: 0,
            verify_budget: 0.0,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Replaces the configuration (SIGHUP). The socket and state directory stay as they were
    /// at start; every anchor is loaded again under the new settings.
    pub fn reconfigure(&mut self, mut cfg: Config, sys: System) {
        if cfg.socket != self.cfg.socket || cfg.state_dir != self.cfg.state_dir {
            log::warn("socket and state_dir changes take effect only when the agent restarts");
            cfg.socket = self.cfg.socket.clone();
            cfg.state_dir = self.cfg.state_dir.clone();
        }
        if cfg.anchor != self.cfg.anchor {
            for component in self.loaded.keys().cloned().collect::<Vec<_>>() {
                self.flush(&component, None);
            }
            self.loaded.clear();
        }
        self.cfg = cfg;
        self.sys = sys;
        self.vnet_addrs.clear();
        self.dirty = true;
        self.start();
    }

    /// Start-up: observe, then load every running jail's anchor once (pf may have been emptied
    /// by a reboot, and what an earlier process loaded cannot be trusted) and flush anchors the
    /// state does not know.
    pub fn start(&mut self) {
        self.observe();
        self.force = self.state.publications.iter().map(|s| s.publication.jail.component()).collect();
        self.reconcile();
    }

    fn anchor_path(&self, component: &str) -> String {
        format!("{}/{component}", self.cfg.anchor)
    }

    /// Reads jails, gateways and the anchors pf holds. A source that fails keeps its previous
    /// observation (a failing jls must not look like every jail stopped).
    pub fn observe(&mut self) {
        let before = self.observed.clone();
        self.observe_now();
        if self.observed != before {
            self.dirty = true;
        }
    }

    fn observe_now(&mut self) {
        // The four reads are independent: run them at once (pfctl is still called by one
        // thread at a time, since the engine is locked).
        let sys = &self.sys;
        let parent = self.cfg.anchor.as_str();
        let (jails, gateways, anchors) = std::thread::scope(|s| {
            let jails = s.spawn(|| sys.jails.list());
            let gateways = s.spawn(|| Self::read_gateways(sys));
            let anchors = sys.pf.anchors(parent);
            let join = "observation threads do not panic";
            (jails.join().expect(join), gateways.join().expect(join), anchors)
        });
        match jails {
            Ok(list) => {
                self.problems.remove("jls");
                let jails: Vec<RunningJail> = list.into_iter().map(|j| self.running(j)).collect();
                let live: BTreeSet<u32> = jails.iter().map(|j| j.jid).collect();
                self.vnet_addrs.retain(|jid, _| live.contains(jid));
                self.observed.jails = jails;
            }
            Err(e) => self.problem("jls", format!("cannot list jails: {e}")),
        }
        self.apply_gateways(gateways);
        let prefix = format!("{}/", self.cfg.anchor);
        match anchors {
            Ok(list) => {
                self.problems.remove("pf");
                self.observed.anchors = Some(
                    list.iter()
                        .filter_map(|a| a.strip_prefix(&prefix))
                        .filter(|c| !c.contains('/'))
                        .map(str::to_string)
                        .collect(),
                );
            }
            Err(e) => {
                self.problem("pf", format!("pf is not usable: {}", e.message()));
                self.observed.anchors = None;
            }
        }
    }

    /// What a request that changes one jail observes: that jail (`jls -j`) and the default
    /// routes, so that the request costs work proportional to it, not to the host. The full
    /// jail list and pf's anchors are read every poll.
    fn observe_jail(&mut self, name: &JailName) {
        let before = self.observed.clone();
        let sys = &self.sys;
        let (jail, gateways) = std::thread::scope(|s| {
            let gateways = s.spawn(|| Self::read_gateways(sys));
            let jail = sys.jails.get(name);
            (jail, gateways.join().expect("observation threads do not panic"))
        });
        match jail {
            Ok(found) => {
                let fresh = found.map(|j| self.running(j));
                let at = self.observed.jails.iter().position(|j| &j.name == name);
                match (at, fresh) {
                    (Some(i), Some(j)) => self.observed.jails[i] = j,
                    (Some(i), None) => {
                        self.observed.jails.remove(i);
                    }
                    (None, Some(j)) => self.observed.jails.push(j),
                    (None, None) => {}
                }
            }
            Err(e) => self.problem("jls", format!("cannot read jail {name}: {e}")),
        }
        self.apply_gateways(gateways);
        if self.observed != before {
            self.dirty = true;
        }
    }

    /// A jail as the planner sees it: its usable addresses (a VNET jail's read inside it, once
    /// per jid).
    fn running(&mut self, j: JailInfo) -> RunningJail {
        let addrs = if j.vnet {
            match self.vnet_addrs.get(&j.jid) {
                Some(a) => a.clone(),
                None => match self.sys.jails.vnet_addrs(j.jid) {
                    Ok(a) => {
                        self.vnet_addrs.insert(j.jid, a.clone());
                        a
                    }
                    Err(e) => {
                        log::warn(&format!("cannot read the addresses of VNET jail {} (jid {}): {e}", j.name, j.jid));
                        vec![]
                    }
                },
            }
        } else {
            j.ip4.iter().chain(j.ip6.iter()).copied().filter(usable).collect()
        };
        RunningJail { name: j.name, jid: j.jid, addrs }
    }

    fn read_gateways(sys: &System) -> [Result<Option<InterfaceName>, SysError>; 2] {
        std::thread::scope(|s| {
            let v6 = s.spawn(|| sys.routes.gateway(Family::Inet6));
            let v4 = sys.routes.gateway(Family::Inet);
            [v4, v6.join().expect("observation threads do not panic")]
        })
    }

    fn apply_gateways(&mut self, gateways: [Result<Option<InterfaceName>, SysError>; 2]) {
        for (family, gateway) in Family::BOTH.into_iter().zip(gateways) {
            let source = if family == Family::Inet { "route" } else { "route6" };
            match gateway {
                Ok(g) => {
                    let slot = match family {
                        Family::Inet => &mut self.observed.gateways.inet,
                        Family::Inet6 => &mut self.observed.gateways.inet6,
                    };
                    if *slot != g {
                        log::info(&format!(
                            "{} gateway interface: {}",
                            family.human(),
                            g.as_ref().map_or("none".to_string(), |i| i.to_string())
                        ));
                    }
                    *slot = g;
                    self.problems.remove(source);
                }
                Err(e) => self.problem(source, format!("cannot read the {} default route: {e}", family.human())),
            }
        }
    }

    fn problem(&mut self, source: &'static str, msg: String) {
        if self.problems.get(source) != Some(&msg) {
            log::warn(&msg);
        }
        self.problems.insert(source, msg);
    }

    fn plan_with(&mut self, publications: &[Stored]) -> Plan {
        plan::plan(
            publications,
            &self.observed,
            &self.loaded,
            &self.cfg.networks,
            &self.force,
            &self.pf_errors,
            &mut self.cache,
        )
    }

    fn plan_current(&mut self) -> Plan {
        let publications = std::mem::take(&mut self.state.publications);
        let plan = self.plan_with(&publications);
        self.state.publications = publications;
        plan
    }

    /// Plans against the current observation and applies the actions. Returns the components
    /// whose load pf refused, with pfctl's message.
    pub fn reconcile(&mut self) -> BTreeMap<String, String> {
        if !self.dirty && self.force.is_empty() && self.pf_errors.is_empty() {
            return BTreeMap::new();
        }
        let plan = self.plan_current();
        let before = self.pf_errors.clone();
        let failed = self.execute(&plan.actions);
        self.force.clear();
        self.dirty = false;
        self.last = if self.pf_errors != before { self.plan_current() } else { plan };
        failed
    }

    fn execute(&mut self, actions: &[Action]) -> BTreeMap<String, String> {
        let mut failed = BTreeMap::new();
        for a in actions {
            match a {
                Action::Load { component, loaded, kill_before, kill_after } => {
                    let path = self.anchor_path(component);
                    self.kill(kill_before);
                    match self.sys.pf.load(&path, &loaded.text) {
                        Ok(()) => {
                            log::info(&format!("loaded anchor {path} (jail {}, jid {})", loaded.jail, loaded.jid));
                            self.loaded.insert(component.clone(), Arc::clone(loaded));
                            if let Some(a) = self.observed.anchors.as_mut() {
                                a.insert(component.clone());
                            }
                            self.pf_errors.remove(component);
                            self.kill(kill_after);
                        }
                        Err(e) => {
                            if self.pf_errors.get(component) != Some(&e.message()) {
                                log::warn(&format!("pf refused anchor {path}: {e} (retrying every tick)"));
                            }
                            self.pf_errors.insert(component.clone(), e.message());
                            failed.insert(component.clone(), e.message());
                        }
                    }
                }
                Action::Flush { component, kill } => self.flush(component, kill.clone()),
            }
        }
        failed
    }

    fn flush(&mut self, component: &str, kill: Option<Vec<String>>) {
        let path = self.anchor_path(component);
        let labels = match kill {
            Some(k) => k,
            None => match self.sys.pf.show(Some(&path), Show::Rules) {
                Ok(text) => {
                    // An anchor of this agent carries jail labels (`kleene/...`): one kill each.
                    let all: Vec<String> = readback::labels(&text).into_iter().collect();
                    let jail: Vec<String> = all.iter().filter(|l| l.starts_with("kleene/")).cloned().collect();
                    if jail.is_empty() { all } else { jail }
                }
                Err(e) => {
                    log::warn(&format!("cannot read the labels of anchor {path} before flushing it: {e}"));
                    vec![]
                }
            },
        };
        match self.sys.pf.flush(&path) {
            Ok(()) => {
                log::info(&format!("flushed anchor {path}"));
                self.loaded.remove(component);
                if let Some(a) = self.observed.anchors.as_mut() {
                    a.remove(component);
                }
                self.pf_errors.remove(component);
                self.kill(&labels);
            }
            Err(e) => log::warn(&format!("cannot flush anchor {path}: {e}")),
        }
    }

    fn kill(&self, labels: &[String]) {
        for l in labels {
            if let Err(e) = self.sys.pf.kill_label(l) {
                log::warn(&format!("cannot kill the states of label {l}: {e}"));
            }
        }
    }

    /// One poll tick: observe, verify a share of the loaded anchors, reconcile.
    pub fn tick(&mut self) {
        self.observe();
        let per_tick = self.loaded.len() as f64 * self.cfg.poll_interval_ms as f64 / self.cfg.verify_interval_ms as f64;
        self.verify_budget += per_tick;
        let n = self.verify_budget.floor() as usize;
        self.verify_budget -= n as f64;
        if n > 0 {
            self.verify(Some(n));
        }
        self.reconcile();
    }

    /// Reads back `count` loaded anchors (all of them for `None`), round robin, and marks those
    /// that differ from what was loaded for reloading.
    pub fn verify(&mut self, count: Option<usize>) {
        if self.observed.anchors.is_none() {
            return;
        }
        let components: Vec<String> = self.loaded.keys().cloned().collect();
        if components.is_empty() {
            return;
        }
        let count = count.unwrap_or(components.len()).min(components.len());
        for i in 0..count {
            let component = &components[(self.verify_cursor + i) % components.len()];
            let path = self.anchor_path(component);
            let read = self
                .sys
                .pf
                .show(Some(&path), Show::Nat)
                .and_then(|nat| self.sys.pf.show(Some(&path), Show::Rules).map(|rules| nat + &rules));
            let expected = readback::readback_keys(&self.loaded[component].text);
            match read {
                Ok(text) if readback::readback_keys(&text) == expected => {}
                Ok(_) => {
                    log::warn(&format!("anchor {path} was changed behind the agent's back; reloading it"));
                    self.force.insert(component.clone());
                }
                Err(e) => {
                    log::warn(&format!("cannot read anchor {path} back ({}); reloading it", e.message()));
                    self.force.insert(component.clone());
                }
            }
        }
        self.verify_cursor = (self.verify_cursor + count) % components.len();
    }

    /// `kleenectl reconcile [--verify]`.
    pub fn reconcile_now(&mut self, verify: bool) -> Response {
        self.observe();
        if verify {
            self.verify(None);
        }
        let failed = self.reconcile();
        if failed.is_empty() {
            Response::ok(format!("reconciled: {} anchors loaded", self.loaded.len()))
        } else {
            let list: Vec<String> = failed.iter().map(|(c, e)| format!("{}: {e}", self.anchor_path(c))).collect();
            Response::err(ErrorKind::Pf, format!("pf refused: {}", list.join("; ")))
        }
    }

    /// Flushes every anchor the agent loaded (on exit with `flush_on_exit`).
    pub fn flush_all(&mut self) {
        for (component, l) in std::mem::take(&mut self.loaded) {
            self.flush(&component, Some(vec![l.jail.label()]));
        }
    }

    /// `kleenectl publish`.
    pub fn publish(
        &mut self,
        jail: &str,
        specs: &[String],
        sources: &[String],
        log_flag: bool,
        network: Option<&str>,
    ) -> Result<Response, Refusal> {
        let invalid = |e: &dyn std::fmt::Display| Refusal(ErrorKind::Invalid, e.to_string());
        let jail: JailName = jail.parse().map_err(|e| invalid(&e))?;
        if specs.is_empty() {
            return Err(Refusal(ErrorKind::Invalid, "give at least one port spec".into()));
        }
        let specs: Vec<PortSpec> =
            specs.iter().map(|s| PortSpec::parse(s)).collect::<Result<_, _>>().map_err(|e| invalid(&e))?;
        let sources = sources.iter().map(|s| s.parse()).collect::<Result<Vec<_>, _>>().map_err(|e| invalid(&e))?;
        let network: Option<NetworkName> = network.map(str::parse).transpose().map_err(|e| invalid(&e))?;
        if let Some(n) = &network {
            if !self.cfg.networks.iter().any(|c| &c.name == n) {
                let names: Vec<String> = self.cfg.networks.iter().map(|c| c.name.to_string()).collect();
                return Err(Refusal(
                    ErrorKind::Invalid,
                    format!(
                        "network {n} is not configured (configured: {})",
                        if names.is_empty() { "none".into() } else { names.join(", ") }
                    ),
                ));
            }
        }
        let new: Vec<Publication> = specs
            .into_iter()
            .map(|s| Publication::new(jail.clone(), s, sources.clone(), log_flag, network.clone()))
            .collect();

        for (i, p) in new.iter().enumerate() {
            if let Some(q) = new[..i].iter().find(|q| q.spec == p.spec) {
                return Err(Refusal(ErrorKind::Invalid, format!("{} is given twice (as {})", p.spec, q.spec)));
            }
            let mine = conflict::claims(p, None, &self.observed.gateways);
            if let Some(q) =
                new[..i].iter().find(|q| conflict::collide(&mine, &conflict::claims(q, None, &self.observed.gateways)))
            {
                return Err(Refusal(
                    ErrorKind::Conflict,
                    format!("{} and {} claim the same host port", q.spec, p.spec),
                ));
            }
        }
        let component = jail.component();
        if let Some(other) = self
            .state
            .publications
            .iter()
            .map(|s| &s.publication.jail)
            .find(|j| **j != jail && j.component() == component)
        {
            return Err(Refusal(
                ErrorKind::Conflict,
                format!("jail {jail} maps to the same anchor name ({component}) as jail {other}; rename one of them"),
            ));
        }
        let mut fresh = Vec::new();
        let mut already = Vec::new();
        for p in new {
            match self.state.publications.iter().find(|s| s.publication.jail == p.jail && s.publication.spec == p.spec)
            {
                Some(s) if s.publication == p => already.push(p),
                Some(_) => {
                    return Err(Refusal(
                        ErrorKind::Conflict,
                        format!(
                            "jail {} already publishes {} with other options; unpublish it first (kleenectl unpublish -j {} {})",
                            p.jail, p.spec, p.jail, p.spec
                        ),
                    ));
                }
                None => fresh.push(p),
            }
        }
        let mut lines: Vec<String> =
            already.iter().map(|p| format!("{} {}: already published, nothing changed", p.jail, p.spec)).collect();
        if fresh.is_empty() {
            return Ok(Response::ok(lines.join("\n")));
        }

        let per_jail = self.state.publications.iter().filter(|s| s.publication.jail == jail).count() + fresh.len();
        if per_jail > self.cfg.max_publications_per_jail {
            return Err(Refusal(
                ErrorKind::Limit,
                format!(
                    "jail {jail} would have {per_jail} publications; max_publications_per_jail is {}",
                    self.cfg.max_publications_per_jail
                ),
            ));
        }
        let total = self.state.publications.len() + fresh.len();
        if total > self.cfg.max_publications {
            return Err(Refusal(
                ErrorKind::Limit,
                format!("the agent would hold {total} publications; max_publications is {}", self.cfg.max_publications),
            ));
        }

        self.observe_jail(&jail);
        // The candidate state is the current one plus the new publications, appended in place
        // (cloning the whole state would cost work proportional to the host); every refusal
        // below takes them out again.
        let (old_len, old_next) = (self.state.publications.len(), self.state.next_seq);
        let mut seqs = Vec::new();
        for p in fresh {
            seqs.push(self.state.next_seq);
            self.state.publications.push(Stored { seq: self.state.next_seq, publication: p });
            self.state.next_seq += 1;
        }
        let plan = self.plan_current();
        let undo = |e: &mut Engine, r: Refusal| {
            e.state.publications.truncate(old_len);
            e.state.next_seq = old_next;
            e.last = e.plan_current();
            Err(r)
        };
        for (i, seq) in seqs.iter().enumerate() {
            if let Status::Conflict(why) = &plan.statuses[seq].status {
                let spec = &self.state.publications[old_len + i].publication.spec;
                let msg = format!("cannot publish {spec} for jail {jail}: {why}");
                return undo(self, Refusal(ErrorKind::Conflict, msg));
            }
        }
        let failed = self.execute(&plan.actions);
        self.force.clear();
        if let Some(err) = failed.get(&component) {
            self.pf_errors.remove(&component);
            let msg = format!(
                "pf refused the rules for jail {jail}, so nothing was published: {err}\n\
                 Check that pf is loaded and pfctl works (kleenectl check)."
            );
            return undo(self, Refusal(ErrorKind::Pf, msg));
        }
        if let Err(e) = self.save_jail(&jail) {
            let refused = undo(self, Refusal(ErrorKind::Internal, format!("{e:#}; nothing was published")));
            // Put pf back the way the stored state says.
            let actions = self.last.actions.clone();
            self.execute(&actions);
            return refused;
        }
        self.last = plan;
        self.dirty = false;
        for seq in seqs {
            lines.push(self.describe(seq));
        }
        Ok(Response::ok(lines.join("\n")))
    }

    /// Writes `jail`'s publications as the state has them.
    fn save_jail(&self, jail: &JailName) -> anyhow::Result<()> {
        let mine: Vec<&Stored> = self.state.publications.iter().filter(|s| &s.publication.jail == jail).collect();
        self.store.save_jail(jail, &mine)
    }

    fn describe(&self, seq: u64) -> String {
        let s = self.state.publications.iter().find(|s| s.seq == seq).expect("stored");
        let p = &s.publication;
        let st = &self.last.statuses[&seq];
        match &st.status {
            Status::Active => {
                let on = match &p.spec.place {
                    Place::Address(a) => format!("address {a}"),
                    _ => {
                        let i: Vec<String> = st.interfaces.iter().map(|i| i.to_string()).collect();
                        i.join(", ")
                    }
                };
                let to: Vec<String> =
                    [st.targets.inet, st.targets.inet6].iter().flatten().map(IpAddr::to_string).collect();
                format!("published {} {} on {on} -> {}", p.jail, p.spec, to.join(", "))
            }
            other => format!("stored {} {}: {}: {}", p.jail, p.spec, other.word(), other.reason().unwrap_or_default()),
        }
    }

    /// `kleenectl unpublish`.
    pub fn unpublish(&mut self, jail: &str, specs: &[String], all: bool) -> Result<Response, Refusal> {
        let jail: JailName =
            jail.parse().map_err(|e: crate::core::model::InvalidValue| Refusal(ErrorKind::Invalid, e.to_string()))?;
        if all != specs.is_empty() {
            return Err(Refusal(ErrorKind::Invalid, "give the specs to unpublish, or --all".into()));
        }
        let specs: Vec<PortSpec> = specs
            .iter()
            .map(|s| PortSpec::parse(s))
            .collect::<Result<_, _>>()
            .map_err(|e| Refusal(ErrorKind::Invalid, e.to_string()))?;
        let mine = |s: &Stored| s.publication.jail == jail;
        let remove: BTreeSet<u64> = if all {
            self.state.publications.iter().filter(|s| mine(s)).map(|s| s.seq).collect()
        } else {
            let mut set = BTreeSet::new();
            let mut missing = Vec::new();
            for spec in &specs {
                match self.state.publications.iter().find(|s| mine(s) && &s.publication.spec == spec) {
                    Some(s) => {
                        set.insert(s.seq);
                    }
                    None => missing.push(spec.to_string()),
                }
            }
            if !missing.is_empty() {
                return Err(Refusal(
                    ErrorKind::NotFound,
                    format!(
                        "jail {jail} does not publish {}; nothing was changed (see kleenectl ls -j {jail})",
                        missing.join(", ")
                    ),
                ));
            }
            set
        };
        if remove.is_empty() {
            return Err(Refusal(ErrorKind::NotFound, format!("jail {jail} publishes nothing; nothing was changed")));
        }
        let removed: Vec<String> = self
            .state
            .publications
            .iter()
            .filter(|s| remove.contains(&s.seq))
            .map(|s| s.publication.spec.to_string())
            .collect();
        let remaining: Vec<&Stored> =
            self.state.publications.iter().filter(|s| mine(s) && !remove.contains(&s.seq)).collect();
        self.store
            .save_jail(&jail, &remaining)
            .map_err(|e| Refusal(ErrorKind::Internal, format!("{e:#}; nothing was unpublished")))?;
        self.state.publications.retain(|s| !remove.contains(&s.seq));
        self.dirty = true;
        self.observe_jail(&jail);
        let failed = self.reconcile();
        let msg = format!("unpublished {jail} {}", removed.join(", "));
        match failed.get(&jail.component()) {
            None => Ok(Response::ok(msg)),
            Some(e) => Err(Refusal(
                ErrorKind::Pf,
                format!("{msg}, but pf refused the new rules ({e}); the agent retries every tick"),
            )),
        }
    }

    /// `kleenectl ls`.
    pub fn list(&self, jail: Option<&str>) -> Result<Vec<PublicationView>, Refusal> {
        let jail: Option<JailName> = jail
            .map(str::parse)
            .transpose()
            .map_err(|e: crate::core::model::InvalidValue| Refusal(ErrorKind::Invalid, e.to_string()))?;
        let mut pubs: Vec<&Stored> =
            self.state.publications.iter().filter(|s| jail.as_ref().is_none_or(|j| &s.publication.jail == j)).collect();
        pubs.sort_by(|a, b| {
            (&a.publication.jail, &a.publication.spec).cmp(&(&b.publication.jail, &b.publication.spec))
        });
        Ok(pubs
            .into_iter()
            .map(|s| {
                let p = &s.publication;
                let pending = plan::PubStatus {
                    status: Status::Pending("not planned yet".into()),
                    interfaces: Vec::new().into(),
                    targets: Default::default(),
                };
                let st = self.last.statuses.get(&s.seq).unwrap_or(&pending);
                let mut status = st.status.clone();
                if status == Status::Active {
                    if let Some(p) = self.problems.get("pf") {
                        status = Status::Error(p.clone());
                    }
                }
                PublicationView {
                    jail: p.jail.to_string(),
                    spec: p.spec.to_string(),
                    protocol: p.spec.proto.to_string(),
                    host_ports: p.spec.host.to_string(),
                    jail_ports: p.spec.jail.to_string(),
                    interfaces: st.interfaces.iter().map(|i| i.to_string()).collect(),
                    address: match &p.spec.place {
                        Place::Address(a) => Some(a.to_string()),
                        _ => None,
                    },
                    ipv4: st.targets.inet.map(|a| a.to_string()),
                    ipv6: st.targets.inet6.map(|a| a.to_string()),
                    state: status.word().to_string(),
                    reason: status.reason().map(str::to_string),
                    sources: p.sources.iter().map(|c| c.to_string()).collect(),
                    log: p.log,
                    network: p.network.as_ref().map(|n| n.to_string()),
                }
            })
            .collect())
    }

    /// `kleenectl rules`.
    pub fn rules(&self, jail: Option<&str>) -> Result<Vec<AnchorView>, Refusal> {
        let jail: Option<JailName> = jail
            .map(str::parse)
            .transpose()
            .map_err(|e: crate::core::model::InvalidValue| Refusal(ErrorKind::Invalid, e.to_string()))?;
        Ok(self
            .loaded
            .iter()
            .filter(|(_, l)| jail.as_ref().is_none_or(|j| &l.jail == j))
            .map(|(c, l)| AnchorView { anchor: self.anchor_path(c), jail: l.jail.to_string(), text: l.text.clone() })
            .collect())
    }

    /// `kleenectl check`: what is wrong with the host's pf set-up, and how to fix it.
    pub fn check(&self) -> Vec<Finding> {
        let mut out = vec![Finding { ok: true, what: "agent".into(), detail: "reachable".into(), fix: None }];
        let pfctl = self.cfg.tools.pfctl.display().to_string();
        match self.sys.pf.enabled() {
            Err(e) => {
                let fix = if e.is_missing() {
                    format!("install pfctl or set tools.pfctl in the config (now {pfctl})")
                } else {
                    "load pf: kldload pf, and set pf_enable=\"YES\" in /etc/rc.conf (service pf enable)".into()
                };
                out.push(Finding { ok: false, what: "pf".into(), detail: e.message(), fix: Some(fix) });
                return out;
            }
            Ok(state) => {
                out.push(Finding { ok: true, what: "pf device".into(), detail: format!("{pfctl} works"), fix: None });
                let enabled = state == Some(true);
                out.push(Finding {
                    ok: enabled,
                    what: "pf enabled".into(),
                    detail: match state {
                        Some(true) => "pf is enabled".into(),
                        Some(false) => "pf is disabled: rules are loaded but not applied".into(),
                        None => "pfctl -s info did not say whether pf is enabled".into(),
                    },
                    fix: (!enabled).then(|| "service pf enable && service pf start (or pfctl -e)".into()),
                });
            }
        }
        let a = &self.cfg.anchor;
        for (what, show, line, section) in [
            ("rdr-anchor", Show::Nat, format!("rdr-anchor \"{a}/*\""), "translation (after any nat/rdr rules)"),
            (
                "anchor",
                Show::Rules,
                format!("anchor \"{a}/*\""),
                "filter (after the block rules you want to apply first)",
            ),
        ] {
            match self.sys.pf.show(None, show) {
                Ok(text) => {
                    let ok = text.lines().any(|l| l.trim_start().starts_with(&line));
                    out.push(Finding {
                        ok,
                        what: format!("main ruleset {what}"),
                        detail: if ok {
                            format!("has {line}")
                        } else {
                            format!("has no {line}: rules in {a}/* are never evaluated")
                        },
                        fix: (!ok).then(|| {
                            format!("add `{line}` to the {section} section of /etc/pf.conf, then service pf reload")
                        }),
                    });
                }
                Err(e) => out.push(Finding {
                    ok: false,
                    what: format!("main ruleset {what}"),
                    detail: format!("cannot read the main ruleset: {}", e.message()),
                    fix: Some("run kleenectl check as root on the pf host".into()),
                }),
            }
        }
        for (source, p) in &self.problems {
            if *source != "pf" {
                out.push(Finding {
                    ok: false,
                    what: (*source).into(),
                    detail: p.clone(),
                    fix: Some(format!("check tools.{} in the config", source.trim_end_matches('6'))),
                });
            }
        }
        for (c, e) in &self.pf_errors {
            out.push(Finding {
                ok: false,
                what: format!("anchor {}", self.anchor_path(c)),
                detail: format!("pf refused it: {e}"),
                fix: Some("see kleenectl rules and the agent's log".into()),
            });
        }
        out
    }

    /// A response for a refusal.
    pub fn refused(r: Refusal) -> Response {
        Response::err(r.0, r.1)
    }
}
