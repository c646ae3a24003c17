//! Observation: what the host looks like now. Reads the running jails (jls), the gateway
//! interfaces (route), the anchors pf holds below the parent, the host's own addresses
//! (ifconfig) and, through the background reader `vnet`, VNET jails' addresses, into the
//! planner's `Observed`.
//!
//! A source that fails keeps its previous observation (a failing jls must not look like every
//! jail stopped, an unreadable route answer like the gateway vanished) and is kept as a problem
//! of that [`Source`] until it reads again; `check` lists them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::model::{Family, InterfaceName, JailName};
use crate::core::plan::{AddrsUnknown, Observed, RunningJail};
use crate::sys::host::SysError;
use crate::sys::later::{Deferred, Later, run_together};
use crate::sys::parse::{HostInterfaces, JailInfo};
use crate::sys::runner::CmdError;

use super::super::log;
use super::super::vnet::VnetAddrs;
use super::System;
use super::executor::Outcome;

/// Where an observation comes from, for problems reported by `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Source {
    Jls,
    Route(Family),
    Pf,
    HostAddrs,
}

impl Source {
    /// The config key of the tool behind it (`tools.KEY`).
    pub(super) fn tool(self) -> &'static str {
        match self {
            Source::Jls => "jls",
            Source::Route(_) => "route",
            Source::Pf => "pfctl",
            Source::HostAddrs => "ifconfig",
        }
    }

    /// What it tells, for people.
    pub(super) fn what(self) -> &'static str {
        match self {
            Source::Jls => "jails",
            Source::Route(Family::Inet) => "IPv4 default route",
            Source::Route(Family::Inet6) => "IPv6 default route",
            Source::Pf => "pf",
            Source::HostAddrs => "host addresses",
        }
    }
}

/// What one poll read from the host: the tools' answers, not yet taken in. A poll reads without
/// the engine's lock ([`Observer::read`]), so that no request waits for it, and the reading is
/// taken in afterwards ([`Observer::take`]).
pub(super) struct Reading {
    jails: Result<Arc<Vec<JailInfo>>, SysError>,
    gateways: [Result<Option<InterfaceName>, SysError>; 2],
    anchors: Result<Arc<Vec<String>>, CmdError>,
    /// Read only when the last read is older than the refresh interval.
    host_addrs: Option<Result<HostInterfaces, SysError>>,
    /// When the reading started: what it says is at least this old.
    started: Instant,
}

/// What requests observed or changed while a poll was reading: the poll's older reading of
/// those is not taken in.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Touched {
    /// Jails a request read (`jls -j`).
    pub(super) jails: BTreeSet<JailName>,
    /// Whether a request read the default routes.
    pub(super) gateways: bool,
    /// Anchors a request loaded or flushed.
    pub(super) anchors: BTreeSet<String>,
    /// A request observed everything (`reconcile`) or the configuration changed: the whole
    /// reading is older than what the engine knows.
    pub(super) all: bool,
}

/// The last observation of the host, and why parts of it may be stale.
pub(super) struct Observer {
    observed: Observed,
    /// Addresses of VNET jails, read in the background.
    vnet: Arc<VnetAddrs>,
    /// How old the host's addresses may get (`vnet_refresh_ms`).
    refresh: Duration,
    /// When the host's own addresses were last read successfully.
    host_addrs_read: Option<Instant>,
    /// Why the last observation was incomplete, per source.
    problems: BTreeMap<Source, String>,
    /// When the last reading that listed every jail and read both default routes started.
    complete_at: Option<Instant>,
    /// The list of jails the observed ones are, as read, when nothing changed them since and
    /// no VNET jail runs (whose addresses come from elsewhere): a poll that reads this same
    /// list (the same `Arc`: jls printed the same) finds no change without comparing them.
    jails_from: Option<Arc<Vec<JailInfo>>>,
    /// The same for the anchors below the parent.
    anchors_from: Option<Arc<Vec<String>>>,
}

impl Observer {
    /// Nothing observed yet.
    pub(super) fn new(vnet: Arc<VnetAddrs>, refresh: Duration) -> Observer {
        Observer {
            observed: Observed::default(),
            vnet,
            refresh,
            host_addrs_read: None,
            problems: BTreeMap::new(),
            complete_at: None,
            jails_from: None,
            anchors_from: None,
        }
    }

    /// What was observed last.
    pub(super) fn observed(&self) -> &Observed {
        &self.observed
    }

    /// The background reader of VNET jails' addresses.
    pub(super) fn vnet(&self) -> &Arc<VnetAddrs> {
        &self.vnet
    }

    /// Why sources could not be read, per source.
    pub(super) fn problems(&self) -> &BTreeMap<Source, String> {
        &self.problems
    }

    /// Whether `jail` was seen running by a complete observation (every jail listed, both
    /// default routes read) that started less than `max_age` ago, and nothing read since
    /// failed: a request may then trust what it says about the jail and the gateways instead of
    /// reading them again. What changed since is found by the next poll, at most one poll later.
    pub(super) fn recent(&self, jail: &JailName, max_age: Duration) -> bool {
        let fresh = self.complete_at.is_some_and(|t| t.elapsed() < max_age);
        let failing = self.problems.keys().any(|s| matches!(s, Source::Jls | Source::Route(_)));
        fresh && !failing && self.observed.jails.binary_search_by(|j| j.name.cmp(jail)).is_ok()
    }

    /// Why pf could not be asked for its anchors, when it could not.
    pub(super) fn pf_problem(&self) -> Option<&str> {
        self.problems.get(&Source::Pf).map(String::as_str)
    }

    /// New tools or a new refresh interval (SIGHUP): every address is read again.
    pub(super) fn reconfigure(&mut self, sys: &System, refresh: Duration) {
        self.vnet.reconfigure(Arc::clone(&sys.ifaces), refresh);
        self.refresh = refresh;
        self.host_addrs_read = None;
    }

    /// Forgets the anchors seen below the parent (the parent changed).
    pub(super) fn forget_anchors(&mut self) {
        self.anchors_from = None;
        self.observed.anchors = None;
        self.observed.foreign.clear();
    }

    /// Takes in what pf was seen doing while the executor applied a plan: the anchors it loaded
    /// or flushed, and the anchors found to hold someone else's rules.
    pub(super) fn absorb(&mut self, outcome: &Outcome) {
        if !outcome.loaded.is_empty() || !outcome.flushed.is_empty() {
            self.anchors_from = None;
        }
        if let Some(anchors) = self.observed.anchors.as_mut() {
            anchors.extend(outcome.loaded.iter().cloned());
            anchors.retain(|c| !outcome.flushed.contains(c));
        }
        self.observed.foreign.extend(outcome.foreign.iter().cloned());
    }

    /// Reads jails, gateways and the anchors below `parent` that pf holds, and takes them in.
    /// Returns whether the observation changed.
    pub(super) fn observe(&mut self, sys: &System, parent: &str) -> bool {
        let reading = Observer::read(sys, parent, self.host_addrs_due());
        self.take(reading, parent, &Touched::default())
    }

    /// Whether the host's own addresses are to be read with the next poll (when VNET jails run).
    pub(super) fn host_addrs_due(&self) -> bool {
        self.host_addrs_read.is_none_or(|t| t.elapsed() >= self.refresh)
    }

    /// What a poll reads: the jails, the gateways, the anchors below `parent`, and the host's
    /// own addresses when `host_addrs_due`. Runs processes and nothing else: it needs no lock.
    /// The reads are independent and run at once, on this thread.
    pub(super) fn read(sys: &System, parent: &str, host_addrs_due: bool) -> Reading {
        let started = Instant::now();
        let mut jails = sys.jails.list_later();
        let [mut v4, mut v6] = Family::BOTH.map(|f| sys.routes.gateway_later(f));
        let mut anchors = sys.pf.anchors_later(parent);
        let mut host_addrs = host_addrs_due.then(|| sys.ifaces.host_addrs_later());
        let mut reads: Vec<&mut dyn Deferred> = vec![&mut jails, &mut v4, &mut v6, &mut anchors];
        reads.extend(host_addrs.as_mut().map(|h| h as &mut dyn Deferred));
        run_together(&mut reads);
        Reading {
            jails: jails.get(),
            gateways: [v4.get(), v6.get()],
            anchors: anchors.get(),
            host_addrs: host_addrs.map(Later::get),
            started,
        }
    }

    /// Takes in a poll's reading, except what requests `touched` while it was read (what they
    /// saw is newer). A source that failed keeps its previous observation. Runs no process.
    /// Returns whether the observation changed.
    pub(super) fn take(&mut self, reading: Reading, parent: &str, touched: &Touched) -> bool {
        if touched.all {
            return false;
        }
        let mut changed = false;
        if let Some(addrs) = reading.host_addrs {
            changed |= self.take_host_addrs(addrs);
        }
        let complete = reading.jails.is_ok() && reading.gateways.iter().all(Result::is_ok);
        match reading.jails {
            Ok(shared)
                if touched.jails.is_empty() && self.jails_from.as_ref().is_some_and(|f| Arc::ptr_eq(f, &shared)) =>
            {
                // What an idle poll finds: exactly the list the observed jails are.
                self.problems.remove(&Source::Jls);
            }
            Ok(shared) => {
                self.problems.remove(&Source::Jls);
                let mut list = Arc::unwrap_or_clone(Arc::clone(&shared));
                // By name, whatever order jls printed and requests read them in: a poll that
                // finds the same jails finds no change (and plans nothing).
                list.sort_unstable_by(|a, b| a.name.cmp(&b.name));
                // The same jails as another list: compared as read, not rebuilt first.
                if !touched.jails.is_empty() || !self.same_jails(&list) {
                    let kept = self.observed.jails.iter().filter(|j| touched.jails.contains(&j.name)).cloned();
                    let read: Vec<RunningJail> = list
                        .into_iter()
                        .filter(|j| !touched.jails.contains(&j.name))
                        .map(|j| self.running(j))
                        .collect();
                    let mut jails: Vec<RunningJail> = kept.chain(read).collect();
                    jails.sort_unstable_by(|a, b| a.name.cmp(&b.name));
                    changed |= jails != self.observed.jails;
                    self.observed.jails = jails;
                }
                let live: BTreeSet<u32> = self.observed.jails.iter().map(|j| j.jid).collect();
                self.vnet.retain(&live);
                let plain = !self.observed.jails.iter().any(|j| j.vnet);
                self.jails_from = (touched.jails.is_empty() && plain).then_some(shared);
            }
            Err(e) => self.problem(Source::Jls, format!("cannot list jails: {e}")),
        }
        if !touched.gateways {
            changed |= self.apply_gateways(reading.gateways);
        }
        // What requests read meanwhile is newer than this reading, and their failures are
        // problems of their own: the poll still saw every jail and both routes.
        if complete {
            self.complete_at = Some(reading.started);
        }
        match reading.anchors {
            Ok(shared)
                if touched.anchors.is_empty()
                    && self.anchors_from.as_ref().is_some_and(|f| Arc::ptr_eq(f, &shared)) =>
            {
                // Exactly the list the observed anchors are.
                self.problems.remove(&Source::Pf);
                let present = self.observed.anchors.as_ref().expect("observed with this list");
                let foreign = self.observed.foreign.len();
                self.observed.foreign.retain(|c| present.contains(c));
                changed |= self.observed.foreign.len() != foreign;
            }
            Ok(list) => {
                self.problems.remove(&Source::Pf);
                // The children of `parent` pf listed, sorted and once each, as a set holds
                // them; compared with the last ones before a set is built.
                let mut children: Vec<&str> = list
                    .iter()
                    .filter_map(|a| a.strip_prefix(parent)?.strip_prefix('/'))
                    .filter(|c| !c.contains('/'))
                    .filter(|c| !touched.anchors.contains(*c))
                    .collect();
                children.sort_unstable();
                children.dedup();
                let same = touched.anchors.is_empty()
                    && self
                        .observed
                        .anchors
                        .as_ref()
                        .is_some_and(|a| a.iter().map(String::as_str).eq(children.iter().copied()));
                if !same {
                    let mut present: BTreeSet<String> = children.iter().map(|c| c.to_string()).collect();
                    let known = self.observed.anchors.iter().flatten();
                    present.extend(known.filter(|c| touched.anchors.contains(*c)).cloned());
                    changed |= self.observed.anchors.as_ref() != Some(&present);
                    self.observed.anchors = Some(present);
                }
                let present = self.observed.anchors.as_ref().expect("just observed");
                let foreign = self.observed.foreign.len();
                self.observed.foreign.retain(|c| present.contains(c));
                changed |= self.observed.foreign.len() != foreign;
                self.anchors_from = touched.anchors.is_empty().then_some(list);
            }
            Err(e) => {
                self.anchors_from = None;
                self.problem(Source::Pf, format!("pf is not usable: {}", e.message()));
                changed |= self.observed.anchors.take().is_some();
            }
        }
        changed
    }

    /// What a request that changes one jail observes: that jail (`jls -j`) and the default
    /// routes, so that the request costs work proportional to it, not to the host. The full
    /// jail list and pf's anchors are read every poll. Returns whether the observation changed.
    pub(super) fn observe_jail(&mut self, sys: &System, name: &JailName) -> bool {
        let mut jail = sys.jails.get_later(name);
        let [mut v4, mut v6] = Family::BOTH.map(|f| sys.routes.gateway_later(f));
        run_together(&mut [&mut jail, &mut v4, &mut v6]);
        let (jail, gateways) = (jail.get(), [v4.get(), v6.get()]);
        let mut changed = false;
        match jail {
            Ok(found) => {
                // The observed jails are no longer only what the last list said.
                self.jails_from = None;
                if self.host_addrs_read.is_none() {
                    changed |= self.read_host_addrs(sys, false);
                }
                let fresh = found.map(|j| self.running(j));
                let at = self.observed.jails.binary_search_by(|j| j.name.cmp(name));
                match (at, fresh) {
                    (Ok(i), Some(j)) => {
                        changed |= self.observed.jails[i] != j;
                        self.observed.jails[i] = j;
                    }
                    (Ok(i), None) => {
                        self.observed.jails.remove(i);
                        changed = true;
                    }
                    (Err(i), Some(j)) => {
                        self.observed.jails.insert(i, j);
                        changed = true;
                    }
                    (Err(_), None) => {}
                }
            }
            Err(e) => self.problem(Source::Jls, format!("cannot read jail {name}: {e}")),
        }
        changed | self.apply_gateways(gateways)
    }

    /// The first half of `kleenectl reconcile`: observes everything, and starts reading every
    /// VNET jail's addresses and the host's again. Returns whether the observation changed.
    pub(super) fn observe_all_again(&mut self, sys: &System, parent: &str) -> bool {
        self.vnet.invalidate_all();
        let mut changed = self.observe(sys, parent);
        changed |= self.read_host_addrs(sys, true);
        changed
    }

    /// Reads the host's own addresses (which a VNET jail may not claim) when they are older
    /// than the refresh interval, or now when `force`. A failed read keeps the last good one.
    /// Returns whether they changed.
    fn read_host_addrs(&mut self, sys: &System, force: bool) -> bool {
        let fresh = self.host_addrs_read.is_some_and(|t| t.elapsed() < self.refresh);
        if fresh && !force {
            return false;
        }
        self.take_host_addrs(sys.ifaces.host_addrs())
    }

    /// Takes in a read of the host's own addresses; a failed one keeps the last good one.
    /// Returns whether they changed.
    fn take_host_addrs(&mut self, read: Result<HostInterfaces, SysError>) -> bool {
        match read {
            Ok(h) => {
                self.problems.remove(&Source::HostAddrs);
                let addrs: BTreeSet<IpAddr> = h.addrs.iter().map(|(_, a)| *a).collect();
                let ifaces = Some(h.names.into_iter().collect());
                let changed = addrs != self.observed.host_addrs
                    || h.addrs != self.observed.host_links
                    || ifaces != self.observed.host_ifaces;
                self.observed.host_addrs = addrs;
                self.observed.host_links = h.addrs;
                self.observed.host_ifaces = ifaces;
                self.host_addrs_read = Some(Instant::now());
                changed
            }
            Err(e) => {
                self.problem(Source::HostAddrs, format!("cannot read the host's own addresses: {e}"));
                false
            }
        }
    }

    /// Whether `list` (sorted by name) holds exactly the jails observed last, with the same
    /// jids and addresses.
    fn same_jails(&self, list: &[JailInfo]) -> bool {
        let same = |j: &JailInfo, o: &RunningJail| {
            j.name == o.name
                && j.jid == o.jid
                && j.vnet == o.vnet
                && if j.vnet {
                    self.vnet_addrs(j.jid, &j.name) == o.addrs
                } else {
                    o.addrs.as_ref().is_ok_and(|a| a.iter().eq(j.ip4.iter().chain(&j.ip6)))
                }
        };
        list.len() == self.observed.jails.len() && list.iter().zip(&self.observed.jails).all(|(j, o)| same(j, o))
    }

    /// A jail as the planner sees it: its addresses (a VNET jail's as last read in the
    /// background, see `vnet`), or why they are not known.
    fn running(&self, j: JailInfo) -> RunningJail {
        let addrs = if j.vnet {
            self.vnet_addrs(j.jid, &j.name)
        } else {
            let mut addrs = j.ip4;
            addrs.extend(j.ip6);
            Ok(addrs)
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
    pub(super) fn refresh_vnet(&mut self) -> bool {
        let mut changed = false;
        for i in 0..self.observed.jails.len() {
            let j = &self.observed.jails[i];
            if !j.vnet {
                continue;
            }
            let fresh = self.vnet_addrs(j.jid, &j.name);
            if fresh != self.observed.jails[i].addrs {
                self.jails_from = None;
                self.observed.jails[i].addrs = fresh;
                changed = true;
            }
        }
        changed
    }

    /// Whether any running VNET jail's addresses are still being read for the first time, or
    /// `jail`'s when given.
    pub(super) fn vnet_pending(&self, jail: Option<&JailName>) -> bool {
        self.observed
            .jails
            .iter()
            .filter(|j| jail.is_none_or(|n| &j.name == n))
            .any(|j| matches!(&j.addrs, Err(u) if u.pending))
    }

    /// Takes in a read of the default routes; a failed family keeps the last one. Returns
    /// whether a gateway changed.
    fn apply_gateways(&mut self, gateways: [Result<Option<InterfaceName>, SysError>; 2]) -> bool {
        let mut changed = false;
        for (family, gateway) in Family::BOTH.into_iter().zip(gateways) {
            let source = Source::Route(family);
            match gateway {
                Ok(g) => {
                    let slot = match family {
                        Family::Inet => &mut self.observed.gateways.inet,
                        Family::Inet6 => &mut self.observed.gateways.inet6,
                    };
                    if *slot != g {
                        changed = true;
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
        changed
    }

    fn problem(&mut self, source: Source, msg: String) {
        if self.problems.get(&source) != Some(&msg) {
            log::warn(&msg);
        }
        self.problems.insert(source, msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::engine::testing::{Fakes, PfOp, jail, jail_info};
    use std::sync::mpsc;

    const REFRESH: Duration = Duration::from_secs(60);

    fn observer(fakes: &Fakes) -> Observer {
        let (wake, _) = mpsc::channel();
        Observer::new(VnetAddrs::new(Arc::new(fakes.ifaces.clone()), REFRESH, wake), REFRESH)
    }

    fn names(o: &Observer) -> Vec<String> {
        o.observed().jails.iter().map(|j| j.name.to_string()).collect()
    }

    #[test]
    fn a_failing_jls_keeps_the_jails_it_saw_and_says_why() {
        let f = Fakes::new();
        let mut o = observer(&f);
        f.jails.set(vec![jail("web", 3, &["10.13.37.2", "fd00::2"])]);
        assert!(o.observe(&f.system(), "kleene"));
        assert_eq!(o.observed().jails[0].addrs, Ok(vec!["10.13.37.2".parse().unwrap(), "fd00::2".parse().unwrap()]));
        f.jails.refuse(Some("jls: sysctl: Cannot allocate memory"));
        assert!(!o.observe(&f.system(), "kleene"), "nothing changed");
        assert_eq!(names(&o), ["web"], "not every jail stopped");
        assert!(o.problems()[&Source::Jls].contains("Cannot allocate memory"));
        f.jails.refuse(None);
        f.jails.set(vec![]);
        assert!(o.observe(&f.system(), "kleene"));
        assert!(names(&o).is_empty() && o.problems().is_empty());
    }

    #[test]
    fn a_moved_gateway_is_a_change_and_an_unreadable_one_is_kept() {
        let f = Fakes::new();
        let mut o = observer(&f);
        o.observe(&f.system(), "kleene");
        assert_eq!(o.observed().gateways.inet, Some("em0".parse().unwrap()));
        f.routes.set(Family::Inet, Some("em1"));
        f.routes.set(Family::Inet6, Some("em1"));
        assert!(o.observe(&f.system(), "kleene"));
        assert_eq!(o.observed().gateways.inet6, Some("em1".parse().unwrap()));
        f.routes.refuse(Family::Inet, Some("route: writing to routing socket: Device busy"));
        assert!(!o.observe(&f.system(), "kleene"));
        assert_eq!(o.observed().gateways.inet, Some("em1".parse().unwrap()), "the last one read");
        assert!(o.problems()[&Source::Route(Family::Inet)].contains("keeping the last one read"));
    }

    #[test]
    fn anchors_are_the_parents_children_and_unknown_while_pf_fails() {
        let f = Fakes::new();
        let mut o = observer(&f);
        for a in ["kleene/web", "other/db"] {
            f.pf.set_anchor(a, "pass in all\n");
        }
        o.observe(&f.system(), "kleene");
        assert_eq!(o.observed().anchors, Some(["web".to_string()].into()));
        let done = Outcome {
            loaded: ["db".to_string()].into(),
            flushed: ["web".to_string()].into(),
            foreign: ["web".to_string()].into(),
            ..Outcome::default()
        };
        o.absorb(&done);
        assert_eq!(o.observed().anchors, Some(["db".to_string()].into()));
        assert!(o.observed().foreign.contains("web"));
        f.pf.refuse(PfOp::Anchors, "pfctl: /dev/pf: No such file or directory");
        o.observe(&f.system(), "kleene");
        assert_eq!(o.observed().anchors, None);
        assert_eq!(o.pf_problem(), Some("pf is not usable: pfctl: /dev/pf: No such file or directory"));
        assert!(o.observed().foreign.contains("web"), "kept until pf answers again");
    }

    #[test]
    fn a_request_reads_only_its_jail() {
        let f = Fakes::new();
        let mut o = observer(&f);
        f.jails.set(vec![jail("web", 3, &["10.13.37.2"]), jail("db", 4, &["10.13.37.3"])]);
        o.observe(&f.system(), "kleene");
        f.jails.set(vec![jail("web", 5, &["10.13.37.9"])]);
        assert!(o.observe_jail(&f.system(), &"web".parse().unwrap()));
        assert_eq!(f.jails.calls(), [None, Some("web".parse().unwrap())]);
        assert_eq!(names(&o), ["db", "web"], "db is re-read by the next poll, not by this request");
        assert_eq!(o.observed().jails[1].jid, 5);
        assert!(o.observe_jail(&f.system(), &"db".parse().unwrap()));
        assert_eq!(names(&o), ["web"]);
    }

    #[test]
    fn the_same_jails_in_another_order_are_no_change() {
        let f = Fakes::new();
        let mut o = observer(&f);
        f.jails.set(vec![jail("web", 3, &["10.13.37.2"]), jail("db", 4, &["10.13.37.3"])]);
        assert!(o.observe(&f.system(), "kleene"));
        assert_eq!(names(&o), ["db", "web"], "sorted by name");
        f.jails.set(vec![jail("db", 4, &["10.13.37.3"]), jail("web", 3, &["10.13.37.2"])]);
        assert!(!o.observe(&f.system(), "kleene"));
        assert!(!o.observe_jail(&f.system(), &"app".parse().unwrap()), "a jail still not running is no change");
        f.jails.set(vec![
            jail("web", 3, &["10.13.37.2"]),
            jail("db", 4, &["10.13.37.3"]),
            jail("app", 9, &["10.13.37.4"]),
        ]);
        assert!(o.observe_jail(&f.system(), &"app".parse().unwrap()));
        assert_eq!(names(&o), ["app", "db", "web"], "a jail a request reads goes in its place");
        let reading = Observer::read(&f.system(), "kleene", false);
        let touched = Touched { jails: ["app".parse().unwrap()].into(), ..Touched::default() };
        assert!(!o.take(reading, "kleene", &touched), "a poll that saw what the request saw changes nothing");
        assert_eq!(names(&o), ["app", "db", "web"]);
    }

    /// An idle poll compares what it read with what it saw before building anything: a
    /// change of one address, one jid or one anchor among the same names is still a change.
    #[test]
    fn a_poll_finds_one_changed_address_jid_or_anchor_among_the_same_names() {
        use crate::sys::pf::Pf;
        let f = Fakes::new();
        let mut o = observer(&f);
        let both = |web: JailInfo| vec![web, jail("db", 4, &["10.13.37.3"])];
        f.jails.set(both(jail("web", 3, &["10.13.37.2"])));
        f.pf.set_anchor("kleene/web", "pass in all\n");
        assert!(o.observe(&f.system(), "kleene"));
        assert!(!o.observe(&f.system(), "kleene"), "the same again");
        f.jails.set(both(jail("web", 3, &["10.13.37.2", "fd00::2"])));
        assert!(o.observe(&f.system(), "kleene"));
        assert_eq!(o.observed().jails[1].addrs, Ok(vec!["10.13.37.2".parse().unwrap(), "fd00::2".parse().unwrap()]));
        f.jails.set(both(jail("web", 5, &["10.13.37.2", "fd00::2"])));
        assert!(o.observe(&f.system(), "kleene"));
        assert_eq!(o.observed().jails[1].jid, 5);
        f.pf.flush("kleene/web").unwrap();
        f.pf.set_anchor("kleene/db", "pass in all\n");
        assert!(o.observe(&f.system(), "kleene"));
        assert_eq!(o.observed().anchors, Some(["db".to_string()].into()));
        assert!(!o.observe(&f.system(), "kleene"), "the same again");
    }

    /// A request that read a jail makes the observation more than the last list: a poll that
    /// reads that same list again takes it in, since it is newer than the request.
    #[test]
    fn a_poll_after_a_request_takes_in_the_same_list_again() {
        let f = Fakes::new();
        let mut o = observer(&f);
        let web: JailName = "web".parse().unwrap();
        f.jails.set(vec![jail("web", 3, &["10.13.37.2"])]);
        assert!(o.observe(&f.system(), "kleene"));
        f.jails.set(vec![jail("web", 3, &["10.13.37.9"])]);
        assert!(o.observe_jail(&f.system(), &web));
        f.jails.set(vec![jail("web", 3, &["10.13.37.2"])]);
        assert!(o.observe(&f.system(), "kleene"), "the list is the same as the last one, the observation is not");
        assert_eq!(o.observed().jails[0].addrs, Ok(vec!["10.13.37.2".parse().unwrap()]));
    }

    /// What the executor saw pf do makes the observed anchors more than the last listing: the
    /// next poll's listing is taken in even when pf printed the same.
    #[test]
    fn a_poll_after_the_executor_takes_in_the_same_listing_again() {
        let f = Fakes::new();
        let mut o = observer(&f);
        f.pf.set_anchor("kleene/web", "pass in all\n");
        o.observe(&f.system(), "kleene");
        o.absorb(&Outcome { loaded: ["db".to_string()].into(), ..Outcome::default() });
        assert_eq!(o.observed().anchors, Some(["db".to_string(), "web".to_string()].into()));
        assert!(o.observe(&f.system(), "kleene"));
        assert_eq!(o.observed().anchors, Some(["web".to_string()].into()), "what pf lists");
    }

    /// Requests that read their jail during every poll (a steady stream of publishes) must not
    /// make every poll incomplete: each would then read its jail again, and so on.
    #[test]
    fn a_poll_a_request_read_into_is_still_complete() {
        let f = Fakes::new();
        let mut o = observer(&f);
        f.jails.set(vec![jail("web", 3, &["10.13.37.2"]), jail("db", 4, &["10.13.37.3"])]);
        let (web, db): (JailName, JailName) = ("web".parse().unwrap(), "db".parse().unwrap());
        let reading = Observer::read(&f.system(), "kleene", false);
        assert!(o.observe_jail(&f.system(), &web));
        let touched = Touched { jails: [web.clone()].into(), gateways: true, ..Touched::default() };
        o.take(reading, "kleene", &touched);
        let hour = Duration::from_secs(3600);
        assert!(o.recent(&web, hour) && o.recent(&db, hour));
    }

    #[test]
    fn a_request_trusts_only_a_recent_complete_observation_of_a_running_jail() {
        let f = Fakes::new();
        let mut o = observer(&f);
        let (web, db) = ("web".parse().unwrap(), "db".parse().unwrap());
        let hour = Duration::from_secs(3600);
        assert!(!o.recent(&web, hour), "nothing observed yet");
        f.jails.set(vec![jail("web", 3, &["10.13.37.2"])]);
        o.observe(&f.system(), "kleene");
        assert!(o.recent(&web, hour));
        assert!(!o.recent(&db, hour), "a jail not seen running is read");
        assert!(!o.recent(&web, Duration::ZERO), "an observation older than a poll is read again");
        f.routes.refuse(Family::Inet6, Some("route: timed out"));
        o.observe(&f.system(), "kleene");
        assert!(!o.recent(&web, hour), "a failing route read is not trusted");
        f.routes.refuse(Family::Inet6, None);
        f.jails.refuse(Some("jls: timed out"));
        o.observe(&f.system(), "kleene");
        assert!(!o.recent(&web, hour), "a failing jls is not trusted");
        f.jails.refuse(None);
        o.observe(&f.system(), "kleene");
        assert!(o.recent(&web, hour));
    }

    #[test]
    fn a_vnet_jails_addresses_are_pending_until_read_in_the_background() {
        let f = Fakes::new();
        let mut o = observer(&f);
        f.jails.set(vec![jail_info("client", 7, &[], true)]);
        f.ifaces.set_jail(7, &["10.13.37.5"]);
        o.observe(&f.system(), "kleene");
        assert!(o.vnet_pending(None) && o.vnet_pending(Some(&"client".parse().unwrap())));
        assert!(!o.vnet_pending(Some(&"web".parse().unwrap())));
        assert!(o.vnet().wait_idle(Instant::now() + Duration::from_secs(10)));
        assert!(o.refresh_vnet());
        assert_eq!(o.observed().jails[0].addrs, Ok(vec!["10.13.37.5".parse().unwrap()]));
        assert!(f.ifaces.calls().contains(&None), "the host's own addresses were read too");
        assert!(!o.refresh_vnet(), "nothing new");
    }
}
