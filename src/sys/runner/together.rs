//! Several commands at once on the caller's thread. A poll reads jls, both default routes and
//! pf's anchors: started together and driven by one poll(2) loop, they take about as long as
//! the slowest of them, without a thread each (starting threads cost the agent more than
//! reading the routes).
//!
//! Every command keeps the guarantees of [`run`](super::run): its own deadline over the whole
//! command, pipes and reaping included; its own caps on stdout and stderr; its process group
//! killed when it hits one; every pipe end closed and every tool reaped before [`run_all`]
//! returns, whatever happened; no thread. One command failing, hanging or flooding ends only
//! that command: the others run on, and each gets the answer `run` would have given it.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;

use super::{CHUNK, CmdError, CmdErrorKind, FIRST_NAP, FOREVER, Job, Limits, MAX_NAP, Output, Stop, read_some, spawn};

/// One command for [`run_all`]: what [`run`](super::run) takes.
#[derive(Debug, Clone)]
pub struct Cmd<'a> {
    pub prog: &'a Path,
    pub args: Vec<&'a str>,
    /// Fed to its stdin (else stdin is /dev/null).
    pub stdin: Option<&'a [u8]>,
    /// Whether a non-zero exit is an answer for the caller to judge (from stderr, say) rather
    /// than an error.
    pub allow_failure: bool,
    pub limits: Limits,
}

impl<'a> Cmd<'a> {
    /// `prog args...` without stdin; a non-zero exit is an error.
    pub fn new(prog: &'a Path, args: &[&'a str], limits: Limits) -> Cmd<'a> {
        Cmd { prog, args: args.to_vec(), stdin: None, allow_failure: false, limits }
    }

    /// The same command, its non-zero exit an answer for the caller to judge.
    pub fn judged(self) -> Cmd<'a> {
        Cmd { allow_failure: true, ..self }
    }

    /// Runs it alone ([`run`](super::run)).
    pub fn run(&self) -> Result<Output, CmdError> {
        super::run(self.prog, &self.args, self.stdin, self.allow_failure, self.limits)
    }

    fn error(&self, kind: CmdErrorKind) -> CmdError {
        CmdError {
            argv: std::iter::once(self.prog.display().to_string())
                .chain(self.args.iter().map(|a| a.to_string()))
                .collect(),
            stdin_len: self.stdin.map_or(0, <[u8]>::len),
            kind,
        }
    }
}

/// Runs `cmds` at once and returns their answers in the same order: each command is started,
/// then one poll(2) loop on the caller's thread feeds every stdin and reads every stdout and
/// stderr, and each tool is reaped once its pipes are closed. Each command is bounded by its
/// own limits, exactly as [`run`](super::run) bounds it.
pub fn run_all(cmds: &[&Cmd<'_>]) -> Vec<Result<Output, CmdError>> {
    let mut answers: Vec<Option<Result<Output, CmdError>>> = cmds.iter().map(|_| None).collect();
    let mut running = Vec::with_capacity(cmds.len());
    for (index, cmd) in cmds.iter().enumerate() {
        match Running::start(index, cmd) {
            Ok(r) => running.push(r),
            Err(e) => answers[index] = Some(Err(e)),
        }
    }
    // On the stack, as in `run`.
    let mut chunk = [0u8; CHUNK];
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(3 * running.len());
    loop {
        let now = Instant::now();
        running.retain_mut(|r| match r.settle(now) {
            Some(answer) => {
                answers[r.index] = Some(answer);
                false
            }
            None => true,
        });
        let Some(wake) = running.iter().map(Running::wake).min() else { break };
        fds.clear();
        fds.extend(running.iter().flat_map(|r| r.job.watch()));
        if let Err(e) = wait(&mut fds, wake.saturating_duration_since(now)) {
            for r in &mut running {
                r.stop = Some(Stop::Io("poll", io::Error::new(e.kind(), e.to_string())));
            }
            continue;
        }
        for (r, ready) in running.iter_mut().zip(fds.chunks_exact(3)) {
            r.serve(ready, &mut chunk);
        }
    }
    answers.into_iter().map(|a| a.expect("every command is answered before the loop ends")).collect()
}

/// Waits at most `left` for the descriptors of `fds` (none: only waits). ppoll(2), not poll:
/// a nap before looking for a tool's exit again is shorter than poll's milliseconds. A signal
/// ends the wait early, with nothing ready.
fn wait(fds: &mut [libc::pollfd], left: Duration) -> io::Result<()> {
    let timeout = TimeSpec::from(left);
    let nfds = libc::nfds_t::try_from(fds.len()).expect("three descriptors per command");
    // SAFETY: `fds` is a slice of `nfds` pollfd structures that outlives the call (its
    // descriptors belong to jobs that outlive it too); `timeout` is a valid timespec; a null
    // signal mask leaves the mask as it is.
    if unsafe { libc::ppoll(fds.as_mut_ptr(), nfds, timeout.as_ref(), std::ptr::null()) } < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        fds.iter_mut().for_each(|p| p.revents = 0);
    }
    Ok(())
}

/// One started command of [`run_all`].
struct Running<'r, 'c> {
    index: usize,
    cmd: &'r Cmd<'c>,
    job: Job<'c, 'static>,
    deadline: Instant,
    /// Why it must be stopped, found while serving its pipes.
    stop: Option<Stop>,
    /// Once its pipes are closed: when to look for its exit next.
    look: Option<Instant>,
    /// The nap after that look, growing from [`FIRST_NAP`] to [`MAX_NAP`] as in `run`.
    nap: Duration,
}

impl<'r, 'c> Running<'r, 'c> {
    fn start(index: usize, cmd: &'r Cmd<'c>) -> Result<Self, CmdError> {
        let start = Instant::now();
        let deadline = start.checked_add(cmd.limits.timeout).unwrap_or_else(|| start + FOREVER);
        let child = spawn(cmd.prog, &cmd.args, cmd.stdin.is_some())
            .map_err(|e| cmd.error(CmdErrorKind::Spawn(e.to_string())))?;
        let mut job = Job::new(child, cmd.stdin.unwrap_or_default(), None);
        let stop = job.set_nonblocking().err().map(|e| Stop::Io("fcntl", e));
        if job.data.is_empty() {
            job.input = None;
        }
        Ok(Running { index, cmd, job, deadline, stop, look: None, nap: FIRST_NAP })
    }

    /// Whether any of its pipes is still open.
    fn piped(&self) -> bool {
        self.job.input.is_some() || self.job.stdout.is_some() || self.job.stderr.is_some()
    }

    /// Its answer, once it has one: it was stopped, ran past its deadline, or was reaped.
    /// Looks for its exit when its pipes are closed and its nap is over.
    fn settle(&mut self, now: Instant) -> Option<Result<Output, CmdError>> {
        if let Some(stop) = self.stop.take() {
            return Some(Err(self.fail(stop)));
        }
        if self.piped() {
            return (now >= self.deadline).then(|| Err(self.fail(Stop::Timeout)));
        }
        if self.look.is_some_and(|t| now < t) && now < self.deadline {
            return None;
        }
        match self.job.child.try_wait() {
            Err(e) => Some(Err(self.fail(Stop::Io("waitpid", e)))),
            Ok(Some(status)) => {
                self.job.reaped = true;
                Some(self.job.answer(status, self.cmd.allow_failure).map_err(|kind| self.cmd.error(kind)))
            }
            Ok(None) if now >= self.deadline => Some(Err(self.fail(Stop::Timeout))),
            Ok(None) => {
                self.look = Some(now + self.nap);
                self.nap = (self.nap * 2).min(MAX_NAP);
                None
            }
        }
    }

    /// When it needs attention without any of its pipes being ready.
    fn wake(&self) -> Instant {
        match self.look {
            Some(look) if !self.piped() => look.min(self.deadline),
            _ => self.deadline,
        }
    }

    /// Feeds and reads what poll found ready on its pipes (`ready`: stdin, stdout, stderr).
    fn serve(&mut self, ready: &[libc::pollfd], chunk: &mut [u8]) {
        let is = |i: usize| ready[i].fd >= 0 && ready[i].revents != 0;
        let max = self.cmd.limits.max_output;
        let job = &mut self.job;
        let served = (|| {
            if is(0) {
                job.write_some()?;
            }
            if is(1) {
                read_some(&mut job.stdout, &mut job.out, max, chunk)?;
            }
            if is(2) {
                read_some(&mut job.stderr, &mut job.err, max, chunk)?;
            }
            Ok(())
        })();
        if let Err(stop) = served {
            self.stop = Some(stop);
        }
    }

    /// Kills its process group and reaps it; the error of a command stopped for `stop`.
    fn fail(&mut self, stop: Stop) -> CmdError {
        self.job.abort();
        self.cmd.error(stop.kind(self.cmd.limits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::sys::runner::tests::{PROMPT, assert_dies, text, within};

    const SH: &str = "/bin/sh";

    fn sh<'a>(script: &'a str, limits: Limits) -> Cmd<'a> {
        Cmd::new(Path::new(SH), &["-c", script], limits)
    }

    #[test]
    fn answers_come_back_in_order_each_as_run_gives_it() {
        let input = b"hello";
        let feed = Cmd { stdin: Some(input), ..sh("wc -c", Limits::default()) };
        let fails = sh("echo oops >&2; exit 3", Limits::default());
        let judged = sh("echo x; echo y >&2; exit 1", Limits::default()).judged();
        let missing = Cmd::new(Path::new("/nonexistent/pfctl"), &["-s", "info"], Limits::default());
        let all = run_all(&[&feed, &fails, &judged, &missing]);
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].as_ref().unwrap().stdout.trim(), "5");
        let e = all[1].as_ref().unwrap_err();
        assert_eq!(e.argv, [SH, "-c", "echo oops >&2; exit 3"]);
        assert!(e.to_string().contains("exited with status 3: oops"), "{e}");
        let o = all[2].as_ref().unwrap();
        assert_eq!((o.status.code(), o.stdout.as_str(), o.stderr.as_str()), (Some(1), "x\n", "y\n"));
        let e = all[3].as_ref().unwrap_err();
        assert!(e.is_missing() && e.message().contains("cannot run /nonexistent/pfctl"), "{e}");
        for (cmd, answer) in [&feed, &fails, &judged].into_iter().zip(&all) {
            let alone = cmd.run();
            assert_eq!(alone.as_ref().map(|o| &o.stdout).ok(), answer.as_ref().map(|o| &o.stdout).ok());
            assert_eq!(alone.map_err(|e| e.to_string()).err(), answer.as_ref().map_err(|e| e.to_string()).err());
        }
        assert!(run_all(&[]).is_empty());
    }

    /// The first command waits for a file the second creates: it only finishes if they run at
    /// the same time (one after the other, the first would run into its deadline).
    #[test]
    fn the_commands_run_at_the_same_time() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("flag");
        let waits = format!("while [ ! -e '{0}' ]; do sleep 0.01; done; echo seen", flag.display());
        let creates = format!("sleep 0.1; touch '{}'; echo made", flag.display());
        let all = run_all(&[&sh(&waits, within(5000)), &sh(&creates, within(5000))]);
        assert_eq!(all[0].as_ref().unwrap().stdout, "seen\n");
        assert_eq!(all[1].as_ref().unwrap().stdout, "made\n");
    }

    /// One command hangs with a grandchild holding its pipe, one floods, one exits after
    /// closing its pipes: each ends as `run` would end it, the others are answered, and the
    /// hung one's group is killed.
    #[test]
    fn each_command_keeps_its_own_limits() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pids");
        let hangs = format!("sleep 30 & echo $$ $! > '{}'; wait", file.display());
        let hung = sh(&hangs, within(300));
        let floods = sh("yes", Limits { max_output: 64 * 1024, ..Limits::default() });
        let exits_late = sh("echo bye; exec >&- 2>&-; sleep 0.2; exit 4", within(5000));
        let quick = sh("echo quick", within(5000));
        let start = Instant::now();
        let all = run_all(&[&hung, &floods, &exits_late, &quick]);
        assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
        assert!(
            matches!(all[0].as_ref().unwrap_err().kind, CmdErrorKind::Timeout(d) if d == Duration::from_millis(300))
        );
        assert!(matches!(all[1].as_ref().unwrap_err().kind, CmdErrorKind::TooMuchOutput { limit: 65536 }));
        assert!(
            matches!(&all[2].as_ref().unwrap_err().kind, CmdErrorKind::Failed { status: Some(4), stdout, .. } if stdout == "bye\n")
        );
        assert_eq!(all[3].as_ref().unwrap().stdout, "quick\n");
        let s = std::fs::read_to_string(&file).unwrap();
        let pids: Vec<i32> = s.split_whitespace().map(|p| p.parse().unwrap()).collect();
        assert_dies(pids[0], "the hung shell");
        assert_dies(pids[1], "its background sleep");
    }

    /// 2 MiB each way through two cats at once, over pipes of 64 KiB: only finishes if every
    /// write and read interleave in the one loop.
    #[test]
    fn large_stdin_round_trips_through_two_cats_at_once() {
        let a = text(2 * 1024 * 1024);
        let b: Vec<u8> = a.iter().rev().copied().collect();
        let limits = Limits { max_output: 4 << 20, ..Limits::default() };
        let cat = |data| Cmd { stdin: Some(data), ..Cmd::new(Path::new("/bin/cat"), &[], limits) };
        let (ca, cb) = (cat(&a[..]), cat(&b[..]));
        let all = run_all(&[&ca, &cb]);
        assert!(all[0].as_ref().unwrap().stdout.as_bytes() == a);
        assert!(all[1].as_ref().unwrap().stdout.as_bytes() == b);
    }
}
