//! One HTTP/1.1 exchange per connection: the request head parsed by `httparse` (never by
//! hand), a body of at most [`BODY_LIMIT`] bytes by `Content-Length`, the whole request read
//! within [`READ_DEADLINE`]; the response written with `Connection: close`. A client that
//! hangs up before its request is complete gets nothing and changes nothing. A request
//! refused before it was read to its end (a body over the limit) is answered at once and the
//! rest of it read and dropped for a while ([`linger`]), so that a client still sending its
//! body gets the answer rather than a broken pipe.
//!
//! It knows bytes and sockets only; what a request means is [`super::route`]'s business.

use super::Reply;
use diag::Advice;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// The most a request head (request line and headers) may take.
pub const HEAD_LIMIT: usize = 8 << 10;
/// The most a request body may take.
pub const BODY_LIMIT: usize = 64 << 10;
/// How long a client has to send its whole request.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);
/// How long writing a response may take.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// How long, and for how many bytes, [`linger`] reads what a refused client still sends.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_LIMIT: usize = 1 << 20;
/// The most headers a request may have.
const MAX_HEADERS: usize = 32;

/// A request as read off the socket.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The request target, e.g. `/api/v1/vm.info`.
    pub path: String,
    /// The body (empty when there is none).
    pub body: Vec<u8>,
}

/// Why no request came.
#[derive(Debug, PartialEq)]
pub enum ReadError {
    /// The client hung up (or never sent a whole request): nothing to answer.
    Closed,
    /// The request is unacceptable; answer with this.
    Refused(Reply),
}

/// A socket with per-operation timeouts (a Unix or TCP stream; tests use a pair).
pub trait Stream: Read + Write {
    /// Sets the read timeout.
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()>;
    /// Sets the write timeout.
    fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()>;
    /// Ends the writing side: the client reads the end of the response.
    fn shutdown_write(&self) -> std::io::Result<()>;
}

impl Stream for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::set_write_timeout(self, t)
    }
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

fn refuse(status: u16, problem: impl Into<String>, fix: impl Into<String>) -> ReadError {
    ReadError::Refused(Reply::error(status, &Advice::new(problem, fix)))
}

/// Reads bytes until `done` says how long the complete message is, within `deadline`.
fn read_until<S: Stream>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    deadline: Instant,
    limit: usize,
    mut done: impl FnMut(&[u8]) -> Result<Option<usize>, ReadError>,
) -> Result<usize, ReadError> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(n) = done(buf)? {
            return Ok(n);
        }
        if buf.len() > limit {
            return Err(refuse(
                413,
                format!("the request is larger than {limit} bytes"),
                "send a smaller request",
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(refuse(
                408,
                format!("the request took longer than {} s", READ_DEADLINE.as_secs()),
                "send the whole request at once",
            ));
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Err(ReadError::Closed),
        }
    }
}

/// The head of `buf` parsed: method, path, `Content-Length`, and where the body starts.
fn parse_head(buf: &[u8]) -> Result<Option<(String, String, usize, usize)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > HEAD_LIMIT => {
            return Err(refuse(
                431,
                format!("the request head is larger than {HEAD_LIMIT} bytes"),
                "send fewer or shorter headers",
            ))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(refuse(
                400,
                format!("the request is not HTTP/1.1: {e}"),
                "send an HTTP/1.1 request",
            ))
        }
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    if header("Transfer-Encoding").is_some() {
        return Err(refuse(
            411,
            "chunked request bodies are not taken",
            "send the body with a Content-Length",
        ));
    }
    let length = match header("Content-Length") {
        None => 0,
        Some(v) => v.parse::<usize>().map_err(|_| {
            refuse(
                400,
                format!("Content-Length {v:?} is not a number"),
                "send a valid Content-Length",
            )
        })?,
    };
    if length > BODY_LIMIT {
        return Err(refuse(
            413,
            format!("the body is {length} bytes, more than the {BODY_LIMIT} taken"),
            "send a smaller body",
        ));
    }
    let method = req.method.unwrap_or_default().to_string();
    let path = req.path.unwrap_or_default().to_string();
    Ok(Some((method, path, length, head_len)))
}

/// Reads one request from `stream`.
pub fn read_request<S: Stream>(stream: &mut S) -> Result<Request, ReadError> {
    let deadline = Instant::now() + READ_DEADLINE;
    let mut buf = Vec::new();
    let mut head = None;
    read_until(stream, &mut buf, deadline, HEAD_LIMIT + BODY_LIMIT, |buf| {
        if head.is_none() {
            head = parse_head(buf)?;
        }
        Ok(head
            .as_ref()
            .map(|(_, _, length, at)| at + length)
            .filter(|&end| buf.len() >= end))
    })?;
    let (method, path, length, at) = head.expect("read_until returned once the head was parsed");
    Ok(Request {
        method,
        path,
        body: buf[at..at + length].to_vec(),
    })
}

/// The reason phrase of a status.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// The bytes of `reply` as an HTTP/1.1 response.
pub fn response_bytes(reply: &Reply) -> Vec<u8> {
    let body = reply
        .body
        .as_ref()
        .map(|b| b.to_string().into_bytes())
        .unwrap_or_default();
    let mut out = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    if !body.is_empty() {
        out.push_str("Content-Type: application/json\r\n");
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}

/// Writes `reply`; a client that went away is not an error worth more than a debug line.
pub fn write_response<S: Stream>(stream: &mut S, reply: &Reply) {
    let _ = stream.set_write_timeout(Some(WRITE_DEADLINE));
    if let Err(e) = stream.write_all(&response_bytes(reply)) {
        log::debug!("api: the client went away before its answer: {e}");
    }
}

/// After a refusal written before the request was read to its end: ends the response (the
/// client sees its end at once) and reads and drops what the client still sends, for at most
/// [`LINGER`] and [`LINGER_LIMIT`] bytes. Closing with unread bytes would make the client's
/// next write fail (a broken pipe) before it ever reads the refusal.
pub fn linger<S: Stream>(stream: &mut S) {
    if stream.shutdown_write().is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let (mut chunk, mut dropped) = ([0u8; 4096], 0);
    while dropped < LINGER_LIMIT {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => dropped += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// A response as the client reads it.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// Parses a whole response (the server closes the connection after it).
pub fn parse_response(buf: &[u8]) -> Result<Response, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let at = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("the answer ended early".into()),
        Err(e) => return Err(format!("the answer is not HTTP/1.1: {e}")),
    };
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("Content-Length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(buf.len() - at);
    let body = buf
        .get(at..at + length)
        .ok_or("the answer's body ended early")?;
    Ok(Response {
        status: resp.code.unwrap_or(0),
        body: body.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// Sends `bytes` (then hangs up unless `keep_open`) and reads what the server side makes
    /// of it.
    fn read_sent(bytes: &[u8], keep_open: bool) -> Result<Request, ReadError> {
        let (mut client, mut server) = UnixStream::pair().unwrap();
        let bytes = bytes.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = client.write_all(&bytes);
            if keep_open {
                std::thread::sleep(READ_DEADLINE + Duration::from_millis(500));
            }
        });
        let got = read_request(&mut server);
        drop(server);
        writer.join().unwrap();
        got
    }

    fn status(r: Result<Request, ReadError>) -> u16 {
        match r {
            Err(ReadError::Refused(reply)) => reply.status,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_put_with_a_body() {
        let req = b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nHost: localhost\r\n\
                    Content-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"id\":\"edu\"}X";
        let got = read_sent(req, false).unwrap();
        assert_eq!(got.method, "PUT");
        assert_eq!(got.path, "/api/v1/vm.remove-device");
        assert_eq!(got.body, b"{\"id\":\"edu\"}X");
        let got = read_sent(b"GET /api/v1/vm.info HTTP/1.1\r\n\r\n", false).unwrap();
        assert_eq!((got.method.as_str(), got.body.len()), ("GET", 0));
    }

    #[test]
    fn limits_and_malformed_requests() {
        let big = format!(
            "PUT /x HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            BODY_LIMIT + 1
        );
        assert_eq!(status(read_sent(big.as_bytes(), false)), 413);
        let long_head = format!("GET /x HTTP/1.1\r\nX: {}\r\n", "a".repeat(HEAD_LIMIT));
        assert_eq!(status(read_sent(long_head.as_bytes(), false)), 431);
        assert_eq!(status(read_sent(b"\x00\x01garbage\r\n\r\n", false)), 400);
        let chunked = b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status(read_sent(chunked, false)), 411);
        let bad_len = b"PUT /x HTTP/1.1\r\nContent-Length: lots\r\n\r\n";
        assert_eq!(status(read_sent(bad_len, false)), 400);
    }

    #[test]
    fn a_client_that_hangs_up_mid_request_gets_nothing() {
        let cut = b"PUT /api/v1/vm.shutdown HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"a\"";
        assert_eq!(read_sent(cut, false), Err(ReadError::Closed));
        assert_eq!(
            read_sent(b"GET /api/v1/vm.in", false),
            Err(ReadError::Closed)
        );
    }

    #[test]
    fn a_client_that_stalls_times_out() {
        let start = Instant::now();
        let stalled = b"PUT /api/v1/vm.shutdown HTTP/1.1\r\nContent-Length: 10\r\n\r\n{";
        assert_eq!(status(read_sent(stalled, true)), 408);
        assert!(start.elapsed() >= READ_DEADLINE);
    }

    /// A client that sends an oversized body after the refusal came (the server refuses on
    /// the head) can still write it and reads the refusal, not a broken pipe.
    #[test]
    fn a_refused_client_still_sending_reads_the_refusal() {
        let (mut client, mut server) = UnixStream::pair().unwrap();
        let head = format!(
            "PUT /x HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            4 * BODY_LIMIT
        );
        client.write_all(head.as_bytes()).unwrap();
        let serving = std::thread::spawn(move || {
            let Err(ReadError::Refused(reply)) = read_request(&mut server) else {
                panic!("not refused")
            };
            write_response(&mut server, &reply);
            linger(&mut server);
        });
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).unwrap();
        assert_eq!(parse_response(&answer).unwrap().status, 413);
        let body = vec![b'a'; 4 * BODY_LIMIT];
        client.write_all(&body).expect("the server still reads");
        drop(client);
        serving.join().unwrap();
    }

    #[test]
    fn responses_round_trip() {
        let reply = Reply::ok(serde_json::json!({"id": "edu0", "bdf": "0000:00:02.0"}));
        let bytes = response_bytes(&reply);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"));
        let got = parse_response(&bytes).unwrap();
        assert_eq!(got.status, 200);
        let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(body["bdf"], "0000:00:02.0");
        let none = parse_response(&response_bytes(&Reply::done())).unwrap();
        assert_eq!((none.status, none.body.len()), (204, 0));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
