//! `kleenectl agent`: the long-running process that keeps pf in step with the desired
//! publications and the jails' lives.

pub mod access;
pub mod api;
pub mod config;
pub mod engine;
pub mod http;
pub mod log;
pub mod metrics;
pub mod reply;
pub mod server;
pub mod state;
pub mod vnet;
pub mod workers;

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use config::ConfigFile;
use engine::{Engine, System};

/// What wakes the agent's main loop besides its poll timer.
enum Event {
    Signal(i32),
    /// A background read finished.
    Read,
}

/// `kleenectl agent --check`: validates the configuration and the state file, changing nothing.
pub fn check(config: &ConfigFile) -> anyhow::Result<()> {
    let cfg = config.load()?;
    let (state_dir, state) = state::Store::check(&cfg.state_dir)?;
    println!(
        "{}: valid{}; state {}: valid, {} publications",
        config.path.display(),
        if config.path.exists() { "" } else { " (no such file: every default)" },
        state_dir.display(),
        state.publications().len()
    );
    Ok(())
}

/// Runs the agent in the foreground until SIGTERM or SIGINT. Errors before it serves (bad
/// config, unreadable state, socket in use) are returned.
pub fn run(config: &ConfigFile) -> anyhow::Result<()> {
    crate::sys::tune_allocator();
    crate::sys::c_locale_for_tools();
    let config_path = config.path.as_path();
    let cfg = config.load()?;
    let sys = System::from_config(&cfg);
    let socket = cfg.socket.clone();
    let cfg_metrics = cfg.metrics_listen;
    let poll = Duration::from_millis(cfg.poll_interval_ms);
    let policy = access::Policy::new(cfg.socket_group.as_deref())?;
    let limits = server::Limits {
        max_connections: cfg.max_connections,
        request_timeout: Duration::from_millis(cfg.request_timeout_ms),
    };
    let (tx, rx) = mpsc::channel();
    let (wake_tx, wake_rx) = mpsc::channel::<()>();
    let mut engine = Engine::new(cfg, sys, wake_tx)?;
    let listener = server::bind(&socket, &policy)?;
    let metrics = cfg_metrics.map(|addr| http::bind(addr).map(|l| (addr, l))).transpose()?;
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let signal_tx = tx.clone();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if signal_tx.send(Event::Signal(sig)).is_err() {
                break;
            }
        }
    });
    // A finished background read (a VNET jail's addresses) plans again at once, without a
    // full observation.
    std::thread::spawn(move || {
        while wake_rx.recv().is_ok() {
            // Many reads may finish together: they are taken in at once.
            while wake_rx.try_recv().is_ok() {}
            if tx.send(Event::Read).is_err() {
                break;
            }
        }
    });
    log::info(&format!("starting; socket {}, config {}", socket.display(), config_path.display()));
    engine.start();
    let engine = Arc::new(Mutex::new(engine));
    let serving = Arc::clone(&engine);
    std::thread::spawn(move || server::serve(listener, serving, policy, limits));
    if let Some((addr, listener)) = metrics {
        log::info(&format!("serving metrics on http://{addr}/metrics"));
        let scraped = Arc::clone(&engine);
        std::thread::spawn(move || http::serve(listener, scraped));
    }
    let mut poll = poll;
    let mut next_tick = Instant::now() + poll;
    loop {
        match rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {
                // The poll reads the host without the engine's lock, so that no request waits
                // for it; what requests see or change meanwhile wins over the poll's reading.
                let reads = engine.lock().unwrap_or_else(|p| p.into_inner()).begin_poll();
                let reading = reads.read();
                engine.lock().unwrap_or_else(|p| p.into_inner()).finish_poll(reading);
                next_tick = Instant::now() + poll;
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Ok(Event::Read) => {
                let mut e = engine.lock().unwrap_or_else(|p| p.into_inner());
                if e.refresh_vnet() {
                    e.reconcile();
                }
            }
            Ok(Event::Signal(SIGHUP)) => match config.load() {
                Ok(cfg) => {
                    log::info("SIGHUP: configuration re-read");
                    poll = Duration::from_millis(cfg.poll_interval_ms);
                    let sys = System::from_config(&cfg);
                    engine.lock().unwrap_or_else(|p| p.into_inner()).reconfigure(cfg, sys);
                }
                Err(e) => log::warn(&format!("SIGHUP: keeping the old configuration: {e:#}")),
            },
            Ok(Event::Signal(_)) => break,
        }
    }
    let mut e = engine.lock().unwrap_or_else(|p| p.into_inner());
    if e.config().flush_on_exit {
        e.flush_all();
    }
    let _ = std::fs::remove_file(&socket);
    log::info("stopped");
    Ok(())
}
