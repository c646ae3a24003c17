//! The one command runner every external tool goes through.
//!
//! It records argv, stdin, exit status and stderr; its error carries all of them, so a failure
//! in the log says exactly what was run and what the tool answered.
//!
//! It also bounds every command, because a tool that hangs or floods would take the agent with it:
//!
//! - One deadline covers the whole command: writing its stdin, reading its stdout and stderr to
//!   end of file, and reaping it. Waiting for the tool alone is not enough: a process it left
//!   behind (`sleep 3000 &`) keeps its output pipes open after the tool itself has exited.
//! - The tool is the leader of its own process group. At the deadline, or when it prints too much,
//!   the whole group gets SIGKILL, so nothing it started keeps running or keeps the pipes open;
//!   only the tool itself is then reaped (its orphans go to init).
//! - Each of stdout and stderr is capped at [`Limits::max_output`]: a tool that prints without end
//!   is killed instead of filling the agent's memory.
//! - [`run_lines`] hands stdout on line by line as it arrives, for outputs that grow with the
//!   host (pf's counters of every rule): what it keeps is the line not finished yet (the longest
//!   line, at most `max_output`) and one read's buffer, while the cap still counts every byte.
//! - No thread is started: the caller's thread drives the non-blocking pipes with poll(2). A
//!   helper thread blocked on a pipe that a stray process holds open can be neither joined nor
//!   stopped; here every pipe end is closed and the tool reaped before [`run`] returns, whatever
//!   happened.
//! - [`run_all`] runs several commands at once the same way, each with its own deadline and
//!   caps, in one poll loop (a poll's jls, routes and anchors).
//!
//! A signal that interrupts poll (one the agent handles, or SIGCHLD if anything in the process
//! handles it) only makes it wait again, for what is left of the deadline. A tool that exits without reading all its stdin makes the write fail
//! with EPIPE (Rust ignores SIGPIPE); that only ends the input, and the exit status says whether
//! the tool failed.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

mod together;
pub use together::{Cmd, run_all};

/// How long any one tool may run, its output pipes included, unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most a tool may print on stdout (and, separately, on stderr) unless told otherwise.
pub const DEFAULT_MAX_OUTPUT: usize = 1024 * 1024;

/// The bounds of one command: a deadline for the whole command, its pipes included, and the
/// most it may print on each of stdout and stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub timeout: Duration,
    pub max_output: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { timeout: DEFAULT_TIMEOUT, max_output: DEFAULT_MAX_OUTPUT }
    }
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A command that could not be run, or that failed.
#[derive(Debug, Clone)]
pub struct CmdError {
    /// The command line, program first.
    pub argv: Vec<String>,
    /// Bytes that were written to its stdin.
    pub stdin_len: usize,
    pub kind: CmdErrorKind,
}

#[derive(Debug, Clone)]
pub enum CmdErrorKind {
    /// The program could not be started (missing, not executable, ...).
    Spawn(String),
    /// It (or a process holding its output pipes) ran past the deadline; its process group was
    /// killed.
    Timeout(Duration),
    /// It printed more than the limit on stdout or stderr; its process group was killed.
    TooMuchOutput { limit: usize },
    /// It exited non-zero (or by a signal).
    Failed { status: Option<i32>, stderr: String, stdout: String },
}

impl CmdError {
    /// The tool's own message (its stderr, or why it could not run), for users.
    pub fn message(&self) -> String {
        match &self.kind {
            CmdErrorKind::Spawn(e) => format!("cannot run {}: {e}", self.argv[0]),
            CmdErrorKind::Timeout(d) => {
                format!(
                    "{} did not finish within {} ms (its output included) and was killed",
                    self.argv[0],
                    d.as_millis()
                )
            }
            CmdErrorKind::TooMuchOutput { limit } => {
                format!("{} printed more than {limit} bytes and was killed", self.argv[0])
            }
            CmdErrorKind::Failed { stderr, stdout, .. } => {
                let s = stderr.trim();
                if s.is_empty() { stdout.trim().to_string() } else { s.to_string() }
            }
        }
    }

    /// Whether the program itself is missing.
    pub fn is_missing(&self) -> bool {
        matches!(&self.kind, CmdErrorKind::Spawn(_))
    }
}

impl fmt::Display for CmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = self.argv.join(" ");
        let stdin =
            if self.stdin_len > 0 { format!(" (with {} bytes on stdin)", self.stdin_len) } else { String::new() };
        match &self.kind {
            CmdErrorKind::Spawn(e) => write!(f, "`{line}`{stdin}: cannot run: {e}"),
            CmdErrorKind::Timeout(d) => write!(
                f,
                "`{line}`{stdin}: did not finish within {} ms (its output included); its process group was killed",
                d.as_millis()
            ),
            CmdErrorKind::TooMuchOutput { limit } => {
                write!(f, "`{line}`{stdin}: printed more than {limit} bytes; its process group was killed")
            }
            CmdErrorKind::Failed { status, stderr, .. } => {
                let st = status.map_or("a signal".to_string(), |c| format!("status {c}"));
                write!(f, "`{line}`{stdin}: exited with {st}: {}", stderr.trim())
            }
        }
    }
}

impl std::error::Error for CmdError {}

/// The error for a command that ran but whose answer the caller judged a failure.
pub fn failure(prog: &Path, args: &[&str], out: Output) -> CmdError {
    CmdError {
        argv: std::iter::once(prog.display().to_string()).chain(args.iter().map(|a| a.to_string())).collect(),
        stdin_len: 0,
        kind: CmdErrorKind::Failed { status: out.status.code(), stderr: out.stderr, stdout: out.stdout },
    }
}

/// Runs `prog args...`, feeding `stdin` if given, within `limits`. A non-zero exit is an error
/// unless `allow_failure` is set (callers that read meaning from stderr).
///
/// The deadline covers the command and its pipes: past it, or once stdout or stderr holds more
/// than `limits.max_output` bytes, the tool's process group is killed and the error says which
/// limit it hit. A process the tool leaves running with its pipes closed is left alone.
pub fn run(
    prog: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    allow_failure: bool,
    limits: Limits,
) -> Result<Output, CmdError> {
    exec(prog, args, stdin, allow_failure, limits, None)
}

/// Runs `prog args...` as [`run`] does, with the same bounds, but hands each line of its stdout
/// to `each` as it arrives (without its newline, or the `\r` before it; the last line also when
/// it has no newline), so that a tool printing megabytes costs its reader only the line being
/// read. `max_output` still counts the whole of stdout. The [`Output`] it returns has an empty
/// `stdout`: every line of it went to `each`, also when the tool then failed or was killed, so
/// the caller must not act on what it read before knowing the outcome.
pub fn run_lines(
    prog: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    allow_failure: bool,
    limits: Limits,
    each: &mut dyn FnMut(&str),
) -> Result<Output, CmdError> {
    exec(prog, args, stdin, allow_failure, limits, Some(each))
}

/// [`run`], or [`run_lines`] when `each` is given.
fn exec(
    prog: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    allow_failure: bool,
    limits: Limits,
    each: Option<&mut dyn FnMut(&str)>,
) -> Result<Output, CmdError> {
    let argv: Vec<String> =
        std::iter::once(prog.display().to_string()).chain(args.iter().map(|a| a.to_string())).collect();
    let err = |kind| CmdError { argv: argv.clone(), stdin_len: stdin.map_or(0, <[u8]>::len), kind };
    let start = Instant::now();
    let deadline = start.checked_add(limits.timeout).unwrap_or_else(|| start + FOREVER);
    let child = spawn(prog, args, stdin.is_some()).map_err(|e| err(CmdErrorKind::Spawn(e.to_string())))?;
    let mut job = Job::new(child, stdin.unwrap_or_default(), each);
    let status = match job.drive(deadline, limits.max_output) {
        Ok(status) => status,
        Err(stop) => {
            job.abort();
            return Err(err(stop.kind(limits)));
        }
    };
    job.answer(status, allow_failure).map_err(err)
}

/// Starts `prog args...` as the leader of its own process group, in the C locale, its stdin a
/// pipe when `stdin` (else /dev/null), its stdout and stderr pipes.
fn spawn(prog: &Path, args: &[&str], stdin: bool) -> io::Result<Child> {
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // Changing one variable makes std copy the whole environment at every spawn: when the
    // process's own environment already says LC_ALL=C (the agent's does, see
    // `sys::c_locale_for_tools`), the tool inherits it as it is.
    if std::env::var_os("LC_ALL").is_none_or(|v| v != "C") {
        cmd.env("LC_ALL", "C");
    }
    cmd.spawn()
}

/// What a tool printed, as text: moved, not copied, when it is valid UTF-8 (as it nearly always
/// is); invalid sequences become U+FFFD.
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Stands in for a deadline too far away for `Instant` to hold.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// The most read from a pipe at a time.
const CHUNK: usize = 64 * 1024;

/// The first and the longest nap while waiting for a tool that has closed its pipes to exit.
const FIRST_NAP: Duration = Duration::from_micros(20);
const MAX_NAP: Duration = Duration::from_millis(20);

/// Why a command was stopped before it finished.
enum Stop {
    Timeout,
    TooMuchOutput,
    /// A system call on its pipes failed (not expected on pipes; kept for the error message).
    Io(&'static str, io::Error),
}

/// Where one output pipe's bytes go: kept whole, or (stdout of [`run_lines`]) handed on line by
/// line, only the line not finished yet kept.
struct Sink<'f> {
    kept: Vec<u8>,
    /// Bytes read so far, those handed on included.
    total: usize,
    each: Option<&'f mut dyn FnMut(&str)>,
}

impl<'f> Sink<'f> {
    fn new(each: Option<&'f mut dyn FnMut(&str)>) -> Self {
        Sink { kept: Vec::new(), total: 0, each }
    }

    /// Takes what was just read; hands on the lines it completes.
    fn take(&mut self, bytes: &[u8]) {
        self.total = self.total.saturating_add(bytes.len());
        let start = self.kept.len();
        self.kept.extend_from_slice(bytes);
        let Some(each) = &mut self.each else { return };
        // Only the bytes just read can hold the newline that ends a line kept.
        let Some(last) = self.kept[start..].iter().rposition(|b| *b == b'\n').map(|i| start + i) else { return };
        for line in self.kept[..last].split(|b| *b == b'\n') {
            each(&String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line)));
        }
        self.kept.drain(..=last);
    }

    /// At end of file: hands on the last line, when it had no newline.
    fn finish(&mut self) {
        if let Some(each) = &mut self.each {
            if !self.kept.is_empty() {
                let line = &self.kept[..];
                each(&String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line)));
                self.kept.clear();
            }
        }
    }
}

impl Stop {
    /// The error of a command stopped for this reason under `limits`.
    fn kind(self, limits: Limits) -> CmdErrorKind {
        match self {
            Stop::Timeout => CmdErrorKind::Timeout(limits.timeout),
            Stop::TooMuchOutput => CmdErrorKind::TooMuchOutput { limit: limits.max_output },
            Stop::Io(what, e) => CmdErrorKind::Spawn(format!("{what} failed while it ran: {e}")),
        }
    }
}

/// A started tool: the child (leader of its own process group), our ends of its pipes and what
/// it printed so far. Dropping it without reaping the child kills the group, so no path (a panic
/// included) leaves a process, a zombie or a descriptor behind.
struct Job<'a, 'f> {
    child: Child,
    /// Whether `child` was waited for: from then on its pid and group id are not ours to signal.
    reaped: bool,
    input: Option<ChildStdin>,
    /// What to write to stdin, and how much of it was written.
    data: &'a [u8],
    written: usize,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    out: Sink<'f>,
    err: Sink<'f>,
}

impl<'a, 'f> Job<'a, 'f> {
    fn new(mut child: Child, data: &'a [u8], each: Option<&'f mut dyn FnMut(&str)>) -> Self {
        let (input, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let (out, err) = (Sink::new(each), Sink::new(None));
        Job { child, reaped: false, input, data, written: 0, stdout, stderr, out, err }
    }

    /// Feeds stdin, reads stdout and stderr to end of file, then reaps the tool, all before
    /// `deadline`.
    fn drive(&mut self, deadline: Instant, max_output: usize) -> Result<ExitStatus, Stop> {
        self.set_nonblocking().map_err(|e| Stop::Io("fcntl", e))?;
        if self.data.is_empty() {
            self.input = None;
        }
        // On the stack: a heap block this large, freed after every command, made glibc's malloc
        // consolidate its free lists each time.
        let mut chunk = [0u8; CHUNK];
        while self.input.is_some() || self.stdout.is_some() || self.stderr.is_some() {
            let [input, stdout, stderr] = self.ready(time_left(deadline).ok_or(Stop::Timeout)?)?;
            if input {
                self.write_some()?;
            }
            if stdout {
                read_some(&mut self.stdout, &mut self.out, max_output, &mut chunk)?;
            }
            if stderr {
                read_some(&mut self.stderr, &mut self.err, max_output, &mut chunk)?;
            }
        }
        // All pipes are closed: the tool has exited or is about to (it closes them as it exits, a
        // moment before it can be reaped). Nothing says when without a signal handler or a
        // thread, so look again after naps that start short (a first nap of 1 ms made every
        // command half a millisecond slower) and grow.
        let mut nap = FIRST_NAP;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| Stop::Io("waitpid", e))? {
                self.reaped = true;
                return Ok(status);
            }
            std::thread::sleep(nap.min(time_left(deadline).ok_or(Stop::Timeout)?));
            nap = (nap * 2).min(MAX_NAP);
        }
    }

    /// What the reaped tool answered: its output, or the error of a non-zero exit unless
    /// `allow_failure`.
    fn answer(&mut self, status: ExitStatus, allow_failure: bool) -> Result<Output, CmdErrorKind> {
        let stdout = text(std::mem::take(&mut self.out.kept));
        let stderr = text(std::mem::take(&mut self.err.kept));
        if !status.success() && !allow_failure {
            return Err(CmdErrorKind::Failed { status: status.code(), stderr, stdout });
        }
        Ok(Output { status, stdout, stderr })
    }

    /// Our ends of stdin, stdout and stderr, None once closed.
    fn pipes(&self) -> [Option<BorrowedFd<'_>>; 3] {
        [
            self.input.as_ref().map(AsFd::as_fd),
            self.stdout.as_ref().map(AsFd::as_fd),
            self.stderr.as_ref().map(AsFd::as_fd),
        ]
    }

    /// What poll(2) is to watch for on stdin, stdout and stderr. It ignores a negative
    /// descriptor: that is a pipe already closed.
    fn watch(&self) -> [libc::pollfd; 3] {
        let [input, stdout, stderr] = self.pipes();
        let watch = |fd: Option<BorrowedFd<'_>>, events| libc::pollfd {
            fd: fd.map_or(-1, |fd| fd.as_raw_fd()),
            events,
            revents: 0,
        };
        [watch(input, libc::POLLOUT), watch(stdout, libc::POLLIN), watch(stderr, libc::POLLIN)]
    }

    /// Makes our pipe ends non-blocking (the tool's ends are separate open files, untouched).
    fn set_nonblocking(&self) -> io::Result<()> {
        for fd in self.pipes().into_iter().flatten() {
            let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
            fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        }
        Ok(())
    }

    /// Waits at most `left` for the open pipes; says which of stdin, stdout and stderr can go on
    /// (ready, at end of file or broken). A signal ends the wait early with nothing ready.
    fn ready(&self, left: Duration) -> Result<[bool; 3], Stop> {
        let mut fds = self.watch();
        let nfds: libc::nfds_t = 3;
        // Round up, so that less than a millisecond left waits instead of spinning.
        let ms = libc::c_int::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fds` is an array of `nfds` pollfd structures that lives across the call, and
        // its descriptors belong to `self`, which is borrowed for as long.
        if unsafe { libc::poll(fds.as_mut_ptr(), nfds, ms) } < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok([false; 3]) } else { Err(Stop::Io("poll", e)) };
        }
        Ok(fds.map(|p| p.fd >= 0 && p.revents != 0))
    }

    /// Writes what the stdin pipe takes; closes it when all is written or the tool stopped
    /// reading (EPIPE: not an error by itself, the exit status tells).
    fn write_some(&mut self) -> Result<(), Stop> {
        let Some(pipe) = &mut self.input else { return Ok(()) };
        match pipe.write(&self.data[self.written..]) {
            Ok(n) => {
                self.written += n;
                if self.written == self.data.len() {
                    self.input = None;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => self.input = None,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(e) => return Err(Stop::Io("write to stdin", e)),
        }
        Ok(())
    }

    /// Kills the tool's process group, closes our pipe ends and reaps the tool, which does not
    /// wait long: it was just sent SIGKILL. Processes it started are not waited for.
    fn abort(&mut self) {
        (self.input, self.stdout, self.stderr) = (None, None, None);
        if self.reaped {
            return;
        }
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        // In case the tool moved itself out of its group.
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for Job<'_, '_> {
    fn drop(&mut self) {
        self.abort();
    }
}

/// What is left until `deadline`, or None once it has passed.
fn time_left(deadline: Instant) -> Option<Duration> {
    deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
}

/// Reads what one output pipe has into `sink`; closes the pipe at end of file. Stops with
/// `TooMuchOutput` as soon as more than `max` bytes were read from it, so it never reads more than
/// `max + 1`.
fn read_some<R: Read>(pipe: &mut Option<R>, sink: &mut Sink<'_>, max: usize, chunk: &mut [u8]) -> Result<(), Stop> {
    let Some(p) = pipe else { return Ok(()) };
    let room = max.saturating_add(1).saturating_sub(sink.total).clamp(1, chunk.len());
    match p.read(&mut chunk[..room]) {
        Ok(0) => {
            *pipe = None;
            sink.finish();
        }
        Ok(n) => {
            if sink.total.saturating_add(n) > max {
                return Err(Stop::TooMuchOutput);
            }
            sink.take(&chunk[..n]);
        }
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
        Err(e) => return Err(Stop::Io("read", e)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use nix::sys::signal::kill;

    /// Generous: proves that a call did not hang, not that it was fast.
    pub(super) const PROMPT: Duration = Duration::from_secs(5);

    fn sh(script: &str, stdin: Option<&[u8]>, limits: Limits) -> Result<Output, CmdError> {
        run(Path::new("/bin/sh"), &["-c", script], stdin, false, limits)
    }

    pub(super) fn within(ms: u64) -> Limits {
        Limits { timeout: Duration::from_millis(ms), ..Limits::default() }
    }

    /// Printable bytes with newlines, so what comes back through from_utf8_lossy compares equal.
    pub(super) fn text(len: usize) -> Vec<u8> {
        (0..len).map(|i| if i % 64 == 63 { b'\n' } else { b'a' + (i % 26) as u8 }).collect()
    }

    /// Whether `pid` is gone: no such process, or (Linux) a zombie that only waits for init.
    fn dead(pid: i32) -> bool {
        kill(Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH)
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
    }

    /// Waits (a while: init reaps the killed orphans) for `pid` to be gone.
    pub(super) fn assert_dies(pid: i32, what: &str) {
        let start = Instant::now();
        while !dead(pid) {
            assert!(start.elapsed() < PROMPT, "{what} (pid {pid}) still runs");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The shell's pid (its process group) and its background sleep's pid, which the script wrote.
    fn pids(file: &Path) -> (i32, i32) {
        let s = std::fs::read_to_string(file).expect("the script wrote its pids");
        let v: Vec<i32> = s.split_whitespace().map(|p| p.parse().unwrap()).collect();
        assert_eq!(v.len(), 2, "pids file: {s:?}");
        (v[0], v[1])
    }

    #[test]
    fn records_argv_status_and_stderr() {
        let e =
            run(Path::new("/bin/sh"), &["-c", "echo oops >&2; exit 3"], None, false, Limits::default()).unwrap_err();
        assert_eq!(e.argv, ["/bin/sh", "-c", "echo oops >&2; exit 3"]);
        assert_eq!(e.message(), "oops");
        assert!(e.to_string().contains("exited with status 3: oops"), "{e}");
    }

    /// Tools speak the C locale, whatever the caller's environment says (here: whatever the
    /// test harness was started with).
    #[test]
    fn tools_run_in_the_c_locale() {
        let o = run(Path::new("/bin/sh"), &["-c", "echo \"$LC_ALL\""], None, false, Limits::default()).unwrap();
        assert_eq!(o.stdout, "C\n");
        let cmd = Cmd::new(Path::new("/bin/sh"), &["-c", "echo \"$LC_ALL\""], Limits::default());
        assert_eq!(run_all(&[&cmd])[0].as_ref().unwrap().stdout, "C\n");
    }

    #[test]
    fn feeds_stdin() {
        let o = run(Path::new("/bin/sh"), &["-c", "wc -c"], Some(b"hello"), false, Limits::default()).unwrap();
        assert_eq!(o.stdout.trim(), "5");
    }

    #[test]
    fn missing_program() {
        let e = run(Path::new("/nonexistent/pfctl"), &["-s", "info"], None, false, Limits::default()).unwrap_err();
        assert!(e.is_missing());
        assert!(e.message().contains("cannot run /nonexistent/pfctl"), "{}", e.message());
    }

    #[test]
    fn time_limit() {
        let e = sh("exec sleep 5", None, within(100)).unwrap_err();
        assert!(matches!(e.kind, CmdErrorKind::Timeout(d) if d == Duration::from_millis(100)), "{e}");
        assert_eq!(e.message(), "/bin/sh did not finish within 100 ms (its output included) and was killed");
        assert!(!e.is_missing());
    }

    #[test]
    fn allowed_failure_returns_output() {
        let o = run(Path::new("/bin/sh"), &["-c", "echo x; exit 1"], None, true, Limits::default()).unwrap();
        assert!(!o.status.success());
        assert_eq!(o.stdout, "x\n");
    }

    /// The tool exits at once, but the sleep it left behind holds stdout open: the deadline still
    /// ends the command, and the sleep is killed with the group.
    #[test]
    fn grandchild_holding_stdout_is_killed_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pids");
        let script = format!("sleep 30 & echo $$ $! > '{}'; echo 10.0.0.1; exit 0", file.display());
        let start = Instant::now();
        let e = sh(&script, None, within(300)).unwrap_err();
        assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
        assert!(matches!(e.kind, CmdErrorKind::Timeout(_)), "{e}");
        let (_, sleeper) = pids(&file);
        assert_dies(sleeper, "the background sleep");
    }

    /// The tool itself still runs (it waits for its background sleep): the whole group is killed,
    /// not just the tool, or the sleep would keep the pipes open.
    #[test]
    fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pids");
        let script = format!("sleep 30 & echo $$ $! > '{}'; wait", file.display());
        let start = Instant::now();
        let e = sh(&script, None, within(300)).unwrap_err();
        assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
        assert!(matches!(e.kind, CmdErrorKind::Timeout(_)), "{e}");
        let (shell, sleeper) = pids(&file);
        assert_dies(shell, "the shell");
        assert_dies(sleeper, "the background sleep");
    }

    #[test]
    fn endless_stdout_is_cut_off() {
        let start = Instant::now();
        let e = sh("yes", None, Limits { max_output: 64 * 1024, ..Limits::default() }).unwrap_err();
        assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
        assert!(matches!(e.kind, CmdErrorKind::TooMuchOutput { limit: 65536 }), "{e}");
        assert_eq!(e.message(), "/bin/sh printed more than 65536 bytes and was killed");
    }

    #[test]
    fn endless_stderr_is_cut_off() {
        let start = Instant::now();
        let e = sh("yes >&2", None, Limits { max_output: 64 * 1024, ..Limits::default() }).unwrap_err();
        assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
        assert!(matches!(e.kind, CmdErrorKind::TooMuchOutput { limit: 65536 }), "{e}");
    }

    /// Exactly the limit is fine; one byte more is not.
    #[test]
    fn output_limit_is_exact() {
        let limits = Limits { max_output: 4, ..Limits::default() };
        assert_eq!(sh("printf abcd", None, limits).unwrap().stdout, "abcd");
        let e = sh("printf abcde", None, limits).unwrap_err();
        assert!(matches!(e.kind, CmdErrorKind::TooMuchOutput { limit: 4 }), "{e}");
    }

    #[test]
    fn slow_exit_within_the_deadline() {
        let o = sh("sleep 0.2; echo done", None, within(5000)).unwrap();
        assert_eq!(o.stdout, "done\n");
    }

    /// The tool closes its pipes and exits a little later: it is still reaped and its status kept.
    #[test]
    fn exit_after_closing_the_pipes() {
        let e = sh("echo bye; exec >&- 2>&-; sleep 0.2; exit 4", None, within(5000)).unwrap_err();
        assert!(matches!(&e.kind, CmdErrorKind::Failed { status: Some(4), stdout, .. } if stdout == "bye\n"), "{e}");
    }

    #[test]
    fn large_stdin_is_counted() {
        let input = vec![b'x'; 2 * 1024 * 1024];
        let o = sh("wc -c", Some(&input), Limits::default()).unwrap();
        assert_eq!(o.stdout.trim(), "2097152");
    }

    /// 2 MiB each way through pipes of 64 KiB: it only finishes if writes and reads interleave.
    #[test]
    fn large_stdin_round_trips_through_cat() {
        let input = text(2 * 1024 * 1024);
        let o =
            run(Path::new("/bin/cat"), &[], Some(&input), false, Limits { max_output: 4 << 20, ..Limits::default() })
                .unwrap();
        assert!(o.stdout.as_bytes() == input, "{} bytes came back", o.stdout.len());
    }

    #[test]
    fn tool_that_ignores_its_stdin_succeeds() {
        let input = vec![b'x'; 1024 * 1024];
        let o = run(Path::new("/bin/sh"), &["-c", "true"], Some(&input), false, within(5000)).unwrap();
        assert!(o.status.success());
    }

    /// `run_lines` with `sh -c script`: the lines handed on, and the outcome.
    fn sh_lines(script: &str, limits: Limits) -> (Vec<String>, Result<Output, CmdError>) {
        let mut lines = Vec::new();
        let r =
            run_lines(Path::new("/bin/sh"), &["-c", script], None, false, limits, &mut |l| lines.push(l.to_string()));
        (lines, r)
    }

    /// The lines are those `str::lines` finds in the whole output: empty ones kept, `\r\n` ended
    /// like `\n`, the last one without a newline too; stdout is not kept.
    #[test]
    fn lines_are_handed_on_as_str_lines_reads_them() {
        let script = "printf 'a\\n\\nb\\r\\n  c d \\n\\303\\n\\303\\251\\nlast'";
        let (lines, r) = sh_lines(script, Limits::default());
        let whole = sh(script, None, Limits::default()).unwrap().stdout;
        assert_eq!(lines, whole.lines().collect::<Vec<_>>());
        assert_eq!(lines, ["a", "", "b", "  c d ", "\u{fffd}", "é", "last"]);
        assert_eq!(r.unwrap().stdout, "", "stdout went to the lines");
        let (lines, _) = sh_lines("printf 'x\\n'", Limits::default());
        assert_eq!(lines, ["x"], "no empty line after the last newline");
    }

    /// 2 MiB of lines through pipes of 64 KiB: lines cut across reads come out whole, in order.
    #[test]
    fn lines_cut_across_reads_come_out_whole() {
        let input = text(2 * 1024 * 1024 + 10);
        let mut lines = Vec::new();
        let o = run_lines(
            Path::new("/bin/cat"),
            &[],
            Some(&input),
            false,
            Limits { max_output: 4 << 20, ..Limits::default() },
            &mut |l| lines.push(l.to_string()),
        )
        .unwrap();
        assert!(o.status.success());
        let expected: Vec<&str> = std::str::from_utf8(&input).unwrap().lines().collect();
        assert!(lines == expected, "{} lines came back of {}", lines.len(), expected.len());
    }

    /// What is kept is only the line not finished yet, however much came before it.
    #[test]
    fn only_the_unfinished_line_is_kept() {
        let mut n = 0;
        let mut each = |_: &str| n += 1;
        let mut sink = Sink::new(Some(&mut each));
        for _ in 0..1000 {
            sink.take(b"a line\nanother li");
            sink.take(b"ne\n");
            assert!(sink.kept.is_empty());
        }
        sink.take(b"half");
        assert_eq!((sink.kept.as_slice(), sink.total), (&b"half"[..], 20 * 1000 + 4));
        sink.finish();
        drop(sink);
        assert_eq!(n, 2001);
    }

    /// The output limit counts every byte of stdout, those already handed on included; stderr
    /// is still kept, and bounded; the deadline and the group kill still hold.
    #[test]
    fn streamed_output_keeps_every_bound() {
        let limits = Limits { max_output: 64 * 1024, ..Limits::default() };
        let (lines, r) = sh_lines("yes", limits);
        assert!(matches!(r.unwrap_err().kind, CmdErrorKind::TooMuchOutput { limit: 65536 }));
        assert!(lines.len() * 2 <= 64 * 1024 && lines.iter().all(|l| l == "y"), "{} lines", lines.len());
        let (_, r) = sh_lines("yes >&2", limits);
        assert!(matches!(r.unwrap_err().kind, CmdErrorKind::TooMuchOutput { limit: 65536 }));
        let exact = Limits { max_output: 5, ..Limits::default() };
        assert_eq!(sh_lines("printf 'ab\\ncd'", exact).0, ["ab", "cd"]);
        assert!(matches!(
            sh_lines("printf 'ab\\ncde'", exact).1.unwrap_err().kind,
            CmdErrorKind::TooMuchOutput { limit: 5 }
        ));
        let (_, r) = sh_lines("echo no >&2; exit 2", Limits::default());
        assert!(
            matches!(r.unwrap_err().kind, CmdErrorKind::Failed { status: Some(2), ref stderr, .. } if stderr == "no\n")
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pids");
        let script = format!("sleep 30 & echo $$ $! > '{}'; echo 10.0.0.1; wait", file.display());
        let start = Instant::now();
        let (lines, r) = sh_lines(&script, within(300));
        assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
        assert!(matches!(r.unwrap_err().kind, CmdErrorKind::Timeout(_)));
        assert_eq!(lines, ["10.0.0.1"]);
        let (shell, sleeper) = pids(&file);
        assert_dies(shell, "the shell");
        assert_dies(sleeper, "the background sleep");
    }

    /// Each of these runs in a fresh copy of this test binary, alone: what it counts is
    /// process-wide, and the harness runs the other tests on threads of their own.
    const PROBE_ENV: &str = "KLEENE_RDR_RUNNER_PROBE";

    fn in_own_process(probe: &str) {
        let name = format!("{}::{probe}", module_path!().split_once("::").expect("crate::module").1);
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", &name, "--test-threads=1", "--nocapture"])
            .env(PROBE_ENV, "1")
            .output()
            .unwrap();
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && all.contains("1 passed"), "{name} in its own process:\n{all}");
        for line in all.lines().filter(|l| l.contains("SKIPPED")) {
            eprintln!("{line}");
        }
    }

    fn probing(probe: &str) -> bool {
        let on = std::env::var_os(PROBE_ENV).is_some();
        if !on {
            eprintln!("SKIPPED: {probe} only runs in a process of its own (started by the test of the same name)");
        }
        on
    }

    fn open_descriptors() -> Option<usize> {
        std::fs::read_dir("/proc/self/fd").ok().map(Iterator::count)
    }

    fn threads() -> Option<usize> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok())
    }

    /// Every way a run can end, so that each path closes what it opened.
    fn every_ending() {
        let input = text(200 * 1024);
        assert_eq!(sh("cat", Some(&input), Limits::default()).unwrap().stdout.len(), input.len());
        let e = sh("sleep 30 & exec sleep 30", Some(b"x"), within(50)).unwrap_err();
        assert!(matches!(e.kind, CmdErrorKind::Timeout(_)), "{e}");
        let e = sh("yes", None, Limits { max_output: 4096, ..Limits::default() }).unwrap_err();
        assert!(matches!(e.kind, CmdErrorKind::TooMuchOutput { .. }), "{e}");
        let e = sh("echo no >&2; exit 2", None, Limits::default()).unwrap_err();
        assert!(matches!(e.kind, CmdErrorKind::Failed { .. }), "{e}");
        let e = run(Path::new("/nonexistent/route"), &[], Some(b"x"), false, Limits::default()).unwrap_err();
        assert!(e.is_missing(), "{e}");
        let mut n = 0;
        let o = run_lines(Path::new("/bin/cat"), &[], Some(&input), false, Limits::default(), &mut |_| n += 1).unwrap();
        assert!(o.status.success() && n == input.len() / 64, "{n} lines");
        let e = sh_lines("sleep 30 & exec sleep 30", within(50)).1.unwrap_err();
        assert!(matches!(e.kind, CmdErrorKind::Timeout(_)), "{e}");
        let e = sh_lines("yes", Limits { max_output: 4096, ..Limits::default() }).1.unwrap_err();
        assert!(matches!(e.kind, CmdErrorKind::TooMuchOutput { .. }), "{e}");
        let e =
            run_lines(Path::new("/nonexistent/pfctl"), &[], None, false, Limits::default(), &mut |_| {}).unwrap_err();
        assert!(e.is_missing(), "{e}");
        // The same endings at once.
        let sh = |script, stdin, limits| Cmd { stdin, ..Cmd::new(Path::new("/bin/sh"), &["-c", script], limits) };
        let cmds = [
            sh("cat", Some(&input[..]), Limits::default()),
            sh("sleep 30 & exec sleep 30", Some(b"x"), within(50)),
            sh("yes", None, Limits { max_output: 4096, ..Limits::default() }),
            sh("echo no >&2; exit 2", None, Limits::default()),
            Cmd { stdin: Some(b"x"), ..Cmd::new(Path::new("/nonexistent/route"), &[], Limits::default()) },
        ];
        let all = run_all(&cmds.iter().collect::<Vec<_>>());
        assert_eq!(all[0].as_ref().unwrap().stdout.len(), input.len());
        let kinds: Vec<_> = all[1..].iter().map(|a| &a.as_ref().unwrap_err().kind).collect();
        assert!(
            matches!(
                kinds[..],
                [
                    CmdErrorKind::Timeout(_),
                    CmdErrorKind::TooMuchOutput { .. },
                    CmdErrorKind::Failed { .. },
                    CmdErrorKind::Spawn(_)
                ]
            ),
            "{kinds:?}"
        );
    }

    #[test]
    fn no_descriptor_leak() {
        if open_descriptors().is_none() {
            eprintln!("SKIPPED: no /proc/self/fd");
            return;
        }
        in_own_process("probe_descriptors");
    }

    #[test]
    #[ignore = "run in a process of its own by no_descriptor_leak"]
    fn probe_descriptors() {
        if !probing("probe_descriptors") {
            return;
        }
        every_ending();
        let before = open_descriptors().expect("/proc/self/fd");
        for _ in 0..10 {
            every_ending();
        }
        assert_eq!(open_descriptors(), Some(before), "descriptors open before and after 90 runs");
    }

    /// The runner has no `thread::spawn`; this proves it from outside: the tool reports its
    /// parent's (this process's) thread count while `run` feeds and reads it, and a timeout whose
    /// pipes a leftover process held open leaves no thread behind.
    #[test]
    fn no_thread_is_started() {
        if threads().is_none() {
            eprintln!("SKIPPED: no /proc/self/status");
            return;
        }
        in_own_process("probe_threads");
    }

    #[test]
    #[ignore = "run in a process of its own by no_thread_is_started"]
    fn probe_threads() {
        if !probing("probe_threads") {
            return;
        }
        let before = threads().expect("/proc/self/status");
        let input = text(256 * 1024);
        let o = sh("cat >/dev/null; grep '^Threads:' /proc/$PPID/status", Some(&input), Limits::default()).unwrap();
        assert_eq!(o.stdout.trim(), format!("Threads:\t{before}"), "threads while run() works");
        let script = "cat >/dev/null; grep '^Threads:' /proc/$PPID/status";
        let mut lines = Vec::new();
        let shell = Path::new("/bin/sh");
        run_lines(shell, &["-c", script], Some(&input), false, Limits::default(), &mut |l| lines.push(l.to_string()))
            .unwrap();
        assert_eq!(lines, [format!("Threads:\t{before}")], "threads while run_lines() works");
        let e = sh("sleep 30 & exec sleep 30", None, within(100)).unwrap_err();
        assert!(matches!(e.kind, CmdErrorKind::Timeout(_)), "{e}");
        assert_eq!(threads(), Some(before), "threads after a timeout");
        let report = "cat >/dev/null; grep '^Threads:' /proc/$PPID/status";
        let reads =
            Cmd { stdin: Some(&input[..]), ..Cmd::new(Path::new("/bin/sh"), &["-c", report], Limits::default()) };
        let hangs = Cmd::new(Path::new("/bin/sh"), &["-c", "sleep 30 & exec sleep 30"], within(100));
        let all = run_all(&[&reads, &reads, &hangs]);
        for o in &all[..2] {
            assert_eq!(
                o.as_ref().unwrap().stdout.trim(),
                format!("Threads:\t{before}"),
                "threads while run_all() works"
            );
        }
        assert!(matches!(all[2].as_ref().unwrap_err().kind, CmdErrorKind::Timeout(_)));
        assert_eq!(threads(), Some(before), "threads after run_all()");
    }

    /// Signals keep interrupting poll, reads and writes (as SIGCHLD does in the agent): the
    /// output still comes back whole, and the deadline still holds.
    #[test]
    fn signals_do_not_break_the_deadline() {
        in_own_process("probe_signals");
    }

    extern "C" fn ignore(_: libc::c_int) {}

    /// This thread, to be signalled from another.
    struct Target(libc::pthread_t);
    // SAFETY: a pthread_t is only an id; the other thread only passes it to pthread_kill while
    // the target thread runs (it is joined first).
    unsafe impl Send for Target {}

    #[test]
    #[ignore = "run in a process of its own by signals_do_not_break_the_deadline"]
    fn probe_signals() {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
        if !probing("probe_signals") {
            return;
        }
        // No SA_RESTART: every system call the signal lands in fails with EINTR.
        let action = SigAction::new(SigHandler::Handler(ignore), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler does nothing, so it is async-signal-safe.
        unsafe { sigaction(Signal::SIGUSR1, &action) }.unwrap();
        // SAFETY: pthread_self has no preconditions.
        let target = Target(unsafe { libc::pthread_self() });
        let stop = Arc::new(AtomicBool::new(false));
        let pest = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let target = target;
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: the target thread is alive until this thread is joined.
                    unsafe { libc::pthread_kill(target.0, libc::SIGUSR1) };
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        let input = text(1024 * 1024);
        let o =
            run(Path::new("/bin/cat"), &[], Some(&input), false, Limits { max_output: 2 << 20, ..Limits::default() });
        let slow = sh("sleep 0.2; echo done", None, within(5000));
        let start = Instant::now();
        let late = sh("exec sleep 30", None, within(300));
        let took = start.elapsed();
        let limits = Limits { max_output: 2 << 20, ..Limits::default() };
        let cat = Cmd { stdin: Some(&input[..]), ..Cmd::new(Path::new("/bin/cat"), &[], limits) };
        let slow_cmd = Cmd::new(Path::new("/bin/sh"), &["-c", "sleep 0.2; echo done"], within(5000));
        let late_cmd = Cmd::new(Path::new("/bin/sh"), &["-c", "exec sleep 30"], within(300));
        let start = Instant::now();
        let all = run_all(&[&cat, &slow_cmd, &late_cmd]);
        let took_all = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        pest.join().unwrap();
        assert!(o.unwrap().stdout.as_bytes() == input);
        assert_eq!(slow.unwrap().stdout, "done\n");
        assert!(matches!(late.unwrap_err().kind, CmdErrorKind::Timeout(_)));
        assert!(took < PROMPT, "took {took:?}");
        assert!(all[0].as_ref().unwrap().stdout.as_bytes() == input);
        assert_eq!(all[1].as_ref().unwrap().stdout, "done\n");
        assert!(matches!(all[2].as_ref().unwrap_err().kind, CmdErrorKind::Timeout(_)));
        assert!(took_all < PROMPT, "run_all took {took_all:?}");
    }
}
