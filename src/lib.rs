//! kleene-rdr: publish ports of FreeBSD jails with pf translation rules.
//!
//! `core` is pure and portable; `sys` is the thin FreeBSD layer that runs pfctl, jls, route and
//! jexec; `agent` keeps pf in step with the desired publications; `cli` is `kleenectl`; `cni` is
//! the `kleene-portmap` CNI plugin.

pub mod agent;
pub mod cli;
pub mod client;
pub mod cni;
pub mod completions;
pub mod core;
pub mod proto;
pub mod sys;
