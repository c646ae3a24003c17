//! `kleenectl`: the agent and its client, in one binary.

fn main() {
    std::process::exit(kleene_rdr::cli::main());
}
