//! The `vmm` command: parse the command line, run the guest or the check, exit with its
//! status. Everything it prints goes through `write!` with the error handled: a stdout that
//! is full or whose reader is gone (Rust ignores SIGPIPE, so that is EPIPE) ends vmm with
//! status 1 and one line on stderr, never a panic.

use std::ffi::OsString;
use std::io::Write as _;
use vmm::config::{self, Command};
use vmm::STATUS_ERROR;

fn main() {
    vmm::logger::init();
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let status = match Command::parse(args.clone()) {
        Ok(Command::Help(text)) => print("the help", &text),
        Ok(Command::Version(text)) => print("the version", &text),
        Ok(Command::Check(cfg)) => check(&cfg),
        Ok(Command::Run(cfg)) => run(&cfg),
        Ok(Command::Remote { socket, verb }) => remote(&socket, &verb),
        Err(e) => refuse(&e, &args),
    };
    // A vCPU thread that would not stop (vmm::run warned about it) must not keep the
    // process alive.
    std::process::exit(status);
}

/// Writes `text` to stdout: status 0, or 1 with a line naming `what` when it cannot.
fn print(what: &str, text: &str) -> i32 {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) => cannot_write(what, &e),
    }
}

fn cannot_write(what: &str, e: &std::io::Error) -> i32 {
    say(&format!("cannot write {what} to stdout: {e}"));
    STATUS_ERROR
}

/// A refused command line: its line on stderr, and for `vmm check --json` the same as JSON
/// on stdout (a stdout that cannot take it changes nothing: the line says what is wrong).
fn refuse(e: &config::Error, args: &[OsString]) -> i32 {
    say_one_line(e);
    if config::json_refusal_wanted(args) {
        let json = vmm::check::json_refusal(&diag::Explain::advice(e));
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{json}").and_then(|()| out.flush());
    }
    STATUS_ERROR
}

fn check(cfg: &vmm::check::CheckConfig) -> i32 {
    match vmm::check::run(cfg, &mut std::io::stdout().lock()) {
        Ok(true) => 0,
        Ok(false) => STATUS_ERROR,
        Err(e) => cannot_write("the report", &e),
    }
}

/// `vmm remote`: the answer's body on stdout (a line of JSON), or the refusal on stderr.
fn remote(socket: &std::path::Path, verb: &vmm::api::client::Verb) -> i32 {
    match vmm::api::client::run(socket, verb) {
        Ok(body) if body.is_empty() => 0,
        Ok(body) => print("the answer", &format!("{body}\n")),
        Err(e) => {
            say_one_line(&e);
            STATUS_ERROR
        }
    }
}

fn run(cfg: &config::VmConfig) -> i32 {
    vmm::logger::set_verbosity(cfg.verbose);
    // Before any thread exists, so every thread inherits the mask: the terminating signals
    // then reach the main loop, which tears the VM down in order.
    if let Err(e) = vmm::signals::block_exit_signals() {
        log::warn!("cannot block the terminating signals ({e}); they will kill vmm");
    }
    let result = vmm::run(cfg);
    vmm::console::restore_terminal();
    match result {
        Ok(reason) => {
            let (status, message) = vmm::exit_status(&reason);
            if let Some(message) = message {
                say(&message);
            }
            status
        }
        Err(e) => {
            say_one_line(&e);
            STATUS_ERROR
        }
    }
}

/// The message of how vmm ended, on stderr; a closed stderr is not an error.
fn say(what: &dyn std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "vmm: {what}");
}

/// An error, kept on one line whatever it quotes (a kernel path with a newline in it):
/// control characters are shown escaped.
fn say_one_line(e: &dyn std::fmt::Display) {
    say(&diag::Advice::bare(e.to_string()));
}
