//! The `kleene-portmap` CNI plugin, run the way a container runtime runs it (`CNI_*` variables,
//! the network configuration on stdin, the result or error object on stdout) against the real
//! agent and the fake FreeBSD tools; and through the CNI project's own library (libcni, as
//! `cnitool` drives it) in a conflist whose first plugin returns a fixed result.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Host, Out};
use serde_json::{Value, json};

const PORTMAP: &str = env!("CARGO_BIN_EXE_kleene-portmap");
const ID: &str = "3f6940ab5ab43bc522569d15b23f8c1bbde1d7678b080398506924fc01d72755";

/// Runs the plugin: `CNI_COMMAND=command`, the container `id` in the jail `netns`, `conf` on
/// stdin, `KLEENE_RDR_SOCKET` pointing at `socket`.
fn plugin(command: &str, id: &str, netns: &str, socket: &Path, conf: &str) -> Out {
    let mut child = Command::new(PORTMAP)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", "IgnoreUnknown=1")
        .env("CNI_PATH", "/usr/local/libexec/cni")
        .env("KLEENE_RDR_SOCKET", socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The result the bridge plugin gave the container: 10.88.0.5 and fd00::5 on its eth0.
fn prev_result(version: &str) -> Value {
    let mut ips = json!([
        {"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 1},
        {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 1}
    ]);
    if version == "0.4.0" {
        ips[0]["version"] = json!("4");
        ips[1]["version"] = json!("6");
    }
    json!({
        "cniVersion": version,
        "interfaces": [{"name": "cni-podman0", "mac": "58:9c:fc:00:00:01"}, {"name": "eth0", "sandbox": "cni-1"}],
        "ips": ips,
        "dns": {}
    })
}

fn conf(version: &str, mappings: Value) -> Value {
    json!({
        "cniVersion": version,
        "name": "podman",
        "type": "kleene-portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": mappings},
        "prevResult": prev_result(version)
    })
}

fn tcp_udp() -> Value {
    json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}
    ])
}

/// A host with the VNET jail `cni-1` (the container's network) and `web`, gateways on em0.
fn host() -> Host {
    let h = Host::new();
    h.set_gateway6(Some("em0"));
    h.set_jails(json!([
        Host::vnet_jail("cni-1", 7, &["10.88.0.5/16"]),
        Host::vnet_jail("cni-2", 8, &["10.88.0.6/16"]),
        Host::jail("web", 3, &["10.13.37.2"])
    ]));
    h
}

fn error(out: &Out) -> Value {
    assert_ne!(out.code, 0, "{out:?}");
    let e: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert!(e["code"].is_u64() && e["msg"].is_string() && e["details"].is_string(), "{e}");
    e
}

#[test]
fn add_check_del_publish_a_containers_tcp_and_udp_ports_on_both_families() {
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let h = host();
        let _a = h.start_agent();
        let conf = conf(version, tcp_udp()).to_string();
        let add = plugin("ADD", ID, "cni-1", &h.socket(), &conf);
        assert_eq!(add.code, 0, "{add:?}");
        let result: Value = serde_json::from_str(&add.stdout).unwrap();
        assert_eq!(result, prev_result(version), "ADD prints prevResult unchanged");

        let anchor = h.anchor("cni-1").expect("the container's jail has its anchor");
        for rule in [
            "rdr on em0 inet proto tcp from any to (em0) port = 8080 tag kleene:cni-1:8080:80/tcp -> 10.88.0.5 port 80",
            "rdr on em0 inet6 proto tcp from any to (em0) port = 8080 tag kleene:cni-1:8080:80/tcp -> fd00::5 port 80",
            "rdr on em0 inet proto udp from any to (em0) port = 5353 tag kleene:cni-1:5353:53/udp -> 10.88.0.5 port 53",
            "rdr on em0 inet6 proto udp from any to (em0) port = 5353 tag kleene:cni-1:5353:53/udp -> fd00::5 port 53",
        ] {
            assert!(anchor.contains(rule), "{version}: {rule}\n{anchor}");
        }
        let ls = h.ls();
        assert_eq!(ls.len(), 2, "{ls:?}");
        for p in &ls {
            assert_eq!(p["jail"], "cni-1");
            assert_eq!(p["state"], "active", "{p}");
            assert_eq!(p["container"], json!({"id": ID, "network": "podman", "addresses": ["10.88.0.5", "fd00::5"]}));
        }
        let table = h.ctl(&["ls"]);
        assert!(table.stdout.contains("cni-1 (container 3f6940ab5ab4)"), "{table:?}");

        let check = plugin("CHECK", ID, "cni-1", &h.socket(), &conf);
        assert_eq!((check.code, check.stdout.as_str()), (0, ""), "{check:?}");

        let del = plugin("DEL", ID, "cni-1", &h.socket(), &conf);
        assert_eq!((del.code, del.stdout.as_str()), (0, ""), "{del:?}");
        assert!(h.anchor("cni-1").is_none() && h.ls().is_empty());
        let killed = h.killed();
        assert!(killed.iter().any(|k| k == "kleene/cni-1"), "its states are killed: {killed:?}");

        let check = plugin("CHECK", ID, "cni-1", &h.socket(), &conf);
        let e = error(&check);
        assert_eq!(e["code"], 104, "{e}");
        assert_eq!(e["cniVersion"], version);
        assert!(e["details"].as_str().unwrap().contains("8080:80/tcp is not published for container"), "{e}");
    }
}

#[test]
fn the_reach_options_turn_reaches_off_for_the_containers_publications() {
    let h = host();
    let _a = h.start_agent();
    let mut c = conf("1.0.0", json!([{"hostPort": 8080, "containerPort": 80}]));
    c["hairpin"] = json!(false);
    c["localhost"] = json!(false);
    c["networks"] = json!(true);
    let add = plugin("ADD", ID, "cni-1", &h.socket(), &c.to_string());
    assert_eq!(add.code, 0, "{add:?}");
    let ls = h.ls();
    assert_eq!(ls[0]["reach_off"], json!({"hairpin": true, "host": true}), "{ls:?}");
    let anchor = h.anchor("cni-1").unwrap();
    assert!(anchor.contains("rdr on em0 inet proto tcp from any to (em0) port = 8080"), "{anchor}");
    assert!(!anchor.contains("lo0"), "no host access, so no rule on lo0: {anchor}");
    assert_eq!(plugin("CHECK", ID, "cni-1", &h.socket(), &c.to_string()).code, 0);
    assert_eq!(plugin("DEL", ID, "cni-1", &h.socket(), &c.to_string()).code, 0);
    let add = plugin(
        "ADD",
        ID,
        "cni-1",
        &h.socket(),
        &conf("1.0.0", json!([{"hostPort": 8080, "containerPort": 80}])).to_string(),
    );
    assert_eq!(add.code, 0, "{add:?}");
    assert!(h.anchor("cni-1").unwrap().contains("rdr on lo0"), "every reach by default");
}

#[test]
fn host_ip_becomes_an_address_publication_of_its_family() {
    let h = host();
    let _a = h.start_agent();
    let mappings = json!([
        {"hostPort": 8080, "containerPort": 80, "hostIP": "192.0.2.10"},
        {"hostPort": 8443, "containerPort": 443, "protocol": "TCP", "hostIP": "2001:db8::10"},
        {"hostPort": 9000, "containerPort": 9000, "protocol": "sctp", "hostIP": "0.0.0.0"}
    ]);
    let conf = conf("1.0.0", mappings).to_string();
    let add = plugin("ADD", ID, "cni-1", &h.socket(), &conf);
    assert_eq!(add.code, 0, "{add:?}");
    let mut specs: Vec<String> = h.ls().iter().map(|p| p["spec"].as_str().unwrap().to_string()).collect();
    specs.sort();
    assert_eq!(specs, ["192.0.2.10:8080:80/tcp", "9000:9000/sctp", "[2001:db8::10]:8443:443/tcp"]);
    let anchor = h.anchor("cni-1").unwrap();
    assert!(anchor.contains("rdr inet proto tcp from any to 192.0.2.10 port = 8080 tag kleene:cni-1:192.0.2.10:8080:80/tcp -> 10.88.0.5 port 80"), "{anchor}");
    assert!(
        anchor.contains("to 2001:db8::10 port = 8443 tag kleene:cni-1:[2001:db8::10]:8443:443/tcp -> fd00::5 port 443"),
        "{anchor}"
    );
    assert_eq!(plugin("CHECK", ID, "cni-1", &h.socket(), &conf).code, 0);
}

#[test]
fn a_held_host_port_fails_the_add_naming_the_holder_and_publishes_nothing() {
    let h = host();
    let _a = h.start_agent();
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80"]).code, 0);
    let tcp_udp_conf = conf("1.0.0", tcp_udp()).to_string();
    let e = error(&plugin("ADD", ID, "cni-1", &h.socket(), &tcp_udp_conf));
    assert_eq!(e["code"], 100, "{e}");
    assert_eq!(e["msg"], "host port already published");
    assert_eq!(
        e["details"],
        "cannot publish 8080:80/tcp for jail cni-1: the host port is already published by jail web as 8080:80/tcp"
    );
    assert_eq!(h.ls().len(), 1, "the udp mapping was not published either");
    assert!(h.anchor("cni-1").is_none());

    // Another container holding it is named too.
    let udp = conf("1.0.0", json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp"}])).to_string();
    assert_eq!(plugin("ADD", "other", "cni-1", &h.socket(), &udp).code, 0);
    let e = error(&plugin("ADD", ID, "cni-1", &h.socket(), &udp));
    assert_eq!(e["code"], 100);
    assert_eq!(
        e["details"],
        "cannot publish 5353:53/udp for jail cni-1: it is already published there by container other (CNI network \
         podman) in jail cni-1 (kleenectl ls -j cni-1)"
    );
    // And from another container's jail.
    let e = error(&plugin("ADD", ID, "cni-2", &h.socket(), &udp));
    assert_eq!(e["code"], 100);
    assert_eq!(
        e["details"],
        "cannot publish 5353:53/udp for jail cni-2: the host port is already published by container other (CNI \
         network podman) in jail cni-1 as 5353:53/udp"
    );
}

#[test]
fn del_is_idempotent() {
    let h = host();
    let _a = h.start_agent();
    let conf = conf("1.0.0", tcp_udp()).to_string();
    for _ in 0..2 {
        let del = plugin("DEL", "never-added", "cni-1", &h.socket(), &conf);
        assert_eq!((del.code, del.stdout.as_str()), (0, ""), "{del:?}");
    }
    assert_eq!(plugin("ADD", ID, "cni-1", &h.socket(), &conf).code, 0);
    // DEL without CNI_NETNS or prevResult, as a runtime sends it when the jail is gone.
    let bare = json!({"cniVersion": "1.0.0", "name": "podman", "type": "kleene-portmap"}).to_string();
    for _ in 0..2 {
        let del = plugin("DEL", ID, "", &h.socket(), &bare);
        assert_eq!((del.code, del.stdout.as_str()), (0, ""), "{del:?}");
    }
    assert!(h.ls().is_empty());
    // The DEL a runtime sends after a failed ADD succeeds, whatever the ADD refused.
    let mut refused = self::conf("1.0.0", json!([{"hostPort": 0, "containerPort": 80}]));
    refused["hairpin"] = json!("no");
    let add = plugin("ADD", ID, "cni-1", &h.socket(), &refused.to_string());
    assert_eq!(error(&add)["code"], 7);
    let del = plugin("DEL", ID, "cni-1", &h.socket(), &refused.to_string());
    assert_eq!((del.code, del.stdout.as_str()), (0, ""), "{del:?}");
    // Another network's DEL does not touch this network's publications.
    assert_eq!(plugin("ADD", ID, "cni-1", &h.socket(), &conf).code, 0);
    let other = json!({"cniVersion": "1.0.0", "name": "other", "type": "kleene-portmap"}).to_string();
    assert_eq!(plugin("DEL", ID, "cni-1", &h.socket(), &other).code, 0);
    assert_eq!(h.ls().len(), 2);
}

#[test]
fn container_publications_are_kept_across_agent_restarts() {
    let h = host();
    let mut a = h.start_agent();
    let conf = conf("1.0.0", tcp_udp()).to_string();
    assert_eq!(plugin("ADD", ID, "cni-1", &h.socket(), &conf).code, 0);
    a.stop();
    let _a = h.start_agent();
    h.wait_for("active again", || h.ls().iter().all(|p| p["state"] == "active"));
    assert_eq!(h.ls().len(), 2);
    assert_eq!(plugin("CHECK", ID, "cni-1", &h.socket(), &conf).code, 0);
    assert_eq!(plugin("DEL", ID, "cni-1", &h.socket(), &conf).code, 0);
    assert!(h.ls().is_empty());
}

#[test]
fn malformed_configurations_and_environments_are_cni_errors() {
    let h = host();
    let _a = h.start_agent();
    let good = conf("1.0.0", tcp_udp());
    let with = |key: &str, value: Value| {
        let mut c = good.clone();
        c[key] = value;
        c.to_string()
    };
    let mapping = |m: Value| conf("1.0.0", json!([m])).to_string();
    for (stdin, code, details) in [
        ("{".to_string(), 6, "stdin is not JSON"),
        ("[]".to_string(), 6, "stdin is not a JSON object"),
        (json!({"name": "podman"}).to_string(), 7, "cniVersion is missing or not a string"),
        (with("name", json!("pod man")), 7, "invalid CNI network name \"pod man\""),
        (with("name", Value::Null), 7, "name is missing or not a string"),
        (with("prevResult", Value::Null), 7, "no prevResult: kleene-portmap is a chained plugin"),
        (with("socket", json!("relative.sock")), 7, "socket must be an absolute path"),
        (with("hairpin", json!("no")), 7, "hairpin must be true or false; it is \"no\""),
        (with("localhost", json!(0)), 7, "localhost must be true or false; it is 0"),
        (
            mapping(json!({"hostPort": 0, "containerPort": 80})),
            7,
            "runtimeConfig.portMappings[0]: hostPort 0 is not a port",
        ),
        (mapping(json!({"hostPort": 80})), 7, "containerPort is missing"),
        (mapping(json!({"hostPort": 80, "containerPort": 80, "protocol": "icmp"})), 7, "protocol \"icmp\" is not tcp"),
        (
            mapping(json!({"hostPort": 80, "containerPort": 80, "hostIP": "em0"})),
            7,
            "hostIP \"em0\" is not an IP address",
        ),
        (
            mapping(json!({"hostPort": 80, "containerPort": 81, "protocol": "sctp"})),
            7,
            "invalid port spec \"80:81/sctp\"",
        ),
    ] {
        let e = error(&plugin("ADD", ID, "cni-1", &h.socket(), &stdin));
        assert_eq!(e["code"], code, "{stdin}: {e}");
        assert!(e["details"].as_str().unwrap().contains(details), "{stdin}: {e}");
    }
    let conf = good.to_string();
    for (var, value, code, details) in [
        ("CNI_CONTAINERID", "", 4, "CNI_CONTAINERID: invalid container id"),
        ("CNI_CONTAINERID", "a;b", 4, "CNI_CONTAINERID: invalid container id \"a;b\""),
        ("CNI_NETNS", "", 4, "CNI_NETNS (the jail of the container's network): invalid jail name"),
        ("CNI_NETNS", "a b", 4, "invalid jail name \"a b\""),
    ] {
        let (id, netns) = if var == "CNI_CONTAINERID" { (value, "cni-1") } else { (ID, value) };
        let e = error(&plugin("ADD", id, netns, &h.socket(), &conf));
        assert_eq!(e["code"], code, "{var}={value:?}: {e}");
        assert!(e["details"].as_str().unwrap().contains(details), "{var}={value:?}: {e}");
    }
    let e = error(&plugin("TEARDOWN", ID, "cni-1", &h.socket(), &conf));
    assert_eq!((e["code"].as_u64(), e["msg"].as_str()), (Some(4), Some("invalid CNI_COMMAND")));
    let e = error(&plugin("ADD", ID, "jail-that-is-not-running", &h.socket(), &conf));
    assert_eq!(e["code"], 7);
    assert!(e["details"].as_str().unwrap().ends_with("jail jail-that-is-not-running is not running"), "{e}");
    let e = error(&plugin("ADD", ID, "cni-1", &h.socket(), &with("anchor", json!("podman"))));
    assert_eq!(e["code"], 7);
    assert!(e["details"].as_str().unwrap().contains("below the parent anchor \"kleene\""), "{e}");
    assert!(h.ls().is_empty(), "nothing was published");
    assert_eq!(plugin("ADD", ID, "cni-1", &h.socket(), &with("anchor", json!("kleene"))).code, 0);
}

#[test]
fn an_unsupported_version_is_refused_and_version_lists_the_supported() {
    let h = host();
    let e = error(&plugin("ADD", ID, "cni-1", &h.socket(), &conf("0.3.1", tcp_udp()).to_string()));
    assert_eq!(e["code"], 1);
    assert_eq!(e["cniVersion"], "0.3.1");
    assert_eq!(
        e["details"],
        "kleene-portmap supports cniVersion 0.4.0, 1.0.0, 1.1.0; the configuration says \"0.3.1\""
    );
    for version in ["1.0.0", "0.4.0"] {
        for command in ["STATUS", "GC"] {
            let e = error(&plugin(command, ID, "", &h.socket(), &conf(version, json!([])).to_string()));
            assert_eq!(e["code"], 1, "{command} {version}: {e}");
            assert!(e["details"].as_str().unwrap().starts_with(&format!("{command} needs cniVersion 1.1.0")), "{e}");
        }
    }
    for (stdin, version) in [(r#"{"cniVersion":"1.0.0"}"#, "1.0.0"), ("", "1.1.0")] {
        let out = plugin("VERSION", "", "", &h.socket(), stdin);
        assert_eq!(out.code, 0, "{out:?}");
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v, json!({"cniVersion": version, "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}));
    }
}

#[test]
fn an_agent_that_is_down_means_try_again_later_and_not_available() {
    let h = host();
    let conf = conf("1.1.0", tcp_udp()).to_string();
    for command in ["ADD", "DEL", "CHECK", "GC"] {
        let conf = if command == "GC" {
            let mut c: Value = serde_json::from_str(&conf).unwrap();
            c["cni.dev/valid-attachments"] = json!([]);
            c.to_string()
        } else {
            conf.clone()
        };
        let e = error(&plugin(command, ID, "cni-1", &h.socket(), &conf));
        assert_eq!((e["code"].as_u64(), e["msg"].as_str()), (Some(11), Some("try again later")), "{command}: {e}");
        assert!(e["details"].as_str().unwrap().starts_with("cannot reach the agent at "), "{e}");
    }
    let e = error(&plugin("STATUS", "", "", &h.socket(), &conf));
    assert_eq!((e["code"].as_u64(), e["msg"].as_str()), (Some(50), Some("plugin not available")), "{e}");
    let _a = h.start_agent();
    let status = plugin("STATUS", "", "", &h.socket(), &conf);
    assert_eq!((status.code, status.stdout.as_str()), (0, ""), "{status:?}");
}

#[test]
fn the_configurations_socket_wins_over_the_environment() {
    let h = host();
    let _a = h.start_agent();
    let mut c = conf("1.0.0", tcp_udp());
    c["socket"] = json!(h.socket());
    let add = plugin("ADD", ID, "cni-1", Path::new("/nonexistent/kleene-rdr.sock"), &c.to_string());
    assert_eq!(add.code, 0, "{add:?}");
    c["socket"] = json!("/nonexistent/kleene-rdr.sock");
    let e = error(&plugin("DEL", ID, "cni-1", &h.socket(), &c.to_string()));
    assert!(e["details"].as_str().unwrap().contains("/nonexistent/kleene-rdr.sock"), "{e}");
}

#[test]
fn gc_removes_the_publications_of_containers_the_runtime_no_longer_lists() {
    let h = host();
    let _a = h.start_agent();
    let one = |port: u16| conf("1.1.0", json!([{"hostPort": port, "containerPort": 80}])).to_string();
    assert_eq!(plugin("ADD", "kept", "cni-1", &h.socket(), &one(8081)).code, 0);
    assert_eq!(plugin("ADD", "stale", "cni-1", &h.socket(), &one(8082)).code, 0);
    let mut other = conf("1.1.0", json!([{"hostPort": 8083, "containerPort": 80}]));
    other["name"] = json!("other");
    assert_eq!(plugin("ADD", "elsewhere", "cni-1", &h.socket(), &other.to_string()).code, 0);
    assert_eq!(h.ctl(&["publish", "-j", "web", "8084:80"]).code, 0);
    let mut gc = conf("1.1.0", json!([]));
    gc.as_object_mut().unwrap().remove("prevResult");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "kept", "ifname": "eth0"}]);
    let out = plugin("GC", "", "", &h.socket(), &gc.to_string());
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");
    let mut left: Vec<String> = h.ls().iter().map(|p| p["spec"].as_str().unwrap().to_string()).collect();
    left.sort();
    assert_eq!(left, ["8081:80/tcp", "8083:80/tcp", "8084:80/tcp"], "only podman's stale container went");
}

/// The Go toolchain and Debian's libcni source (golang-go, golang-github-appc-cni-dev): CI
/// (`.ci/run`) installs them and sets KLEENE_RDR_REQUIRE_GO=1, so that there their absence
/// fails; elsewhere the test says it is skipped.
fn go_driver(dir: &Path) -> Option<PathBuf> {
    let gopath = "/usr/share/gocode";
    let have = Command::new("go").arg("version").output().is_ok_and(|o| o.status.success())
        && Path::new(gopath).join("src/github.com/containernetworking/cni/libcni").is_dir();
    if !have {
        assert!(
            std::env::var_os("KLEENE_RDR_REQUIRE_GO").is_none(),
            "KLEENE_RDR_REQUIRE_GO is set but go or libcni is missing: apt-get install golang-go \
             golang-github-appc-cni-dev"
        );
        eprintln!("SKIPPED cnitool test: needs go and {gopath} (apt-get install golang-go golang-github-appc-cni-dev)");
        return None;
    }
    let bin = dir.join("cnitool");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cni/cnitool/main.go");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPROXY", "off")
        .output()
        .unwrap();
    assert!(out.status.success(), "go build of the cnitool driver failed:\n{}", String::from_utf8_lossy(&out.stderr));
    Some(bin)
}

#[test]
fn libcni_drives_add_check_del_through_a_chain() {
    let h = host();
    let Some(cnitool) = go_driver(h.root()) else { return };
    let _a = h.start_agent();
    let plugins = h.root().join("cni-bin");
    std::fs::create_dir_all(&plugins).unwrap();
    std::os::unix::fs::symlink(PORTMAP, plugins.join("kleene-portmap")).unwrap();
    let fixed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cni/fixed-result");
    std::os::unix::fs::symlink(fixed, plugins.join("fixed-result")).unwrap();
    for version in ["0.4.0", "1.0.0"] {
        let list = h.root().join(format!("podman-{version}.conflist"));
        let conflist = json!({
            "cniVersion": version,
            "name": "podman",
            "plugins": [
                {"type": "fixed-result"},
                {"type": "kleene-portmap", "capabilities": {"portMappings": true}, "socket": h.socket()}
            ]
        });
        std::fs::write(&list, conflist.to_string()).unwrap();
        let cnitool = |op: &str| {
            let out = Command::new(&cnitool)
                .args([op, list.to_str().unwrap(), ID, "cni-1"])
                .env("CNI_PATH", &plugins)
                .env("CNI_CACHE_DIR", h.root().join("cni-cache"))
                .env(
                    "CAP_ARGS",
                    json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                                            {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]})
                    .to_string(),
                )
                .output()
                .unwrap();
            Out {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        };
        let add = cnitool("add");
        assert_eq!(add.code, 0, "{version}: {add:?}");
        let result: Value = serde_json::from_str(&add.stdout).unwrap();
        assert_eq!(result["ips"][0]["address"], "10.88.0.5/16", "{version}: the fixed result came through: {result}");
        let ls = h.ls();
        assert_eq!(ls.len(), 2, "{version}: {ls:?}");
        assert!(ls.iter().all(|p| p["state"] == "active" && p["ipv4"] == "10.88.0.5"), "{version}: {ls:?}");
        assert_eq!(cnitool("check").code, 0, "{version}");
        let del = cnitool("del");
        assert_eq!(del.code, 0, "{version}: {del:?}");
        assert!(h.ls().is_empty(), "{version}");
        assert!(h.anchor("cni-1").is_none(), "{version}");
        assert_eq!(cnitool("del").code, 0, "{version}: a second DEL succeeds");
    }
}
