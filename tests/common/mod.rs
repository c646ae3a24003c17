//! Test harness: a fake FreeBSD host in a temporary directory (the fake tools of
//! tests/fake/freebsd.rs behind symlinks named pfctl, jls, jexec, route and ifconfig), an agent running
//! the real `kleenectl` binary against it, and helpers to drive and inspect both.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const KLEENECTL: &str = env!("CARGO_BIN_EXE_kleenectl");

/// The fake tools binary; it is built only with the `test-fakes` feature.
pub fn fake_tools() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_fake-freebsd") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "the fake FreeBSD tools were not built: run the tests with `cargo test --all-features` \
             (the README's test command)"
        ),
    }
}

/// What a command printed.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A fake FreeBSD host.
pub struct Host {
    pub dir: tempfile::TempDir,
}

/// One recorded tool invocation.
#[derive(Debug, Clone)]
pub struct Call {
    pub tool: String,
    pub argv: Vec<String>,
    pub stdin_bytes: u64,
    /// How long the fake tool ran, from its main to its exit.
    pub elapsed_us: u64,
}

impl Host {
    pub fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("state/pf/anchors")).unwrap();
        fs::create_dir_all(root.join("db")).unwrap();
        // The agent refuses a state directory others may write, whatever the umask is.
        fs::set_permissions(root.join("db"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        for tool in ["pfctl", "jls", "jexec", "route", "ifconfig", "sysctl", "sockstat"] {
            std::os::unix::fs::symlink(fake_tools(), root.join("bin").join(tool)).unwrap();
        }
        let h = Host { dir };
        h.set_jails(serde_json::json!([]));
        h.set_gateway(Some("em0"));
        h.write_state("pf/main.conf", "nat-anchor \"kleene/*\"\nrdr-anchor \"kleene/*\"\nanchor \"kleene/*\"\n");
        h.set_host_ifconfig(serde_json::json!([{"name": "em0", "addrs": ["192.0.2.10/24"]}, {"name": "em1"}]));
        h.set_sysctls(serde_json::json!({"net.inet.ip.forwarding": "1", "net.inet6.ip6.forwarding": "1", "net.pf.filter_local": "1"}));
        h
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.root().join("agent.sock")
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.root().join("bin").join(name)
    }

    fn write_state(&self, rel: &str, text: &str) {
        let path = self.root().join("state").join(rel);
        let tmp = path.with_extension("tmp-write");
        fs::write(&tmp, text).unwrap();
        fs::rename(tmp, path).unwrap();
    }

    /// Replaces the running jails: `[{"jid": 3, "name": "web", "ip4": ["10.13.37.2"]}]`.
    pub fn set_jails(&self, jails: Value) {
        self.write_state("jails.json", &jails.to_string());
    }

    /// One running non-VNET jail with IPv4 addresses.
    pub fn jail(name: &str, jid: u32, ip4: &[&str]) -> Value {
        serde_json::json!({"jid": jid, "name": name, "ip4": ip4, "ip6": []})
    }

    pub fn set_gateway(&self, iface: Option<&str>) {
        self.set_route("route4", iface);
    }

    pub fn set_gateway6(&self, iface: Option<&str>) {
        self.set_route("route6", iface);
    }

    fn set_route(&self, file: &str, iface: Option<&str>) {
        let path = self.root().join("state").join(file);
        match iface {
            Some(i) => self.write_state(file, i),
            None => {
                let _ = fs::remove_file(path);
            }
        }
    }

    /// Creates or removes a pf switch file (`nodev`, `disabled`, `refuse`).
    pub fn pf_switch(&self, name: &str, content: Option<&str>) {
        let path = self.root().join("state/pf").join(name);
        match content {
            Some(c) => fs::write(path, c).unwrap(),
            None => {
                let _ = fs::remove_file(path);
            }
        }
    }

    pub fn set_main_ruleset(&self, text: &str) {
        self.write_state("pf/main.conf", text);
    }

    /// A config file with the fake tools, polling every 100 ms unless `extra` (YAML, appended)
    /// sets poll_interval_ms.
    pub fn config(&self, extra: &str) -> PathBuf {
        let poll = if extra.contains("poll_interval_ms") { "" } else { "poll_interval_ms: 100\n" };
        let text = format!(
            "socket: {}\nstate_dir: {}\n{poll}tools:\n  pfctl: {}\n  jls: {}\n  route: {}\n  jexec: {}\n  ifconfig: {}\n  sysctl: {}\n  sockstat: {}\n{extra}",
            self.socket().display(),
            self.root().join("db").display(),
            self.tool("pfctl").display(),
            self.tool("jls").display(),
            self.tool("route").display(),
            self.tool("jexec").display(),
            self.tool("ifconfig").display(),
            self.tool("sysctl").display(),
            self.tool("sockstat").display(),
        );
        let path = self.root().join("kleene-rdr.yml");
        fs::write(&path, text).unwrap();
        path
    }

    /// Starts the agent with `config("")`.
    pub fn start_agent(&self) -> Agent {
        let cfg = self.config("");
        self.start_agent_with(&cfg)
    }

    pub fn start_agent_with(&self, cfg: &Path) -> Agent {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.root().join("agent.log")).unwrap();
        let child = Command::new(KLEENECTL)
            .args(["agent", "--config"])
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut agent = Agent { child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = agent.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the agent exited with {status} at start:\n{}", self.log());
            }
            if self.ctl(&["ls"]).code == 0 {
                return agent;
            }
            assert!(Instant::now() < deadline, "the agent did not come up:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `kleenectl --socket SOCKET ARGS...`.
    pub fn ctl(&self, args: &[&str]) -> Out {
        let out = Command::new(KLEENECTL).arg("--socket").arg(self.socket()).args(args).output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a fake tool the way an administrator would (not recorded in calls.log).
    pub fn run_tool(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> Out {
        use std::io::Write as _;
        let mut child = Command::new(self.tool(tool))
            .args(args)
            .env("FAKE_FREEBSD_NORECORD", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// What `pfctl -P -a kleene/NAME -s nat` and `-s rules` print, or None when pf has no such anchor.
    pub fn anchor(&self, name: &str) -> Option<String> {
        let path = format!("kleene/{name}");
        let nat = self.run_tool("pfctl", &["-P", "-a", &path, "-s", "nat"], None);
        if nat.stderr.contains("DIOCGETRULES") {
            return None;
        }
        let rules = self.run_tool("pfctl", &["-P", "-a", &path, "-s", "rules"], None);
        Some(nat.stdout + &rules.stdout)
    }

    /// Labels whose states were killed, in order.
    pub fn killed(&self) -> Vec<String> {
        fs::read_to_string(self.root().join("state/pf/killed"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("label ").map(str::to_string))
            .collect()
    }

    /// Every recorded tool invocation.
    pub fn calls(&self) -> Vec<Call> {
        self.calls_after(0).0
    }

    /// The calls recorded after the first `offset` bytes of calls.log, and the offset of its end
    /// (for the next call): a benchmark looking at each request's calls reads only those.
    pub fn calls_after(&self, offset: u64) -> (Vec<Call>, u64) {
        use std::io::{Read as _, Seek as _, SeekFrom};
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(self.root().join("state/calls.log")) {
            f.seek(SeekFrom::Start(offset)).unwrap();
            f.read_to_string(&mut text).unwrap();
        }
        // A line the fake is still writing is left for the next read.
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        let calls = text[..whole]
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                Call {
                    tool: v["tool"].as_str().unwrap().to_string(),
                    argv: v["argv"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect(),
                    stdin_bytes: v["stdin_bytes"].as_u64().unwrap(),
                    elapsed_us: v["elapsed_us"].as_u64().unwrap(),
                }
            })
            .collect();
        (calls, offset + whole as u64)
    }

    /// The anchors of the pfctl calls recorded so far that carry `flag` `value`.
    fn pfctl_anchors(&self, flag: &str, value: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.tool == "pfctl" && c.argv.windows(2).any(|w| w == [flag, value]))
            .map(|c| c.argv[c.argv.iter().position(|a| a == "-a").unwrap() + 1].clone())
            .collect()
    }

    /// pfctl loads (`-f -`) recorded so far, as the anchor each went to.
    pub fn loads(&self) -> Vec<String> {
        self.pfctl_anchors("-f", "-")
    }

    /// Flushes (`-F all`) recorded so far, as the anchor each went to.
    pub fn flushes(&self) -> Vec<String> {
        self.pfctl_anchors("-F", "all")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.root().join("agent.log")).unwrap_or_default()
    }

    /// `ls --json`, parsed.
    pub fn ls(&self) -> Vec<Value> {
        let out = self.ctl(&["ls", "--json"]);
        assert_eq!(out.code, 0, "{out:?}");
        serde_json::from_str::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
    }

    /// Waits (up to 10 s) until `cond` holds; panics with `what` and the agent's log otherwise.
    pub fn wait_for(&self, what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}\nagent log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces the host's interfaces that `ifconfig -a` prints after lo0:
    /// `[{"name": "em0", "addrs": ["192.0.2.10/24", "2001:db8::10/64"]}]`.
    /// The sysctl variables `sysctl` knows besides its defaults (`null`: unknown).
    pub fn set_sysctls(&self, values: Value) {
        self.write_state("sysctl.json", &values.to_string());
    }

    /// The host's listening sockets, as `sockstat -l` lists them.
    pub fn set_sockets(&self, sockets: Value) {
        self.write_state("sockstat.json", &sockets.to_string());
    }

    pub fn set_host_ifconfig(&self, ifaces: Value) {
        self.write_state("host_ifconfig.json", &ifaces.to_string());
    }

    /// One running VNET jail whose own stack holds `addrs` (`"10.13.37.5"`, `"fd00::5/64"`).
    pub fn vnet_jail(name: &str, jid: u32, addrs: &[&str]) -> Value {
        serde_json::json!({"jid": jid, "name": name, "vnet": true, "vnet_addrs": addrs})
    }

    /// Makes `route get [-inet6] default` print `text` verbatim and exit 0 (`None`: back to
    /// the normal answer). `family` is "inet" or "inet6".
    pub fn route_raw(&self, family: &str, text: Option<&str>) {
        let file = match family {
            "inet" => "route4.raw",
            "inet6" => "route6.raw",
            other => panic!("route_raw: family {other:?} is neither inet nor inet6"),
        };
        match text {
            Some(t) => self.write_state(file, t),
            None => {
                let _ = fs::remove_file(self.root().join("state").join(file));
            }
        }
    }

    /// Sets the counters `pfctl -a ANCHOR -s labels` prints: one line of eight numbers
    /// (evaluations packets bytes in-packets in-bytes out-packets out-bytes state-creations) per
    /// filter rule of the anchor, in order (`None`: all zeros), and optionally a ninth, the states
    /// the rule holds now (`-v -s rules` prints it). A load or flush of the anchor clears them,
    /// as pf does.
    pub fn set_counters(&self, anchor: &str, lines: Option<&str>) {
        let dir = self.root().join("state/pf/counters");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(anchor.replace('/', "%"));
        match lines {
            Some(t) => fs::write(path, t).unwrap(),
            None => {
                let _ = fs::remove_file(path);
            }
        }
    }
}

/// A running agent; killed when dropped.
pub struct Agent {
    child: Option<Child>,
}

impl Agent {
    /// Sends `signal` and waits for the agent to exit; returns its exit code.
    pub fn stop_with(&mut self, signal: i32) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the pid of a child this process started and has not reaped.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().unwrap().code()
    }

    pub fn stop(&mut self) -> Option<i32> {
        self.stop_with(libc::SIGTERM)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
