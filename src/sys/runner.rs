//! The one command runner every external tool goes through.
//!
//! It records argv, stdin, exit status and stderr; its error carries all of them, so a failure
//! in the log says exactly what was run and what the tool answered. Every command has a time
//! limit: a hung pfctl must not hang the agent.

use std::ffi::OsString;
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use wait_timeout::ChildExt;

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
                format!("{} did not finish within {} ms and was killed", self.argv[0], d.as_millis())
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
            CmdErrorKind::Timeout(d) => write!(f, "`{line}`{stdin}: killed after {} ms", d.as_millis()),
            CmdErrorKind::TooMuchOutput { limit } => {
                write!(f, "`{line}`{stdin}: killed after printing more than {limit} bytes")
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
pub fn run(
    prog: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    allow_failure: bool,
    limits: Limits,
) -> Result<Output, CmdError> {
    let timeout = limits.timeout;
    let argv: Vec<String> =
        std::iter::once(prog.display().to_string()).chain(args.iter().map(|a| a.to_string())).collect();
    let err = |kind| CmdError { argv: argv.clone(), stdin_len: stdin.map_or(0, <[u8]>::len), kind };
    let mut cmd = Command::new(prog);
    cmd.args(args.iter().map(OsString::from))
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C");
    let mut child = cmd.spawn().map_err(|e| err(CmdErrorKind::Spawn(e.to_string())))?;
    let writer = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
    });
    let mut out_pipe = child.stdout.take().expect("stdout is piped");
    let mut err_pipe = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let status = match child.wait_timeout(timeout) {
        Ok(Some(s)) => s,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err(CmdErrorKind::Timeout(timeout)));
        }
        Err(e) => return Err(err(CmdErrorKind::Spawn(e.to_string()))),
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    if !status.success() && !allow_failure {
        return Err(err(CmdErrorKind::Failed { status: status.code(), stderr, stdout }));
    }
    Ok(Output { status, stdout, stderr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_argv_status_and_stderr() {
        let e =
            run(Path::new("/bin/sh"), &["-c", "echo oops >&2; exit 3"], None, false, Limits::default()).unwrap_err();
        assert_eq!(e.argv, ["/bin/sh", "-c", "echo oops >&2; exit 3"]);
        assert_eq!(e.message(), "oops");
        assert!(e.to_string().contains("exited with status 3: oops"), "{e}");
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
        // The child must not keep stderr open past the kill: exec replaces the shell.
        let e = run(
            Path::new("/bin/sh"),
            &["-c", "exec sleep 5"],
            None,
            false,
            Limits { timeout: Duration::from_millis(100), ..Limits::default() },
        )
        .unwrap_err();
        assert!(matches!(e.kind, CmdErrorKind::Timeout(_)), "{e}");
    }

    #[test]
    fn allowed_failure_returns_output() {
        let o = run(Path::new("/bin/sh"), &["-c", "echo x; exit 1"], None, true, Limits::default()).unwrap();
        assert!(!o.status.success());
        assert_eq!(o.stdout, "x\n");
    }
}
