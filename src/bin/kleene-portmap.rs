//! `kleene-portmap`, the CNI port-mapping plugin: see `kleene_rdr::cni`. Installed beside the
//! other CNI plugins (`/usr/local/libexec/cni` on FreeBSD) and run by the container runtime.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use kleene_rdr::cni::{self, MAX_CONFIG};

/// The deadline of one exchange with the agent.
const TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let mut stdin = Vec::new();
    // One byte more than the limit, so that a larger configuration is told apart.
    let read = std::io::stdin().take(MAX_CONFIG as u64 + 1).read_to_end(&mut stdin);
    let outcome = match read {
        Ok(_) => cni::run(&|name| std::env::var(name).ok(), &stdin, &mut |socket, req| {
            kleene_rdr::client::request_within(socket, req, TIMEOUT)
        }),
        Err(e) => cni::Outcome {
            stdout: cni::CniError {
                cni_version: cni::SUPPORTED[cni::SUPPORTED.len() - 1].into(),
                code: cni::code::IO,
                msg: "cannot read the network configuration".into(),
                details: format!("reading stdin: {e}"),
            }
            .to_json(),
            status: 1,
        },
    };
    let mut out = std::io::stdout().lock();
    if !outcome.stdout.is_empty() {
        let _ = writeln!(out, "{}", outcome.stdout);
    }
    let _ = out.flush();
    std::process::exit(outcome.status);
}
