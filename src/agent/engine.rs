//! The agent's engine: observes the host, plans with `core::plan`, applies the actions to pf,
//! and answers requests. One engine per agent, behind a mutex: requests and ticks are
//! serialised, and so are pfctl calls. VNET jails' addresses are read on worker threads
//! (`vnet`), outside this lock.
//!
//! Nothing is reported as done that pf did not do: a load, flush or state kill that pfctl
//! refuses is kept, retried with exponential backoff per anchor (and per label), shown by
//! `ls` and `check`, and said in the answer to the request that caused it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::core::conflict;
use crate::core::model::InterfaceName;
use crate::core::model::{Family, JailName, LabelKind, NetworkName, is_own_label};
use crate::core::plan::{
    self, Action, AddrsUnknown, Applied, Desired, Loaded, Observed, Plan, RunningJail, Status, Stored,
};
use crate::core::publication::Publication;
use crate::core::readback;
use crate::core::renderer::Renderer;
use crate::core::spec::{Place, PortSpec};
use crate::proto::{AnchorView, ErrorKind, Finding, PublicationView, Response};
use crate::sys::host::{IfconfigTool, Interfaces, JailTools, Jails, RouteTool, Routes, SysError};
use crate::sys::parse::JailInfo;
use crate::sys::pf::{Pf, Pfctl, Show};
use crate::sys::runner::Limits;

use super::config::Config;
use super::log;
use super::state::{State, Store};
use super::vnet::VnetAddrs;

/// The most pfctl and jls may print: an anchor of 1,024 dual-stack publications prints about
/// 600 KB, jls about 120 bytes per jail.
const MAX_OUTPUT: usize = 4 * 1024 * 1024;
/// The most route may print (a dozen lines).
const MAX_ROUTE_OUTPUT: usize = 64 * 1024;
/// The most `ifconfig -j JID -a` may print: a jail's root can add addresses at will; 256 KiB
/// holds about 4,000 of them.
const MAX_JAIL_IFCONFIG_OUTPUT: usize = 256 * 1024;

/// The longest wait between two tries of a pf operation that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The FreeBSD interfaces the engine drives.
pub struct System {
    pub pf: Box<dyn Pf>,
    pub jails: Box<dyn Jails>,
    pub routes: Box<dyn Routes>,
    pub ifaces: Arc<dyn Interfaces>,
}

impl System {
    /// The real tools at the configured paths, each bounded by `tool_timeout_ms` and an output cap.
    pub fn from_config(cfg: &Config) -> System {
        let timeout = Duration::from_millis(cfg.tool_timeout_ms);
        let limits = |max_output| Limits { timeout, max_output };
        System {
            pf: Box::new(Pfctl { path: cfg.tools.pfctl.clone(), limits: limits(MAX_OUTPUT) }),
            jails: Box::new(JailTools { jls: cfg.tools.jls.clone(), limits: limits(MAX_OUTPUT) }),
            routes: Box::new(RouteTool { route: cfg.tools.route.clone(), limits: limits(MAX_ROUTE_OUTPUT) }),
            ifaces: Arc::new(IfconfigTool {
                ifconfig: cfg.tools.ifconfig.clone(),
                limits: limits(MAX_OUTPUT),
                jail_limits: limits(MAX_JAIL_IFCONFIG_OUTPUT),
            }),
        }
    }
}

/// Where an observation comes from, for problems reported by `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Jls,
    Route(Family),
    Pf,
    HostAddrs,
}

impl Source {
    /// The config key of the tool behind it.
    fn tool(self) -> &'static str {
        match self {
            Source::Jls => "jls",
            Source::Route(_) => "route",
            Source::Pf => "pfctl",
            Source::HostAddrs => "ifconfig",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Source::Jls => "jails",
            Source::Route(Family::Inet) => "IPv4 default route",
            Source::Route(Family::Inet6) => "IPv6 default route",
            Source::Pf => "pf",
            Source::HostAddrs => "host addresses",
        }
    }
}

/// A pf operation that failed: why, how often, and when it is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Retry {
    error: String,
    failures: u32,
    next: Instant,
}

impl Retry {
    /// The record after one more failure: the wait doubles from one poll interval up to
    /// [`MAX_BACKOFF`].
    fn failed(previous: Option<&Retry>, error: String, poll: Duration) -> Retry {
        let failures = previous.map_or(0, |r| r.failures).saturating_add(1);
        let wait = poll.saturating_mul(1u32 << failures.saturating_sub(1).min(20)).min(MAX_BACKOFF);
        Retry { error, failures, next: Instant::now() + wait }
    }

    fn due(&self, now: Instant) -> bool {
        self.next <= now
    }

    /// "retrying in 8 s (failed 4 times)".
    fn when(&self) -> String {
        let left = self.next.saturating_duration_since(Instant::now());
        let times = if self.failures == 1 { "once".to_string() } else { format!("{} times", self.failures) };
        format!("retrying in {} s (failed {times})", left.as_secs().max(1))
    }
}

/// A state kill pf refused, kept until it succeeds.
#[derive(Debug, Clone)]
struct PendingKill {
    /// The jail whose rules carried the label, when known.
    jail: Option<JailName>,
    retry: Retry,
}

/// Which anchors may be tried although they wait out a backoff.
#[derive(Debug, Clone, Copy)]
enum Bypass<'a> {
    None,
    All,
    /// The anchor of the request being served.
    Component(&'a str),
}

impl Bypass<'_> {
    fn covers(&self, component: &str) -> bool {
        match self {
            Bypass::None => false,
            Bypass::All => true,
            Bypass::Component(c) => *c == component,
        }
    }
}

/// Whose rules an anchor holds.
enum Ownership {
    /// This agent's: the labels to kill after flushing it.
    Ours(Vec<String>),
    /// No rule at all.
    Empty,
    /// Rules without this agent's labels.
    Foreign,
}

/// What applying a plan did not achieve.
#[derive(Debug, Default)]
struct Outcome {
    /// Loads pf refused, by component.
    loads: BTreeMap<String, String>,
    /// State kills pf refused, by label.
    kills: BTreeMap<String, String>,
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
    /// Addresses of VNET jails, read in the background.
    vnet: Arc<VnetAddrs>,
    /// When the host's own addresses were last read successfully.
    host_addrs_read: Option<Instant>,
    loaded: BTreeMap<String, Arc<Loaded>>,
    renderer: Renderer,
    /// Whether something changed since the last plan (state, observation, configuration).
    dirty: bool,
    force: BTreeSet<String>,
    /// Loads pf refused, by component (the planner reports them on the publications).
    pf_errors: BTreeMap<String, String>,
    /// When a failed load or flush of an anchor is tried again, by component.
    anchor_retry: BTreeMap<String, Retry>,
    /// Flushes pf refused, by component.
    flush_errors: BTreeMap<String, String>,
    /// State kills pf refused, by label.
    pending_kills: BTreeMap<String, PendingKill>,
    /// Anchors below the parent that hold no rule at all (nothing to flush, free to load).
    empty: BTreeSet<String>,
    /// Unpublished publications whose states pf has not killed yet, by label (shown by `ls`).
    removing: BTreeMap<String, Publication>,
    /// Why the last observation was incomplete, per source.
    problems: BTreeMap<Source, String>,
    last: Plan,
    verify_cursor: usize,
    verify_budget: f64,
}

impl Engine {
    /// Opens the state and prepares; nothing is observed or loaded until [`Engine::start`].
    /// `wake` is told when a background read finished (see [`Engine::refresh_vnet`]).
    pub fn new(cfg: Config, sys: System, wake: Sender<()>) -> anyhow::Result<Engine> {
        let (store, state) = Store::open(&cfg.state_dir)?;
        let vnet = VnetAddrs::new(Arc::clone(&sys.ifaces), Duration::from_millis(cfg.vnet_refresh_ms), wake);
        Ok(Engine {
            cfg,
            sys,
            store,
            state,
            observed: Observed::default(),
            vnet,
            host_addrs_read: None,
            loaded: BTreeMap::new(),
            renderer: Renderer::default(),
            dirty: true,
            force: BTreeSet::new(),
            pf_errors: BTreeMap::new(),
            anchor_retry: BTreeMap::new(),
            flush_errors: BTreeMap::new(),
            pending_kills: BTreeMap::new(),
            empty: BTreeSet::new(),
            removing: BTreeMap::new(),
            problems: BTreeMap::new(),
            last: Plan::default(),
            verify_cursor: 0,
            verify_budget: 0.0,
        })
    }

    /// The background reader of VNET jails' addresses (requests wait on it without the lock).
    pub fn vnet(&self) -> Arc<VnetAddrs> {
        Arc::clone(&self.vnet)
    }

    /// How long a request may wait for background reads: one tool deadline and a margin.
    pub fn read_deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.cfg.tool_timeout_ms) + Duration::from_millis(500)
    }

    fn component(&self, jail: &JailName) -> String {
        jail.anchor_component(&self.cfg.anchor)
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
            for (component, l) in std::mem::take(&mut self.loaded) {
                self.flush(&component, Some(vec![l.jail.label()]));
            }
            self.observed.anchors = None;
            self.observed.foreign.clear();
            self.empty.clear();
            self.anchor_retry.clear();
            self.flush_errors.clear();
            self.pf_errors.clear();
        }
        self.vnet.reconfigure(Arc::clone(&sys.ifaces), Duration::from_millis(cfg.vnet_refresh_ms));
        self.cfg = cfg;
        self.sys = sys;
        self.host_addrs_read = None;
        self.dirty = true;
        self.start();
    }

    /// Start-up: observe, then load every running jail's anchor once (pf may have been emptied
    /// by a reboot, and what an earlier process loaded cannot be trusted) and flush anchors the
    /// state does not know.
    pub fn start(&mut self) {
        self.observe();
        self.force = self.state.publications.iter().map(|s| self.component(&s.publication.jail)).collect();
        self.reconcile_with(Bypass::All);
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
                self.problems.remove(&Source::Jls);
                if list.iter().any(|j| j.vnet) {
                    self.read_host_addrs(false);
                }
                let live: BTreeSet<u32> = list.iter().map(|j| j.jid).collect();
                self.vnet.retain(&live);
                self.observed.jails = list.into_iter().map(|j| self.running(j)).collect();
            }
            Err(e) => self.problem(Source::Jls, format!("cannot list jails: {e}")),
        }
        self.apply_gateways(gateways);
        let prefix = format!("{}/", self.cfg.anchor);
        match anchors {
            Ok(list) => {
                self.problems.remove(&Source::Pf);
                let present: BTreeSet<String> = list
                    .iter()
                    .filter_map(|a| a.strip_prefix(&prefix))
                    .filter(|c| !c.contains('/'))
                    .map(str::to_string)
                    .collect();
                self.observed.foreign.retain(|c| present.contains(c));
                self.empty.retain(|c| present.contains(c));
                self.observed.anchors = Some(present);
            }
            Err(e) => {
                self.problem(Source::Pf, format!("pf is not usable: {}", e.message()));
                self.observed.anchors = None;
            }
        }
    }

    /// Reads the host's own addresses (which a VNET jail may not claim) when they are older
    /// than `vnet_refresh_ms`, or now when `force`. A failed read keeps the last good one.
    fn read_host_addrs(&mut self, force: bool) {
        let fresh = self.host_addrs_read.is_some_and(|t| t.elapsed() < Duration::from_millis(self.cfg.vnet_refresh_ms));
        if fresh && !force {
            return;
        }
        match self.sys.ifaces.host_addrs() {
            Ok(addrs) => {
                self.problems.remove(&Source::HostAddrs);
                self.observed.host_addrs = addrs.into_iter().collect();
                self.host_addrs_read = Some(Instant::now());
            }
            Err(e) => self.problem(Source::HostAddrs, format!("cannot read the host's own addresses: {e}")),
        }
    }

    /// What a request that changes one jail observes: that jail (`jls -j`) and the default
    /// routes, so that the request costs work proportional to it, not to the host. The full
    /// jail list and pf's anchors are read every poll.
    pub fn observe_jail(&mut self, name: &JailName) {
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
            Err(e) => self.problem(Source::Jls, format!("cannot read jail {name}: {e}")),
        }
        self.apply_gateways(gateways);
        if self.observed != before {
            self.dirty = true;
        }
    }

    /// A jail as the planner sees it: its addresses (a VNET jail's as last read in the
    /// background, see `vnet`), or why they are not known.
    fn running(&mut self, j: JailInfo) -> RunningJail {
        let addrs = if !j.vnet {
            Ok(j.ip4.into_iter().chain(j.ip6).collect())
        } else if self.host_addrs_read.is_none() {
            self.read_host_addrs(false);
            self.vnet_addrs(j.jid, &j.name)
        } else {
            self.vnet_addrs(j.jid, &j.name)
        };
        RunningJail { name: j.name, jid: j.jid, vnet: j.vnet, addrs }
    }

    fn vnet_addrs(&self, jid: u32, name: &JailName) -> Result<Vec<IpAddr>, AddrsUnknown> {
        match (self.host_addrs_read, self.problems.get(&Source::HostAddrs)) {
            (None, Some(e)) => Err(AddrsUnknown {
                reason: format!(
                    "{e}; a VNET jail may not claim them, so its addresses are not used until they are read"
                ),
                pending: false,
            }),
            _ => self.vnet.lookup(jid, name),
        }
    }

    /// Takes in what background reads of VNET jails' addresses found since the last
    /// observation; no process is run. Returns whether anything changed.
    pub fn refresh_vnet(&mut self) -> bool {
        let mut changed = false;
        for i in 0..self.observed.jails.len() {
            let j = &self.observed.jails[i];
            if !j.vnet {
                continue;
            }
            let fresh = self.vnet_addrs(j.jid, &j.name);
            if fresh != self.observed.jails[i].addrs {
                self.observed.jails[i].addrs = fresh;
                changed = true;
            }
        }
        self.dirty |= changed;
        changed
    }

    /// Whether any running VNET jail's addresses are still being read for the first time, or
    /// `jail`'s when given.
    pub fn vnet_pending(&self, jail: Option<&JailName>) -> bool {
        self.observed
            .jails
            .iter()
            .filter(|j| jail.is_none_or(|n| &j.name == n))
            .any(|j| matches!(&j.addrs, Err(u) if u.pending))
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
            let source = Source::Route(family);
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
                    self.problems.remove(&source);
                }
                Err(e) => self.problem(
                    source,
                    format!("cannot read the {} default route: {e}; keeping the last one read", family.human()),
                ),
            }
        }
    }

    fn problem(&mut self, source: Source, msg: String) {
        if self.problems.get(&source) != Some(&msg) {
            log::warn(&msg);
        }
        self.problems.insert(source, msg);
    }

    fn plan_with(&mut self, publications: &[Stored]) -> Plan {
        let desired = Desired { publications, networks: &self.cfg.networks, anchor: &self.cfg.anchor };
        let applied = Applied { loaded: &self.loaded, force: &self.force, pf_errors: &self.pf_errors };
        plan::plan(&desired, &self.observed, &applied, &mut self.renderer)
    }

    fn plan_current(&mut self) -> Plan {
        let publications = std::mem::take(&mut self.state.publications);
        let plan = self.plan_with(&publications);
        self.state.publications = publications;
        plan
    }

    /// Plans against the current observation and applies the actions whose anchors are not
    /// waiting out a backoff, then retries the state kills that are due. Returns the loads pf
    /// refused, by component.
    pub fn reconcile(&mut self) -> BTreeMap<String, String> {
        self.reconcile_with(Bypass::None).loads
    }

    /// As [`Engine::reconcile`], trying the anchors `bypass` covers although they wait out a
    /// backoff (all of them, and every pending state kill, for [`Bypass::All`]).
    fn reconcile_with(&mut self, bypass: Bypass) -> Outcome {
        let now = matches!(bypass, Bypass::All);
        let retry_due = self.retries_due(now);
        if !self.dirty && self.force.is_empty() && !retry_due {
            return Outcome::default();
        }
        let plan = self.plan_current();
        let before = self.pf_errors.clone();
        let mut outcome = self.execute(&plan.actions, bypass);
        self.retry_kills(now, &mut outcome);
        // A failure of an anchor that is neither wanted, loaded nor in pf any more is moot.
        let observed = self.observed.anchors.as_ref();
        let relevant = |c: &String| {
            plan.wanted.contains_key(c) || self.loaded.contains_key(c) || observed.is_none_or(|a| a.contains(c))
        };
        self.pf_errors.retain(|c, _| relevant(c));
        self.anchor_retry.retain(|c, _| relevant(c));
        self.flush_errors.retain(|c, _| relevant(c));
        self.force.clear();
        self.dirty = false;
        self.last = if self.pf_errors != before { self.plan_current() } else { plan };
        outcome
    }

    /// Whether a failed pf operation is due for another try.
    fn retries_due(&self, now: bool) -> bool {
        let t = Instant::now();
        let anchors = self.anchor_retry.values().any(|r| now || r.due(t));
        anchors || self.pending_kills.values().any(|k| now || k.retry.due(t))
    }

    fn execute(&mut self, actions: &[Action], bypass: Bypass) -> Outcome {
        let mut out = Outcome::default();
        let now = Instant::now();
        for a in actions {
            let component = a.component();
            let waiting = self.anchor_retry.get(component).is_some_and(|r| !r.due(now));
            if waiting && !bypass.covers(component) {
                continue;
            }
            match a {
                Action::Load { component, loaded, kill_before, kill_after } => {
                    let path = self.anchor_path(component);
                    self.kill(kill_before, Some(&loaded.jail), &mut out);
                    match self.sys.pf.load(&path, &loaded.text) {
                        Ok(()) => {
                            log::info(&format!("loaded anchor {path} (jail {}, jid {})", loaded.jail, loaded.jid));
                            self.loaded.insert(component.clone(), Arc::clone(loaded));
                            if let Some(a) = self.observed.anchors.as_mut() {
                                a.insert(component.clone());
                            }
                            self.empty.remove(component);
                            self.pf_errors.remove(component);
                            self.anchor_retry.remove(component);
                            self.kill(kill_after, Some(&loaded.jail), &mut out);
                        }
                        Err(e) => {
                            let retry = Retry::failed(self.anchor_retry.get(component), e.message(), self.poll());
                            if self.pf_errors.get(component) != Some(&e.message()) {
                                log::warn(&format!("pf refused anchor {path}: {e} ({})", retry.when()));
                            }
                            self.pf_errors.insert(component.clone(), e.message());
                            self.anchor_retry.insert(component.clone(), retry);
                            out.loads.insert(component.clone(), e.message());
                        }
                    }
                }
                Action::Flush { component, kill } => self.flush_into(component, kill.clone(), &mut out),
            }
        }
        out
    }

    fn poll(&self) -> Duration {
        Duration::from_millis(self.cfg.poll_interval_ms)
    }

    fn flush(&mut self, component: &str, kill: Option<Vec<String>>) {
        let mut out = Outcome::default();
        self.flush_into(component, kill, &mut out);
    }

    /// Flushes an anchor and kills its states. An anchor the agent did not load itself (`kill`
    /// is `None`: left by an earlier run, or by someone else) is read first: only an anchor whose
    /// rules carry this agent's labels is the agent's; any other is left alone.
    fn flush_into(&mut self, component: &str, kill: Option<Vec<String>>, out: &mut Outcome) {
        let path = self.anchor_path(component);
        let (labels, jail) = match kill {
            Some(k) => (k, self.loaded.get(component).map(|l| l.jail.clone())),
            None => match self.ownership(&path) {
                Ok(Ownership::Ours(labels)) => (labels, None),
                Ok(Ownership::Empty) => {
                    self.empty.insert(component.to_string());
                    return;
                }
                Ok(Ownership::Foreign) => {
                    log::warn(&format!(
                        "anchor {path} holds rules this agent did not write (none carries its labels); it is left \
                         alone (is `anchor: {}` in the config meant for this agent alone?)",
                        self.cfg.anchor
                    ));
                    self.observed.foreign.insert(component.to_string());
                    return;
                }
                Err(e) => {
                    let retry = Retry::failed(self.anchor_retry.get(component), e.clone(), self.poll());
                    log::warn(&format!("cannot read anchor {path} before flushing it: {e} ({})", retry.when()));
                    self.anchor_retry.insert(component.to_string(), retry);
                    return;
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
                self.flush_errors.remove(component);
                self.anchor_retry.remove(component);
                self.kill(&labels, jail.as_ref(), out);
            }
            Err(e) => {
                let retry = Retry::failed(self.anchor_retry.get(component), e.message(), self.poll());
                if self.flush_errors.get(component) != Some(&e.message()) {
                    log::warn(&format!("cannot flush anchor {path}: {e} ({})", retry.when()));
                }
                self.flush_errors.insert(component.to_string(), e.message());
                self.anchor_retry.insert(component.to_string(), retry);
            }
        }
    }

    /// Whose rules `path` holds, read from pf.
    fn ownership(&self, path: &str) -> Result<Ownership, String> {
        let nat = self.sys.pf.show(Some(path), Show::Nat).map_err(|e| e.message())?;
        let rules = self.sys.pf.show(Some(path), Show::Rules).map_err(|e| e.message())?;
        let ours: Vec<String> = readback::labels(&rules).into_iter().filter(|l| is_own_label(l)).collect();
        Ok(if !ours.is_empty() {
            // One kill per jail label is enough: every pass rule of an anchor carries it.
            let jail: Vec<String> =
                ours.iter().filter(|l| LabelKind::of(l) == Some(LabelKind::Jail)).cloned().collect();
            Ownership::Ours(if jail.is_empty() { ours } else { jail })
        } else if nat.trim().is_empty() && rules.trim().is_empty() {
            Ownership::Empty
        } else {
            Ownership::Foreign
        })
    }

    /// Kills the states of `labels` (of `jail`'s rules); a kill pf refuses is kept and retried.
    fn kill(&mut self, labels: &[String], jail: Option<&JailName>, out: &mut Outcome) {
        for l in labels {
            match self.sys.pf.kill_label(l) {
                Ok(()) => {
                    self.pending_kills.remove(l);
                    self.removing.remove(l);
                }
                Err(e) => {
                    let retry = Retry::failed(self.pending_kills.get(l).map(|k| &k.retry), e.message(), self.poll());
                    log::warn(&format!("cannot kill the states of label {l}: {e} ({})", retry.when()));
                    self.pending_kills.insert(l.clone(), PendingKill { jail: jail.cloned(), retry });
                    out.kills.insert(l.clone(), e.message());
                }
            }
        }
    }

    /// Tries again the state kills that are due (all of them when `now`).
    fn retry_kills(&mut self, now: bool, out: &mut Outcome) {
        let t = Instant::now();
        let due: Vec<(String, Option<JailName>)> = self
            .pending_kills
            .iter()
            .filter(|(_, k)| now || k.retry.due(t))
            .map(|(l, k)| (l.clone(), k.jail.clone()))
            .collect();
        for (label, jail) in due {
            self.kill(std::slice::from_ref(&label), jail.as_ref(), out);
            if !self.pending_kills.contains_key(&label) {
                log::info(&format!("killed the states of label {label} (after an earlier failure)"));
                self.removing.remove(&label);
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

    /// The first half of `kleenectl reconcile`: observes everything, and starts reading every
    /// VNET jail's addresses and the host's again. The caller then waits for the reads without
    /// the engine's lock and calls [`Engine::reconcile_now`].
    pub fn begin_reconcile(&mut self) {
        self.vnet.invalidate_all();
        self.observe();
        if self.observed.jails.iter().any(|j| j.vnet) {
            self.read_host_addrs(true);
        }
    }

    /// `kleenectl reconcile [--verify]`, after [`Engine::begin_reconcile`]: applies everything
    /// now, backoffs ignored, and says what pf did not do.
    pub fn reconcile_now(&mut self, verify: bool) -> Response {
        self.refresh_vnet();
        if verify {
            self.verify(None);
        }
        self.dirty = true;
        self.reconcile_with(Bypass::All);
        let mut left: Vec<String> = Vec::new();
        for (c, e) in &self.pf_errors {
            left.push(format!("pf refused anchor {}: {e}", self.anchor_path(c)));
        }
        for (c, e) in &self.flush_errors {
            left.push(format!("pf did not flush anchor {}: {e}", self.anchor_path(c)));
        }
        for (l, k) in &self.pending_kills {
            left.push(format!("pf did not kill the states of label {l}: {}", k.retry.error));
        }
        if left.is_empty() {
            Response::ok(format!("reconciled: {} anchors loaded", self.loaded.len()))
        } else {
            Response::err(
                ErrorKind::Pf,
                format!(
                    "reconciled, but not all of it: {}; the agent retries with backoff (kleenectl check)",
                    left.join("; ")
                ),
            )
        }
    }

    /// Flushes every anchor the agent loaded (on exit with `flush_on_exit`).
    pub fn flush_all(&mut self) {
        let all: Vec<(String, String)> = self.loaded.iter().map(|(c, l)| (c.clone(), l.jail.label())).collect();
        for (component, label) in all {
            self.flush(&component, Some(vec![label]));
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

        let mut taken = conflict::Index::default();
        for (i, p) in new.iter().enumerate() {
            if let Some(q) = new[..i].iter().find(|q| q.spec == p.spec) {
                return Err(Refusal(ErrorKind::Invalid, format!("{} is given twice (as {})", p.spec, q.spec)));
            }
            let mine = conflict::claims(p, None, &self.observed.gateways);
            if let Some(q) = taken.owner(&mine).map(|j: usize| &new[j]) {
                return Err(Refusal(
                    ErrorKind::Conflict,
                    format!("{} and {} claim the same host port", q.spec, p.spec),
                ));
            }
            taken.hold(mine, i);
        }
        let component = self.component(&jail);
        if let Some(clash) = self
            .state
            .publications
            .iter()
            .find_map(|s| conflict::name_clash(&jail, &s.publication.jail, &self.cfg.anchor))
        {
            return Err(Refusal(ErrorKind::Conflict, clash.to_string()));
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

        // The jail was observed by the caller (`observe_jail`), VNET addresses included.
        // The candidate state is the current one plus the new publications, appended in place
        // (cloning the whole state would cost work proportional to the host); every refusal
        // below takes them out again.
        let (old_len, old_next) = (self.state.publications.len(), self.state.next_seq);
        let mut seqs = Vec::new();
        for p in fresh {
            let seq = match self.state.take_seq() {
                Ok(seq) => seq,
                Err(e) => {
                    self.state.publications.truncate(old_len);
                    self.state.next_seq = old_next;
                    return Err(Refusal(ErrorKind::Limit, format!("{e:#}")));
                }
            };
            seqs.push(seq);
            self.state.publications.push(Stored { seq, publication: p });
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
        let outcome = self.execute(&plan.actions, Bypass::Component(&component));
        self.force.clear();
        if let Some(err) = outcome.loads.get(&component) {
            self.pf_errors.remove(&component);
            self.anchor_retry.remove(&component);
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
            self.execute(&actions, Bypass::Component(&component));
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
        let removed: Vec<Publication> =
            self.state.publications.iter().filter(|s| remove.contains(&s.seq)).map(|s| s.publication.clone()).collect();
        let remaining: Vec<&Stored> =
            self.state.publications.iter().filter(|s| mine(s) && !remove.contains(&s.seq)).collect();
        self.store
            .save_jail(&jail, &remaining)
            .map_err(|e| Refusal(ErrorKind::Internal, format!("{e:#}; nothing was unpublished")))?;
        self.state.publications.retain(|s| !remove.contains(&s.seq));
        self.dirty = true;
        self.observe_jail(&jail);
        let component = self.component(&jail);
        let outcome = self.reconcile_with(Bypass::Component(&component));
        let specs: Vec<String> = removed.iter().map(|p| p.spec.to_string()).collect();
        let msg = format!("unpublished {jail} {}", specs.join(", "));
        let mut left: Vec<String> = Vec::new();
        if let Some(e) = outcome.loads.get(&component) {
            left.push(format!("pf refused the jail's new rules ({e}), so the old ones are still loaded"));
        }
        if let Some(e) = self.flush_errors.get(&component) {
            left.push(format!("pf did not flush the jail's anchor ({e}), so its rules are still loaded"));
        }
        let labels: BTreeSet<String> = removed.iter().map(Publication::label).chain([jail.label()]).collect();
        for (label, e) in outcome.kills.iter().filter(|(l, _)| labels.contains(*l)) {
            left.push(format!(
                "pf did not kill the states of {label} ({e}), so established connections still reach the jail"
            ));
        }
        for p in removed {
            if self.pending_kills.contains_key(&p.label()) {
                self.removing.insert(p.label(), p);
            }
        }
        if left.is_empty() {
            return Ok(Response::ok(msg));
        }
        Err(Refusal(
            ErrorKind::Pf,
            format!(
                "{msg} (the publications are removed from the state), but pf did not complete the change: {}; \
                 the agent retries with backoff until pf does (kleenectl check, kleenectl ls)",
                left.join("; ")
            ),
        ))
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
                let status = self.pf_status(p, st.status.clone());
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
            .chain(self.removing.iter().filter(|(_, p)| jail.as_ref().is_none_or(|j| &p.jail == j)).map(
                |(label, p)| {
                    let why = self
                        .pending_kills
                        .get(label)
                        .map_or(String::new(), |k| format!(": {}; {}", k.retry.error, k.retry.when()));
                    PublicationView {
                        jail: p.jail.to_string(),
                        spec: p.spec.to_string(),
                        protocol: p.spec.proto.to_string(),
                        host_ports: p.spec.host.to_string(),
                        jail_ports: p.spec.jail.to_string(),
                        interfaces: vec![],
                        address: None,
                        ipv4: None,
                        ipv6: None,
                        state: "removing".into(),
                        reason: Some(format!("unpublished, but pf has not killed its established states yet{why}")),
                        sources: p.sources.iter().map(|c| c.to_string()).collect(),
                        log: p.log,
                        network: p.network.as_ref().map(|n| n.to_string()),
                    }
                },
            ))
            .collect())
    }

    /// A publication's status with what pf has not done yet: pf unusable, a flush or a state
    /// kill that pf refused and that is being retried.
    fn pf_status(&self, p: &Publication, status: Status) -> Status {
        if let (Status::Active, Some(e)) = (&status, self.problems.get(&Source::Pf)) {
            return Status::Error(e.clone());
        }
        let component = self.component(&p.jail);
        if let (Some(e), Some(r)) = (self.flush_errors.get(&component), self.anchor_retry.get(&component)) {
            let was = status.reason().map_or(String::new(), |r| format!("{r}; "));
            return Status::Error(format!("{was}pf did not flush the jail's anchor ({e}); {}", r.when()));
        }
        if let (Status::Error(why), Some(r)) = (&status, self.anchor_retry.get(&component)) {
            if self.pf_errors.contains_key(&component) {
                return Status::Error(format!("{why}; {}", r.when()));
            }
        }
        for label in [p.label(), p.jail.label()] {
            if let Some(k) = self.pending_kills.get(&label) {
                return Status::Error(format!(
                    "pf did not kill the states of {label} ({}), so old connections may still reach the jail; {}",
                    k.retry.error,
                    k.retry.when()
                ));
            }
        }
        status
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
            if *source != Source::Pf {
                out.push(Finding {
                    ok: false,
                    what: source.what().into(),
                    detail: p.clone(),
                    fix: Some(format!("check tools.{} in the config, and the agent's log", source.tool())),
                });
            }
        }
        let retry = |c: &str| self.anchor_retry.get(c).map_or(String::new(), |r| format!("; {}", r.when()));
        for (c, e) in &self.pf_errors {
            out.push(Finding {
                ok: false,
                what: format!("anchor {}", self.anchor_path(c)),
                detail: format!("pf refused it: {e}{}", retry(c)),
                fix: Some("see kleenectl rules and the agent's log; kleenectl reconcile tries at once".into()),
            });
        }
        for (c, e) in &self.flush_errors {
            out.push(Finding {
                ok: false,
                what: format!("anchor {}", self.anchor_path(c)),
                detail: format!("pf did not flush it, so rules the agent no longer wants are loaded: {e}{}", retry(c)),
                fix: Some("see the agent's log; kleenectl reconcile tries at once".into()),
            });
        }
        for (label, k) in &self.pending_kills {
            out.push(Finding {
                ok: false,
                what: format!("states of {label}"),
                detail: format!(
                    "pf did not kill them, so connections through removed rules may go on: {}; {}",
                    k.retry.error,
                    k.retry.when()
                ),
                fix: Some(format!("kleenectl reconcile tries at once; by hand: pfctl -k label -k {label}")),
            });
        }
        for c in &self.observed.foreign {
            let path = self.anchor_path(c);
            out.push(Finding {
                ok: false,
                what: format!("anchor {path}"),
                detail: "holds rules this agent did not write (none carries its labels); they are left alone, and \
                         a jail whose anchor this is cannot publish"
                    .into(),
                fix: Some(format!(
                    "if `anchor: {}` is meant for this agent alone, remove them (pfctl -a {path} -F all); else choose \
                     another `anchor` in the config",
                    self.cfg.anchor
                )),
            });
        }
        for (jail, jid, e, kept) in self.vnet.problems() {
            out.push(Finding {
                ok: false,
                what: format!("addresses of VNET jail {jail} (jid {jid})"),
                detail: if kept {
                    format!("the last read failed, so the addresses read before are still used: {e}")
                } else {
                    format!("cannot be read, so its publications are not active: {e}")
                },
                fix: Some(
                    "see the agent's log; the read is retried with backoff, and at once by kleenectl reconcile".into(),
                ),
            });
        }
        out
    }

    /// A response for a refusal.
    pub fn refused(r: Refusal) -> Response {
        Response::err(r.0, r.1)
    }
}

fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    engine.lock().unwrap_or_else(|p| p.into_inner())
}

/// `kleenectl publish`, as the server runs it: observes the jail, and when it is a VNET jail
/// whose addresses are being read, waits for that read (at most one tool deadline) without
/// holding the engine's lock, so that nobody else waits for it.
pub fn publish(
    engine: &Mutex<Engine>,
    jail: &str,
    specs: &[String],
    sources: &[String],
    log_flag: bool,
    network: Option<&str>,
) -> Result<Response, Refusal> {
    let mut e = lock(engine);
    if let Ok(name) = jail.parse::<JailName>() {
        e.observe_jail(&name);
        if e.vnet_pending(Some(&name)) {
            let (vnet, deadline) = (e.vnet(), e.read_deadline());
            drop(e);
            vnet.wait_idle(deadline);
            e = lock(engine);
            e.refresh_vnet();
        }
    }
    e.publish(jail, specs, sources, log_flag, network)
}

/// `kleenectl reconcile`, as the server runs it: observes everything and reads every VNET jail's
/// addresses again, waiting for those reads (at most one tool deadline) without the engine's
/// lock, then applies everything.
pub fn reconcile(engine: &Mutex<Engine>, verify: bool) -> Response {
    let mut e = lock(engine);
    e.begin_reconcile();
    let (vnet, deadline) = (e.vnet(), e.read_deadline());
    drop(e);
    vnet.wait_idle(deadline);
    lock(engine).reconcile_now(verify)
}
