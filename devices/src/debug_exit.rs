//! The debug-exit port (QEMU's isa-debug-exit convention): the guest writes a byte V and
//! the VMM exits with status `(V << 1) | 1`.

use crate::{BusDevice, ExitReason, GuestExit};
use std::sync::Arc;

/// The debug-exit device.
pub struct DebugExit {
    exit: Arc<GuestExit>,
}

impl DebugExit {
    /// A debug-exit device that ends the guest through `exit`.
    pub fn new(exit: Arc<GuestExit>) -> Self {
        Self { exit }
    }

    /// The process exit status for a written value.
    pub fn status(value: u8) -> i32 {
        (i32::from(value) << 1) | 1
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            self.exit.request(ExitReason::DebugExit(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_requests_exit_with_the_byte() {
        let exit = Arc::new(GuestExit::new().unwrap());
        let mut dev = DebugExit::new(exit.clone());
        dev.write(0, &[0x21, 0x00]);
        assert_eq!(exit.reason(), Some(ExitReason::DebugExit(0x21)));
        assert_eq!(DebugExit::status(0x21), 0x43);
        assert_eq!(DebugExit::status(0), 1);
    }
}
