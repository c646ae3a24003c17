//! The agent's log: lines on stderr, which the rc.d script hands to syslog (daemon -S).

/// Something the operator may want to know.
pub fn info(msg: &str) {
    eprintln!("kleene-rdr: {msg}");
}

/// Something went wrong; the agent carries on.
pub fn warn(msg: &str) {
    eprintln!("kleene-rdr: warning: {msg}");
}
