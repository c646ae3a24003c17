//! pf, driven through pfctl(8). Every command line here is one FreeBSD's pfctl accepts
//! (pfctl(8)): `-a` selects an anchor, `-f -` loads from stdin in one transaction, `-F all`
//! with `-a` flushes only that anchor (never the states), `-k label -k L` kills the states
//! created by rules labelled L, `-s` shows, `-P` prints ports numerically, `-s Interfaces -v`
//! lists the interfaces pf knows, one per line, a skipped one followed by ` (skip)`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::counters::{PF_CALLS, PfOp};
use super::later::Later;
use super::memo::Memo;
use super::parse;
use super::runner::{self, CmdError};

/// Which rules `show` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Translation rules (`-s nat`).
    Nat,
    /// Filter rules (`-s rules`).
    Rules,
}

impl Show {
    fn modifier(self) -> &'static str {
        match self {
            Show::Nat => "nat",
            Show::Rules => "rules",
        }
    }
}

/// The most a streamed read may print: `pfctl -P -a '*' -v -s rules` prints about 280 bytes per
/// publication (three lines per rule), so 128 MiB holds the default `max_publications` (65,536)
/// dual-stack several times over; the tool's deadline bounds it too.
pub const MAX_STREAMED_OUTPUT: usize = 128 * 1024 * 1024;

/// The operations the agent needs from pf. Anchor paths are built by the caller from validated
/// components only.
pub trait Pf: Send + Sync {
    /// Replaces everything in `anchor` with `text`, all or nothing.
    fn load(&self, anchor: &str, text: &str) -> Result<(), CmdError>;
    /// Removes every rule of `anchor` (the anchor then disappears from listings).
    fn flush(&self, anchor: &str) -> Result<(), CmdError>;
    /// Kills the states created by rules labelled `label`.
    fn kill_label(&self, label: &str) -> Result<(), CmdError>;
    /// Paths of the anchors directly below `parent` (empty when `parent` does not exist).
    fn anchors(&self, parent: &str) -> Result<Vec<String>, CmdError>;
    /// [`Pf::anchors`], to run together with other reads
    /// ([`run_together`](super::later::run_together)), shared: the same list (the same `Arc`)
    /// when pfctl printed the same as for the last list, where an implementation can tell.
    fn anchors_later<'a>(&'a self, parent: &'a str) -> Later<'a, Result<Arc<Vec<String>>, CmdError>> {
        Later::known(self.anchors(parent).map(Arc::new))
    }
    /// The rules of `anchor` (the main ruleset for `None`), numerically, as pfctl prints them.
    fn show(&self, anchor: Option<&str>, what: Show) -> Result<String, CmdError>;
    /// Whether pf is enabled (`None` when pfctl's answer could not be read).
    fn enabled(&self) -> Result<Option<bool>, CmdError>;
    /// The interfaces and interface groups pf knows, each with whether pf skips it (`set skip`).
    fn interfaces(&self) -> Result<Vec<(String, bool)>, CmdError>;
    /// Hands `each` line of what `pfctl -a ANCHOR -s labels` prints, as it prints it: the
    /// counters of the labelled filter rules of `anchor`, or with `*` of the main ruleset and of
    /// every anchor it calls, recursively (`counters::LabelsReader` reads it). The lines handed
    /// on before an error mean nothing.
    fn labels(&self, anchor: &str, each: &mut dyn FnMut(&str)) -> Result<(), CmdError>;
    /// Hands `each` line of what `pfctl -P -a ANCHOR -v -s rules` prints (ports numeric: no
    /// service lookups), as it prints it: the filter rules of `anchor` (with `*`, of the main
    /// ruleset and every anchor it calls, recursively), each followed by its counters lines,
    /// which hold its current states (`counters::StatesReader` reads it). The lines handed on
    /// before an error mean nothing.
    fn rule_states(&self, anchor: &str, each: &mut dyn FnMut(&str)) -> Result<(), CmdError>;
}

/// The real pf, through the pfctl binary at `path`. Every run is counted by operation
/// (`counters::PF_CALLS`).
pub struct Pfctl {
    pub path: PathBuf,
    pub limits: runner::Limits,
    /// The last `-s Anchors` output and the anchors it listed.
    last_anchors: Memo<Vec<String>>,
}

impl Pfctl {
    pub fn new(path: PathBuf, limits: runner::Limits) -> Pfctl {
        Pfctl { path, limits, last_anchors: Memo::default() }
    }
}

impl Pfctl {
    /// Runs pfctl; a non-zero exit is a failure.
    fn run(&self, op: PfOp, args: &[&str], stdin: Option<&[u8]>) -> Result<runner::Output, CmdError> {
        let started = Instant::now();
        counted(op, started, runner::run(&self.path, args, stdin, false, self.limits))
    }

    /// Runs pfctl, its exit status and stderr left to the caller.
    fn run_judged(&self, args: &[&str]) -> Result<runner::Output, CmdError> {
        runner::run(&self.path, args, None, true, self.limits)
    }

    /// What `-s ...` printed. pfctl warns about a missing anchor on stderr and may still exit 0:
    /// that is a failure too.
    fn shown(&self, op: PfOp, args: &[&str]) -> Result<String, CmdError> {
        let started = Instant::now();
        counted(op, started, self.run_judged(args).and_then(|out| self.judged(args, out)))
    }

    /// [`Pfctl::shown`], its output handed to `each` line by line as pfctl prints it. The output
    /// cap is [`MAX_STREAMED_OUTPUT`], not the one of the reads kept whole: a streamed read holds
    /// one line at a time, and the counters of every publication run to several MB.
    fn shown_lines(&self, op: PfOp, args: &[&str], each: &mut dyn FnMut(&str)) -> Result<(), CmdError> {
        let limits = runner::Limits { max_output: MAX_STREAMED_OUTPUT.max(self.limits.max_output), ..self.limits };
        let started = Instant::now();
        let out = runner::run_lines(&self.path, args, None, true, limits, each);
        counted(op, started, out.and_then(|out| self.judged(args, out)).map(drop))
    }

    /// The stdout of a `-s ...` run, or its failure.
    fn judged(&self, args: &[&str], out: runner::Output) -> Result<String, CmdError> {
        if !out.status.success() || out.stderr.contains("DIOCGETRULES") || out.stderr.contains("No such file") {
            return Err(runner::failure(&self.path, args, out));
        }
        Ok(out.stdout)
    }

    /// The anchors `-s Anchors` listed. A parent that does not exist at all: `pfctl:
    /// DIOCGETRULESETS: No such file or directory`, exit 1. pfctl's `Anchor 'PARENT' not found.`
    /// on stderr comes from its Ethernet-anchor lookup and says nothing about the pf anchors
    /// listed on stdout.
    fn listed(&self, args: &[&str], out: runner::Output) -> Result<Arc<Vec<String>>, CmdError> {
        if !out.status.success() {
            if out.stderr.contains("DIOCGETRULESETS") && out.stderr.contains("No such file or directory") {
                return Ok(Arc::new(vec![]));
            }
            return Err(runner::failure(&self.path, args, out));
        }
        self.last_anchors.parse(out.stdout, |text| Ok(parse::parse_anchors(text)))
    }
}

/// Counts a finished run of `op`, started at `started`.
fn counted<T>(op: PfOp, started: Instant, r: Result<T, CmdError>) -> Result<T, CmdError> {
    PF_CALLS.record(op, r.is_err(), started.elapsed());
    r
}

impl Pf for Pfctl {
    fn load(&self, anchor: &str, text: &str) -> Result<(), CmdError> {
        self.run(PfOp::Load, &["-a", anchor, "-f", "-"], Some(text.as_bytes())).map(drop)
    }

    fn flush(&self, anchor: &str) -> Result<(), CmdError> {
        self.run(PfOp::Flush, &["-q", "-a", anchor, "-F", "all"], None).map(drop)
    }

    fn kill_label(&self, label: &str) -> Result<(), CmdError> {
        self.run(PfOp::Kill, &["-k", "label", "-k", label], None).map(drop)
    }

    fn anchors(&self, parent: &str) -> Result<Vec<String>, CmdError> {
        self.anchors_later(parent).get().map(Arc::unwrap_or_clone)
    }

    fn anchors_later<'a>(&'a self, parent: &'a str) -> Later<'a, Result<Arc<Vec<String>>, CmdError>> {
        let args = ["-a", parent, "-s", "Anchors"];
        // Run beside jls and route in a poll, its answer is taken when all three have answered:
        // its time is counted until then.
        let started = Instant::now();
        Later::command(runner::Cmd::new(&self.path, &args, self.limits).judged(), move |answer| {
            counted(PfOp::Anchors, started, answer.and_then(|out| self.listed(&args, out)))
        })
    }

    fn show(&self, anchor: Option<&str>, what: Show) -> Result<String, CmdError> {
        let mut args = vec!["-P"];
        if let Some(a) = anchor {
            args.extend(["-a", a]);
        }
        args.extend(["-s", what.modifier()]);
        self.shown(PfOp::Show, &args)
    }

    fn enabled(&self) -> Result<Option<bool>, CmdError> {
        let out = self.run(PfOp::Info, &["-s", "info"], None)?;
        Ok(parse::parse_pf_status(&out.stdout))
    }

    fn interfaces(&self) -> Result<Vec<(String, bool)>, CmdError> {
        let out = self.run(PfOp::Show, &["-s", "Interfaces", "-v"], None)?;
        Ok(parse::parse_pf_interfaces(&out.stdout))
    }

    fn labels(&self, anchor: &str, each: &mut dyn FnMut(&str)) -> Result<(), CmdError> {
        self.shown_lines(PfOp::Labels, &["-a", anchor, "-s", "labels"], each)
    }

    fn rule_states(&self, anchor: &str, each: &mut dyn FnMut(&str)) -> Result<(), CmdError> {
        self.shown_lines(PfOp::States, &["-P", "-a", anchor, "-v", "-s", "rules"], each)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::PermissionsExt as _;

    /// A pfctl that runs `script` (sh), in `dir`.
    fn pfctl(dir: &tempfile::TempDir, script: &str) -> Pfctl {
        let path = dir.path().join("pfctl");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Pfctl::new(path, runner::Limits::default())
    }

    /// What `read` handed on, and how it ended. A script just written can be busy for a moment
    /// (another test's fork holding it open for writing, ETXTBSY): then it is run again.
    fn lines(read: impl Fn(&mut dyn FnMut(&str)) -> Result<(), CmdError>) -> (Vec<String>, Result<(), CmdError>) {
        loop {
            let mut lines = Vec::new();
            let r = read(&mut |l| lines.push(l.to_string()));
            if !r.as_ref().is_err_and(|e| e.is_missing() && e.message().contains("Text file busy")) {
                return (lines, r);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// The counters' reads hand on pfctl's lines with the arguments pfctl(8) takes, and judge
    /// the run as `-s` does: a missing anchor warned about on stderr is a failure even with exit 0.
    #[test]
    fn counters_reads_hand_on_the_lines_and_judge_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let pf = pfctl(&dir, r#"echo "$*"; echo 'kleene/web 1 2 3 4 5 6 7 8'"#);
        let (got, r) = lines(|each| pf.labels("*", each));
        r.unwrap();
        assert_eq!(got, ["-a * -s labels", "kleene/web 1 2 3 4 5 6 7 8"]);
        let (got, r) = lines(|each| pf.rule_states("kleene/web", each));
        r.unwrap();
        assert_eq!(got[0], "-P -a kleene/web -v -s rules");

        let pf = pfctl(&dir, "echo x; echo 'pfctl: DIOCGETRULES: No such file or directory' >&2");
        let e = lines(|each| pf.labels("kleene/gone", each)).1.unwrap_err();
        assert_eq!(e.message(), "pfctl: DIOCGETRULES: No such file or directory");
        let pf = pfctl(&dir, "echo x; echo 'pfctl: /dev/pf: Permission denied' >&2; exit 1");
        let e = lines(|each| pf.rule_states("*", each)).1.unwrap_err();
        assert_eq!(e.message(), "pfctl: /dev/pf: Permission denied");
    }
}
