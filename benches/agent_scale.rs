//! Scale benchmark of the real `kleenectl agent` against the fake FreeBSD tools (see
//! tests/fake/freebsd.rs, which record every process spawned, the bytes of rule text sent to
//! pfctl and how long each call ran).
//!
//!     cargo bench --features test-fakes --bench agent_scale [-- --jails N --publishes M --churn C --breakdown B]
//!
//! Measures: cold start with N running jails x 10 publications; idle ticks (processes and agent
//! CPU per tick); one jail stopping (with `kleenectl reconcile` and with polling only);
//! `kleenectl publish` round trips, the agent's CPU per publish and the floor of a round trip (a
//! publish answered without pf or the disk; a pfctl process's lifetime beyond its work); the
//! agent's peak RSS, and its RSS over publishes unpublished again; the rule text a single-jail change
//! pushes with per-jail anchors versus a whole-ruleset reload; and reading every publication's
//! traffic counters: `kleenectl stats` and one metrics scrape; where a publish's round trip goes,
//! from the agent's metrics around B more publishes. Prints a report; asserts only that
//! the agent did what it should (every anchor loaded, the stopped jail flushed), never a time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Call, Host};
use kleene_rdr::core::plan::Stored;
use kleene_rdr::core::publication::Publication;
use kleene_rdr::core::render::{Gateways, HostView, Targets, render_uniform};

const PER_JAIL: usize = 10;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn jail_name(i: usize) -> String {
    format!("j{i}")
}

fn jail_ip(i: usize) -> String {
    format!("10.{}.{}.2", 1 + i / 250, i % 250)
}

fn spec(i: usize, k: usize) -> String {
    format!("{}:{}", 10000 + i * PER_JAIL + k, 80 + k)
}

/// CPU time the process has used, in nanoseconds (/proc/PID/schedstat).
fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// CPU time the whole process has used, threads that exited included, in nanoseconds
/// (/proc/PID/stat utime + stime, in clock ticks of 10 ms).
fn process_cpu_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (in parentheses, which may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    (fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)) * 10_000_000
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn is_load(c: &Call) -> bool {
    c.tool == "pfctl" && c.argv.windows(2).any(|w| w == ["-f", "-"])
}

fn is_flush(c: &Call) -> bool {
    c.tool == "pfctl" && c.argv.windows(2).any(|w| w == ["-F", "all"])
}

fn is_kill(c: &Call) -> bool {
    c.tool == "pfctl" && c.argv.first().map(String::as_str) == Some("-k")
}

fn elapsed_us(c: &Call) -> u64 {
    c.elapsed_us
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo bench` passes --bench; anything else unknown is ignored.
    let jails = arg("--jails", 1000);
    let publishes = arg("--publishes", 1000);
    let h = Host::new();
    println!("# agent_scale: {jails} jails x {PER_JAIL} publications, {publishes} publishes\n");

    // Jails running, state on disk, pf empty.
    let list: Vec<serde_json::Value> =
        (0..jails).map(|i| Host::jail(&jail_name(i), 100 + i as u32, &[&jail_ip(i)])).collect();
    h.set_jails(serde_json::json!(list));
    let (store, _) = kleene_rdr::agent::state::Store::open(&h.root().join("db")).unwrap();
    let mut seq = 1;
    for i in 0..jails {
        let jail = jail_name(i).parse().unwrap();
        let pubs: Vec<Stored> = (0..PER_JAIL)
            .map(|k| {
                seq += 1;
                Stored {
                    seq,
                    publication: Publication::new(
                        jail_name(i).parse().unwrap(),
                        spec(i, k).parse().unwrap(),
                        vec![],
                        false,
                        None,
                    ),
                }
            })
            .collect();
        store.save_jail(&jail, &pubs.iter().collect::<Vec<_>>()).unwrap();
    }

    // 1. Cold start.
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = h.config(&format!(
        "poll_interval_ms: 200\nverify_interval_ms: 3600000\nmax_publications: 1000000\nmetrics_listen: \
         127.0.0.1:{metrics_port}\n"
    ));
    let started = Instant::now();
    let mut agent = h.start_agent_with(&cfg);
    h.wait_for("every anchor loaded", || h.calls().iter().filter(|c| is_load(c)).count() >= jails);
    let cold = started.elapsed();
    let pid = agent.pid();
    let calls = h.calls();
    let pfctl = calls.iter().filter(|c| c.tool == "pfctl").count();
    let loads = calls.iter().filter(|c| is_load(c)).count();
    let bytes: u64 = calls.iter().filter(|c| is_load(c)).map(|c| c.stdin_bytes).sum();
    assert_eq!(loads, jails, "one load per jail");
    println!("## 1. Cold start");
    println!("- wall time until every anchor is loaded: {}", ms(cold));
    println!("- pfctl invocations: {pfctl} ({loads} loads, {} others); rule text sent: {bytes} bytes", pfctl - loads);
    println!("- agent peak RSS with {} publications: {} KiB\n", jails * PER_JAIL, status_kib(pid, "VmHWM:"));

    // 2. Idle ticks: 10 s, long enough for the 10 ms resolution of the process's CPU time to
    // matter little (about 0.2 ms per tick at 50 ticks).
    std::thread::sleep(Duration::from_millis(600));
    let before = h.calls().len();
    let (cpu0, main0) = (process_cpu_ns(pid), cpu_ns(pid));
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let (cpu1, main1) = (process_cpu_ns(pid), cpu_ns(pid));
    let wall = t0.elapsed();
    let idle: Vec<Call> = h.calls()[before..].to_vec();
    let ticks = idle.iter().filter(|c| c.tool == "jls").count().max(1);
    let mut per_tool = std::collections::BTreeMap::new();
    for c in &idle {
        *per_tool.entry(c.tool.clone()).or_insert(0) += 1;
    }
    println!("## 2. Idle ticks (poll 200 ms, verification off)");
    println!(
        "- {ticks} ticks in {}: {} processes ({per_tool:?}), {:.1} per tick",
        ms(wall),
        idle.len(),
        idle.len() as f64 / ticks as f64
    );
    println!("- loads during idle ticks: {}", idle.iter().filter(|c| is_load(c)).count());
    println!(
        "- agent CPU per tick, whole process: {:.3} ms (/proc/PID/stat utime + stime, every thread, exited ones \
         included; 10 ms resolution over the window: +-{:.2} ms per tick)",
        (cpu1 - cpu0) as f64 / 1e6 / ticks as f64,
        10.0 / ticks as f64
    );
    println!(
        "- agent CPU per tick, main thread only: {:.3} ms (/proc/PID/schedstat, the figure of earlier rounds)\n",
        main1.saturating_sub(main0) as f64 / 1e6 / ticks as f64
    );

    // 3. One jail stops.
    let mut remaining: Vec<serde_json::Value> = list.clone();
    remaining.remove(0);
    let before = h.calls().len();
    let t0 = Instant::now();
    h.set_jails(serde_json::json!(remaining));
    let out = h.ctl(&["reconcile"]);
    let with_reconcile = t0.elapsed();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(h.anchor(&jail_name(0)).is_none(), "j0 flushed");
    let window: Vec<Call> = h.calls()[before..].to_vec();
    println!("## 3. One jail of {jails} stops");
    println!(
        "- with `kleenectl reconcile`: flushed {} after the jail list changed (client process included)",
        ms(with_reconcile)
    );
    println!(
        "- pfctl: {} flush, {} state kill, {} loads, {} bytes of rule text sent",
        window.iter().filter(|c| is_flush(c)).count(),
        window.iter().filter(|c| is_kill(c)).count(),
        window.iter().filter(|c| is_load(c)).count(),
        window.iter().filter(|c| is_load(c)).map(|c| c.stdin_bytes).sum::<u64>()
    );
    remaining.remove(0);
    let before = h.calls().len();
    let t0 = Instant::now();
    h.set_jails(serde_json::json!(remaining));
    let flush1 = format!("kleene/{}", jail_name(1));
    h.wait_for("j1 flushed by polling", || h.calls()[before..].iter().any(|c| is_flush(c) && c.argv.contains(&flush1)));
    let by_poll = t0.elapsed();
    let window: Vec<Call> = h.calls()[before..].to_vec();
    println!(
        "- polling only (poll 200 ms): flushed {} after the change; {} flush, {} kill, {} loads\n",
        ms(by_poll),
        window.iter().filter(|c| is_flush(c)).count(),
        window.iter().filter(|c| is_kill(c)).count(),
        window.iter().filter(|c| is_load(c)).count()
    );

    // 4. Publish round trips. Each publish's calls are read from where the last read ended, so
    // the bench's own work between two publishes does not grow with the log.
    let (_, mut offset) = h.calls_after(0);
    let mut total = Vec::with_capacity(publishes);
    let mut without_pfctl = Vec::with_capacity(publishes);
    let mut ticks = 0;
    let cpu0 = process_cpu_ns(pid);
    for n in 0..publishes {
        let i = 2 + n % (jails - 2);
        let t0 = Instant::now();
        let out = h.ctl(&["publish", "-j", &jail_name(i), &format!("em1:{}:{}", 10000 + n, 8000 + n)]);
        let d = t0.elapsed();
        assert_eq!(out.code, 0, "{out:?}");
        let (calls, end) = h.calls_after(offset);
        offset = end;
        let pf_us: u64 = calls.iter().filter(|c| c.tool == "pfctl").map(elapsed_us).sum();
        ticks += calls.iter().filter(|c| c.tool == "jls").count();
        total.push(d);
        without_pfctl.push(d.saturating_sub(Duration::from_micros(pf_us)));
    }
    let publish_cpu = process_cpu_ns(pid) - cpu0;
    total.sort();
    without_pfctl.sort();
    println!(
        "## 4. `kleenectl publish` round trip ({publishes} publishes to running jails, client process start to exit)"
    );
    println!("- total: p50 {}, p99 {}", ms(percentile(&total, 0.5)), ms(percentile(&total, 0.99)));
    println!(
        "- excluding pfctl's own run time: p50 {}, p99 {}",
        ms(percentile(&without_pfctl, 0.5)),
        ms(percentile(&without_pfctl, 0.99))
    );
    println!(
        "- agent CPU per publish, whole process: {:.2} ms ({} polls ran meanwhile; their CPU is included)",
        publish_cpu as f64 / 1e6 / publishes as f64,
        ticks
    );
    floor(&h, jails);

    println!("## 5. Memory");
    println!(
        "- agent peak RSS (VmHWM) after all of the above ({} publications): {} KiB; now {} KiB",
        jails * PER_JAIL + publishes,
        status_kib(pid, "VmHWM:"),
        status_kib(pid, "VmRSS:")
    );
    println!(
        "- of the RSS now: {} KiB anonymous (heap, stacks), {} KiB file-backed (the binary and libraries)\n",
        status_kib(pid, "RssAnon:"),
        status_kib(pid, "RssFile:")
    );
    churn(&h, pid, arg("--churn", 1000));
    breakdown(&h, jails, metrics_port, arg("--breakdown", 300));
    counters(&h, jails, pid, metrics_port);
    agent.stop();

    // 6. Rule text pushed per single-jail change.
    println!("## 6. Rule text pushed for one jail's change");
    println!("| jails | per-jail anchor (this project) | whole-ruleset reload (Kleene) |");
    println!("| --- | --- | --- |");
    let gateways = Gateways { inet: Some("em0".parse().unwrap()), inet6: None };
    for n in [10, 100, 1000] {
        let anchor_bytes = |i: usize| {
            let pubs: Vec<Publication> = (0..PER_JAIL)
                .map(|k| {
                    Publication::new(jail_name(i).parse().unwrap(), spec(i, k).parse().unwrap(), vec![], false, None)
                })
                .collect();
            let targets = Targets::from_addrs([jail_ip(i).parse().unwrap()]);
            render_uniform(&pubs, &targets, &HostView::new(gateways.clone()), false).text().len()
        };
        let whole: usize = (0..n).map(anchor_bytes).sum();
        println!("| {n} | {} bytes | {whole} bytes |", anchor_bytes(0));
    }
}

/// One metrics scrape: the whole HTTP answer.
fn scrape(port: u16) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{:.200}", body);
    body
}

/// The value of the sample `name` (with its labels) in a scrape.
fn sample(body: &str, name: &str) -> f64 {
    let line = body.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("{name} scraped"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Where a publish's round trip goes, from the agent's own metrics around `runs` publishes
/// (after the memory sections, where a scrape's peak would count, and before section 7 sets
/// pf's counters, which a load then resets): the
/// publish request in the agent (`kleene_rdr_publish_duration_seconds`: from taking the
/// engine's lock to the answer, pf and the disk included), the pfctl loads in it
/// (`kleene_rdr_pfctl_seconds_total`: from starting pfctl to its answer) and the fake pfctl's
/// own work (calls.log); the rest of the round trip is outside the request.
fn breakdown(h: &Host, jails: usize, metrics_port: u16, runs: usize) {
    if runs == 0 {
        return;
    }
    const REQUEST: &str = "kleene_rdr_publish_duration_seconds_sum";
    const REQUESTS: &str = "kleene_rdr_publish_duration_seconds_count";
    const LOAD_TIME: &str = "kleene_rdr_pfctl_seconds_total{operation=\"load\"}";
    const LOADS: &str = "kleene_rdr_pfctl_calls_total{operation=\"load\"}";
    let before = scrape(metrics_port);
    let (_, mut offset) = h.calls_after(0);
    let mut total = Vec::with_capacity(runs);
    let mut fake_us = 0;
    for n in 0..runs {
        let i = 2 + n % (jails - 2);
        let t0 = Instant::now();
        let out = h.ctl(&["publish", "-j", &jail_name(i), &format!("em1:{}:{}", 30000 + n, 8000 + n)]);
        total.push(t0.elapsed());
        assert_eq!(out.code, 0, "{out:?}");
        let (calls, end) = h.calls_after(offset);
        offset = end;
        fake_us += calls.iter().filter(|c| is_load(c)).map(elapsed_us).sum::<u64>();
    }
    let after = scrape(metrics_port);
    let delta = |name: &str| sample(&after, name) - sample(&before, name);
    assert_eq!(delta(REQUESTS), runs as f64, "one publish request each");
    let per = |seconds: f64| Duration::from_secs_f64(seconds / runs as f64);
    let round_trip = per(total.iter().map(Duration::as_secs_f64).sum());
    let request = per(delta(REQUEST));
    let loads = per(delta(LOAD_TIME));
    let fake = Duration::from_micros(fake_us / runs as u64);
    total.sort();
    println!("## 4b. Where a publish's round trip goes ({runs} more publishes; means, from the agent's metrics)");
    println!("- round trip: mean {} (p50 {})", ms(round_trip), ms(percentile(&total, 0.5)));
    println!("- the publish request in the agent (engine lock to answer, pf and the disk included): {}", ms(request));
    println!(
        "- of which pfctl loads, start to answer: {} ({:.2} loads per publish), the fake pfctl's own work {} of it",
        ms(loads),
        delta(LOADS) / runs as f64,
        ms(fake)
    );
    println!(
        "- so the agent's own work in the request (beside or around pfctl): {}",
        ms(request.saturating_sub(loads))
    );
    println!(
        "- and outside the request (the bench starting the client, the client process, the socket, the agent's \
         connection thread reading the request and writing the answer): {}\n",
        ms(round_trip.saturating_sub(request))
    );
}

/// The part of a publish's round trip that is two processes starting and ending: the round trip
/// of a publish the agent answers without pf or the disk (the client process, the socket and
/// the checks), and a fake pfctl process's lifetime beyond its own work, as the bench sees it.
fn floor(h: &Host, jails: usize) {
    let runs = 200;
    let mut noop = Vec::with_capacity(runs);
    for n in 0..runs {
        let i = 2 + n % (jails - 2);
        let t0 = Instant::now();
        let out = h.ctl(&["publish", "-j", &jail_name(i), &spec(i, 0)]);
        noop.push(t0.elapsed());
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("already published"), "{out:?}");
    }
    noop.sort();
    let (_, mut offset) = h.calls_after(0);
    let mut process = Vec::with_capacity(runs);
    for n in 0..runs {
        let anchor = format!("kleene/{}", jail_name(2 + n % (jails - 2)));
        let t0 = Instant::now();
        let out = Command::new(h.tool("pfctl")).args(["-a", &anchor, "-s", "nat"]).output().unwrap();
        let d = t0.elapsed();
        assert!(out.status.success(), "{out:?}");
        let (calls, end) = h.calls_after(offset);
        offset = end;
        let own: u64 = calls.iter().map(elapsed_us).sum();
        process.push(d.saturating_sub(Duration::from_micros(own)));
    }
    process.sort();
    println!(
        "- floor: a publish answered without pf or the disk (already published: the client process, the \
         socket, the checks): p50 {}, p99 {}",
        ms(percentile(&noop, 0.5)),
        ms(percentile(&noop, 0.99))
    );
    println!(
        "- floor: a fake pfctl process (`-s nat` of one anchor), spawn to reap minus its own work: p50 {}, p99 {}\n",
        ms(percentile(&process, 0.5)),
        ms(percentile(&process, 0.99))
    );
}

/// Section 5b: `cycles` publishes, each unpublished again at once; the
/// agent's RSS should not grow with the number of changes, only with what is published.
fn churn(h: &Host, pid: u32, cycles: usize) {
    if cycles == 0 {
        return;
    }
    let jail = jail_name(1);
    let rss0 = status_kib(pid, "VmRSS:");
    let mut unpublish = Vec::with_capacity(cycles);
    let mut series = Vec::new();
    for n in 0..cycles {
        if n % (cycles / 5).max(1) == 0 {
            series.push(format!("{n}: {} KiB", status_kib(pid, "VmRSS:")));
        }
        let spec = format!("em1:{}:{}", 60000 + n % 5000, 80);
        let out = h.ctl(&["publish", "-j", &jail, &spec]);
        assert_eq!(out.code, 0, "{out:?}");
        let t0 = Instant::now();
        let out = h.ctl(&["unpublish", "-j", &jail, &spec]);
        unpublish.push(t0.elapsed());
        assert_eq!(out.code, 0, "{out:?}");
    }
    unpublish.sort();
    println!("## 5b. Churn: {cycles} publishes each unpublished again (jail {jail})");
    println!(
        "- agent RSS before: {rss0} KiB; after: {} KiB; peak (VmHWM) now {} KiB",
        status_kib(pid, "VmRSS:"),
        status_kib(pid, "VmHWM:")
    );
    println!("- RSS along the way, after N cycles: {}", series.join(", "));
    println!(
        "- `kleenectl unpublish` round trip (plans every publication): p50 {}, p99 {}\n",
        ms(percentile(&unpublish, 0.5)),
        ms(percentile(&unpublish, 0.99))
    );
}

/// Section 7, the traffic counters of every publication: `kleenectl stats` (all jails, then one
/// jail) and one metrics scrape, five times each; pfctl calls, output and the agent's CPU.
fn counters(h: &Host, jails: usize, pid: u32, metrics_port: u16) {
    for i in 0..jails {
        let lines: String =
            (0..PER_JAIL).map(|k| format!("{k} {k}0 {k}000 {k}0 {k}000 0 0 {k} {}\n", k.min(1))).collect();
        h.set_counters(&format!("kleene/{}", jail_name(i)), Some(&lines));
    }
    // The counters' read (`-s labels`) and the current states' (`-v -s rules`).
    let has = |c: &Call, w: &str| c.argv.iter().any(|a| a == w);
    let read = |c: &Call| c.tool == "pfctl" && (has(c, "labels") || (has(c, "-v") && has(c, "rules")));
    let labels = |calls: &[Call]| calls.iter().filter(|c| read(c)).count();
    let mut stats = Vec::new();
    let mut one = Vec::new();
    let mut scrapes = Vec::new();
    let (mut cpu_stats, mut cpu_scrape, mut pf_us, mut calls) = (0, 0, 0, 0);
    let runs = 5;
    let (mut out_bytes, mut body_bytes) = (0, 0);
    for _ in 0..runs {
        let before = h.calls().len();
        let cpu0 = process_cpu_ns(pid);
        let t0 = Instant::now();
        let out = h.ctl(&["stats", "--json"]);
        stats.push(t0.elapsed());
        cpu_stats += process_cpu_ns(pid) - cpu0;
        assert_eq!(out.code, 0, "{out:?}");
        out_bytes = out.stdout.len();
        let window = h.calls()[before..].to_vec();
        calls = labels(&window);
        pf_us = window.iter().filter(|c| read(c)).map(elapsed_us).sum::<u64>();

        let t0 = Instant::now();
        let out = h.ctl(&["stats", "-j", &jail_name(jails - 1)]);
        one.push(t0.elapsed());
        assert_eq!(out.code, 0, "{out:?}");

        let cpu0 = process_cpu_ns(pid);
        let t0 = Instant::now();
        let body = scrape(metrics_port);
        scrapes.push(t0.elapsed());
        cpu_scrape += process_cpu_ns(pid) - cpu0;
        body_bytes = body.len();
    }
    for v in [&mut stats, &mut one, &mut scrapes] {
        v.sort();
    }
    let publications = h.ls().len();
    println!("## 7. Traffic counters ({jails} jails, {publications} publications; five runs each, median)");
    println!(
        "- `kleenectl stats --json`, every jail: {} (client included); {calls} pfctl call(s) (`-a '*' -s labels`, `-a '*' -v -s rules`), the fake \
         pfctl ran {} ms; agent CPU {:.0} ms (all threads, mean of {runs}); {out_bytes} bytes of JSON",
        ms(stats[2]),
        pf_us as f64 / 1000.0,
        cpu_stats as f64 / 1e6 / runs as f64
    );
    println!("- `kleenectl stats -j {}`: {}", jail_name(jails - 1), ms(one[2]));
    println!(
        "- one scrape of /metrics: {} (connect to last byte); agent CPU {:.0} ms (all threads, mean of {runs}); \
         {body_bytes} bytes",
        ms(scrapes[2]),
        cpu_scrape as f64 / 1e6 / runs as f64
    );
    println!(
        "- agent peak RSS (VmHWM) after these reads: {} KiB; now {} KiB ({} KiB anonymous)",
        status_kib(pid, "VmHWM:"),
        status_kib(pid, "VmRSS:"),
        status_kib(pid, "RssAnon:")
    );
    let before = h.calls().len();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(labels(&h.calls()[before..]), 0, "polls never read counters");
    println!("- polls in the second after: no `-s labels`, no `-v -s rules`\n");
}
