//! The `kleenectl` command line: argument parsing, validation at the edge, exit statuses.
//!
//! Exit status: 0 success; 2 bad usage or invalid input; 1 anything else. Errors are printed
//! as `kleenectl: error: ...` on stderr.

use std::io::Write as _;
use std::net::IpAddr;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::core::conflict;
use crate::core::model::{Cidr, Family, InterfaceName, InvalidValue, JailName};
use crate::core::publication::Publication;
use crate::core::render::{Gateways, Targets, render_uniform};
use crate::core::spec::{PortSpec, SpecError};

/// Bad input from the command line: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

#[derive(Parser, Debug)]
#[command(name = "kleenectl", version, about = "Publish ports of FreeBSD jails with pf rdr rules")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the anchor text for a jail, offline (no agent, no root).
    Render(RenderArgs),
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

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Render(a) => render(a),
    }
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
    let pubs: Vec<Publication> =
        specs.into_iter().map(|s| Publication::new(jail.clone(), s, sources.clone(), a.log, None)).collect();
    let targets = Targets::from_addrs(addrs.iter().copied());
    let families: Vec<Family> = Family::BOTH.into_iter().filter(|f| targets.get(*f).is_some()).collect();
    for (i, p) in pubs.iter().enumerate() {
        let mine = conflict::claims(p, Some(&families), &gateways);
        if let Some(other) =
            pubs[..i].iter().find(|o| conflict::collide(&mine, &conflict::claims(o, Some(&families), &gateways)))
        {
            return Err(
                Usage(format!("{} conflicts with {}: both claim the same host port", p.spec, other.spec)).into()
            );
        }
    }
    let anchor = render_uniform(&pubs, &targets, &gateways);
    for s in anchor.skipped() {
        eprintln!("kleenectl: note: {s}");
    }
    let mut out = std::io::stdout().lock();
    out.write_all(anchor.text().as_bytes()).context("writing to stdout")?;
    Ok(0)
}
