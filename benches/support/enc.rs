//! Section 5a of the store benchmark (issue 5): an encrypted copy of the data, read cold
//! against the unencrypted archive, and AES-256-GCM alone from memory.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use hexzd::format::{BlockInfo, BlockKind, Compression};
use hexzd::store::{Engine, EngineConfig, OpenOptions, Snapshot};

use super::{BoxError, Stat, mbps, ratio_row, row};
use crate::{
    Config, PASSWORD, Summary, cold_seq, describe_pack, indexed_entries, pack_options, pack_reps,
    verify_sample,
};

/// AES-GCM alone: every stored block of `enc` copied to a scratch buffer and decrypted in
/// place, from memory, on `threads` threads. MB/s of stored bytes.
fn aes_only(enc: &Path, threads: usize, reps: usize) -> Result<Stat, BoxError> {
    use hexzd::format::crypto::BlockCipher;
    let engine = Engine::new(EngineConfig::default())?;
    let opts = OpenOptions {
        password: None,
        index_only: true,
    };
    let snap = Snapshot::open_with(enc, &engine, &opts)?;
    let params = snap
        .archive()
        .header()
        .encryption
        .ok_or("the encrypted copy has no encryption parameters")?;
    let cipher = BlockCipher::derive(PASSWORD, &params)?;
    let file = std::fs::read(enc)?;
    let data: Vec<(u64, BlockInfo)> = indexed_entries(enc)?
        .into_iter()
        .filter(|(_, e)| e.kind() == BlockKind::Data)
        .collect();
    let stored: u64 = data.iter().map(|(_, e)| u64::from(e.length)).sum();
    let max = data
        .iter()
        .map(|(_, e)| e.length as usize)
        .max()
        .unwrap_or(0);
    let chunk = data.len().div_ceil(threads).max(1);
    let mut stat = Stat::default();
    for _ in 0..reps {
        let start = Instant::now();
        std::thread::scope(|s| -> Result<(), BoxError> {
            let handles: Vec<_> = data
                .chunks(chunk)
                .map(|part| {
                    let (cipher, file) = (&cipher, &file);
                    s.spawn(move || -> Result<(), BoxError> {
                        let mut scratch = vec![0u8; max];
                        for (index, e) in part {
                            let off = usize::try_from(e.offset)?;
                            let buf = &mut scratch[..e.length as usize];
                            buf.copy_from_slice(&file[off..off + e.length as usize]);
                            cipher.decrypt_in_place(*index, buf)?;
                            black_box(&mut scratch);
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().map_err(|_| "AES thread panicked")??;
            }
            Ok(())
        })?;
        stat.push(mbps(stored, start.elapsed()));
    }
    Ok(stat)
}

/// Section 5a: an encrypted copy, read cold against the unencrypted archive.
pub fn section(
    cfg: &Config,
    raw: &Path,
    dir: &Path,
    cores: usize,
    sum: &mut Summary,
) -> Result<(), BoxError> {
    let lz4 = dir.join("mixed-lz4.hxz");
    let enc: PathBuf = dir.join("mixed-enc-lz4.hxz");
    let opts = pack_options(Compression::Lz4, Some(PASSWORD));
    let (stat, s) = pack_reps(raw, &enc, &opts, 1)?;
    println!("{}", describe_pack("encrypted LZ4", &s));
    sum.add(row(
        "pack LZ4 encrypted (input MB/s, one run, PBKDF2 included)",
        stat.max(),
        stat.median(),
        "MB/s",
    ));
    verify_sample(&enc, Some(PASSWORD), raw, 64)?;
    let aes = aes_only(&enc, cores, cfg.reps)?;
    sum.add(row(
        &format!("AES-256-GCM decrypt only (copy + decrypt_in_place), {cores} threads"),
        aes.max(),
        aes.median(),
        "MB/s of ciphertext",
    ));
    let no_cache = EngineConfig {
        cache_bytes: 0,
        ..EngineConfig::default()
    };
    let (mut plain, mut encs, mut opens, mut paired) = (
        Stat::default(),
        Stat::default(),
        Stat::default(),
        Stat::default(),
    );
    let mut decs = (0, 0);
    for _ in 0..cfg.reps {
        let p = cold_seq(&lz4, no_cache, None)?;
        let e = cold_seq(&enc, no_cache, Some(PASSWORD))?;
        paired.push(e.mbps / p.mbps);
        plain.push(p.mbps);
        encs.push(e.mbps);
        opens.push(e.open.as_secs_f64() * 1e3);
        decs = (p.decompressions, e.decompressions);
    }
    println!(
        "encrypted: {} blocks decoded per pass ({} for the plain archive); open with PBKDF2 (600,000 iterations) is untimed in the pass",
        decs.1, decs.0
    );
    sum.add(row(
        "cold seq read_at 1 MiB, cache off, unencrypted (paired runs)",
        plain.max(),
        plain.median(),
        "MB/s",
    ));
    sum.add(row(
        "cold seq read_at 1 MiB, cache off, AES-256-GCM",
        encs.max(),
        encs.median(),
        "MB/s",
    ));
    sum.add(ratio_row(
        "  ratio encrypted / unencrypted",
        encs.max() / plain.max(),
        encs.median() / plain.median(),
        None,
    ));
    sum.add(ratio_row(
        "  ratio encrypted / unencrypted, median of paired runs",
        paired.max(),
        paired.median(),
        None,
    ));
    sum.add(row(
        "open of the encrypted archive (key derivation + check)",
        opens.min(),
        opens.median(),
        "ms",
    ));
    std::fs::remove_file(&enc)?;
    Ok(())
}
