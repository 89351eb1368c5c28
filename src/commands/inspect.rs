//! `hexzd inspect ARCHIVE [--json]`: format, codec, streams and sizes, block and page counts,
//! compression ratio, the parent chain, encryption and metadata. Works without the password
//! and without the parents (it reads the header and index only).

use std::collections::HashSet;
use std::path::Path;

use serde::Serialize;

use super::{CommandError, write_stdout};
use crate::cli::InspectArgs;
use crate::format::{BlockKind, Stream};
use crate::store::{Engine, EngineConfig, OpenOptions, RemoteConfig, Snapshot};

/// Per-stream figures.
#[derive(Debug, Serialize)]
pub struct StreamReport {
    /// Logical size in bytes.
    pub size: u64,
    /// Index pages.
    pub pages: usize,
    /// Block entries (excluding empty ones).
    pub blocks: u64,
    /// Entries with stored data.
    pub data_blocks: u64,
    /// Sparse (all-zero) entries.
    pub sparse_blocks: u64,
    /// Parent references.
    pub parent_blocks: u64,
    /// Data entries that share stored bytes with an earlier entry (in-archive dedup).
    pub deduplicated_blocks: u64,
    /// Distinct stored bytes the stream's data entries point at.
    pub stored_bytes: u64,
}

/// One link of the parent chain.
#[derive(Debug, Serialize)]
pub struct ParentReport {
    /// The path as stored in the header.
    pub path: String,
    /// Where it was found, if it was.
    pub resolved: Option<String>,
    /// Why it could not be opened, if it could not.
    pub error: Option<String>,
    /// Its own parents.
    pub parents: Vec<ParentReport>,
}

/// Everything `inspect` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Archive path.
    pub path: String,
    /// File size.
    pub file_size: u64,
    /// Always 1.
    pub version: u32,
    /// `lz4` or `zstd`.
    pub compression: &'static str,
    /// Nominal block size from the header (informational).
    pub block_size: u32,
    /// Content-defined chunking parameters, if the writer recorded them.
    pub cdc: Option<[u32; 3]>,
    /// Main stream.
    pub main: StreamReport,
    /// Auxiliary stream.
    pub aux: StreamReport,
    /// Logical bytes of both streams per stored byte of the whole file.
    pub ratio: f64,
    /// Parent chain (thin snapshots).
    pub parents: Vec<ParentReport>,
    /// PBKDF2 iterations when encrypted.
    pub encryption: Option<Encryption>,
    /// Zstd dictionary length, if any.
    pub dictionary_bytes: Option<u32>,
    /// Signature present.
    pub signed: bool,
    /// Metadata: JSON when it parses, else text.
    pub metadata: Option<serde_json::Value>,
}

/// Encryption parameters.
#[derive(Debug, Serialize)]
pub struct Encryption {
    /// Cipher name.
    pub cipher: &'static str,
    /// PBKDF2-HMAC-SHA256 iterations.
    pub iterations: u32,
}

fn open_index(engine: &std::sync::Arc<Engine>, path: &Path) -> Result<Snapshot, CommandError> {
    Ok(Snapshot::open_with(
        path,
        engine,
        &OpenOptions {
            password: None,
            index_only: true,
        },
    )?)
}

fn stream_report(
    snap: &Snapshot,
    engine: &Engine,
    stream: Stream,
) -> Result<StreamReport, CommandError> {
    let a = snap.archive();
    let mut r = StreamReport {
        size: a.stream_size(stream),
        pages: a.pages(stream).len(),
        blocks: 0,
        data_blocks: 0,
        sparse_blocks: 0,
        parent_blocks: 0,
        deduplicated_blocks: 0,
        stored_bytes: 0,
    };
    let mut seen = HashSet::new();
    for p in 0..r.pages {
        let page = a.page(engine, stream, p)?;
        for b in &page.blocks {
            match b.kind() {
                BlockKind::Empty => continue,
                BlockKind::Data => {
                    r.data_blocks += 1;
                    if seen.insert(b.offset) {
                        r.stored_bytes += u64::from(b.length);
                    } else {
                        r.deduplicated_blocks += 1;
                    }
                }
                BlockKind::Sparse => r.sparse_blocks += 1,
                BlockKind::Parent => r.parent_blocks += 1,
                BlockKind::Invalid => {}
            }
            r.blocks += 1;
        }
    }
    Ok(r)
}

/// Describes the parent chain. Each archive is expanded once: one met again (a loop, or two
/// paths to one parent) is reported as already shown, so a hostile header cannot make this
/// walk exponential.
fn parent_chain(
    engine: &std::sync::Arc<Engine>,
    child: &Snapshot,
    seen: &mut HashSet<String>,
) -> Vec<ParentReport> {
    let names = &child.archive().header().parent_paths;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let found = child.parent_ref(name);
        let mut rep = ParentReport {
            path: name.clone(),
            resolved: found.resolved.clone(),
            error: None,
            parents: Vec::new(),
        };
        if found
            .identity
            .as_ref()
            .is_some_and(|k| !seen.insert(k.clone()))
        {
            rep.error = Some("already shown above (the chain loops or repeats)".into());
        } else {
            match found.open_index(engine) {
                Ok(s) => rep.parents = parent_chain(engine, &s, seen),
                Err(e) => rep.error = Some(e),
            }
        }
        out.push(rep);
    }
    out
}

/// Builds the report.
pub fn report(path: &Path) -> Result<Report, CommandError> {
    let engine = Engine::with_remote(
        EngineConfig {
            cache_bytes: 0,
            workers: 1,
            ..EngineConfig::default()
        },
        RemoteConfig::from_env()?,
    )
    .map_err(CommandError::Output)?;
    let snap = open_index(&engine, path)?;
    let a = snap.archive();
    let h = a.header();
    let main = stream_report(&snap, &engine, Stream::Main)?;
    let aux = stream_report(&snap, &engine, Stream::Aux)?;
    let metadata = a.metadata()?.map(|m| {
        serde_json::from_slice(&m)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&m).into_owned()))
    });
    Ok(Report {
        path: snap.path().display().to_string(),
        file_size: a.file_len(),
        version: 1,
        compression: h.compression.name(),
        block_size: h.block_size,
        cdc: h.cdc_params.map(|c| [c.f, c.min, c.max]),
        ratio: (main.size + aux.size) as f64 / a.file_len().max(1) as f64,
        main,
        aux,
        parents: parent_chain(&engine, &snap, &mut {
            let mut seen = HashSet::new();
            let me = snap.path();
            let me = std::fs::canonicalize(me).unwrap_or_else(|_| me.to_path_buf());
            seen.insert(me.display().to_string());
            seen
        }),
        encryption: h.encryption.map(|e| Encryption {
            cipher: "AES-256-GCM, PBKDF2-HMAC-SHA256",
            iterations: e.iterations,
        }),
        dictionary_bytes: h.dictionary_length,
        signed: h.signature_offset.is_some(),
        metadata,
    })
}

fn render_parents(out: &mut String, parents: &[ParentReport], indent: usize) {
    for p in parents {
        let state = match (&p.resolved, &p.error) {
            (Some(r), Some(e)) => format!("-> {r} ({e})"),
            (Some(r), None) => format!("-> {r}"),
            (None, Some(e)) => format!("MISSING ({e})"),
            (None, None) => String::new(),
        };
        out.push_str(&format!(
            "{:indent$}{} {state}\n",
            "",
            p.path,
            indent = indent
        ));
        render_parents(out, &p.parents, indent + 2);
    }
}

/// Renders the report as aligned text.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    let line = |s: &mut String, k: &str, v: String| s.push_str(&format!("{k:<12} {v}\n"));
    line(
        &mut s,
        "archive",
        format!("{} ({} bytes)", r.path, r.file_size),
    );
    let cdc = r.cdc.map_or_else(
        || "fixed-size blocks".to_string(),
        |c| format!("CDC avg 2^{} min {} max {}", c[0], c[1], c[2]),
    );
    line(
        &mut s,
        "format",
        format!(
            "hxz v{}, {}, nominal block size {}, {cdc}",
            r.version, r.compression, r.block_size
        ),
    );
    for (name, st) in [("main", &r.main), ("aux", &r.aux)] {
        if st.size == 0 && st.blocks == 0 {
            line(&mut s, name, "empty".into());
            continue;
        }
        line(
            &mut s,
            name,
            format!(
                "{} bytes, {} blocks in {} pages ({} data, {} sparse, {} parent), {} stored bytes",
                st.size,
                st.blocks,
                st.pages,
                st.data_blocks,
                st.sparse_blocks,
                st.parent_blocks,
                st.stored_bytes
            ),
        );
    }
    line(&mut s, "ratio", format!("{:.2}", r.ratio));
    match &r.encryption {
        Some(e) => line(
            &mut s,
            "encryption",
            format!("{} ({} iterations)", e.cipher, e.iterations),
        ),
        None => line(&mut s, "encryption", "none".into()),
    }
    if r.parents.is_empty() {
        line(&mut s, "parents", "none (not a thin snapshot)".into());
    } else {
        s.push_str("parents\n");
        render_parents(&mut s, &r.parents, 2);
    }
    if let Some(d) = r.dictionary_bytes {
        line(&mut s, "dictionary", format!("{d} bytes"));
    }
    line(
        &mut s,
        "signed",
        if r.signed { "yes".into() } else { "no".into() },
    );
    match &r.metadata {
        None => line(&mut s, "metadata", "none".into()),
        Some(m) => {
            let mut text = m.to_string();
            if text.len() > 2000 {
                // `str::floor_char_boundary` is newer than the crate's MSRV (1.85).
                let mut end = 2000;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                text.push_str("...");
            }
            line(&mut s, "metadata", text);
        }
    }
    s
}

/// Prints the report.
pub fn run(args: &InspectArgs) -> Result<(), CommandError> {
    let r = report(&args.archive)?;
    if args.json {
        let text = serde_json::to_string_pretty(&r)
            .map_err(|e| CommandError::Output(std::io::Error::other(e)))?;
        write_stdout(&format!("{text}\n"))
    } else {
        write_stdout(&render_text(&r))
    }
}
