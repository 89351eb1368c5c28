//! Request heads (RFC 9112 §2–3, §6): parses the request line and header fields from the bytes
//! received so far with `httparse`, enforces hexzd's size and count limits, and extracts the
//! few fields hexzd acts on. Pure: bytes in, a [`Request`] or a [`HeadError`] out.

use super::conditional::{Conditions, Single};

/// Longest request line accepted (method, target, version); longer is 414.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Largest request head (request line and all header fields) accepted; larger is 431. This is
/// also the size of a connection's receive buffer.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields accepted; more is 431.
pub const MAX_HEADERS: usize = 64;

/// The methods hexzd distinguishes. Methods are case-sensitive (RFC 9110 §9.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// Anything else (answered 405 on hexzd's routes).
    Other,
}

/// What the framing headers say about a request body (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body (no Content-Length, or `Content-Length: 0`).
    None,
    /// `Content-Length: n` with `n > 0`.
    Length(u64),
    /// A Transfer-Encoding (chunked or otherwise): a body of unknown length.
    Encoded,
    /// Content-Length that is not a single non-negative integer: faulty framing.
    Invalid,
}

/// The `Expect` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Absent.
    None,
    /// `100-continue` (case-insensitive).
    Continue,
    /// Any other expectation (417).
    Other,
}

/// A parsed request head, holding copies of the fields hexzd uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, classified.
    pub method: Method,
    /// The method as sent (for the access log).
    pub method_name: String,
    /// The request-target as sent (lossy UTF-8, for routing and the log).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Number of `Host` field lines (HTTP/1.1 requires exactly one, RFC 9112 §3.2).
    pub hosts: usize,
    /// `Range`.
    pub range: Single,
    /// If-* fields.
    pub conditions: Conditions,
    /// `Authorization`.
    pub authorization: Single,
    /// `Connection: close` seen.
    pub close: bool,
    /// `Connection: keep-alive` seen (meaningful for HTTP/1.0).
    pub keep_alive: bool,
    /// Body framing.
    pub body: Body,
    /// `Expect`.
    pub expect: Expect,
}

impl Request {
    /// True when the connection may stay open after the response (RFC 9112 §9.3): HTTP/1.1
    /// unless `close`; HTTP/1.0 only with `keep-alive`.
    pub fn wants_keep_alive(&self) -> bool {
        if self.close {
            return false;
        }
        self.minor_version >= 1 || self.keep_alive
    }

    /// The Range value to use: only a single field line counts (several → ignore Range,
    /// http.md §3 step 4).
    pub fn range(&self) -> Option<&[u8]> {
        match &self.range {
            Single::One(v) => Some(v),
            _ => None,
        }
    }
}

/// A request head hexzd refuses; each maps to one status and closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The request line is longer than [`MAX_REQUEST_LINE`] (414).
    #[error("request line longer than {MAX_REQUEST_LINE} bytes")]
    UriTooLong,
    /// The head is larger than [`MAX_HEAD_BYTES`] (431).
    #[error("request head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] header fields (431).
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    /// Not HTTP/1.x, such as the HTTP/2 connection preface (505).
    #[error("unsupported HTTP version")]
    Version,
    /// Anything else httparse refuses (400).
    #[error("malformed request: {0}")]
    Malformed(httparse::Error),
}

impl HeadError {
    /// The status code answering this error.
    pub fn status(self) -> u16 {
        match self {
            HeadError::UriTooLong => 414,
            HeadError::HeadTooLarge | HeadError::TooManyHeaders => 431,
            HeadError::Version => 505,
            HeadError::Malformed(_) => 400,
        }
    }
}

/// Parses the request head at the start of `buf`. Returns `Ok(None)` while it is incomplete
/// and still within the limits, or the request and the number of bytes it took. The limits are
/// enforced on partial input too, so a client cannot make hexzd wait for more than
/// [`MAX_HEAD_BYTES`].
pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = req.parse(buf).map_err(|e| match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::Version => HeadError::Version,
        e => HeadError::Malformed(e),
    });
    let status = match status {
        Ok(s) => s,
        // httparse stops at the first bad byte, which for a long garbage line may come after
        // the request-line limit: report the limit first, it is what the client broke.
        Err(e) => {
            check_request_line(buf)?;
            return Err(e);
        }
    };
    check_request_line(buf)?;
    let httparse::Status::Complete(consumed) = status else {
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HeadError::HeadTooLarge);
        }
        return Ok(None);
    };
    if consumed > MAX_HEAD_BYTES {
        return Err(HeadError::HeadTooLarge);
    }
    // Complete implies the method, path and version are present.
    let method_name = req.method.unwrap_or_default();
    let method = match method_name {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    let mut r = Request {
        method,
        method_name: method_name.to_string(),
        target: req.path.unwrap_or_default().to_string(),
        minor_version: req.version.unwrap_or(1),
        hosts: 0,
        range: Single::None,
        conditions: Conditions::default(),
        authorization: Single::None,
        close: false,
        keep_alive: false,
        body: Body::None,
        expect: Expect::None,
    };
    let mut content_length: Option<Option<u64>> = None;
    for h in req.headers.iter() {
        let v = h.value;
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            r.hosts += 1;
        } else if name.eq_ignore_ascii_case("range") {
            r.range.push(v);
        } else if name.eq_ignore_ascii_case("if-match") {
            join(&mut r.conditions.if_match, v);
        } else if name.eq_ignore_ascii_case("if-none-match") {
            join(&mut r.conditions.if_none_match, v);
        } else if name.eq_ignore_ascii_case("if-modified-since") {
            r.conditions.if_modified_since.push(v);
        } else if name.eq_ignore_ascii_case("if-unmodified-since") {
            r.conditions.if_unmodified_since.push(v);
        } else if name.eq_ignore_ascii_case("if-range") {
            r.conditions.if_range.push(v);
        } else if name.eq_ignore_ascii_case("authorization") {
            r.authorization.push(v);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in list(v) {
                r.close |= token.eq_ignore_ascii_case(b"close");
                r.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            r.body = Body::Encoded;
        } else if name.eq_ignore_ascii_case("content-length") {
            // A list of identical values is allowed (RFC 9112 §6.3 item 5); anything else
            // is faulty framing.
            for item in list(v) {
                let n = parse_length(item);
                content_length = match (content_length, n) {
                    (None, n) => Some(n),
                    (Some(Some(a)), Some(b)) if a == b => Some(Some(a)),
                    _ => Some(None),
                };
            }
            if list(v).next().is_none() {
                content_length = Some(None);
            }
        } else if name.eq_ignore_ascii_case("expect") {
            r.expect = if trim_ows(v).eq_ignore_ascii_case(b"100-continue") {
                Expect::Continue
            } else {
                Expect::Other
            };
        }
    }
    if r.body != Body::Encoded {
        r.body = match content_length {
            None | Some(Some(0)) => Body::None,
            Some(Some(n)) => Body::Length(n),
            Some(None) => Body::Invalid,
        };
    }
    Ok(Some((r, consumed)))
}

/// Refuses a request line (the first line that is not empty) longer than the limit, whether or
/// not it is complete.
fn check_request_line(buf: &[u8]) -> Result<(), HeadError> {
    // Empty lines before the request line are allowed (RFC 9112 §2.2) and skipped by httparse.
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let line = &buf[start..];
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    // The CR of a CRLF (or of one still to come) is not part of the line: a line of exactly
    // the limit is accepted with either line ending.
    let end = if end > 0 && line[end - 1] == b'\r' {
        end - 1
    } else {
        end
    };
    if end > MAX_REQUEST_LINE {
        return Err(HeadError::UriTooLong);
    }
    Ok(())
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Appends one field line to a list-valued field, joined by `, ` (RFC 9110 §5.3).
fn join(field: &mut Option<Vec<u8>>, v: &[u8]) {
    match field {
        Some(all) => {
            all.extend_from_slice(b", ");
            all.extend_from_slice(v);
        }
        None => *field = Some(v.to_vec()),
    }
}

/// Strips optional whitespace (RFC 9110 §5.6.3: spaces and tabs) from both ends of a header
/// value or list member.
pub(super) fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

/// The non-empty members of a comma-separated list.
fn list(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (Request, usize) {
        match parse(raw.as_bytes()) {
            Ok(Some(r)) => r,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn simple_get() {
        let raw = "GET /disk HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n\r\nGET /next";
        let (r, n) = ok(raw);
        assert_eq!(n, raw.find("GET /next").unwrap_or(0));
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.target, "/disk");
        assert_eq!(r.minor_version, 1);
        assert_eq!(r.hosts, 1);
        assert_eq!(r.range(), Some(&b"bytes=0-1"[..]));
        assert_eq!(r.body, Body::None);
        assert!(r.wants_keep_alive());
    }

    #[test]
    fn partial_heads_wait() {
        for raw in [
            "",
            "GE",
            "GET /disk HTTP/1.1\r\n",
            "GET /disk HTTP/1.1\r\nHost: x\r\n",
        ] {
            assert_eq!(parse(raw.as_bytes()), Ok(None), "{raw:?}");
        }
    }

    #[test]
    fn bare_lf_and_leading_empty_lines_are_accepted() {
        let (r, _) = ok("\r\nGET /disk HTTP/1.1\nHost: x\n\n");
        assert_eq!(r.target, "/disk");
    }

    #[test]
    fn connection_handling() {
        assert!(
            !ok("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .0
                .wants_keep_alive()
        );
        assert!(!ok("GET / HTTP/1.0\r\n\r\n").0.wants_keep_alive());
        assert!(
            ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .0
                .wants_keep_alive()
        );
        assert!(
            !ok("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n")
                .0
                .wants_keep_alive()
        );
    }

    #[test]
    fn bodies() {
        let b = |raw: &str| ok(raw).0.body;
        assert_eq!(b("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), Body::None);
        assert_eq!(
            b("GET / HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n"),
            Body::Length(1_000_000_000_000)
        );
        assert_eq!(
            b("GET / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"),
            Body::Length(5)
        );
        assert_eq!(
            b("GET / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n"),
            Body::Invalid
        );
        assert_eq!(
            b("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Body::Invalid
        );
        assert_eq!(
            b("GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            Body::Invalid
        );
        assert_eq!(
            b("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"),
            Body::Encoded
        );
    }

    #[test]
    fn expect() {
        let e = |raw: &str| ok(raw).0.expect;
        assert_eq!(e("GET / HTTP/1.1\r\n\r\n"), Expect::None);
        assert_eq!(
            e("GET / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n"),
            Expect::Continue
        );
        assert_eq!(e("GET / HTTP/1.1\r\nExpect: teapot\r\n\r\n"), Expect::Other);
    }

    #[test]
    fn repeated_fields() {
        let (r, _) = ok("GET / HTTP/1.1\r\nRange: bytes=0-1\r\nRange: bytes=2-3\r\n\
                         If-None-Match: \"a\"\r\nIf-None-Match: \"b\"\r\n\r\n");
        assert_eq!(r.range, Single::Many);
        assert_eq!(r.range(), None);
        assert_eq!(
            r.conditions.if_none_match.as_deref(),
            Some(&b"\"a\", \"b\""[..])
        );
    }

    #[test]
    fn other_methods() {
        assert_eq!(ok("POST / HTTP/1.1\r\n\r\n").0.method, Method::Other);
        assert_eq!(ok("get / HTTP/1.1\r\n\r\n").0.method, Method::Other);
        assert_eq!(ok("HEAD / HTTP/1.1\r\n\r\n").0.method, Method::Head);
    }

    #[test]
    fn limits() {
        let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_REQUEST_LINE));
        assert_eq!(parse(long_line.as_bytes()), Err(HeadError::UriTooLong));
        // Still incomplete but already too long.
        let partial = format!("GET /{}", "a".repeat(MAX_REQUEST_LINE + 1));
        assert_eq!(parse(partial.as_bytes()), Err(HeadError::UriTooLong));
        // Exactly the limit, with CRLF or LF, passes; one byte more does not.
        let target = |n: usize| format!("/{}", "a".repeat(n - "GET  HTTP/1.1".len() - 1));
        for eol in ["\r\n", "\n"] {
            let exact = format!("GET {} HTTP/1.1{eol}{eol}", target(MAX_REQUEST_LINE));
            assert!(parse(exact.as_bytes()).is_ok(), "{eol:?}");
            let over = format!("GET {} HTTP/1.1{eol}{eol}", target(MAX_REQUEST_LINE + 1));
            assert_eq!(
                parse(over.as_bytes()),
                Err(HeadError::UriTooLong),
                "{eol:?}"
            );
        }
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X-A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(parse(many.as_bytes()), Err(HeadError::TooManyHeaders));
        let big = format!("GET / HTTP/1.1\r\nX-A: {}\r\n", "b".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            parse(&big.as_bytes()[..MAX_HEAD_BYTES]),
            Err(HeadError::HeadTooLarge)
        );
        let fits = format!(
            "GET / HTTP/1.1\r\nX-A: {}\r\n\r\n",
            "b".repeat(MAX_HEAD_BYTES / 2)
        );
        assert!(parse(fits.as_bytes()).is_ok_and(|r| r.is_some()));
    }

    #[test]
    fn garbage_and_http2() {
        assert_eq!(
            parse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Err(HeadError::Version)
        );
        assert!(matches!(
            parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"\x00\xff\xfe garbage"),
            Err(HeadError::Malformed(_))
        ));
        assert_eq!(HeadError::Version.status(), 505);
        assert_eq!(HeadError::UriTooLong.status(), 414);
        assert_eq!(HeadError::TooManyHeaders.status(), 431);
    }
}
