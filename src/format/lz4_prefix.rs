//! Decoding only the first bytes of an LZ4 block (hexz-format.md §8), for reads that need a
//! few KiB at the start or middle of a block and will not cache it: the decoder stops at the
//! last byte the read needs instead of producing the whole block (on average half of it for a
//! random 4 KiB read).
//!
//! `lz4_flex` (which decodes every whole block) has no way to stop early: its decoder refuses
//! an output buffer shorter than the block and does not say how far it got. This is a small
//! decoder of the same block format in safe Rust. Its fast path copies literals and short
//! matches as fixed 16- and 18-byte chunks when both buffers have room, the same trick
//! `lz4_flex` and the reference C decoder use, with bounds checks the compiler keeps cheap.
//!
//! A corrupt block is never served as data: callers check the CRC of the stored bytes first,
//! and once the prefix is decoded the rest of the block is walked without being written,
//! checking every sequence as a full decode would and adding up the decoded length, which
//! must equal `logical_len`. The walk costs a read of each sequence header but no copying,
//! which is where LZ4 decoding spends its time on long matches and literal runs; on blocks of
//! many short sequences it costs about as much as decoding. [`decode_head`] skips it, for a
//! block whose length the store has already checked once (its CRC still checked on every read).

/// Why a prefix could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// A literal run reaches past the end of the compressed data.
    #[error("LZ4 literal run past the end of the input")]
    LiteralOutOfBounds,
    /// A match offset of zero, or one reaching before the start of the block.
    #[error("LZ4 match offset {offset} at output position {position} is out of bounds")]
    BadOffset { offset: usize, position: usize },
    /// The input ends inside a sequence or right after a match.
    #[error("LZ4 data ends inside a sequence")]
    Truncated,
    /// The block ends after this many bytes, before the part a read needs.
    #[error("LZ4 block ends after {0} bytes, before the part the read needs")]
    ShortBlock(usize),
}

/// Decodes the LZ4 block `input` (without its 4-byte size prefix) until `out` is full, then
/// walks the rest of the block without writing anything, checking each sequence as a full
/// decode would (literals inside the input, offsets inside the output, no sequence cut off).
/// Returns the block's decoded length, which callers compare with `logical_len`: a block
/// that does not decode to exactly its recorded size is an error even when the read needs
/// only its first bytes. `out` holds the block's first `out.len()` bytes when the returned
/// length is at least that.
pub fn decode_prefix(input: &[u8], out: &mut [u8]) -> Result<usize, PrefixError> {
    match fill(input, out)? {
        Filled::Full { ip, op } => walk(input, ip, op),
        Filled::Ended(n) => Ok(n),
    }
}

/// Decodes the LZ4 block `input` until `out` is full and stops there, without looking at the
/// rest of the block: for a block whose stored bytes are known (by their CRC) to be bytes
/// that were already checked to decode to exactly `logical_len` (see the store's per-page
/// "length checked" bits). Everything it does decode is checked as in [`decode_prefix`]; a
/// block that ends before `out` is full is an error.
pub fn decode_head(input: &[u8], out: &mut [u8]) -> Result<(), PrefixError> {
    match fill(input, out)? {
        Filled::Full { .. } => Ok(()),
        Filled::Ended(n) if n >= out.len() => Ok(()),
        Filled::Ended(n) => Err(PrefixError::ShortBlock(n)),
    }
}

/// Where [`fill`] stopped.
enum Filled {
    /// `out` is full; the next sequence's token is at `ip`, and output position `op` (at
    /// least `out.len()`) is where the last match ended.
    Full { ip: usize, op: usize },
    /// The block ended (its last literals consumed the input) at this decoded length.
    Ended(usize),
}

/// The decoding loop of [`decode_prefix`] and [`decode_head`]: decodes until `out` is full or
/// the block ends.
fn fill(input: &[u8], out: &mut [u8]) -> Result<Filled, PrefixError> {
    let (mut ip, mut op) = (0usize, 0usize);
    let want = out.len();
    loop {
        if op >= want {
            return Ok(Filled::Full { ip, op });
        }
        let token = *input.get(ip).ok_or(PrefixError::Truncated)?;
        ip += 1;

        // Literals.
        let mut lit = usize::from(token >> 4);
        if lit == 15 {
            lit += read_length(input, &mut ip)?;
        }
        if lit <= 16 && ip + 16 <= input.len() && op + 16 <= want {
            // Wild copy: 16 bytes whatever the run's length; the extra bytes are overwritten
            // by what follows.
            out[op..op + 16].copy_from_slice(&input[ip..ip + 16]);
        } else {
            let end = ip.checked_add(lit).ok_or(PrefixError::LiteralOutOfBounds)?;
            let src = input.get(ip..end).ok_or(PrefixError::LiteralOutOfBounds)?;
            let n = lit.min(want - op);
            out[op..op + n].copy_from_slice(&src[..n]);
        }
        ip += lit;
        op += lit;
        // The last sequence has literals only: the block ends here.
        if ip == input.len() {
            return Ok(Filled::Ended(op));
        }

        let (offset, len) = read_match(input, &mut ip, token, op)?;
        let start = op - offset;
        if len <= 18 && offset >= 18 && op + 18 <= want {
            // Wild copy of a short match whose source ends before the destination starts.
            out.copy_within(start..start + 18, op);
        } else if op < want {
            copy_match(out, start, op, len.min(want - op));
        }
        op += len;
    }
}

/// Checks the sequences from `ip` (a token, after a match that ended at output position
/// `op`) to the end of the block without decoding them; returns the block's decoded length.
fn walk(input: &[u8], mut ip: usize, mut op: usize) -> Result<usize, PrefixError> {
    loop {
        // A block cannot end after a match: its last sequence is literals only.
        let token = *input.get(ip).ok_or(PrefixError::Truncated)?;
        ip += 1;
        let mut lit = usize::from(token >> 4);
        if lit == 15 {
            lit += read_length(input, &mut ip)?;
        }
        ip = ip
            .checked_add(lit)
            .filter(|&e| e <= input.len())
            .ok_or(PrefixError::LiteralOutOfBounds)?;
        op = op.saturating_add(lit);
        if ip == input.len() {
            return Ok(op);
        }
        let (_, len) = read_match(input, &mut ip, token, op)?;
        op = op.saturating_add(len);
    }
}

/// Reads a match's offset and length and checks the offset against output position `op`.
fn read_match(
    input: &[u8],
    ip: &mut usize,
    token: u8,
    op: usize,
) -> Result<(usize, usize), PrefixError> {
    let off = input.get(*ip..*ip + 2).ok_or(PrefixError::Truncated)?;
    let offset = usize::from(u16::from_le_bytes([off[0], off[1]]));
    *ip += 2;
    if offset == 0 || offset > op {
        return Err(PrefixError::BadOffset {
            offset,
            position: op,
        });
    }
    let mut len = usize::from(token & 15) + 4;
    if len == 19 {
        len += read_length(input, ip)?;
    }
    Ok((offset, len))
}

/// Reads the extra bytes of a length field (each 255 adds 255 and continues).
fn read_length(input: &[u8], ip: &mut usize) -> Result<usize, PrefixError> {
    let mut total = 0usize;
    loop {
        let b = *input.get(*ip).ok_or(PrefixError::Truncated)?;
        *ip += 1;
        // A length can never exceed the input times 255; saturate instead of overflowing on
        // hostile data (the bounds checks that follow then fail).
        total = total.saturating_add(usize::from(b));
        if b != 255 {
            return Ok(total);
        }
    }
}

/// Copies `n` bytes of a match from `start` to `op` with LZ4's forward semantics: when the
/// source overlaps the destination (`op - start < n`) the copied bytes repeat the pattern.
fn copy_match(out: &mut [u8], start: usize, op: usize, n: usize) {
    let offset = op - start;
    if offset >= n {
        out.copy_within(start..start + n, op);
        return;
    }
    // After `done` bytes (a multiple of `offset`) `out[start..op + done]` repeats the pattern,
    // so the next copy may take up to `offset + done` bytes from `start` without overlapping.
    let mut done = 0;
    while done < n {
        let k = (n - done).min(offset + done);
        out.copy_within(start..start + k, op + done);
        done += k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_sets() -> Vec<Vec<u8>> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let text: Vec<u8> = (0..150_000)
            .map(|_| b"the quick brown fox jumps over a lazy dog, "[(rnd() % 43) as usize])
            .collect();
        let random: Vec<u8> = (0..70_000).map(|_| rnd().to_le_bytes()[0]).collect();
        let mut mixed = vec![0u8; 40_000];
        mixed.extend_from_slice(&random[..30_000]);
        mixed.extend(std::iter::repeat_n(b"abc".as_slice(), 20_000).flatten());
        mixed.extend(std::iter::repeat_n(7u8, 1));
        mixed.extend(text.iter().take(50_000));
        vec![
            text,
            random,
            mixed,
            vec![0; 262_144],
            b"hello".to_vec(),
            vec![1],
        ]
    }

    #[test]
    fn every_prefix_matches_the_full_decode() {
        for data in data_sets() {
            let packed = lz4_flex::block::compress(&data);
            let step = (data.len() / 97).max(1);
            let mut wants: Vec<usize> = (0..=data.len()).step_by(step).collect();
            wants.extend([data.len(), data.len().saturating_sub(1), 1, 17, 4096]);
            for want in wants.into_iter().filter(|&w| w <= data.len()) {
                let mut out = vec![0xAA; want];
                let n = decode_prefix(&packed, &mut out).unwrap_or_else(|e| panic!("{want}: {e}"));
                assert_eq!(n, data.len(), "decoded length with a prefix of {want}");
                assert!(out == data[..want], "prefix of {want} differs");
            }
        }
    }

    #[test]
    fn decode_head_matches_the_checked_prefix_and_refuses_a_short_block() {
        for data in data_sets() {
            let packed = lz4_flex::block::compress(&data);
            for want in [0, 1, 17, 4096, data.len() / 2, data.len()] {
                let want = want.min(data.len());
                let mut out = vec![0xAA; want];
                decode_head(&packed, &mut out).unwrap_or_else(|e| panic!("{want}: {e}"));
                assert!(out == data[..want], "head of {want} differs");
            }
            let mut longer = vec![0; data.len() + 1];
            assert_eq!(
                decode_head(&packed, &mut longer),
                Err(PrefixError::ShortBlock(data.len()))
            );
        }
        // What it decodes is checked like a full decode: an offset before the block start.
        let bad = [0x40, b'a', b'b', b'c', b'd', 5, 0, 0x10, b'e'];
        assert!(matches!(
            decode_head(&bad, &mut [0u8; 9]),
            Err(PrefixError::BadOffset { .. })
        ));
    }

    #[test]
    fn a_prefix_longer_than_the_block_reports_the_true_length() {
        let data = data_sets().swap_remove(0);
        let packed = lz4_flex::block::compress(&data);
        let mut out = vec![0; data.len() + 1];
        assert_eq!(decode_prefix(&packed, &mut out), Ok(data.len()));
    }

    #[test]
    fn truncated_input_never_decodes_to_the_full_length() {
        for data in data_sets() {
            let packed = lz4_flex::block::compress(&data);
            let cuts = [
                0,
                1,
                2,
                packed.len() / 3,
                packed.len() / 2,
                packed.len() - 1,
            ];
            for cut in cuts.into_iter().filter(|&c| c < packed.len()) {
                // Whatever is needed of it, a cut block never decodes to its full length.
                for want in [0, 1, data.len() / 2, data.len()] {
                    let mut out = vec![0; want];
                    assert!(
                        decode_prefix(&packed[..cut], &mut out) != Ok(data.len()),
                        "cut at {cut} of {}, prefix {want}",
                        packed.len()
                    );
                }
            }
        }
    }

    #[test]
    fn offsets_before_the_block_start_are_refused() {
        // 4 literals "abcd", then a match of 4 at offset 5 (one byte before the start).
        let bad = [0x40, b'a', b'b', b'c', b'd', 5, 0, 0x10, b'e'];
        // Found whether the read needs those bytes or only the first two.
        for want in [9, 2] {
            let mut out = vec![0u8; want];
            assert_eq!(
                decode_prefix(&bad, &mut out),
                Err(PrefixError::BadOffset {
                    offset: 5,
                    position: 4
                })
            );
        }
        let mut out = [0u8; 9];
        let zero = [0x40, b'a', b'b', b'c', b'd', 0, 0, 0x10, b'e'];
        assert!(matches!(
            decode_prefix(&zero, &mut out),
            Err(PrefixError::BadOffset { offset: 0, .. })
        ));
        // Literal run longer than the input.
        assert_eq!(
            decode_prefix(&[0xF0, 200, b'x'], &mut [0u8; 300]),
            Err(PrefixError::LiteralOutOfBounds)
        );
        // Length extension cut off.
        assert_eq!(
            decode_prefix(&[0xF0, 255], &mut [0u8; 300]),
            Err(PrefixError::Truncated)
        );
    }

    #[test]
    fn overlapping_matches_repeat_the_pattern() {
        // "ab" then a match of 40 at offset 2, then "!" as the last literals.
        let block = [0x2F, b'a', b'b', 2, 0, 40 - 19, 0x10, b'!'];
        let mut out = [0u8; 43];
        assert_eq!(decode_prefix(&block, &mut out), Ok(43));
        let mut want = b"ab".repeat(21);
        want.push(b'!');
        assert_eq!(out.as_slice(), want.as_slice());
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 12345u64;
        for _ in 0..2000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let len = usize::try_from(x >> 56).unwrap_or(0) + 1;
            let input: Vec<u8> = (0..len).map(|i| (x >> (i % 57)).to_le_bytes()[0]).collect();
            let mut out = vec![0u8; usize::try_from(x >> 52).unwrap_or(0)];
            let _ = decode_prefix(&input, &mut out);
        }
    }
}
