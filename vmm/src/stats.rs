//! What the VMM's userspace handled: vCPU exits by kind, trapped accesses per device (every
//! bus access is an exit handled here), and interrupts the VMM injected itself. Printed on
//! exit with `--stats` (text) or `--stats=json`, on stderr. Passed-through devices'
//! interrupts never show up here: they go from VFIO eventfds to KVM irqfds in the kernel.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Output format of `--stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `key=value` lines.
    Text,
    /// One JSON object.
    Json,
}

/// vCPU exits by kind, shared by every vCPU.
#[derive(Debug, Default)]
pub struct ExitCounts {
    /// Port reads.
    pub io_in: AtomicU64,
    /// Port writes.
    pub io_out: AtomicU64,
    /// MMIO reads.
    pub mmio_read: AtomicU64,
    /// MMIO writes.
    pub mmio_write: AtomicU64,
    /// Everything else that reached userspace.
    pub other: AtomicU64,
}

impl ExitCounts {
    /// Counts one exit.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<(String, u64)> {
        [
            ("io_in", &self.io_in),
            ("io_out", &self.io_out),
            ("mmio_read", &self.mmio_read),
            ("mmio_write", &self.mmio_write),
            ("other", &self.other),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed)))
        .collect()
    }
}

/// Everything `--stats` prints.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Exits by kind.
    pub exits: Vec<(String, u64)>,
    /// Trapped accesses by device ("pio:NAME" / "mmio:NAME").
    pub trapped: Vec<(String, u64)>,
    /// Interrupts the VMM injected, by source.
    pub injected: Vec<(String, u64)>,
}

impl Report {
    /// Collects the counters.
    pub fn collect(
        exits: &ExitCounts,
        pio: &devices::Bus,
        mmio: &devices::Bus,
        injected: Vec<(String, u64)>,
    ) -> Self {
        let mut trapped: Vec<(String, u64)> = pio
            .counts()
            .into_iter()
            .map(|(n, c)| (format!("pio:{n}"), c))
            .collect();
        trapped.extend(
            mmio.counts()
                .into_iter()
                .map(|(n, c)| (format!("mmio:{n}"), c)),
        );
        Self {
            exits: exits.snapshot(),
            trapped,
            injected,
        }
    }

    /// The report in `format`.
    pub fn render(&self, format: Format) -> String {
        let groups = [
            ("exits", &self.exits),
            ("trapped", &self.trapped),
            ("injected", &self.injected),
        ];
        match format {
            Format::Text => groups
                .iter()
                .map(|(g, items)| {
                    let kv: Vec<String> = items.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("vmm stats {g}: {}", kv.join(" "))
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Format::Json => {
                let mut out = String::from("{");
                for (i, (g, items)) in groups.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    let _ = write!(out, "{sep}\"{g}\":{{");
                    for (j, (k, v)) in items.iter().enumerate() {
                        let sep = if j == 0 { "" } else { "," };
                        let _ = write!(out, "{sep}\"{}\":{v}", json_escape(k));
                    }
                    out.push('}');
                }
                out.push('}');
                out
            }
        }
    }
}

pub(crate) fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            exits: vec![("io_out".into(), 3)],
            trapped: vec![("pio:com1".into(), 2), ("mmio:0000:00:04.0 BAR0".into(), 1)],
            injected: vec![("serial".into(), 5)],
        }
    }

    #[test]
    fn text_lines() {
        assert_eq!(
            report().render(Format::Text),
            "vmm stats exits: io_out=3\nvmm stats trapped: pio:com1=2 mmio:0000:00:04.0 BAR0=1\n\
             vmm stats injected: serial=5"
        );
    }

    #[test]
    fn json_object() {
        assert_eq!(
            report().render(Format::Json),
            "{\"exits\":{\"io_out\":3},\"trapped\":{\"pio:com1\":2,\"mmio:0000:00:04.0 BAR0\":1},\
             \"injected\":{\"serial\":5}}"
        );
        assert_eq!(json_escape("a\"b\\c\n"), "a\\\"b\\\\c\\u000a");
    }

    #[test]
    fn counts_collect() {
        let exits = ExitCounts::default();
        ExitCounts::bump(&exits.mmio_read);
        let pio = devices::Bus::new();
        let mmio = devices::Bus::new();
        let r = Report::collect(&exits, &pio, &mmio, vec![]);
        assert!(r.exits.contains(&("mmio_read".to_string(), 1)));
        assert!(r.trapped.is_empty());
    }
}
