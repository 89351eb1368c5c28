//! bincode 1.x "legacy" primitives (hexz-format.md §2): fixed-width little-endian integers,
//! `u64` length prefixes, one-byte `Option` and `bool` tags. Pure functions over byte slices.
//!
//! The decoder never allocates more than the input could describe: every length prefix is
//! checked against the bytes that remain before anything is reserved.

use super::FormatError;

/// A cursor over a byte slice that decodes bincode-legacy values and names what it was decoding
/// in every error.
#[derive(Debug)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    /// What is being decoded ("header", "master index", "index page"), for error messages.
    what: &'static str,
}

impl<'a> Decoder<'a> {
    /// Starts decoding `buf` from its first byte.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Decoder { buf, pos: 0, what }
    }

    /// Byte position of the next value, relative to the start of the buffer.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the next `n` raw bytes.
    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], FormatError> {
        if self.remaining() < n {
            return Err(FormatError::Truncated {
                what: self.what,
                field,
                offset: self.pos as u64,
                need: n as u64,
                have: self.remaining() as u64,
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Takes a fixed-size array (magic, salt, hash): N raw bytes, no length prefix.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], FormatError> {
        let b = self.bytes(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// Decodes one byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, FormatError> {
        Ok(self.bytes(1, field)?[0])
    }

    /// Decodes a little-endian u32.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    /// Decodes a little-endian u64.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// Decodes a bool: 0 or 1, anything else is an error.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, FormatError> {
        let offset = self.pos as u64;
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(FormatError::BadBool {
                what: self.what,
                field,
                offset,
                value,
            }),
        }
    }

    /// Decodes an `Option` tag: `Ok(false)` for None, `Ok(true)` for Some (the value follows).
    pub fn option_tag(&mut self, field: &'static str) -> Result<bool, FormatError> {
        let offset = self.pos as u64;
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(FormatError::BadOptionTag {
                what: self.what,
                field,
                offset,
                tag,
            }),
        }
    }

    /// Decodes a `Vec` length prefix for elements of at least `min_elem_size` bytes, and checks
    /// that the elements could fit in what remains (so a hostile count never drives an
    /// allocation).
    pub fn vec_len(
        &mut self,
        min_elem_size: usize,
        field: &'static str,
    ) -> Result<usize, FormatError> {
        let offset = self.pos as u64;
        let count = self.u64(field)?;
        let remaining = self.remaining() as u64;
        let fits = count
            .checked_mul(min_elem_size.max(1) as u64)
            .is_some_and(|need| need <= remaining);
        if !fits {
            return Err(FormatError::LengthTooLarge {
                what: self.what,
                field,
                offset,
                count,
                remaining,
            });
        }
        // `count * size <= remaining <= usize::MAX`, so this cannot truncate.
        usize::try_from(count).map_err(|_| FormatError::LengthTooLarge {
            what: self.what,
            field,
            offset,
            count,
            remaining,
        })
    }

    /// Decodes a `String`: u64 byte length, then UTF-8.
    pub fn string(&mut self, field: &'static str) -> Result<String, FormatError> {
        let len = self.vec_len(1, field)?;
        let offset = self.pos as u64;
        let bytes = self.bytes(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| FormatError::BadUtf8 {
            what: self.what,
            field,
            offset,
        })
    }
}

/// Appends bincode-legacy values to a byte vector.
#[derive(Debug, Default)]
pub struct Encoder {
    /// The encoded bytes so far.
    pub buf: Vec<u8>,
}

impl Encoder {
    /// Starts an empty encoding with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Encoder {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// Appends raw bytes (fixed arrays).
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// Appends a little-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Appends a little-endian u64.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Appends a bool as 0 or 1.
    pub fn bool(&mut self, v: bool) {
        self.buf.push(u8::from(v));
    }

    /// Appends a `String`: u64 length, then the bytes.
    pub fn string(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// Appends an `Option` tag.
    pub fn option_tag(&mut self, some: bool) {
        self.bool(some);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_little_endian_fixed_width() {
        let mut e = Encoder::default();
        e.u32(0x0102_0304);
        e.u64(5);
        assert_eq!(e.buf, [4, 3, 2, 1, 5, 0, 0, 0, 0, 0, 0, 0]);
        let mut d = Decoder::new(&e.buf, "test");
        assert_eq!(d.u32("a").unwrap(), 0x0102_0304);
        assert_eq!(d.u64("b").unwrap(), 5);
        assert_eq!(d.remaining(), 0);
    }

    #[test]
    fn bool_other_than_zero_or_one_is_an_error() {
        let mut d = Decoder::new(&[2], "test");
        assert!(matches!(
            d.bool("f"),
            Err(FormatError::BadBool { value: 2, .. })
        ));
    }

    #[test]
    fn option_tag_other_than_zero_or_one_is_an_error() {
        let mut d = Decoder::new(&[7], "test");
        assert!(matches!(
            d.option_tag("f"),
            Err(FormatError::BadOptionTag { tag: 7, .. })
        ));
    }

    #[test]
    fn string_round_trips() {
        let mut e = Encoder::default();
        e.string("out/base.hxz");
        assert_eq!(&e.buf[..8], &12u64.to_le_bytes());
        let mut d = Decoder::new(&e.buf, "test");
        assert_eq!(d.string("s").unwrap(), "out/base.hxz");
    }

    #[test]
    fn huge_vec_count_is_refused_before_allocating() {
        let mut e = Encoder::default();
        e.u64(u64::MAX);
        let mut d = Decoder::new(&e.buf, "test");
        assert!(matches!(
            d.vec_len(28, "pages"),
            Err(FormatError::LengthTooLarge { .. })
        ));
    }

    #[test]
    fn truncated_input_names_field_and_offset() {
        let mut d = Decoder::new(&[1, 2], "header");
        let err = d.u32("version").unwrap_err();
        assert_eq!(
            err.to_string(),
            "truncated header: field version at byte 0 needs 4 bytes, 2 remain"
        );
    }
}
