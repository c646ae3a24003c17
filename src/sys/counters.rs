//! pf's rule counters, as `pfctl -s labels` prints them, and the count of pfctl runs by
//! operation (for the agent's metrics).
//!
//! `pfctl -s labels` (pfctl.c, PFCTL_SHOW_LABELS) prints one line per labelled filter rule: each
//! of the rule's labels followed by a space, then eight numbers: evaluations, packets, bytes,
//! packets in, bytes in, packets out, bytes out, state creations. With recursion (`-a '*'`) it
//! follows the main ruleset's anchor calls, and a wildcard call (`anchor "kleene/*"`) prints
//! each child's lines inside `anchor "CHILD" all {` ... `}`. The parser keeps, for every line,
//! the block it was printed in, so that a caller can tell one anchor's rules from another's and
//! an anchor the main ruleset calls twice from two anchors.

use std::sync::atomic::{AtomicU64, Ordering};

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
    }
}

/// One line of `-s labels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelLine {
    /// The block it was printed in: 0 outside any `anchor "..." all {` block, else the block's
    /// number in the output (1, 2, ...; every block has its own).
    pub block: usize,
    /// The rule's labels, split at spaces (a label holding a space is split too; the agent's
    /// labels hold none).
    pub labels: Vec<String>,
    pub counters: RuleCounters,
}

/// Parses `pfctl -s labels` output. Lines that are neither a block's start or end nor labels
/// followed by eight numbers are skipped.
pub fn parse_labels(text: &str) -> Vec<LabelLine> {
    let mut out = Vec::new();
    let mut stack: Vec<usize> = Vec::new();
    let mut blocks = 0;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("anchor \"") && t.ends_with('{') {
            blocks += 1;
            stack.push(blocks);
            continue;
        }
        if t == "}" {
            stack.pop();
            continue;
        }
        let words: Vec<&str> = t.split_ascii_whitespace().collect();
        if words.len() < 9 {
            continue;
        }
        let (labels, numbers) = words.split_at(words.len() - 8);
        let Ok(n) = numbers.iter().map(|w| w.parse::<u64>()).collect::<Result<Vec<u64>, _>>() else {
            continue;
        };
        out.push(LabelLine {
            block: stack.last().copied().unwrap_or(0),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            counters: RuleCounters {
                evaluations: n[0],
                packets_in: n[3],
                bytes_in: n[4],
                packets_out: n[5],
                bytes_out: n[6],
                states_created: n[7],
            },
        });
    }
    out
}

/// What the agent asks pfctl to do, for counting runs by operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PfOp {
    Load,
    Flush,
    Kill,
    Anchors,
    Show,
    Info,
    Labels,
}

impl PfOp {
    pub const ALL: [PfOp; 7] =
        [PfOp::Load, PfOp::Flush, PfOp::Kill, PfOp::Anchors, PfOp::Show, PfOp::Info, PfOp::Labels];

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
        }
    }
}

/// pfctl runs and failures by operation, since the process started.
pub struct PfCalls {
    calls: [AtomicU64; 7],
    failures: [AtomicU64; 7],
}

impl Default for PfCalls {
    fn default() -> Self {
        PfCalls::new()
    }
}

/// The process's count of pfctl runs.
pub static PF_CALLS: PfCalls =
    PfCalls { calls: [const { AtomicU64::new(0) }; 7], failures: [const { AtomicU64::new(0) }; 7] };

impl PfCalls {
    /// No run counted yet.
    pub const fn new() -> PfCalls {
        PfCalls { calls: [const { AtomicU64::new(0) }; 7], failures: [const { AtomicU64::new(0) }; 7] }
    }

    /// Counts one run of `op`, and its failure when `failed`.
    pub fn record(&self, op: PfOp, failed: bool) {
        self.calls[op as usize].fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures[op as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (runs, failures) of `op`.
    pub fn get(&self, op: PfOp) -> (u64, u64) {
        (self.calls[op as usize].load(Ordering::Relaxed), self.failures[op as usize].load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                states_created: 2
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

    #[test]
    fn counting_runs_by_operation() {
        let calls = PfCalls::new();
        calls.record(PfOp::Labels, false);
        calls.record(PfOp::Labels, true);
        assert_eq!(calls.get(PfOp::Labels), (2, 1));
        assert_eq!(calls.get(PfOp::Load), (0, 0));
    }
}
