//! Who can reach a published port, end to end: the real `kleenectl` against the fake FreeBSD
//! tools (see tests/common). The anchor must hold exactly the rules of the configured reach, as
//! pfctl prints them back; `check` names each missing host setting with its fix; teardown removes
//! every rule and kills the states.

mod common;

use common::Host;
use serde_json::json;

const TAG: &str = "kleene:web:8080:80/tcp";
const LABELS: &str = "label \"kleene:web:8080:80/tcp\" label \"kleene/web\"";

/// A VNET jail web (10.13.37.5) behind bridge0 (the host at 10.13.37.1), the network kleenet
/// configured, the gateway em0.
fn vnet_host() -> (Host, std::path::PathBuf) {
    let h = Host::new();
    h.set_host_ifconfig(json!([
        {"name": "em0", "addrs": ["192.0.2.10/24"]},
        {"name": "bridge0", "addrs": ["10.13.37.1/24"]},
        {"name": "epair0a"}
    ]));
    h.set_jails(json!([{"jid": 7, "name": "web", "vnet": true, "vnet_addrs": ["10.13.37.5"]}]));
    let cfg = h.config("networks:\n  - name: kleenet\n    subnet: 10.13.37.0/24\n");
    (h, cfg)
}

#[test]
fn a_vnet_jail_on_a_bridge_gets_exactly_its_reach_and_loses_it_at_unpublish() {
    let (h, cfg) = vnet_host();
    let _a = h.start_agent_with(&cfg);
    let out = h.ctl(&["publish", "-j", "web", "8080:80"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "published web 8080:80/tcp on em0 -> 10.13.37.5\n", "no warning on a ready host");
    assert_eq!(
        h.anchor("web").unwrap(),
        format!(
            "nat on bridge0 inet proto tcp from 10.13.37.0/24 to 10.13.37.5 port = 80 tagged {TAG} -> 10.13.37.1\n\
             nat on bridge0 inet proto tcp from 127.0.0.1 to 10.13.37.5 port = 80 tagged {TAG} -> 10.13.37.1\n\
             rdr on em0 inet proto tcp from any to (em0) port = 8080 tag {TAG} -> 10.13.37.5 port 80\n\
             rdr on lo0 inet proto tcp from any to (em0) port = 8080 tag {TAG} -> 10.13.37.5 port 80\n\
             rdr on lo0 inet proto tcp from any to 127.0.0.1 port = 8080 tag {TAG} -> 10.13.37.5 port 80\n\
             rdr on bridge0 inet proto tcp from any to (em0) port = 8080 tag {TAG} -> 10.13.37.5 port 80\n\
             pass in quick inet proto tcp from any to 10.13.37.5 port = 80 flags S/SA keep state {LABELS} tagged {TAG}\n\
             pass out quick inet proto tcp from any to 10.13.37.5 port = 80 flags S/SA keep state {LABELS} label \"kleene:outbound\" tagged {TAG}\n\
             pass in quick inet proto tcp from 10.13.37.0/24 to 10.13.37.5 port = 80 flags S/SA keep state {LABELS}\n\
             pass out quick inet proto tcp from 10.13.37.0/24 to 10.13.37.5 port = 80 flags S/SA keep state {LABELS} label \"kleene:outbound\"\n"
        )
    );
    assert_eq!(h.ls()[0]["reachable_from"], json!(["outside", "jails", "networks", "host"]));
    let loads = h.loads().len();
    assert_eq!(h.ctl(&["reconcile", "--verify"]).code, 0);
    assert_eq!(h.loads().len(), loads, "what pfctl prints back reads as what was loaded: nothing reloaded");
    let out = h.ctl(&["unpublish", "-j", "web", "8080:80"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(h.anchor("web").is_none(), "every rule is gone");
    assert_eq!(h.killed(), ["kleene/web"], "and the states of every rule with it");
}

#[test]
fn each_reach_turned_off_for_a_publication_removes_its_rules() {
    let (h, cfg) = vnet_host();
    let _a = h.start_agent_with(&cfg);
    let out = h.ctl(&["publish", "-j", "web", "--no-hairpin", "--no-networks", "--no-host", "8080:80"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        h.anchor("web").unwrap(),
        format!(
            "rdr on em0 inet proto tcp from any to (em0) port = 8080 tag {TAG} -> 10.13.37.5 port 80\n\
             pass in quick inet proto tcp from any to 10.13.37.5 port = 80 flags S/SA keep state {LABELS} tagged {TAG}\n\
             pass out quick inet proto tcp from any to 10.13.37.5 port = 80 flags S/SA keep state {LABELS} label \"kleene:outbound\" tagged {TAG}\n"
        )
    );
    let v = &h.ls()[0];
    assert_eq!(v["reachable_from"], json!(["outside"]));
    assert_eq!(v["reach_off"], json!({"hairpin": true, "networks": true, "host": true}));
    let again = h.ctl(&["publish", "-j", "web", "8080:80"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("already publishes 8080:80/tcp with other options"), "{again:?}");
    let stored = std::fs::read_to_string(h.root().join("db/publications/web.yml")).unwrap();
    assert!(stored.contains("  reach_off:\n    hairpin: true\n    networks: true\n    host: true\n"), "{stored}");
}

#[test]
fn a_local_only_publication_is_on_lo0_alone_and_localhost_means_both_families() {
    let h = Host::new();
    h.set_jails(json!([{"jid": 3, "name": "web", "ip4": ["10.13.37.2"], "ip6": ["fd00:13:37::2"]}]));
    let _a = h.start_agent();
    let out = h.ctl(&["publish", "-j", "web", "localhost:8080:80"]);
    assert_eq!(
        out.stdout,
        "published web localhost:8080:80/tcp on the host's loopback (127.0.0.1, ::1) -> 10.13.37.2, fd00:13:37::2\n"
    );
    let tag = "kleene:web:localhost:8080:80/tcp";
    let labels = "label \"kleene:web:localhost:8080:80/tcp\" label \"kleene/web\"";
    assert_eq!(
        h.anchor("web").unwrap(),
        format!(
            "rdr on lo0 inet proto tcp from any to 127.0.0.1 port = 8080 tag {tag} -> 10.13.37.2 port 80\n\
             rdr on lo0 inet6 proto tcp from any to ::1 port = 8080 tag {tag} -> fd00:13:37::2 port 80\n\
             pass in quick inet proto tcp from any to 10.13.37.2 port = 80 flags S/SA keep state {labels} tagged {tag}\n\
             pass in quick inet6 proto tcp from any to fd00:13:37::2 port = 80 flags S/SA keep state {labels} tagged {tag}\n"
        )
    );
    let v = &h.ls()[0];
    assert_eq!((v["reachable_from"].clone(), v["interfaces"].clone()), (json!(["host"]), json!([])));
    let table = h.ctl(&["ls"]);
    assert!(table.stdout.contains("localhost:8080"), "{table:?}");
    let clash = h.ctl(&["publish", "-j", "db", "8080:80"]);
    assert_eq!(clash.code, 1, "the host's 127.0.0.1:8080 can go to one jail only: {clash:?}");
    assert!(clash.stderr.contains("already published by jail web as localhost:8080:80/tcp"), "{clash:?}");
    assert_eq!(h.ctl(&["publish", "-j", "db", "--no-host", "8080:80"]).code, 0, "without host reach it is free");
}

#[test]
fn a_publication_on_an_interface_the_host_lacks_is_an_error_in_ls() {
    let h = Host::new();
    h.set_jails(json!([Host::jail("web", 3, &["10.13.37.2"])]));
    let _a = h.start_agent();
    let out = h.ctl(&["publish", "-j", "web", "em5:8080:80"]);
    assert_eq!(out.code, 0, "stored, as a pending jail's would be: {out:?}");
    let v = &h.ls()[0];
    assert_eq!(v["state"], "error");
    assert!(v["reason"].as_str().unwrap().starts_with("the host has no interface em5"), "{v}");
    assert!(h.anchor("web").is_none());
    h.set_host_ifconfig(json!([{"name": "em0", "addrs": ["192.0.2.10/24"]}, {"name": "em5"}]));
    assert_eq!(h.ctl(&["reconcile"]).code, 0);
    assert_eq!(h.ls()[0]["state"], "active", "the interface appeared");
}

#[test]
fn check_names_each_missing_host_setting_with_its_fix() {
    let (h, cfg) = vnet_host();
    h.set_main_ruleset("set skip on lo\nrdr-anchor \"kleene/*\"\nanchor \"kleene/*\"\n");
    h.set_sysctls(json!({"net.pf.filter_local": "0", "net.inet.ip.forwarding": "0", "net.inet6.ip6.forwarding": "0"}));
    h.set_sockets(json!([
        {"command": "nginx", "pid": 812, "fd": 6, "proto": "tcp4", "local": "127.0.0.1:8080"},
        {"command": "sshd", "pid": 790, "fd": 4, "proto": "tcp46", "local": "*:22"}
    ]));
    let _a = h.start_agent_with(&cfg);
    let out = h.ctl(&["publish", "-j", "web", "8080:80"]);
    assert_eq!(out.code, 0, "a reach that cannot work is a warning: {out:?}");
    for w in [
        "warning: web 8080:80/tcp: pf skips lo0 (set skip on lo0), so the host and non-VNET jails do not reach it",
        "warning: web 8080:80/tcp: net.pf.filter_local is not 1",
        "warning: web 8080:80/tcp: net.inet.ip.forwarding is not 1",
        "warning: web 8080:80/tcp: the main ruleset has no nat-anchor \"kleene/*\"",
    ] {
        assert!(out.stdout.contains(w), "{w}: {out:?}");
    }
    let check = h.ctl(&["check"]);
    assert_eq!(check.code, 1, "{check:?}");
    for line in [
        "FAIL  main ruleset nat-anchor: has no nat-anchor \"kleene/*\"",
        "      fix: add `nat-anchor \"kleene/*\"` to the translation section of /etc/pf.conf",
        "FAIL  loopback: pf skips lo0",
        "`pass quick on lo0 all no state`",
        "FAIL  net.pf.filter_local: net.pf.filter_local is 0: the host cannot reach a VNET jail's published port",
        "      fix: sysctl net.pf.filter_local=1, add net.pf.filter_local=1 to /etc/sysctl.conf, then service pf restart",
        "FAIL  net.inet.ip.forwarding: net.inet.ip.forwarding is 0",
        "      fix: sysctl net.inet.ip.forwarding=1 and sysrc gateway_enable=\"YES\" (/etc/rc.conf)",
        "ok    net.inet6.ip6.forwarding: net.inet6.ip6.forwarding is 0 (needed only for VNET jails of that family; none runs)",
        "FAIL  host services: nginx (pid 812) listens on 127.0.0.1:8080 (tcp4)",
    ] {
        assert!(check.stdout.contains(line), "{line}:\n{}", check.stdout);
    }
    assert!(!check.stdout.contains("sshd"), "{}", check.stdout);
    let calls = h.calls();
    assert!(calls.iter().any(|c| c.tool == "pfctl" && c.argv == ["-s", "Interfaces", "-v"]), "{calls:?}");
    assert!(
        calls.iter().any(|c| c.tool == "sysctl"
            && c.argv == ["net.pf.filter_local", "net.inet.ip.forwarding", "net.inet6.ip6.forwarding"]),
        "{calls:?}"
    );
    assert!(calls.iter().any(|c| c.tool == "sockstat" && c.argv == ["-4", "-6", "-l"]), "{calls:?}");
}

#[test]
fn a_state_file_of_an_earlier_release_loads_with_every_reach() {
    let h = Host::new();
    h.set_jails(json!([Host::jail("web", 3, &["10.13.37.2"])]));
    std::fs::create_dir_all(h.root().join("db/publications")).unwrap();
    std::fs::write(
        h.root().join("db/publications/web.yml"),
        "# kleene-rdr: publications of one jail, written by the agent (kleenectl publish/unpublish).\n\
         version: 1\njail: web\npublications:\n- seq: 1\n  spec: 8080:80/tcp\n  log: true\n",
    )
    .unwrap();
    let _a = h.start_agent();
    let v = &h.ls()[0];
    assert_eq!(v["state"], "active", "{v}");
    assert_eq!(v["reachable_from"], json!(["outside", "jails", "host"]));
    assert!(h.anchor("web").unwrap().contains("rdr on lo0 inet proto tcp from any to 127.0.0.1 port = 8080"));
}
