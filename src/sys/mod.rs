//! The thin FreeBSD layer: the narrow interfaces to pf, the jails and the routing table, whose
//! real implementations run pfctl(8), jls(8), jexec(8) and route(8) by absolute path through one
//! command runner. Parsers of the tools' output are pure and live in `parse`.

pub mod host;
pub mod parse;
pub mod pf;
pub mod runner;
