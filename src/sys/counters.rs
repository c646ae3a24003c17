//! pf's rule counters, as `pfctl -s labels` prints them, and the count of pfctl runs by
//! operation (for the agent's metrics).
//!
//! `pfctl -s labels` (pfctl.c, PFCTL_SHOW_LABELS) prints one line per labelled filter rule: each
//! of the rule's labels followed by a space, then eight numbers: evaluations, packets, bytes,
//! packets in, bytes in, packets out, bytes out, state creations. With recursion (`-a '*'`) it
//! follows the main ruleset's anchor calls, and a wildcard call (`anchor "kleene/*"`) prints
//! each child's lines inside `anchor "CHILD" all {` ... `}`. [`LabelsReader`] hands on every
//! line with the block it was printed in, so that a caller can tell one anchor's rules from
//! another's and an anchor the main ruleset calls twice from two anchors.
//!
//! The labels output has no count of the states a rule holds now. `pfctl -v -s rules` has it:
//! pfctl_print_rule_counters (pfctl.c) prints, on the line after each rule, `  [ Evaluations: N
//! Packets: N  Bytes: N  States: N ]` (`States`: the rule's current states), then more `  [ ...
//! ]` lines (`Inserted: uid U pid P State Creations: N`; FreeBSD 15 adds `Source Nodes: ...`).
//! print_rule (pfctl_parser.c) prints each label as ` label "L"`. With -v, pfctl does not indent
//! rules inside anchors; with recursion a followed anchor call prints ` {` after the rule, its
//! counters, its rules, then `}`, and a wildcard call prints each child inside `anchor "CHILD" all
//! {` ... `}`, as in the labels output. [`StatesReader`] reads it.
//!
//! Both outputs grow with every rule on the host (megabytes at thousands of anchors), so they are
//! read as pfctl prints them, line by line (`runner::run_lines`): a reader keeps only the blocks
//! open and the rule it is reading, and hands each rule on for its caller to add up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One rule's counters (pf resets them when the rule's anchor is loaded again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleCounters {
    pub evaluations: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// States the rule created.
    pub states_created: u64,
    /// States the rule holds now (`pfctl -v -s rules`, not the labels output).
    pub states: u64,
}

impl RuleCounters {
    /// The sum of two rules' counters (a publication's IPv4 and IPv6 rules).
    pub fn add(&mut self, o: &RuleCounters) {
        self.evaluations = self.evaluations.saturating_add(o.evaluations);
        self.packets_in = self.packets_in.saturating_add(o.packets_in);
        self.bytes_in = self.bytes_in.saturating_add(o.bytes_in);
        self.packets_out = self.packets_out.saturating_add(o.packets_out);
        self.bytes_out = self.bytes_out.saturating_add(o.bytes_out);
        self.states_created = self.states_created.saturating_add(o.states_created);
        self.states = self.states.saturating_add(o.states);
    }
}

/// A labelled rule as a reader hands it on, its labels borrowed from the line read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule<'a> {
    /// The block it was printed in: 0 outside any block, else the block's number in the output
    /// (1, 2, ...; every block has its own).
    pub block: usize,
    /// The rule's labels, in order.
    pub labels: Vec<&'a str>,
    /// Its counters: those of `-s labels` (`states` 0), or only `states` (`-v -s rules`).
    pub counters: RuleCounters,
}

/// Reads an output line by line, as pfctl prints it, and hands on each labelled rule once its
/// line (or lines) are read: nothing of the output is kept but the blocks open and, for `-v -s
/// rules`, the one rule waiting for its counters line.
pub trait RuleReader: Default {
    /// Reads the next line; the rule it completes, if any.
    fn line<'s>(&'s mut self, line: &'s str) -> Option<Rule<'s>>;
}

/// The blocks open and how many were opened, while reading.
#[derive(Debug, Default)]
struct Blocks {
    stack: Vec<usize>,
    opened: usize,
}

impl Blocks {
    fn open(&mut self) {
        self.opened += 1;
        self.stack.push(self.opened);
    }

    fn close(&mut self) {
        self.stack.pop();
    }

    /// The innermost block open, 0 outside any.
    fn current(&self) -> usize {
        self.stack.last().copied().unwrap_or(0)
    }
}

/// Reads `pfctl -s labels` output. A line is a block's start (`anchor "..." ... {`), a block's end
/// (`}`), or labels followed by eight numbers, read from the right (a label holding a space is
/// split at it; the agent's labels hold none); any other line is skipped.
#[derive(Debug, Default)]
pub struct LabelsReader {
    blocks: Blocks,
}

impl RuleReader for LabelsReader {
    fn line<'s>(&'s mut self, line: &'s str) -> Option<Rule<'s>> {
        let t = line.trim();
        if t.starts_with("anchor \"") && t.ends_with('{') {
            self.blocks.open();
            return None;
        }
        if t == "}" {
            self.blocks.close();
            return None;
        }
        let mut labels: Vec<&str> = t.split_ascii_whitespace().collect();
        if labels.len() < 9 {
            return None;
        }
        let mut n = [0u64; 8];
        for (slot, word) in n.iter_mut().zip(&labels[labels.len() - 8..]) {
            *slot = word.parse().ok()?;
        }
        labels.truncate(labels.len() - 8);
        Some(Rule {
            block: self.blocks.current(),
            labels,
            counters: RuleCounters {
                evaluations: n[0],
                packets_in: n[3],
                bytes_in: n[4],
                packets_out: n[5],
                bytes_out: n[6],
                states_created: n[7],
                states: 0,
            },
        })
    }
}

/// Reads `pfctl -v -s rules` output: every rule with labels whose next line is its `[
/// Evaluations: ... States: N ]` line, in the innermost block it was printed in (every line
/// ending in `{` opens one: a followed anchor call, a wildcard call's child). A rule without
/// that line (no `-v`), or whose `States:` is not a number, is skipped.
#[derive(Debug, Default)]
pub struct StatesReader {
    blocks: Blocks,
    /// The last rule line's block and labels, waiting for its counters line.
    pending: Option<(usize, Vec<String>)>,
    /// The rule handed on last, kept for its labels to be borrowed.
    done: Option<(usize, Vec<String>)>,
}

impl RuleReader for StatesReader {
    fn line<'s>(&'s mut self, line: &'s str) -> Option<Rule<'s>> {
        let t = line.trim();
        if let Some(counters) = t.strip_prefix('[') {
            let rule = self.pending.take();
            let states = field(counters, "States:").filter(|_| counters.trim_start().starts_with("Evaluations:"));
            let (Some(rule), Some(states)) = (rule, states) else { return None };
            let (block, labels) = self.done.insert(rule);
            let counters = RuleCounters { states, ..RuleCounters::default() };
            return Some(Rule { block: *block, labels: labels.iter().map(String::as_str).collect(), counters });
        }
        self.pending = None;
        if t == "}" {
            self.blocks.close();
            return None;
        }
        if t.is_empty() {
            return None;
        }
        let labels = rule_labels(t);
        if !labels.is_empty() {
            self.pending = Some((self.blocks.current(), labels));
        }
        if t.ends_with('{') {
            self.blocks.open();
        }
        None
    }
}

/// The number after `name` in a counters line (`States: 3     ]`).
fn field(line: &str, name: &str) -> Option<u64> {
    let mut words = line.split_ascii_whitespace();
    words.find(|w| *w == name)?;
    words.next()?.trim_end_matches(']').parse().ok()
}

/// The labels of a printed rule: each ` label "L"`, in order.
fn rule_labels(rule: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = rule;
    while let Some(i) = rest.find(" label \"") {
        rest = &rest[i + " label \"".len()..];
        let Some(end) = rest.find('"') else { break };
        out.push(rest[..end].to_string());
        rest = &rest[end + 1..];
    }
    out
}

/// What the agent asks pfctl to do, for counting runs by operation (and for scripting the
/// in-process fake's refusals in the engine's tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PfOp {
    Load,
    Flush,
    Kill,
    Anchors,
    Show,
    Info,
    Labels,
    /// `-v -s rules`, for the states each rule holds.
    States,
}

impl PfOp {
    pub const ALL: [PfOp; 8] =
        [PfOp::Load, PfOp::Flush, PfOp::Kill, PfOp::Anchors, PfOp::Show, PfOp::Info, PfOp::Labels, PfOp::States];

    /// The metric label value.
    pub fn name(self) -> &'static str {
        match self {
            PfOp::Load => "load",
            PfOp::Flush => "flush",
            PfOp::Kill => "kill",
            PfOp::Anchors => "anchors",
            PfOp::Show => "show",
            PfOp::Info => "info",
            PfOp::Labels => "labels",
            PfOp::States => "states",
        }
    }
}

/// pfctl runs, failures and the time they took, by operation, since the process started.
pub struct PfCalls {
    calls: [AtomicU64; 8],
    failures: [AtomicU64; 8],
    /// Microseconds from starting pfctl to its answer (reaped, output read).
    micros: [AtomicU64; 8],
}

impl Default for PfCalls {
    fn default() -> Self {
        PfCalls::new()
    }
}

/// The process's count of pfctl runs.
pub static PF_CALLS: PfCalls = PfCalls::new();

impl PfCalls {
    /// No run counted yet.
    pub const fn new() -> PfCalls {
        PfCalls {
            calls: [const { AtomicU64::new(0) }; 8],
            failures: [const { AtomicU64::new(0) }; 8],
            micros: [const { AtomicU64::new(0) }; 8],
        }
    }

    /// Counts one run of `op` that took `took`, and its failure when `failed`.
    pub fn record(&self, op: PfOp, failed: bool, took: Duration) {
        self.calls[op as usize].fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures[op as usize].fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.micros[op as usize].fetch_add(micros, Ordering::Relaxed);
    }

    /// The time the runs of `op` took, in all.
    pub fn time(&self, op: PfOp) -> Duration {
        Duration::from_micros(self.micros[op as usize].load(Ordering::Relaxed))
    }

    /// (runs, failures) of `op`.
    pub fn get(&self, op: PfOp) -> (u64, u64) {
        (self.calls[op as usize].load(Ordering::Relaxed), self.failures[op as usize].load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One rule read, owned: its block, labels and counters.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct LabelLine {
        block: usize,
        labels: Vec<String>,
        counters: RuleCounters,
    }

    /// Every rule `R` reads in `text`, line by line as pfctl prints them.
    fn read<R: RuleReader>(text: &str) -> Vec<LabelLine> {
        let mut reader = R::default();
        text.lines()
            .filter_map(|l| {
                reader.line(l).map(|r| LabelLine {
                    block: r.block,
                    labels: r.labels.iter().map(|l| l.to_string()).collect(),
                    counters: r.counters,
                })
            })
            .collect()
    }

    fn parse_labels(text: &str) -> Vec<LabelLine> {
        read::<LabelsReader>(text)
    }

    /// What the states reader reads, with `states` for each rule's current states.
    struct RuleStates {
        block: usize,
        labels: Vec<String>,
        states: u64,
    }

    fn parse_rule_states(text: &str) -> Vec<RuleStates> {
        read::<StatesReader>(text)
            .into_iter()
            .map(|l| {
                assert_eq!(l.counters, RuleCounters { states: l.counters.states, ..RuleCounters::default() });
                RuleStates { block: l.block, labels: l.labels, states: l.counters.states }
            })
            .collect()
    }

    #[test]
    fn lines_are_read_from_the_right_and_keep_their_block() {
        let text = "ssh 9 9 9 9 9 9 9 9\n\
                    anchor \"db\" all {\n\
                    kleene:db:5432:5432/tcp kleene/db 10 7 700 4 400 3 300 2\n\
                    }\n\
                    anchor \"web\" all {\n\
                    kleene:web:8080:80/tcp kleene/web 1 2 3 4 5 6 7 8\n\
                    a label with spaces 1 1 1 1 1 1 1 1\n\
                    }\n\
                    anchor \"web\" all {\n\
                    kleene:web:8080:80/tcp kleene/web 1 2 3 4 5 6 7 8\n\
                    }\n\
                    garbage\n\
                    x 1 2 3 4 5 6 7 -8\n";
        let lines = parse_labels(text);
        assert_eq!(lines.len(), 5);
        assert_eq!((lines[0].block, lines[0].labels.clone()), (0, vec!["ssh".to_string()]));
        assert_eq!(lines[1].block, 1);
        assert_eq!(
            lines[1].counters,
            RuleCounters {
                evaluations: 10,
                packets_in: 4,
                bytes_in: 400,
                packets_out: 3,
                bytes_out: 300,
                states_created: 2,
                states: 0
            }
        );
        assert_eq!(lines[2].labels, ["kleene:web:8080:80/tcp", "kleene/web"]);
        assert_eq!((lines[2].block, lines[3].block, lines[4].block), (2, 2, 3));
        assert_eq!(lines[3].labels, ["a", "label", "with", "spaces"]);
    }

    proptest::proptest! {
        /// Whatever pfctl prints, parsing returns, and every line it keeps ends in eight numbers.
        #[test]
        fn parsing_is_total(text in "(anchor \"[a-z]{0,3}\" all \\{\n|\\}\n|[a-z:/ ]{0,12}( [0-9]{1,3}){0,9}\n){0,12}") {
            for l in parse_labels(&text) {
                proptest::prop_assert!(!l.labels.is_empty());
            }
        }
    }

    /// `pfctl -a '*' -v -s rules` as pfctl.c prints it: the main ruleset calling the anchors
    /// twice, no indentation under -v, counters lines after every rule (after the ` {` of a
    /// followed call).
    #[test]
    fn current_states_are_read_from_the_line_after_each_rule() {
        let text = "pass in quick on em0 proto tcp from any to any port = 22 flags S/SA keep state label \"ssh\"\n  \
            [ Evaluations: 9         Packets: 9         Bytes: 9           States: 1     ]\n  \
            [ Inserted: uid 0 pid 1 State Creations: 9     ]\n\
            anchor \"kleene/*\" all {\n  \
            [ Evaluations: 40        Packets: 0         Bytes: 0           States: 0     ]\n  \
            [ Inserted: uid 0 pid 1 State Creations: 0     ]\n\
            anchor \"db\" all {\n\
            pass in quick on em0 inet proto tcp from any to 10.13.37.3 port = 5432 flags S/SA keep state label \"kleene:db:5432:5432/tcp\" label \"kleene/db\"\n  \
            [ Evaluations: 10        Packets: 7         Bytes: 700         States: 2     ]\n  \
            [ Inserted: uid 0 pid 812 State Creations: 4     ]\n\
            }\n\
            anchor \"web\" all {\n\
            pass in quick on em0 inet6 proto tcp from any to fd00::2 port = 80 flags S/SA keep state label \"kleene:web:8080:80/tcp\" label \"kleene/web\"\n  \
            [ Evaluations: 1         Packets: 2         Bytes: 3           States: 1234567890123]\n  \
            [ Inserted: uid 0 pid 812 State Creations: 1234567890200]\n  \
            [ Source Nodes: 0      Limit: 0      NAT/RDR: 0      Route: 0      ]\n\
            pass in quick on em0 inet proto tcp from any to 10.13.37.2 port = 80 flags S/SA keep state\n  \
            [ Evaluations: 1         Packets: 2         Bytes: 3           States: 5     ]\n\
            pass in quick on em0 inet proto tcp from any to 10.13.37.2 port = 81 label \"kleene:web:81:81/tcp\"\n\
            }\n\
            }\n\
            anchor \"kleene/*\" all {\n  \
            [ Evaluations: 0         Packets: 0         Bytes: 0           States: 0     ]\n\
            anchor \"web\" all {\n\
            pass in quick on em0 inet6 proto tcp from any to fd00::2 port = 80 flags S/SA keep state label \"kleene:web:8080:80/tcp\" label \"kleene/web\"\n  \
            [ Evaluations: 1         Packets: 2         Bytes: 3           States: x     ]\n\
            }\n\
            }\n";
        let rules = parse_rule_states(text);
        let got: Vec<(usize, Vec<&str>, u64)> =
            rules.iter().map(|r| (r.block, r.labels.iter().map(String::as_str).collect(), r.states)).collect();
        assert_eq!(
            got,
            [
                (0, vec!["ssh"], 1),
                (2, vec!["kleene:db:5432:5432/tcp", "kleene/db"], 2),
                (3, vec!["kleene:web:8080:80/tcp", "kleene/web"], 1_234_567_890_123),
            ],
            "the unlabelled rule, the rule without a counters line and the unreadable count are skipped"
        );
        assert!(parse_rule_states(&text.replace("[ Evaluations", "[ Inserted")).is_empty(), "no -v, no states");
    }

    proptest::proptest! {
        /// Whatever pfctl prints, parsing returns, and a rule it keeps has the count printed
        /// after it.
        #[test]
        fn parsing_rules_is_total(
            text in "(anchor \"[a-z/*]{0,3}\" all \\{\n|\\}\n|pass( label \"[a-z:/]{0,6}\"){0,2}\n|  \\[ Evaluations: [0-9]{1,3}  States: (0|[1-9][0-9]{0,2}) ?\\]\n){0,12}"
        ) {
            for r in parse_rule_states(&text) {
                proptest::prop_assert!(!r.labels.is_empty());
                let printed = format!("States: {}", r.states);
                proptest::prop_assert!(text.contains(&printed));
            }
        }
    }

    #[test]
    fn counting_runs_by_operation() {
        let calls = PfCalls::new();
        calls.record(PfOp::Labels, false, Duration::from_micros(1_500));
        calls.record(PfOp::Labels, true, Duration::from_millis(2));
        assert_eq!(calls.get(PfOp::Labels), (2, 1));
        assert_eq!(calls.time(PfOp::Labels), Duration::from_micros(3_500));
        assert_eq!(calls.get(PfOp::Load), (0, 0));
        assert_eq!(calls.time(PfOp::Load), Duration::ZERO);
    }
}
