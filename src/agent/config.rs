//! The agent's configuration file (YAML). A missing file means every default; an unknown key or
//! a bad value is an error naming the key and the file.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::core::address::Network;
use crate::core::model::{MAX_ANCHOR_PATH, MAX_PARENT_ANCHOR, is_safe_component};
use crate::core::reach::Reach;

/// Where the agent reads its configuration unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "/usr/local/etc/kleene-rdr.yml";
/// The agent's socket unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/kleene-rdr.sock";

/// Absolute paths of the FreeBSD tools: the host's own binaries, never one a jail controls.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tools {
    pub pfctl: PathBuf,
    pub jls: PathBuf,
    pub route: PathBuf,
    /// Reads the host's addresses (`ifconfig -a`) and a VNET jail's (`ifconfig -j JID -a`: the
    /// host's binary attached to the jail's vnet; FreeBSD 13.3 and later).
    pub ifconfig: PathBuf,
    /// No longer used: earlier releases ran the jail's own ifconfig through jexec(8). Still
    /// accepted, so that their configuration files load unchanged.
    pub jexec: Option<PathBuf>,
    /// Reads net.pf.filter_local and the forwarding switches for `kleenectl check`.
    pub sysctl: PathBuf,
    /// Lists the host's listening sockets (`sockstat -l`) for `kleenectl check`.
    pub sockstat: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            pfctl: "/sbin/pfctl".into(),
            jls: "/usr/sbin/jls".into(),
            route: "/sbin/route".into(),
            ifconfig: "/sbin/ifconfig".into(),
            jexec: None,
            sysctl: "/sbin/sysctl".into(),
            sockstat: "/usr/bin/sockstat".into(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub anchor: String,
    pub poll_interval_ms: u64,
    pub verify_interval_ms: u64,
    pub flush_on_exit: bool,
    pub networks: Vec<Network>,
    pub tools: Tools,
    /// Group whose members may use the socket (mode 0660); none: root only (mode 0600).
    pub socket_group: Option<String>,
    /// Connections served at once; more are answered with an error and closed.
    pub max_connections: usize,
    /// How long a client may take to send its request.
    pub request_timeout_ms: u64,
    pub max_publications_per_jail: usize,
    pub max_publications: usize,
    /// The deadline of every external command, its output included.
    pub tool_timeout_ms: u64,
    /// How often a VNET jail's addresses are read again (also on `reconcile` and a new jid).
    pub vnet_refresh_ms: u64,
    /// Who besides the outside world reaches a published port (each on by default).
    pub reach: Reach,
    /// Where the agent serves Prometheus metrics (`GET /metrics`); none: not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: DEFAULT_SOCKET.into(),
            state_dir: "/var/db/kleene-rdr".into(),
            anchor: "kleene".into(),
            poll_interval_ms: 1000,
            verify_interval_ms: 60000,
            flush_on_exit: false,
            networks: vec![],
            tools: Tools::default(),
            socket_group: None,
            max_connections: 64,
            request_timeout_ms: 5000,
            max_publications_per_jail: 1024,
            max_publications: 65536,
            tool_timeout_ms: 10_000,
            vnet_refresh_ms: 60_000,
            reach: Reach::default(),
            metrics_listen: None,
        }
    }
}

/// Where the agent reads its configuration: the default path, where a missing file means every
/// default, or a path given with `--config`, which must exist (a typo in `kleene_rdr_config`
/// must not run the agent on defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    pub path: PathBuf,
    /// Given explicitly: a missing file is an error.
    pub given: bool,
}

impl ConfigFile {
    /// `--config PATH` when given, else [`DEFAULT_CONFIG`].
    pub fn new(given: Option<PathBuf>) -> ConfigFile {
        match given {
            Some(path) => ConfigFile { path, given: true },
            None => ConfigFile { path: DEFAULT_CONFIG.into(), given: false },
        }
    }

    /// Reads and validates the configuration.
    pub fn load(&self) -> anyhow::Result<Config> {
        if self.given && !self.path.exists() {
            bail!(
                "config file {} does not exist (given with --config): create it (a sample with every key is \
                 /usr/local/etc/kleene-rdr.yml.sample), or leave --config out to use the defaults",
                self.path.display()
            );
        }
        Config::load(&self.path)
    }
}

impl Config {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read config file {}", path.display())),
        };
        Config::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let c: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?
        };
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> anyhow::Result<()> {
        for (key, p) in [("socket", &self.socket), ("state_dir", &self.state_dir)] {
            if !p.is_absolute() {
                bail!("{key}: {} is not an absolute path", p.display());
            }
        }
        for (key, p) in [
            ("tools.pfctl", &self.tools.pfctl),
            ("tools.jls", &self.tools.jls),
            ("tools.route", &self.tools.route),
            ("tools.ifconfig", &self.tools.ifconfig),
            ("tools.sysctl", &self.tools.sysctl),
            ("tools.sockstat", &self.tools.sockstat),
        ] {
            if !p.is_absolute() {
                bail!("{key}: {} is not an absolute path", p.display());
            }
        }
        if !is_safe_component(&self.anchor) || self.anchor.len() > MAX_PARENT_ANCHOR {
            bail!(
                "anchor: {:?} is not a valid anchor name: 1-{MAX_PARENT_ANCHOR} letters, digits, '_', '.' or '-', \
                 starting with a letter or digit (pf takes anchor paths of at most {MAX_ANCHOR_PATH} characters, \
                 and each jail's anchor <anchor>/<jail> must fit)",
                self.anchor
            );
        }
        if self.poll_interval_ms < 10 || self.poll_interval_ms > 3_600_000 {
            bail!("poll_interval_ms: {} is out of range 10-3600000", self.poll_interval_ms);
        }
        if self.verify_interval_ms < self.poll_interval_ms {
            bail!(
                "verify_interval_ms: {} is shorter than poll_interval_ms ({})",
                self.verify_interval_ms,
                self.poll_interval_ms
            );
        }
        if let Some(g) = &self.socket_group {
            let ok = !g.is_empty()
                && g.len() <= 32
                && g.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !ok {
                bail!("socket_group: {g:?} is not a group name");
            }
        }
        for (key, v, lo, hi) in [
            ("max_connections", self.max_connections as u64, 1, 4096),
            ("request_timeout_ms", self.request_timeout_ms, 100, 600_000),
            ("max_publications_per_jail", self.max_publications_per_jail as u64, 1, 1 << 20),
            ("max_publications", self.max_publications as u64, 1, 1 << 24),
            ("tool_timeout_ms", self.tool_timeout_ms, 100, 600_000),
            ("vnet_refresh_ms", self.vnet_refresh_ms, 1000, 86_400_000),
        ] {
            if !(lo..=hi).contains(&v) {
                bail!("{key}: {v} is out of range {lo}-{hi}");
            }
        }
        for (i, n) in self.networks.iter().enumerate() {
            if n.subnet.is_none() && n.subnet6.is_none() {
                bail!("networks[{i}] ({}): give subnet, subnet6 or both", n.name);
            }
            if n.subnet.is_some_and(|s| s.addr().is_ipv6()) {
                bail!("networks[{i}].subnet ({}): an IPv6 prefix belongs in subnet6", n.name);
            }
            if n.subnet6.is_some_and(|s| s.addr().is_ipv4()) {
                bail!("networks[{i}].subnet6 ({}): an IPv4 prefix belongs in subnet", n.name);
            }
            if self.networks[..i].iter().any(|m| m.name == n.name) {
                bail!("networks[{i}]: the network name {} is listed twice", n.name);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_the_documented_example() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        let text = "socket: /var/run/kleene-rdr.sock\nstate_dir: /var/db/kleene-rdr\nanchor: kleene\n\
            poll_interval_ms: 1000\nverify_interval_ms: 60000\nflush_on_exit: false\nnetworks:\n  - name: kleenet\n    \
            subnet: 10.13.37.0/24\n    subnet6: fd00:13:37::/64\ntools:\n  pfctl: /sbin/pfctl\n  jls: /usr/sbin/jls\n  \
            route: /sbin/route\n  jexec: /usr/sbin/jexec\n";
        let c = Config::parse(text).unwrap();
        assert_eq!(c.networks.len(), 1, "the previous release's example loads unchanged");
        assert_eq!(c.tools, Tools { jexec: Some("/usr/sbin/jexec".into()), ..Tools::default() });
    }

    #[test]
    fn the_shipped_sample_is_valid_and_documents_the_defaults() {
        let c = Config::parse(include_str!("../../docs/kleene-rdr.yml.sample")).unwrap();
        assert_eq!(c.networks.len(), 1);
        assert_eq!(Config { networks: vec![], ..c }, Config::default());
    }

    #[test]
    fn metrics_listen_is_an_address_and_port_of_either_family() {
        assert_eq!(Config::default().metrics_listen, None, "off by default");
        for addr in ["127.0.0.1:9720", "[::1]:9720", "0.0.0.0:9100", "[2001:db8::1]:80"] {
            let c = Config::parse(&format!("metrics_listen: \"{addr}\"\n")).unwrap();
            assert_eq!(c.metrics_listen, Some(addr.parse().unwrap()));
        }
        for bad in ["localhost:9720", "127.0.0.1", "9720", "[::1]", "127.0.0.1:99999"] {
            let e = format!("{:#}", Config::parse(&format!("metrics_listen: \"{bad}\"\n")).unwrap_err());
            assert!(e.contains("metrics_listen") && e.contains("socket address"), "{bad}: {e}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        for (text, want) in [
            ("bogus: 1\n", "unknown field `bogus`"),
            ("tools:\n  pfctl: sbin/pfctl\n", "tools.pfctl"),
            ("tools:\n  ipfw: /sbin/ipfw\n", "unknown field `ipfw`"),
            ("anchor: _kleene\n", "anchor:"),
            ("anchor: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n", "must fit"),
            ("tools:\n  ifconfig: ifconfig\n", "tools.ifconfig"),
            ("tool_timeout_ms: 50\n", "tool_timeout_ms: 50 is out of range"),
            ("vnet_refresh_ms: 10\n", "vnet_refresh_ms"),
            ("poll_interval_ms: 0\n", "poll_interval_ms"),
            ("poll_interval_ms: fast\n", "poll_interval_ms"),
            ("verify_interval_ms: 10\n", "verify_interval_ms"),
            ("networks:\n  - name: a\n", "give subnet"),
            ("networks:\n  - name: a\n    subnet: 10.0.0.1/8\n", "host bits are set"),
            ("networks:\n  - name: a\n    subnet: fd00::/64\n", "belongs in subnet6"),
            ("networks:\n  - {name: a, subnet: 10.0.0.0/8}\n  - {name: a, subnet: 10.1.0.0/16}\n", "listed twice"),
            ("socket: relative.sock\n", "socket"),
            ("socket_group: \"wheel;rm\"\n", "socket_group"),
            ("max_connections: 0\n", "max_connections: 0 is out of range"),
            ("request_timeout_ms: 5\n", "request_timeout_ms"),
            ("reach:\n  hairpins: false\n", "unknown field `hairpins`"),
            ("tools:\n  sockstat: sockstat\n", "tools.sockstat"),
            ("max_publications: -1\n", "max_publications"),
        ] {
            let e = format!("{:#}", Config::parse(text).unwrap_err());
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn reach_switches_default_on_and_turn_off_one_by_one() {
        assert_eq!(Config::default().reach, Reach::default());
        let c = Config::parse("reach:\n  hairpin: false\n  loopback: false\n").unwrap();
        assert_eq!(c.reach, Reach { hairpin: false, networks: true, host: true, loopback: false });
    }

    #[test]
    fn a_config_file_given_explicitly_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let typo = dir.path().join("kleene-rdr.ymll");
        let e = format!("{:#}", ConfigFile::new(Some(typo.clone())).load().unwrap_err());
        assert!(e.contains("does not exist (given with --config)") && e.contains("kleene-rdr.ymll"), "{e}");
        std::fs::write(&typo, "poll_interval_ms: 500\n").unwrap();
        assert_eq!(ConfigFile::new(Some(typo)).load().unwrap().poll_interval_ms, 500);
        let default = ConfigFile::new(None);
        assert_eq!((default.path.as_path(), default.given), (Path::new(DEFAULT_CONFIG), false));
    }

    #[test]
    fn missing_file_is_defaults_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Config::load(&dir.path().join("none.yml")).unwrap(), Config::default());
        let p = dir.path().join("bad.yml");
        std::fs::write(&p, "nope: 1\n").unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(e.contains("bad.yml") && e.contains("nope"), "{e}");
    }
}
