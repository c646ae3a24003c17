//! Who may talk to the agent: the peer's credentials, checked on every connection.
//!
//! The socket's mode is the first line (0600 root, or 0660 with `socket_group`); this check is
//! the second, so a socket whose mode was loosened by hand still opens no hole: uid 0 and members
//! of `socket_group` may use every command, anyone else is refused and logged.

use std::ffi::CString;
use std::os::unix::net::UnixStream;

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

#[cfg(test)]
mod tests {
    use super::*;

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
