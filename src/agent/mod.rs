//! `kleenectl agent`: the long-running process that keeps pf in step with the desired
//! publications and the jails' lives.

pub mod access;
pub mod config;
pub mod engine;
pub mod log;
pub mod server;
pub mod state;

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use config::Config;
use engine::{Engine, System};

/// `kleenectl agent --check`: validates the configuration and the state file, changing nothing.
pub fn check(config_path: &Path) -> anyhow::Result<()> {
    let cfg = Config::load(config_path)?;
    let (state_dir, state) = state::Store::check(&cfg.state_dir)?;
    println!(
        "{}: valid; state {}: valid, {} publications",
        config_path.display(),
        state_dir.display(),
        state.publications.len()
    );
    Ok(())
}

/// Runs the agent in the foreground until SIGTERM or SIGINT. Errors before it serves (bad
/// config, unreadable state, socket in use) are returned.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    crate::sys::tune_allocator();
    let cfg = Config::load(config_path)?;
    let sys = System::from_config(&cfg);
    let socket = cfg.socket.clone();
    let poll = Duration::from_millis(cfg.poll_interval_ms);
    let policy = access::Policy::new(cfg.socket_group.as_deref())?;
    let limits = server::Limits {
        max_connections: cfg.max_connections,
        request_timeout: Duration::from_millis(cfg.request_timeout_ms),
    };
    let mut engine = Engine::new(cfg, sys)?;
    let listener = server::bind(&socket, &policy)?;
    let (tx, rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if tx.send(sig).is_err() {
                break;
            }
        }
    });
    log::info(&format!("starting; socket {}, config {}", socket.display(), config_path.display()));
    engine.start();
    let engine = Arc::new(Mutex::new(engine));
    let serving = Arc::clone(&engine);
    std::thread::spawn(move || server::serve(listener, serving, policy, limits));
    let mut poll = poll;
    loop {
        match rx.recv_timeout(poll) {
            Err(RecvTimeoutError::Timeout) => engine.lock().unwrap_or_else(|p| p.into_inner()).tick(),
            Err(RecvTimeoutError::Disconnected) => break,
            Ok(SIGHUP) => match Config::load(config_path) {
                Ok(cfg) => {
                    log::info("SIGHUP: configuration re-read");
                    poll = Duration::from_millis(cfg.poll_interval_ms);
                    let sys = System::from_config(&cfg);
                    engine.lock().unwrap_or_else(|p| p.into_inner()).reconfigure(cfg, sys);
                }
                Err(e) => log::warn(&format!("SIGHUP: keeping the old configuration: {e:#}")),
            },
            Ok(_) => break,
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
