//! The 8250/16550 UART on COM1 (vm-superio), its interrupt an `EventFd` that the VMM
//! registers as a KVM irqfd, its output any writer (the VMM's stdout).

use crate::BusDevice;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use vm_superio::serial::NoEvents;
use vm_superio::{Serial as Uart, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// An `EventFd` that vm-superio can trigger; counts the interrupts it raised.
pub struct EventFdTrigger(EventFd, AtomicU64);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.write(1)
    }
}

/// A UART whose output goes to `W`.
pub struct Serial<W: Write + Send> {
    uart: Uart<EventFdTrigger, NoEvents, W>,
}

impl<W: Write + Send> Serial<W> {
    /// A UART writing to `out`; returns it with a clone of its interrupt eventfd.
    pub fn new(out: W) -> io::Result<(Self, EventFd)> {
        let evt = EventFd::new(EFD_NONBLOCK)?;
        let irq = evt.try_clone()?;
        let uart = Uart::new(EventFdTrigger(evt, AtomicU64::new(0)), out);
        Ok((Self { uart }, irq))
    }

    /// Interrupts raised so far (each one is the VMM injecting an interrupt).
    pub fn interrupts(&self) -> u64 {
        self.uart.interrupt_evt().1.load(Ordering::Relaxed)
    }

    /// Free room in the receive FIFO.
    pub fn rx_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues input bytes for the guest (as many as fit); returns how many were taken.
    pub fn enqueue(&mut self, bytes: &[u8]) -> usize {
        let room = bytes.len().min(self.uart.fifo_capacity());
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial: input dropped: {e:?}");
                0
            }
        }
    }
}

impl<W: Write + Send> BusDevice for Serial<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0xff, |o| self.uart.read(o));
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        if let Err(e) = self.uart.write(offset, value) {
            // Output we cannot write (a closed stdout) must not stop the guest.
            log::debug!("serial: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_writer_and_raises_thre() {
        let sink = Sink::default();
        let (mut uart, irq) = Serial::new(sink.clone()).unwrap();
        assert!(irq.read().is_err(), "no interrupt before IER is set");
        uart.write(1, &[0x02]); // IER: THR empty interrupt
        uart.write(0, b"h");
        uart.write(0, b"i");
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hi");
        assert!(irq.read().is_ok(), "THRE interrupt raised");
        assert_eq!(uart.interrupts(), 1);
    }

    #[test]
    fn input_is_readable_by_the_guest() {
        let (mut uart, irq) = Serial::new(Sink::default()).unwrap();
        uart.write(1, &[0x01]); // IER: received data interrupt
        assert_eq!(uart.enqueue(b"ok"), 2);
        assert!(irq.read().is_ok(), "RDA interrupt raised");
        let mut byte = [0u8];
        uart.read(0, &mut byte);
        assert_eq!(&byte, b"o");
        uart.read(0, &mut byte);
        assert_eq!(&byte, b"k");
    }
}
