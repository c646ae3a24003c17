//! The thin FreeBSD layer: the narrow interfaces to pf, the jails and the routing table, whose
//! real implementations run pfctl(8), jls(8), jexec(8) and route(8) by absolute path through one
//! command runner. Parsers of the tools' output are pure and live in `parse`.

pub mod counters;
pub mod host;
pub mod later;
pub mod memo;
pub mod parse;
pub mod pf;
pub mod runner;
pub mod settings;

/// Limits glibc to two malloc arenas. The agent's short-lived threads (one per connection and
/// per concurrent tool read) would otherwise each get an arena of their own, and freed memory
/// scattered over many arenas is not returned: the resident size grows with the number of
/// requests served. FreeBSD's jemalloc needs no such setting.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called once at start, before threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Gives the memory the allocator holds free back to the system, after an answer that needed a
/// lot of it for a moment (an `ls` or a `stats` of thousands of publications, a scrape): glibc
/// keeps freed memory for reuse, and the agent's resident size would stay at its peak. FreeBSD's
/// jemalloc returns unused pages by itself and needs nothing.
pub fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it may be called at any time,
    // from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Puts `LC_ALL=C` in the process's own environment, for the tools it runs to inherit: the
/// runner then need not add it to each tool's environment, which makes std copy the whole
/// environment at every spawn (a poll spawns four). Nothing in this program reads the locale.
/// Called once at the agent's start, before any thread.
pub fn c_locale_for_tools() {
    // SAFETY: called before the agent starts any thread, so nothing reads the environment
    // while it changes.
    unsafe { std::env::set_var("LC_ALL", "C") };
}
