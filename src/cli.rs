//! The `kleenectl` command line: argument parsing, validation at the edge, exit statuses.
//!
//! Exit status: 0 success; 2 bad usage or invalid input; 1 anything else. Errors are printed
//! as `kleenectl: error: ...` on stderr.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::agent::config::{ConfigFile, DEFAULT_SOCKET};
use crate::client::{self, ClientError};
use crate::core::conflict;
use crate::core::model::{Cidr, Family, InterfaceName, InvalidValue, JailName, NetworkName};
use crate::core::publication::Publication;
use crate::core::reach::{Reach, ReachOff};
use crate::core::render::{Gateways, HostView, Targets, render_uniform};
use crate::core::spec::{Place, PortSpec, SpecError};
use crate::proto::{AnchorView, ErrorKind, Finding, PublicationView, Request, Response, StatsView};

/// Bad input from the command line: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

#[derive(Parser, Debug)]
#[command(name = "kleenectl", version, about = "Publish ports of FreeBSD jails with pf rdr rules")]
struct Cli {
    /// The agent's socket.
    #[arg(long, global = true, env = "KLEENE_RDR_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// How long to wait for the agent, in seconds (1-3600): connecting, sending and the whole
    /// answer. Default 60; 30 for `reconcile --quiet-if-down`.
    #[arg(
        long,
        global = true,
        env = "KLEENE_RDR_TIMEOUT",
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    timeout: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent in the foreground (started by the rc.d script kleene_rdr).
    Agent {
        /// The configuration file (default /usr/local/etc/kleene-rdr.yml, where a missing file
        /// means every default; a file given here must exist).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Only validate the configuration and the state file, then exit (0 when both are valid).
        #[arg(long)]
        check: bool,
    },
    /// Publish ports of a jail.
    Publish {
        /// The jail's name.
        #[arg(short = 'j', long = "jail", value_name = "JAIL")]
        jail: String,
        /// Only allow these sources (CIDR; repeatable).
        #[arg(long = "source", value_name = "CIDR")]
        sources: Vec<String>,
        /// Log matching packets to pflog0.
        #[arg(long)]
        log: bool,
        /// Target the jail's address in this configured network.
        #[arg(long, value_name = "NAME")]
        network: Option<String>,
        #[command(flatten)]
        reach: ReachFlags,
        /// Port specs: [ADDR:]HOST-PORT[:JAIL-PORT][/PROTO]; ADDR 127.0.0.1, [::1] or localhost
        /// publishes on the host's loopback only.
        #[arg(value_name = "SPEC", required = true)]
        specs: Vec<String>,
    },
    /// Remove publications of a jail.
    Unpublish {
        /// The jail's name.
        #[arg(short = 'j', long = "jail", value_name = "JAIL")]
        jail: String,
        /// Remove every publication of the jail.
        #[arg(long, conflicts_with = "specs")]
        all: bool,
        /// Port specs to remove (matched by their canonical form).
        #[arg(value_name = "SPEC", required_unless_present = "all")]
        specs: Vec<String>,
    },
    /// List publications.
    Ls {
        /// Only this jail's.
        #[arg(short = 'j', long = "jail", value_name = "JAIL")]
        jail: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show pf's traffic counters of each publication: packets and bytes in and out, states
    /// created, and since when (a reload of the jail's anchor starts them at zero).
    Stats {
        /// Only this jail's.
        #[arg(short = 'j', long = "jail", value_name = "JAIL")]
        jail: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the anchors the agent has loaded.
    Rules {
        /// Only this jail's.
        #[arg(short = 'j', long = "jail", value_name = "JAIL")]
        jail: Option<String>,
    },
    /// Check the agent and the host's pf set-up, and say how to fix what is wrong.
    Check,
    /// Ask the agent to re-read jails and routes now (the jail.conf hooks call this).
    Reconcile {
        /// Also read every loaded anchor back and reload what differs.
        #[arg(long)]
        verify: bool,
        /// When the agent gives no answer (down, busy past the deadline, or broken), warn and
        /// exit 0: for exec.poststart / exec.poststop, which must never fail a jail's start or
        /// stop. The deadline is then 30 s unless --timeout is given: jail(8) waits for the hook,
        /// and the agent's own polling catches up with the jail anyway.
        #[arg(long)]
        quiet_if_down: bool,
    },
    /// Print the anchor text for a jail, offline (no agent, no root).
    Render(RenderArgs),
    /// Print a shell completion script (bash, zsh or fish) on stdout.
    Completions {
        /// The shell the script is for.
        #[arg(value_name = "SHELL")]
        shell: crate::completions::Shell,
    },
}

/// The reaches a publication turns off for itself.
#[derive(Args, Debug, Clone, Copy)]
struct ReachFlags {
    /// Other jails do not reach it through the published address and port (no hairpin).
    #[arg(long)]
    no_hairpin: bool,
    /// Jails of the configured networks do not reach the jail's port directly.
    #[arg(long)]
    no_networks: bool,
    /// The host itself (127.0.0.1, ::1, its own address) does not reach it.
    #[arg(long)]
    no_host: bool,
}

impl ReachFlags {
    fn off(self) -> ReachOff {
        ReachOff { hairpin: self.no_hairpin, networks: self.no_networks, host: self.no_host }
    }
}

#[derive(Args, Debug)]
struct RenderArgs {
    /// The jail's name.
    #[arg(short = 'j', long = "jail", value_name = "JAIL")]
    jail: String,
    /// A target address of the jail (one IPv4 and/or one IPv6).
    #[arg(long = "ip", value_name = "ADDR", required = true)]
    ip: Vec<String>,
    /// The gateway interface (both families unless --gateway6 is given).
    #[arg(long, value_name = "IF")]
    gateway: Option<String>,
    /// The IPv6 gateway interface.
    #[arg(long, value_name = "IF")]
    gateway6: Option<String>,
    /// Only allow these sources (CIDR; repeatable).
    #[arg(long = "source", value_name = "CIDR")]
    sources: Vec<String>,
    /// Log matching packets to pflog0.
    #[arg(long)]
    log: bool,
    /// The jail has its own network stack (VNET).
    #[arg(long)]
    vnet: bool,
    /// A configured network's prefix (repeatable), as `networks` in the agent's configuration.
    #[arg(long = "network", value_name = "CIDR")]
    networks: Vec<String>,
    /// An address the host has on a jail network's interface (repeatable), e.g.
    /// bridge0=10.13.37.1, as the agent reads it from ifconfig.
    #[arg(long = "link", value_name = "IF=ADDR")]
    links: Vec<String>,
    /// As `reach.loopback: false` in the configuration: no loopback-only publications.
    #[arg(long)]
    no_loopback: bool,
    #[command(flatten)]
    reach: ReachFlags,
    /// Port specs: [ADDR:]HOST-PORT[:JAIL-PORT][/PROTO].
    #[arg(value_name = "SPEC", required = true)]
    specs: Vec<String>,
}

/// Runs kleenectl and returns its exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kleenectl: error: {e:#}");
            exit_code(&e)
        }
    }
}

/// 2 for invalid input, 1 for everything else.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    let usage = e.chain().any(|c| c.is::<Usage>() || c.is::<SpecError>() || c.is::<InvalidValue>());
    if usage { 2 } else { 1 }
}

/// The deadline of a request when --timeout is not given.
const DEFAULT_TIMEOUT_SECS: u64 = 60;

/// The deadline of `reconcile --quiet-if-down` (the jail.conf hooks) when --timeout is not given.
const HOOK_TIMEOUT_SECS: u64 = 30;

/// Where the agent is, and how long to wait for it.
struct AgentSocket {
    socket: PathBuf,
    timeout: Duration,
}

impl AgentSocket {
    fn request(&self, req: &Request) -> Result<Response, ClientError> {
        client::request_within(&self.socket, req, self.timeout)
    }
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let hook = matches!(cli.command, Command::Reconcile { quiet_if_down: true, .. });
    let default = if hook { HOOK_TIMEOUT_SECS } else { DEFAULT_TIMEOUT_SECS };
    let socket = AgentSocket { socket: cli.socket, timeout: Duration::from_secs(cli.timeout.unwrap_or(default)) };
    match cli.command {
        Command::Agent { config, check: true } => crate::agent::check(&ConfigFile::new(config)).map(|()| 0),
        Command::Agent { config, check: false } => crate::agent::run(&ConfigFile::new(config)).map(|()| 0),
        Command::Render(a) => render(a),
        Command::Completions { shell } => {
            let script = crate::completions::script(shell, <Cli as clap::CommandFactory>::command());
            std::io::stdout().lock().write_all(script.as_bytes()).context("writing to stdout")?;
            Ok(0)
        }
        Command::Publish { jail, sources, log, network, reach, specs } => {
            let jail = check_jail(&jail)?;
            let specs = parse_specs(&specs)?;
            let sources = parse_sources(&sources)?;
            let network = network.as_deref().map(str::parse::<NetworkName>).transpose()?;
            let reach_off = reach.off();
            let r = ask(&socket, &Request::Publish { jail, specs, sources, log, network, reach_off })?;
            Ok(print_message(&r))
        }
        Command::Unpublish { jail, all, specs } => {
            let jail = check_jail(&jail)?;
            let specs = parse_specs(&specs)?;
            let r = ask(&socket, &Request::Unpublish { jail, specs, all })?;
            Ok(print_message(&r))
        }
        Command::Ls { jail, json } => {
            let mut views: Vec<PublicationView> =
                match ask_data(&socket, jail.as_deref(), |jail| Request::List { jail: jail.clone() })? {
                    Ok(v) => v,
                    Err(code) => return Ok(code),
                };
            with_traffic(&socket, jail.as_deref(), &mut views);
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &views)?;
                writeln!(out)?;
            } else {
                out.write_all(ls_table(&views).as_bytes())?;
            }
            Ok(0)
        }
        Command::Stats { jail, json } => {
            let stats: Vec<StatsView> = match ask_data(&socket, jail.as_deref(), |jail| Request::Stats { jail })? {
                Ok(v) => v,
                Err(code) => return Ok(code),
            };
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &stats)?;
                writeln!(out)?;
            } else {
                out.write_all(stats_table(&stats).as_bytes())?;
            }
            Ok(0)
        }
        Command::Rules { jail } => {
            let anchors: Vec<AnchorView> = match ask_data(&socket, jail.as_deref(), |jail| Request::Rules { jail })? {
                Ok(v) => v,
                Err(code) => return Ok(code),
            };
            let mut out = std::io::stdout().lock();
            for a in anchors {
                writeln!(out, "# {}", a.anchor)?;
                out.write_all(a.text.as_bytes())?;
            }
            Ok(0)
        }
        Command::Check => check(&socket),
        Command::Reconcile { verify, quiet_if_down } => match socket.request(&Request::Reconcile { verify }) {
            // Any failure to get an answer (down, past the deadline, a broken connection or
            // answer): a hook must not fail the jail's start or stop, and the agent's polling
            // reconciles the jail anyway. An answer, even a refusal, keeps its status.
            Err(e) if quiet_if_down => {
                eprintln!("kleenectl: warning: {e}");
                Ok(0)
            }
            Err(e) => Err(e.into()),
            Ok(r) => Ok(print_message(&r)),
        },
    }
}

/// Adds pf's counters to `ls`'s publications (one `stats` request). Without them (pf's counters
/// unreadable, an agent of an earlier release) `ls` still lists, and says why on stderr.
fn with_traffic(socket: &AgentSocket, jail: Option<&str>, views: &mut [PublicationView]) {
    let jail = jail.and_then(|j| check_jail(j).ok());
    let stats = match socket.request(&Request::Stats { jail }) {
        Ok(r) if r.ok => r.decode::<Vec<StatsView>>().map_err(|e| format!("the agent's answer: {e}")),
        Ok(r) => Err(r.message),
        Err(e) => Err(e.to_string()),
    };
    match stats {
        Ok(stats) => {
            for v in views.iter_mut() {
                v.traffic = stats.iter().find(|s| s.jail == v.jail && s.spec == v.spec).and_then(|s| s.traffic);
            }
        }
        Err(e) => eprintln!("kleenectl: warning: no traffic counters: {e}"),
    }
}

fn check_jail(jail: &str) -> Result<JailName, InvalidValue> {
    jail.parse()
}

fn ask(socket: &AgentSocket, req: &Request) -> anyhow::Result<Response> {
    Ok(socket.request(req)?)
}

/// A read-only request about one jail or all: validates the jail, asks, and decodes the data;
/// `Err(status)` when the agent refused (its message is printed).
fn ask_data<T: serde::de::DeserializeOwned>(
    socket: &AgentSocket,
    jail: Option<&str>,
    request: impl FnOnce(Option<JailName>) -> Request,
) -> anyhow::Result<Result<T, i32>> {
    let jail = jail.map(check_jail).transpose()?;
    let r = ask(socket, &request(jail))?;
    if !r.ok {
        return Ok(Err(print_message(&r)));
    }
    Ok(Ok(r.decode().context("the agent's answer")?))
}

/// Prints a response's message (stdout when ok, an error on stderr) and returns the exit status.
fn print_message(r: &Response) -> i32 {
    if r.ok {
        if !r.message.is_empty() {
            println!("{}", r.message);
        }
        return 0;
    }
    eprintln!("kleenectl: error: {}", r.message);
    match r.error {
        Some(ErrorKind::Invalid) => 2,
        _ => 1,
    }
}

/// The `ls` table.
pub fn ls_table(views: &[PublicationView]) -> String {
    let mut rows = vec![["JAIL", "PUBLISHED", "TARGET", "PROTO", "TRAFFIC", "STATE"].map(String::from).to_vec()];
    for v in views {
        let place = match &v.spec.place {
            Place::Address(IpAddr::V6(a)) => format!("[{a}]"),
            Place::Address(a) => a.to_string(),
            _ if !v.interfaces.is_empty() => {
                v.interfaces.iter().map(InterfaceName::as_str).collect::<Vec<_>>().join(",")
            }
            Place::Interface(i) => i.to_string(),
            Place::Gateway => "gateway".to_string(),
            Place::Localhost => "localhost".to_string(),
        };
        let targets: Vec<String> = [v.ipv4.map(|a| a.to_string()), v.ipv6.map(|a| format!("[{a}]"))]
            .into_iter()
            .flatten()
            .map(|a| format!("{a}:{}", v.jail_ports))
            .collect();
        let state = match &v.reason {
            Some(r) => format!("{} ({r})", v.state),
            None => v.state.to_string(),
        };
        let jail = match &v.container {
            None => v.jail.to_string(),
            Some(c) => format!("{} (container {})", v.jail, c.id.short()),
        };
        rows.push(vec![
            jail,
            format!("{place}:{}", v.host_ports),
            if targets.is_empty() { format!("-:{}", v.jail_ports) } else { targets.join(",") },
            v.protocol.to_string(),
            v.traffic.map_or_else(|| "-".to_string(), |t| human_bytes(t.bytes_in)),
            state,
        ]);
    }
    table(&rows)
}

/// Rows in columns two spaces apart; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let last = rows[0].len() - 1;
    let widths: Vec<usize> = (0..last).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        for (i, w) in widths.iter().enumerate() {
            out.push_str(&format!("{:<w$}  ", r[i], w = w));
        }
        out.push_str(&r[last]);
        out.push('\n');
    }
    out
}

/// The `stats` table.
pub fn stats_table(stats: &[StatsView]) -> String {
    let head = ["JAIL", "SPEC", "PKTS IN", "BYTES IN", "PKTS OUT", "BYTES OUT", "STATES", "CREATED", "SINCE"];
    let mut rows = vec![head.map(String::from).to_vec()];
    for s in stats {
        let mut row = vec![s.jail.to_string(), s.spec.to_string()];
        match (&s.traffic, &s.note) {
            (Some(t), _) => row.extend([
                t.packets_in.to_string(),
                human_bytes(t.bytes_in),
                t.packets_out.to_string(),
                human_bytes(t.bytes_out),
                t.states.map_or_else(|| "-".to_string(), |n| n.to_string()),
                t.states_created.to_string(),
                utc(t.since),
            ]),
            (None, note) => {
                row.extend(["-", "-", "-", "-", "-", "-"].map(String::from));
                row.push(match note {
                    Some(n) => format!("- ({n})"),
                    None => format!("- ({}: no rules loaded)", s.state),
                });
            }
        }
        rows.push(row);
    }
    table(&rows)
}

/// Bytes for people: `512 B`, `1.5 KiB`, `20.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC), from the proleptic Gregorian calendar.
pub fn utc(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's days_from_civil, inverted).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

fn check(socket: &AgentSocket) -> anyhow::Result<i32> {
    let findings: Vec<Finding> = match socket.request(&Request::Check) {
        Err(e) => vec![Finding {
            ok: false,
            what: "agent".into(),
            detail: e.to_string(),
            fix: Some(match e {
                ClientError::Version { .. } => "install the kleenectl of the agent's release".into(),
                _ => "service kleene_rdr enable && service kleene_rdr start".into(),
            }),
        }],
        Ok(r) if !r.ok => return Ok(print_message(&r)),
        Ok(r) => r.decode().context("the agent's findings")?,
    };
    let mut bad = false;
    for f in &findings {
        println!("{:<4}  {}: {}", if f.ok { "ok" } else { "FAIL" }, f.what, f.detail);
        if let (false, Some(fix)) = (f.ok, &f.fix) {
            println!("      fix: {fix}");
        }
        bad |= !f.ok;
    }
    Ok(if bad { 1 } else { 0 })
}

/// Parses every spec, reporting the first bad one.
pub fn parse_specs(specs: &[String]) -> Result<Vec<PortSpec>, SpecError> {
    specs.iter().map(|s| PortSpec::parse(s)).collect()
}

/// Parses `--source` values.
pub fn parse_sources(sources: &[String]) -> Result<Vec<Cidr>, InvalidValue> {
    sources.iter().map(|s| s.parse()).collect()
}

fn render(a: RenderArgs) -> anyhow::Result<i32> {
    let jail: JailName = a.jail.parse()?;
    let mut addrs = Vec::new();
    for s in &a.ip {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| Usage(format!("invalid --ip {s:?}: expected an IPv4 or IPv6 address of the jail")))?;
        if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
            return Err(
                Usage(format!("invalid --ip {s:?}: a jail's target must be a unicast, non-loopback address")).into()
            );
        }
        if addrs.iter().any(|a: &IpAddr| Family::of(a) == Family::of(&ip)) {
            return Err(Usage(format!(
                "--ip given twice for {}: give at most one IPv4 and one IPv6 address",
                Family::of(&ip).human()
            ))
            .into());
        }
        addrs.push(ip);
    }
    let parse_if = |o: &Option<String>| -> anyhow::Result<Option<InterfaceName>> {
        Ok(match o {
            Some(s) => Some(s.parse::<InterfaceName>()?),
            None => None,
        })
    };
    let gw4 = parse_if(&a.gateway)?;
    let gw6 = parse_if(&a.gateway6)?.or_else(|| gw4.clone());
    let gateways = Gateways { inet: gw4, inet6: gw6 };
    let sources = parse_sources(&a.sources)?;
    let specs = parse_specs(&a.specs)?;
    let networks = parse_sources(&a.networks)?;
    let mut links = Vec::new();
    for l in &a.links {
        let bad = || Usage(format!("invalid --link {l:?}: expected IF=ADDR, e.g. bridge0=10.13.37.1"));
        let (i, addr) = l.split_once('=').ok_or_else(bad)?;
        links.push((i.parse::<InterfaceName>()?, addr.parse::<IpAddr>().map_err(|_| bad())?));
    }
    let reach = Reach { loopback: !a.no_loopback, ..Reach::default() };
    let host = HostView { gateways: gateways.clone(), reach, networks, links };
    let pubs: Vec<Publication> = specs
        .into_iter()
        .map(|s| Publication::new(jail.clone(), s, sources.clone(), a.log, None).with_reach_off(a.reach.off()))
        .collect();
    let targets = Targets::from_addrs(addrs.iter().copied());
    let families: Vec<Family> = Family::BOTH.into_iter().filter(|f| targets.get(*f).is_some()).collect();
    if let Some((other, p)) =
        conflict::first_collision(pubs.iter().map(|p| (p, conflict::claims(p, Some(&families), &gateways, &reach))))
    {
        return Err(Usage(format!("{} conflicts with {}: both claim the same host port", p.spec, other.spec)).into());
    }
    let anchor = render_uniform(&pubs, &targets, &host, a.vnet);
    for s in anchor.skipped() {
        eprintln!("kleenectl: note: {s}");
    }
    for n in anchor.notes() {
        eprintln!("kleenectl: note: {n}");
    }
    let mut out = std::io::stdout().lock();
    out.write_all(anchor.text().as_bytes()).context("writing to stdout")?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::api::{PublicationState, Standing};
    use crate::core::render::Targets;
    use crate::proto::Traffic;

    fn view(spec: &str, standing: Standing, interfaces: &[&str], targets: &[&str]) -> PublicationView {
        PublicationState {
            publication: Publication::new("web".parse().unwrap(), spec.parse().unwrap(), vec![], false, None),
            standing,
            reason: (standing != Standing::Active).then(|| "why".into()),
            interfaces: interfaces.iter().map(|i| i.parse().unwrap()).collect(),
            targets: Targets::from_addrs(targets.iter().map(|a| a.parse().unwrap())),
            reached: Default::default(),
        }
        .into()
    }

    #[test]
    fn the_table_says_where_each_publication_listens_from_its_typed_spec() {
        let mut views = [
            view("8080:80", Standing::Active, &["em0", "em1"], &["10.13.37.2", "fd00::2"]),
            view("8081", Standing::Pending, &[], &[]),
            view("em1:8443:443/udp", Standing::Pending, &[], &[]),
            view("192.0.2.10:8000-8010:9000", Standing::Active, &[], &["10.13.37.2"]),
            view("[2001:db8::10]:80:8080", Standing::Removing, &[], &[]),
        ];
        views[0].traffic = Some(Traffic {
            packets_in: 3,
            bytes_in: 1536,
            packets_out: 2,
            bytes_out: 100,
            states_created: 1,
            states: Some(1),
            evaluations: 1,
            since: 0,
        });
        views[3].traffic = Some(Traffic { bytes_in: 0, ..views[0].traffic.unwrap() });
        assert_eq!(
            ls_table(&views),
            "JAIL  PUBLISHED             TARGET                      PROTO  TRAFFIC  STATE\n\
             web   em0,em1:8080          10.13.37.2:80,[fd00::2]:80  tcp    1.5 KiB  active\n\
             web   gateway:8081          -:8081                      tcp    -        pending (why)\n\
             web   em1:8443              -:443                       udp    -        pending (why)\n\
             web   192.0.2.10:8000-8010  10.13.37.2:9000-9010        tcp    0 B      active\n\
             web   [2001:db8::10]:80     -:8080                      tcp    -        removing (why)\n"
        );
    }

    #[test]
    fn bytes_and_times_are_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(20 * 1024 * 1024), "20.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_040_000), "2026-11-30T12:00:00Z");
    }

    #[test]
    fn the_stats_table_says_why_a_publication_has_no_counters() {
        let traffic = Traffic {
            packets_in: 12,
            bytes_in: 4096,
            packets_out: 10,
            bytes_out: 900,
            states_created: 3,
            states: Some(2),
            evaluations: 5,
            since: 0,
        };
        let row = |spec: &str, state, traffic, note: Option<&str>| StatsView {
            jail: "web".parse().unwrap(),
            spec: spec.parse().unwrap(),
            protocol: crate::core::model::Protocol::Tcp,
            state,
            traffic,
            note: note.map(String::from),
        };
        let t = stats_table(&[
            row("8080:80", crate::proto::State::Active, Some(traffic), None),
            row("8083", crate::proto::State::Active, Some(Traffic { states: None, ..traffic }), None),
            row("8081", crate::proto::State::Pending, None, None),
            row("8082", crate::proto::State::Active, None, Some("cannot read pf's counters of kleene/web: x")),
        ]);
        assert_eq!(
            t,
            "JAIL  SPEC           PKTS IN  BYTES IN  PKTS OUT  BYTES OUT  STATES  CREATED  SINCE\n\
             web   8080:80/tcp    12       4.0 KiB   10        900 B      2       3        1970-01-01T00:00:00Z\n\
             web   8083:8083/tcp  12       4.0 KiB   10        900 B      -       3        1970-01-01T00:00:00Z\n\
             web   8081:8081/tcp  -        -         -         -          -       -        - (pending: no rules loaded)\n\
             web   8082:8082/tcp  -        -         -         -          -       -        - (cannot read pf's counters of kleene/web: x)\n"
        );
    }

    #[test]
    fn a_container_publication_shows_its_short_id_beside_its_jail() {
        let mut v = view("8080:80", Standing::Active, &["em0"], &["10.88.0.5"]);
        v.container = Some(crate::core::container::Container {
            id: "3f6940ab5ab43bc522569d15b23f8c1bbde1d7678b080398506924fc01d72755".parse().unwrap(),
            network: "podman".parse().unwrap(),
            addresses: vec!["10.88.0.5".parse().unwrap()],
        });
        assert_eq!(
            ls_table(&[v]),
            "JAIL                          PUBLISHED  TARGET        PROTO  TRAFFIC  STATE\n\
             web (container 3f6940ab5ab4)  em0:8080   10.88.0.5:80  tcp    -        active\n"
        );
    }
}
