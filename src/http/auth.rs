//! Bearer-token authorization (RFC 6750 §2.1): checks `Authorization: Bearer TOKEN` against the
//! configured token in constant time. Pure.

use super::request::trim_ows;

/// The configured token, kept as a digest so every comparison costs the same whatever the
/// length or content of the candidate (comparing digests also hides the token's length).
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token. Surrounding whitespace is not part of it (files usually end with a newline).
    pub fn new(token: &str) -> Token {
        Token {
            digest: *blake3::hash(token.trim().as_bytes()).as_bytes(),
        }
    }

    /// True when `authorization` (the field value, if the request had exactly one) is
    /// `Bearer <token>` for this token. The scheme is case-insensitive (RFC 9110 §11.1).
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        let Some(v) = authorization else {
            return false;
        };
        let v = trim_ows(v);
        let candidate = match v.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => trim_ows(&v[7..]),
            _ => return false,
        };
        constant_time_eq(blake3::hash(candidate).as_bytes(), &self.digest)
    }
}

/// Compares two digests without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let t = Token::new("s3cret\n");
        assert!(t.allows(Some(b"Bearer s3cret")));
        assert!(t.allows(Some(b"bearer  s3cret ")));
        assert!(!t.allows(None));
        assert!(!t.allows(Some(b"Bearer s3cre")));
        assert!(!t.allows(Some(b"Bearer s3cret2")));
        assert!(!t.allows(Some(b"Basic czNjcmV0")));
        assert!(!t.allows(Some(b"Bearer")));
        assert!(!t.allows(Some(b"s3cret")));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    #[test]
    fn comparison() {
        assert!(constant_time_eq(&[7; 32], &[7; 32]));
        let mut b = [7; 32];
        b[31] = 8;
        assert!(!constant_time_eq(&[7; 32], &b));
    }
}
