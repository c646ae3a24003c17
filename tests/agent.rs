//! The agent and its client commands, end to end: the real `kleenectl` binary against the fake
//! FreeBSD tools (see tests/common).

mod common;

use common::Host;
use serde_json::json;

/// What the fake pfctl prints back for `publish -j web em1:8080:80/udp` (pfctl's form: ports
/// `= N`, tags bare, `keep state` added, `tagged` last): the outside world on em1, the host and
/// non-VNET jails through lo0 (no 127.0.0.1: that belongs to gateway publications).
const UDP_RULES: &str = "rdr on em1 inet proto udp from any to (em1) port = 8080 tag kleene:web:em1:8080:80/udp -> 10.13.37.2 port 80\n\
rdr on lo0 inet proto udp from any to (em1) port = 8080 tag kleene:web:em1:8080:80/udp -> 10.13.37.2 port 80\n\
pass in quick inet proto udp from any to 10.13.37.2 port = 80 keep state label \"kleene:web:em1:8080:80/udp\" label \"kleene/web\" tagged kleene:web:em1:8080:80/udp\n";

fn web(h: &Host) {
    h.set_jails(json!([Host::jail("web", 3, &["10.13.37.2"])]));
}

#[test]
fn publish_loads_the_anchor_and_ls_shows_it_active() {
    let h = Host::new();
    web(&h);
    let _a = h.start_agent();
    let out = h.ctl(&["publish", "-j", "web", "em1:8080:80/udp"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "published web em1:8080:80/udp on em1 -> 10.13.37.2");
    let anchor = h.anchor("web").expect("anchor kleene/web");
    assert_eq!(anchor, UDP_RULES);
    let ls = h.ls();
    assert_eq!(ls.len(), 1);
    let v = &ls[0];
    assert_eq!(v["jail"], "web");
    assert_eq!(v["spec"], "em1:8080:80/udp");
    assert_eq!(v["protocol"], "udp");
    assert_eq!(v["host_ports"], "8080");
    assert_eq!(v["jail_ports"], "80");
    assert_eq!(v["interfaces"], json!(["em1"]));
    assert_eq!(v["address"], json!(null));
    assert_eq!(v["ipv4"], "10.13.37.2");
    assert_eq!(v["ipv6"], json!(null));
    assert_eq!(v["state"], "active");
    assert_eq!(v["reason"], json!(null));
    assert_eq!(v["reachable_from"], json!(["outside", "jails", "host"]), "no networks are configured");
    assert_eq!(v["reach_off"], json!({}));
    let table = h.ctl(&["ls"]);
    assert!(table.stdout.starts_with("JAIL"), "{table:?}");
    assert!(
        table.stdout.contains("em1:8080") && table.stdout.contains("10.13.37.2:80") && table.stdout.contains("active"),
        "{table:?}"
    );
    let rules = h.ctl(&["rules", "-j", "web"]);
    assert_eq!(rules.code, 0);
    assert!(
        rules
            .stdout
            .starts_with("# kleene/web\nrdr on em1 inet proto udp from any to (em1) port 8080 tag \"kleene:web:em1:8080:80/udp\" -> 10.13.37.2 port 80\n"),
        "{rules:?}"
    );
}

#[test]
fn publishing_again_is_a_no_op_and_other_options_are_refused() {
    let h = Host::new();
    web(&h);
    let _a = h.start_agent();
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80"]).code, 0);
    let loads = h.loads().len();
    let again = h.ctl(&["publish", "-j", "web", "8080:80/tcp"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("already published, nothing changed"), "{again:?}");
    assert_eq!(h.loads().len(), loads, "nothing was loaded");
    let other = h.ctl(&["publish", "-j", "web", "--log", "8080:80"]);
    assert_eq!(other.code, 1, "{other:?}");
    assert!(other.stderr.contains("already publishes 8080:80/tcp with other options"), "{other:?}");
}

#[test]
fn jail_stop_flushes_and_kills_states_within_two_polls() {
    let h = Host::new();
    web(&h);
    let _a = h.start_agent();
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80", "em1:8080:80/udp"]).code, 0);
    assert!(h.anchor("web").is_some());
    h.set_jails(json!([]));
    h.wait_for("anchor kleene/web flushed", || h.anchor("web").is_none());
    h.wait_for("states killed", || !h.killed().is_empty());
    assert_eq!(h.killed(), ["kleene/web"], "one kill for the whole jail");
    assert_eq!(h.flushes(), ["kleene/web"]);
    let ls = h.ls();
    assert!(ls.iter().all(|v| v["state"] == "pending"), "{ls:?}");
    assert_eq!(ls[0]["reason"], "jail web is not running");
}

#[test]
fn reconcile_acts_on_a_stop_at_once() {
    let h = Host::new();
    web(&h);
    let cfg = h.config("verify_interval_ms: 3600000\npoll_interval_ms: 3600000\n");
    let _a = h.start_agent_with(&cfg);
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80"]).code, 0);
    h.set_jails(json!([]));
    let out = h.ctl(&["reconcile"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(h.anchor("web").is_none(), "flushed before reconcile returned");
    assert_eq!(h.killed(), ["kleene/web"]);
    assert_eq!(h.flushes(), ["kleene/web"]);
    web(&h);
    assert_eq!(h.ctl(&["reconcile"]).code, 0);
    assert!(h.anchor("web").unwrap().contains("-> 10.13.37.2 port 80"));
}

#[test]
fn restart_with_a_new_address_reloads_the_rules() {
    let h = Host::new();
    web(&h);
    let _a = h.start_agent();
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80"]).code, 0);
    h.set_jails(json!([Host::jail("web", 4, &["10.13.37.9"])]));
    h.wait_for("rules follow the new address", || h.anchor("web").is_some_and(|a| a.contains("-> 10.13.37.9 port 80")));
    h.wait_for("the old incarnation's states are killed (after the load)", || !h.killed().is_empty());
    assert_eq!(h.killed(), ["kleene/web"], "the old incarnation's states");
    assert_eq!(h.ls()[0]["ipv4"], "10.13.37.9");
}

#[test]
fn unpublish_removes_rules_and_kills_their_states() {
    let h = Host::new();
    web(&h);
    let _a = h.start_agent();
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80", "8081:81"]).code, 0);
    let out = h.ctl(&["unpublish", "-j", "web", "8081:81"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "unpublished web 8081:81/tcp");
    let anchor = h.anchor("web").unwrap();
    assert!(anchor.contains("port = 8080") && !anchor.contains("8081"), "{anchor}");
    assert_eq!(h.killed(), ["kleene:web:8081:81/tcp"]);
    let missing = h.ctl(&["unpublish", "-j", "web", "9999"]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("jail web does not publish 9999:9999/tcp; nothing was changed"), "{missing:?}");
    assert_eq!(h.ls().len(), 1);
    let all = h.ctl(&["unpublish", "-j", "web", "--all"]);
    assert_eq!(all.code, 0, "{all:?}");
    assert!(h.anchor("web").is_none());
    assert_eq!(h.killed(), ["kleene:web:8081:81/tcp", "kleene/web"]);
    assert!(h.ls().is_empty());
}

#[test]
fn agent_restart_loses_nothing_and_reloads_once() {
    let h = Host::new();
    web(&h);
    let mut a = h.start_agent();
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80"]).code, 0);
    assert_eq!(h.ctl(&["publish", "-j", "db", "5432"]).code, 0);
    assert_eq!(a.stop(), Some(0));
    assert!(!h.socket().exists(), "the socket is removed on exit");
    assert!(h.anchor("web").is_some(), "flush_on_exit is false: rules stay");
    let before = h.loads().len();
    let _b = h.start_agent();
    let ls = h.ls();
    let specs: Vec<(&str, &str)> =
        ls.iter().map(|v| (v["jail"].as_str().unwrap(), v["state"].as_str().unwrap())).collect();
    assert_eq!(specs, [("db", "pending"), ("web", "active")]);
    assert_eq!(h.loads()[before..], ["kleene/web"], "every running jail's anchor is loaded once at start");
}

#[test]
fn flush_on_exit_flushes() {
    let h = Host::new();
    web(&h);
    let cfg = h.config("flush_on_exit: true\n");
    let mut a = h.start_agent_with(&cfg);
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80"]).code, 0);
    assert_eq!(a.stop_with(libc::SIGINT), Some(0));
    assert!(h.anchor("web").is_none());
    assert_eq!(h.killed(), ["kleene/web"]);
}

#[test]
fn idle_ticks_run_only_the_observation_commands() {
    let h = Host::new();
    web(&h);
    let _a = h.start_agent();
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80"]).code, 0);
    let start = h.calls().len();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let idle: Vec<_> = h.calls()[start..].to_vec();
    let ticks = idle.iter().filter(|c| c.tool == "jls").count();
    assert!(ticks >= 3, "the agent polls: {idle:?}");
    for c in &idle {
        let ok = match c.tool.as_str() {
            "jls" => c.argv == ["--libxo", "json", "jid", "name", "ip4.addr", "ip6.addr", "vnet"],
            "route" => c.argv == ["-n", "get", "default"] || c.argv == ["-n", "get", "-inet6", "default"],
            "pfctl" => c.argv == ["-a", "kleene", "-s", "Anchors"],
            _ => false,
        };
        assert!(ok, "unexpected call on an idle tick: {c:?}");
    }
}

#[test]
fn orphan_anchor_is_flushed_at_start() {
    let h = Host::new();
    let load = h.run_tool(
        "pfctl",
        &["-a", "kleene/old", "-f", "-"],
        Some("rdr on em0 inet proto tcp from any to (em0) port 8080 -> 10.13.37.7 port 80\npass in quick on em0 inet proto tcp from any to 10.13.37.7 port 80 label \"kleene:old:8080:80/tcp\"\n"),
    );
    assert_eq!(load.code, 0, "{load:?}");
    assert!(h.anchor("old").is_some());
    let _a = h.start_agent();
    assert!(h.anchor("old").is_none(), "flushed at start");
    assert_eq!(h.killed(), ["kleene:old:8080:80/tcp"], "its labels were read back and their states killed");
    assert!(h.log().contains("flushed anchor kleene/old"));
}

#[test]
fn a_conflict_is_refused_naming_the_owner() {
    let h = Host::new();
    h.set_jails(json!([Host::jail("web", 3, &["10.13.37.2"]), Host::jail("db", 4, &["10.13.37.3"])]));
    let _a = h.start_agent();
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80"]).code, 0);
    let out = h.ctl(&["publish", "-j", "db", "8075-8085:5432"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("cannot publish 8075-8085:5432-5442/tcp for jail db: the host port is already published by jail web as 8080:80/tcp"),
        "{out:?}"
    );
    assert!(h.anchor("db").is_none());
    assert_eq!(h.ls().len(), 1);
    let within = h.ctl(&["publish", "-j", "db", "9000", "em0:9000:90"]);
    assert_eq!(within.code, 1, "{within:?}");
    assert!(within.stderr.contains("claim the same host port"), "{within:?}");
    assert_eq!(
        h.ctl(&["publish", "-j", "db", "em1:8080:5432", "8080/udp"]).code,
        0,
        "other interface and protocol are fine"
    );
}

#[test]
fn several_specs_succeed_or_fail_together() {
    let h = Host::new();
    h.set_jails(json!([Host::jail("web", 3, &["10.13.37.2"]), Host::jail("db", 4, &["10.13.37.3"])]));
    let _a = h.start_agent();
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80"]).code, 0);
    let out = h.ctl(&["publish", "-j", "db", "5432", "8080:80"]);
    assert_eq!(out.code, 1);
    assert!(h.ls().iter().all(|v| v["jail"] == "web"), "5432 was not stored either");
    let bad = h.ctl(&["publish", "-j", "db", "5432", "em1:80"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(h.ls().iter().all(|v| v["jail"] == "web"));
}

#[test]
fn a_pending_publication_becomes_active_when_its_jail_starts() {
    let h = Host::new();
    let _a = h.start_agent();
    let out = h.ctl(&["publish", "-j", "web", "8080:80"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "stored web 8080:80/tcp: pending: jail web is not running");
    assert_eq!(h.ls()[0]["state"], "pending");
    assert!(h.anchor("web").is_none());
    web(&h);
    h.wait_for("anchor loaded when the jail starts", || h.anchor("web").is_some());
    h.wait_for("ls says active", || h.ls()[0]["state"] == "active");
}

#[test]
fn the_anchors_follow_the_gateway() {
    let h = Host::new();
    web(&h);
    let _a = h.start_agent();
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80"]).code, 0);
    assert!(h.anchor("web").unwrap().contains("on em0 inet proto tcp from any to (em0)"));
    h.set_gateway(Some("em1"));
    h.wait_for("rules move to em1", || h.anchor("web").is_some_and(|a| a.contains("to (em1)") && !a.contains("em0")));
    assert_eq!(h.ls()[0]["interfaces"], json!(["em1"]));
    h.set_gateway(None);
    h.wait_for("no gateway, no rules", || h.anchor("web").is_none());
    let v = &h.ls()[0];
    assert_eq!(v["state"], "error");
    assert!(v["reason"].as_str().unwrap().contains("no IPv4 default route"), "{v}");
}

#[test]
fn a_load_pf_refuses_is_not_stored() {
    let h = Host::new();
    web(&h);
    let _a = h.start_agent();
    h.pf_switch("refuse", Some("stdin:1: syntax error\n"));
    let out = h.ctl(&["publish", "-j", "web", "8080:80"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("pf refused the rules for jail web, so nothing was published"), "{out:?}");
    assert!(out.stderr.contains("stdin:1: syntax error"), "pfctl's message is shown: {out:?}");
    assert!(h.ls().is_empty());
    assert!(!h.root().join("db/publications/web.yml").exists(), "nothing was stored");
    h.pf_switch("refuse", None);
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80"]).code, 0);
}

#[test]
fn pf_missing_at_start_is_survived_and_applied_later() {
    let h = Host::new();
    web(&h);
    std::fs::create_dir_all(h.root().join("db/publications")).unwrap();
    std::fs::write(
        h.root().join("db/publications/web.yml"),
        "version: 1\njail: web\npublications:\n- seq: 1\n  spec: 8080:80/tcp\n",
    )
    .unwrap();
    h.pf_switch("nodev", Some(""));
    let _a = h.start_agent();
    let v = &h.ls()[0];
    assert_eq!(v["state"], "error", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("/dev/pf: No such file or directory"), "{v}");
    let check = h.ctl(&["check"]);
    assert_eq!(check.code, 1);
    assert!(check.stdout.contains("FAIL  pf: pfctl: /dev/pf: No such file or directory"), "{check:?}");
    assert!(check.stdout.contains("fix: load pf: kldload pf"), "{check:?}");
    h.pf_switch("nodev", None);
    h.wait_for("applied once pf is back", || h.anchor("web").is_some());
    h.wait_for("active", || h.ls()[0]["state"] == "active");
}

#[test]
fn drift_is_repaired() {
    let h = Host::new();
    web(&h);
    let cfg = h.config("verify_interval_ms: 500\n");
    let _a = h.start_agent_with(&cfg);
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80"]).code, 0);
    let good = h.anchor("web").unwrap();
    assert_eq!(h.run_tool("pfctl", &["-a", "kleene/web", "-F", "all"], None).code, 0);
    h.wait_for("a flushed anchor is restored", || h.anchor("web").as_deref() == Some(good.as_str()));
    let changed = "rdr on em0 inet proto tcp from any to (em0) port 8080 -> 10.13.37.66 port 80\n";
    assert_eq!(h.run_tool("pfctl", &["-a", "kleene/web", "-f", "-"], Some(changed)).code, 0);
    h.wait_for("a changed anchor is restored", || h.anchor("web").as_deref() == Some(good.as_str()));
    assert!(h.log().contains("anchor kleene/web was changed behind the agent's back; reloading it"), "{}", h.log());
    assert_eq!(h.run_tool("pfctl", &["-a", "kleene/web", "-f", "-"], Some(changed)).code, 0);
    assert_eq!(h.ctl(&["reconcile", "--verify"]).code, 0);
    assert_eq!(h.anchor("web").unwrap(), good, "reconcile --verify repairs at once");
}

#[test]
fn vnet_jail_addresses_are_read_once_per_jid_with_the_hosts_ifconfig() {
    let h = Host::new();
    h.set_jails(json!([{"jid": 7, "name": "client", "vnet": true, "vnet_addrs": ["10.13.37.5", "fd00:13:37::5"]}]));
    h.set_gateway6(Some("em0"));
    let cfg = h.config("networks:\n  - name: kleenet\n    subnet: 10.13.37.0/24\n    subnet6: fd00:13:37::/64\n");
    let _a = h.start_agent_with(&cfg);
    assert_eq!(h.ctl(&["publish", "-j", "client", "8080:80"]).code, 0);
    let anchor = h.anchor("client").unwrap();
    assert!(anchor.contains("-> 10.13.37.5 port 80") && anchor.contains("-> fd00:13:37::5 port 80"), "{anchor}");
    std::thread::sleep(std::time::Duration::from_millis(400));
    let calls = h.calls();
    assert!(calls.iter().all(|c| c.tool != "jexec"), "nothing runs inside the jail");
    let reads: Vec<_> = calls.into_iter().filter(|c| c.tool == "ifconfig" && c.argv.contains(&"-j".into())).collect();
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0].argv, ["-j", "7", "-a"]);
}

#[test]
fn networks_choose_the_target() {
    let h = Host::new();
    h.set_jails(json!([Host::jail("web", 3, &["192.0.2.5", "10.13.37.2", "10.99.0.2"])]));
    let cfg = h.config(
        "networks:\n  - name: kleenet\n    subnet: 10.13.37.0/24\n  - name: backend\n    subnet: 10.99.0.0/16\n",
    );
    let _a = h.start_agent_with(&cfg);
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80"]).code, 0);
    assert_eq!(h.ctl(&["publish", "-j", "web", "--network", "backend", "em1:9090:90"]).code, 0);
    let anchor = h.anchor("web").unwrap();
    assert!(anchor.contains("port = 8080 tag kleene:web:8080:80/tcp -> 10.13.37.2 port 80"), "{anchor}");
    assert!(anchor.contains("port = 9090 tag kleene:web:em1:9090:90/tcp -> 10.99.0.2 port 90"), "{anchor}");
    assert!(
        anchor
            .contains("pass in quick inet proto tcp from 10.13.37.0/24 to 10.13.37.2 port = 80 flags S/SA keep state"),
        "the configured networks reach the jail directly: {anchor}"
    );
    let out = h.ctl(&["publish", "-j", "web", "--network", "nope", "7070"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("network nope is not configured (configured: kleenet, backend)"), "{out:?}");
}

#[test]
fn check_names_each_problem_and_its_fix() {
    let h = Host::new();
    let _a = h.start_agent();
    let ok = h.ctl(&["check"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("ok    main ruleset rdr-anchor: has rdr-anchor \"kleene/*\""), "{ok:?}");
    h.set_main_ruleset("pass all\n");
    h.pf_switch("disabled", Some(""));
    let bad = h.ctl(&["check"]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stdout.contains("FAIL  pf enabled: pf is disabled"), "{bad:?}");
    assert!(bad.stdout.contains("fix: service pf enable"), "{bad:?}");
    assert!(bad.stdout.contains("fix: add `rdr-anchor \"kleene/*\"` to the translation"), "{bad:?}");
    assert!(bad.stdout.contains("fix: add `anchor \"kleene/*\"` to the filter"), "{bad:?}");
}

#[test]
fn an_unreachable_agent_is_reported() {
    let h = Host::new();
    let out = h.ctl(&["ls"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains(&format!("cannot reach the agent at {}", h.socket().display())), "{out:?}");
    assert!(out.stderr.contains("service kleene_rdr start"), "{out:?}");
    let hook = h.ctl(&["reconcile", "--quiet-if-down"]);
    assert_eq!(hook.code, 0, "{hook:?}");
    assert!(hook.stderr.contains("warning: cannot reach the agent"), "{hook:?}");
    assert_eq!(h.ctl(&["reconcile"]).code, 1);
    let check = h.ctl(&["check"]);
    assert_eq!(check.code, 1);
    assert!(check.stdout.contains("FAIL  agent: cannot reach the agent"), "{check:?}");
}

#[test]
fn bad_input_exits_2_without_an_agent() {
    let h = Host::new();
    for args in [
        &["publish", "-j", "web", "70000"][..],
        &["publish", "-j", "web", "em1:8080"],
        &["publish", "-j", "we b", "8080"],
        &["publish", "-j", "web", "--source", "192.0.2.1/24", "8080"],
        &["unpublish", "-j", "web"],
        &["publish", "-j", "web"],
        &["frobnicate"],
    ] {
        let out = h.ctl(args);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stdout.is_empty());
    }
    let out = h.ctl(&["publish", "-j", "web", "em1:8080"]);
    assert_eq!(
        out.stderr.trim(),
        "kleenectl: error: invalid port spec \"em1:8080\": with an interface, give INTERFACE:HOST-PORT:JAIL-PORT[/PROTO] (e.g. em1:8080:80)"
    );
}

#[test]
fn the_socket_is_private_and_a_second_agent_refuses() {
    use std::os::unix::fs::PermissionsExt as _;
    let h = Host::new();
    let _a = h.start_agent();
    let mode = std::fs::metadata(h.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let out = std::process::Command::new(common::KLEENECTL)
        .args(["agent", "--config"])
        .arg(h.root().join("kleene-rdr.yml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another agent is already serving"), "{out:?}");
    assert_eq!(h.ctl(&["ls"]).code, 0, "the first agent still serves");
}

#[test]
fn config_and_state_errors_stop_the_agent() {
    let h = Host::new();
    let cfg = h.config("pool_interval_ms: 5\n");
    let out = std::process::Command::new(common::KLEENECTL).args(["agent", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kleene-rdr.yml") && err.contains("unknown field `pool_interval_ms`"), "{err}");
    let cfg = h.config("");
    std::fs::create_dir_all(h.root().join("db/publications")).unwrap();
    std::fs::write(h.root().join("db/publications/web.yml"), "version: 1\njail: web\npublications: nope\n").unwrap();
    let out = std::process::Command::new(common::KLEENECTL).args(["agent", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("publications/web.yml does not parse"), "{err}");
    assert_eq!(
        std::fs::read_to_string(h.root().join("db/publications/web.yml")).unwrap(),
        "version: 1\njail: web\npublications: nope\n",
        "never overwritten"
    );
}

#[test]
fn sighup_rereads_the_config() {
    let h = Host::new();
    h.set_jails(json!([Host::jail("web", 3, &["192.0.2.5", "10.13.37.2"])]));
    let a = h.start_agent();
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80"]).code, 0);
    assert!(h.anchor("web").unwrap().contains("-> 192.0.2.5 port 80"));
    h.config("networks:\n  - name: kleenet\n    subnet: 10.13.37.0/24\n");
    // SAFETY: kill(2) on the agent's pid.
    unsafe { libc::kill(a.pid() as i32, libc::SIGHUP) };
    h.wait_for("rules follow the new network", || h.anchor("web").is_some_and(|t| t.contains("-> 10.13.37.2 port 80")));
    std::fs::write(h.root().join("kleene-rdr.yml"), "bogus: 1\n").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(a.pid() as i32, libc::SIGHUP) };
    h.wait_for("a bad config is logged and ignored", || h.log().contains("SIGHUP: keeping the old configuration"));
    assert_eq!(h.ctl(&["ls"]).code, 0);
}

#[test]
fn agent_check_validates_without_side_effects() {
    let h = Host::new();
    let cfg = h.config("");
    let out = std::process::Command::new(common::KLEENECTL)
        .args(["agent", "--check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid, 0 publications"), "{out:?}");
    assert!(!h.socket().exists(), "--check does not serve");
    std::fs::create_dir_all(h.root().join("db/publications")).unwrap();
    std::fs::write(h.root().join("db/publications/web.yml"), "version: 9\njail: web\npublications: []\n").unwrap();
    let out = std::process::Command::new(common::KLEENECTL)
        .args(["agent", "--check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("version 9 is not supported"), "{out:?}");
    let bad = h.root().join("bad.yml");
    std::fs::write(&bad, "anchor: _x\n").unwrap();
    let out = std::process::Command::new(common::KLEENECTL)
        .args(["agent", "--check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.yml"), "{out:?}");
    // A typo in the path (rc.conf's kleene_rdr_config) must not run the agent on defaults.
    let typo = h.root().join("kleene-rdr.ymll");
    for args in [&["agent", "--check", "--config"][..], &["agent", "--config"][..]] {
        let out = std::process::Command::new(common::KLEENECTL).args(args).arg(&typo).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("kleene-rdr.ymll does not exist (given with --config)"), "{err}");
    }
    assert!(!h.socket().exists(), "nothing was served");
}

#[test]
fn a_publish_reads_at_most_the_jail_it_concerns() {
    let h = Host::new();
    web(&h);
    let cfg = h.config("poll_interval_ms: 3600000\nverify_interval_ms: 3600000\n");
    let _a = h.start_agent_with(&cfg);
    let before = h.calls().len();
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80"]).code, 0);
    let calls: Vec<_> = h.calls()[before..].to_vec();
    let tools: Vec<&str> = calls.iter().map(|c| c.tool.as_str()).collect();
    assert_eq!(tools, ["pfctl"], "the first poll, less than a poll ago, saw web running: only its anchor is loaded");
    assert!(calls[0].argv.starts_with(&["-a".to_string(), "kleene/web".to_string()]), "{calls:?}");
    let before = h.calls().len();
    let pending = h.ctl(&["publish", "-j", "db", "5432"]);
    let calls: Vec<_> = h.calls()[before..].to_vec();
    let jls: Vec<_> = calls.iter().filter(|c| c.tool == "jls").collect();
    assert_eq!(jls.len(), 1, "a jail the last poll did not see running is read: {calls:?}");
    assert_eq!(jls[0].argv, ["--libxo", "json", "-j", "db", "jid", "name", "ip4.addr", "ip6.addr", "vnet"]);
    assert!(!calls.iter().any(|c| c.argv.contains(&"Anchors".to_string())), "pf's anchor list is read by the polls");
    assert_eq!(pending.stdout.trim(), "stored db 5432:5432/tcp: pending: jail db is not running");
    let missing = h.run_tool("jls", &["--libxo", "json", "-j", "db", "jid"], None);
    assert_eq!(missing.code, 1);
    assert_eq!(missing.stderr, "jls: jail \"db\" not found\n");
}
