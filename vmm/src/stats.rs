//! What the VMM's userspace handled: vCPU exits by kind, trapped accesses per device (every
//! bus access is an exit handled here), and interrupts the VMM injected itself. Printed on
//! exit with `--stats` (text) or `--stats=json`, on stderr. Passed-through devices'
//! interrupts never show up here: they go from VFIO eventfds to KVM irqfds in the kernel.

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

/// Everything `--stats` prints; in JSON one object per group, counters in their order.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Exits by kind.
    #[serde(serialize_with = "as_object")]
    pub exits: Vec<(String, u64)>,
    /// Trapped accesses by device ("pio:NAME" / "mmio:NAME").
    #[serde(serialize_with = "as_object")]
    pub trapped: Vec<(String, u64)>,
    /// Interrupts the VMM injected, by source.
    #[serde(serialize_with = "as_object")]
    pub injected: Vec<(String, u64)>,
}

/// Name-count pairs as one JSON object, in their order.
fn as_object<S: serde::Serializer>(pairs: &[(String, u64)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
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
                serde_json::to_string(self).expect("strings and numbers always serialize")
            }
        }
    }
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
        let odd = Report {
            trapped: vec![("mmio:a\"b\\c\n".into(), 1)],
            ..Default::default()
        };
        assert_eq!(
            odd.render(Format::Json),
            r#"{"exits":{},"trapped":{"mmio:a\"b\\c\n":1},"injected":{}}"#
        );
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
