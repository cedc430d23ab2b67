//! The API thread: a Unix socket created for this user only (mode 0600), one connection and
//! one request at a time, each turned into an [`Action`] for the main thread, which answers
//! through a per-request channel. The thread installs its own seccomp filter before it
//! accepts anything.
//!
//! It must not touch VM state: it only reads requests, sends actions and writes replies.

use super::http::{self, ReadError};
use super::{route, Action, Reply};
use diag::Advice;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

/// Why the API socket could not be set up.
#[derive(Debug)]
pub enum Error {
    /// Another process answers on the path.
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket.
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The socket could not be created.
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The thread or its eventfd could not be created.
    Thread(std::io::Error),
}

impl diag::Explain for Error {
    fn advice(&self) -> Advice {
        match self {
            Error::InUse { path } => Advice::new(
                format!(
                    "--api-socket {}: another process answers there",
                    diag::path(path)
                ),
                "give each vmm its own socket path",
            ),
            Error::NotASocket { path } => Advice::new(
                format!(
                    "--api-socket {} exists and is not a socket",
                    diag::path(path)
                ),
                "give a path where vmm may create its socket",
            ),
            Error::Bind { path, source } => Advice::new(
                format!(
                    "--api-socket {}: cannot create the socket: {source}",
                    diag::path(path)
                ),
                "check that the directory exists and is writable, and that the path is shorter \
                 than 108 bytes",
            ),
            Error::Thread(e) => Advice::new(
                format!("cannot start the API thread: {e}"),
                "check the process's limits (ulimit -u) and free memory",
            ),
        }
    }
}
diag::explained!(Error);

/// An action waiting for the main thread, with the way back to its client.
pub struct Pending {
    /// What is asked.
    pub action: Action,
    reply: SyncSender<Reply>,
}

impl Pending {
    /// Sends the answer to the waiting client.
    pub fn answer(self, reply: Reply) {
        let _ = self.reply.send(reply);
    }
}

/// Whether the API thread is between reading a request and having written its answer.
#[derive(Default)]
struct Busy {
    busy: Mutex<bool>,
    idle: Condvar,
}

impl Busy {
    fn set(&self, busy: bool) {
        *self.busy.lock().unwrap_or_else(|e| e.into_inner()) = busy;
        self.idle.notify_all();
    }
}

/// The main thread's end of the API.
pub struct ApiServer {
    path: PathBuf,
    requests: Receiver<Pending>,
    wake: Arc<EventFd>,
    busy: Arc<Busy>,
}

/// How long the main thread waits, on its way out, for the API thread to finish writing an
/// answer (`vm.shutdown`'s).
const LAST_ANSWER_PATIENCE: Duration = Duration::from_secs(1);

impl ApiServer {
    /// Creates the socket at `path` and starts the API thread; with `seccomp`, the thread
    /// runs under its own filter.
    pub fn start(path: &Path, seccomp: bool) -> Result<Self, Error> {
        let listener = bind(path)?;
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(Error::Thread)?);
        let busy = Arc::new(Busy::default());
        let (tx, requests) = mpsc::channel();
        let thread = Worker {
            tx,
            wake: wake.clone(),
            busy: busy.clone(),
        };
        std::thread::Builder::new()
            .name("vmm-api".into())
            .spawn(move || thread.serve(listener, seccomp))
            .map_err(Error::Thread)?;
        Ok(Self {
            path: path.to_path_buf(),
            requests,
            wake,
            busy,
        })
    }

    /// The eventfd the API thread writes when an action waits; the event loop watches it.
    pub fn eventfd(&self) -> &EventFd {
        &self.wake
    }

    /// The actions waiting now.
    pub fn take(&self) -> Vec<Pending> {
        let _ = self.wake.read();
        self.requests.try_iter().collect()
    }

    /// On the way out: waits (briefly) until the last answer is written, then removes the
    /// socket.
    pub fn finish(self) {
        let busy = self.busy.busy.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .busy
            .idle
            .wait_timeout_while(busy, LAST_ANSWER_PATIENCE, |busy| *busy);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds a socket at `path` that only this user can use. A socket file nobody answers on (a
/// vmm that was killed) is replaced; a live one or anything that is not a socket is refused.
fn bind(path: &Path) -> Result<UnixListener, Error> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::NotASocket {
                path: path.to_path_buf(),
            });
        }
        if UnixStream::connect(path).is_ok() {
            return Err(Error::InUse {
                path: path.to_path_buf(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |source| Error::Bind {
        path: path.to_path_buf(),
        source,
    };
    // SAFETY: umask only changes this process's file creation mask; restored right after.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener.map_err(bind_err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// The API thread's state.
struct Worker {
    tx: mpsc::Sender<Pending>,
    wake: Arc<EventFd>,
    busy: Arc<Busy>,
}

impl Worker {
    fn serve(self, listener: UnixListener, seccomp: bool) {
        if let Err(e) = crate::seccomp::apply_if(seccomp, crate::seccomp::Thread::Api) {
            log::error!("api: {e}; the API is off");
            return;
        }
        for stream in listener.incoming() {
            match stream {
                Ok(mut stream) => self.exchange(&mut stream),
                Err(e) => log::debug!("api: accept: {e}"),
            }
        }
    }

    /// Reads one request, has it answered, writes the answer.
    fn exchange(&self, stream: &mut UnixStream) {
        let (reply, unread) = match http::read_request(stream) {
            Err(ReadError::Closed) => return,
            Err(ReadError::Refused(reply)) => (reply, true),
            Ok(req) => match route(&req.method, &req.path, &req.body) {
                Err(reply) => (reply, false),
                Ok(action) => {
                    self.busy.set(true);
                    (self.ask(action), false)
                }
            },
        };
        http::write_response(stream, &reply);
        self.busy.set(false);
        if unread {
            http::linger(stream);
        }
    }

    /// Hands `action` to the main thread and waits for its answer.
    fn ask(&self, action: Action) -> Reply {
        let (reply, answer) = mpsc::sync_channel(1);
        let gone = || {
            Reply::error(
                503,
                &Advice::new("vmm is shutting down", "start a new vmm for the next guest"),
            )
        };
        if self.tx.send(Pending { action, reply }).is_err() || self.wake.write(1).is_err() {
            return gone();
        }
        answer.recv().unwrap_or_else(|_| gone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;

    fn socket_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vmm-api-{}-{name}.sock", std::process::id()))
    }

    fn send(path: &Path, request: &str) -> http::Response {
        let mut s = UnixStream::connect(path).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        http::parse_response(&buf).unwrap()
    }

    /// The main thread's side in a test: answers `n` actions as `answer` says.
    fn answer_n(server: &ApiServer, n: usize, answer: impl Fn(&Action) -> Reply) -> Vec<Action> {
        let mut seen = Vec::new();
        while seen.len() < n {
            for p in server.take() {
                let reply = answer(&p.action);
                seen.push(p.action.clone());
                p.answer(reply);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        seen
    }

    #[test]
    fn requests_reach_the_main_thread_and_answers_come_back() {
        let path = socket_path("roundtrip");
        let server = ApiServer::start(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the socket is this user's only");
        let client = {
            let path = path.clone();
            std::thread::spawn(move || {
                let ping = send(&path, "GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n");
                let pause = send(&path, "PUT /api/v1/vm.pause HTTP/1.1\r\n\r\n");
                (ping, pause)
            })
        };
        let seen = answer_n(&server, 2, |a| match a {
            Action::Ping => Reply::ok(serde_json::json!({"version": "x"})),
            _ => Reply::done(),
        });
        assert_eq!(seen, vec![Action::Ping, Action::Pause]);
        let (ping, pause) = client.join().unwrap();
        assert_eq!(ping.status, 200);
        assert_eq!(pause.status, 204);
        server.finish();
        assert!(!path.exists(), "the socket is removed on the way out");
    }

    #[test]
    fn bad_requests_never_reach_the_main_thread() {
        let path = socket_path("bad");
        let server = ApiServer::start(&path, false).unwrap();
        assert_eq!(
            send(&path, "GET /api/v1/nothing HTTP/1.1\r\n\r\n").status,
            404
        );
        let bad_json = "PUT /api/v1/vm.remove-device HTTP/1.1\r\nContent-Length: 3\r\n\r\n{x}";
        assert_eq!(send(&path, bad_json).status, 400);
        // A client that hangs up mid-body: nothing happens, the next one is served.
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"PUT /api/v1/vm.shutdown HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
            .unwrap();
        drop(s);
        assert_eq!(
            send(&path, "GET /api/v1/nothing HTTP/1.1\r\n\r\n").status,
            404
        );
        assert!(server.take().is_empty(), "nothing reached the main thread");
        server.finish();
    }

    #[test]
    fn socket_paths_in_use_or_not_sockets_are_refused() {
        let path = socket_path("inuse");
        let server = ApiServer::start(&path, false).unwrap();
        let e = ApiServer::start(&path, false).err().unwrap().to_string();
        assert!(e.ends_with("another process answers there; give each vmm its own socket path"));
        server.finish();
        // A stale socket (its vmm was killed) is replaced.
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        ApiServer::start(&path, false).unwrap().finish();
        let file = socket_path("file");
        std::fs::write(&file, b"keep me").unwrap();
        let e = ApiServer::start(&file, false).err().unwrap().to_string();
        assert!(e.contains("exists and is not a socket"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        std::fs::remove_file(&file).unwrap();
    }
}
