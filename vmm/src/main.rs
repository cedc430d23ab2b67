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
        Ok(Command::Run(cfg)) => {
            let result = vmm::run(&cfg);
            vmm::console::restore_terminal();
            match result {
                Ok(reason) => {
                    let (status, message) = vmm::exit_status(&reason);
                    if let Some(message) = message {
                        eprintln!("vmm: {message}");
                    }
                    status
                }
                Err(e) => {
                    eprintln!("vmm: {e}");
                    vmm::STATUS_ERROR
                }
            }
        }
        Err(e) => {
            eprintln!("vmm: {e}");
            vmm::STATUS_ERROR
        }
    };
    // vCPU threads may still be inside KVM_RUN: leave without waiting for them.
    std::process::exit(status);
}
