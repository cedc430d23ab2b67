//! A minimal `log` backend: one line per record on stderr, `vmm: LEVEL: message`. The level
//! comes from `-v` on the command line ([`set_verbosity`]: -v info, -vv debug, -vvv trace),
//! else from `RUST_LOG` (error, warn, info, debug, trace); warnings are shown by default.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Crates of this workspace: their warnings always show.
const OUR_CRATES: [&str; 6] = ["vmm", "vfio", "pci", "devices", "arch", "resources"];

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        let ours = OUR_CRATES
            .iter()
            .any(|c| metadata.target().split("::").next() == Some(c));
        // Libraries' warnings are about their own internals (vfio-ioctls warns about IRQ
        // indices a device does not have): shown only when debugging.
        let limit = if ours || log::max_level() >= LevelFilter::Debug {
            log::max_level()
        } else {
            LevelFilter::Error
        };
        metadata.level() <= limit
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                Level::Error => "error",
                Level::Warn => "warning",
                Level::Info => "info",
                Level::Debug => "debug",
                Level::Trace => "trace",
            };
            // Milliseconds since start: the debug log doubles as a startup profile.
            let ms = START
                .get()
                .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0);
            // The terminal may be raw: end lines with \r\n so they start at column 0.
            // A closed stderr (e.g. piped into `head`) must not end vmm: errors are ignored.
            let _ = write!(
                std::io::stderr(),
                "vmm: {level}: [{ms:.1} ms] {}\r\n",
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

/// The level named by `value` (as in `RUST_LOG`), warnings when unset or unknown.
pub fn level_from(value: Option<&str>) -> LevelFilter {
    value
        .and_then(|v| v.parse().ok())
        .unwrap_or(LevelFilter::Warn)
}

/// The level asked for by `count` `-v` flags; `None` for none (the level stays as set).
pub fn verbosity_level(count: u8) -> Option<LevelFilter> {
    match count {
        0 => None,
        1 => Some(LevelFilter::Info),
        2 => Some(LevelFilter::Debug),
        _ => Some(LevelFilter::Trace),
    }
}

/// Applies `count` `-v` flags, which win over `RUST_LOG`; 0 keeps what [`init`] set.
pub fn set_verbosity(count: u8) {
    if let Some(level) = verbosity_level(count) {
        log::set_max_level(level);
    }
}

/// Installs the logger with the level `RUST_LOG` names; later calls do nothing.
pub fn init() {
    static LOGGER: StderrLogger = StderrLogger;
    START.get_or_init(Instant::now);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level_from(std::env::var("RUST_LOG").ok().as_deref()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(level_from(None), LevelFilter::Warn);
        assert_eq!(level_from(Some("debug")), LevelFilter::Debug);
        assert_eq!(level_from(Some("INFO")), LevelFilter::Info);
        assert_eq!(level_from(Some("nonsense")), LevelFilter::Warn);
    }

    #[test]
    fn verbosity() {
        assert_eq!(verbosity_level(0), None);
        assert_eq!(verbosity_level(1), Some(LevelFilter::Info));
        assert_eq!(verbosity_level(2), Some(LevelFilter::Debug));
        assert_eq!(verbosity_level(3), Some(LevelFilter::Trace));
        assert_eq!(verbosity_level(9), Some(LevelFilter::Trace));
    }
}
