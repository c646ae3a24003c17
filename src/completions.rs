//! Shell completion scripts for `kleenectl completions bash|zsh|fish`.
//!
//! clap_complete writes the static part (subcommands, options, file arguments). Every shell
//! here can run a command while it completes, so each script is hooked to offer the names of
//! the running jails after `-j` / `--jail`, read with `jls name` (jls(8): one line per running
//! jail, dying jails excluded): the `jls` on PATH, else `/usr/sbin/jls`; where neither runs
//! (Linux, a jail without jls) nothing is offered. The hooks are plain shell functions added
//! to the generated text; clap_complete's dynamic engine is still an unstable feature.
//!
//! - bash: `_kleenectl_with_jails` wraps the generated `_kleenectl` and answers itself when the
//!   word before the cursor is `-j` or `--jail` (or `--jail=`);
//! - zsh: the `-j` / `--jail` specs of `_arguments` call `_kleenectl_jails`;
//! - fish: the `-s j -l jail` completions take their arguments from `__fish_kleenectl_jails`.

/// The shells `kleenectl completions` writes scripts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// GNU bash with bash-completion.
    Bash,
    /// zsh (compsys).
    Zsh,
    /// fish.
    Fish,
}

/// The value name of every option that takes a jail (`-j JAIL`): the zsh hook finds the
/// options by it.
const JAIL_VALUE: &str = "JAIL";

/// The completion script of `cmd` for `shell`, with the jail-name hook.
pub fn script(shell: Shell, mut cmd: clap::Command) -> String {
    let name = cmd.get_name().to_string();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(generator, &mut cmd, &name, &mut out);
    let generated = String::from_utf8(out).expect("clap_complete writes UTF-8");
    match shell {
        Shell::Bash => hook_bash(&generated, &name),
        Shell::Zsh => hook_zsh(&generated, &name),
        Shell::Fish => hook_fish(&generated, &name),
    }
}

/// bash: register a wrapper that completes jail names after `-j`/`--jail` and leaves every
/// other word to clap's function.
fn hook_bash(generated: &str, name: &str) -> String {
    let generated_fn = format!("complete -F _{name} ");
    let wrapper_fn = format!("complete -F _{name}_with_jails ");
    let body = generated.replace(&generated_fn, &wrapper_fn);
    let mut s = String::with_capacity(body.len() + 1024);
    s.push_str(&format!(
        r#"# Running jails, one per line (jls(8): `jls name`); nothing where jls is missing.
_{name}_jails() {{
    local jls
    jls=$(command -v jls 2>/dev/null) || jls=/usr/sbin/jls
    [[ -x "$jls" ]] && "$jls" name 2>/dev/null
}}

# -j JAIL, --jail JAIL and --jail=JAIL complete the running jails' names; the rest is clap's.
_{name}_with_jails() {{
    local cur prev before
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev=""
    before=""
    (( COMP_CWORD > 0 )) && prev="${{COMP_WORDS[COMP_CWORD - 1]}}"
    (( COMP_CWORD > 1 )) && before="${{COMP_WORDS[COMP_CWORD - 2]}}"
    if [[ "$cur" == "=" && "$prev" == "--jail" ]]; then
        prev="--jail="
        cur=""
    elif [[ "$prev" == "=" && "$before" == "--jail" ]]; then
        prev="--jail="
    fi
    case "$prev" in
        -j|--jail|--jail=)
            local IFS=$'\n'
            COMPREPLY=( $(compgen -W "$(_{name}_jails)" -- "$cur") )
            return 0
            ;;
    esac
    _{name} "$@"
}}

"#
    ));
    s.push_str(&body);
    s
}

/// zsh: the `_arguments` specs of `-j`/`--jail` complete with `_kleenectl_jails`.
fn hook_zsh(generated: &str, name: &str) -> String {
    let body = generated.replace(&format!(":{JAIL_VALUE}:_default'"), &format!(":{JAIL_VALUE}:_{name}_jails'"));
    let function = format!(
        r#"(( $+functions[_{name}_jails] )) ||
_{name}_jails() {{
    # Running jails, one per line (jls(8): `jls name`); nothing where jls is missing.
    local jls=${{commands[jls]:-/usr/sbin/jls}}
    local -a jails expl
    [[ -x $jls ]] && jails=(${{(f)"$($jls name 2>/dev/null)"}})
    _wanted jails expl 'running jail' compadd -a jails
}}

"#
    );
    let tail = format!("if [ \"$funcstack[1]\" = \"_{name}\" ]; then");
    match body.rfind(&tail) {
        Some(at) => format!("{}{function}{}", &body[..at], &body[at..]),
        None => format!("{body}\n{function}"),
    }
}

/// fish: every `-s j -l jail` completion takes the running jails as its arguments.
fn hook_fish(generated: &str, name: &str) -> String {
    let mut s = format!(
        r#"# Running jails, one per line (jls(8): `jls name`); nothing where jls is missing.
function __fish_{name}_jails
    set -l jls (command -s jls; or echo /usr/sbin/jls)
    test -x "$jls"; and $jls name 2>/dev/null
end

"#
    );
    for line in generated.lines() {
        s.push_str(line);
        if line.starts_with("complete ") && line.contains(" -s j -l jail ") {
            s.push_str(&format!(" -f -a \"(__fish_{name}_jails)\""));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    //! The hooks find what they patch in clap_complete's output (a new clap_complete that writes
    //! other text fails here); tests/completions.rs runs the scripts in the shells themselves.
    use super::*;

    fn kleenectl() -> clap::Command {
        clap::Command::new("kleenectl").subcommand(
            clap::Command::new("ls")
                .arg(clap::Arg::new("jail").short('j').long("jail").value_name(JAIL_VALUE))
                .arg(clap::Arg::new("socket").long("socket").value_name("PATH")),
        )
    }

    #[test]
    fn bash_registers_the_wrapper_instead_of_clap_s_function() {
        let s = script(Shell::Bash, kleenectl());
        assert!(!s.contains("complete -F _kleenectl "), "{s}");
        assert!(s.matches("complete -F _kleenectl_with_jails ").count() >= 1, "{s}");
        assert!(s.contains("_kleenectl \"$@\""));
    }

    #[test]
    fn zsh_completes_every_jail_option_with_the_jail_function() {
        let s = script(Shell::Zsh, kleenectl());
        assert_eq!(s.matches(":JAIL:_kleenectl_jails'").count(), 2, "{s}");
        assert!(!s.contains(":JAIL:_default"), "{s}");
        let function = s.find("_kleenectl_jails() {").unwrap();
        assert!(function < s.rfind("if [ \"$funcstack[1]\" = \"_kleenectl\" ]").unwrap());
    }

    #[test]
    fn fish_gives_every_jail_option_the_jail_function() {
        let s = script(Shell::Fish, kleenectl());
        let jail_lines: Vec<&str> = s.lines().filter(|l| l.contains(" -l jail ")).collect();
        assert_eq!(jail_lines.len(), 1, "{s}");
        assert!(jail_lines.iter().all(|l| l.ends_with(" -f -a \"(__fish_kleenectl_jails)\"")), "{s}");
        assert!(!s.lines().any(|l| l.contains(" -l socket ") && l.contains("jails")), "{s}");
    }
}
