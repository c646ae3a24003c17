//! In-process fakes of the FreeBSD interfaces the engine drives (`Pf`, `Jails`, `Routes`,
//! `Interfaces`), for the engine's unit tests: each answers from what the test scripted (the
//! jails running, the gateways, which pf operations pf refuses) and records every call, so a test
//! can say both what the engine was told and what it asked. They model only what the engine
//! relies on: pf keeps the anchors it loaded until they are flushed, and lists only those.
//!
//! The fake binary in tests/fake is the other tier: the real agent process against fake tools
//! that print what FreeBSD's print.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::core::model::{Family, InterfaceName, JailName};
use crate::sys::host::{Interfaces, Jails, Routes, SysError};
use crate::sys::later::Later;
use crate::sys::parse::{HostInterfaces, JailInfo, ParseError};
use crate::sys::pf::{Pf, Show};
use crate::sys::runner::{CmdError, CmdErrorKind};
use crate::sys::settings::{Listener, SYSCTLS, Settings};

/// A pf operation, for scripting refusals: the one the real `Pf` counts its runs by.
pub use crate::sys::counters::PfOp;

use super::super::api::{Answer, Diagnostic, PublicationState, PublishRequest, Removal, UnpublishRequest};
use super::super::config::Config;
use super::{Engine, System};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The error of a tool that exited 1 printing `stderr`.
fn failed(argv: &[&str], stderr: &str) -> CmdError {
    CmdError {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        stdin_len: 0,
        kind: CmdErrorKind::Failed { status: Some(1), stderr: stderr.to_string(), stdout: String::new() },
    }
}

/// One call the engine made to pf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PfCall {
    Load { anchor: String, text: String },
    Flush(String),
    Kill(String),
    Anchors(String),
    Show(Option<String>, Show),
    Enabled,
    Interfaces,
    Labels(String),
    RuleStates(String),
}

#[derive(Default)]
struct PfModel {
    /// What each anchor holds, by path.
    anchors: BTreeMap<String, String>,
    /// The main ruleset.
    main: String,
    /// Operations pf refuses, with its message, until allowed again.
    refusals: BTreeMap<PfOp, String>,
    /// What `-a ANCHOR -s labels` prints, by ANCHOR (`*` for every anchor); nothing when unset.
    labels: BTreeMap<String, String>,
    /// What `-a ANCHOR -v -s rules` prints, by ANCHOR; nothing when unset.
    rule_states: BTreeMap<String, String>,
    calls: Vec<PfCall>,
    /// Interfaces pf skips (`set skip on ...`).
    skipped: Vec<String>,
    /// The last anchors listed, shared as `Pfctl` shares the same output's.
    listed: Option<Arc<Vec<String>>>,
}

/// pf: anchors loaded and flushed in memory; refuses what the test says.
#[derive(Clone)]
pub struct FakePf(Arc<Mutex<PfModel>>);

impl Default for FakePf {
    fn default() -> Self {
        let main = "nat-anchor \"kleene/*\" all\nrdr-anchor \"kleene/*\" all\nanchor \"kleene/*\" all\n".to_string();
        FakePf(Arc::new(Mutex::new(PfModel { main, ..PfModel::default() })))
    }
}

impl FakePf {
    /// From now on pf refuses `op` with `message` (pfctl's stderr).
    pub fn refuse(&self, op: PfOp, message: &str) {
        lock(&self.0).refusals.insert(op, message.to_string());
    }

    /// From now on pf does `op` again.
    pub fn allow(&self, op: PfOp) {
        lock(&self.0).refusals.remove(&op);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<PfCall> {
        lock(&self.0).calls.clone()
    }

    /// Forgets the calls so far.
    pub fn clear_calls(&self) {
        lock(&self.0).calls.clear();
    }

    /// The calls that change pf (loads, flushes, kills), in order, as `load kleene/web`,
    /// `flush kleene/web`, `kill LABEL`.
    pub fn changes(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                PfCall::Load { anchor, .. } => Some(format!("load {anchor}")),
                PfCall::Flush(a) => Some(format!("flush {a}")),
                PfCall::Kill(l) => Some(format!("kill {l}")),
                _ => None,
            })
            .collect()
    }

    /// What anchor `path` holds, when pf has it.
    pub fn anchor(&self, path: &str) -> Option<String> {
        lock(&self.0).anchors.get(path).cloned()
    }

    /// Writes an anchor behind the engine's back (another program, or drift).
    pub fn set_anchor(&self, path: &str, text: &str) {
        lock(&self.0).anchors.insert(path.to_string(), text.to_string());
    }

    /// Sets what `pfctl -a ANCHOR -s labels` prints.
    pub fn set_labels(&self, anchor: &str, text: &str) {
        lock(&self.0).labels.insert(anchor.to_string(), text.to_string());
    }

    /// Sets what `pfctl -a ANCHOR -v -s rules` prints.
    pub fn set_rule_states(&self, anchor: &str, text: &str) {
        lock(&self.0).rule_states.insert(anchor.to_string(), text.to_string());
    }

    /// Replaces the main ruleset.
    pub fn set_main(&self, text: &str) {
        lock(&self.0).main = text.to_string();
    }

    /// From now on pf skips these interfaces (`set skip on lo0`).
    pub fn set_skip(&self, ifaces: &[&str]) {
        lock(&self.0).skipped = ifaces.iter().map(|i| i.to_string()).collect();
    }

    /// Records `call`; the refusal scripted for `op`, if any.
    fn call(&self, call: PfCall, op: PfOp, argv: &[&str]) -> Result<MutexGuard<'_, PfModel>, CmdError> {
        let mut m = lock(&self.0);
        m.calls.push(call);
        match m.refusals.get(&op) {
            Some(msg) => Err(failed(argv, msg)),
            None => Ok(m),
        }
    }
}

impl Pf for FakePf {
    fn load(&self, anchor: &str, text: &str) -> Result<(), CmdError> {
        let call = PfCall::Load { anchor: anchor.into(), text: text.into() };
        let mut m = self.call(call, PfOp::Load, &["pfctl", "-a", anchor, "-f", "-"])?;
        m.anchors.insert(anchor.to_string(), text.to_string());
        Ok(())
    }

    fn flush(&self, anchor: &str) -> Result<(), CmdError> {
        let mut m = self.call(PfCall::Flush(anchor.into()), PfOp::Flush, &["pfctl", "-a", anchor, "-F", "all"])?;
        m.anchors.remove(anchor);
        Ok(())
    }

    fn kill_label(&self, label: &str) -> Result<(), CmdError> {
        self.call(PfCall::Kill(label.into()), PfOp::Kill, &["pfctl", "-k", "label", "-k", label]).map(drop)
    }

    fn anchors(&self, parent: &str) -> Result<Vec<String>, CmdError> {
        let m = self.call(PfCall::Anchors(parent.into()), PfOp::Anchors, &["pfctl", "-a", parent, "-s", "Anchors"])?;
        let prefix = format!("{parent}/");
        Ok(m.anchors.keys().filter(|a| a.strip_prefix(&prefix).is_some_and(|c| !c.contains('/'))).cloned().collect())
    }

    fn anchors_later<'a>(&'a self, parent: &'a str) -> Later<'a, Result<Arc<Vec<String>>, CmdError>> {
        Later::known(self.anchors(parent).map(|list| shared(&mut lock(&self.0).listed, list)))
    }

    fn show(&self, anchor: Option<&str>, what: Show) -> Result<String, CmdError> {
        let m = self.call(PfCall::Show(anchor.map(str::to_string), what), PfOp::Show, &["pfctl", "-s"])?;
        let text = match anchor {
            None => m.main.clone(),
            Some(a) => match m.anchors.get(a) {
                Some(t) => t.clone(),
                None => return Err(failed(&["pfctl", "-a", a], "pfctl: DIOCGETRULES: No such file or directory")),
            },
        };
        let nat = |l: &&str| l.starts_with("rdr") || l.starts_with("nat");
        let lines: Vec<&str> = match what {
            Show::Nat => text.lines().filter(nat).collect(),
            Show::Rules => text.lines().filter(|l| !nat(l)).collect(),
        };
        Ok(lines.iter().map(|l| format!("{l}\n")).collect())
    }

    fn enabled(&self) -> Result<Option<bool>, CmdError> {
        self.call(PfCall::Enabled, PfOp::Info, &["pfctl", "-s", "info"]).map(|_| Some(true))
    }

    fn labels(&self, anchor: &str, each: &mut dyn FnMut(&str)) -> Result<(), CmdError> {
        let m = self.call(PfCall::Labels(anchor.into()), PfOp::Labels, &["pfctl", "-a", anchor, "-s", "labels"])?;
        let text = m.labels.get(anchor).cloned().unwrap_or_default();
        drop(m);
        text.lines().for_each(each);
        Ok(())
    }

    fn rule_states(&self, anchor: &str, each: &mut dyn FnMut(&str)) -> Result<(), CmdError> {
        let args = ["pfctl", "-P", "-a", anchor, "-v", "-s", "rules"];
        let m = self.call(PfCall::RuleStates(anchor.into()), PfOp::States, &args)?;
        let text = m.rule_states.get(anchor).cloned().unwrap_or_default();
        drop(m);
        text.lines().for_each(each);
        Ok(())
    }

    fn interfaces(&self) -> Result<Vec<(String, bool)>, CmdError> {
        let m = self.call(PfCall::Interfaces, PfOp::Show, &["pfctl", "-s", "Interfaces", "-v"])?;
        let names = ["all", "em0", "lo", "lo0"];
        Ok(names.iter().map(|n| (n.to_string(), m.skipped.iter().any(|s| s == n))).collect())
    }
}

#[derive(Default)]
struct SettingsModel {
    sysctls: BTreeMap<String, String>,
    listeners: Vec<Listener>,
}

/// sysctl and sockstat: the values and sockets the test says there are (forwarding and
/// net.pf.filter_local on, nothing listening, unless the test says otherwise).
#[derive(Clone)]
pub struct FakeSettings(Arc<Mutex<SettingsModel>>);

impl Default for FakeSettings {
    fn default() -> Self {
        let sysctls = SYSCTLS.iter().map(|n| (n.to_string(), "1".to_string())).collect();
        FakeSettings(Arc::new(Mutex::new(SettingsModel { sysctls, listeners: vec![] })))
    }
}

impl FakeSettings {
    /// Sets a sysctl variable; `None`: the kernel does not know it.
    pub fn set_sysctl(&self, name: &str, value: Option<&str>) {
        let mut m = lock(&self.0);
        match value {
            Some(v) => m.sysctls.insert(name.to_string(), v.to_string()),
            None => m.sysctls.remove(name),
        };
    }

    /// A host process listening on `addr` (`127.0.0.1:8080`, `*:8080`) with `proto` (`tcp4`).
    pub fn listen(&self, command: &str, proto: &str, addr: &str) {
        let (a, port) = addr.rsplit_once(':').expect("ADDR:PORT");
        lock(&self.0).listeners.push(Listener {
            command: command.into(),
            pid: "812".into(),
            proto: proto.into(),
            addr: if a == "*" { None } else { Some(a.parse().expect("an address")) },
            port: port.parse().expect("a port"),
        });
    }
}

impl Settings for FakeSettings {
    fn sysctls(&self, names: &[&str]) -> Result<BTreeMap<String, String>, CmdError> {
        let m = lock(&self.0);
        Ok(m.sysctls.iter().filter(|(n, _)| names.contains(&n.as_str())).map(|(n, v)| (n.clone(), v.clone())).collect())
    }

    fn listening(&self) -> Result<Vec<Listener>, CmdError> {
        Ok(lock(&self.0).listeners.clone())
    }
}

#[derive(Default)]
struct JailsModel {
    running: Vec<JailInfo>,
    refusal: Option<String>,
    /// `None` for a listing of every jail, the name for a lookup of one.
    calls: Vec<Option<JailName>>,
    /// The last list, shared as `JailTools` shares the same output's.
    listed: Option<Arc<Vec<JailInfo>>>,
}

/// jls: the jails the test says are running.
#[derive(Clone, Default)]
pub struct FakeJails(Arc<Mutex<JailsModel>>);

impl FakeJails {
    /// From now on these jails run.
    pub fn set(&self, running: Vec<JailInfo>) {
        lock(&self.0).running = running;
    }

    /// From now on jls fails with `message` (`None`: works again).
    pub fn refuse(&self, message: Option<&str>) {
        lock(&self.0).refusal = message.map(str::to_string);
    }

    /// The calls so far: `None` for a listing, the name for a lookup.
    pub fn calls(&self) -> Vec<Option<JailName>> {
        lock(&self.0).calls.clone()
    }

    fn answer(&self, call: Option<JailName>) -> Result<Vec<JailInfo>, SysError> {
        let mut m = lock(&self.0);
        m.calls.push(call);
        match &m.refusal {
            Some(e) => Err(ParseError(e.clone()).into()),
            None => Ok(m.running.clone()),
        }
    }
}

impl Jails for FakeJails {
    fn list(&self) -> Result<Vec<JailInfo>, SysError> {
        self.answer(None)
    }

    fn list_later(&self) -> Later<'_, Result<Arc<Vec<JailInfo>>, SysError>> {
        Later::known(self.answer(None).map(|list| shared(&mut lock(&self.0).listed, list)))
    }

    fn get(&self, name: &JailName) -> Result<Option<JailInfo>, SysError> {
        Ok(self.answer(Some(name.clone()))?.into_iter().find(|j| &j.name == name))
    }
}

/// `list`, as the same `Arc` as `last` when it is the same list, as the real tools answer the
/// same output (`sys::memo`).
fn shared<T: PartialEq>(last: &mut Option<Arc<T>>, list: T) -> Arc<T> {
    match last {
        Some(l) if **l == list => Arc::clone(l),
        _ => Arc::clone(last.insert(Arc::new(list))),
    }
}

/// A running jail named `name` with these addresses (VNET when `vnet`).
pub fn jail_info(name: &str, jid: u32, addrs: &[&str], vnet: bool) -> JailInfo {
    let addrs: Vec<IpAddr> = addrs.iter().map(|a| a.parse().expect("an address")).collect();
    JailInfo {
        jid,
        name: name.parse().expect("a jail name"),
        ip4: addrs.iter().filter(|a| a.is_ipv4()).copied().collect(),
        ip6: addrs.iter().filter(|a| a.is_ipv6()).copied().collect(),
        vnet,
    }
}

/// A running non-VNET jail.
pub fn jail(name: &str, jid: u32, addrs: &[&str]) -> JailInfo {
    jail_info(name, jid, addrs, false)
}

#[derive(Default)]
struct RoutesModel {
    gateways: BTreeMap<Family, InterfaceName>,
    refusals: BTreeMap<Family, String>,
    calls: Vec<Family>,
}

/// route: the default routes the test says there are.
#[derive(Clone, Default)]
pub struct FakeRoutes(Arc<Mutex<RoutesModel>>);

impl FakeRoutes {
    /// From now on the default route of `family` is on `iface` (none for `None`).
    pub fn set(&self, family: Family, iface: Option<&str>) {
        let mut m = lock(&self.0);
        match iface {
            Some(i) => m.gateways.insert(family, i.parse().expect("an interface name")),
            None => m.gateways.remove(&family),
        };
    }

    /// From now on route fails for `family` with `message` (`None`: works again).
    pub fn refuse(&self, family: Family, message: Option<&str>) {
        let mut m = lock(&self.0);
        match message {
            Some(e) => m.refusals.insert(family, e.to_string()),
            None => m.refusals.remove(&family),
        };
    }

    /// The families asked for so far.
    pub fn calls(&self) -> Vec<Family> {
        lock(&self.0).calls.clone()
    }
}

impl Routes for FakeRoutes {
    fn gateway(&self, family: Family) -> Result<Option<InterfaceName>, SysError> {
        let mut m = lock(&self.0);
        m.calls.push(family);
        match m.refusals.get(&family) {
            Some(e) => Err(ParseError(e.clone()).into()),
            None => Ok(m.gateways.get(&family).cloned()),
        }
    }
}

struct IfacesModel {
    host: HostInterfaces,
    jails: BTreeMap<u32, Vec<IpAddr>>,
    /// `None` for the host's addresses, the jid for a jail's.
    calls: Vec<Option<u32>>,
}

impl Default for IfacesModel {
    fn default() -> Self {
        let names = ["lo0", "em0", "em1"].map(|n| n.parse().expect("an interface name")).to_vec();
        IfacesModel { host: HostInterfaces { names, addrs: vec![] }, jails: BTreeMap::new(), calls: vec![] }
    }
}

/// ifconfig: the host's and the VNET jails' addresses the test says there are (the host has
/// lo0, em0 and em1 unless the test says otherwise).
#[derive(Clone, Default)]
pub struct FakeIfaces(Arc<Mutex<IfacesModel>>);

impl FakeIfaces {
    /// From now on the host has these interfaces, with these addresses (`bridge0=10.13.37.1`).
    pub fn set_host(&self, names: &[&str], addrs: &[&str]) {
        let names = names.iter().map(|n| n.parse().expect("an interface name")).collect();
        let addrs = addrs
            .iter()
            .map(|a| {
                let (i, a) = a.split_once('=').expect("IF=ADDR");
                (i.parse().expect("an interface name"), a.parse().expect("an address"))
            })
            .collect();
        lock(&self.0).host = HostInterfaces { names, addrs };
    }

    /// From now on the VNET jail `jid` has these addresses.
    pub fn set_jail(&self, jid: u32, addrs: &[&str]) {
        lock(&self.0).jails.insert(jid, addrs.iter().map(|a| a.parse().expect("an address")).collect());
    }

    /// The calls so far: `None` for the host's addresses, the jid for a jail's.
    pub fn calls(&self) -> Vec<Option<u32>> {
        lock(&self.0).calls.clone()
    }
}

impl Interfaces for FakeIfaces {
    fn host_addrs(&self) -> Result<HostInterfaces, SysError> {
        let mut m = lock(&self.0);
        m.calls.push(None);
        Ok(m.host.clone())
    }

    fn jail_addrs(&self, jid: u32) -> Result<Vec<IpAddr>, SysError> {
        let mut m = lock(&self.0);
        m.calls.push(Some(jid));
        match m.jails.get(&jid) {
            Some(a) => Ok(a.clone()),
            None => Err(ParseError(format!("ifconfig: jail \"{jid}\" not found")).into()),
        }
    }
}

/// The four fakes, shared between the test and the engine.
#[derive(Clone, Default)]
pub struct Fakes {
    pub pf: FakePf,
    pub jails: FakeJails,
    pub routes: FakeRoutes,
    pub ifaces: FakeIfaces,
    pub settings: FakeSettings,
}

impl Fakes {
    /// A host with an IPv4 default route on em0 and no jail.
    pub fn new() -> Fakes {
        let f = Fakes::default();
        f.routes.set(Family::Inet, Some("em0"));
        f
    }

    /// The engine's view of them.
    pub fn system(&self) -> System {
        System {
            pf: Box::new(self.pf.clone()),
            jails: Box::new(self.jails.clone()),
            routes: Box::new(self.routes.clone()),
            ifaces: Arc::new(self.ifaces.clone()),
            settings: Box::new(self.settings.clone()),
        }
    }
}

/// An engine on the fakes, with its state in a temporary directory.
pub struct Harness {
    pub engine: Mutex<Engine>,
    pub fakes: Fakes,
    pub dir: tempfile::TempDir,
    _wake: Receiver<()>,
}

impl Harness {
    /// An engine on [`Fakes::new`], not started, with the default configuration but its state
    /// directory.
    pub fn new() -> Harness {
        Harness::with(|_| {})
    }

    /// As [`Harness::new`], with `jails` running, started.
    pub fn running(jails: Vec<JailInfo>) -> Harness {
        let h = Harness::new();
        h.fakes.jails.set(jails);
        h.start();
        h
    }

    /// As [`Harness::new`], with the configuration `edit` makes of it.
    pub fn with(edit: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut cfg = Config { state_dir: dir.path().join("db"), ..Config::default() };
        edit(&mut cfg);
        let fakes = Fakes::new();
        let (wake, rx) = mpsc::channel();
        let engine = Engine::new(cfg, fakes.system(), wake).expect("the engine opens its state");
        Harness { engine: Mutex::new(engine), fakes, dir, _wake: rx }
    }

    /// A new engine on the same state directory and fakes, as after a restart of the agent;
    /// not started.
    pub fn reopen(self) -> Harness {
        let cfg = self.engine().config().clone();
        let (wake, rx) = mpsc::channel();
        let engine = Engine::new(cfg, self.fakes.system(), wake).expect("the engine opens its state");
        self.fakes.pf.clear_calls();
        Harness { engine: Mutex::new(engine), fakes: self.fakes, dir: self.dir, _wake: rx }
    }

    /// The engine's mutex, as the server holds it.
    pub fn engine_mutex(&self) -> &Mutex<Engine> {
        &self.engine
    }

    /// The engine, locked.
    pub fn engine(&self) -> MutexGuard<'_, Engine> {
        lock(&self.engine)
    }

    pub fn pf(&self) -> &FakePf {
        &self.fakes.pf
    }

    /// The state file of `jail`, as the engine's store names it.
    pub fn state_file(&self, jail: &str) -> std::path::PathBuf {
        self.dir.path().join("db/publications").join(format!("{jail}.yml"))
    }

    /// Starts the engine (observes, loads every anchor).
    pub fn start(&self) {
        self.engine().start();
    }

    /// One poll tick.
    pub fn tick(&self) {
        self.engine().tick();
    }

    /// `kleenectl publish -j JAIL SPEC...`, as the server runs it.
    pub fn publish(&self, jail: &str, specs: &[&str]) -> Answer {
        let request = PublishRequest {
            jail: jail.parse().expect("a jail name"),
            specs: specs.iter().map(|s| s.parse().expect("a spec")).collect(),
            sources: vec![],
            log: false,
            network: None,
            reach_off: Default::default(),
        };
        super::publish(&self.engine, &request)
    }

    /// `kleenectl unpublish -j JAIL SPEC...`, or `--all` when no spec is given.
    pub fn unpublish(&self, jail: &str, specs: &[&str]) -> Answer {
        let removal = match specs {
            [] => Removal::All,
            _ => Removal::Specs(specs.iter().map(|s| s.parse().expect("a spec")).collect()),
        };
        self.engine().unpublish(&UnpublishRequest { jail: jail.parse().expect("a jail name"), removal })
    }

    /// `kleenectl reconcile`, as the server runs it.
    pub fn reconcile(&self) -> Answer {
        super::reconcile(&self.engine, false)
    }

    /// `kleenectl ls`.
    pub fn list(&self) -> Vec<PublicationState> {
        self.engine().list(None)
    }

    /// The standing and reason `ls` shows for `jail`'s `spec` (canonical), if it shows it.
    pub fn standing(&self, jail: &str, spec: &str) -> Option<(&'static str, Option<String>)> {
        self.list()
            .into_iter()
            .find(|s| s.publication.jail.as_str() == jail && s.publication.spec.to_string() == spec)
            .map(|s| (s.standing.word(), s.reason))
    }

    /// The findings of `kleenectl check` that are not ok.
    pub fn problems(&self) -> Vec<Diagnostic> {
        self.engine().check().into_iter().filter(|d| !d.ok).collect()
    }

    /// The names of the files in the state's publications directory, sorted.
    pub fn state_files(&self) -> Vec<String> {
        let dir = self.dir.path().join("db/publications");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// What the state file of `jail` holds, if it exists.
    pub fn stored(&self, jail: &str) -> Option<String> {
        std::fs::read_to_string(self.state_file(jail)).ok()
    }

    /// Makes writing `jail`'s state file fail (a directory stands where it goes), whoever the
    /// agent runs as.
    pub fn break_state_file(&self, jail: &str) {
        let path = self.state_file(jail);
        let _ = std::fs::remove_file(&path);
        std::fs::create_dir(&path).expect("a directory in the state file's place");
    }
}
