//! Response heads and body plans (http.md §5): the status line and header block as bytes, and
//! a body described as text pieces and stream ranges whose total length is known before the
//! first byte is sent (exact Content-Length always, never chunked). Pure.

use std::fmt::Write as _;

use super::range::ByteRange;

/// The Content-Type of a stream.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// Reason phrase of the statuses hexzd sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// A response head under construction.
#[derive(Debug, Clone)]
pub struct Head {
    buf: String,
}

/// A header value [`Head::header`] can append: strings as they are, integers in decimal.
/// Written without `format!`: every response builds a head (a third of the user-space
/// instructions of a cached 4 KiB range went to formatting before).
pub trait HeaderValue {
    /// Appends the value to `out`.
    fn push_to(&self, out: &mut String);
}

impl HeaderValue for &str {
    fn push_to(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl HeaderValue for String {
    fn push_to(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl HeaderValue for &String {
    fn push_to(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl HeaderValue for u64 {
    fn push_to(&self, out: &mut String) {
        push_decimal(out, *self);
    }
}

impl HeaderValue for usize {
    fn push_to(&self, out: &mut String) {
        push_decimal(out, *self as u64);
    }
}

impl HeaderValue for i32 {
    fn push_to(&self, out: &mut String) {
        if *self < 0 {
            out.push('-');
        }
        push_decimal(out, u64::from(self.unsigned_abs()));
    }
}

/// Appends `v` in decimal.
pub fn push_decimal(out: &mut String, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // Always ASCII digits.
    if let Ok(text) = std::str::from_utf8(&digits[i..]) {
        out.push_str(text);
    }
}

/// `bytes FIRST-LAST/LEN`, the Content-Range of a part.
pub fn content_range(first: u64, last: u64, len: u64) -> String {
    let mut s = String::with_capacity(48);
    s.push_str("bytes ");
    push_decimal(&mut s, first);
    s.push('-');
    push_decimal(&mut s, last);
    s.push('/');
    push_decimal(&mut s, len);
    s
}

impl Head {
    /// Starts `HTTP/1.1 STATUS REASON` with `Date` and `Server`.
    pub fn new(status: u16, date: &str) -> Head {
        let mut buf = String::with_capacity(320);
        buf.push_str("HTTP/1.1 ");
        push_decimal(&mut buf, u64::from(status));
        buf.push(' ');
        buf.push_str(reason(status));
        buf.push_str("\r\nDate: ");
        buf.push_str(date);
        buf.push_str(concat!(
            "\r\nServer: hexzd/",
            env!("CARGO_PKG_VERSION"),
            "\r\n"
        ));
        Head { buf }
    }

    /// Adds a header field. `value` must not contain CR or LF (all of hexzd's values are
    /// generated, never copied from a request).
    pub fn header(mut self, name: &str, value: impl HeaderValue) -> Head {
        self.buf.push_str(name);
        self.buf.push_str(": ");
        value.push_to(&mut self.buf);
        self.buf.push_str("\r\n");
        self
    }

    /// Ends the head: `Connection: close` when the connection will close (so the client does
    /// not reuse it), `Connection: keep-alive` when an HTTP/1.0 client asked to keep it.
    pub fn finish(mut self, connection: Connection) -> Vec<u8> {
        match connection {
            Connection::Close => self.buf.push_str("Connection: close\r\n"),
            Connection::KeepAlive10 => self.buf.push_str("Connection: keep-alive\r\n"),
            Connection::KeepAlive => {}
        }
        self.buf.push_str("\r\n");
        self.buf.into_bytes()
    }
}

/// What the response says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// HTTP/1.1 persistent (the default, nothing to say).
    KeepAlive,
    /// An HTTP/1.0 client that sent `Connection: keep-alive`.
    KeepAlive10,
    /// The server closes after this response.
    Close,
}

/// One piece of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal bytes (multipart framing).
    Text(Vec<u8>),
    /// Bytes of the stream.
    Data(ByteRange),
}

/// A body as pieces, and its exact length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Pieces in order.
    pub pieces: Vec<Piece>,
    /// Sum of the pieces' lengths: the Content-Length.
    pub len: u64,
}

impl Plan {
    /// A body of one stream range.
    pub fn data(r: ByteRange) -> Plan {
        Plan {
            pieces: vec![Piece::Data(r)],
            len: r.len(),
        }
    }

    /// No body.
    pub fn empty() -> Plan {
        Plan {
            pieces: Vec::new(),
            len: 0,
        }
    }

    /// Bytes of stream data in the body.
    pub fn data_len(&self) -> u64 {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Data(r) => r.len(),
                Piece::Text(_) => 0,
            })
            .sum()
    }
}

/// A `multipart/byteranges` body (RFC 9110 §14.6) for `ranges` of a `total`-byte stream:
/// `--B CRLF Content-Type CRLF Content-Range CRLF CRLF data CRLF` per part, then `--B-- CRLF`.
/// Its length is exact, so the response carries a Content-Length. `None` when that length does
/// not fit in a u64 (ranges of a stream close to 2^64 bytes).
pub fn multipart(ranges: &[ByteRange], total: u64, boundary: &str) -> Option<Plan> {
    let mut pieces = Vec::with_capacity(ranges.len() * 2 + 1);
    let mut len = 0u64;
    let mut text = String::new();
    for (i, r) in ranges.iter().enumerate() {
        if i > 0 {
            text.push_str("\r\n");
        }
        let _ = write!(
            text,
            "--{boundary}\r\nContent-Type: {OCTET_STREAM}\r\nContent-Range: bytes {}-{}/{total}\r\n\r\n",
            r.first, r.last
        );
        len = len.checked_add(text.len() as u64)?.checked_add(r.len())?;
        pieces.push(Piece::Text(std::mem::take(&mut text).into_bytes()));
        pieces.push(Piece::Data(*r));
    }
    let tail = format!("\r\n--{boundary}--\r\n");
    len = len.checked_add(tail.len() as u64)?;
    pieces.push(Piece::Text(tail.into_bytes()));
    Some(Plan { pieces, len })
}

/// The `Content-Type` of a multipart answer.
pub fn multipart_type(boundary: &str) -> String {
    format!("multipart/byteranges; boundary={boundary}")
}

/// A boundary that will not occur in the data: 32 hex digits of a BLAKE3 digest of the
/// snapshot's identity, the ranges and a per-process counter, so guessing it would take the
/// client 2^128 tries (the data itself is not scanned; a 16-range answer can be 32 MiB).
pub fn boundary(identity: &[u8; 32], ranges: &[ByteRange], nonce: u64) -> String {
    let mut h = blake3::Hasher::new();
    h.update(identity);
    h.update(&nonce.to_le_bytes());
    for r in ranges {
        h.update(&r.first.to_le_bytes());
        h.update(&r.last.to_le_bytes());
    }
    let d = h.finalize();
    let mut s = String::with_capacity(40);
    s.push_str("hexzd-");
    for b in &d.as_bytes()[..16] {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn multipart_length_that_overflows_u64_is_refused() {
        // Regression: two ranges of a stream near 2^64 bytes overflowed the Content-Length.
        let r = |first: u64, last: u64| ByteRange { first, last };
        let total = u64::MAX - 1;
        assert!(multipart(&[r(0, 0), r(1, total - 1)], total, "B").is_none());
        assert!(multipart(&[r(0, 0), r(5, 9)], total, "B").is_some());
    }

    use super::*;

    #[test]
    fn decimal_values_and_content_range_read_as_format_writes_them() {
        for v in [0u64, 7, 10, 99, 4096, 536_870_911, u64::MAX] {
            let mut s = String::new();
            push_decimal(&mut s, v);
            assert_eq!(s, v.to_string());
        }
        assert_eq!(
            content_range(0, 4095, 536_870_912),
            "bytes 0-4095/536870912"
        );
        let head = Head::new(206, "D")
            .header("A", -3)
            .header("B", 5usize)
            .finish(Connection::KeepAlive);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            format!(
                "HTTP/1.1 206 Partial Content\r\nDate: D\r\nServer: hexzd/{}\r\nA: -3\r\nB: 5\r\n\r\n",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[test]
    fn head_bytes() {
        let h = Head::new(206, "Sun, 06 Nov 1994 08:49:37 GMT")
            .header("Content-Length", 10)
            .finish(Connection::Close);
        let s = String::from_utf8(h).unwrap_or_default();
        assert!(s.starts_with(
            "HTTP/1.1 206 Partial Content\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
        ));
        assert!(s.ends_with("Content-Length: 10\r\nConnection: close\r\n\r\n"));
        let h = Head::new(200, "d").finish(Connection::KeepAlive);
        assert!(
            !String::from_utf8(h)
                .unwrap_or_default()
                .contains("Connection")
        );
    }

    #[test]
    fn multipart_length_is_exact() {
        let ranges = [
            ByteRange { first: 0, last: 0 },
            ByteRange { first: 2, last: 3 },
        ];
        let plan = multipart(&ranges, 1000, "B").unwrap();
        let data = b"0123";
        let mut body = Vec::new();
        for p in &plan.pieces {
            match p {
                Piece::Text(t) => body.extend_from_slice(t),
                Piece::Data(r) => {
                    let (a, b) = (usize::try_from(r.first), usize::try_from(r.last));
                    body.extend_from_slice(&data[a.unwrap_or(0)..=b.unwrap_or(0)]);
                }
            }
        }
        assert_eq!(body.len() as u64, plan.len);
        assert_eq!(plan.data_len(), 3);
        assert_eq!(
            String::from_utf8(body).unwrap_or_default(),
            "--B\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-0/1000\r\n\r\n0\
             \r\n--B\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 2-3/1000\r\n\r\n23\
             \r\n--B--\r\n"
        );
    }

    #[test]
    fn boundaries_differ() {
        let r = [ByteRange { first: 0, last: 1 }];
        let a = boundary(&[0; 32], &r, 1);
        assert_eq!(a.len(), 38);
        assert_ne!(a, boundary(&[0; 32], &r, 2));
        assert!(multipart_type(&a).starts_with("multipart/byteranges; boundary=hexzd-"));
    }

    #[test]
    fn reasons() {
        for s in [
            200, 206, 304, 400, 401, 404, 405, 408, 412, 413, 414, 416, 417, 431, 500, 503, 505,
        ] {
            assert!(!reason(s).is_empty(), "{s}");
        }
    }
}
