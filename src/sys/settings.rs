//! Host settings that decide whether a published port can be reached from the host and from
//! other jails, for `kleenectl check` and `publish`'s warnings:
//!
//! - `sysctl net.pf.filter_local net.inet.ip.forwarding net.inet6.ip6.forwarding` (sysctl(8)):
//!   one `name: value` line per variable it knows; for one it does not know it prints
//!   `sysctl: unknown oid 'NAME'` on stderr, goes on with the others and exits 1. The names are
//!   asked for with their values (not `-n`), so that a missing variable cannot shift the others.
//! - `sockstat -4 -6 -l` (sockstat(1)): the listening Internet sockets, one per line under a
//!   header, `USER COMMAND PID FD PROTO LOCAL-ADDRESS FOREIGN-ADDRESS`, the local address as
//!   `ADDR:PORT` (`*:PORT` for the wildcard, IPv6 without brackets: `::1:8080`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use super::runner::{self, CmdError, Limits};

/// The sysctl variables `check` reads.
pub const SYSCTLS: [&str; 3] = ["net.pf.filter_local", "net.inet.ip.forwarding", "net.inet6.ip6.forwarding"];

/// A listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub command: String,
    pub pid: String,
    /// `tcp4`, `tcp6`, `tcp46`, `udp4`, `sctp4`, ...
    pub proto: String,
    /// `None` for the wildcard address.
    pub addr: Option<IpAddr>,
    pub port: u16,
}

/// The host settings reads.
pub trait Settings: Send + Sync {
    /// The values of `names` that the kernel has (a name it does not know is absent).
    fn sysctls(&self, names: &[&str]) -> Result<BTreeMap<String, String>, CmdError>;
    /// The host's listening Internet sockets.
    fn listening(&self) -> Result<Vec<Listener>, CmdError>;
}

/// sysctl and sockstat at configured paths.
pub struct SettingsTools {
    pub sysctl: PathBuf,
    pub sockstat: PathBuf,
    pub limits: Limits,
}

impl Settings for SettingsTools {
    fn sysctls(&self, names: &[&str]) -> Result<BTreeMap<String, String>, CmdError> {
        let out = runner::run(&self.sysctl, names, None, true, self.limits)?;
        let found = parse_sysctls(&out.stdout, names);
        // Exit 1 with only "unknown oid" complaints is an answer; anything else is a failure.
        let only_unknown = out.stderr.lines().all(|l| l.trim().is_empty() || l.contains("unknown oid"));
        if !out.status.success() && !only_unknown {
            return Err(runner::failure(&self.sysctl, names, out));
        }
        Ok(found)
    }

    fn listening(&self) -> Result<Vec<Listener>, CmdError> {
        let out = runner::run(&self.sockstat, &["-4", "-6", "-l"], None, false, self.limits)?;
        Ok(parse_sockstat(&out.stdout))
    }
}

/// `name: value` lines of sysctl(8), for the names asked for only.
pub fn parse_sysctls(text: &str, names: &[&str]) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| names.contains(n))
        .map(|(n, v)| (n.to_string(), v.trim().to_string()))
        .collect()
}

/// The sockets of `sockstat -l` output (the header and lines it cannot read are skipped). The
/// columns are read from the right, since a command name may hold spaces.
pub fn parse_sockstat(text: &str) -> Vec<Listener> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with("USER ")) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 7 {
            continue;
        }
        let n = cols.len();
        let (proto, local) = (cols[n - 3], cols[n - 2]);
        let Some((addr, port)) = local.rsplit_once(':') else { continue };
        let Ok(port) = port.parse::<u16>() else { continue };
        let addr = match addr.trim_start_matches('[').trim_end_matches(']') {
            "*" => None,
            a => match a.split('%').next().unwrap_or(a).parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => continue,
            },
        };
        out.push(Listener {
            command: cols[1].to_string(),
            pid: cols[2].to_string(),
            proto: proto.to_string(),
            addr,
            port,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_lines() {
        let text = "net.inet.ip.forwarding: 1\nnet.inet6.ip6.forwarding: 0\n";
        let got = parse_sysctls(text, &SYSCTLS);
        assert_eq!(got.len(), 2);
        assert_eq!(got["net.inet.ip.forwarding"], "1");
        assert!(!got.contains_key("net.pf.filter_local"));
    }

    #[test]
    fn sockstat_lines() {
        let text = "USER     COMMAND    PID   FD  PROTO  LOCAL ADDRESS         FOREIGN ADDRESS      \n\
                    root     nginx      812   6   tcp4   127.0.0.1:8080        *:*\n\
                    root     sshd       790   4   tcp6   *:22                  *:*\n\
                    www      my daemon  99    3   udp6   ::1:53                *:*\n\
                    root     syslogd    600   7   udp4   *:*                   *:*\n";
        let l = parse_sockstat(text);
        assert_eq!(l.len(), 3);
        assert_eq!((l[0].command.as_str(), l[0].addr, l[0].port), ("nginx", Some("127.0.0.1".parse().unwrap()), 8080));
        assert_eq!((l[1].proto.as_str(), l[1].addr, l[1].port), ("tcp6", None, 22));
        assert_eq!((l[2].addr, l[2].port), (Some("::1".parse().unwrap()), 53));
    }
}
