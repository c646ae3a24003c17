//! The jails and the routing table, through jls(8), jexec(8) and route(8).
//!
//! - `jls --libxo json jid name ip4.addr ip6.addr vnet`: the running jails (jls(8)); with
//!   `-j NAME`, one jail (`jls: jail "NAME" not found` and exit 1 when it is not running).
//! - `jexec JID /sbin/ifconfig -a`: the addresses inside a VNET jail's own stack (jexec(8)).
//! - `route -n get default` / `route -n get -inet6 default`: the gateway interface (route(8)).

use std::net::IpAddr;
use std::path::PathBuf;

use crate::core::model::{Family, InterfaceName, JailName};

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
    /// The running jail named `name`, if there is one.
    fn get(&self, name: &JailName) -> Result<Option<JailInfo>, SysError>;
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
    pub limits: runner::Limits,
}

impl Jails for JailTools {
    fn list(&self) -> Result<Vec<JailInfo>, SysError> {
        let out = runner::run(
            &self.jls,
            &["--libxo", "json", "jid", "name", "ip4.addr", "ip6.addr", "vnet"],
            None,
            false,
            self.limits,
        )?;
        Ok(parse::parse_jls(&out.stdout)?)
    }

    fn get(&self, name: &JailName) -> Result<Option<JailInfo>, SysError> {
        // jls -j takes an all-digit argument as a jid: such a name is looked up in the full list.
        if name.as_str().bytes().all(|b| b.is_ascii_digit()) {
            return Ok(self.list()?.into_iter().find(|j| &j.name == name));
        }
        let args = ["--libxo", "json", "-j", name.as_str(), "jid", "name", "ip4.addr", "ip6.addr", "vnet"];
        let out = runner::run(&self.jls, &args, None, true, self.limits)?;
        if !out.status.success() {
            if out.stderr.contains("not found") {
                return Ok(None);
            }
            return Err(runner::failure(&self.jls, &args, out).into());
        }
        Ok(parse::parse_jls(&out.stdout)?.into_iter().find(|j| &j.name == name))
    }

    fn vnet_addrs(&self, jid: u32) -> Result<Vec<IpAddr>, SysError> {
        let jid = jid.to_string();
        let out = runner::run(&self.jexec, &[&jid, "/sbin/ifconfig", "-a"], None, false, self.limits)?;
        Ok(parse::parse_ifconfig(&out.stdout))
    }
}

/// route at a configured path.
pub struct RouteTool {
    pub route: PathBuf,
    pub limits: runner::Limits,
}

impl Routes for RouteTool {
    fn gateway(&self, family: Family) -> Result<Option<InterfaceName>, SysError> {
        let args: &[&str] = match family {
            Family::Inet => &["-n", "get", "default"],
            Family::Inet6 => &["-n", "get", "-inet6", "default"],
        };
        let out = runner::run(&self.route, args, None, true, self.limits)?;
        if parse::route_not_found(&out.stderr) {
            return Ok(None);
        }
        if !out.status.success() {
            return Err(runner::failure(&self.route, args, out).into());
        }
        Ok(parse::parse_route_interface(&out.stdout))
    }
}
