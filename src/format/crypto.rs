//! Block encryption (hexz-format.md §10): AES-256-GCM after compression, with a key from
//! PBKDF2-HMAC-SHA256 over the header's salt and iterations, and a nonce of four zero bytes
//! followed by the block's global index as a big-endian u64. No associated data; the 16-byte tag
//! follows the ciphertext.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};

use super::header::EncryptionParams;

/// Length of the GCM tag appended to every stored block.
pub const TAG_LEN: usize = 16;
/// Iterations hexzd writes, as Hexz 0.8.2 does.
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// The reference reader refuses fewer iterations; so does hexzd.
pub const MIN_ITERATIONS: u32 = 100_000;
/// hexzd's upper bound: a hostile header with `u32::MAX` iterations would otherwise keep a
/// core busy for hours at open. 10 million takes a few seconds.
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// An encryption failure.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Iteration count outside [`MIN_ITERATIONS`]..=[`MAX_ITERATIONS`].
    #[error(
        "PBKDF2 iteration count {0} is outside the accepted range {MIN_ITERATIONS}..={MAX_ITERATIONS}"
    )]
    Iterations(u32),
    /// Stored bytes shorter than the tag.
    #[error("encrypted block of {0} bytes is shorter than its 16-byte tag")]
    TooShort(usize),
    /// The tag did not authenticate: wrong key or altered bytes.
    #[error("AES-GCM authentication failed (wrong password or corrupted block)")]
    Authentication,
}

/// An AES-256-GCM key derived once per archive.
#[derive(Clone)]
pub struct BlockCipher {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for BlockCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockCipher { .. }")
    }
}

/// The 12-byte nonce of global block `index`.
pub fn nonce(index: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    n
}

impl BlockCipher {
    /// Derives the key with PBKDF2-HMAC-SHA256. This is deliberately slow (600,000 iterations
    /// take about half a second): call it once per archive, never per block.
    pub fn derive(password: &[u8], params: &EncryptionParams) -> Result<BlockCipher, CryptoError> {
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&params.iterations) {
            return Err(CryptoError::Iterations(params.iterations));
        }
        let mut key = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, &params.salt, params.iterations, &mut key);
        let cipher = Aes256Gcm::new((&key).into());
        key.fill(0);
        Ok(BlockCipher { cipher })
    }

    /// Decrypts `stored` (ciphertext then tag) in place and returns the plaintext length.
    pub fn decrypt_in_place(&self, index: u64, stored: &mut [u8]) -> Result<usize, CryptoError> {
        let n = stored
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(CryptoError::TooShort(stored.len()))?;
        let (body, tag) = stored.split_at_mut(n);
        let tag = Tag::try_from(&*tag).map_err(|_| CryptoError::Authentication)?;
        self.cipher
            .decrypt_inout_detached(&Nonce::from(nonce(index)), b"", body.into(), &tag)
            .map_err(|_| CryptoError::Authentication)?;
        Ok(n)
    }

    /// Encrypts the compressed bytes in `buf[start..]` in place and appends the tag.
    pub fn encrypt_in_place(&self, index: u64, buf: &mut Vec<u8>, start: usize) {
        // Encryption of an in-memory buffer cannot fail for blocks below 64 GiB.
        let tag = self
            .cipher
            .encrypt_inout_detached(&Nonce::from(nonce(index)), b"", (&mut buf[start..]).into())
            .unwrap_or_default();
        buf.extend_from_slice(&tag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> EncryptionParams {
        EncryptionParams {
            salt: [3; 16],
            iterations: MIN_ITERATIONS,
        }
    }

    #[test]
    fn nonce_is_four_zero_bytes_then_big_endian_index() {
        assert_eq!(nonce(5), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
        assert_eq!(nonce(0x0102), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
    }

    #[test]
    fn round_trip_and_tag_failure() {
        let c = BlockCipher::derive(b"pw", &params()).unwrap();
        let mut buf = b"xxplaintext".to_vec();
        c.encrypt_in_place(7, &mut buf, 2);
        assert_eq!(buf.len(), 11 + TAG_LEN);
        let mut stored = buf[2..].to_vec();
        let n = c.decrypt_in_place(7, &mut stored.clone()).unwrap();
        assert_eq!(n, 9);
        let mut ok = stored.clone();
        c.decrypt_in_place(7, &mut ok).unwrap();
        assert_eq!(&ok[..9], b"plaintext");
        // Wrong nonce (block index) fails.
        assert_eq!(
            c.decrypt_in_place(8, &mut stored.clone()),
            Err(CryptoError::Authentication)
        );
        stored[0] ^= 1;
        assert_eq!(
            c.decrypt_in_place(7, &mut stored),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn wrong_password_fails_authentication() {
        let c = BlockCipher::derive(b"right", &params()).unwrap();
        let mut buf = b"data".to_vec();
        c.encrypt_in_place(0, &mut buf, 0);
        let w = BlockCipher::derive(b"wrong", &params()).unwrap();
        assert_eq!(
            w.decrypt_in_place(0, &mut buf),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn absurd_iteration_counts_are_refused() {
        for it in [0, MIN_ITERATIONS - 1, MAX_ITERATIONS + 1, u32::MAX] {
            let p = EncryptionParams {
                salt: [0; 16],
                iterations: it,
            };
            assert_eq!(
                BlockCipher::derive(b"x", &p).unwrap_err(),
                CryptoError::Iterations(it)
            );
        }
    }
}
