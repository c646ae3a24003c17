//! Load: 50 concurrent clients, each doing 100 publish/unpublish pairs (and leaving one
//! publication behind), against one agent with the fake FreeBSD tools. Afterwards the state is
//! exactly the expected set, no request failed, and the agent's memory did not keep growing.
//! Throughput and latency are printed (a measurement, never asserted).

mod common;

use std::time::{Duration, Instant};

use common::Host;
use kleene_rdr::proto::Request;
use serde_json::json;

const CLIENTS: usize = 50;
const PAIRS: usize = 100;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn publish(jail: &str, spec: &str) -> Request {
    Request::Publish {
        jail: jail.parse().unwrap(),
        specs: vec![spec.parse().unwrap()],
        sources: vec![],
        log: false,
        network: None,
        reach_off: Default::default(),
    }
}

#[test]
fn fifty_clients_each_doing_a_hundred_publish_unpublish_pairs() {
    let h = Host::new();
    // Half the clients' jails run (their publishes load pf), half do not (pending).
    let jails: Vec<serde_json::Value> =
        (0..CLIENTS / 2).map(|i| Host::jail(&format!("load{i}"), 100 + i as u32, &[&format!("10.13.{i}.2")])).collect();
    h.set_jails(json!(jails));
    let cfg = h.config("poll_interval_ms: 1000\nmax_connections: 64\nrequest_timeout_ms: 60000\n");
    let agent = h.start_agent_with(&cfg);
    let pid = agent.pid();
    let socket = h.socket();
    let started = Instant::now();
    let mut mid_rss = 0;
    let latencies: Vec<Vec<Duration>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let socket = socket.clone();
                s.spawn(move || {
                    let jail = format!("load{c}");
                    let mut lat = Vec::with_capacity(2 * PAIRS + 1);
                    let mut send = |req: Request| {
                        let t = Instant::now();
                        let r = kleene_rdr::client::request(&socket, &req).unwrap_or_else(|e| panic!("{e}"));
                        lat.push(t.elapsed());
                        assert!(r.ok, "client {c}: {req:?}: {r:?}");
                    };
                    for k in 0..PAIRS {
                        let spec = format!("{}:{}", 10000 + c * 200 + k, 80 + k);
                        send(publish(&jail, &spec));
                        send(Request::Unpublish {
                            jail: jail.parse().unwrap(),
                            specs: vec![spec.parse().unwrap()],
                            all: false,
                        });
                    }
                    send(publish(&jail, &format!("{}", 10000 + c * 200 + 150)));
                    lat
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        mid_rss = rss_kib(pid);
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let elapsed = started.elapsed();
    let end_rss = rss_kib(pid);

    let ls = h.ls();
    let mut got: Vec<(String, String)> =
        ls.iter().map(|v| (v["jail"].as_str().unwrap().to_string(), v["spec"].as_str().unwrap().to_string())).collect();
    got.sort();
    let mut want: Vec<(String, String)> =
        (0..CLIENTS).map(|c| (format!("load{c}"), format!("{0}:{0}/tcp", 10000 + c * 200 + 150))).collect();
    want.sort();
    assert_eq!(got, want, "the state is exactly the expected set");
    for v in &ls {
        let running = v["jail"].as_str().unwrap()[4..].parse::<usize>().unwrap() < CLIENTS / 2;
        assert_eq!(v["state"], if running { "active" } else { "pending" }, "{v}");
    }
    assert!(
        end_rss <= (2 * mid_rss).max(mid_rss + 32 * 1024),
        "the agent's memory kept growing: {mid_rss} KiB early, {end_rss} KiB at the end"
    );

    let mut all: Vec<Duration> = latencies.into_iter().flatten().collect();
    all.sort();
    let n = all.len();
    let pct = |p: f64| all[((n as f64 * p) as usize).min(n - 1)];
    eprintln!(
        "load: {n} requests from {CLIENTS} clients in {:.2?}: {:.0} requests/s; latency p50 {:.2?}, p99 {:.2?}, max {:.2?}; agent RSS {mid_rss} KiB early, {end_rss} KiB at the end",
        elapsed,
        n as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        all[n - 1]
    );
}
