//! A small raw HTTP/1.1 client for the tests: it checks framing byte for byte (exact
//! Content-Length, never chunked, nothing after a closed response).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The value of a header (case-insensitive name), if present exactly once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut it = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let first = it.next()?;
        assert!(it.next().is_none(), "header {name} repeated");
        Some(first.1.as_str())
    }

    /// Content-Length as a number.
    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").map(|v| v.parse().unwrap())
    }
}

/// Reads one response from `r`. `head_request` says the body is empty whatever the
/// Content-Length says. Returns `None` on a clean EOF before the first byte.
pub fn read_response(r: &mut impl BufRead, head_request: bool) -> Option<Response> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line).unwrap();
        if n == 0 {
            assert!(head.is_empty(), "EOF inside a response head");
            return None;
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    assert!(resp.parse(&head).unwrap().is_complete());
    let status = resp.code.unwrap();
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8(h.value.to_vec()).unwrap(),
            )
        })
        .collect();
    let mut out = Response {
        status,
        headers,
        body: Vec::new(),
    };
    assert!(
        out.header("transfer-encoding").is_none(),
        "hexzd never sends chunked"
    );
    let body_len = if head_request || status == 304 || status == 100 {
        0
    } else {
        out.content_length()
            .expect("every response has Content-Length")
    };
    out.body = vec![0; usize::try_from(body_len).unwrap()];
    r.read_exact(&mut out.body).unwrap();
    Some(out)
}

/// Sends one request on a new connection (with `Connection: close`) and reads its answer.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    request(addr, "GET", path, headers)
}

/// Like [`get`] with any method.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, method == "HEAD").expect("a response");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "bytes after the response: {}", rest.len());
    resp
}

/// A keep-alive client on one connection.
pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            writer: s.try_clone().unwrap(),
            reader: BufReader::with_capacity(1 << 20, s),
        }
    }

    /// Sends a GET with `headers` and reads the answer.
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.writer.write_all(req.as_bytes()).unwrap();
        read_response(&mut self.reader, false).expect("a response")
    }

    /// GET with `Range: bytes=first-last`, checked to be a 206 of exactly those bytes.
    pub fn range(&mut self, path: &str, first: u64, last: u64) -> Vec<u8> {
        let r = self.get(path, &[("Range", &format!("bytes={first}-{last}"))]);
        assert_eq!(r.status, 206, "{path} {first}-{last}");
        let cr = r.header("content-range").unwrap();
        assert!(
            cr.starts_with(&format!("bytes {first}-{last}/")),
            "{path}: asked {first}-{last}, got {cr}"
        );
        r.body
    }
}

/// Sends raw bytes on a new connection, half-closes nothing, and reads everything until the
/// server closes (or 30 s pass).
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// The status code at the start of a raw response.
pub fn status_of(raw: &[u8]) -> u16 {
    let s = String::from_utf8_lossy(raw);
    s.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
