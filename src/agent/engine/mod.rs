//! The agent's engine: keeps pf in step with the desired publications and the jails' lives,
//! and answers requests. One engine per agent, behind a mutex: requests and ticks are
//! serialised, and so are pfctl calls. VNET jails' addresses are read on worker threads
//! (`vnet`), outside this lock.
//!
//! Its parts, one job each:
//!
//! - `observe`: what the host looks like (jails, gateways, pf's anchors, host and VNET
//!   addresses), and which source could not be read;
//! - the planner, `core::plan`, fed here with the state, the observation and what was loaded;
//! - `executor`: applies the plan's actions to pf and returns every failure; keeps what pf has
//!   not done yet (backoff per anchor, pending state kills, refused flushes);
//! - `verify`: reads loaded anchors back, a share per poll;
//! - `requests`: publish and unpublish, as transactions over pf and the state on disk, in one
//!   order: both at once, undone together (a refusal by pf writes the jail's file back; a
//!   failed write puts pf back; after a crash, start-up loads pf from what the disk holds);
//! - `views` and `diagnostics`: `ls`, `rules` and `check`.
//!
//! This module owns them and runs the cycle: start, tick, reconfigure, reconcile. Answers are
//! domain values (`agent::api`); the server alone turns them into protocol responses.
//!
//! Nothing is reported as done that pf did not do: a load, flush or state kill that pfctl
//! refuses is kept, retried with exponential backoff per anchor (and per label), shown by
//! `ls` and `check`, and said in the answer to the request that caused it.

mod diagnostics;
mod executor;
mod observe;
mod reach;
mod requests;
mod stats;
#[cfg(test)]
mod testing;
mod verify;
mod views;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::core::model::JailName;
use crate::core::plan::{self, Applied, Desired, Plan, Stored};
use crate::core::renderer::Renderer;
use crate::sys::host::{IfconfigTool, Interfaces, JailTools, Jails, RouteTool, Routes};
use crate::sys::pf::{Pf, Pfctl};
use crate::sys::runner::Limits;
use crate::sys::settings::{Settings, SettingsTools};

use super::api::{Answer, ContainerPublishRequest, PublishRequest, Refusal, RefusalKind};
use super::config::Config;
use super::log;
use super::metrics::{self, HEALTH};
use super::state::{State, Store};
use super::vnet::VnetAddrs;
use super::workers::Workers;
use executor::{Bypass, Executor, Outcome, Unfinished};
use observe::{Observer, Reading, Touched};
use verify::Verifier;

pub use stats::{StatsRead, stats};

/// The most pfctl and jls may print: an anchor of 1,024 dual-stack publications prints about
/// 600 KB, jls about 120 bytes per jail.
const MAX_OUTPUT: usize = 4 * 1024 * 1024;
/// How long the thread that wrote the last state file waits for the next write before it ends.
const DISK_LINGER: Duration = Duration::from_secs(30);
/// The most route may print (a dozen lines).
const MAX_ROUTE_OUTPUT: usize = 64 * 1024;
/// The most `ifconfig -j JID -a` may print: a jail's root can add addresses at will; 256 KiB
/// holds about 4,000 of them.
const MAX_JAIL_IFCONFIG_OUTPUT: usize = 256 * 1024;

/// The FreeBSD interfaces the engine drives.
pub struct System {
    pub pf: Box<dyn Pf>,
    pub jails: Box<dyn Jails>,
    pub routes: Box<dyn Routes>,
    pub ifaces: Arc<dyn Interfaces>,
    /// sysctl and sockstat, for `check` and publish's warnings.
    pub settings: Box<dyn Settings>,
}

impl System {
    /// The real tools at the configured paths, each bounded by `tool_timeout_ms` and an output cap.
    pub fn from_config(cfg: &Config) -> System {
        let timeout = Duration::from_millis(cfg.tool_timeout_ms);
        let limits = |max_output| Limits { timeout, max_output };
        System {
            pf: Box::new(Pfctl::new(cfg.tools.pfctl.clone(), limits(MAX_OUTPUT))),
            jails: Box::new(JailTools::new(cfg.tools.jls.clone(), limits(MAX_OUTPUT))),
            routes: Box::new(RouteTool { route: cfg.tools.route.clone(), limits: limits(MAX_ROUTE_OUTPUT) }),
            ifaces: Arc::new(IfconfigTool {
                ifconfig: cfg.tools.ifconfig.clone(),
                limits: limits(MAX_OUTPUT),
                jail_limits: limits(MAX_JAIL_IFCONFIG_OUTPUT),
            }),
            settings: Box::new(SettingsTools {
                sysctl: cfg.tools.sysctl.clone(),
                sockstat: cfg.tools.sockstat.clone(),
                limits: limits(MAX_OUTPUT),
            }),
        }
    }
}

/// The path of the anchor `component` below `parent` (`kleene/web`).
fn anchor_path(parent: &str, component: &str) -> String {
    format!("{parent}/{component}")
}

/// See the module documentation.
pub struct Engine {
    cfg: Config,
    /// Shared with a poll that reads without the engine's lock.
    sys: Arc<System>,
    store: Store,
    state: State,
    observer: Observer,
    executor: Executor,
    verifier: Verifier,
    renderer: Renderer,
    /// Whether something changed since the last plan (state, observation, configuration).
    dirty: bool,
    /// Components to load although the agent believes pf holds them (start-up, verification).
    force: BTreeSet<String>,
    /// The last plan: the statuses `ls` shows.
    last: Plan,
    /// While a poll reads without the lock: what requests observed or changed meanwhile.
    touched: Option<Touched>,
    /// What the host offered the reaches when last asked (at start and on reconcile).
    host_reach: reach::HostReach,
    /// The thread a publish or unpublish writes the jail's state file on while pf loads.
    disk: Workers,
}

/// A poll about to read the host without the engine's lock: what to read, and with what.
pub struct Poll {
    sys: Arc<System>,
    parent: String,
    host_addrs_due: bool,
    /// The loaded anchors whose turn it is to be read back.
    verify: Vec<(String, Arc<plan::Loaded>)>,
}

/// What a poll read.
pub struct PollReading {
    reading: Reading,
    /// The anchors read back that differ from what was loaded, or could not be read.
    stale: BTreeSet<String>,
}

impl Poll {
    /// Runs the poll's reads: jls, route, `pfctl -s Anchors`, the host's addresses when due,
    /// and this poll's share of read-backs. Takes no lock.
    pub fn read(&self) -> PollReading {
        let reading = Observer::read(&self.sys, &self.parent, self.host_addrs_due);
        let stale = verify::compare(&*self.sys.pf, &self.parent, &self.verify);
        PollReading { reading, stale }
    }
}

impl Engine {
    /// Opens the state and prepares; nothing is observed or loaded until [`Engine::start`].
    /// `wake` is told when a background read finished (see [`Engine::refresh_vnet`]).
    pub fn new(cfg: Config, sys: System, wake: Sender<()>) -> anyhow::Result<Engine> {
        let (store, state) = Store::open(&cfg.state_dir)?;
        let refresh = Duration::from_millis(cfg.vnet_refresh_ms);
        let vnet = VnetAddrs::new(Arc::clone(&sys.ifaces), refresh, wake);
        Ok(Engine {
            observer: Observer::new(vnet, refresh),
            executor: Executor::new(&cfg.anchor, Duration::from_millis(cfg.poll_interval_ms)),
            verifier: Verifier::default(),
            cfg,
            sys: Arc::new(sys),
            store,
            state,
            renderer: Renderer::default(),
            dirty: true,
            force: BTreeSet::new(),
            last: Plan::default(),
            touched: None,
            host_reach: reach::HostReach::default(),
            disk: Workers::new("state-writer", DISK_LINGER),
        })
    }

    /// The background reader of VNET jails' addresses (requests wait on it without the lock).
    pub fn vnet(&self) -> Arc<VnetAddrs> {
        Arc::clone(self.observer.vnet())
    }

    /// How long a request may wait for background reads: one tool deadline and a margin.
    pub fn read_deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.cfg.tool_timeout_ms) + Duration::from_millis(500)
    }

    fn component(&self, jail: &JailName) -> String {
        jail.anchor_component(&self.cfg.anchor)
    }

    fn anchor_path(&self, component: &str) -> String {
        anchor_path(&self.cfg.anchor, component)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Replaces the configuration (SIGHUP). The socket and state directory stay as they were
    /// at start; every anchor is loaded again under the new settings, and when the parent
    /// anchor changed, the anchors below the old one are flushed first.
    pub fn reconfigure(&mut self, mut cfg: Config, sys: System) {
        if cfg.socket != self.cfg.socket || cfg.state_dir != self.cfg.state_dir {
            log::warn("socket and state_dir changes take effect only when the agent restarts");
            cfg.socket = self.cfg.socket.clone();
            cfg.state_dir = self.cfg.state_dir.clone();
        }
        if cfg.metrics_listen != self.cfg.metrics_listen {
            log::warn("a metrics_listen change takes effect only when the agent restarts");
            cfg.metrics_listen = self.cfg.metrics_listen;
        }
        if cfg.anchor != self.cfg.anchor {
            // With the tools that loaded them.
            self.executor.reparent(&*self.sys.pf, &cfg.anchor);
            self.observer.forget_anchors();
        }
        self.observer.reconfigure(&sys, Duration::from_millis(cfg.vnet_refresh_ms));
        self.executor.set_poll(Duration::from_millis(cfg.poll_interval_ms));
        self.cfg = cfg;
        self.sys = Arc::new(sys);
        self.touch(|t| t.all = true);
        self.dirty = true;
        self.start();
    }

    /// Start-up: observe, then load every running jail's anchor once (pf may have been emptied
    /// by a reboot, and what an earlier process loaded cannot be trusted) and flush anchors the
    /// state does not know.
    pub fn start(&mut self) {
        self.host_reach = reach::HostReach::read(&self.sys, &self.cfg.anchor);
        self.observe();
        self.force = self.state.publications().iter().map(|s| self.component(&s.publication.jail)).collect();
        self.reconcile_with(Bypass::All);
    }

    /// Reads jails, gateways and the anchors pf holds. A source that fails keeps its previous
    /// observation (a failing jls must not look like every jail stopped).
    pub fn observe(&mut self) {
        self.touch(|t| t.all = true);
        self.dirty |= self.observer.observe(&self.sys, &self.cfg.anchor);
    }

    /// What a request that changes one jail observes: that jail and the default routes.
    pub fn observe_jail(&mut self, name: &JailName) {
        self.touch(|t| {
            t.jails.insert(name.clone());
            t.gateways = true;
        });
        self.dirty |= self.observer.observe_jail(&self.sys, name);
    }

    /// Whether the last complete observation saw `jail` running and started less than two poll
    /// intervals ago: a publish then trusts it rather than reading the jail and the routes again
    /// (the next poll finds what changed since, as it would a moment after the publish). Two,
    /// because polls start one interval after the last one ended: the last poll's reading is
    /// one interval plus the time a poll takes old when the next one starts, and older still
    /// while that one reads.
    pub fn observed_recently(&self, jail: &JailName) -> bool {
        self.observer.recent(jail, 2 * Duration::from_millis(self.cfg.poll_interval_ms))
    }

    /// Records, for a poll reading without the lock, what a request saw or changed.
    fn touch(&mut self, f: impl FnOnce(&mut Touched)) {
        if let Some(t) = self.touched.as_mut() {
            f(t);
        }
    }

    /// Takes in what background reads of VNET jails' addresses found since the last
    /// observation; no process is run. Returns whether anything changed.
    pub fn refresh_vnet(&mut self) -> bool {
        let changed = self.observer.refresh_vnet();
        self.dirty |= changed;
        changed
    }

    /// Whether any running VNET jail's addresses are still being read for the first time, or
    /// `jail`'s when given.
    pub fn vnet_pending(&self, jail: Option<&JailName>) -> bool {
        self.observer.vnet_pending(jail)
    }

    /// Plans every publication against the current observation. The last plan is let go of
    /// first: every caller replaces it with this plan (or with another made after it), and two
    /// plans of 10,000 publications held at once were the agent's peak memory. Until then,
    /// `self.last` is empty.
    fn plan_current(&mut self) -> Plan {
        self.last = Plan::default();
        let desired = Desired {
            publications: self.state.publications(),
            networks: &self.cfg.networks,
            anchor: &self.cfg.anchor,
            reach: self.cfg.reach,
        };
        let applied =
            Applied { loaded: self.executor.loaded(), force: &self.force, pf_errors: self.executor.refused_loads() };
        plan::plan(&desired, self.observer.observed(), &applied, &mut self.renderer)
    }

    /// Applies `actions` to pf, and takes in what pf was seen doing.
    fn apply(&mut self, actions: &[plan::Action], bypass: Bypass) -> Outcome {
        let outcome = self.executor.apply(&*self.sys.pf, actions, bypass);
        self.observer.absorb(&outcome);
        self.touch(|t| t.anchors.extend(outcome.loaded.iter().chain(&outcome.flushed).cloned()));
        outcome
    }

    /// Plans against the current observation and applies the actions whose anchors are not
    /// waiting out a backoff, then retries the state kills that are due.
    pub fn reconcile(&mut self) {
        self.reconcile_with(Bypass::None);
    }

    /// As [`Engine::reconcile`], trying the anchors `bypass` covers although they wait out a
    /// backoff (all of them, and every pending state kill, for [`Bypass::All`]).
    fn reconcile_with(&mut self, bypass: Bypass) -> Outcome {
        let now = matches!(bypass, Bypass::All);
        if !self.dirty && self.force.is_empty() && !self.executor.retries_due(now) {
            return Outcome::default();
        }
        metrics::timed(&HEALTH.reconcile, || {
            let plan = self.plan_current();
            let before = self.executor.refused_loads().clone();
            let mut outcome = self.apply(&plan.actions, bypass);
            outcome.merge(self.executor.retry_kills(&*self.sys.pf, now));
            self.settle(plan, &before);
            outcome
        })
    }

    /// After a plan was applied: forgets failures that became moot, and keeps the plan's
    /// statuses (planned again when pf refused something new, so that they say so).
    fn settle(&mut self, plan: Plan, refused_before: &BTreeMap<String, String>) {
        let observed = self.observer.observed().anchors.as_ref();
        self.executor.forget_moot(|c| plan.wanted.contains_key(c) || observed.is_none_or(|a| a.contains(c)));
        self.force.clear();
        self.dirty = false;
        self.last = if self.executor.refused_loads() != refused_before { self.plan_current() } else { plan };
    }

    /// One poll tick, all under the lock: observe, verify a share of the loaded anchors,
    /// reconcile. The agent's loop polls in three steps instead ([`Engine::begin_poll`],
    /// [`Poll::read`] without the lock, [`Engine::finish_poll`]); this is the same in one call.
    pub fn tick(&mut self) {
        let poll = self.begin_poll();
        let reading = poll.read();
        self.finish_poll(reading);
    }

    /// The first step of a poll: what to read (this poll's share of read-backs included). From
    /// now until [`Engine::finish_poll`], what requests observe or change is recorded, so that
    /// the poll's older reading of it is not taken in.
    pub fn begin_poll(&mut self) -> Poll {
        self.touched = Some(Touched::default());
        let n =
            self.verifier.share(self.executor.loaded().len(), self.cfg.poll_interval_ms, self.cfg.verify_interval_ms);
        let verify = if self.observer.observed().anchors.is_some() {
            self.verifier.pick(self.executor.loaded(), Some(n))
        } else {
            vec![]
        };
        Poll {
            sys: Arc::clone(&self.sys),
            parent: self.cfg.anchor.clone(),
            host_addrs_due: self.observer.host_addrs_due(),
            verify,
        }
    }

    /// The last step of a poll: takes in what it read, except what requests saw or changed
    /// meanwhile, and reconciles.
    pub fn finish_poll(&mut self, read: PollReading) {
        let touched = self.touched.take().unwrap_or_default();
        self.dirty |= self.observer.take(read.reading, &self.cfg.anchor, &touched);
        let loaded = self.executor.loaded();
        let drifted: Vec<String> = read
            .stale
            .into_iter()
            .filter(|c| !touched.all && !touched.anchors.contains(c) && loaded.contains_key(c))
            .collect();
        HEALTH.drift_repairs.fetch_add(drifted.len() as u64, Ordering::Relaxed);
        self.force.extend(drifted);
        if self.observer.problems().is_empty() {
            HEALTH.poll_succeeded();
        }
        self.reconcile();
    }

    /// Reads back `count` loaded anchors (all of them for `None`) and marks those that differ
    /// from what was loaded for reloading.
    fn verify(&mut self, count: Option<usize>) {
        if self.observer.observed().anchors.is_none() {
            return;
        }
        let picked = self.verifier.pick(self.executor.loaded(), count);
        let drifted = verify::compare(&*self.sys.pf, &self.cfg.anchor, &picked);
        HEALTH.drift_repairs.fetch_add(drifted.len() as u64, Ordering::Relaxed);
        self.force.extend(drifted);
    }

    /// The first half of `kleenectl reconcile`: observes everything, and starts reading every
    /// VNET jail's addresses and the host's again. The caller then waits for the reads without
    /// the engine's lock and calls [`Engine::reconcile_now`].
    pub fn begin_reconcile(&mut self) {
        self.touch(|t| t.all = true);
        self.dirty |= self.observer.observe_all_again(&self.sys, &self.cfg.anchor);
        self.host_reach = reach::HostReach::read(&self.sys, &self.cfg.anchor);
    }

    /// `kleenectl reconcile [--verify]`, after [`Engine::begin_reconcile`]: applies everything
    /// now, backoffs ignored, and says what pf did not do.
    pub fn reconcile_now(&mut self, verify: bool) -> Answer {
        self.refresh_vnet();
        if verify {
            self.verify(None);
        }
        self.dirty = true;
        self.reconcile_with(Bypass::All);
        let left: Vec<String> = self
            .executor
            .unfinished()
            .into_iter()
            .map(|u| match u {
                Unfinished::Load { component, error, .. } => {
                    format!("pf refused anchor {}: {error}", self.anchor_path(component))
                }
                Unfinished::Flush { component, error, .. } => {
                    format!("pf did not flush anchor {}: {error}", self.anchor_path(component))
                }
                Unfinished::Kill { label, retry } => {
                    format!("pf did not kill the states of label {label}: {}", retry.error)
                }
            })
            .collect();
        if left.is_empty() {
            return Ok(format!("reconciled: {} anchors loaded", self.executor.loaded().len()));
        }
        Err(Refusal::new(
            RefusalKind::Pf,
            format!(
                "reconciled, but not all of it: {}; the agent retries with backoff (kleenectl check)",
                left.join("; ")
            ),
        ))
    }

    /// Flushes every anchor the agent loaded (on exit with `flush_on_exit`).
    pub fn flush_all(&mut self) {
        let outcome = self.executor.flush_all(&*self.sys.pf);
        self.observer.absorb(&outcome);
    }

    /// The publications of `jail` as stored.
    fn stored_of<'a>(&'a self, jail: &'a JailName) -> impl Iterator<Item = &'a Stored> + 'a {
        self.state.of_jail(jail)
    }
}

fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    engine.lock().unwrap_or_else(|p| p.into_inner())
}

/// `kleenectl publish`, as the server runs it: observes the jail, and when it is a VNET jail
/// whose addresses are being read, waits for that read (at most one tool deadline) without
/// holding the engine's lock, so that nobody else waits for it.
pub fn publish(engine: &Mutex<Engine>, request: &PublishRequest) -> Answer {
    metrics::timed(&HEALTH.publish, || publish_untimed(engine, request))
}

fn publish_untimed(engine: &Mutex<Engine>, request: &PublishRequest) -> Answer {
    let mut e = lock(engine);
    if !e.observed_recently(&request.jail) {
        e.observe_jail(&request.jail);
    }
    if e.vnet_pending(Some(&request.jail)) {
        let (vnet, deadline) = (e.vnet(), e.read_deadline());
        drop(e);
        vnet.wait_idle(deadline);
        e = lock(engine);
        e.refresh_vnet();
    }
    e.publish(request)
}

/// A container's publications (CNI `ADD`), as the server runs them: observes the jail, then
/// publishes. Its targets are the container's given addresses, so no read of a VNET jail's
/// addresses is waited for.
pub fn publish_container(engine: &Mutex<Engine>, request: &ContainerPublishRequest) -> Answer {
    let mut e = lock(engine);
    e.observe_jail(&request.jail);
    e.publish_container(request)
}

/// `kleenectl reconcile`, as the server runs it: observes everything and reads every VNET jail's
/// addresses again, waiting for those reads (at most one tool deadline) without the engine's
/// lock, then applies everything.
pub fn reconcile(engine: &Mutex<Engine>, verify: bool) -> Answer {
    let mut e = lock(engine);
    e.begin_reconcile();
    let (vnet, deadline) = (e.vnet(), e.read_deadline());
    drop(e);
    vnet.wait_idle(deadline);
    lock(engine).reconcile_now(verify)
}

#[cfg(test)]
mod tests {
    use super::testing::{Harness, PfCall, PfOp, jail};
    use crate::agent::api::RefusalKind;
    use crate::core::model::Family;

    /// An engine started with `web` running on 10.13.37.2 and publishing 8080:80.
    fn web() -> Harness {
        let h = Harness::running(vec![jail("web", 3, &["10.13.37.2"])]);
        assert_eq!(h.publish("web", &["8080:80"]).unwrap(), "published web 8080:80/tcp on em0 -> 10.13.37.2");
        h.pf().clear_calls();
        h
    }

    #[test]
    fn start_loads_every_stored_anchor_and_flushes_those_of_ours_it_does_not_know() {
        let h = web();
        h.pf().set_anchor("kleene/old", "pass in quick on em0 all label \"kleene/old\"\n");
        h.pf().set_anchor("kleene/theirs", "pass in quick on em0 all label \"mine\"\n");
        let h = h.reopen();
        h.start();
        let mut changes = h.pf().changes();
        changes.sort();
        assert_eq!(changes, ["flush kleene/old", "kill kleene/old", "load kleene/web"]);
        assert!(h.pf().anchor("kleene/theirs").is_some(), "someone else's rules are left alone");
        let theirs = h.problems().into_iter().find(|d| d.what == "anchor kleene/theirs").expect("and reported");
        assert!(theirs.detail.contains("did not write"), "{theirs:?}");
    }

    #[test]
    fn an_idle_tick_only_observes() {
        let h = web();
        let routes = h.fakes.routes.calls().len();
        h.tick();
        assert_eq!(h.pf().calls(), [PfCall::Anchors("kleene".into())]);
        assert_eq!(h.fakes.routes.calls().len(), routes + 2, "one route per family");
    }

    #[test]
    fn a_jail_restarting_with_a_new_address_is_reloaded_after_its_old_states_are_killed() {
        let h = web();
        h.fakes.jails.set(vec![jail("web", 4, &["10.13.37.9"])]);
        h.tick();
        assert_eq!(h.pf().changes(), ["kill kleene/web", "load kleene/web"], "the old incarnation's label first");
        assert!(h.pf().anchor("kleene/web").unwrap().contains("-> 10.13.37.9 port 80"));
        let (standing, _) = h.standing("web", "8080:80/tcp").unwrap();
        assert_eq!(standing, "active");
    }

    #[test]
    fn a_poll_reads_without_the_lock_and_a_request_meanwhile_wins_over_its_older_reading() {
        let h = web();
        // The poll reads while db is not running and kleene/db does not exist...
        let reads = h.engine().begin_poll();
        let reading = reads.read();
        // ... and meanwhile (the lock is free) db starts and a request publishes for it.
        h.fakes.jails.set(vec![jail("web", 3, &["10.13.37.2"]), jail("db", 4, &["10.13.37.3"])]);
        assert!(h.publish("db", &["5432"]).is_ok());
        assert!(h.pf().anchor("kleene/db").is_some());
        h.pf().clear_calls();
        h.engine().finish_poll(reading);
        assert!(h.pf().changes().is_empty(), "the older reading flushed and reloaded nothing: {:?}", h.pf().changes());
        assert_eq!(h.standing("db", "5432:5432/tcp").unwrap().0, "active");
        // The next poll sees the same host: nothing to do either.
        h.tick();
        assert!(h.pf().changes().is_empty(), "{:?}", h.pf().changes());
    }

    #[test]
    fn a_reconcile_during_a_poll_makes_its_reading_moot() {
        let h = web();
        let reads = h.engine().begin_poll();
        let reading = reads.read();
        h.fakes.jails.set(vec![]);
        assert!(h.reconcile().is_ok());
        assert_eq!(h.pf().changes(), ["flush kleene/web", "kill kleene/web"]);
        h.pf().clear_calls();
        h.engine().finish_poll(reading);
        assert!(h.pf().changes().is_empty(), "web is not loaded again from the older reading");
        assert_eq!(h.standing("web", "8080:80/tcp").unwrap().0, "pending");
    }

    #[test]
    fn a_jail_stopping_is_flushed_and_its_states_killed() {
        let h = web();
        h.fakes.jails.set(vec![]);
        h.tick();
        assert_eq!(h.pf().changes(), ["flush kleene/web", "kill kleene/web"]);
        assert_eq!(h.standing("web", "8080:80/tcp").unwrap().0, "pending");
    }

    #[test]
    fn the_gateway_moving_reloads_the_gateway_publications() {
        let h = web();
        h.fakes.routes.set(Family::Inet, Some("em1"));
        h.tick();
        assert_eq!(h.pf().changes(), ["load kleene/web"], "same labels: nothing to kill");
        let anchor = h.pf().anchor("kleene/web").unwrap();
        assert!(anchor.contains("rdr on em1 ") && !anchor.contains("em0"), "{anchor}");
        let ls = h.list();
        assert_eq!(ls[0].interfaces[..], ["em1".parse().unwrap()]);
        h.fakes.routes.set(Family::Inet, None);
        h.tick();
        assert_eq!(h.standing("web", "8080:80/tcp").unwrap().0, "error", "no gateway, no rules");
        assert!(h.pf().anchor("kleene/web").is_none());
    }

    #[test]
    fn a_reconfigure_that_changes_the_parent_flushes_the_old_anchors_and_loads_the_new_ones() {
        let h = web();
        let mut cfg = h.engine().config().clone();
        cfg.anchor = "rdr".into();
        h.fakes.pf.set_main("nat-anchor \"rdr/*\" all\nrdr-anchor \"rdr/*\" all\nanchor \"rdr/*\" all\n");
        h.engine().reconfigure(cfg, h.fakes.system());
        assert_eq!(h.pf().changes(), ["flush kleene/web", "kill kleene/web", "load rdr/web"]);
        assert!(h.pf().anchor("kleene/web").is_none());
        let rules = h.engine().rules(None);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].anchor, "rdr/web");
        assert!(h.problems().is_empty(), "{:?}", h.problems());
    }

    #[test]
    fn drift_found_by_reading_back_is_repaired() {
        let h = Harness::with(|c| c.verify_interval_ms = c.poll_interval_ms);
        h.fakes.jails.set(vec![jail("web", 3, &["10.13.37.2"])]);
        h.start();
        h.publish("web", &["8080:80"]).unwrap();
        let loaded = h.pf().anchor("kleene/web").unwrap();
        h.pf().set_anchor("kleene/web", "pass in all\n");
        h.pf().clear_calls();
        h.tick();
        assert_eq!(h.pf().changes(), ["load kleene/web"]);
        assert_eq!(h.pf().anchor("kleene/web").unwrap(), loaded);
    }

    #[test]
    fn reconcile_tries_at_once_and_says_what_pf_still_refuses() {
        let h = web();
        h.pf().refuse(PfOp::Load, "pfctl: DIOCADDRULENV: Operation not supported by device");
        h.fakes.jails.set(vec![jail("web", 4, &["10.13.37.9"])]);
        h.tick();
        let (standing, reason) = h.standing("web", "8080:80/tcp").unwrap();
        assert_eq!(standing, "error");
        assert!(reason.unwrap().contains("Operation not supported by device; retrying in"));
        let refused = h.reconcile().unwrap_err();
        assert_eq!(refused.kind, RefusalKind::Pf);
        assert!(refused.message.contains("pf refused anchor kleene/web: pfctl: DIOCADDRULENV"), "{refused:?}");
        h.pf().allow(PfOp::Load);
        assert_eq!(h.reconcile().unwrap(), "reconciled: 1 anchors loaded");
        assert!(h.pf().anchor("kleene/web").unwrap().contains("-> 10.13.37.9 port 80"));
    }

    #[test]
    fn a_failing_jls_changes_nothing_in_pf() {
        let h = web();
        h.fakes.jails.refuse(Some("jls: cannot allocate memory"));
        h.tick();
        assert!(h.pf().changes().is_empty(), "not taken as every jail stopping");
        let jails = h.problems().into_iter().find(|d| d.what == "jails").expect("reported");
        assert!(jails.detail.contains("cannot allocate memory"), "{jails:?}");
    }
}
