//! The 8250/16550 UART on COM1 (vm-superio), its interrupt an `EventFd` that the VMM
//! registers as a KVM irqfd, its output any writer (the VMM's stdout), passed on a line at a
//! time ([`LineOut`]). While the guest's driver polls the UART (the THR-empty interrupt off,
//! as Linux's console does), its writes to THR have no effect but output, so the UART lets
//! the VMM queue them instead of taking an exit for each ([`ThrBatch`]).

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

/// Most guest output held back before it goes out anyway.
const HELD_MAX: usize = 4096;
/// THR, the transmit register (offset 0 without DLAB).
const THR: u64 = 0;
/// IER, the interrupt enable register (offset 1 without DLAB).
const IER: u64 = 1;
/// LCR, the line control register.
const LCR: u64 = 3;
/// MCR, the modem control register.
const MCR: u64 = 4;
/// IER: interrupt when THR is empty.
const IER_THRI: u8 = 1 << 1;
/// LCR: divisor latch access (offsets 0 and 1 are the baud divisor).
const LCR_DLAB: u8 = 1 << 7;
/// MCR: loopback (THR feeds the receiver, which raises interrupts).
const MCR_LOOP: u8 = 1 << 4;

/// The VMM's side of batching THR writes (KVM's coalesced PIO): writes are queued and applied
/// in order before the guest's next exit is handled, instead of one exit each.
pub trait ThrBatch: Send {
    /// Turns batching on or off; called when the guest's UART setup changes.
    fn set(&mut self, on: bool);
}

/// The registers that decide whether a THR write may wait: one whose only effect is output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Setup {
    ier: Option<u8>,
    lcr: u8,
    mcr: u8,
}

impl Setup {
    /// Records a guest write of `value` at `offset`.
    fn write(&mut self, offset: u64, value: u8) {
        match offset {
            IER if self.lcr & LCR_DLAB == 0 => self.ier = Some(value),
            LCR => self.lcr = value,
            MCR => self.mcr = value,
            _ => {}
        }
    }

    /// A THR write only produces output: the driver has set IER (so it runs the UART) without
    /// the THR-empty interrupt, and neither the divisor latch nor loopback is on.
    fn thr_is_output_only(&self) -> bool {
        self.ier.is_some_and(|ier| ier & IER_THRI == 0)
            && self.lcr & LCR_DLAB == 0
            && self.mcr & MCR_LOOP == 0
    }
}

/// The guest's output on its way to `W`. vm-superio writes and flushes every byte it is given,
/// which would be one write(2) per byte (on a pipe, also a wake-up of the reader per byte):
/// under nesting that doubled the cost of each character a guest printed. `LineOut` passes
/// output on when a line is complete, when [`HELD_MAX`] bytes are held, and whenever
/// [`LineOut::pass_on`] is called: the UART calls it when the guest's driver touches any
/// register other than THR after writing (Linux's console restores IER after each message,
/// its tty driver turns the THR-empty interrupt off when it has nothing left), and the VMM on
/// a timer and at the end, so a partial line never stays behind for long. Dropping it does
/// not write (that could block the VMM's teardown on a stdout nobody reads): its owner passes
/// on what is held first.
pub struct LineOut<W: Write> {
    out: W,
    held: Vec<u8>,
}

impl<W: Write> LineOut<W> {
    /// Output to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            held: Vec::with_capacity(HELD_MAX),
        }
    }

    /// Writes out everything held. Output that cannot be written is dropped (the guest must
    /// not stop because our stdout went away).
    pub fn pass_on(&mut self) -> io::Result<()> {
        if self.held.is_empty() {
            return Ok(());
        }
        let result = self
            .out
            .write_all(&self.held)
            .and_then(|()| self.out.flush());
        self.held.clear();
        result
    }
}

impl<W: Write> Write for LineOut<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.held.extend_from_slice(data);
        if self.held.len() >= HELD_MAX {
            self.pass_on()?;
        }
        Ok(data.len())
    }

    /// Passes on complete lines only (vm-superio flushes after every byte).
    fn flush(&mut self) -> io::Result<()> {
        if self.held.last() == Some(&b'\n') {
            self.pass_on()?;
        }
        Ok(())
    }
}

/// A UART whose output goes to `W`.
pub struct Serial<W: Write + Send> {
    uart: Uart<EventFdTrigger, NoEvents, LineOut<W>>,
    setup: Setup,
    batch: Option<Box<dyn ThrBatch>>,
    batching: bool,
}

impl<W: Write + Send> Serial<W> {
    /// A UART writing to `out`; returns it with a clone of its interrupt eventfd.
    pub fn new(out: W) -> io::Result<(Self, EventFd)> {
        let evt = EventFd::new(EFD_NONBLOCK)?;
        let irq = evt.try_clone()?;
        let uart = Uart::new(EventFdTrigger(evt, AtomicU64::new(0)), LineOut::new(out));
        let serial = Self {
            uart,
            setup: Setup::default(),
            batch: None,
            batching: false,
        };
        Ok((serial, irq))
    }

    /// Lets THR writes be batched through `batch` whenever they only produce output.
    pub fn set_thr_batch(&mut self, batch: Box<dyn ThrBatch>) {
        self.batch = Some(batch);
        self.update_batching();
    }

    fn update_batching(&mut self) {
        let want = self.setup.thr_is_output_only();
        if let Some(batch) = self.batch.as_mut().filter(|_| want != self.batching) {
            batch.set(want);
            self.batching = want;
        }
    }

    /// Writes out the guest output held back so far (a partial line).
    pub fn pass_on_output(&mut self) {
        if let Err(e) = self.uart.writer_mut().pass_on() {
            log::debug!("serial: {e:?}");
        }
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
        if u64::from(offset) != THR {
            self.pass_on_output();
            self.setup.write(u64::from(offset), value);
            self.update_batching();
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
        uart.pass_on_output();
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hi");
        assert!(irq.read().is_ok(), "THRE interrupt raised");
        assert_eq!(uart.interrupts(), 1);
    }

    #[test]
    fn output_goes_out_a_line_at_a_time() {
        let sink = Sink::default();
        let (mut uart, _irq) = Serial::new(sink.clone()).unwrap();
        let out = || sink.0.lock().unwrap().clone();
        for b in b"one\r\ntw" {
            uart.write(0, &[*b]);
        }
        assert_eq!(out(), b"one\r\n", "complete line passed on, partial held");
        uart.write(1, &[0x00]); // IER: the console's restore after a message
        assert_eq!(out(), b"one\r\ntw", "any other register passes the rest on");
        uart.write(0, b"o");
        uart.pass_on_output();
        assert_eq!(out(), b"one\r\ntwo");
        uart.write(0, b"!");
        drop(uart);
        assert_eq!(out(), b"one\r\ntwo", "dropping does not write");
    }

    #[test]
    fn long_output_without_newline_is_not_held_forever() {
        let sink = Sink::default();
        let (mut uart, _irq) = Serial::new(sink.clone()).unwrap();
        for _ in 0..HELD_MAX {
            uart.write(0, b"x");
        }
        assert_eq!(sink.0.lock().unwrap().len(), HELD_MAX);
    }

    #[test]
    fn output_that_cannot_be_written_is_dropped() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = LineOut::new(Broken);
        out.write_all(b"lost\n").unwrap();
        out.flush().unwrap_err();
        assert!(out.held.is_empty());
    }

    #[derive(Clone, Default)]
    struct Batch(Arc<Mutex<Vec<bool>>>);

    impl ThrBatch for Batch {
        fn set(&mut self, on: bool) {
            self.0.lock().unwrap().push(on);
        }
    }

    #[test]
    fn thr_writes_are_batched_only_while_they_only_output() {
        let (mut uart, _irq) = Serial::new(Sink::default()).unwrap();
        let batch = Batch::default();
        uart.set_thr_batch(Box::new(batch.clone()));
        let calls = || batch.0.lock().unwrap().clone();
        assert!(calls().is_empty(), "not before the driver sets the UART up");
        uart.write(0, b"x");
        uart.write(3, &[0x03]); // LCR: 8N1
        assert!(calls().is_empty());
        uart.write(1, &[0x00]); // IER: no interrupts (Linux's console while it prints)
        assert_eq!(calls(), [true]);
        uart.write(1, &[0x05]); // IER: receive and line status, still no THRI
        assert_eq!(calls(), [true], "no change, no call");
        uart.write(1, &[IER_THRI]); // the tty driver transmits by interrupt
        assert_eq!(calls(), [true, false]);
        uart.write(1, &[0x00]);
        uart.write(3, &[LCR_DLAB | 0x03]); // divisor latch: offsets 0 and 1 are the divisor
        assert_eq!(calls(), [true, false, true, false]);
        uart.write(1, &[IER_THRI]); // DLM, not IER
        uart.write(3, &[0x03]);
        assert_eq!(calls(), [true, false, true, false, true]);
        uart.write(4, &[MCR_LOOP]); // loopback: THR feeds the receiver
        assert_eq!(calls(), [true, false, true, false, true, false]);
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
