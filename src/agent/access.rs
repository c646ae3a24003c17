//! Who may talk to the agent: the peer's credentials, checked on every connection.
//!
//! The socket's mode is the first line (0600 root, or 0660 with `socket_group`); this check is
//! the second, so a socket whose mode was loosened by hand still opens no hole: uid 0 and members
//! of `socket_group` may use every command, anyone else is refused and logged. The refusals are
//! logged through a [`RefusalLog`], so a peer that connects in a loop cannot flood syslog.

use std::collections::HashMap;
use std::ffi::CString;
use std::hash::Hash;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Group, Uid, User};

/// The credentials of a connected peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
}

/// Reads the peer's effective uid and gid (SO_PEERCRED on Linux, getpeereid(3) on the BSDs).
pub fn peer(stream: &UnixStream) -> std::io::Result<Peer> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        let c = getsockopt(stream, PeerCredentials).map_err(std::io::Error::from)?;
        Ok(Peer { uid: c.uid(), gid: c.gid() })
    }
    #[cfg(any(
        target_os = "freebsd",
        target_os = "openbsd",
        target_os = "netbsd",
        target_os = "dragonfly",
        target_os = "macos"
    ))]
    {
        let (uid, gid) = nix::unistd::getpeereid(stream).map_err(std::io::Error::from)?;
        Ok(Peer { uid: uid.as_raw(), gid: gid.as_raw() })
    }
}

/// The access policy: root, plus the members of one group when configured.
#[derive(Debug, Clone)]
pub struct Policy {
    pub group: Option<(String, Gid)>,
}

impl Policy {
    /// Resolves `socket_group`; an unknown group is an error.
    pub fn new(group: Option<&str>) -> anyhow::Result<Policy> {
        let group = match group {
            None => None,
            Some(name) => {
                let g = Group::from_name(name)
                    .map_err(|e| anyhow::anyhow!("socket_group: cannot look up group {name}: {e}"))?
                    .ok_or_else(|| {
                        anyhow::anyhow!("socket_group: there is no group named {name} (pw groupadd {name})")
                    })?;
                Some((name.to_string(), g.gid))
            }
        };
        Ok(Policy { group })
    }

    /// Whether `peer` may use the agent.
    pub fn allows(&self, peer: Peer) -> bool {
        if peer.uid == 0 {
            return true;
        }
        let Some((_, gid)) = &self.group else { return false };
        if peer.gid == gid.as_raw() {
            return true;
        }
        let Ok(Some(user)) = User::from_uid(Uid::from_raw(peer.uid)) else { return false };
        let Ok(name) = CString::new(user.name) else { return false };
        nix::unistd::getgrouplist(&name, Gid::from_raw(peer.gid)).is_ok_and(|gs| gs.contains(gid))
    }

    /// Who is allowed, for messages.
    pub fn describe(&self) -> String {
        match &self.group {
            None => "only root may use the agent".into(),
            Some((name, _)) => format!("only root and members of group {name} may use the agent"),
        }
    }
}

/// What to say when a refusal is logged: how many refusals went unlogged since the last line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unlogged {
    /// Refusals of the same peer since the last line about it.
    pub same: u64,
    /// Refusals of other peers that no line will mention any more: their peer was dropped from
    /// the table, or the table was full.
    pub others: u64,
}

/// Rate limit for the log lines about refused peers: at most one line per peer (e.g. per uid)
/// every `every`, and the refusals in between are counted and reported with the next line.
///
/// The table is bounded: at most `capacity` peers are tracked; when it is full, peers not logged
/// for `every` are dropped (their unreported count moves to [`Unlogged::others`]), and a new
/// peer that still finds no room is counted there too, unlogged.
#[derive(Debug)]
pub struct RefusalLog<K> {
    every: Duration,
    capacity: usize,
    /// Per peer: when it was last logged, and its refusals since.
    peers: HashMap<K, (Instant, u64)>,
    others: u64,
}

impl<K: Eq + Hash> RefusalLog<K> {
    /// A log allowing one line per peer every `every`, tracking at most `capacity` peers.
    pub fn new(every: Duration, capacity: usize) -> RefusalLog<K> {
        RefusalLog { every, capacity: capacity.max(1), peers: HashMap::new(), others: 0 }
    }

    /// Records one refusal of `peer` at `now`: `Some` when a line is to be logged (with what went
    /// unlogged since), `None` when this refusal is only counted.
    pub fn refused(&mut self, peer: K, now: Instant) -> Option<Unlogged> {
        let every = self.every;
        let due = |last: Instant| now.saturating_duration_since(last) >= every;
        if let Some((last, count)) = self.peers.get_mut(&peer) {
            if !due(*last) {
                *count += 1;
                return None;
            }
            let same = std::mem::take(count);
            *last = now;
            return Some(Unlogged { same, others: std::mem::take(&mut self.others) });
        }
        if self.peers.len() >= self.capacity {
            let mut dropped = 0;
            self.peers.retain(|_, (last, count)| {
                let keep = !due(*last);
                if !keep {
                    dropped += *count;
                }
                keep
            });
            self.others += dropped;
            if self.peers.len() >= self.capacity {
                self.others += 1;
                return None;
            }
        }
        self.peers.insert(peer, (now, 0));
        Some(Unlogged { same: 0, others: std::mem::take(&mut self.others) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> impl FnMut(u64) -> Instant {
        let start = Instant::now();
        move |secs| start + Duration::from_secs(secs)
    }

    #[test]
    fn one_line_per_peer_per_interval_with_the_count_of_the_rest() {
        let mut at = clock();
        let mut log = RefusalLog::new(Duration::from_secs(10), 8);
        assert_eq!(log.refused(1001, at(0)), Some(Unlogged::default()), "the first refusal is logged");
        for s in 0..10 {
            assert_eq!(log.refused(1001, at(s)), None, "second {s}: within the interval");
        }
        assert_eq!(log.refused(1002, at(5)), Some(Unlogged::default()), "another peer has its own interval");
        assert_eq!(log.refused(1001, at(10)), Some(Unlogged { same: 10, others: 0 }));
        assert_eq!(log.refused(1001, at(11)), None);
        assert_eq!(log.refused(1001, at(25)), Some(Unlogged { same: 1, others: 0 }), "the count starts again");
        assert_eq!(log.refused(1002, at(40)), Some(Unlogged::default()));
    }

    #[test]
    fn the_table_is_bounded_and_loses_no_count() {
        let mut at = clock();
        let mut log = RefusalLog::new(Duration::from_secs(10), 2);
        assert!(log.refused(1, at(0)).is_some());
        assert_eq!(log.refused(1, at(1)), None);
        assert!(log.refused(2, at(2)).is_some());
        assert_eq!(log.refused(3, at(3)), None, "full of peers logged within the interval");
        assert_eq!(log.peers.len(), 2);
        assert_eq!(log.refused(2, at(4)), None);
        // Peer 1 is due again: it makes room, and its unlogged refusal and peer 3's are reported
        // with the next line.
        assert_eq!(log.refused(3, at(10)), Some(Unlogged { same: 0, others: 2 }));
        assert_eq!(log.peers.len(), 2);
        assert_eq!(log.refused(2, at(12)), Some(Unlogged { same: 1, others: 0 }));
        assert_eq!(log.refused(1, at(12)), None, "peer 1 was dropped and the table is full again");
        assert_eq!(log.refused(3, at(20)), Some(Unlogged { same: 0, others: 1 }));
    }

    #[test]
    fn root_only_by_default() {
        let p = Policy::new(None).unwrap();
        assert!(p.allows(Peer { uid: 0, gid: 0 }));
        assert!(!p.allows(Peer { uid: 1000, gid: 1000 }));
    }

    #[test]
    fn group_members_by_primary_group() {
        let root_group = Group::from_gid(Gid::from_raw(0)).unwrap().unwrap().name;
        let p = Policy::new(Some(&root_group)).unwrap();
        assert!(p.allows(Peer { uid: 4242, gid: 0 }), "primary group matches");
        assert!(!p.allows(Peer { uid: 4242, gid: 4242 }), "an unknown user in another group");
        assert!(Policy::new(Some("no-such-group-kleene")).unwrap_err().to_string().contains("there is no group named"));
    }

    #[test]
    fn peer_credentials_of_a_socket_pair() {
        let (a, _b) = UnixStream::pair().unwrap();
        let p = peer(&a).unwrap();
        assert_eq!(p.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(p.gid, nix::unistd::getegid().as_raw());
    }
}
