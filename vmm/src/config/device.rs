//! `--device` specs (`vfio-pci,key=value,...`, as Cloud Hypervisor writes them) and PCI
//! addresses: parsed into [`DeviceConfig`] and [`PciBdf`], every refusal a [`DeviceError`] or
//! [`BdfError`] that names the field and lists what is accepted.
//!
//! A spec is parsed as bytes, so a `sysfsdev=` path keeps bytes that are not UTF-8; every
//! other value must be text. This module never looks at the host: whether the device exists
//! is for `vfio::sysfs`.

use super::{shown, Error};
use diag::{Advice, Explain};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A PCI address `domain:bus:slot.function`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciBdf {
    /// PCI domain (segment).
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0-31.
    pub slot: u8,
    /// Function number, 0-7.
    pub function: u8,
}

/// What is wrong with a PCI address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BdfProblem {
    /// No `.FUNCTION` at the end.
    NoFunction,
    /// Not one or two `:`.
    Colons,
    /// Domain, bus or slot not hex within its range.
    Field {
        /// `domain`, `bus` or `slot`.
        name: &'static str,
        /// What was written.
        text: String,
        /// Its largest value.
        max: u32,
    },
    /// The function is not 0-7.
    Function(String),
}

/// A PCI address that does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BdfError {
    /// The address as written.
    pub text: String,
    /// What is wrong with it.
    pub problem: BdfProblem,
}

impl Explain for BdfError {
    fn advice(&self) -> Advice {
        let why = match &self.problem {
            BdfProblem::NoFunction => "no '.FUNCTION'".to_string(),
            BdfProblem::Colons => "expected one or two ':'".to_string(),
            BdfProblem::Field { name, text, max } => {
                format!("{name} '{text}' is not hex 0-{max:#x}")
            }
            BdfProblem::Function(f) => format!("function '{f}' is not 0-7"),
        };
        Advice::new(
            format!("bad PCI address '{}': {why}", self.text),
            "write [DOMAIN:]BUS:SLOT.FUNCTION, e.g. 0000:01:00.0",
        )
    }
}
diag::explained!(BdfError);

impl std::fmt::Display for PciBdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.domain, self.bus, self.slot, self.function
        )
    }
}

impl std::str::FromStr for PciBdf {
    type Err = BdfError;

    /// `[domain:]bus:slot.function`: hex domain, bus and slot, decimal function.
    fn from_str(s: &str) -> Result<Self, BdfError> {
        let bad = |problem| BdfError {
            text: s.to_string(),
            problem,
        };
        let (rest, function) = s.rsplit_once('.').ok_or(bad(BdfProblem::NoFunction))?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, slot) = match parts[..] {
            [bus, slot] => ("0", bus, slot),
            [domain, bus, slot] => (domain, bus, slot),
            _ => return Err(bad(BdfProblem::Colons)),
        };
        let hex_digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit());
        let hex = |text: &str, digits: usize, max: u32, name| match u32::from_str_radix(text, 16) {
            Ok(v) if hex_digits(text) && text.len() <= digits && v <= max => Ok(v),
            _ => Err(bad(BdfProblem::Field {
                name,
                text: text.to_string(),
                max,
            })),
        };
        let domain = hex(domain, 4, 0xffff, "domain")? as u16;
        let bus = hex(bus, 2, 0xff, "bus")? as u8;
        let slot = hex(slot, 2, 0x1f, "slot")? as u8;
        let function = match function.parse::<u8>() {
            Ok(f) if f <= 7 && function.len() == 1 => f,
            _ => return Err(bad(BdfProblem::Function(function.to_string()))),
        };
        Ok(PciBdf {
            domain,
            bus,
            slot,
            function,
        })
    }
}

/// Where a passed-through device is found on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSource {
    /// By PCI address; its sysfs path is `/sys/bus/pci/devices/<bdf>`.
    Host(PciBdf),
    /// By sysfs path (PCI device or mdev).
    Sysfs(PathBuf),
}

/// One `--device vfio-pci,...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The host device.
    pub source: DeviceSource,
    /// Optional name for messages.
    pub id: Option<String>,
    /// `managed=on`: bind the device to vfio-pci for the run, its own driver back after.
    pub managed: bool,
    /// `rombar=on` (default): the guest sees the expansion ROM BAR; `off` hides it.
    pub rombar: bool,
    /// `romfile=PATH`: the ROM the guest reads is this file, not the device's.
    pub romfile: Option<PathBuf>,
    /// `p2p=on` (default): the device's mmapped BARs are also mapped for DMA at their guest
    /// addresses, so other passed-through devices can reach them.
    pub p2p: bool,
}

/// What is wrong with a `--device` spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// The first field is not `vfio-pci`.
    UnknownType(String),
    /// A field without `=`.
    NotKeyValue(String),
    /// A key vmm does not know.
    UnknownKey(String),
    /// `key=` with nothing after it.
    EmptyValue(&'static str),
    /// The same key twice.
    KeyTwice(&'static str),
    /// A value that must be text is not UTF-8.
    NotText(&'static str),
    /// Neither `host=` nor `sysfsdev=`.
    NoDevice,
    /// `managed=` neither `on` nor `off`.
    Managed(String),
    /// `rombar=` or `p2p=` neither `on` nor `off`.
    OnOff {
        /// The key.
        key: &'static str,
        /// As given.
        value: String,
    },
    /// Both `rombar=off` and `romfile=`.
    RomfileHidden,
    /// `host=` is not a PCI address.
    Address(BdfError),
}

/// The keys of a spec.
const KEYS: [&str; 7] = [
    "host", "sysfsdev", "id", "managed", "rombar", "romfile", "p2p",
];

impl Explain for DeviceError {
    fn advice(&self) -> Advice {
        let keys = format!("the keys are {}", KEYS.join(", "));
        match self {
            Self::UnknownType(t) => Advice::new(
                format!("unknown device type '{t}'"),
                "the supported type is vfio-pci",
            ),
            Self::NotKeyValue(f) => Advice::new(format!("'{f}' is not KEY=VALUE"), keys),
            Self::UnknownKey(k) => Advice::new(format!("unknown key '{k}'"), keys),
            Self::EmptyValue(k) => {
                Advice::new(format!("empty value for '{k}'"), format!("write {k}=VALUE"))
            }
            Self::KeyTwice(k) => Advice::new(format!("'{k}' given twice"), "give it once"),
            Self::NotText(k) => Advice::new(
                format!("the value of '{k}' is not UTF-8 text"),
                "write it in UTF-8",
            ),
            Self::NoDevice => {
                Advice::new("names no device", "add host=BUS:SLOT.FN or sysfsdev=PATH")
            }
            Self::Managed(v) => Advice::new(
                format!("bad value '{v}' for 'managed'"),
                "write managed=on or managed=off",
            ),
            Self::OnOff { key, value } => Advice::new(
                format!("bad value '{value}' for '{key}'"),
                format!("write {key}=on or {key}=off"),
            ),
            Self::RomfileHidden => Advice::new(
                "both rombar=off and romfile=",
                "drop one: rombar=off hides the ROM, romfile= serves a file as the ROM",
            ),
            Self::Address(e) => e.advice(),
        }
    }
}
diag::explained!(DeviceError);

impl DeviceConfig {
    /// Parses `vfio-pci,key=value,...`; `sysfsdev=` wins over `host=` when both are given.
    pub fn parse(spec: &OsStr) -> Result<Self, Error> {
        parse_fields(spec.as_bytes()).map_err(|error| Error::Device {
            spec: shown(spec),
            error,
        })
    }

    /// The device as `vfio::Sysfs::device` takes it: a PCI address or a sysfs path.
    pub fn spec(&self) -> String {
        match &self.source {
            DeviceSource::Host(bdf) => bdf.to_string(),
            DeviceSource::Sysfs(path) => path.display().to_string(),
        }
    }

    /// The PCI address this names, when it names one: `host=`, or a sysfs path whose last
    /// component is a full address (a PCI device's sysfs directory is named by its
    /// address, wherever the path reaches it). Two specs with the same address are the same
    /// device.
    pub fn address(&self) -> Option<PciBdf> {
        match &self.source {
            DeviceSource::Host(bdf) => Some(*bdf),
            DeviceSource::Sysfs(path) => sysfs_address(path),
        }
    }
}

fn sysfs_address(path: &Path) -> Option<PciBdf> {
    let name = path.file_name()?.to_str()?;
    // Only the full DDDD:BB:SS.F form: a PCI device directory's name.
    (name.len() == 12).then(|| name.parse().ok()).flatten()
}

impl std::str::FromStr for DeviceConfig {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self, Error> {
        Self::parse(OsStr::new(spec))
    }
}

fn text(bytes: &[u8]) -> String {
    shown(OsStr::from_bytes(bytes))
}

fn parse_fields(spec: &[u8]) -> Result<DeviceConfig, DeviceError> {
    let mut fields = spec.split(|&b| b == b',');
    let kind = fields.next().unwrap_or_default();
    if kind != b"vfio-pci" {
        return Err(DeviceError::UnknownType(text(kind)));
    }
    let mut values: [Option<&[u8]>; KEYS.len()] = [None; KEYS.len()];
    for field in fields {
        let eq = field.iter().position(|&b| b == b'=');
        let (key, value) = match eq {
            Some(eq) => (&field[..eq], &field[eq + 1..]),
            None => return Err(DeviceError::NotKeyValue(text(field))),
        };
        let Some(i) = KEYS.iter().position(|k| k.as_bytes() == key) else {
            return Err(DeviceError::UnknownKey(text(key)));
        };
        if value.is_empty() {
            return Err(DeviceError::EmptyValue(KEYS[i]));
        }
        if values[i].replace(value).is_some() {
            return Err(DeviceError::KeyTwice(KEYS[i]));
        }
    }
    let [host, sysfsdev, id, managed, rombar, romfile, p2p] = values;
    let source = match (sysfsdev, utf8("host", host)?) {
        (Some(path), _) => DeviceSource::Sysfs(PathBuf::from(OsStr::from_bytes(path))),
        (None, Some(bdf)) => DeviceSource::Host(bdf.parse().map_err(DeviceError::Address)?),
        (None, None) => return Err(DeviceError::NoDevice),
    };
    let managed = match utf8("managed", managed)? {
        None | Some("off") => false,
        Some("on") => true,
        Some(other) => return Err(DeviceError::Managed(other.to_string())),
    };
    let rombar = on_off("rombar", rombar, true)?;
    if !rombar && romfile.is_some() {
        return Err(DeviceError::RomfileHidden);
    }
    Ok(DeviceConfig {
        source,
        id: utf8("id", id)?.map(str::to_owned),
        managed,
        rombar,
        romfile: romfile.map(|p| PathBuf::from(OsStr::from_bytes(p))),
        p2p: on_off("p2p", p2p, true)?,
    })
}

/// The value of an `on`/`off` key, `default` when not given.
fn on_off(key: &'static str, value: Option<&[u8]>, default: bool) -> Result<bool, DeviceError> {
    match utf8(key, value)? {
        None => Ok(default),
        Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(other) => Err(DeviceError::OnOff {
            key,
            value: other.to_string(),
        }),
    }
}

/// The value of `key`, when given, as text.
fn utf8<'a>(key: &'static str, value: Option<&'a [u8]>) -> Result<Option<&'a str>, DeviceError> {
    value
        .map(|v| std::str::from_utf8(v).map_err(|_| DeviceError::NotText(key)))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_forms() {
        let b: PciBdf = "0000:01:00.0".parse().unwrap();
        let want = PciBdf {
            domain: 0,
            bus: 1,
            slot: 0,
            function: 0,
        };
        assert_eq!(b, want);
        let b: PciBdf = "00:03.0".parse().unwrap();
        assert_eq!((b.domain, b.bus, b.slot, b.function), (0, 0, 3, 0));
        let b: PciBdf = "ffff:ff:1f.7".parse().unwrap();
        assert_eq!(
            (b.domain, b.bus, b.slot, b.function),
            (0xffff, 0xff, 0x1f, 7)
        );
        assert_eq!(b.to_string(), "ffff:ff:1f.7");
        assert_eq!(
            "0:a:1.2".parse::<PciBdf>().unwrap().to_string(),
            "0000:0a:01.2"
        );
    }

    #[test]
    fn bdf_rejections() {
        for (bad, why) in [
            ("01:00", "no '.FUNCTION'"),
            ("01.0", "one or two ':'"),
            ("0:0:0:0.0", "one or two ':'"),
            ("10000:00:00.0", "domain '10000'"),
            ("00:100:00.0", "bus '100'"),
            ("00:20.0", "slot '20' is not hex 0-0x1f"),
            ("00:1g.0", "slot '1g'"),
            ("00:00.8", "function '8'"),
            ("00:00.a", "function 'a'"),
            ("00:00.", "function ''"),
            (":00.0", "bus ''"),
            ("+1:00.0", "bus '+1'"),
        ] {
            let e = bad.parse::<PciBdf>().unwrap_err();
            let line = e.to_string();
            assert!(line.contains(why), "{bad}: {line}");
            assert!(line.starts_with(&format!("bad PCI address '{bad}': ")));
            assert_eq!(
                e.advice().fix,
                "write [DOMAIN:]BUS:SLOT.FUNCTION, e.g. 0000:01:00.0"
            );
        }
        let e = "0:0\n.0".parse::<PciBdf>().unwrap_err().to_string();
        assert!(!e.contains('\n') && e.contains("'0:0\\n.0'"), "{e}");
    }

    #[test]
    fn specs() {
        let d: DeviceConfig = "vfio-pci,host=00:03.0,id=edu".parse().unwrap();
        assert_eq!(
            d.source,
            DeviceSource::Host("0000:00:03.0".parse().unwrap())
        );
        assert_eq!(d.id.as_deref(), Some("edu"));
        assert!(!d.managed);
        let d: DeviceConfig = "vfio-pci,host=00:04.0,managed=on".parse().unwrap();
        assert!(d.managed);
        let d: DeviceConfig = "vfio-pci,host=00:04.0,managed=off".parse().unwrap();
        assert!(!d.managed);
        let d: DeviceConfig = "vfio-pci,host=00:03.0,sysfsdev=/sys/bus/pci/devices/0000:00:04.0"
            .parse()
            .unwrap();
        assert_eq!(
            d.source,
            DeviceSource::Sysfs("/sys/bus/pci/devices/0000:00:04.0".into()),
            "sysfsdev wins"
        );
        assert!(d.rombar && d.p2p && d.romfile.is_none(), "defaults: {d:?}");
        let d: DeviceConfig = "vfio-pci,host=00:03.0,rombar=off,p2p=off".parse().unwrap();
        assert!(!d.rombar && !d.p2p);
        let d: DeviceConfig = "vfio-pci,host=00:03.0,romfile=/tmp/vbios.rom,rombar=on,p2p=on"
            .parse()
            .unwrap();
        assert_eq!(d.romfile, Some(PathBuf::from("/tmp/vbios.rom")));
        assert!(d.rombar && d.p2p);
        // sysfsdev wins even over a malformed host=.
        let d: DeviceConfig = "vfio-pci,sysfsdev=/sys/bus/mdev/devices/u,host=zz"
            .parse()
            .unwrap();
        assert_eq!(
            d.source,
            DeviceSource::Sysfs("/sys/bus/mdev/devices/u".into())
        );
    }

    #[test]
    fn a_sysfs_path_keeps_its_bytes() {
        let spec = OsStr::from_bytes(b"vfio-pci,sysfsdev=/sys/devices/\xff");
        let d = DeviceConfig::parse(spec).unwrap();
        let want = PathBuf::from(OsStr::from_bytes(b"/sys/devices/\xff"));
        assert_eq!(d.source, DeviceSource::Sysfs(want));
        for (bytes, key) in [
            (&b"vfio-pci,host=0\xff"[..], "host"),
            (b"vfio-pci,host=00:03.0,id=\xfe", "id"),
            (b"vfio-pci,host=00:03.0,managed=\xc3", "managed"),
        ] {
            let e = DeviceConfig::parse(OsStr::from_bytes(bytes)).unwrap_err();
            let line = e.to_string();
            assert!(
                line.contains(&format!("the value of '{key}' is not UTF-8 text")),
                "{line}"
            );
            assert!(line.contains("\\x"), "the bytes shown escaped: {line}");
        }
    }

    #[test]
    fn addresses_of_specs() {
        let addr = |s: &str| s.parse::<DeviceConfig>().unwrap().address();
        let bdf = "0000:01:00.0".parse().ok();
        assert_eq!(addr("vfio-pci,host=01:00.0"), bdf);
        assert_eq!(
            addr("vfio-pci,sysfsdev=/sys/bus/pci/devices/0000:01:00.0"),
            bdf
        );
        assert_eq!(
            addr("vfio-pci,sysfsdev=/sys/devices/pci0000:00/0000:00:02.0/0000:01:00.0/"),
            bdf
        );
        assert_eq!(addr("vfio-pci,sysfsdev=/sys/bus/mdev/devices/uuid"), None);
        assert_eq!(addr("vfio-pci,sysfsdev=/sys/bus/pci/devices/01:00.0"), None);
    }

    #[test]
    fn rejections() {
        for (bad, why) in [
            (
                "virtio-net,host=00:03.0",
                "unknown device type 'virtio-net'; the supported type is vfio-pci",
            ),
            ("", "unknown device type ''"),
            (
                "vfio-pci",
                "names no device; add host=BUS:SLOT.FN or sysfsdev=PATH",
            ),
            ("vfio-pci,id=x", "names no device"),
            (
                "vfio-pci,host",
                "'host' is not KEY=VALUE; the keys are host, sysfsdev, id, managed",
            ),
            ("vfio-pci,host=00:03.0,", "'' is not KEY=VALUE"),
            ("vfio-pci,host=", "empty value for 'host'; write host=VALUE"),
            (
                "vfio-pci,bdf=00:03.0",
                "unknown key 'bdf'; the keys are host, sysfsdev, id, managed",
            ),
            ("vfio-pci,host=00:03.0,host=00:04.0", "'host' given twice"),
            (
                "vfio-pci,host=00:03",
                "bad PCI address '00:03': no '.FUNCTION'",
            ),
            (
                "vfio-pci,host=00:03.0,managed=yes",
                "bad value 'yes' for 'managed'; write managed=on or managed=off",
            ),
            (
                "vfio-pci,host=00:03.0,rombar=0",
                "bad value '0' for 'rombar'; write rombar=on or rombar=off",
            ),
            (
                "vfio-pci,host=00:03.0,p2p=no",
                "bad value 'no' for 'p2p'; write p2p=on or p2p=off",
            ),
            (
                "vfio-pci,host=00:03.0,romfile=",
                "empty value for 'romfile'",
            ),
            (
                "vfio-pci,host=00:03.0,romfile=a,romfile=b",
                "'romfile' given twice",
            ),
            (
                "vfio-pci,host=00:03.0,rombar=off,romfile=v.rom",
                "both rombar=off and romfile=; drop one",
            ),
            (
                "vfio-pci,host=00:03.0,rom=off",
                "the keys are host, sysfsdev, id, managed, rombar, romfile, p2p",
            ),
        ] {
            let e = bad.parse::<DeviceConfig>().unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("--device '{bad}': ")),
                "names the spec: {e}"
            );
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
