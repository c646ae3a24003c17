//! The agent's Prometheus metrics: what `GET /metrics` answers (`agent::http` serves it when
//! `metrics_listen` is set), in the Prometheus text exposition format (version 0.0.4).
//!
//! Two kinds of numbers:
//!
//! - the agent's own health, kept in [`HEALTH`] as the engine works (reconcile and publish
//!   latency, drift repairs, the last poll that read everything) and in `sys::counters::PF_CALLS`
//!   (pfctl runs and failures by operation), plus what a scrape asks the engine (publications by
//!   state, jails running);
//! - pf's counters of every publication, read at the scrape exactly as `kleenectl stats` reads
//!   them (one `pfctl -a '*' -s labels` and one `pfctl -a '*' -v -s rules`, without the
//!   engine's lock; `engine::stats`). pf starts a reloaded anchor's counters at zero: they are
//!   exposed as counters, which Prometheus's `rate()` and `increase()` take across such resets,
//!   with the time of the last reset; the states the rules hold now are a gauge.
//!
//! Names follow Prometheus's conventions: the `kleene_rdr_` prefix, base units (seconds,
//! bytes), `_total` on counters, labels for dimensions (`direction`, `operation`, `state`).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::proto;
use crate::sys::counters::{PF_CALLS, PfCalls, PfOp};

use super::api::{PublicationStats, Refusal, Standing};
use super::engine::Engine;

/// Upper bounds of the latency histograms' buckets, in seconds.
const BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A latency histogram: counts per bucket, the sum and the count, updated without a lock.
pub struct Histogram {
    /// Observations per bucket (not cumulative; the last is +Inf).
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Counts one operation that took `d`.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

/// The agent's health, as the engine records it.
pub struct Health {
    /// Reconcile passes that planned and applied (polls that found something to do, requests,
    /// start-up): how long each took.
    pub reconcile: Histogram,
    /// `publish` requests: how long each took, waits for the jail's addresses included.
    pub publish: Histogram,
    /// Anchors found changed or missing when read back, and reloaded.
    pub drift_repairs: AtomicU64,
    /// When the last poll read jails, routes and pf without an error (Unix milliseconds; 0:
    /// none yet).
    last_good_poll_ms: AtomicU64,
}

/// The process's health numbers.
pub static HEALTH: Health = Health::new();

impl Health {
    pub const fn new() -> Health {
        Health {
            reconcile: Histogram::new(),
            publish: Histogram::new(),
            drift_repairs: AtomicU64::new(0),
            last_good_poll_ms: AtomicU64::new(0),
        }
    }

    /// Records a poll that read everything without an error, now.
    pub fn poll_succeeded(&self) {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        self.last_good_poll_ms.store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

/// One scrape at a time: a crowd of scrapers costs one engine lock and one pfctl each in turn.
static SCRAPING: Mutex<()> = Mutex::new(());

/// What `GET /metrics` answers: the engine is locked only to list the publications (as `ls`);
/// pf's counters are read without the lock.
pub fn scrape(engine: &std::sync::Mutex<Engine>) -> Exposition {
    let _one = SCRAPING.lock().unwrap_or_else(|p| p.into_inner());
    let (read, jails) = {
        let e = engine.lock().unwrap_or_else(|p| p.into_inner());
        (e.begin_stats(None), e.jails_seen())
    };
    let standings: Vec<Standing> = read.standings().collect();
    let stats = read.read();
    let head =
        render_head(&Snapshot { standings: &standings, jails, stats: &stats, health: &HEALTH, calls: &PF_CALLS });
    Exposition { head, stats }
}

/// One scrape's answer: the agent's own numbers, rendered at once (a few kilobytes, and they
/// change as the agent works), and pf's counters of every publication, rendered as they are
/// written into the connection (megabytes at thousands of publications; they do not change, so
/// rendering them twice, to count and to write, gives the same bytes).
pub struct Exposition {
    head: Vec<u8>,
    stats: Result<Vec<PublicationStats>, Refusal>,
}

impl Exposition {
    /// The length of the whole text, in bytes (for `Content-Length`).
    pub fn body_len(&self) -> usize {
        let mut count = Count(0);
        let _ = publications(&mut count, &self.stats);
        self.head.len() + count.0
    }

    /// Writes the whole text.
    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        w.write_all(&self.head)?;
        publications(w, &self.stats)
    }
}

/// A writer that only counts what it is given.
struct Count(usize);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Everything one exposition shows.
pub struct Snapshot<'a> {
    pub standings: &'a [Standing],
    pub jails: usize,
    pub stats: &'a Result<Vec<PublicationStats>, Refusal>,
    pub health: &'a Health,
    pub calls: &'a PfCalls,
}

/// A label value, escaped as the exposition format asks (`\`, `"`, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn head(out: &mut dyn Write, name: &str, kind: &str, help: &str) -> io::Result<()> {
    writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}")
}

fn histogram(out: &mut Vec<u8>, name: &str, help: &str, h: &Histogram) {
    let _ = head(out, name, "histogram", help);
    let mut cumulative = 0;
    for (i, bound) in BUCKETS.iter().enumerate() {
        cumulative += h.buckets[i].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    cumulative += h.buckets[BUCKETS.len()].load(Ordering::Relaxed);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
}

/// The exposition text.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = render_head(s);
    let _ = publications(&mut out, s.stats);
    String::from_utf8_lossy(&out).into_owned()
}

/// The exposition text but pf's counters of the publications: the agent's own numbers.
fn render_head(s: &Snapshot<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(8192);
    let _ = head(&mut out, "kleene_rdr_build_info", "gauge", "The agent's version and protocol version; always 1.");
    let _ = writeln!(
        out,
        "kleene_rdr_build_info{{version=\"{}\",protocol=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        proto::VERSION
    );
    let _ = head(&mut out, "kleene_rdr_publications", "gauge", "Publications by state, as kleenectl ls shows them.");
    for standing in [Standing::Active, Standing::Pending, Standing::Conflict, Standing::Error, Standing::Removing] {
        let n = s.standings.iter().filter(|x| **x == standing).count();
        let _ = writeln!(out, "kleene_rdr_publications{{state=\"{}\"}} {n}", standing.word());
    }
    let _ = head(&mut out, "kleene_rdr_jails_running", "gauge", "Jails the last observation saw running.");
    let _ = writeln!(out, "kleene_rdr_jails_running {}", s.jails);
    // pfctl's runs, failures and time, each a counter by operation.
    let by_operation = |out: &mut Vec<u8>, name: &str, help: &str, value: &dyn Fn(PfOp) -> String| {
        let _ = head(out, name, "counter", help);
        for op in PfOp::ALL {
            let _ = writeln!(out, "{name}{{operation=\"{}\"}} {}", op.name(), value(op));
        }
    };
    by_operation(&mut out, "kleene_rdr_pfctl_calls_total", "pfctl runs by operation.", &|op| {
        s.calls.get(op).0.to_string()
    });
    by_operation(
        &mut out,
        "kleene_rdr_pfctl_failures_total",
        "pfctl runs that failed (refused, timed out, unreadable), by operation.",
        &|op| s.calls.get(op).1.to_string(),
    );
    by_operation(
        &mut out,
        "kleene_rdr_pfctl_seconds_total",
        "Time pfctl runs took, from starting pfctl to its answer, by operation.",
        &|op| s.calls.time(op).as_secs_f64().to_string(),
    );
    histogram(
        &mut out,
        "kleene_rdr_reconcile_duration_seconds",
        "How long each reconcile pass that planned and applied took.",
        &s.health.reconcile,
    );
    histogram(
        &mut out,
        "kleene_rdr_publish_duration_seconds",
        "How long each publish request took.",
        &s.health.publish,
    );
    let _ = head(
        &mut out,
        "kleene_rdr_drift_repairs_total",
        "counter",
        "Anchors found changed or missing in pf and reloaded.",
    );
    let _ = writeln!(out, "kleene_rdr_drift_repairs_total {}", s.health.drift_repairs.load(Ordering::Relaxed));
    let _ = head(
        &mut out,
        "kleene_rdr_last_successful_poll_timestamp_seconds",
        "gauge",
        "When the last poll read jails, routes and pf without an error (Unix time; 0: none yet).",
    );
    let ms = s.health.last_good_poll_ms.load(Ordering::Relaxed);
    let _ = writeln!(out, "kleene_rdr_last_successful_poll_timestamp_seconds {}", ms as f64 / 1000.0);
    out
}

/// pf's counters of every publication whose rules are loaded.
fn publications(out: &mut dyn Write, stats: &Result<Vec<PublicationStats>, Refusal>) -> io::Result<()> {
    head(
        out,
        "kleene_rdr_pf_counters_up",
        "gauge",
        "Whether pf's counters could be read at this scrape (1) or not (0).",
    )?;
    let stats = match stats {
        Ok(s) => {
            writeln!(out, "kleene_rdr_pf_counters_up 1")?;
            s
        }
        Err(_) => return writeln!(out, "kleene_rdr_pf_counters_up 0"),
    };
    let rows: Vec<(String, &PublicationStats, crate::sys::counters::RuleCounters)> = stats
        .iter()
        .filter_map(|st| {
            let p = &st.publication;
            let labels = format!(
                "jail=\"{}\",spec=\"{}\",protocol=\"{}\"",
                esc(p.jail.as_str()),
                esc(&p.spec.to_string()),
                p.spec.proto
            );
            st.counters.map(|c| (labels, st, c))
        })
        .collect();
    type Sample<'f> = &'f dyn Fn(&mut dyn Write, &str, &crate::sys::counters::RuleCounters) -> io::Result<()>;
    let family = |out: &mut dyn Write, name: &str, kind: &str, help: &str, f: Sample<'_>| -> io::Result<()> {
        head(out, name, kind, help)?;
        for (labels, _, c) in &rows {
            f(out, labels, c)?;
        }
        Ok(())
    };
    family(
        out,
        "kleene_rdr_publication_packets_total",
        "counter",
        "Packets through a publication's pass rules, by direction, since its anchor was last loaded.",
        &|out, l, c| {
            writeln!(out, "kleene_rdr_publication_packets_total{{{l},direction=\"in\"}} {}", c.packets_in)?;
            writeln!(out, "kleene_rdr_publication_packets_total{{{l},direction=\"out\"}} {}", c.packets_out)
        },
    )?;
    family(
        out,
        "kleene_rdr_publication_bytes_total",
        "counter",
        "Bytes through a publication's pass rules, by direction, since its anchor was last loaded.",
        &|out, l, c| {
            writeln!(out, "kleene_rdr_publication_bytes_total{{{l},direction=\"in\"}} {}", c.bytes_in)?;
            writeln!(out, "kleene_rdr_publication_bytes_total{{{l},direction=\"out\"}} {}", c.bytes_out)
        },
    )?;
    family(
        out,
        "kleene_rdr_publication_states_created_total",
        "counter",
        "States a publication's pass rules created since its anchor was last loaded.",
        &|out, l, c| writeln!(out, "kleene_rdr_publication_states_created_total{{{l}}} {}", c.states_created),
    )?;
    family(
        out,
        "kleene_rdr_publication_states",
        "gauge",
        "States a publication's pass rules hold now.",
        &|out, l, c| writeln!(out, "kleene_rdr_publication_states{{{l}}} {}", c.states),
    )?;
    // One series per jail: its anchor's load resets all its publications' counters together.
    head(
        out,
        "kleene_rdr_jail_counters_reset_timestamp_seconds",
        "gauge",
        "When pf last started the counters of a jail's publications at zero: the last load of its anchor (Unix time).",
    )?;
    let mut since: BTreeMap<&str, f64> = BTreeMap::new();
    for (_, st, _) in &rows {
        let t = st.since.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0.0, |d| d.as_secs_f64());
        since.insert(st.publication.jail.as_str(), t);
    }
    for (jail, t) in since {
        writeln!(out, "kleene_rdr_jail_counters_reset_timestamp_seconds{{jail=\"{}\"}} {t}", esc(jail))?;
    }
    Ok(())
}

/// Times one publish or reconcile.
pub fn timed<T>(h: &Histogram, f: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let r = f();
    h.observe(start.elapsed());
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::api::RefusalKind;
    use crate::core::publication::Publication;
    use crate::sys::counters::RuleCounters;

    fn stats(jail: &str, spec: &str, counters: Option<RuleCounters>) -> PublicationStats {
        PublicationStats {
            publication: Publication::new(jail.parse().unwrap(), spec.parse().unwrap(), vec![], false, None),
            standing: Standing::Active,
            since: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            counters,
            note: None,
        }
    }

    #[test]
    fn histograms_are_cumulative_and_counters_are_labelled() {
        let health = Health::new();
        health.publish.observe(Duration::from_micros(500));
        health.publish.observe(Duration::from_millis(20));
        health.publish.observe(Duration::from_secs(60));
        let calls = PfCalls::new();
        calls.record(PfOp::Load, true, Duration::from_micros(2_500));
        let counters = RuleCounters {
            packets_in: 3,
            bytes_in: 300,
            packets_out: 2,
            bytes_out: 20,
            states_created: 9,
            states: 4,
            ..Default::default()
        };
        let ok = Ok(vec![stats("web", "[2001:db8::1]:443:8443/tcp", Some(counters)), stats("db", "5432", None)]);
        let text = render(&Snapshot {
            standings: &[Standing::Active, Standing::Pending, Standing::Active],
            jails: 4,
            stats: &ok,
            health: &health,
            calls: &calls,
        });
        for line in [
            "kleene_rdr_publish_duration_seconds_bucket{le=\"0.001\"} 1",
            "kleene_rdr_publish_duration_seconds_bucket{le=\"0.025\"} 2",
            "kleene_rdr_publish_duration_seconds_bucket{le=\"30\"} 2",
            "kleene_rdr_publish_duration_seconds_bucket{le=\"+Inf\"} 3",
            "kleene_rdr_publish_duration_seconds_count 3",
            "kleene_rdr_publish_duration_seconds_sum 60.0205",
            "kleene_rdr_publications{state=\"active\"} 2",
            "kleene_rdr_publications{state=\"removing\"} 0",
            "kleene_rdr_jails_running 4",
            "kleene_rdr_pfctl_calls_total{operation=\"load\"} 1",
            "kleene_rdr_pfctl_failures_total{operation=\"load\"} 1",
            "kleene_rdr_pfctl_seconds_total{operation=\"load\"} 0.0025",
            "kleene_rdr_pfctl_seconds_total{operation=\"kill\"} 0",
            "kleene_rdr_last_successful_poll_timestamp_seconds 0",
            "kleene_rdr_publication_bytes_total{jail=\"web\",spec=\"[2001:db8::1]:443:8443/tcp\",protocol=\"tcp\",direction=\"in\"} 300",
            "kleene_rdr_publication_packets_total{jail=\"web\",spec=\"[2001:db8::1]:443:8443/tcp\",protocol=\"tcp\",direction=\"out\"} 2",
            "kleene_rdr_jail_counters_reset_timestamp_seconds{jail=\"web\"} 1700000000",
            "kleene_rdr_publication_states_created_total{jail=\"web\",spec=\"[2001:db8::1]:443:8443/tcp\",protocol=\"tcp\"} 9",
            "# TYPE kleene_rdr_publication_states gauge",
            "kleene_rdr_publication_states{jail=\"web\",spec=\"[2001:db8::1]:443:8443/tcp\",protocol=\"tcp\"} 4",
            "kleene_rdr_pfctl_calls_total{operation=\"states\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert!(!text.contains("jail=\"db\""), "no counters, no samples");
        let failed = Err(Refusal::new(RefusalKind::Pf, "no"));
        let text = render(&Snapshot { standings: &[], jails: 0, stats: &failed, health: &health, calls: &calls });
        assert!(text.contains("kleene_rdr_pf_counters_up 0\n") && !text.contains("kleene_rdr_publication_bytes_total"));
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    /// A scrape's answer, written into the connection, is the rendered text, and its length is
    /// the length written.
    #[test]
    fn a_written_exposition_is_the_rendered_text_and_its_length() {
        let health = Health::new();
        health.reconcile.observe(Duration::from_millis(3));
        let calls = PfCalls::new();
        let counters = RuleCounters { packets_in: 3, bytes_in: 300, states: 4, ..Default::default() };
        let ok = Ok(vec![
            stats("web", "8080:80", Some(counters)),
            stats("db", "5432", None),
            stats("db", "[2001:db8::1]:443:8443/udp", Some(RuleCounters::default())),
        ]);
        let failed = Err(Refusal::new(RefusalKind::Pf, "no"));
        for stats in [ok, failed] {
            let snapshot =
                Snapshot { standings: &[Standing::Active], jails: 2, stats: &stats, health: &health, calls: &calls };
            let text = render(&snapshot);
            let exposition = Exposition { head: render_head(&snapshot), stats: stats.clone() };
            let mut written = Vec::new();
            exposition.write_to(&mut written).unwrap();
            assert_eq!(String::from_utf8(written).unwrap(), text);
            assert_eq!(exposition.body_len(), text.len());
        }
    }
}
