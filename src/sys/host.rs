//! The jails, the host's interfaces and the routing table, through jls(8), ifconfig(8) and
//! route(8): always the host's own binaries, never one a jail controls.
//!
//! - `jls --libxo json jid name ip4.addr ip6.addr vnet`: the running jails (jls(8)); with
//!   `-j NAME`, one jail (`jls: jail "NAME" not found`, or `... is dying` for a jail being
//!   removed, and exit 1 when it is not running).
//! - `ifconfig -a`: the host's own addresses; `ifconfig -j JID -a`: the addresses inside a VNET
//!   jail's network stack, read by the host's ifconfig attached to the jail's vnet (FreeBSD 13.3
//!   and later). A jail's root can configure as many addresses as it likes, so this output is
//!   capped tighter than the others.
//! - `route -n get default` / `route -n get -inet6 default`: the gateway interface (route(8)).
//!   Only route's own "not found" answer means "no default route"; FreeBSD 14 prints it with
//!   exit status 0.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::core::model::{Family, InterfaceName, JailName};

use super::later::Later;
use super::memo::Memo;
use super::parse::{self, HostInterfaces, JailInfo, ParseError};
use super::runner::{self, Cmd, CmdError, Limits};

/// A tool that failed, or printed what could not be understood.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SysError {
    #[error("{0}")]
    Cmd(#[from] CmdError),
    #[error("{0}")]
    Parse(#[from] ParseError),
}

/// The running jails.
pub trait Jails: Send + Sync {
    /// Every running jail.
    fn list(&self) -> Result<Vec<JailInfo>, SysError>;
    /// The running jail named `name`, if there is one (a dying jail is not running).
    fn get(&self, name: &JailName) -> Result<Option<JailInfo>, SysError>;
    /// [`Jails::list`], to run together with other reads
    /// ([`run_together`](super::later::run_together)), shared: the same list (the same `Arc`)
    /// when jls printed the same as for the last list, where an implementation can tell.
    fn list_later(&self) -> Later<'_, Result<Arc<Vec<JailInfo>>, SysError>> {
        Later::known(self.list().map(Arc::new))
    }
    /// [`Jails::get`], to run together with other reads.
    fn get_later<'a>(&'a self, name: &'a JailName) -> Later<'a, Result<Option<JailInfo>, SysError>> {
        Later::known(self.get(name))
    }
}

/// Addresses configured on interfaces: the host's, and those inside a VNET jail.
pub trait Interfaces: Send + Sync {
    /// The host's interfaces and own addresses.
    fn host_addrs(&self) -> Result<HostInterfaces, SysError>;
    /// The addresses inside the network stack of the VNET jail `jid`.
    fn jail_addrs(&self, jid: u32) -> Result<Vec<IpAddr>, SysError>;
    /// [`Interfaces::host_addrs`], to run together with other reads.
    fn host_addrs_later(&self) -> Later<'_, Result<HostInterfaces, SysError>> {
        Later::known(self.host_addrs())
    }
}

/// The host's routing table.
pub trait Routes: Send + Sync {
    /// The interface of the default route of `family`; `None` when there is none.
    fn gateway(&self, family: Family) -> Result<Option<InterfaceName>, SysError>;
    /// [`Routes::gateway`], to run together with other reads.
    fn gateway_later(&self, family: Family) -> Later<'_, Result<Option<InterfaceName>, SysError>> {
        Later::known(self.gateway(family))
    }
}

/// jls at a configured path.
pub struct JailTools {
    pub jls: PathBuf,
    pub limits: Limits,
    /// The last list's output and jails.
    last: Memo<Vec<JailInfo>>,
}

impl JailTools {
    pub fn new(jls: PathBuf, limits: Limits) -> JailTools {
        JailTools { jls, limits, last: Memo::default() }
    }
}

const JLS_PARAMS: [&str; 5] = ["jid", "name", "ip4.addr", "ip6.addr", "vnet"];

/// `jls --libxo json PARAMS...`.
const JLS_LIST: [&str; 7] =
    ["--libxo", "json", JLS_PARAMS[0], JLS_PARAMS[1], JLS_PARAMS[2], JLS_PARAMS[3], JLS_PARAMS[4]];

impl Jails for JailTools {
    fn list(&self) -> Result<Vec<JailInfo>, SysError> {
        self.list_later().get().map(Arc::unwrap_or_clone)
    }

    fn get(&self, name: &JailName) -> Result<Option<JailInfo>, SysError> {
        self.get_later(name).get()
    }

    fn list_later(&self) -> Later<'_, Result<Arc<Vec<JailInfo>>, SysError>> {
        Later::command(Cmd::new(&self.jls, &JLS_LIST, self.limits), |answer| {
            Ok(self.last.parse(answer?.stdout, parse::parse_jls)?)
        })
    }

    fn get_later<'a>(&'a self, name: &'a JailName) -> Later<'a, Result<Option<JailInfo>, SysError>> {
        // jls -j takes an all-digit argument as a jid: such a name is looked up in the full list.
        if name.as_str().bytes().all(|b| b.is_ascii_digit()) {
            return Later::command(Cmd::new(&self.jls, &JLS_LIST, self.limits), move |answer| {
                Ok(parse::parse_jls(&answer?.stdout)?.into_iter().find(|j| &j.name == name))
            });
        }
        let args: Vec<&str> = ["--libxo", "json", "-j", name.as_str()].into_iter().chain(JLS_PARAMS).collect();
        let cmd = Cmd::new(&self.jls, &args, self.limits).judged();
        Later::command(cmd, move |answer| {
            let out = answer?;
            if !out.status.success() {
                if parse::jail_not_running(&out.stderr) {
                    return Ok(None);
                }
                return Err(runner::failure(&self.jls, &args, out).into());
            }
            Ok(parse::parse_jls(&out.stdout)?.into_iter().find(|j| &j.name == name))
        })
    }
}

/// ifconfig at a configured path.
pub struct IfconfigTool {
    pub ifconfig: PathBuf,
    /// For the host's own interfaces.
    pub limits: Limits,
    /// For a VNET jail's interfaces, which the jail's root may multiply at will.
    pub jail_limits: Limits,
}

impl Interfaces for IfconfigTool {
    fn host_addrs(&self) -> Result<HostInterfaces, SysError> {
        self.host_addrs_later().get()
    }

    fn jail_addrs(&self, jid: u32) -> Result<Vec<IpAddr>, SysError> {
        let jid = jid.to_string();
        let out = runner::run(&self.ifconfig, &["-j", &jid, "-a"], None, false, self.jail_limits)?;
        Ok(parse::parse_ifconfig(&out.stdout))
    }

    fn host_addrs_later(&self) -> Later<'_, Result<HostInterfaces, SysError>> {
        Later::command(Cmd::new(&self.ifconfig, &["-a"], self.limits), |answer| {
            Ok(parse::parse_host_interfaces(&answer?.stdout))
        })
    }
}

/// route at a configured path.
pub struct RouteTool {
    pub route: PathBuf,
    pub limits: Limits,
}

impl Routes for RouteTool {
    fn gateway(&self, family: Family) -> Result<Option<InterfaceName>, SysError> {
        self.gateway_later(family).get()
    }

    fn gateway_later(&self, family: Family) -> Later<'_, Result<Option<InterfaceName>, SysError>> {
        let args: &'static [&'static str] = match family {
            Family::Inet => &["-n", "get", "default"],
            Family::Inet6 => &["-n", "get", "-inet6", "default"],
        };
        Later::command(Cmd::new(&self.route, args, self.limits).judged(), move |answer| {
            let out = answer?;
            if parse::route_not_found(&out.stderr) {
                return Ok(None);
            }
            if !out.status.success() {
                return Err(runner::failure(&self.route, args, out).into());
            }
            match parse::parse_route_interface(&out.stdout) {
                Some(i) => Ok(Some(i)),
                None => Err(ParseError(format!(
                    "`{} {}` printed no valid `interface:` line (and did not say there is no such route)",
                    self.route.display(),
                    args.join(" ")
                ))
                .into()),
            }
        })
    }
}
