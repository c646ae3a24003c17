//! Hostile jails, faulty tools and FreeBSD's own limits, against the real agent and the fake
//! FreeBSD tools (tests/common): the agent never stalls, never redirects where a jail's root
//! chooses, and never reports success that pf did not give.

mod common;

use std::time::{Duration, Instant};

use common::{Agent, Host};
use serde_json::{Value, json};

/// A VNET jail whose host-side `ifconfig -j` misbehaves as `mode` says (see the fake).
fn vnet_jail(name: &str, jid: u32, addrs: &[&str], mode: Option<&str>) -> Value {
    let mut j = json!({"jid": jid, "name": name, "vnet": true, "vnet_addrs": addrs});
    if let Some(m) = mode {
        j["ifconfig"] = json!(m);
    }
    j
}

const KLEENET: &str = "networks:\n  - name: kleenet\n    subnet: 10.13.37.0/24\n    subnet6: fd00:13:37::/64\n";

fn state_of(h: &Host, jail: &str) -> Option<Value> {
    h.ls().into_iter().find(|v| v["jail"] == jail)
}

fn write_state(h: &Host, rel: &str, text: &str) {
    std::fs::write(h.root().join("state").join(rel), text).unwrap();
}

/// Runs `kleenectl` and asserts it answered within `limit` (it must never hang).
fn ctl_within(h: &Host, limit: Duration, args: &[&str]) -> common::Out {
    let started = Instant::now();
    let out = h.ctl(args);
    assert!(started.elapsed() < limit, "kleenectl {args:?} took {:?}: {out:?}", started.elapsed());
    out
}

#[test]
fn a_grandchild_holding_the_pipe_stalls_nothing() {
    let h = Host::new();
    h.set_jails(json!([
        vnet_jail("evil", 7, &["10.13.37.5"], Some("grandchild")),
        Host::jail("web", 3, &["10.13.37.2"])
    ]));
    let cfg = h.config(&format!("{KLEENET}tool_timeout_ms: 1000\n"));
    let _a = h.start_agent_with(&cfg);
    // The hostile read runs in the background: requests for other jails are answered at once.
    let out = ctl_within(&h, Duration::from_secs(3), &["publish", "-j", "web", "8080:80"]);
    assert_eq!(out.code, 0, "{out:?}");
    // Publishing for the jail itself waits for its read (at most the deadline), then says why.
    let out = ctl_within(&h, Duration::from_secs(5), &["publish", "-j", "evil", "9090:80"]);
    assert_eq!(out.code, 0, "stored: {out:?}");
    h.wait_for("the read failed and says how", || {
        state_of(&h, "evil").is_some_and(|v| {
            v["state"] == "error" && v["reason"].as_str().unwrap().contains("did not finish within 1000 ms")
        })
    });
    assert!(h.anchor("evil").is_none(), "nothing was loaded for it");
    let out = ctl_within(&h, Duration::from_secs(5), &["reconcile", "--quiet-if-down"]);
    assert_eq!(out.code, 0, "a jail.conf hook never fails: {out:?}");
    assert_eq!(state_of(&h, "web").unwrap()["state"], "active");
    let check = h.ctl(&["check"]);
    assert!(check.stdout.contains("addresses of VNET jail evil (jid 7)"), "{check:?}");
}

#[test]
fn a_read_that_never_ends_costs_one_deadline_and_is_retried_with_backoff() {
    let h = Host::new();
    h.set_jails(json!([vnet_jail("evil", 7, &["10.13.37.5"], Some("hang"))]));
    let cfg = h.config(&format!("{KLEENET}tool_timeout_ms: 300\n"));
    let _a = h.start_agent_with(&cfg);
    assert_eq!(ctl_within(&h, Duration::from_secs(5), &["publish", "-j", "evil", "9090:80"]).code, 0);
    // Over 2.5 s at a 100 ms poll: without backoff this would be ~8 reads of 300 ms each.
    std::thread::sleep(Duration::from_millis(2500));
    let started = h.calls().iter().filter(|c| c.tool == "ifconfig").count();
    let v = state_of(&h, "evil").unwrap();
    assert_eq!(v["state"], "error", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("retrying"), "{v}");
    // The fake records a call only when it exits; a killed one never does. Count the processes
    // the agent started instead: each read leaves its pid in the fake's start log.
    let reads = std::fs::read_to_string(h.root().join("state/ifconfig-started")).unwrap_or_default().lines().count();
    assert!(reads <= 4, "retried with backoff, not every poll: {reads} reads ({started} finished)");
    assert!(reads >= 2, "but retried: {reads}");
}

#[test]
fn endless_output_is_an_error_not_an_allocation() {
    let h = Host::new();
    h.set_jails(json!([vnet_jail("evil", 7, &["10.13.37.5"], Some("flood"))]));
    let cfg = h.config(KLEENET);
    let _a = h.start_agent_with(&cfg);
    assert_eq!(ctl_within(&h, Duration::from_secs(12), &["publish", "-j", "evil", "9090:80"]).code, 0);
    h.wait_for("the flood is refused", || {
        state_of(&h, "evil").is_some_and(|v| v["reason"].as_str().unwrap_or("").contains("printed more than"))
    });
}

#[test]
fn a_slow_read_delays_only_its_own_jail() {
    let h = Host::new();
    h.set_jails(json!([vnet_jail("slow", 7, &["10.13.37.5"], Some("slow:800"))]));
    let cfg = h.config(KLEENET);
    let _a = h.start_agent_with(&cfg);
    let out = ctl_within(&h, Duration::from_secs(5), &["publish", "-j", "slow", "9090:80"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("published slow 9090:80/tcp"), "the publish waited for the read: {out:?}");
    assert!(h.anchor("slow").unwrap().contains("-> 10.13.37.5 port 80"));
}

#[test]
fn a_jails_root_cannot_choose_where_host_traffic_goes() {
    let h = Host::new();
    let cfg = h.config(KLEENET);
    // The host's own address on the jail network (read from the host, not the jail).
    write_state(
        &h,
        "host_ifconfig.json",
        r#"[{"name": "em0", "addrs": ["192.0.2.10/24"]}, {"name": "bridge0", "addrs": ["10.13.37.1/24"]}]"#,
    );
    h.set_jails(json!([
        Host::jail("web", 3, &["10.13.37.2"]),
        vnet_jail("thief", 7, &["10.13.37.2"], None),
        vnet_jail("host", 8, &["10.13.37.1"], None),
        vnet_jail("bcast", 9, &["255.255.255.255", "10.13.37.255", "10.13.37.0"], None),
        vnet_jail("mapped", 10, &["::ffff:127.0.0.1", "240.0.0.1", "192.0.2.99"], None),
        vnet_jail("fine", 11, &["10.13.37.9"], None),
    ]));
    let _a = h.start_agent_with(&cfg);
    for (jail, port) in [("web", "8000"), ("thief", "8001"), ("host", "8002"), ("bcast", "8003"), ("mapped", "8004")] {
        assert_eq!(h.ctl(&["publish", "-j", jail, port]).code, 0, "{jail}");
    }
    assert_eq!(h.ctl(&["publish", "-j", "fine", "8005"]).code, 0);
    let reason = |jail: &str| {
        let v = state_of(&h, jail).unwrap();
        assert_eq!(v["state"], "error", "{jail}: {v}");
        v["reason"].as_str().unwrap().to_string()
    };
    assert!(reason("web").contains("10.13.37.2 is also claimed by jail thief"), "neither gets it");
    assert!(reason("thief").contains("10.13.37.2 is also claimed by jail web"));
    assert!(reason("host").contains("10.13.37.1 is the host's own address"));
    let b = reason("bcast");
    assert!(b.contains("broadcast address of 10.13.37.0/24") && b.contains("network address"), "{b}");
    assert!(reason("mapped").contains("no usable address in the configured networks"));
    for jail in ["web", "thief", "host", "bcast", "mapped"] {
        assert!(h.anchor(jail).is_none(), "{jail}: no redirect was loaded");
    }
    assert!(h.anchor("fine").unwrap().contains("-> 10.13.37.9 port 80"));
}

#[test]
fn a_vnet_jail_without_configured_networks_is_refused_with_the_fix() {
    let h = Host::new();
    h.set_jails(json!([vnet_jail("client", 7, &["198.51.100.7"], None)]));
    let _a = h.start_agent();
    assert_eq!(h.ctl(&["publish", "-j", "client", "8080:80"]).code, 0);
    let v = state_of(&h, "client").unwrap();
    assert_eq!(v["state"], "error");
    assert!(v["reason"].as_str().unwrap().contains("`networks`"), "{v}");
    assert!(h.anchor("client").is_none());
}

#[test]
fn a_vnet_jail_that_changes_its_address_is_followed() {
    let h = Host::new();
    h.set_jails(json!([vnet_jail("client", 7, &[], None)]));
    let cfg = h.config(&format!("{KLEENET}vnet_refresh_ms: 1000\n"));
    let _a = h.start_agent_with(&cfg);
    assert_eq!(h.ctl(&["publish", "-j", "client", "8080:80"]).code, 0);
    assert_eq!(state_of(&h, "client").unwrap()["state"], "error", "no address yet");
    // The jail configures its interface after its start: the poststart hook's reconcile sees it.
    h.set_jails(json!([vnet_jail("client", 7, &["10.13.37.5"], None)]));
    assert_eq!(h.ctl(&["reconcile"]).code, 0);
    assert!(h.anchor("client").unwrap().contains("-> 10.13.37.5 port 80"));
    // Later it changes its address: the periodic refresh follows.
    h.set_jails(json!([vnet_jail("client", 7, &["10.13.37.6"], None)]));
    h.wait_for("the new address", || h.anchor("client").is_some_and(|a| a.contains("-> 10.13.37.6 port 80")));
}

/// A host whose jail web publishes 8080:80 and 8081:81 through a running agent.
fn web_publishing_two() -> (Host, Agent) {
    let h = Host::new();
    h.set_jails(json!([Host::jail("web", 3, &["10.13.37.2"])]));
    let a = h.start_agent();
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80", "8081:81"]).code, 0);
    (h, a)
}

#[test]
fn a_failed_state_kill_is_reported_kept_and_retried() {
    let (h, _a) = web_publishing_two();
    h.pf_switch("refuse-kill", Some("pfctl: DIOCKILLSTATES: Operation not permitted\n"));
    let out = h.ctl(&["unpublish", "-j", "web", "8081:81"]);
    assert_eq!(out.code, 1, "not reported as done: {out:?}");
    assert!(out.stderr.contains("pf did not kill the states of kleene:web:8081:81/tcp"), "{out:?}");
    assert!(out.stderr.contains("retries"), "{out:?}");
    assert!(!h.anchor("web").unwrap().contains("8081"), "the rules are gone");
    let removing = state_of_spec(&h, "8081:81/tcp").expect("ls shows what is left to do");
    assert_eq!(removing["state"], "removing", "{removing}");
    let check = h.ctl(&["check"]);
    assert_eq!(check.code, 1);
    assert!(check.stdout.contains("states of kleene:web:8081:81/tcp"), "{check:?}");
    assert!(check.stdout.contains("Operation not permitted"), "{check:?}");
    h.pf_switch("refuse-kill", None);
    h.wait_for("the kill is retried until it succeeds", || h.killed().contains(&"kleene:web:8081:81/tcp".into()));
    h.wait_for("and ls forgets it", || state_of_spec(&h, "8081:81/tcp").is_none());
    assert_eq!(h.ctl(&["check"]).code, 0);
}

#[test]
fn an_unpublish_pf_refuses_removes_nothing() {
    let (h, _a) = web_publishing_two();
    let stored = h.root().join("db/publications/web.yml");
    h.pf_switch("refuse", Some("pfctl: DIOCADDRULENV: Device busy\n"));
    let out = h.ctl(&["unpublish", "-j", "web", "8081:81"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("pf refused the rules for jail web, so nothing was unpublished"), "{out:?}");
    assert!(out.stderr.contains("Device busy"), "pfctl's message is shown: {out:?}");
    assert!(h.anchor("web").unwrap().contains("8081"), "pf keeps the old rules");
    assert!(std::fs::read_to_string(&stored).unwrap().contains("8081"), "and the disk the old state");
    assert_eq!(h.ls().len(), 2);
    h.pf_switch("refuse", None);
    h.pf_switch("refuse-flush", Some("pfctl: DIOCXBEGIN: Device busy\n"));
    let out = h.ctl(&["unpublish", "-j", "web", "--all"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("pf did not flush the anchor of jail web, so nothing was unpublished"), "{out:?}");
    assert!(stored.exists() && h.anchor("web").is_some());
    h.pf_switch("refuse-flush", None);
    assert_eq!(h.ctl(&["unpublish", "-j", "web", "--all"]).code, 0);
    assert!(h.anchor("web").is_none() && !stored.exists() && h.ls().is_empty());
}

fn state_of_spec(h: &Host, spec: &str) -> Option<Value> {
    h.ls().into_iter().find(|v| v["spec"] == spec)
}

#[test]
fn a_failed_flush_at_jail_stop_is_retried_and_shown() {
    let h = Host::new();
    h.set_jails(json!([Host::jail("web", 3, &["10.13.37.2"])]));
    let _a = h.start_agent();
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80"]).code, 0);
    h.pf_switch("refuse-flush", Some("pfctl: DIOCXBEGIN: Device busy\n"));
    h.set_jails(json!([]));
    h.wait_for("ls says the rules are still there", || {
        state_of(&h, "web").is_some_and(|v| {
            v["state"] == "error" && v["reason"].as_str().unwrap().contains("pf did not flush the jail's anchor")
        })
    });
    assert!(h.anchor("web").is_some());
    h.pf_switch("refuse-flush", None);
    h.wait_for("flushed on a later try", || h.anchor("web").is_none());
    h.wait_for("pending again", || state_of(&h, "web").unwrap()["state"] == "pending");
    assert!(h.killed().contains(&"kleene/web".to_string()));
}

#[test]
fn loads_pf_refuses_back_off_per_anchor() {
    let h = Host::new();
    h.set_jails(json!([Host::jail("web", 3, &["10.13.37.2"])]));
    std::fs::create_dir_all(h.root().join("db/publications")).unwrap();
    std::fs::write(
        h.root().join("db/publications/web.yml"),
        "version: 1\njail: web\npublications:\n- seq: 1\n  spec: 8080:80/tcp\n",
    )
    .unwrap();
    h.pf_switch("refuse", Some("pfctl: DIOCADDRULENV: Operation not supported by device\n"));
    let _a = h.start_agent();
    std::thread::sleep(Duration::from_millis(3000));
    let loads = h.loads().len();
    // A 100 ms poll tries 30 times in 3 s; doubling waits (100, 200, 400, 800, 1600 ms) try ~5.
    assert!((2..=7).contains(&loads), "{loads} loads in 3 s");
    let check = h.ctl(&["check"]);
    assert!(
        check.stdout.contains("pf refused it") && check.stdout.contains("retrying in"),
        "{check:?}\nthe agent's log:\n{}",
        h.log()
    );
    h.pf_switch("refuse", None);
    assert_eq!(h.ctl(&["reconcile"]).code, 0, "reconcile tries at once");
    assert!(h.anchor("web").is_some());
}

#[test]
fn an_unreadable_route_answer_keeps_the_gateway_and_only_routes_own_answer_means_none() {
    let h = Host::new();
    h.set_jails(json!([Host::jail("web", 3, &["10.13.37.2"])]));
    let _a = h.start_agent();
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80"]).code, 0);
    let loads = h.loads().len();
    write_state(&h, "route4.raw", "   route to: default\ndestination: default\n");
    std::thread::sleep(Duration::from_millis(600));
    assert!(h.anchor("web").unwrap().contains("(em0)"), "kept: an odd answer is not 'no route'");
    assert_eq!(h.loads().len(), loads, "nothing was reloaded");
    let check = h.ctl(&["check"]);
    assert!(check.stdout.contains("IPv4 default route"), "{check:?}");
    assert!(check.stdout.contains("no valid `interface:` line"), "{check:?}");
    std::fs::remove_file(h.root().join("state/route4.raw")).unwrap();
    // route(8) on FreeBSD 14 says "route has not been found" and exits 0: that is no route.
    h.set_gateway(None);
    h.wait_for("no default route: the rules go", || h.anchor("web").is_none());
    assert_eq!(state_of(&h, "web").unwrap()["state"], "error");
}

#[test]
fn anchors_listed_with_pfctls_stderr_are_not_reloaded_every_poll() {
    let h = Host::new();
    h.set_jails(json!([Host::jail("web", 3, &["10.13.37.2"])]));
    let _a = h.start_agent();
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80"]).code, 0);
    let listing = h.run_tool("pfctl", &["-a", "kleene", "-s", "Anchors"], None);
    assert!(listing.stderr.contains("Anchor 'kleene' not found."), "the fake says what FreeBSD says: {listing:?}");
    assert_eq!(listing.stdout, "  kleene/web\n");
    let loads = h.loads().len();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(h.loads().len(), loads, "no reload while the anchor is there");
}

#[test]
fn a_dying_jail_is_a_stopped_jail() {
    let h = Host::new();
    h.set_jails(json!([{"jid": 3, "name": "web", "ip4": ["10.13.37.2"], "dying": true}]));
    let _a = h.start_agent();
    let out = h.ctl(&["publish", "-j", "web", "8080:80"]);
    assert_eq!(out.code, 0, "{out:?}");
    let v = state_of(&h, "web").unwrap();
    assert_eq!(v["state"], "pending", "{v}");
    assert!(h.anchor("web").is_none());
}

#[test]
fn long_jail_names_publish_and_check_agrees() {
    let h = Host::new();
    let names: Vec<String> = [56usize, 57, 60, 63].iter().map(|n| "j".repeat(*n)).collect();
    let jails: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Host::jail(n, 10 + i as u32, &[&format!("10.13.37.{}", 10 + i)]))
        .collect();
    h.set_jails(json!(jails));
    let _a = h.start_agent();
    for (i, n) in names.iter().enumerate() {
        let out = h.ctl(&["publish", "-j", n, &format!("{}", 8000 + i)]);
        assert_eq!(out.code, 0, "{} characters: {out:?}", n.len());
    }
    assert!(h.ls().iter().all(|v| v["state"] == "active"));
    let listing = h.run_tool("pfctl", &["-a", "kleene", "-s", "Anchors"], None).stdout;
    assert_eq!(listing.lines().count(), 4, "{listing}");
    assert!(listing.lines().all(|l| l.trim().len() <= 63), "{listing}");
    assert!(listing.contains(&format!("kleene/{}", names[0])), "a name that fits is kept: {listing}");
    assert_eq!(h.ctl(&["check"]).code, 0);
}

#[test]
fn a_parent_anchor_without_room_is_refused_at_start() {
    let h = Host::new();
    let cfg = h.config(&format!("anchor: {}\n", "k".repeat(45)));
    let out = std::process::Command::new(common::KLEENECTL)
        .args(["agent", "--check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("anchor:") && err.contains("63"), "{err}");
}

#[test]
fn verification_converges_for_every_source_form() {
    let h = Host::new();
    h.set_jails(json!([{"jid": 3, "name": "web", "ip4": ["10.13.37.2"], "ip6": ["fd00:13:37::2"]}]));
    h.set_gateway6(Some("em0"));
    let _a = h.start_agent();
    for (spec, sources) in [
        ("8080:80", &["0.0.0.0/0", "::/0"][..]),
        ("8081:81", &["198.51.100.7/32", "2001:db8::1/128"][..]),
        ("8082:82", &["192.0.2.0/24", "2001:0db8:0000::/48"][..]),
        ("any:8083:83", &[][..]),
    ] {
        let mut args = vec!["publish", "-j", "web"];
        for s in sources {
            args.extend(["--source", s]);
        }
        args.push(spec);
        assert_eq!(h.ctl(&args).code, 0, "{spec} {sources:?}");
    }
    let loads = h.loads().len();
    for _ in 0..3 {
        assert_eq!(h.ctl(&["reconcile", "--verify"]).code, 0);
    }
    assert_eq!(h.loads().len(), loads, "what pf prints back matches what was loaded:\n{}", h.log());
    assert!(!h.log().contains("changed behind"), "{}", h.log());
}

#[test]
fn interface_names_that_are_pf_keywords_render_and_load() {
    let h = Host::new();
    let out = h.ctl(&["render", "-j", "web", "--ip", "10.13.37.2", "--gateway", "em0", "any:8080:80"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("rdr on \"any\" inet proto tcp from any to (\"any\") port 8080"), "{out:?}");
    let parsed = h.run_tool("pfctl", &["-a", "kleene/web", "-nvf", "-"], Some(&out.stdout));
    assert_eq!(parsed.code, 0, "pfctl accepts what render prints: {parsed:?}");
}

#[test]
fn foreign_anchors_are_never_touched() {
    let h = Host::new();
    let foreign = "pass in quick on em0 inet proto tcp from any to 10.0.0.22 port 22 label \"ssh\"\n";
    assert_eq!(h.run_tool("pfctl", &["-a", "kleene/ssh", "-f", "-"], Some(foreign)).code, 0);
    let ours = "pass in quick on em0 inet proto tcp from any to 10.13.37.7 port 80 label \"kleene:old:8080:80/tcp\" label \"kleene/old\"\n";
    assert_eq!(h.run_tool("pfctl", &["-a", "kleene/old", "-f", "-"], Some(ours)).code, 0);
    let _a = h.start_agent();
    assert!(h.anchor("old").is_none(), "an anchor carrying the agent's labels is flushed");
    assert_eq!(h.killed(), ["kleene/old"], "with one kill for its jail label");
    assert!(h.anchor("ssh").is_some(), "another program's anchor is left alone");
    assert!(h.log().contains("anchor kleene/ssh holds rules this agent did not write"), "{}", h.log());
    std::thread::sleep(Duration::from_millis(400));
    assert!(h.flushes().iter().all(|a| a != "kleene/ssh"));
    let check = h.ctl(&["check"]);
    assert_eq!(check.code, 1);
    assert!(check.stdout.contains("anchor kleene/ssh") && check.stdout.contains("did not write"), "{check:?}");
}
