//! The pure core: spec language, domain values, rule rendering, conflict checks, address
//! selection and reconcile planning. Nothing here touches the operating system, so all of it is
//! tested on any host.

pub mod address;
pub mod conflict;
pub mod container;
pub mod model;
pub mod plan;
pub mod publication;
pub mod reach;
pub mod readback;
pub mod render;
pub mod renderer;
pub mod spec;
