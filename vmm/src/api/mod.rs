//! The control API (`--api-socket PATH`): HTTP/1.1 with JSON bodies over a Unix socket, the
//! convention of Firecracker and Cloud Hypervisor, with Cloud Hypervisor's endpoint names and
//! shapes where they overlap (docs/API.md, docs/api.yaml).
//!
//! How a request travels, one at a time:
//! 1. The API thread (`vmm-api`, [`server`]) accepts a connection and reads one request with a
//!    deadline and size limits ([`http`]; `httparse` parses it), then turns it into a typed
//!    [`Action`] ([`route`]). A malformed request is answered there and never reaches the VM.
//! 2. It sends the action and a reply channel to the main thread, wakes the main thread's
//!    event loop through an eventfd, and waits for the [`Reply`].
//! 3. The main thread runs the action (it owns the VM: vCPUs, devices, the exit request) and
//!    sends the reply.
//! 4. The API thread writes it and closes the connection.
//!
//! This module and its children never touch VM state: they only turn bytes into actions and
//! replies into bytes. `vmm remote` ([`client`]) is the other end.

pub mod client;
pub mod http;
pub mod server;

use crate::config::DeviceConfig;
use diag::{Advice, Explain};
use serde::Serialize;

/// The path prefix of every endpoint.
pub const PREFIX: &str = "/api/v1/";

/// What the main thread is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `GET vmm.ping`: is the VMM alive.
    Ping,
    /// `GET vm.info`: vCPUs, memory, devices.
    Info,
    /// `PUT vm.add-device`: hot-add a device.
    AddDevice(DeviceConfig),
    /// `PUT vm.remove-device`: hot-remove the device with this id.
    RemoveDevice(String),
    /// `PUT vm.power-button`: press the ACPI power button.
    PowerButton,
    /// `PUT vm.shutdown`: stop the guest now.
    Shutdown,
    /// `PUT vm.pause`: stop running the vCPUs.
    Pause,
    /// `PUT vm.resume`: run them again.
    Resume,
}

/// An HTTP status and its JSON body (none: 204 No Content).
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// The body.
    pub body: Option<serde_json::Value>,
}

/// The body of every error: the one line the command line would print, and its two parts.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: String,
    problem: &'a str,
    fix: &'a str,
}

impl Reply {
    /// 200 with `value` as its body.
    pub fn ok(value: impl Serialize) -> Self {
        let body = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        Self {
            status: 200,
            body: Some(body),
        }
    }

    /// 204: done, nothing to say.
    pub fn done() -> Self {
        Self {
            status: 204,
            body: None,
        }
    }

    /// `status` with `{"error": line, "problem": ..., "fix": ...}`.
    pub fn error(status: u16, e: &impl Explain) -> Self {
        let advice = e.advice();
        let body = ErrorBody {
            error: advice.to_string(),
            problem: &advice.problem,
            fix: &advice.fix,
        };
        Self::ok(body).with_status(status)
    }

    fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
}

/// An endpoint: its name after [`PREFIX`], its method, and whether it takes a body.
struct Endpoint {
    name: &'static str,
    method: &'static str,
}

const ENDPOINTS: [Endpoint; 8] = [
    Endpoint {
        name: "vmm.ping",
        method: "GET",
    },
    Endpoint {
        name: "vm.info",
        method: "GET",
    },
    Endpoint {
        name: "vm.add-device",
        method: "PUT",
    },
    Endpoint {
        name: "vm.remove-device",
        method: "PUT",
    },
    Endpoint {
        name: "vm.power-button",
        method: "PUT",
    },
    Endpoint {
        name: "vm.shutdown",
        method: "PUT",
    },
    Endpoint {
        name: "vm.pause",
        method: "PUT",
    },
    Endpoint {
        name: "vm.resume",
        method: "PUT",
    },
];

/// Turns a request into an action, or the error reply: 404 for an unknown path, 405 for the
/// wrong method, 400 for a body the endpoint cannot take.
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<Action, Reply> {
    let name = path.strip_prefix(PREFIX).unwrap_or("");
    let Some(endpoint) = ENDPOINTS.iter().find(|e| e.name == name) else {
        let all: Vec<String> = ENDPOINTS
            .iter()
            .map(|e| format!("{} {PREFIX}{}", e.method, e.name))
            .collect();
        let advice = Advice::new(
            format!("no endpoint {}", quote(path)),
            format!("use one of: {}", all.join(", ")),
        );
        return Err(Reply::error(404, &advice));
    };
    if method != endpoint.method {
        let advice = Advice::new(
            format!("{method} {path}: wrong method"),
            format!("{} takes {}", endpoint.name, endpoint.method),
        );
        return Err(Reply::error(405, &advice));
    }
    let bad = |advice: Advice| Reply::error(400, &advice);
    Ok(match endpoint.name {
        "vmm.ping" => Action::Ping,
        "vm.info" => Action::Info,
        "vm.add-device" => Action::AddDevice(device_config(body).map_err(bad)?),
        "vm.remove-device" => Action::RemoveDevice(remove_id(body).map_err(bad)?),
        "vm.power-button" => Action::PowerButton,
        "vm.shutdown" => Action::Shutdown,
        "vm.pause" => Action::Pause,
        _ => Action::Resume,
    })
}

/// A path as the user sent it, shown safely.
fn quote(path: &str) -> String {
    path.chars().take(200).collect()
}

/// The body as a JSON object.
fn object(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, Advice> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(Advice::new(
            "the body is not a JSON object",
            "send an object such as {\"id\": \"dev0\"}",
        )),
        Err(e) => Err(Advice::new(
            format!("the body is not valid JSON: {e}"),
            "send a JSON object",
        )),
    }
}

/// `vm.add-device`'s body: Cloud Hypervisor's `{"path", "id", "iommu", "pci_segment"}` and
/// every key of `--device` (`host`, `sysfsdev`, `managed`, ...). It is turned into the
/// `--device` spec and parsed by the same parser, so it is refused with the same line the
/// command line would print.
fn device_config(body: &[u8]) -> Result<DeviceConfig, Advice> {
    let mut spec = String::from("vfio-pci");
    for (key, value) in object(body)? {
        let value = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Bool(b) => if b { "on" } else { "off" }.to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            other => {
                return Err(Advice::new(
                    format!("\"{key}\": {other} is not a string, a number or a boolean"),
                    "give each key a plain value",
                ))
            }
        };
        let key = match (key.as_str(), value.as_str()) {
            // Cloud Hypervisor's keys, as far as vmm can honour them.
            ("path", _) => "sysfsdev".to_string(),
            ("iommu", "off") | ("pci_segment", "0") => continue,
            ("iommu", _) => {
                return Err(Advice::new(
                    "\"iommu\": a virtual IOMMU in front of the device is not supported",
                    "leave \"iommu\" out or set it to false",
                ))
            }
            ("pci_segment", _) => {
                return Err(Advice::new(
                    format!("\"pci_segment\": {value}: vmm has one PCI segment"),
                    "leave \"pci_segment\" out or set it to 0",
                ))
            }
            _ => key,
        };
        if value.contains(',') {
            return Err(Advice::new(
                format!("\"{key}\": {value:?} contains a ','"),
                "give a value without ','",
            ));
        }
        spec.push_str(&format!(",{key}={value}"));
    }
    spec.parse::<DeviceConfig>()
        .map_err(|e| Advice::bare(e.to_string()))
}

/// `vm.remove-device`'s body: `{"id": "..."}`.
fn remove_id(body: &[u8]) -> Result<String, Advice> {
    let map = object(body)?;
    if let Some(key) = map.keys().find(|k| *k != "id") {
        return Err(Advice::new(
            format!("unknown key \"{key}\" in the body"),
            "vm.remove-device takes {\"id\": \"...\"}",
        ));
    }
    match map.get("id") {
        Some(serde_json::Value::String(id)) if !id.is_empty() => Ok(id.clone()),
        _ => Err(Advice::new(
            "no \"id\" in the body",
            "vm.remove-device takes {\"id\": \"...\"}, the id vm.add-device answered",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeviceSource;

    fn error_of(r: Result<Action, Reply>) -> (u16, String) {
        let reply = r.expect_err("an error");
        let line = reply.body.unwrap()["error"].as_str().unwrap().to_string();
        assert!(!line.contains('\n'), "{line}");
        (reply.status, line)
    }

    #[test]
    fn endpoints_and_methods() {
        assert_eq!(route("GET", "/api/v1/vmm.ping", b""), Ok(Action::Ping));
        assert_eq!(route("GET", "/api/v1/vm.info", b""), Ok(Action::Info));
        for (name, action) in [
            ("vm.power-button", Action::PowerButton),
            ("vm.shutdown", Action::Shutdown),
            ("vm.pause", Action::Pause),
            ("vm.resume", Action::Resume),
        ] {
            assert_eq!(route("PUT", &format!("/api/v1/{name}"), b""), Ok(action));
        }
        let (status, line) = error_of(route("GET", "/api/v1/vm.nope", b""));
        assert_eq!(status, 404);
        assert!(line.starts_with("no endpoint /api/v1/vm.nope; use one of: GET /api/v1/vmm.ping"));
        let (status, line) = error_of(route("GET", "/api/v1/vm.shutdown", b""));
        assert_eq!(status, 405);
        assert_eq!(
            line,
            "GET /api/v1/vm.shutdown: wrong method; vm.shutdown takes PUT"
        );
        assert_eq!(error_of(route("PUT", "/", b"")).0, 404);
    }

    #[test]
    fn add_device_takes_cloud_hypervisor_and_device_keys() {
        let body = br#"{"path": "/sys/bus/pci/devices/0000:00:03.0/", "id": "edu0"}"#;
        let Ok(Action::AddDevice(d)) = route("PUT", "/api/v1/vm.add-device", body) else {
            panic!("not an add")
        };
        assert_eq!(
            d.source,
            DeviceSource::Sysfs("/sys/bus/pci/devices/0000:00:03.0/".into())
        );
        assert_eq!(d.id.as_deref(), Some("edu0"));
        let body = br#"{"host": "00:04.0", "managed": true, "iommu": false, "pci_segment": 0}"#;
        let Ok(Action::AddDevice(d)) = route("PUT", "/api/v1/vm.add-device", body) else {
            panic!("not an add")
        };
        assert!(d.managed);
        assert_eq!(
            d.source,
            DeviceSource::Host("0000:00:04.0".parse().unwrap())
        );
    }

    #[test]
    fn add_device_refusals_are_the_command_lines() {
        let add = |body: &[u8]| error_of(route("PUT", "/api/v1/vm.add-device", body));
        let (status, line) = add(br#"{"host": "00:03"}"#);
        assert_eq!(status, 400);
        let cli = "vfio-pci,host=00:03".parse::<DeviceConfig>().unwrap_err();
        assert_eq!(line, cli.to_string());
        let (_, line) = add(br#"{"bdf": "00:03.0"}"#);
        assert!(line.contains("unknown key 'bdf'"), "{line}");
        let (_, line) = add(b"{not json");
        assert!(line.starts_with("the body is not valid JSON: "), "{line}");
        let (_, line) = add(b"[1]");
        assert!(line.starts_with("the body is not a JSON object"), "{line}");
        assert!(add(br#"{"iommu": true, "host": "00:03.0"}"#)
            .1
            .contains("virtual IOMMU"));
        assert!(add(br#"{"pci_segment": 1, "host": "00:03.0"}"#)
            .1
            .contains("one PCI segment"));
        assert!(add(br#"{"host": "00:03.0,managed=on"}"#)
            .1
            .contains("contains a ','"));
        assert!(add(br#"{"host": ["00:03.0"]}"#)
            .1
            .contains("is not a string"));
        assert!(add(b"{}").1.contains("names no device"));
    }

    #[test]
    fn remove_device_takes_an_id() {
        assert_eq!(
            route("PUT", "/api/v1/vm.remove-device", br#"{"id": "edu0"}"#),
            Ok(Action::RemoveDevice("edu0".into()))
        );
        let remove = |body: &[u8]| error_of(route("PUT", "/api/v1/vm.remove-device", body));
        assert!(remove(b"{}").1.starts_with("no \"id\" in the body"));
        assert!(remove(br#"{"id": ""}"#).1.starts_with("no \"id\""));
        assert!(remove(br#"{"id": 3}"#).1.starts_with("no \"id\""));
        assert!(remove(br#"{"id": "a", "x": 1}"#)
            .1
            .starts_with("unknown key \"x\""));
        assert_eq!(remove(b"").0, 400);
    }

    #[test]
    fn error_bodies_carry_the_line_and_its_parts() {
        let reply = Reply::error(409, &Advice::new("the guest is paused", "resume it first"));
        assert_eq!(reply.status, 409);
        let body = reply.body.unwrap();
        assert_eq!(body["error"], "the guest is paused; resume it first");
        assert_eq!(body["problem"], "the guest is paused");
        assert_eq!(body["fix"], "resume it first");
        assert_eq!(
            Reply::done(),
            Reply {
                status: 204,
                body: None
            }
        );
    }
}
