//! `vmm remote --api-socket PATH VERB [ARG]`: one request to a running vmm's API, like
//! Cloud Hypervisor's `ch-remote`. The answer's body goes to stdout; an error is the one line
//! the VMM sent, on stderr, status 1.
//!
//! It only talks to the socket; it never touches a VM itself.

use super::http;
use diag::Advice;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long an answer may take: a hot-remove waits for the guest to let go of the device.
const ANSWER_DEADLINE: Duration = Duration::from_secs(300);

/// What `vmm remote` asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verb {
    /// `ping`
    Ping,
    /// `info`
    Info,
    /// `add-device SPEC`: the `--device` spec (`[vfio-pci,]host=...|sysfsdev=...|path=...,...`).
    AddDevice(String),
    /// `remove-device ID`
    RemoveDevice(String),
    /// `power-button`
    PowerButton,
    /// `shutdown`
    Shutdown,
    /// `pause`
    Pause,
    /// `resume`
    Resume,
}

/// The verbs, for help and errors.
pub const VERBS: &str =
    "ping, info, add-device SPEC, remove-device ID, power-button, shutdown, pause, resume";

impl Verb {
    /// Reads a verb and its argument.
    pub fn parse(verb: &str, arg: Option<&str>) -> Result<Self, Advice> {
        let needs = |what: &str| {
            arg.map(str::to_string).ok_or_else(|| {
                Advice::new(
                    format!("{verb} needs {what}"),
                    format!("write vmm remote --api-socket PATH {verb} {what}"),
                )
            })
        };
        let verb = match verb {
            "ping" => Verb::Ping,
            "info" => Verb::Info,
            "add-device" => Verb::AddDevice(needs("SPEC")?),
            "remove-device" => Verb::RemoveDevice(needs("ID")?),
            "power-button" => Verb::PowerButton,
            "shutdown" => Verb::Shutdown,
            "pause" => Verb::Pause,
            "resume" => Verb::Resume,
            other => {
                return Err(Advice::new(
                    format!("unknown verb '{other}'"),
                    format!("use one of: {VERBS}"),
                ))
            }
        };
        let takes_arg = matches!(verb, Verb::AddDevice(_) | Verb::RemoveDevice(_));
        match (takes_arg, arg) {
            (false, Some(extra)) => Err(Advice::new(
                format!("unexpected argument '{extra}' after {}", verb.endpoint()),
                format!("use one of: {VERBS}"),
            )),
            _ => Ok(verb),
        }
    }

    fn endpoint(&self) -> &'static str {
        match self {
            Verb::Ping => "vmm.ping",
            Verb::Info => "vm.info",
            Verb::AddDevice(_) => "vm.add-device",
            Verb::RemoveDevice(_) => "vm.remove-device",
            Verb::PowerButton => "vm.power-button",
            Verb::Shutdown => "vm.shutdown",
            Verb::Pause => "vm.pause",
            Verb::Resume => "vm.resume",
        }
    }

    /// Method and body of the request.
    fn request(&self) -> (&'static str, Option<serde_json::Value>) {
        match self {
            Verb::Ping | Verb::Info => ("GET", None),
            Verb::AddDevice(spec) => ("PUT", Some(spec_to_json(spec))),
            Verb::RemoveDevice(id) => ("PUT", Some(serde_json::json!({ "id": id }))),
            _ => ("PUT", None),
        }
    }
}

/// `[vfio-pci,]key=value,...` as the JSON object `vm.add-device` takes; the VMM parses and
/// judges it exactly like `--device`.
fn spec_to_json(spec: &str) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    let fields = spec.strip_prefix("vfio-pci").unwrap_or(spec);
    for field in fields.split(',').filter(|f| !f.is_empty()) {
        let (key, value) = field.split_once('=').unwrap_or((field, ""));
        map.insert(key.to_string(), value.into());
    }
    serde_json::Value::Object(map)
}

/// Why `vmm remote` failed.
#[derive(Debug)]
pub enum Error {
    /// No vmm answers on the socket.
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The exchange broke off.
    Exchange {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        what: String,
    },
    /// The VMM refused; its advice.
    Refused(Advice),
}

impl diag::Explain for Error {
    fn advice(&self) -> Advice {
        match self {
            Error::Connect { path, source } => Advice::new(
                format!(
                    "cannot connect to --api-socket {}: {source}",
                    diag::path(path)
                ),
                "check that vmm runs with this --api-socket",
            ),
            Error::Exchange { path, what } => Advice::new(
                format!("--api-socket {}: {what}", diag::path(path)),
                "check that vmm is still running",
            ),
            Error::Refused(advice) => advice.clone(),
        }
    }
}
diag::explained!(Error);

/// Sends `verb` to the vmm at `socket`; returns the answer's body (empty for 204).
pub fn run(socket: &Path, verb: &Verb) -> Result<String, Error> {
    let (method, body) = verb.request();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {}{} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        super::PREFIX,
        verb.endpoint(),
        body.len()
    );
    let exchange = |what: String| Error::Exchange {
        path: socket.to_path_buf(),
        what,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| Error::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let _ = stream.set_read_timeout(Some(ANSWER_DEADLINE));
    stream
        .write_all(request.as_bytes())
        .map_err(|e| exchange(format!("cannot send the request: {e}")))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| exchange(format!("no answer: {e}")))?;
    let response = http::parse_response(&answer).map_err(exchange)?;
    let text = String::from_utf8_lossy(&response.body).into_owned();
    if response.status < 400 {
        return Ok(text);
    }
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let part = |key: &str| value[key].as_str().unwrap_or_default().to_string();
    let advice = match part("problem") {
        p if p.is_empty() => Advice::bare(format!("the VMM answered {}: {text}", response.status)),
        problem => Advice::new(problem, part("fix")),
    };
    Err(Error::Refused(advice))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_and_their_arguments() {
        assert_eq!(Verb::parse("ping", None), Ok(Verb::Ping));
        assert_eq!(
            Verb::parse("remove-device", Some("edu0")),
            Ok(Verb::RemoveDevice("edu0".into()))
        );
        let e = Verb::parse("remove-device", None).unwrap_err().to_string();
        assert_eq!(
            e,
            "remove-device needs ID; write vmm remote --api-socket PATH remove-device ID"
        );
        assert!(Verb::parse("reboot", None)
            .unwrap_err()
            .to_string()
            .starts_with("unknown verb"));
        assert!(Verb::parse("pause", Some("now"))
            .unwrap_err()
            .to_string()
            .starts_with("unexpected argument 'now'"));
    }

    #[test]
    fn device_specs_become_the_add_device_body() {
        let (method, body) =
            Verb::AddDevice("vfio-pci,host=00:03.0,id=edu,managed=on".into()).request();
        assert_eq!(method, "PUT");
        assert_eq!(
            body.unwrap(),
            serde_json::json!({"host": "00:03.0", "id": "edu", "managed": "on"})
        );
        let (_, body) = Verb::AddDevice("path=/sys/bus/pci/devices/0000:00:03.0".into()).request();
        assert_eq!(
            body.unwrap(),
            serde_json::json!({"path": "/sys/bus/pci/devices/0000:00:03.0"})
        );
        // What the VMM makes of it is the same as --device's parse.
        let (_, body) = Verb::AddDevice("host=00:03.0,id=edu".into()).request();
        let body = body.unwrap().to_string();
        let action = super::super::route("PUT", "/api/v1/vm.add-device", body.as_bytes());
        let want = "vfio-pci,host=00:03.0,id=edu".parse().unwrap();
        assert_eq!(action, Ok(super::super::Action::AddDevice(want)));
    }

    #[test]
    fn no_vmm_is_one_line() {
        let path = std::env::temp_dir().join(format!("vmm-remote-none-{}", std::process::id()));
        let e = run(&path, &Verb::Ping).unwrap_err().to_string();
        assert!(e.starts_with("cannot connect to --api-socket "), "{e}");
        assert!(
            e.ends_with("; check that vmm runs with this --api-socket"),
            "{e}"
        );
    }
}
