//! One range GET, start to end: the request (Range, the validator, Basic or SigV4
//! authorization), redirects (same scheme, each target checked against the allowed origins),
//! the checks on the answer (a 206 with exactly the Content-Range asked for, the same object
//! as at open, an identity encoding), reading the body into the caller's buffers, and bounded
//! retries with backoff for 5xx, resets, timeouts and short bodies.

use std::io::Read;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use url::Url;

use super::metrics::RemoteMetrics;
use super::{Remote, RemoteError};

/// Most redirects followed for one request.
const MAX_REDIRECTS: u32 = 5;
/// Most of an error body read for its message.
const ERROR_BODY: u64 = 4096;

/// How requests for one object are authorised.
#[derive(Clone)]
pub(crate) enum Auth {
    /// No credentials (public object).
    None,
    /// `Authorization: Basic …` from the URL's user information; sent to its origin only.
    Basic(String),
    /// SigV4 with the engine's S3 settings; redirects are not followed.
    S3,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            Auth::Basic(_) => "Basic(<redacted>)",
            Auth::S3 => "S3",
        })
    }
}

impl Auth {
    /// Basic authorization for `user:password`.
    pub fn basic(user: &str, password: &str) -> Auth {
        let token = base64::prelude::BASE64_STANDARD.encode(format!("{user}:{password}"));
        Auth::Basic(format!("Basic {token}"))
    }
}

/// Where and how one object is fetched.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Request URL, without user information.
    pub url: String,
    /// The URL as shown (no credentials, no query).
    pub display: String,
    /// Origin of `url` (redirect and credential scoping).
    pub origin: String,
    pub auth: Auth,
}

/// The object's identity as fixed at open: every later range must come from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Validator {
    /// Object size in bytes (the Content-Range total).
    pub size: u64,
    /// Strong or weak `ETag`, as sent.
    pub etag: Option<String>,
    /// `Last-Modified`, as sent.
    pub last_modified: Option<String>,
}

impl Validator {
    /// A strong ETag, usable in `If-Match` (a weak one never matches there).
    fn strong_etag(&self) -> Option<&str> {
        self.etag.as_deref().filter(|e| !e.starts_with("W/"))
    }
}

/// Fetches `start .. start + Σ bufs.len()` of `target` into `bufs`, in order. With
/// `expect`, the answer must come from that object (`If-Match`, or `If-Unmodified-Since`,
/// and the validators of the response); without it (the probe at open) the object's
/// validator is returned. Retries retryable failures within the engine's bounds.
pub(crate) fn get_range(
    remote: &Remote,
    target: &Target,
    start: u64,
    bufs: &mut [&mut [u8]],
    expect: Option<&Validator>,
) -> Result<Validator, RemoteError> {
    let cfg = &remote.config;
    let deadline = Instant::now() + cfg.request_timeout;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match exchange(remote, target, start, bufs, expect) {
            Ok(v) => return Ok(v),
            Err(e) => {
                remote.metrics.remote.error(&e.label());
                let backoff = backoff(attempt);
                if !e.retryable() || attempt > cfg.retries || Instant::now() + backoff >= deadline {
                    return Err(if attempt > 1 {
                        RemoteError::GaveUp {
                            attempts: attempt,
                            source: Box::new(e),
                        }
                    } else {
                        e
                    });
                }
                log::debug!("{e}; retrying in {} ms", backoff.as_millis());
                RemoteMetrics::add(&remote.metrics.remote.retries, 1);
                std::thread::sleep(backoff);
            }
        }
    }
}

/// 100 ms, 200 ms, 400 ms, ... up to 2 s, with up to 25 % jitter so that many readers
/// retrying at once do not return in step.
fn backoff(attempt: u32) -> Duration {
    let base = 100u64 << attempt.saturating_sub(1).min(5);
    let base = base.min(2000);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    Duration::from_millis(base + (nanos % (base / 4 + 1)))
}

/// One attempt, following redirects.
fn exchange(
    remote: &Remote,
    target: &Target,
    start: u64,
    bufs: &mut [&mut [u8]],
    expect: Option<&Validator>,
) -> Result<Validator, RemoteError> {
    let want: u64 = bufs.iter().map(|b| b.len() as u64).sum();
    let end = start + want - 1;
    let range = format!("bytes={start}-{end}");
    let mut url = target.url.clone();
    let mut shown = target.display.clone();
    let mut hops = 0u32;
    loop {
        let err = |kind: &'static str, detail: String| RemoteError::Transport {
            url: shown.clone(),
            range: range.clone(),
            kind,
            detail,
        };
        let origin = Url::parse(&url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        let agent = remote.agent(&origin);
        let mut req = agent
            .get(url.as_str())
            .header("Range", range.as_str())
            .header("Accept-Encoding", "identity");
        if let Some(v) = expect {
            if let Some(e) = v.strong_etag() {
                req = req.header("If-Match", e);
            } else if let Some(lm) = &v.last_modified {
                req = req.header("If-Unmodified-Since", lm.as_str());
            }
        }
        match &target.auth {
            Auth::None => {}
            // Credentials go to the origin they were given for, never to a redirect target.
            Auth::Basic(h) if origin == target.origin => {
                req = req.header("Authorization", h.as_str())
            }
            Auth::Basic(_) => {}
            Auth::S3 => {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                for (name, value) in remote.config.s3.sign("GET", &url, &range, now) {
                    req = req.header(name, value);
                }
            }
        }
        RemoteMetrics::add(&remote.metrics.remote.requests, 1);
        let mut resp = req.call().map_err(|e| classify(&e, &err))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        match status {
            206 => {}
            200 => {
                return Err(RemoteError::RangeIgnored { url: shown });
            }
            301 | 302 | 303 | 307 | 308 if !matches!(target.auth, Auth::S3) => {
                hops += 1;
                let location = header("location").unwrap_or_default();
                let next = redirect(remote, target, &url, &location).map_err(|why| {
                    RemoteError::Redirect {
                        url: shown.clone(),
                        status,
                        why,
                    }
                })?;
                if hops > MAX_REDIRECTS {
                    return Err(RemoteError::Redirect {
                        url: shown,
                        status,
                        why: format!("more than {MAX_REDIRECTS} redirects"),
                    });
                }
                shown = super::location::RemoteUrl::parse(&next)
                    .map(|r| r.display())
                    .unwrap_or_else(|_| "(redirect target)".into());
                url = next;
                continue;
            }
            412 => {
                return Err(RemoteError::Changed {
                    url: shown,
                    detail: "412 Precondition Failed: the ETag no longer matches".into(),
                });
            }
            _ => {
                let detail = error_detail(&mut resp);
                let mut hint = String::new();
                if matches!(target.auth, Auth::S3)
                    && status == 403
                    && remote.config.s3.credentials.is_none()
                {
                    hint = " (no S3 credentials were found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a shared credentials file, or [s3] credentials_file)".into();
                }
                return Err(RemoteError::Status {
                    url: shown,
                    range,
                    status,
                    detail: format!("{detail}{hint}"),
                });
            }
        }

        if let Some(enc) = header("content-encoding") {
            if !enc.eq_ignore_ascii_case("identity") {
                return Err(err(
                    "content encoding",
                    format!(
                        "the server sent Content-Encoding {enc:?}; the range must be the object's own bytes"
                    ),
                ));
            }
        }
        let content_range = header("content-range").unwrap_or_default();
        let (cr_start, cr_end, total) =
            parse_content_range(&content_range).ok_or_else(|| RemoteError::WrongRange {
                url: shown.clone(),
                asked: range.clone(),
                got: content_range.clone(),
            })?;
        let found = Validator {
            size: total.unwrap_or(0),
            etag: header("etag"),
            last_modified: header("last-modified"),
        };
        // Another object first (a server that ignores If-Match still says so in its
        // validators or size), then bytes other than those asked for.
        if let Some(v) = expect {
            let changed = |a: &Option<String>, b: &Option<String>, what: &str| match (a, b) {
                (Some(x), Some(y)) if x != y => Some(format!("{what} was {x}, now {y}")),
                _ => None,
            };
            let resized = total
                .filter(|&t| t != v.size)
                .map(|t| format!("size was {}, now {t}", v.size));
            if let Some(detail) = changed(&v.etag, &found.etag, "ETag")
                .or_else(|| changed(&v.last_modified, &found.last_modified, "Last-Modified"))
                .or(resized)
            {
                return Err(RemoteError::Changed { url: shown, detail });
            }
        }
        // At open the object's size is unknown and the end may be clamped to it.
        let exact = match expect {
            Some(v) => cr_start == start && cr_end == end && total == Some(v.size),
            None => cr_start == start && cr_end <= end && total.is_some_and(|t| cr_end < t),
        };
        if !exact {
            return Err(RemoteError::WrongRange {
                url: shown,
                asked: range,
                got: content_range,
            });
        }
        let got_len = cr_end - cr_start + 1;
        if let Some(cl) = header("content-length").and_then(|v| v.trim().parse::<u64>().ok()) {
            if cl != got_len {
                return Err(RemoteError::WrongRange {
                    url: shown,
                    asked: range,
                    got: format!("{content_range} with Content-Length {cl}"),
                });
            }
        }
        let mut reader = resp.body_mut().as_reader();
        let mut read = 0u64;
        let mut left = got_len;
        for buf in bufs.iter_mut() {
            let take = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            let mut pos = 0usize;
            while pos < take {
                match reader.read(&mut buf[pos..take]) {
                    Ok(0) => {
                        RemoteMetrics::add(&remote.metrics.remote.bytes, read);
                        return Err(RemoteError::ShortBody {
                            url: shown,
                            range,
                            got: read,
                            want: got_len,
                        });
                    }
                    Ok(n) => {
                        pos += n;
                        read += n as u64;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        // The connection closed before Content-Length said it would.
                        RemoteMetrics::add(&remote.metrics.remote.bytes, read);
                        return Err(RemoteError::ShortBody {
                            url: shown,
                            range,
                            got: read,
                            want: got_len,
                        });
                    }
                    Err(e) => {
                        RemoteMetrics::add(&remote.metrics.remote.bytes, read);
                        return Err(classify_io(&e, &err, read, got_len));
                    }
                }
            }
            left -= take as u64;
        }
        RemoteMetrics::add(&remote.metrics.remote.bytes, read);
        // Read to the end so the connection goes back to the pool.
        let mut extra = [0u8; 1];
        if matches!(reader.read(&mut extra), Ok(n) if n > 0) {
            return Err(RemoteError::WrongRange {
                url: shown,
                asked: range,
                got: format!("{content_range} with more bytes than it says"),
            });
        }
        return Ok(found);
    }
}

/// Checks a redirect from `from` to `location`: same scheme, and an origin the archive may
/// use (its own, or one the config allows). Returns the absolute target.
fn redirect(
    remote: &Remote,
    target: &Target,
    from: &str,
    location: &str,
) -> Result<String, String> {
    if location.is_empty() {
        return Err("no Location header".into());
    }
    let base = Url::parse(from).map_err(|e| e.to_string())?;
    let next = base
        .join(location)
        .map_err(|e| format!("bad Location: {e}"))?;
    if next.scheme() != base.scheme() {
        return Err(format!(
            "it changes the scheme ({} to {})",
            base.scheme(),
            next.scheme()
        ));
    }
    if !next.username().is_empty() || next.password().is_some() {
        return Err("the target carries user information".into());
    }
    let origin = next.origin().ascii_serialization();
    if origin != target.origin && !remote.config.allow_origins.contains(&origin) {
        return Err(format!(
            "{origin} is another origin (allow it with [remote] allow_origins)"
        ));
    }
    Ok(next.to_string())
}

/// Parses `bytes START-END/TOTAL` (TOTAL may be `*`).
pub(crate) fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (s, e) = span.trim().split_once('-')?;
    let (s, e): (u64, u64) = (s.trim().parse().ok()?, e.trim().parse().ok()?);
    if e < s {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((s, e, total))
}

/// The status line reason and, for S3-style XML errors, their code and message.
fn error_detail(resp: &mut ureq::http::Response<ureq::Body>) -> String {
    let reason = resp.status().canonical_reason().unwrap_or("");
    let mut body = Vec::new();
    let _ = resp
        .body_mut()
        .as_reader()
        .take(ERROR_BODY)
        .read_to_end(&mut body);
    let text = String::from_utf8_lossy(&body);
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let close = format!("</{t}>");
        let s = text.find(&open)? + open.len();
        let e = text[s..].find(&close)? + s;
        Some(text[s..e].trim().to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{reason} ({c}: {m})"),
        (Some(c), None) => format!("{reason} ({c})"),
        _ => reason.to_string(),
    }
}

/// Maps a ureq failure (before any body byte) to a transport error.
fn classify(e: &ureq::Error, err: &dyn Fn(&'static str, String) -> RemoteError) -> RemoteError {
    match e {
        ureq::Error::Timeout(t) => err("timeout", format!("{t:?} timed out")),
        ureq::Error::Io(io) => classify_io(io, err, 0, 0),
        ureq::Error::HostNotFound => err("dns", "host not found".into()),
        ureq::Error::ConnectionFailed => err("connect", "connection failed".into()),
        other => err("protocol", other.to_string()),
    }
}

fn classify_io(
    e: &std::io::Error,
    err: &dyn Fn(&'static str, String) -> RemoteError,
    got: u64,
    want: u64,
) -> RemoteError {
    use std::io::ErrorKind::*;
    let at = if want > 0 {
        format!(" after {got} of {want} body bytes")
    } else {
        String::new()
    };
    let kind = match e.kind() {
        TimedOut | WouldBlock => "timeout",
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => "reset",
        ConnectionRefused => "connect",
        _ => "io",
    };
    err(kind, format!("{e}{at}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms() {
        assert_eq!(parse_content_range("bytes 0-0/10"), Some((0, 0, Some(10))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, 9, None)));
        assert_eq!(
            parse_content_range(" bytes  5 - 9 / 12 "),
            Some((5, 9, Some(12)))
        );
        for bad in [
            "",
            "bytes 9-5/10",
            "bytes */10",
            "items 0-1/2",
            "bytes 0-1/x",
            "bytes 0-1",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(
            backoff(1) >= Duration::from_millis(100) && backoff(1) <= Duration::from_millis(125)
        );
        assert!(backoff(3) >= Duration::from_millis(400));
        assert!(backoff(30) <= Duration::from_millis(2500));
    }
}
