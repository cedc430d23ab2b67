//! Just enough of the i8042 keyboard controller for the guest to reset the machine:
//! command 0xfe (pulse reset line) on port 0x64. Everything else reads as "no data".

use crate::{BusDevice, ExitReason, GuestExit};
use std::sync::Arc;

/// Offset of the command/status port (0x64) from the data port (0x60).
const COMMAND_OFFSET: u64 = 4;
/// Command: pulse the CPU reset line.
const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 device, covering ports 0x60-0x64.
pub struct I8042 {
    exit: Arc<GuestExit>,
}

impl I8042 {
    /// An i8042 that turns a reset command into [`ExitReason::Reset`].
    pub fn new(exit: Arc<GuestExit>) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty; data port: nothing pending.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.request(ExitReason::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_reset() {
        let exit = Arc::new(GuestExit::new().unwrap());
        let mut dev = I8042::new(exit.clone());
        dev.write(0, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), None, "0xfe on the data port is not a reset");
        dev.write(COMMAND_OFFSET, &[0xad]);
        assert_eq!(exit.reason(), None);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
        let mut status = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
    }
}
