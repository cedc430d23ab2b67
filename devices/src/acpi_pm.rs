//! Hardware-reduced ACPI power management: the FADT's sleep control register (write
//! `SLP_TYP << 2 | SLP_EN` to enter a sleep state; S5 is soft-off), the sleep status register,
//! and the reset register (the same port, value [`ACPI_RESET_VALUE`]).

use crate::{BusDevice, ExitReason, GuestExit};
use resources::layout::{ACPI_RESET_VALUE, ACPI_S5_SLP_TYP};
use std::sync::Arc;

const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
/// Offset of the sleep status register from the control register.
const STATUS_OFFSET: u64 = 1;

/// The ACPI sleep control / status / reset registers, two bytes of I/O space.
pub struct AcpiPm {
    exit: Arc<GuestExit>,
}

impl AcpiPm {
    /// An ACPI PM device that ends the guest through `exit`.
    pub fn new(exit: Arc<GuestExit>) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Never asleep: status reads 0 and so does control.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if offset == STATUS_OFFSET {
            return;
        }
        if value == ACPI_RESET_VALUE {
            self.exit.request(ExitReason::Reset);
        } else if value & SLP_EN != 0 && (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == ACPI_S5_SLP_TYP
        {
            self.exit.request(ExitReason::Poweroff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (AcpiPm, Arc<GuestExit>) {
        let exit = Arc::new(GuestExit::new().unwrap());
        (AcpiPm::new(exit.clone()), exit)
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (mut dev, exit) = device();
        dev.write(0, &[ACPI_S5_SLP_TYP << 2]);
        assert_eq!(exit.reason(), None, "SLP_EN not set");
        dev.write(0, &[(3 << 2) | SLP_EN]);
        assert_eq!(exit.reason(), None, "S3 is not soft-off");
        dev.write(0, &[0x34]);
        assert_eq!(exit.reason(), Some(ExitReason::Poweroff));
    }

    #[test]
    fn reset_value_resets() {
        let (mut dev, exit) = device();
        dev.write(STATUS_OFFSET, &[ACPI_RESET_VALUE]);
        assert_eq!(exit.reason(), None, "status register ignores writes");
        dev.write(0, &[ACPI_RESET_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }
}
