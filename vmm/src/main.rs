//! The `vmm` command: parse the command line, run the guest, exit with its status.

use vmm::config::{Command, HELP};

fn main() {
    vmm::logger::init();
    let status = match Command::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            print!("{HELP}");
            0
        }
        Ok(Command::Version) => {
            println!("vmm {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Ok(Command::Check(cfg)) => vmm::check::run(&cfg),
        Ok(Command::Run(cfg)) => {
            vmm::logger::set_verbosity(cfg.verbose);
            // Before any thread exists, so every thread inherits the mask: SIGINT, SIGTERM
            // and SIGHUP then reach the main loop, which tears the VM down in order.
            if let Err(e) = vmm::signals::block_exit_signals() {
                log::warn!("cannot block the terminating signals ({e}); they will kill vmm");
            }
            let result = vmm::run(&cfg);
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
                    say(&e);
                    vmm::STATUS_ERROR
                }
            }
        }
        Err(e) => {
            say(&e);
            vmm::STATUS_ERROR
        }
    };
    // A vCPU thread that would not stop (vmm::run warned about it) must not keep the
    // process alive.
    std::process::exit(status);
}

/// The one-line message of how vmm ended, on stderr; a closed stderr is not an error.
fn say(what: &dyn std::fmt::Display) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "vmm: {what}");
}
