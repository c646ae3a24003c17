//! Traffic counters (`kleenectl stats`, the `ls` traffic column) and the Prometheus metrics
//! endpoint, against the real agent and the fake pfctl: the counters pf keeps per labelled rule
//! (`pfctl -s labels`) and the states each rule holds now (`pfctl -v -s rules`), each read in
//! one pfctl call for every anchor and never on a poll; a scrape
//! with a real HTTP client, checked by Prometheus's own `promtool check metrics` when it is
//! installed (CI installs it); and the endpoint's limits against hostile clients.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Host;
use serde_json::Value;

/// `pfctl ... -s labels` calls so far, as their `-a` argument.
fn label_reads(h: &Host) -> Vec<String> {
    h.calls()
        .into_iter()
        .filter(|c| c.tool == "pfctl" && c.argv.iter().any(|a| a == "labels"))
        .map(|c| c.argv.iter().skip_while(|a| *a != "-a").nth(1).cloned().unwrap_or_default())
        .collect()
}

/// `pfctl ... -v -s rules` calls so far (the read of the current states), as their `-a`
/// argument.
fn state_reads(h: &Host) -> Vec<String> {
    h.calls()
        .into_iter()
        .filter(|c| c.tool == "pfctl" && c.argv.iter().any(|a| a == "rules") && c.argv.iter().any(|a| a == "-v"))
        .map(|c| c.argv.iter().skip_while(|a| *a != "-a").nth(1).cloned().unwrap_or_default())
        .collect()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// web on 10.13.37.2 publishing 8080:80 and 8443:443, db publishing 5432 but not running; the
/// counters of web's two pass rules set in the fake pf, 8080:80's holding 1 state now (of the 2
/// it created).
fn web_with_traffic(extra_config: &str) -> (Host, common::Agent, u64) {
    let h = Host::new();
    h.set_jails(serde_json::json!([Host::jail("web", 3, &["10.13.37.2"])]));
    let a = h.start_agent_with(&h.config(extra_config));
    let before = now();
    assert_eq!(h.ctl(&["publish", "-j", "web", "8080:80", "8443:443"]).code, 0);
    assert_eq!(h.ctl(&["publish", "-j", "db", "5432"]).code, 0);
    // One line per filter rule, in the anchor's order: 8080:80's pass rule first.
    let anchor = h.anchor("web").unwrap();
    let first = anchor.lines().find(|l| l.starts_with("pass")).unwrap();
    assert!(first.contains("kleene:web:8080:80/tcp"), "{anchor}");
    h.set_counters("kleene/web", Some("10 7 1700 4 1200 3 500 2 1\n5 1 100 1 100 0 0 1\n"));
    (h, a, before)
}

fn traffic_of<'a>(rows: &'a [Value], spec: &str) -> &'a Value {
    &rows.iter().find(|r| r["spec"] == spec).unwrap_or_else(|| panic!("{spec} in {rows:?}"))["traffic"]
}

#[test]
fn stats_reads_every_anchor_in_one_pfctl_call_and_never_on_a_poll() {
    let (h, _a, before) = web_with_traffic("");
    let out = h.ctl(&["stats", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let rows: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rows.len(), 3);
    let web = traffic_of(&rows, "8080:80/tcp");
    assert_eq!(
        (&web["packets_in"], &web["bytes_in"], &web["packets_out"], &web["bytes_out"], &web["states_created"]),
        (&4.into(), &1200.into(), &3.into(), &500.into(), &2.into())
    );
    assert_eq!(web["states"], 1, "the states 8080:80's rule holds now");
    assert_eq!(traffic_of(&rows, "8443:443/tcp")["states"], 0);
    let since = web["since"].as_u64().unwrap();
    assert!(before <= since && since <= now(), "since {since}: when web's anchor was loaded");
    assert_eq!(traffic_of(&rows, "8443:443/tcp")["bytes_in"], 100);
    let db = rows.iter().find(|r| r["jail"] == "db").unwrap();
    assert_eq!((&db["state"], &db["traffic"]), (&Value::from("pending"), &Value::Null));
    assert_eq!(label_reads(&h), ["*"], "one pfctl call for every anchor");
    assert_eq!(state_reads(&h), ["*"], "and one for every anchor's current states");

    let table = h.ctl(&["stats", "-j", "web"]);
    assert_eq!(table.code, 0, "{table:?}");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>().join(" "),
        "JAIL SPEC PKTS IN BYTES IN PKTS OUT BYTES OUT STATES CREATED SINCE"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[..10], ["web", "8080:80/tcp", "4", "1.2", "KiB", "3", "500", "B", "1", "2"], "{table:?}");
    assert_eq!(label_reads(&h), ["*", "kleene/web"], "one jail: its anchor alone");
    assert_eq!(state_reads(&h), ["*", "kleene/web"]);

    // Polls go on (every 100 ms) without reading counters.
    let reads = (label_reads(&h).len(), state_reads(&h).len());
    let polls = |h: &Host| h.calls().iter().filter(|c| c.argv.iter().any(|a| a == "Anchors")).count();
    let seen = polls(&h);
    h.wait_for("five more polls", || polls(&h) >= seen + 5);
    assert_eq!((label_reads(&h).len(), state_reads(&h).len()), reads, "no poll read counters");
}

#[test]
fn a_pfctl_whose_labels_do_not_follow_anchors_costs_a_call_per_anchor() {
    let (h, _a, _) = web_with_traffic("");
    h.pf_switch("labels-flat", Some(""));
    let out = h.ctl(&["stats", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let rows: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(traffic_of(&rows, "8080:80/tcp")["bytes_in"], 1200, "the same counters");
    assert_eq!(label_reads(&h), ["*", "kleene/web"], "every anchor the first call did not show, read alone");
    assert_eq!(traffic_of(&rows, "8080:80/tcp")["states"], 1);
    assert_eq!(state_reads(&h), ["*"], "`-s rules` follows the anchors");
}

/// What the agent parses, as the fake prints it: pfctl.c's pfctl_print_rule_counters format
/// (FreeBSD 14), unindented under -v, a followed wildcard call's children in their own blocks.
#[test]
fn the_fake_pfctl_prints_rule_counters_as_pfctl_does() {
    let h = Host::new();
    let load = "pass in quick on em0 inet proto tcp from any to 10.13.37.2 port 80 label \"kleene:web:8080:80/tcp\" label \"kleene/web\"\n";
    assert_eq!(h.run_tool("pfctl", &["-a", "kleene/web", "-f", "-"], Some(load)).code, 0);
    h.set_counters("kleene/web", Some("10 7 1700 4 1200 3 500 2 1\n"));
    let out = h.run_tool("pfctl", &["-a", "*", "-v", "-s", "rules"], None);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        "anchor \"kleene/*\" all {\n  \
         [ Evaluations: 0         Packets: 0         Bytes: 0           States: 0     ]\n  \
         [ Inserted: uid 0 pid 0 State Creations: 0     ]\n\
         anchor \"web\" all {\n\
         pass in quick on em0 inet proto tcp from any to 10.13.37.2 port = http flags S/SA keep state label \"kleene:web:8080:80/tcp\" label \"kleene/web\"\n  \
         [ Evaluations: 10        Packets: 7         Bytes: 1700        States: 1     ]\n  \
         [ Inserted: uid 0 pid 0 State Creations: 2     ]\n\
         }\n\
         }\n"
    );
    let labels = h.run_tool("pfctl", &["-a", "kleene/web", "-s", "labels"], None);
    assert_eq!(labels.stdout, "kleene:web:8080:80/tcp kleene/web 10 7 1700 4 1200 3 500 2\n", "eight numbers");
}

#[test]
fn ls_shows_bytes_in_and_a_reload_starts_the_counters_again() {
    let (h, _a, _) = web_with_traffic("");
    let out = h.ctl(&["ls"]);
    assert_eq!(out.code, 0, "{out:?}");
    let head: Vec<&str> = out.stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(head, ["JAIL", "PUBLISHED", "TARGET", "PROTO", "TRAFFIC", "STATE"]);
    let row = out.stdout.lines().find(|l| l.contains("gateway:8080") || l.contains("em0:8080")).unwrap();
    assert!(row.contains("1.2 KiB") && row.ends_with("active"), "{out:?}");
    let db = out.stdout.lines().find(|l| l.starts_with("db")).unwrap();
    assert!(db.contains(" -  ") && db.contains("pending"), "{db}");
    let ls = h.ls();
    assert_eq!(traffic_of(&ls, "8080:80/tcp")["bytes_in"], 1200);
    assert_eq!(traffic_of(&ls, "5432:5432/tcp"), &Value::Null);
    let since = traffic_of(&ls, "8080:80/tcp")["since"].as_u64().unwrap();

    // Another publication reloads web's anchor: pf starts its counters at zero, and `since`
    // says from when.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(h.ctl(&["publish", "-j", "web", "9000"]).code, 0);
    let ls = h.ls();
    let web = traffic_of(&ls, "8080:80/tcp");
    assert_eq!(web["bytes_in"], 0);
    assert!(web["since"].as_u64().unwrap() > since, "{web}");
}

#[test]
fn pf_refusing_the_read_fails_stats_but_not_ls() {
    let (h, _a, _) = web_with_traffic("");
    h.pf_switch("nodev", Some(""));
    let out = h.ctl(&["stats"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("cannot read pf's counters: pfctl: /dev/pf: No such file or directory"), "{out:?}");
    let ls = h.ctl(&["ls"]);
    assert_eq!(ls.code, 0, "{ls:?}");
    assert!(ls.stderr.contains("warning: no traffic counters: cannot read pf's counters"), "{ls:?}");
}

// ---------------------------------------------------------------------------------------------
// The metrics endpoint.

/// A port free on `ip` a moment ago.
fn free_port(ip: &str) -> Option<u16> {
    TcpListener::bind((ip, 0)).ok().map(|l| l.local_addr().unwrap().port())
}

/// The agent of [`web_with_traffic`], serving metrics on `ip`.
fn scraped(ip: &str) -> (Host, common::Agent, SocketAddr) {
    let port = free_port(ip.trim_matches(['[', ']'])).expect("a free port");
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let (h, a, _) = web_with_traffic(&format!("metrics_listen: \"{addr}\"\n"));
    assert!(h.log().contains(&format!("serving metrics on http://{addr}/metrics")), "{}", h.log());
    (h, a, addr)
}

/// Sends `request` and reads the whole answer (the server closes the connection).
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

fn scrape(addr: SocketAddr) -> String {
    let answer = http(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"), "{head}");
    assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())), "{head}");
    body.to_string()
}

/// Runs `promtool check metrics` on `text` when promtool is installed (CI installs it).
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("\n*** promtool not installed: `promtool check metrics` not run here (CI runs it) ***\n");
        return;
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_scrape_shows_each_publications_counters_and_the_agents_health() {
    let (h, _a, addr) = scraped("127.0.0.1");
    let polled = |body: &str| !body.contains("kleene_rdr_last_successful_poll_timestamp_seconds 0\n");
    h.wait_for("a poll", || polled(&scrape(addr)));
    let body = scrape(addr);
    let l = r#"jail="web",spec="8080:80/tcp",protocol="tcp""#;
    for line in [
        format!("kleene_rdr_publication_bytes_total{{{l},direction=\"in\"}} 1200"),
        format!("kleene_rdr_publication_bytes_total{{{l},direction=\"out\"}} 500"),
        format!("kleene_rdr_publication_packets_total{{{l},direction=\"in\"}} 4"),
        format!("kleene_rdr_publication_packets_total{{{l},direction=\"out\"}} 3"),
        format!("kleene_rdr_publication_states_created_total{{{l}}} 2"),
        format!("kleene_rdr_publication_states{{{l}}} 1"),
        "# TYPE kleene_rdr_publication_states gauge".to_string(),
        "kleene_rdr_publications{state=\"active\"} 2".to_string(),
        "kleene_rdr_publications{state=\"pending\"} 1".to_string(),
        "kleene_rdr_jails_running 1".to_string(),
        "kleene_rdr_pf_counters_up 1".to_string(),
        "kleene_rdr_publish_duration_seconds_count 2".to_string(),
        format!("kleene_rdr_build_info{{version=\"{}\",protocol=\"2\"}} 1", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(body.lines().any(|b| b == line), "{line} in:\n{body}");
    }
    assert!(!body.contains("jail=\"db\""), "db has no rules loaded, so no counters");
    let value = |name: &str| -> f64 {
        let line = body.lines().find(|b| b.starts_with(name)).unwrap_or_else(|| panic!("{name} in {body}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("kleene_rdr_pfctl_calls_total{operation=\"load\"}"), 1.0, "web's anchor, once");
    assert!(value("kleene_rdr_pfctl_seconds_total{operation=\"load\"}") > 0.0, "the load took time");
    assert_eq!(value("kleene_rdr_pfctl_seconds_total{operation=\"kill\"}"), 0.0, "nothing killed");
    assert!(value("kleene_rdr_pfctl_calls_total{operation=\"anchors\"}") >= 2.0, "start-up and polls");
    assert!(value("kleene_rdr_pfctl_calls_total{operation=\"labels\"}") >= 1.0);
    assert!(value("kleene_rdr_pfctl_calls_total{operation=\"states\"}") >= 1.0);
    assert!(value("kleene_rdr_last_successful_poll_timestamp_seconds") >= (now() - 60) as f64);
    assert!(value("kleene_rdr_reconcile_duration_seconds_count") >= 1.0);
    promtool_check(&body);

    // The same with curl, when installed: a client Prometheus's own resembles.
    if let Ok(out) = Command::new("curl").args(["-sS", "--max-time", "20", &format!("http://{addr}/metrics")]).output()
    {
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("kleene_rdr_pf_counters_up 1"));
    }
    let (reads, states) = (label_reads(&h), state_reads(&h));
    scrape(addr);
    assert_eq!(label_reads(&h)[reads.len()..], ["*"], "one pfctl call per scrape for the counters");
    assert_eq!(state_reads(&h)[states.len()..], ["*"], "and one for the current states");
}

#[test]
fn the_endpoint_answers_only_get_metrics() {
    let (_h, _a, addr) = scraped("127.0.0.1");
    let status = |req: &[u8]| http(addr, req).lines().next().unwrap_or("").to_string();
    assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), "HTTP/1.1 404 Not Found");
    assert_eq!(status(b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"), "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(status(b"nonsense\r\n\r\n"), "HTTP/1.1 400 Bad Request");
    let head = http(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"), "no body: {head}");
}

#[test]
fn metrics_listen_takes_ipv6_and_a_bad_address_stops_the_agent() {
    if free_port("::1").is_some() {
        let (_h, _a, addr) = scraped("[::1]");
        assert!(scrape(addr).contains("kleene_rdr_pf_counters_up 1"));
    } else {
        eprintln!("\n*** no IPv6 loopback here: metrics_listen on [::1] not tried ***\n");
    }
    let h = Host::new();
    let cfg = h.config("metrics_listen: localhost:9720\n");
    let out = Command::new(common::KLEENECTL).args(["agent", "--check", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metrics_listen") && err.contains("socket address"), "{err}");
}

#[test]
fn hostile_clients_cost_bounded_threads_and_delay_nobody() {
    let (h, _a, addr) = scraped("127.0.0.1");
    // A slowloris client: half a request line, then nothing.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /metr").unwrap();
    // Huge headers: cut off at the cap, never read whole.
    let mut huge = TcpStream::connect(addr).unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut request = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 1 << 20));
    let _ = huge.write_all(&request);
    let mut answer = String::new();
    let _ = huge.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large"), "{answer:.200}");
    // Meanwhile scrapes and the socket are served.
    assert!(scrape(addr).contains("kleene_rdr_pf_counters_up 1"));
    assert_eq!(h.ctl(&["ls"]).code, 0);
    // The slowloris client is cut off at the read deadline (5 s).
    slow.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 Request Timeout"), "{answer}");

    // Many idle connections: past 8, a connection is answered 503 at once; the socket is served.
    let mut turned_away = false;
    let mut idle = Vec::new();
    for _ in 0..12 {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut buf = [0u8; 64];
        if let Ok(n) = (&s).read(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(text.starts_with("HTTP/1.1 503 Service Unavailable"), "{text}");
            turned_away = true;
        }
        idle.push(s);
    }
    assert!(turned_away, "a connection past the limit was answered 503");
    assert_eq!(h.ctl(&["ls", "--json"]).code, 0, "the socket is served while the endpoint is full");
    drop(idle);
    h.wait_for("scrapes served again once the idle connections are gone", || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
        let mut a = String::new();
        let _ = s.read_to_string(&mut a);
        a.starts_with("HTTP/1.1 200 OK")
    });
}
