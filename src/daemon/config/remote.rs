//! The settings of remote archives: `[s3]` over the standard AWS variables (credentials read
//! here, once), `[remote]`, and the disk cache of `[cache]`.

use super::ConfigError;
use super::raw::{RawCache, RawRemote, RawS3};
use super::validate::Source;
use crate::store::RemoteConfig;
use crate::store::remote::location::normalize_origin;
use crate::store::remote::{S3Config, S3Settings};

/// Default bound of the disk cache.
pub const DEFAULT_DISK_SIZE: u64 = 4 << 30;
/// Smallest disk cache accepted (a few chunks).
const MIN_DISK_SIZE: u64 = 4 << 20;

/// Validates the remote settings. The environment is read here (`AWS_*`), as the config file
/// is: a reload reads both again.
pub(super) fn remote(
    src: &Source<'_>,
    cache: &RawCache,
    s3: Option<&RawS3>,
    remote: Option<&RawRemote>,
) -> Result<RemoteConfig, ConfigError> {
    let mut c = RemoteConfig::default();
    if let Some(dir) = &cache.disk {
        let place = src.key("cache.disk");
        let dir = src.resolve(dir);
        if dir.exists() && !dir.is_dir() {
            return Err(place.invalid(format!("{} is not a directory", dir.display())));
        }
        let size = match &cache.disk_size {
            Some(v) => src.key("cache.disk_size").size(v)?,
            None => DEFAULT_DISK_SIZE,
        };
        if size < MIN_DISK_SIZE {
            return Err(src
                .key("cache.disk_size")
                .invalid(format!("{size} bytes is less than the 4 MiB minimum")));
        }
        c.disk = Some((dir, size));
    } else if cache.disk_size.is_some() {
        return Err(src
            .key("cache.disk_size")
            .invalid("needs cache.disk (the directory)"));
    }

    let s3 = s3.map_or_else(S3Settings::default, |s| S3Settings {
        endpoint: s.endpoint.clone(),
        region: s.region.clone(),
        path_style: s.path_style,
        credentials_file: s.credentials_file.as_ref().map(|f| src.resolve(f)),
        profile: s.profile.clone(),
    });
    c.s3 = S3Config::resolve(&s3, &|k| std::env::var(k).ok())
        .map_err(|e| src.key("s3").invalid(e.to_string()))?;

    let Some(r) = remote else {
        return Ok(c);
    };
    for (i, o) in r.allow_origins.iter().flatten().enumerate() {
        let o = normalize_origin(o).map_err(|e| {
            src.key(&format!("remote.allow_origins[{i}]"))
                .invalid(e.to_string())
        })?;
        c.allow_origins.push(o);
    }
    if let Some(p) = &r.proxy {
        ureq::Proxy::new(p).map_err(|e| src.key("remote.proxy").invalid(format!("{p:?}: {e}")))?;
        c.proxy = Some(p.clone());
    }
    if let Some(v) = &r.connect_timeout {
        c.connect_timeout = src.key("remote.connect_timeout").positive_duration(v)?;
    }
    if let Some(v) = &r.read_timeout {
        c.read_timeout = src.key("remote.read_timeout").positive_duration(v)?;
    }
    if let Some(v) = &r.timeout {
        c.request_timeout = src.key("remote.timeout").positive_duration(v)?;
    }
    if let Some(n) = r.retries {
        if n > 20 {
            return Err(src
                .key("remote.retries")
                .invalid(format!("{n} is more than 20")));
        }
        c.retries = n;
    }
    if let Some(v) = &r.readahead {
        c.readahead = src.key("remote.readahead").size(v)?;
    }
    if let Some(v) = &r.memory {
        let m = src.key("remote.memory").size(v)?;
        c.memory = usize::try_from(m).unwrap_or(usize::MAX);
    }
    Ok(c)
}
