//! One request, decided (http.md §3): authorization, route, method, preconditions, HEAD,
//! Range, in that order. Produces a [`Response`] whose head is complete except for the
//! connection header and whose body is either in memory (small) or a [`Plan`] over a stream;
//! no storage read happens here.

use std::sync::atomic::Ordering;

use super::conditional::{self, Outcome, Validators};
use super::range::{self, ByteRange, Decision};
use super::request::{Method, Request};
use super::response::{self, Head, OCTET_STREAM, Plan};
use super::route::{self, Route};
use super::{HttpService, admin, date};
use crate::format::Stream;
use crate::serving::Catalog;
use crate::store::Snapshot;

/// A decided response.
#[derive(Debug)]
pub(super) struct Response {
    /// Status code.
    pub status: u16,
    /// The head, with Content-Length, not yet finished.
    pub head: Head,
    /// What follows the head.
    pub body: Body,
}

/// A response body.
#[derive(Debug)]
pub(super) enum Body {
    /// Nothing (HEAD, 304, errors, empty representations).
    None,
    /// A small body built in memory (`/snapshots`, `/metrics`, `/healthz`).
    Bytes(Vec<u8>),
    /// Bytes of a snapshot stream, produced block by block by the connection.
    Stream {
        snapshot: Snapshot,
        stream: Stream,
        plan: Plan,
    },
}

impl Response {
    /// A response without content: `Content-Length: 0`.
    pub fn empty(status: u16, date: &str) -> Response {
        Response {
            status,
            head: Head::new(status, date).header("Content-Length", 0),
            body: Body::None,
        }
    }
}

/// Decides the answer to `req` at time `now` (seconds since the epoch), whose IMF-fixdate
/// is `date` (the connection formats it once per second).
pub(super) fn respond(
    svc: &HttpService,
    catalog: &Catalog,
    req: &Request,
    now: i64,
    date: &str,
) -> Response {
    let route = route::route(&req.target);
    if route != Route::Health {
        if let Some(token) = &svc.token {
            let authorization = match &req.authorization {
                conditional::Single::One(v) => Some(v.as_slice()),
                _ => None,
            };
            if !token.allows(authorization) {
                let mut r = Response::empty(401, date);
                r.head = r.head.header("WWW-Authenticate", "Bearer realm=\"hexzd\"");
                return r;
            }
        }
    }
    if route == Route::NotFound {
        return Response::empty(404, date);
    }
    if req.method == Method::Other {
        let mut r = Response::empty(405, date);
        r.head = r.head.header("Allow", route::ALLOW);
        return r;
    }
    let head_only = req.method == Method::Head;
    match route {
        Route::Stream { snapshot, stream } => {
            match crate::serving::names::lookup(catalog, snapshot.as_deref()) {
                Some(e) => serve_stream(svc, &e.snapshot, stream, req, now, date),
                None => Response::empty(404, date),
            }
        }
        Route::List => small(
            200,
            "application/json",
            admin::snapshots_json(catalog),
            head_only,
            date,
        ),
        Route::Metrics => small(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            admin::metrics_text(svc, catalog),
            head_only,
            date,
        ),
        Route::Health => small(
            200,
            "text/plain; charset=utf-8",
            b"ok\n".to_vec(),
            head_only,
            date,
        ),
        Route::NotFound => Response::empty(404, date),
    }
}

/// A 200 with a body built in memory (and only its length on HEAD).
fn small(status: u16, content_type: &str, body: Vec<u8>, head_only: bool, date: &str) -> Response {
    let head = Head::new(status, date)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store");
    Response {
        status,
        head,
        body: if head_only {
            Body::None
        } else {
            Body::Bytes(body)
        },
    }
}

/// http.md §3 steps 2–8 for a stream that exists.
fn serve_stream(
    svc: &HttpService,
    snapshot: &Snapshot,
    stream: Stream,
    req: &Request,
    now: i64,
    date: &str,
) -> Response {
    let len = snapshot.size(stream);
    let v = Validators::new(
        snapshot.identity(),
        stream.route_name(),
        date::unix_seconds(snapshot.modified()),
        now,
    );
    // Range has meaning for GET only (RFC 9110 §14.2); on HEAD it is ignored, and If-Range
    // with it.
    let range = if req.method == Method::Get {
        req.range()
    } else {
        None
    };
    let honour_range = match conditional::evaluate(&req.conditions, &v, range.is_some()) {
        Outcome::NotModified => {
            // RFC 9110 §15.4.5: ETag (and Date), no other representation metadata, no body.
            let head = Head::new(304, date).header("ETag", &v.etag);
            return Response {
                status: 304,
                head,
                body: Body::None,
            };
        }
        Outcome::PreconditionFailed => return Response::empty(412, date),
        Outcome::Proceed { honour_range } => honour_range,
    };
    let representation = |status: u16, content_length: u64| {
        Head::new(status, date)
            .header("Accept-Ranges", "bytes")
            .header("ETag", &v.etag)
            .header("Last-Modified", date::format(v.last_modified))
            .header("Content-Length", content_length)
    };
    let full = |head_only: bool| {
        let head = representation(200, len).header("Content-Type", OCTET_STREAM);
        let body = if head_only || len == 0 {
            Body::None
        } else {
            Body::Stream {
                snapshot: snapshot.clone(),
                stream,
                plan: Plan::data(ByteRange {
                    first: 0,
                    last: len - 1,
                }),
            }
        };
        Response {
            status: 200,
            head,
            body,
        }
    };
    if req.method == Method::Head {
        return full(true);
    }
    let decision = match range {
        Some(value) if honour_range => {
            range::decide(&range::parse(value), len, svc.settings.max_range_bytes)
        }
        _ => Decision::Full,
    };
    match decision {
        Decision::Full => full(false),
        Decision::Single(r) => Response {
            status: 206,
            head: representation(206, r.len())
                .header("Content-Type", OCTET_STREAM)
                .header(
                    "Content-Range",
                    response::content_range(r.first, r.last, len),
                ),
            body: Body::Stream {
                snapshot: snapshot.clone(),
                stream,
                plan: Plan::data(r),
            },
        },
        Decision::Multi(ranges) => {
            let nonce = svc.nonce.fetch_add(1, Ordering::Relaxed);
            let boundary = response::boundary(snapshot.identity(), &ranges, nonce);
            // A multipart body longer than 2^64 bytes cannot be framed; a full 200 can.
            let Some(plan) = response::multipart(&ranges, len, &boundary) else {
                return full(false);
            };
            Response {
                status: 206,
                head: representation(206, plan.len)
                    .header("Content-Type", response::multipart_type(&boundary)),
                body: Body::Stream {
                    snapshot: snapshot.clone(),
                    stream,
                    plan,
                },
            }
        }
        Decision::Unsatisfiable => {
            let mut r = Response::empty(416, date);
            r.head = r.head.header("Content-Range", format!("bytes */{len}"));
            r
        }
    }
}
