//! S3: where `s3://BUCKET/KEY` is fetched from (endpoint, region, path or virtual-hosted
//! style) and with what credentials, and the SigV4 headers of one request.
//!
//! Settings come from the `[s3]` section (passed in as [`S3Settings`]) over the standard
//! variables: `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, `AWS_REGION` /
//! `AWS_DEFAULT_REGION`. Credentials, first found wins: `[s3] credentials_file` (a systemd
//! `LoadCredential=` file), `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+
//! `AWS_SESSION_TOKEN`), the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE` or
//! `~/.aws/credentials`, profile `AWS_PROFILE` or `default`). None found means unsigned
//! requests, which public buckets answer. An instance metadata address is never called.

use std::path::{Path, PathBuf};

use url::Url;

use super::sigv4;
use crate::store::file::read_small;

/// Largest credentials file read.
const MAX_CREDENTIALS_FILE: u64 = 1 << 20;

/// An S3 configuration problem (start-up error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3Error {
    /// The endpoint is not an http(s) URL.
    #[error("S3 endpoint {0:?} is not an http:// or https:// URL without a query")]
    Endpoint(String),
    /// A credentials file that cannot be read or parsed.
    #[error("S3 credentials file {path}: {problem}", path = path.display())]
    CredentialsFile { path: PathBuf, problem: String },
    /// Half a key pair in the environment.
    #[error("{0} is set but {1} is not; set both (or neither, for unsigned requests)")]
    HalfPair(&'static str, &'static str),
}

/// The `[s3]` section as given (every key optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// Endpoint URL (`https://minio.example:9000`); default AWS's regional endpoint.
    pub endpoint: Option<String>,
    /// Signing region; default `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`ENDPOINT/BUCKET/KEY`); default: on for a custom endpoint, off
    /// for AWS (`BUCKET.s3.REGION.amazonaws.com/KEY`).
    pub path_style: Option<bool>,
    /// A credentials file (shared-credentials format; e.g. a systemd credential).
    pub credentials_file: Option<PathBuf>,
    /// Profile to read from credentials files (default `AWS_PROFILE`, else `default`).
    pub profile: Option<String>,
}

/// An access key pair. `Debug` never shows the secret or the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Access key id.
    pub access_key: String,
    secret: String,
    session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <secret>)", self.access_key)
    }
}

impl Credentials {
    /// A key pair (and session token for temporary credentials).
    pub fn new(access_key: &str, secret: &str, session_token: Option<&str>) -> Credentials {
        Credentials {
            access_key: access_key.to_string(),
            secret: secret.to_string(),
            session_token: session_token.map(str::to_string),
        }
    }
}

/// Resolved S3 settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Endpoint, or `None` for AWS's regional endpoint.
    pub endpoint: Option<Url>,
    /// Signing region.
    pub region: String,
    /// Path-style addressing.
    pub path_style: bool,
    /// `None`: unsigned requests.
    pub credentials: Option<Credentials>,
    /// Where the credentials came from, for messages ("AWS_ACCESS_KEY_ID", a file).
    pub credentials_source: Option<String>,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: "us-east-1".into(),
            path_style: false,
            credentials: None,
            credentials_source: None,
        }
    }
}

impl S3Config {
    /// Resolves `settings` over the environment read through `env` (`std::env::var` in the
    /// binary; a map in tests).
    pub fn resolve(
        settings: &S3Settings,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<S3Config, S3Error> {
        let var = |n: &str| env(n).filter(|v| !v.trim().is_empty());
        let endpoint = match settings
            .endpoint
            .clone()
            .or_else(|| var("AWS_ENDPOINT_URL_S3"))
            .or_else(|| var("AWS_ENDPOINT_URL"))
        {
            None => None,
            Some(e) => {
                let u = Url::parse(e.trim()).map_err(|_| S3Error::Endpoint(e.clone()))?;
                if !matches!(u.scheme(), "http" | "https")
                    || u.host_str().is_none()
                    || u.query().is_some()
                    || !u.username().is_empty()
                {
                    return Err(S3Error::Endpoint(e));
                }
                Some(u)
            }
        };
        let region = settings
            .region
            .clone()
            .or_else(|| var("AWS_REGION"))
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let path_style = settings.path_style.unwrap_or(endpoint.is_some());
        let profile = settings
            .profile
            .clone()
            .or_else(|| var("AWS_PROFILE"))
            .unwrap_or_else(|| "default".into());

        let (credentials, source) = if let Some(f) = &settings.credentials_file {
            (
                Some(read_credentials(f, &profile, true)?.ok_or_else(|| {
                    S3Error::CredentialsFile {
                        path: f.clone(),
                        problem: format!(
                            "no aws_access_key_id/aws_secret_access_key for profile {profile:?}"
                        ),
                    }
                })?),
                Some(f.display().to_string()),
            )
        } else {
            match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
                (Some(k), Some(s)) => (
                    Some(Credentials::new(
                        &k,
                        &s,
                        var("AWS_SESSION_TOKEN").as_deref(),
                    )),
                    Some("AWS_ACCESS_KEY_ID".to_string()),
                ),
                (Some(_), None) => {
                    return Err(S3Error::HalfPair(
                        "AWS_ACCESS_KEY_ID",
                        "AWS_SECRET_ACCESS_KEY",
                    ));
                }
                (None, Some(_)) => {
                    return Err(S3Error::HalfPair(
                        "AWS_SECRET_ACCESS_KEY",
                        "AWS_ACCESS_KEY_ID",
                    ));
                }
                (None, None) => {
                    let shared = var("AWS_SHARED_CREDENTIALS_FILE")
                        .map(PathBuf::from)
                        .or_else(|| var("HOME").map(|h| Path::new(&h).join(".aws/credentials")));
                    match shared {
                        Some(f) if f.exists() => {
                            let c = read_credentials(&f, &profile, false)?;
                            let src = c.as_ref().map(|_| f.display().to_string());
                            (c, src)
                        }
                        _ => (None, None),
                    }
                }
            }
        };
        Ok(S3Config {
            endpoint,
            region,
            path_style,
            credentials,
            credentials_source: source,
        })
    }

    /// The URL to fetch `bucket`/`key` from. Buckets with dots use path style over HTTPS
    /// (a virtual host name with dots does not match the wildcard certificate).
    pub(crate) fn object_url(&self, bucket: &str, key: &str) -> String {
        let key = sigv4::uri_encode(key, true);
        match &self.endpoint {
            Some(e) => {
                let base = e.as_str().trim_end_matches('/');
                if self.path_style {
                    format!("{base}/{bucket}/{key}")
                } else {
                    let mut u = e.clone();
                    let host = format!("{bucket}.{}", e.host_str().unwrap_or(""));
                    if u.set_host(Some(&host)).is_err() {
                        return format!("{base}/{bucket}/{key}");
                    }
                    format!("{}/{key}", u.as_str().trim_end_matches('/'))
                }
            }
            None => {
                let region = &self.region;
                if self.path_style || bucket.contains('.') {
                    format!("https://s3.{region}.amazonaws.com/{bucket}/{key}")
                } else {
                    format!("https://{bucket}.s3.{region}.amazonaws.com/{key}")
                }
            }
        }
    }

    /// The SigV4 headers (`x-amz-date`, `x-amz-content-sha256`, `x-amz-security-token`,
    /// `authorization`) for a GET or HEAD of `url` with `range`, at `unix` seconds; none
    /// without credentials (an unsigned request).
    pub(crate) fn sign(
        &self,
        method: &str,
        url: &str,
        range: &str,
        unix: i64,
    ) -> Vec<(&'static str, String)> {
        let Some(c) = &self.credentials else {
            return Vec::new();
        };
        let Ok(u) = Url::parse(url) else {
            return Vec::new();
        };
        let host = match u.port() {
            Some(p) => format!("{}:{p}", u.host_str().unwrap_or("")),
            None => u.host_str().unwrap_or("").to_string(),
        };
        let date = sigv4::amz_date(unix);
        let mut headers: Vec<(&str, &str)> = vec![
            ("host", &host),
            ("range", range),
            ("x-amz-content-sha256", sigv4::UNSIGNED_PAYLOAD),
            ("x-amz-date", &date),
        ];
        if let Some(t) = &c.session_token {
            headers.push(("x-amz-security-token", t));
        }
        let auth = sigv4::authorization(
            &sigv4::Request {
                method,
                canonical_uri: u.path(),
                canonical_query: u.query().unwrap_or(""),
                headers: &headers,
                payload_hash: sigv4::UNSIGNED_PAYLOAD,
                amz_date: &date,
                region: &self.region,
                service: "s3",
            },
            &c.access_key,
            &c.secret,
        );
        let mut out = vec![
            ("x-amz-date", date.clone()),
            ("x-amz-content-sha256", sigv4::UNSIGNED_PAYLOAD.to_string()),
        ];
        if let Some(t) = &c.session_token {
            out.push(("x-amz-security-token", t.clone()));
        }
        out.push(("authorization", auth));
        out
    }
}

/// Reads a credentials file in the shared-credentials format (`[profile]` sections of
/// `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`). With
/// `sectionless`, keys before any section header count too (a one-profile credential file).
fn read_credentials(
    path: &Path,
    profile: &str,
    sectionless: bool,
) -> Result<Option<Credentials>, S3Error> {
    let bad = |problem: String| S3Error::CredentialsFile {
        path: path.to_path_buf(),
        problem,
    };
    let bytes = read_small(path, "a credentials file", MAX_CREDENTIALS_FILE)
        .map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
    Ok(parse_credentials(&text, profile, sectionless))
}

fn parse_credentials(text: &str, profile: &str, sectionless: bool) -> Option<Credentials> {
    let (mut key, mut secret, mut token) = (None, None, None);
    let mut in_profile = sectionless;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim();
            in_profile = section == profile || section == format!("profile {profile}");
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "aws_access_key_id" => key = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    match (key, secret) {
        (Some(k), Some(s)) if !k.is_empty() && !s.is_empty() => {
            Some(Credentials::new(&k, &s, token.as_deref()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn settings_win_over_the_environment_and_defaults_fill_in() {
        let c =
            S3Config::resolve(&S3Settings::default(), &env(&[("HOME", "/nonexistent")])).unwrap();
        assert_eq!(c, S3Config::default());
        assert_eq!(
            c.object_url("b", "k/x y.hxz"),
            "https://b.s3.us-east-1.amazonaws.com/k/x%20y.hxz"
        );
        assert_eq!(
            c.object_url("a.b", "k"),
            "https://s3.us-east-1.amazonaws.com/a.b/k"
        );

        let e = env(&[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_REGION", "eu-west-3"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "SECRET"),
        ]);
        let c = S3Config::resolve(&S3Settings::default(), &e).unwrap();
        assert_eq!(c.region, "eu-west-3");
        assert!(c.path_style);
        assert_eq!(c.object_url("b", "k.hxz"), "http://127.0.0.1:9000/b/k.hxz");
        assert_eq!(c.credentials_source.as_deref(), Some("AWS_ACCESS_KEY_ID"));
        assert!(!format!("{c:?}").contains("SECRET"));

        let s = S3Settings {
            endpoint: Some("https://minio.example".into()),
            region: Some("r1".into()),
            path_style: Some(false),
            ..S3Settings::default()
        };
        let c = S3Config::resolve(&s, &e).unwrap();
        assert_eq!(c.object_url("b", "k"), "https://b.minio.example/k");
        assert_eq!(c.region, "r1");

        assert_eq!(
            S3Config::resolve(&S3Settings::default(), &env(&[("AWS_ACCESS_KEY_ID", "A")]))
                .unwrap_err(),
            S3Error::HalfPair("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        );
        assert!(
            S3Config::resolve(
                &S3Settings::default(),
                &env(&[("AWS_ENDPOINT_URL", "ftp://x")])
            )
            .is_err()
        );
    }

    #[test]
    fn credentials_files() {
        let text = "# c\n[other]\naws_access_key_id=O\naws_secret_access_key=OS\n\
                    [default]\naws_access_key_id = K\naws_secret_access_key = S\naws_session_token=T\n";
        let c = parse_credentials(text, "default", false).unwrap();
        assert_eq!((c.access_key.as_str(), c.secret.as_str()), ("K", "S"));
        assert_eq!(c.session_token.as_deref(), Some("T"));
        assert_eq!(
            parse_credentials(text, "other", false).unwrap().access_key,
            "O"
        );
        assert!(parse_credentials(text, "missing", false).is_none());
        let bare = "aws_access_key_id=K\naws_secret_access_key=S\n";
        assert!(parse_credentials(bare, "default", false).is_none());
        assert!(parse_credentials(bare, "default", true).is_some());

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("creds");
        std::fs::write(&f, bare).unwrap();
        let s = S3Settings {
            credentials_file: Some(f.clone()),
            ..S3Settings::default()
        };
        let c = S3Config::resolve(&s, &env(&[])).unwrap();
        assert_eq!(c.credentials.unwrap().access_key, "K");
        std::fs::write(&f, "nothing here\n").unwrap();
        assert!(matches!(
            S3Config::resolve(&s, &env(&[])).unwrap_err(),
            S3Error::CredentialsFile { .. }
        ));
    }

    #[test]
    fn signing_adds_the_four_headers_and_only_with_credentials() {
        let mut c = S3Config::default();
        assert!(
            c.sign("GET", "https://b.s3.amazonaws.com/k", "bytes=0-0", 0)
                .is_empty()
        );
        c.credentials = Some(Credentials::new("AKID", "S", Some("TOK")));
        let h = c.sign(
            "GET",
            "http://127.0.0.1:9000/b/k",
            "bytes=0-0",
            1_369_353_600,
        );
        let names: Vec<&str> = h.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "x-amz-date",
                "x-amz-content-sha256",
                "x-amz-security-token",
                "authorization"
            ]
        );
        assert!(h[3].1.contains(
            "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date;x-amz-security-token"
        ));
    }
}
