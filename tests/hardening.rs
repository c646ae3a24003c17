//! Hardening: who may talk to the agent, hostile input, limits, crashes and races, against the
//! real binary and the fake FreeBSD tools (see tests/common).

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::time::Duration;

use common::Host;
use kleene_rdr::proto::{ErrorKind, Request, Response};
use serde_json::json;

fn web(h: &Host) {
    h.set_jails(json!([Host::jail("web", 3, &["10.13.37.2"])]));
}

/// Sends raw bytes on a fresh connection and reads the one-line answer.
fn raw(h: &Host, bytes: &[u8]) -> Response {
    let mut s = UnixStream::connect(h.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The agent may answer (and close) before reading a word, as it does over max_connections:
    // a failed write still leaves its answer to read.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a response: {line:?}: {e}"))
}

#[test]
fn limits_are_clear_errors() {
    let h = Host::new();
    web(&h);
    let cfg = h.config("max_publications_per_jail: 2\nmax_publications: 3\n");
    let _a = h.start_agent_with(&cfg);
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080", "8081"]).code, 0);
    let out = h.ctl(&["publish", "-j", "web", "8082"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("jail web would have 3 publications; max_publications_per_jail is 2"), "{out:?}");
    assert_eq!(h.ctl(&["publish", "-j", "db", "5432"]).code, 0);
    let out = h.ctl(&["publish", "-j", "cache", "6379"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("max_publications is 3"), "{out:?}");
    assert_eq!(h.ls().len(), 3);
}

#[test]
fn hostile_command_line_input_never_reaches_pf() {
    let h = Host::new();
    web(&h);
    let _a = h.start_agent();
    let long = "a".repeat(256);
    let hostile = ["web\nrdr pass all", "web\"", "web'", "web rdr", "web\\", "web\t", "", long.as_str()];
    for jail in hostile {
        let out = h.ctl(&["publish", "-j", jail, "8080"]);
        assert_eq!(out.code, 2, "jail {jail:?}: {out:?}");
        assert!(out.stderr.contains("invalid jail name"), "{out:?}");
    }
    for spec in [
        "em0\n:8080:80",
        "em0\":8080:80",
        "{em0}:8080:80",
        "em0#:8080:80",
        "em 0:8080:80",
        "em0;:8080:80",
        "8080 # x",
        "8080/tcp;",
    ] {
        let out = h.ctl(&["publish", "-j", "web", spec]);
        assert_eq!(out.code, 2, "spec {spec:?}: {out:?}");
        assert!(out.stderr.contains("invalid port spec"), "{out:?}");
    }
    for source in ["any", "192.0.2.0/24 }", "{192.0.2.1}", "192.0.2.1\n", "<table>"] {
        let out = h.ctl(&["publish", "-j", "web", "--source", source, "8080"]);
        assert_eq!(out.code, 2, "source {source:?}: {out:?}");
    }
    let out = h.ctl(&["publish", "-j", "web", "--network", "net\"work", "8080"]);
    assert_eq!(out.code, 2, "{out:?}");
    let bytes = std::process::Command::new(common::KLEENECTL)
        .arg("--socket")
        .arg(h.socket())
        .args(["publish", "-j"])
        .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"web\xff\xfe"))
        .arg("8080")
        .output()
        .unwrap();
    assert_eq!(bytes.status.code(), Some(2), "non-UTF-8 bytes: {bytes:?}");
    assert!(h.ls().is_empty());
    assert!(h.loads().is_empty(), "nothing reached pfctl");
}

#[test]
fn odd_jail_names_map_to_safe_anchor_names() {
    let h = Host::new();
    let odd = ["web{", "web}", "web#1", "web;reboot", "_web", "-web", "w/eb", &"w".repeat(64)].map(String::from);
    let jails: Vec<serde_json::Value> =
        odd.iter().enumerate().map(|(i, n)| Host::jail(n, 10 + i as u32, &[&format!("10.13.37.{}", 10 + i)])).collect();
    h.set_jails(json!(jails));
    let _a = h.start_agent();
    for (i, name) in odd.iter().enumerate() {
        let out = h.ctl(&["publish", &format!("--jail={name}"), &(9000 + i).to_string()]);
        assert_eq!(out.code, 0, "{name:?}: {out:?}");
    }
    let anchors = h.run_tool("pfctl", &["-a", "kleene", "-s", "Anchors"], None).stdout;
    let names: Vec<&str> = anchors.lines().map(str::trim).collect();
    assert_eq!(names.len(), odd.len(), "{anchors}");
    for name in &odd {
        let component = name.parse::<kleene_rdr::core::model::JailName>().unwrap().component();
        assert!(component.starts_with("j-") && component.len() == 18, "{name:?} -> {component}");
        assert!(names.contains(&format!("kleene/{component}").as_str()), "{anchors}");
        let text = h.anchor(&component).unwrap();
        assert!(!text.contains(name.as_str()), "the raw name never reaches pf: {text}");
    }
    let ls = h.ls();
    assert!(ls.iter().all(|v| v["state"] == "active"), "{ls:?}");
}

#[test]
fn two_jails_with_one_anchor_name_are_refused() {
    let h = Host::new();
    let _a = h.start_agent();
    let twin = "_x".parse::<kleene_rdr::core::model::JailName>().unwrap().component();
    assert_eq!(h.ctl(&["publish", "--jail=_x", "8080"]).code, 0);
    let out = h.ctl(&["publish", "-j", &twin, "8081"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains(&format!("jail {twin} maps to the same anchor name ({twin}) as jail _x")), "{out:?}");
    assert_eq!(h.ls().len(), 1);
}

#[test]
fn hostile_socket_input_gets_error_replies() {
    let h = Host::new();
    web(&h);
    let _a = h.start_agent();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json\n".to_vec(), "malformed request"),
        (b"{\"op\":\"publish\",\"jail\":\"web\",\"specs\":[\"8080\"],\"extra\":1}\n".to_vec(), "unknown field"),
        (b"{\"op\":\"publish\",\"jail\":7,\"specs\":[]}\n".to_vec(), "invalid type"),
        (b"{\"op\":\"shutdown\"}\n".to_vec(), "unknown variant"),
        (b"\xff\xfe\x00garbage\n".to_vec(), "not UTF-8"),
        (vec![b'x'; 70 * 1024], "larger than 65536 bytes"),
        (b"{\"op\":\"publish\",\"jail\":\"web\\nrdr pass all\",\"specs\":[\"8080\"]}\n".to_vec(), "invalid jail name"),
        (b"{\"op\":\"publish\",\"jail\":\"web\",\"specs\":[\"em0 \\n:8080:80\"]}\n".to_vec(), "invalid port spec"),
        (
            b"{\"op\":\"publish\",\"jail\":\"web\",\"specs\":[\"8080\"],\"sources\":[\"any\"]}\n".to_vec(),
            "invalid address prefix",
        ),
        (
            b"{\"op\":\"unpublish\",\"jail\":\"web\",\"specs\":[\"8080\"],\"all\":true}\n".to_vec(),
            "give the specs to unpublish, or --all",
        ),
        (b"\n".to_vec(), "malformed request"),
    ];
    for (bytes, want) in cases {
        let r = raw(&h, &bytes);
        assert!(!r.ok, "{r:?}");
        assert!(r.message.contains(want), "{:?}: {r:?}", String::from_utf8_lossy(&bytes[..bytes.len().min(60)]));
    }
    let r = raw(&h, b"{\"op\":\"publish\",\"jail\":\"web\",\"specs\":[\"em0 \\n:8080:80\"]}\n");
    assert_eq!(r.error, Some(ErrorKind::Invalid));
    assert!(h.ls().is_empty());
    assert!(h.loads().is_empty(), "nothing reached pfctl");
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080"]).code, 0, "the agent is alive and well");
}

#[test]
fn a_silent_client_stalls_nobody_and_times_out() {
    let h = Host::new();
    let cfg = h.config("request_timeout_ms: 3000\n");
    let _a = h.start_agent_with(&cfg);
    let silent = UnixStream::connect(h.socket()).unwrap();
    let mut half = UnixStream::connect(h.socket()).unwrap();
    half.write_all(b"{\"op\":\"li").unwrap();
    assert_eq!(h.ctl(&["ls"]).code, 0, "served while two clients dawdle");
    for s in [&silent, &half] {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1];
        let early = std::io::Read::read(&mut &*s, &mut buf);
        assert!(
            matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the dawdlers are still waiting, so ls did not wait for them: {early:?}"
        );
        s.set_nonblocking(false).unwrap();
    }
    for s in [&silent, &half] {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        let r: Response = serde_json::from_str(&line).unwrap();
        assert!(r.message.contains("no complete request within 3000 ms"), "{r:?}");
    }
}

#[test]
fn connections_over_the_cap_get_an_error_and_the_others_are_served() {
    let h = Host::new();
    let cfg = h.config("max_connections: 2\nrequest_timeout_ms: 20000\n");
    let _a = h.start_agent_with(&cfg);
    // A connection still being closed (the start-up probe) may hold a slot for a moment; when
    // one of the idle connections was the one turned away, the round is tried again.
    let limited = |s: &UnixStream| {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).is_ok_and(|n| n > 0 && line.contains("max_connections"))
    };
    for round in 0..10 {
        // Let the connections of an earlier round finish closing.
        std::thread::sleep(Duration::from_millis(200 * round));
        let idle1 = UnixStream::connect(h.socket()).unwrap();
        let idle2 = UnixStream::connect(h.socket()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let r = raw(&h, b"{\"op\":\"list\"}\n");
        if r.error == Some(ErrorKind::Limit) {
            assert!(r.message.contains("max_connections"), "{r:?}");
            drop((idle1, idle2));
            h.wait_for("the others are served once slots are free", || h.ctl(&["ls"]).code == 0);
            return;
        }
        assert!(limited(&idle1) || limited(&idle2), "round {round}: a third connection was served: {r:?}");
    }
    panic!("no round saw the cap applied");
}

// ---------------------------------------------------------------------------------------------
// Access control. These need root (to run a client as another user); without it they say so
// loudly and return.

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("\n*** SKIPPED {test}: needs root to run a client as uid {NOBODY} ***\n");
    true
}

/// A host whose directory others may traverse (the socket's own mode still applies).
fn open_host() -> Host {
    use std::os::unix::fs::PermissionsExt as _;
    let h = Host::new();
    std::fs::set_permissions(h.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    h
}

fn ctl_as(h: &Host, uid: u32, gid: u32, args: &[&str]) -> common::Out {
    let out = std::process::Command::new(common::KLEENECTL)
        .arg("--socket")
        .arg(h.socket())
        .args(args)
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    common::Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn nobody_gid() -> u32 {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(NOBODY)).unwrap().map_or(NOBODY, |u| u.gid.as_raw())
}

#[test]
fn root_only_socket_refuses_other_users() {
    if skip_unless_root("root_only_socket_refuses_other_users") {
        return;
    }
    let h = open_host();
    web(&h);
    let _a = h.start_agent();
    let out = ctl_as(&h, NOBODY, nobody_gid(), &["publish", "-j", "web", "8080"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("Permission denied"), "the socket's mode refuses: {out:?}");
    assert!(h.ls().is_empty());
}

#[test]
fn credentials_are_checked_even_when_the_socket_mode_is_loosened() {
    use std::os::unix::fs::PermissionsExt as _;
    if skip_unless_root("credentials_are_checked_even_when_the_socket_mode_is_loosened") {
        return;
    }
    let h = open_host();
    web(&h);
    let _a = h.start_agent();
    std::fs::set_permissions(h.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    for args in [&["publish", "-j", "web", "8080"][..], &["ls"], &["rules"]] {
        let out = ctl_as(&h, NOBODY, nobody_gid(), args);
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(out.stderr.contains("permission denied: only root may use the agent (you are uid 65534)"), "{out:?}");
    }
    assert!(h.log().contains("permission denied: refused a connection from uid 65534"), "{}", h.log());
    assert!(h.ls().is_empty());
    assert!(h.loads().is_empty());
}

#[test]
fn socket_group_members_may_use_the_agent() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    if skip_unless_root("socket_group_members_may_use_the_agent") {
        return;
    }
    let gid = nobody_gid();
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)).unwrap().expect("nobody's group").name;
    let h = open_host();
    web(&h);
    let cfg = h.config(&format!("socket_group: {group}\n"));
    let _a = h.start_agent_with(&cfg);
    let meta = std::fs::metadata(h.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);
    let out = ctl_as(&h, NOBODY, gid, &["publish", "-j", "web", "8080"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(ctl_as(&h, NOBODY, gid, &["ls"]).code, 0);
    let other = ctl_as(&h, 4242, 4242, &["ls"]);
    assert_eq!(other.code, 1, "neither root nor a member: {other:?}");
}

// ---------------------------------------------------------------------------------------------
// Faults

/// A small deterministic generator (xorshift64*), seeded from the clock and printed, so a
/// failing run can be replayed with KLEENE_TEST_SEED.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("KLEENE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
        });
        eprintln!("KLEENE_TEST_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn request(h: &Host, req: &Request) -> Option<Response> {
    kleene_rdr::client::request(&h.socket(), req).ok()
}

#[test]
fn sigkill_at_random_points_loses_no_acknowledged_publication() {
    use std::collections::BTreeSet;
    let h = Host::new();
    h.set_jails(json!([Host::jail("web", 3, &["10.13.37.2"])]));
    let mut rng = Rng::new();
    let mut published: BTreeSet<u16> = BTreeSet::new();
    for round in 0..25 {
        let mut agent = h.start_agent();
        let actual: BTreeSet<u16> = h.ls().iter().map(|v| v["host_ports"].as_str().unwrap().parse().unwrap()).collect();
        let kill_after = Duration::from_millis(rng.below(120));
        let ops: Vec<(bool, u16)> = (0..200).map(|_| (rng.below(3) > 0, 20000 + rng.below(40) as u16)).collect();
        let socket_host = &h;
        let (acked, in_flight) = std::thread::scope(|s| {
            let worker = s.spawn(move || {
                let mut state = actual;
                for (publish, port) in ops {
                    let spec = port.to_string();
                    let req = if publish {
                        Request::Publish {
                            jail: "web".parse().unwrap(),
                            specs: vec![spec.parse().unwrap()],
                            sources: vec![],
                            log: false,
                            network: None,
                            reach_off: Default::default(),
                        }
                    } else {
                        Request::Unpublish {
                            jail: "web".parse().unwrap(),
                            specs: vec![spec.parse().unwrap()],
                            all: false,
                        }
                    };
                    match request(socket_host, &req) {
                        Some(r) if r.ok => {
                            if publish {
                                state.insert(port);
                            } else {
                                state.remove(&port);
                            }
                        }
                        Some(r) => assert!(
                            matches!(r.error, Some(ErrorKind::NotFound)),
                            "only unpublishing what is absent may fail: {r:?}"
                        ),
                        None => return (state, Some(port)),
                    }
                }
                (state, None)
            });
            std::thread::sleep(kill_after);
            agent.stop_with(libc::SIGKILL);
            worker.join().unwrap()
        });
        let _b = h.start_agent();
        let after: BTreeSet<u16> = h.ls().iter().map(|v| v["host_ports"].as_str().unwrap().parse().unwrap()).collect();
        let mut expected = acked.clone();
        if let Some(p) = in_flight {
            if after.contains(&p) {
                expected.insert(p);
            } else {
                expected.remove(&p);
            }
        }
        assert_eq!(after, expected, "round {round}: killed after {kill_after:?}");
        published = after;
        drop(_b);
    }
    eprintln!("{} publications after 25 kills", published.len());
}

#[test]
fn a_jail_stop_racing_a_publish_ends_consistent() {
    let h = Host::new();
    let _a = h.start_agent();
    for i in 0..20u16 {
        web(&h);
        let port = (7000 + i).to_string();
        std::thread::scope(|s| {
            let p = s.spawn(|| h.ctl(&["publish", "-j", "web", &port]));
            std::thread::sleep(Duration::from_millis(u64::from(i % 5)));
            h.set_jails(json!([]));
            assert_eq!(p.join().unwrap().code, 0);
        });
        assert_eq!(h.ctl(&["reconcile"]).code, 0);
        assert!(h.anchor("web").is_none(), "round {i}: no rules point at a jail that is gone");
        web(&h);
        assert_eq!(h.ctl(&["reconcile"]).code, 0);
        let anchor = h.anchor("web").expect("loaded for the running jail");
        assert!(anchor.contains(&format!("port = {port}")), "round {i}: {anchor}");
    }
}
