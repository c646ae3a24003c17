//! A read of the system traits split in two, the command to run and what to make of its
//! answer, so that the reads of a poll run at once on the caller's thread
//! ([`runner::run_all`]) instead of on a thread each. An implementation that runs no process
//! (an in-process fake) answers at once ([`Later::known`]), and that is what the traits do
//! unless an implementation says otherwise.

use super::runner::{self, Cmd, CmdError, Output};

/// What a command's answer, once run, will tell; or an answer already known.
pub struct Later<'a, T> {
    inner: Inner<'a, T>,
}

type Finish<'a, T> = Box<dyn FnOnce(Result<Output, CmdError>) -> T + 'a>;

enum Inner<'a, T> {
    Known(T),
    Command { cmd: Cmd<'a>, finish: Finish<'a, T>, answer: Option<Result<Output, CmdError>> },
}

impl<'a, T> Later<'a, T> {
    /// An answer found without running anything.
    pub fn known(value: T) -> Self {
        Later { inner: Inner::Known(value) }
    }

    /// The answer `finish` makes of what `cmd` answers.
    pub fn command(cmd: Cmd<'a>, finish: impl FnOnce(Result<Output, CmdError>) -> T + 'a) -> Self {
        Later { inner: Inner::Command { cmd, finish: Box::new(finish), answer: None } }
    }

    /// The answer: the command's, run alone now unless [`run_together`] ran it.
    pub fn get(self) -> T {
        match self.inner {
            Inner::Known(value) => value,
            Inner::Command { cmd, finish, answer } => finish(answer.unwrap_or_else(|| cmd.run())),
        }
    }
}

/// A [`Later`] whatever it reads, for [`run_together`].
pub trait Deferred {
    /// The command still to run, if any.
    fn pending(&self) -> Option<&Cmd<'_>>;
    /// Keeps what the pending command answered.
    fn answered(&mut self, answer: Result<Output, CmdError>);
}

impl<T> Deferred for Later<'_, T> {
    fn pending(&self) -> Option<&Cmd<'_>> {
        match &self.inner {
            Inner::Command { cmd, answer: None, .. } => Some(cmd),
            _ => None,
        }
    }

    fn answered(&mut self, given: Result<Output, CmdError>) {
        if let Inner::Command { answer, .. } = &mut self.inner {
            *answer = Some(given);
        }
    }
}

/// Runs the pending commands of `reads` at once ([`runner::run_all`]); each then gives its
/// answer without running anything.
pub fn run_together(reads: &mut [&mut dyn Deferred]) {
    let cmds: Vec<&Cmd<'_>> = reads.iter().filter_map(|r| r.pending()).collect();
    let mut answers = runner::run_all(&cmds).into_iter();
    for read in reads.iter_mut().filter(|r| r.pending().is_some()) {
        read.answered(answers.next().expect("one answer per pending command"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::runner::Limits;
    use std::path::Path;

    fn echo(word: &str) -> Later<'_, String> {
        Later::command(Cmd::new(Path::new("/bin/sh"), &["-c", "echo \"$0\"", word], Limits::default()), |a| {
            a.map_or_else(|e| format!("error: {e}"), |o| o.stdout.trim().to_string())
        })
    }

    #[test]
    fn known_and_command_answers_come_back_to_their_reads() {
        let mut known = Later::known(7);
        let (mut a, mut b) = (echo("first"), echo("second"));
        let mut missing = Later::command(Cmd::new(Path::new("/nonexistent/jls"), &[], Limits::default()), |a| {
            a.err().is_some_and(|e| e.is_missing())
        });
        run_together(&mut [&mut a, &mut known, &mut missing, &mut b]);
        assert!(a.pending().is_none() && b.pending().is_none(), "both ran");
        assert_eq!((a.get(), known.get(), missing.get(), b.get()), ("first".into(), 7, true, "second".into()));
        assert_eq!(echo("alone").get(), "alone", "a read not run together runs when asked");
    }
}
