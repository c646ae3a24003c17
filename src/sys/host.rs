//! The jails and the routing table, through jls(8), jexec(8) and route(8).
//!
//! - `jls --libxo json jid name ip4.addr ip6.addr vnet`: the running jails (jls(8)).
//! - `jexec JID /sbin/ifconfig -a`: the addresses inside a VNET jail's own stack (jexec(8)).
//! - `route -n get default` / `route -n get -inet6 default`: the gateway interface (route(8)).

use std::net::IpAddr;
use std::path::PathBuf;

use crate::core::model::{Family, InterfaceName};

use super::parse::{self, JailInfo, ParseError};
use super::runner::{self, CmdError};

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
    /// The addresses configured inside a VNET jail.
    fn vnet_addrs(&self, jid: u32) -> Result<Vec<IpAddr>, SysError>;
}

/// The host's routing table.
pub trait Routes: Send + Sync {
    /// The interface of the default route of `family`; `None` when there is none.
    fn gateway(&self, family: Family) -> Result<Option<InterfaceName>, SysError>;
}

/// jls and jexec at configured paths.
pub struct JailTools {
    pub jls: PathBuf,
    pub jexec: PathBuf,
}

impl Jails for JailTools {
    fn list(&self) -> Result<Vec<JailInfo>, SysError> {
        let out =
            runner::run(&self.jls, &["--libxo", "json", "jid", "name", "ip4.addr", "ip6.addr", "vnet"], None, false)?;
        Ok(parse::parse_jls(&out.stdout)?)
    }

    fn vnet_addrs(&self, jid: u32) -> Result<Vec<IpAddr>, SysError> {
        let jid = jid.to_string();
        let out = runner::run(&self.jexec, &[&jid, "/sbin/ifconfig", "-a"], None, false)?;
        Ok(parse::parse_ifconfig(&out.stdout))
    }
}

/// route at a configured path.
pub struct RouteTool {
    pub route: PathBuf,
}

impl Routes for RouteTool {
    fn gateway(&self, family: Family) -> Result<Option<InterfaceName>, SysError> {
        let args: &[&str] = match family {
            Family::Inet => &["-n", "get", "default"],
            Family::Inet6 => &["-n", "get", "-inet6", "default"],
        };
        let out = runner::run(&self.route, args, None, true)?;
        if parse::route_not_found(&out.stderr) {
            return Ok(None);
        }
        if !out.status.success() {
            return Err(runner::failure(&self.route, args, out).into());
        }
        Ok(parse::parse_route_interface(&out.stdout))
    }
}
