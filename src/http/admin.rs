//! The two non-stream resources with content: `GET /snapshots` (a JSON list of what is served)
//! and `GET /metrics` (Prometheus text exposition format 0.0.4 of every counter of the
//! process: HTTP, NBD and the store).

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;

use serde::Serialize;

use super::conditional::etag;
use super::{HttpService, date};
use crate::format::Stream;
use crate::serving::get;
use crate::serving::{Catalog, ProtoMetrics};
use crate::store::remote::RemoteMetrics;

#[derive(Serialize)]
struct SnapshotInfo<'a> {
    name: &'a str,
    default: bool,
    last_modified: String,
    disk: StreamInfo,
    memory: StreamInfo,
}

#[derive(Serialize)]
struct StreamInfo {
    size: u64,
    etag: String,
    url: String,
}

/// The JSON list of snapshots, in catalog order: name, default flag, Last-Modified, and per
/// stream its size, ETag and URL path.
pub(super) fn snapshots_json(catalog: &Catalog) -> Vec<u8> {
    let default = catalog.default_snapshot().map(|d| d.name.as_str());
    let list: Vec<SnapshotInfo<'_>> = catalog
        .entries()
        .iter()
        .map(|e| {
            let s = &e.snapshot;
            let info = |stream: Stream| StreamInfo {
                size: s.size(stream),
                etag: etag(s.identity(), stream.route_name()),
                url: crate::serving::names::http_stream_path(&e.name, stream),
            };
            SnapshotInfo {
                name: &e.name,
                default: Some(e.name.as_str()) == default,
                last_modified: date::format(date::unix_seconds(s.modified())),
                disk: info(Stream::Main),
                memory: info(Stream::Aux),
            }
        })
        .collect();
    let mut out = serde_json::to_vec_pretty(&list).unwrap_or_else(|_| b"[]".to_vec());
    out.push(b'\n');
    out
}

/// Appends one metric with its HELP and TYPE lines.
fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

fn proto(out: &mut String, proto: &str, m: &ProtoMetrics) {
    let rows: [(&str, &str, &str, &AtomicU64); 11] = [
        (
            "connections_total",
            "counter",
            "Connections accepted.",
            &m.connections_total,
        ),
        (
            "connections_active",
            "gauge",
            "Connections open now.",
            &m.connections_active,
        ),
        (
            "connections_rejected_total",
            "counter",
            "Connections refused because the connection cap was reached.",
            &m.connections_rejected,
        ),
        (
            "requests_total",
            "counter",
            "Requests answered.",
            &m.requests_total,
        ),
        (
            "sent_bytes_total",
            "counter",
            "Payload bytes sent.",
            &m.bytes_sent,
        ),
        (
            "read_errors_total",
            "counter",
            "Requests that failed on a storage read error.",
            &m.read_errors,
        ),
        (
            "protocol_errors_total",
            "counter",
            "Protocol errors that closed a connection.",
            &m.protocol_errors,
        ),
        (
            "connections_rejected_per_client_total",
            "counter",
            "Connections refused because their client was at max_connections_per_client.",
            &m.connections_rejected_per_client,
        ),
        (
            "send_timeouts_total",
            "counter",
            "Connections closed because the client read nothing for the send timeout.",
            &m.send_timeouts,
        ),
        (
            "tls_handshakes_total",
            "counter",
            "TLS handshakes completed.",
            &m.tls_handshakes,
        ),
        (
            "tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed or timed out, and plaintext requests to a TLS port.",
            &m.tls_handshake_failures,
        ),
    ];
    for (name, kind, help, v) in rows {
        metric(out, &format!("hexzd_{proto}_{name}"), kind, help, get(v));
    }
}

/// Counters of remote archives. Labels are status codes or fault kinds, never URLs.
fn remote(out: &mut String, r: &RemoteMetrics) {
    let rows: [(&str, &str, &str, &AtomicU64); 10] = [
        (
            "requests_total",
            "counter",
            "HTTP requests sent for remote archives (attempts and redirect hops).",
            &r.requests,
        ),
        (
            "fetched_bytes_total",
            "counter",
            "Bytes fetched from remote archives.",
            &r.bytes,
        ),
        (
            "retries_total",
            "counter",
            "Remote requests repeated after a retryable failure.",
            &r.retries,
        ),
        (
            "memory_hits_total",
            "counter",
            "Remote chunks answered from memory.",
            &r.memory_hits,
        ),
        (
            "disk_hits_total",
            "counter",
            "Remote chunks answered from the disk cache.",
            &r.disk_hits,
        ),
        (
            "disk_misses_total",
            "counter",
            "Remote chunks the disk cache did not hold.",
            &r.disk_misses,
        ),
        (
            "disk_corrupt_total",
            "counter",
            "Disk cache files found corrupt or truncated and fetched again.",
            &r.disk_corrupt,
        ),
        (
            "disk_evictions_total",
            "counter",
            "Disk cache files evicted to keep its size bound.",
            &r.disk_evictions,
        ),
        (
            "disk_bytes",
            "gauge",
            "Bytes held by the disk cache.",
            &r.disk_bytes,
        ),
        (
            "readahead_bytes_total",
            "counter",
            "Bytes fetched ahead of sequential readers.",
            &r.readahead_bytes,
        ),
    ];
    for (name, kind, help, v) in rows {
        metric(out, &format!("hexzd_remote_{name}"), kind, help, get(v));
    }
    let name = "hexzd_remote_errors_total";
    let _ = writeln!(
        out,
        "# HELP {name} Failed remote requests by HTTP status or fault kind.\n# TYPE {name} counter"
    );
    for (reason, n) in r.errors() {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
    }
}

/// The Prometheus text of every counter.
pub(super) fn metrics_text(svc: &HttpService, catalog: &Catalog) -> Vec<u8> {
    let m = &svc.metrics;
    let mut out = String::with_capacity(4096);
    proto(&mut out, "http", &m.http);
    metric(
        &mut out,
        "hexzd_http_corrupt_block_errors_total",
        "counter",
        "HTTP responses that failed on a corrupt block (CRC, codec, authentication tag).",
        get(&svc.corrupt_blocks),
    );
    proto(&mut out, "nbd", &m.nbd);
    let b = &m.budget;
    let budget: [(&str, &str, &str, u64); 4] = [
        (
            "buffer_memory_bytes",
            "gauge",
            "The response-buffer budget ([limits] buffer_memory).",
            b.total(),
        ),
        (
            "buffer_memory_used_bytes",
            "gauge",
            "Bytes of response buffers (HTTP bodies, NBD replies) held now.",
            b.used(),
        ),
        (
            "buffer_memory_waits_total",
            "counter",
            "Buffer requests that waited because the budget was in use.",
            get(&b.waits),
        ),
        (
            "buffer_memory_timeouts_total",
            "counter",
            "Buffer requests that gave up waiting (the request failed: HTTP 503, NBD EIO).",
            get(&b.timeouts),
        ),
    ];
    for (name, kind, help, v) in budget {
        metric(&mut out, &format!("hexzd_{name}"), kind, help, v);
    }
    let s = &m.store;
    let store: [(&str, &str, &AtomicU64); 5] = [
        (
            "cache_hits_total",
            "Block lookups answered from the cache.",
            &s.cache_hits,
        ),
        (
            "cache_misses_total",
            "Block lookups that waited for a decode.",
            &s.cache_misses,
        ),
        ("decompressions_total", "Blocks decoded.", &s.decompressions),
        (
            "stored_read_bytes_total",
            "Stored bytes read from archive files.",
            &s.stored_bytes_read,
        ),
        (
            "block_errors_total",
            "Blocks that failed to read or decode (CRC, codec, tag, I/O).",
            &s.block_errors,
        ),
    ];
    for (name, help, v) in store {
        metric(
            &mut out,
            &format!("hexzd_store_{name}"),
            "counter",
            help,
            get(v),
        );
    }
    remote(&mut out, &s.remote);
    if let Some(e) = catalog.entries().first() {
        let engine = e.snapshot.engine();
        metric(
            &mut out,
            "hexzd_cache_bytes",
            "gauge",
            "Bytes of decompressed blocks held by the cache.",
            engine.cache_used() as u64,
        );
        metric(
            &mut out,
            "hexzd_cache_capacity_bytes",
            "gauge",
            "Capacity of the block cache.",
            engine.config().cache_bytes as u64,
        );
    }
    metric(
        &mut out,
        "hexzd_snapshots",
        "gauge",
        "Snapshots served.",
        catalog.entries().len() as u64,
    );
    out.into_bytes()
}
