//! The info line logged for each passed-through device when it is attached (where it is, how
//! each BAR is served, which interrupt modes the device offers), and what `vm.info` shows of
//! it. Reading only; it changes nothing.

use super::{lock, BarInfo, DeviceInfo, Model, Passed};
use crate::config::format_size;
use pci::BarKind;
use std::sync::{Arc, Mutex};
use vfio::backend::{MSIX_IRQ, MSI_IRQ};
use vfio::SegmentKind;

/// `BARs ...; ROM ...; interrupts ...` for `device`, whose INTx is wired to `intx_gsi`.
pub(super) fn device_summary(device: &Arc<Mutex<Model>>, intx_gsi: Option<u32>) -> String {
    let dev = device.lock().unwrap_or_else(|e| e.into_inner());
    let mut parts = Vec::new();
    for bar in dev.bar_set().iter() {
        let mapped = dev
            .bar_plan(bar.index())
            .iter()
            .filter(|s| s.kind != SegmentKind::Trap)
            .map(|s| s.len)
            .sum();
        parts.push(describe_bar(
            bar.index(),
            bar.kind(),
            bar.size(),
            bar.addr(),
            mapped,
        ));
    }
    if parts.is_empty() {
        parts.push("no BARs".to_string());
    }
    let irq = |index| dev.backend().irq_count(index);
    parts.push(describe_irqs(intx_gsi, irq(MSI_IRQ), irq(MSIX_IRQ)));
    parts.join("; ")
}

/// What `vm.info` shows of `d`: its BARs where the guest has them now, the interrupt mechanism
/// wired now.
pub(super) fn info(d: &Passed) -> DeviceInfo {
    let model = lock(&d.model);
    let bars = model
        .bar_set()
        .iter()
        .map(|b| BarInfo {
            index: b.index(),
            kind: match b.kind() {
                BarKind::Io => "io",
                BarKind::Mem32 { .. } => "mem32",
                BarKind::Mem64 { .. } => "mem64",
                BarKind::Rom => "rom",
            },
            address: b.addr(),
            size: b.size(),
        })
        .collect();
    DeviceInfo {
        id: d.id.clone(),
        host: d.name.clone(),
        bdf: format!("0000:00:{:02x}.0", d.slot),
        iommu_group: d.group,
        bars,
        interrupts: lock(&d.irqs).mode_name(),
    }
}

/// `BAR0 1 MiB 32-bit at 0xc0000000 mapped`, `BAR2 16 KiB 64-bit prefetchable at ADDR:
/// 12 KiB mapped + 4 KiB trapped`, `BAR1 32 bytes I/O at ADDR trapped`, `ROM 64 KiB at ADDR
/// read-only memory`: `mapped` of its `size` bytes are mmapped into the guest, the rest
/// trapped.
fn describe_bar(index: u8, kind: BarKind, size: u64, addr: u64, mapped: u64) -> String {
    let size_text = format_size(size);
    let name = match kind {
        BarKind::Rom => return format!("ROM {size_text} at {addr:#x} read-only memory"),
        BarKind::Io => format!("BAR{index} {size_text} I/O at {addr:#x}"),
        BarKind::Mem32 { prefetchable } | BarKind::Mem64 { prefetchable } => {
            let bits = if matches!(kind, BarKind::Mem32 { .. }) {
                32
            } else {
                64
            };
            let prefetch = if prefetchable { " prefetchable" } else { "" };
            format!("BAR{index} {size_text} {bits}-bit{prefetch} at {addr:#x}")
        }
    };
    let trapped = size.saturating_sub(mapped);
    match (mapped, trapped) {
        (0, _) => format!("{name} trapped"),
        (_, 0) => format!("{name} mapped"),
        _ => format!(
            "{name}: {} mapped + {} trapped",
            format_size(mapped),
            format_size(trapped)
        ),
    }
}

/// `interrupts INTx (GSI 10), MSI 1 vector, MSI-X 4 vectors`: the modes the device offers
/// (VFIO's counts), INTx when its pin is wired.
fn describe_irqs(intx_gsi: Option<u32>, msi: u32, msix: u32) -> String {
    let vectors = |n: u32| if n == 1 { "vector" } else { "vectors" };
    let mut modes = Vec::new();
    if let Some(gsi) = intx_gsi {
        modes.push(format!("INTx (GSI {gsi})"));
    }
    if msi > 0 {
        modes.push(format!("MSI {msi} {}", vectors(msi)));
    }
    if msix > 0 {
        modes.push(format!("MSI-X {msix} {}", vectors(msix)));
    }
    match modes.is_empty() {
        true => "no interrupts".to_string(),
        false => format!("interrupts {}", modes.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars() {
        let mem32 = BarKind::Mem32 {
            prefetchable: false,
        };
        let mem64 = BarKind::Mem64 {
            prefetchable: false,
        };
        let mem64p = BarKind::Mem64 { prefetchable: true };
        let at = 0xc000_0000;
        assert_eq!(
            describe_bar(0, mem32, 1 << 20, at, 1 << 20),
            "BAR0 1 MiB 32-bit at 0xc0000000 mapped"
        );
        assert_eq!(
            describe_bar(0, mem64, 16 << 10, 1 << 32, 8 << 10),
            "BAR0 16 KiB 64-bit at 0x100000000: 8 KiB mapped + 8 KiB trapped"
        );
        assert_eq!(
            describe_bar(4, mem64p, 16 << 10, 0, 0),
            "BAR4 16 KiB 64-bit prefetchable at 0x0 trapped"
        );
        assert_eq!(
            describe_bar(1, BarKind::Io, 32, 0x1000, 0),
            "BAR1 32 bytes I/O at 0x1000 trapped"
        );
        assert_eq!(
            describe_bar(6, BarKind::Rom, 256 << 10, at, 256 << 10),
            "ROM 256 KiB at 0xc0000000 read-only memory"
        );
    }

    #[test]
    fn irqs() {
        assert_eq!(
            describe_irqs(Some(10), 1, 0),
            "interrupts INTx (GSI 10), MSI 1 vector"
        );
        assert_eq!(describe_irqs(None, 0, 5), "interrupts MSI-X 5 vectors");
        assert_eq!(describe_irqs(None, 0, 0), "no interrupts");
    }
}
