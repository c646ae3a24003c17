//! `kleenectl stats`, and the per-publication counters of the metrics: pf's counters of each
//! publication's pass rules (`pfctl -s labels`).
//!
//! Reading counters is never part of a poll: only a `stats` (or `ls`) request and a metrics
//! scrape read them. The read runs without the engine's lock: under the lock the engine only
//! says which publications to report and when each anchor was loaded ([`Engine::begin_stats`]);
//! pfctl then runs with the lock free ([`StatsRead::read`]), one read at a time in the whole
//! agent, so that clients and scrapers asking together cost one pfctl each in turn, never a
//! crowd of them.
//!
//! One pfctl call reads every anchor: `pfctl -a '*' -s labels` follows the main ruleset's
//! `anchor "kleene/*"` and prints each child anchor's labelled rules inside its own block.
//! Anchors that call does not show (pf.conf lacks the anchor line, a race with a reload, or a
//! pfctl whose `-s labels` does not follow anchor calls: older pfctl.c prints only the main
//! ruleset's labels) are read one by one (`pfctl -a kleene/<jail> -s labels`). A request for one
//! jail reads its anchor alone.
//!
//! pf starts a reloaded anchor's counters at zero. The agent reports them as pf keeps them,
//! with `since`: when the agent last loaded the anchor. It does not add up counters across
//! reloads: a total kept in the agent's memory would be lost with the agent anyway, and
//! Prometheus's `rate()` and `increase()` already handle a counter that restarts at zero.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::core::model::{JailName, LabelKind, OUTBOUND_LABEL};
use crate::sys::counters::{LabelLine, RuleCounters, parse_labels};

use super::super::api::{PublicationState, PublicationStats, Refusal, RefusalKind, Standing};
use super::{Engine, System, lock};

/// One counter read at a time, in the whole agent.
static READING: Mutex<()> = Mutex::new(());

/// What a stats read reports, and how to read it: prepared under the engine's lock, run
/// without it.
pub struct StatsRead {
    sys: Arc<System>,
    /// One jail's anchor alone, rather than every anchor.
    one_jail: bool,
    items: Vec<Item>,
}

struct Item {
    state: PublicationState,
    /// The anchor's path, when its rules are loaded, and since when.
    loaded: Option<(String, SystemTime)>,
    jail_label: String,
    label: String,
}

impl Engine {
    /// The publications `stats` reports (of `jail` when given) and when each one's anchor was
    /// loaded. Runs no process.
    pub fn begin_stats(&self, jail: Option<&JailName>) -> StatsRead {
        let items = self
            .list(jail)
            .into_iter()
            .map(|state| {
                let p = &state.publication;
                let component = self.component(&p.jail);
                // Only an active publication has rules in pf.
                let loaded = match state.standing {
                    Standing::Active => self.executor.loaded_at(&component).map(|t| (self.anchor_path(&component), t)),
                    _ => None,
                };
                Item { jail_label: p.jail.label(), label: p.label(), loaded, state }
            })
            .collect();
        StatsRead { sys: Arc::clone(&self.sys), one_jail: jail.is_some(), items }
    }

    /// How many jails the last observation saw running.
    pub fn jails_seen(&self) -> usize {
        self.observer.observed().jails.len()
    }
}

impl StatsRead {
    /// The standing of every publication reported.
    pub fn standings(&self) -> impl Iterator<Item = Standing> + '_ {
        self.items.iter().map(|i| i.state.standing)
    }

    /// Reads pf's counters (one pfctl call when pf.conf calls the anchors, see the module
    /// documentation) and pairs them with the publications. A failure of the call that reads
    /// every anchor is an error; a failure to read one anchor leaves its publications without
    /// counters and says why.
    pub fn read(self) -> Result<Vec<PublicationStats>, Refusal> {
        let _one = READING.lock().unwrap_or_else(|p| p.into_inner());
        let loaded = || self.items.iter().filter_map(|i| i.loaded.as_ref().map(|(a, _)| (a, i)));
        // By jail label: what the read of every anchor found.
        let mut all: BTreeMap<String, Vec<LabelLine>> = BTreeMap::new();
        if loaded().next().is_some() && !self.one_jail {
            let text =
                self.sys.pf.labels("*").map_err(|e| {
                    Refusal::new(RefusalKind::Pf, format!("cannot read pf's counters: {}", e.message()))
                })?;
            all = by_jail_label(&parse_labels(&text));
        }
        // By anchor path: the anchors that read did not show, read one by one.
        let mut alone: BTreeMap<&str, Result<Vec<LabelLine>, String>> = BTreeMap::new();
        for (anchor, i) in loaded() {
            if !all.contains_key(&i.jail_label) && !alone.contains_key(anchor.as_str()) {
                let read = self.sys.pf.labels(anchor).map(|t| parse_labels(&t)).map_err(|e| e.message());
                alone.insert(anchor, read);
            }
        }
        let none: Result<Vec<LabelLine>, String> = Ok(Vec::new());
        let stats = self.items.iter().map(|i| {
            let (since, counters, note) = match &i.loaded {
                None => (None, None, None),
                Some((anchor, since)) => {
                    let lines = match all.get(&i.jail_label) {
                        Some(lines) => Ok(lines),
                        None => alone.get(anchor.as_str()).unwrap_or(&none).as_ref(),
                    };
                    match lines {
                        Ok(lines) => (Some(*since), Some(sum(lines, &i.label, &i.jail_label)), None),
                        Err(e) => (Some(*since), None, Some(format!("cannot read pf's counters of {anchor}: {e}"))),
                    }
                }
            };
            PublicationStats { state: i.state.clone(), since, counters, note }
        });
        Ok(stats.collect())
    }
}

/// `kleenectl stats`, as the server runs it: prepared under the engine's lock, read without it.
pub fn stats(engine: &Mutex<Engine>, jail: Option<&JailName>) -> Result<Vec<PublicationStats>, Refusal> {
    let read = lock(engine).begin_stats(jail);
    read.read()
}

/// The lines of `pfctl -a '*' -s labels` by the agent's jail label they carry, from the blocks
/// pf prints for the children of a wildcard anchor call. When pf.conf calls the anchors twice,
/// pf prints each child twice: only a jail label's first block counts.
fn by_jail_label(lines: &[LabelLine]) -> BTreeMap<String, Vec<LabelLine>> {
    let mut block_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out: BTreeMap<String, Vec<LabelLine>> = BTreeMap::new();
    for l in lines.iter().filter(|l| l.block > 0) {
        let Some(jail_label) = l.labels.iter().find(|w| LabelKind::of(w) == Some(LabelKind::Jail)) else { continue };
        if *block_of.entry(jail_label).or_insert(l.block) == l.block {
            out.entry(jail_label.clone()).or_default().push(l.clone());
        }
    }
    out
}

/// The counters of the rules carrying both `label` and `jail_label` (a publication has a pass
/// rule per family), but not [`OUTBOUND_LABEL`]: a `pass out` rule counts again what a `pass
/// in` rule counted.
fn sum(lines: &[LabelLine], label: &str, jail_label: &str) -> RuleCounters {
    let mut total = RuleCounters::default();
    let has = |l: &LabelLine, want: &str| l.labels.iter().any(|w| w == want);
    for l in lines.iter().filter(|l| has(l, label) && has(l, jail_label) && !has(l, OUTBOUND_LABEL)) {
        total.add(&l.counters);
    }
    total
}

#[cfg(test)]
mod tests {
    use crate::agent::engine::testing::{Harness, PfCall, jail};
    use crate::sys::counters::RuleCounters;

    fn counters(packets_in: u64, bytes_in: u64, states_created: u64) -> RuleCounters {
        RuleCounters { evaluations: 1, packets_in, bytes_in, packets_out: 1, bytes_out: 10, states_created }
    }

    #[test]
    fn a_pass_out_rule_is_not_counted_twice() {
        use crate::sys::counters::LabelLine;
        let line = |labels: &[&str], bytes_in: u64| LabelLine {
            block: 1,
            labels: labels.iter().map(|l| l.to_string()).collect(),
            counters: counters(1, bytes_in, 1),
        };
        let (p, j) = ("kleene:vweb:8080:80/tcp", "kleene/vweb");
        let lines = [
            line(&[p, j], 100),
            line(&[p, j, crate::core::model::OUTBOUND_LABEL], 100),
            line(&[p, j], 5),
            line(&["kleene:vweb:9090:90/tcp", j], 1000),
        ];
        let total = super::sum(&lines, p, j);
        assert_eq!((total.bytes_in, total.states_created), (105, 2), "the pass out rule's repeat is skipped");
    }

    /// web (dual-stack) publishing two ports, db not running.
    fn harness() -> Harness {
        let h = Harness::running(vec![jail("web", 3, &["10.13.37.2", "fd00::2"])]);
        h.publish("web", &["8080:80", "8443:443"]).unwrap();
        h.publish("db", &["5432"]).unwrap();
        h.pf().clear_calls();
        h
    }

    fn read(h: &Harness, jail: Option<&str>) -> Vec<(String, Option<RuleCounters>, Option<String>)> {
        let jail = jail.map(|j| j.parse().unwrap());
        let read = h.engine().begin_stats(jail.as_ref());
        read.read().unwrap().into_iter().map(|s| (s.state.publication.spec.to_string(), s.counters, s.note)).collect()
    }

    #[test]
    fn one_call_reads_every_anchor_and_a_publication_sums_its_families() {
        let h = harness();
        h.pf().set_labels(
            "*",
            "ssh 5 5 5 5 5 5 5 5\n\
             anchor \"web\" all {\n\
             kleene:web:8080:80/tcp kleene/web 1 2 30 2 30 0 0 1\n\
             kleene:web:8080:80/tcp kleene/web 1 3 40 2 30 1 10 1\n\
             kleene:web:8443:443/tcp kleene/web 1 2 30 2 30 0 0 7\n\
             }\n\
             anchor \"web\" all {\n\
             kleene:web:8080:80/tcp kleene/web 1 2 30 2 30 0 0 1\n\
             }\n",
        );
        let stats = read(&h, None);
        assert_eq!(h.pf().calls(), [PfCall::Labels("*".into())], "one pfctl call for every anchor");
        assert_eq!(stats[0], ("5432:5432/tcp".into(), None, None), "db is not running: no counters");
        let web = stats[1].1.expect("web's counters");
        assert_eq!(
            (web.packets_in, web.bytes_in, web.packets_out, web.bytes_out, web.states_created),
            (4, 60, 1, 10, 2),
            "both families, and the second block (pf.conf calling the anchors twice) not counted again"
        );
        assert_eq!(stats[2].1.unwrap().states_created, 7);
    }

    #[test]
    fn an_anchor_the_recursive_read_does_not_show_is_read_alone() {
        let h = harness();
        h.pf().set_labels("*", "ssh 5 5 5 5 5 5 5 5\n");
        h.pf().set_labels("kleene/web", "kleene:web:8080:80/tcp kleene/web 9 9 900 5 500 4 400 3\n");
        let stats = read(&h, None);
        assert_eq!(h.pf().calls(), [PfCall::Labels("*".into()), PfCall::Labels("kleene/web".into())]);
        assert_eq!(stats[1].1, Some(RuleCounters { evaluations: 9, ..counters(5, 500, 3) }.with_out(4, 400)));
        assert_eq!(stats[2].1, Some(RuleCounters::default()), "loaded, and nothing counted yet");
    }

    #[test]
    fn one_jail_is_read_alone_and_no_read_without_loaded_rules() {
        let h = harness();
        h.pf().set_labels("kleene/web", "kleene:web:8443:443/tcp kleene/web 1 1 1 1 1 1 1 1\n");
        let stats = read(&h, Some("web"));
        assert_eq!(h.pf().calls(), [PfCall::Labels("kleene/web".into())]);
        assert_eq!(stats.len(), 2);
        h.pf().clear_calls();
        assert_eq!(read(&h, Some("db")).len(), 1);
        assert!(h.pf().calls().is_empty(), "db has nothing loaded: pf is not asked");
        h.tick();
        assert!(!h.pf().calls().iter().any(|c| matches!(c, PfCall::Labels(_))), "a poll never reads counters");
    }

    #[test]
    fn a_failed_read_is_an_error_or_a_note() {
        let h = harness();
        h.pf().refuse(crate::agent::engine::testing::PfOp::Show, "pfctl: /dev/pf: Permission denied");
        let read = h.engine().begin_stats(None);
        let e = read.read().unwrap_err();
        assert!(e.message.contains("cannot read pf's counters: pfctl: /dev/pf: Permission denied"), "{e:?}");
        let web = read_one_failing(&h);
        assert!(web.contains("cannot read pf's counters of kleene/web: pfctl: /dev/pf"), "{web}");
    }

    fn read_one_failing(h: &Harness) -> String {
        let jail = "web".parse().unwrap();
        let read = h.engine().begin_stats(Some(&jail));
        let stats = read.read().unwrap();
        assert!(stats[0].since.is_some() && stats[0].counters.is_none());
        stats[0].note.clone().unwrap()
    }

    impl RuleCounters {
        fn with_out(mut self, packets_out: u64, bytes_out: u64) -> RuleCounters {
            self.packets_out = packets_out;
            self.bytes_out = bytes_out;
            self
        }
    }
}
