//! The socket under abuse, from both ends: refused peers that hold connections open or connect
//! in a loop (against the real agent and the fake FreeBSD tools, see tests/common), and agents
//! that never answer, answer garbage or hang up (a listener of this test's own, against the real
//! `kleenectl` client).

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Host, Out};
use kleene_rdr::proto::{ErrorKind, Response};

// ---------------------------------------------------------------------------------------------
// Refused peers. These need root (to connect as another user); without it they say so loudly
// and return.

const NOBODY: u32 = 65534;

/// The environment variable that turns [`helper_as_another_user`] into a helper process.
const HELPER: &str = "KLEENE_SOCKET_TEST_HELPER";

fn skip_unless_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    eprintln!("\n*** SKIPPED {test}: needs root to connect as uid {NOBODY} ***\n");
    true
}

fn nobody_gid() -> u32 {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(NOBODY)).unwrap().map_or(NOBODY, |u| u.gid.as_raw())
}

/// A host whose agent others may reach: the directory is traversable and the socket's mode was
/// loosened by hand to 0666, so only the agent's credentials check stands in their way.
fn loosened_host(extra_config: &str) -> (Host, common::Agent) {
    use std::os::unix::fs::PermissionsExt as _;
    let h = Host::new();
    std::fs::set_permissions(h.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = h.config(extra_config);
    let agent = h.start_agent_with(&cfg);
    std::fs::set_permissions(h.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    (h, agent)
}

/// Starts this test binary again as uid 65534, running only [`helper_as_another_user`] with
/// `task` (see there); its stdout is piped, and its stdin too (closing it ends the helper).
fn spawn_helper(h: &Host, task: &str, connections: usize) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_as_another_user", "--include-ignored", "--nocapture", "--test-threads=1"])
        .env(HELPER, format!("{task} {connections} {}", h.socket().display()))
        .uid(NOBODY)
        .gid(nobody_gid())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The helper's own lines (libtest prints its own around them, and "test NAME ... " just before
/// the first on the same line).
fn helper_lines(child: &mut std::process::Child) -> impl Iterator<Item = String> + '_ {
    BufReader::new(child.stdout.as_mut().unwrap())
        .lines()
        .map(Result::unwrap)
        .filter_map(|l| l.split_once("helper: ").map(|(_, mine)| mine.to_string()))
}

/// Reads the agent's one-line answer on a connection that has sent nothing.
fn answer(s: &UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    match BufReader::new(s).read_line(&mut line) {
        Ok(_) => line.trim_end().to_string(),
        Err(e) => format!("no answer: {e}"),
    }
}

/// Not a test: the other end of the access tests, run as another user by [`spawn_helper`].
/// `hold N PATH`: opens N connections that send nothing, says `connected`, then prints each
/// one's answer and keeps them all open until stdin closes. `churn N PATH`: N times, connects,
/// reads the answer and hangs up.
#[test]
#[ignore = "a helper process for the access tests, not a test"]
fn helper_as_another_user() {
    let Ok(task) = std::env::var(HELPER) else { return };
    let mut words = task.splitn(3, ' ');
    let (what, n, path) = (words.next().unwrap(), words.next().unwrap(), words.next().unwrap());
    let n: usize = n.parse().unwrap();
    match what {
        "hold" => {
            let conns: Vec<UnixStream> = (0..n).map(|_| UnixStream::connect(path).unwrap()).collect();
            println!("helper: connected");
            for c in &conns {
                println!("helper: {}", answer(c));
            }
            println!("helper: done");
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            drop(conns);
        }
        "churn" => {
            for _ in 0..n {
                let c = UnixStream::connect(path).unwrap();
                println!("helper: {}", answer(&c));
            }
            println!("helper: done");
        }
        other => panic!("unknown helper task {other}"),
    }
}

fn assert_refused(answer: &str) {
    let r: Response = serde_json::from_str(answer).unwrap_or_else(|e| panic!("not a response: {answer:?}: {e}"));
    assert_eq!(r.error, Some(ErrorKind::Denied), "{r:?}");
    assert!(r.message.contains("permission denied: only root may use the agent (you are uid 65534)"), "{r:?}");
}

#[test]
fn silent_refused_peers_hold_no_slot_and_lock_nobody_out() {
    if skip_unless_root("silent_refused_peers_hold_no_slot_and_lock_nobody_out") {
        return;
    }
    // A long request timeout: were refused peers read before being refused, they would hold
    // their slots for 20 s and their answers would come too late for the helper.
    let (h, _agent) = loosened_host("max_connections: 4\nrequest_timeout_ms: 20000\n");
    let connections = 4 + 10;
    let mut helper = spawn_helper(&h, "hold", connections);
    let mut lines = helper_lines(&mut helper);
    assert_eq!(lines.next().as_deref(), Some("connected"));
    // The helper holds all its connections open and has sent nothing, nor read anything.
    let ls = h.ctl(&["ls"]);
    assert_eq!(ls.code, 0, "root is served while {connections} refused peers hold connections: {ls:?}");
    let answers: Vec<String> = lines.by_ref().take_while(|l| l != "done").collect();
    drop(lines);
    assert_eq!(answers.len(), connections, "{answers:?}");
    for a in &answers {
        assert_refused(a);
    }
    drop(helper.stdin.take());
    assert!(helper.wait().unwrap().success());
    assert!(h.log().contains("permission denied: refused a connection from uid 65534"), "{}", h.log());
}

#[test]
fn refusals_are_logged_at_most_once_in_a_while_per_uid() {
    if skip_unless_root("refusals_are_logged_at_most_once_in_a_while_per_uid") {
        return;
    }
    let (h, _agent) = loosened_host("");
    let mut helper = spawn_helper(&h, "churn", 50);
    let answers: Vec<String> = helper_lines(&mut helper).take_while(|l| l != "done").collect();
    assert!(helper.wait().unwrap().success());
    assert_eq!(answers.len(), 50, "{answers:?}");
    for a in &answers {
        assert_refused(a);
    }
    assert_eq!(h.ctl(&["ls"]).code, 0);
    let log = h.log();
    let lines = log.lines().filter(|l| l.contains("refused a connection from uid 65534")).count();
    // One line per uid every 10 s: one, or two if the 50 connections straddle the interval.
    assert!((1..=3).contains(&lines), "{lines} refusal lines for 50 refusals:\n{log}");
}

// ---------------------------------------------------------------------------------------------
// Agents that do not answer well: a listener of the test's own in the agent's place.

/// What the fake agent does with each connection, after reading the request line.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Keeps the connection open and never answers.
    Silent,
    /// Answers a line that is not a response.
    Garbage,
    /// Closes the connection without answering.
    HangUp,
    /// Sends more than the client reads (70 MiB without a newline).
    Flood,
    /// Answers a real refusal.
    Refuse,
}

/// A listener in the agent's place; stops serving when dropped.
struct FakeAgent {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl FakeAgent {
    fn new(behaviour: Behaviour) -> FakeAgent {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let mut s = conn.unwrap();
                let mut request = String::new();
                let _ = BufReader::new(&s).read_line(&mut request);
                let _ = match behaviour {
                    Behaviour::Silent => {
                        held.push(s);
                        continue;
                    }
                    Behaviour::Garbage => s.write_all(b"this is not json\n"),
                    Behaviour::HangUp => Ok(()),
                    Behaviour::Flood => s.write_all(&vec![b'x'; 70 << 20]),
                    Behaviour::Refuse => {
                        s.write_all(b"{\"version\":2,\"ok\":false,\"error\":\"pf\",\"message\":\"pf is disabled\"}\n")
                    }
                };
            }
        });
        FakeAgent { path, stop, thread: Some(thread), _dir: dir }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `kleenectl --socket PATH ARGS...` with `env`, and says how long it took.
fn ctl_at(socket: &Path, args: &[&str], env: &[(&str, &str)]) -> (Out, Duration) {
    let started = Instant::now();
    let out = Command::new(common::KLEENECTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("KLEENE_RDR_TIMEOUT")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let took = started.elapsed();
    let out = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (out, took)
}

/// A generous bound for "did not hang": far above a 1 s deadline, far below the defaults.
const HANG: Duration = Duration::from_secs(15);

#[test]
fn a_silent_agent_makes_the_client_give_up_at_its_deadline() {
    let agent = FakeAgent::new(Behaviour::Silent);
    let (out, took) = ctl_at(&agent.path, &["--timeout", "1", "ls"], &[]);
    assert_eq!(out.code, 1, "{out:?}");
    let want = format!("the agent at {} did not answer within 1 s; it may be busy or hung", agent.path.display());
    assert!(out.stderr.contains(&want), "{out:?}");
    assert!(took < HANG, "took {took:?}");

    let (out, took) = ctl_at(&agent.path, &["ls"], &[("KLEENE_RDR_TIMEOUT", "1")]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("did not answer within 1 s"), "the deadline from the environment: {out:?}");
    assert!(took < HANG, "took {took:?}");

    let (out, took) = ctl_at(&agent.path, &["reconcile", "--timeout", "1"], &[]);
    assert_eq!(out.code, 1, "without --quiet-if-down a timeout is an error: {out:?}");
    assert!(took < HANG, "took {took:?}");
}

#[test]
fn the_jail_hook_never_fails_when_the_agent_gives_no_answer() {
    // The flood gets a deadline long enough for 64 MiB to arrive on a loaded machine.
    for (behaviour, what, want, timeout) in [
        (Behaviour::Silent, "silent", "did not answer within 1 s", "1"),
        (Behaviour::Garbage, "garbage", "answered badly", "1"),
        (Behaviour::HangUp, "hang-up", "it closed the connection without answering", "1"),
        (Behaviour::Flood, "flood", "its answer is larger than 64 MiB", "10"),
    ] {
        let agent = FakeAgent::new(behaviour);
        let (out, took) = ctl_at(&agent.path, &["reconcile", "--quiet-if-down", "--timeout", timeout], &[]);
        assert_eq!(out.code, 0, "{what}: {out:?}");
        assert!(out.stderr.starts_with("kleenectl: warning: "), "{what}: {out:?}");
        assert!(out.stderr.contains(want), "{what}: {out:?}");
        assert!(took < HANG, "{what}: took {took:?}");
    }
    let gone = tempfile::tempdir().unwrap();
    let (out, _) = ctl_at(&gone.path().join("agent.sock"), &["reconcile", "--quiet-if-down"], &[]);
    assert_eq!(out.code, 0, "no agent at all: {out:?}");
    assert!(out.stderr.contains("kleenectl: warning: cannot reach the agent"), "{out:?}");
}

#[test]
fn a_bad_answer_is_an_error_that_names_the_agent() {
    for (behaviour, what, want) in [
        (Behaviour::Garbage, "garbage", "answered badly: expected"),
        (Behaviour::HangUp, "hang-up", "answered badly: it closed the connection without answering"),
        (Behaviour::Flood, "flood", "answered badly: its answer is larger than 64 MiB"),
    ] {
        let agent = FakeAgent::new(behaviour);
        let (out, took) = ctl_at(&agent.path, &["--timeout", "10", "ls"], &[]);
        assert_eq!(out.code, 1, "{what}: {out:?}");
        assert!(out.stderr.contains(&format!("the agent at {} {want}", agent.path.display())), "{what}: {out:?}");
        assert!(took < HANG, "{what}: took {took:?}");
    }
}

#[test]
fn the_jail_hook_keeps_the_status_of_a_real_answer() {
    let agent = FakeAgent::new(Behaviour::Refuse);
    let (out, _) = ctl_at(&agent.path, &["reconcile", "--quiet-if-down", "--timeout", "5"], &[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.stderr.trim(), "kleenectl: error: pf is disabled");
}

#[test]
fn timeouts_out_of_range_are_usage_errors() {
    let gone = tempfile::tempdir().unwrap();
    let socket = gone.path().join("agent.sock");
    for bad in ["0", "3601", "-1", "soon"] {
        let (out, _) = ctl_at(&socket, &["--timeout", bad, "ls"], &[]);
        assert_eq!(out.code, 2, "--timeout {bad}: {out:?}");
    }
    let (out, _) = ctl_at(&socket, &["ls"], &[("KLEENE_RDR_TIMEOUT", "0")]);
    assert_eq!(out.code, 2, "KLEENE_RDR_TIMEOUT=0: {out:?}");
}
