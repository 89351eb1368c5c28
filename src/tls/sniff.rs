//! Telling a TLS ClientHello from a plaintext HTTP request by their first bytes (pure), so each
//! kind of port can refuse the other cheaply: an HTTPS port answers a plaintext request with a
//! plaintext 400 that says what the port speaks (as nginx's 497 does), and an HTTP port closes
//! a TLS hello with a TLS alert instead of parsing it as a request.

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// A TLS handshake record (content type 22, major version 3).
    Tls,
    /// The start of an HTTP request line: an ASCII token, such as `GET `.
    PlainHttp,
    /// Anything else; the TLS layer will refuse it.
    Other,
    /// Too few bytes to say.
    Unknown,
}

/// TLS record content type of handshake messages.
const HANDSHAKE: u8 = 22;

/// Classifies the first bytes `b` of a connection.
pub fn classify(b: &[u8]) -> Hello {
    match b {
        [] => Hello::Unknown,
        [HANDSHAKE] => Hello::Unknown,
        [HANDSHAKE, 3, ..] => Hello::Tls,
        [c, ..] if c.is_ascii_uppercase() => Hello::PlainHttp,
        _ => Hello::Other,
    }
}

/// A fatal `handshake_failure` alert record, sent in plaintext to a TLS client that reached a
/// plaintext port: the client reports a TLS failure at once rather than waiting or parsing an
/// HTTP answer as TLS.
pub const ALERT_HANDSHAKE_FAILURE: [u8; 7] = [21, 3, 1, 0, 2, 2, 40];

/// The plaintext answer of an HTTPS port to a plaintext request (then close).
pub fn plaintext_refusal() -> Vec<u8> {
    let body = "This port speaks HTTPS: use https:// (plaintext HTTP is served on the --http \
                port).\n";
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_hello_and_a_request_line_are_told_apart() {
        assert_eq!(classify(&[22, 3, 1, 2, 0, 1]), Hello::Tls);
        assert_eq!(classify(b"GET /disk HTTP/1.1\r\n"), Hello::PlainHttp);
        assert_eq!(classify(b"HEAD"), Hello::PlainHttp);
        assert_eq!(classify(&[22]), Hello::Unknown);
        assert_eq!(classify(&[]), Hello::Unknown);
        assert_eq!(classify(&[22, 2]), Hello::Other);
        assert_eq!(classify(b"\x00\x01"), Hello::Other);
        assert_eq!(classify(b"get"), Hello::Other);
    }

    #[test]
    fn the_refusal_is_a_complete_400() {
        let r = String::from_utf8(plaintext_refusal()).unwrap_or_default();
        let (head, body) = r.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.starts_with("HTTP/1.1 400 "));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(body.contains("HTTPS"));
    }
}
