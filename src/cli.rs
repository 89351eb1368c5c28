//! Command-line interface (design.md §3): argument definitions and value parsers. The commands
//! themselves live in `commands/`.
//!
//! The doc comments on the arguments are clap's `--help` text, not rustdoc: `[v6]:port` and
//! `[cache] memory` there are address and config syntax, and escaping them would print the
//! backslashes in `--help`.
#![allow(rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::format::{Compression, Stream};

/// Serve Hexz snapshot archives over HTTP ranges and NBD.
#[derive(Debug, Parser)]
#[command(name = "hexzd", version, about, propagate_version = true)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve snapshots over HTTP byte ranges and NBD until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Pack a raw image (and optionally a second "aux" stream) into a .hxz archive.
    Pack(PackArgs),
    /// Describe an archive: codec, streams, blocks, pages, ratio, parents, encryption.
    Inspect(InspectArgs),
    /// Write a stream (or a range of it) to standard output.
    Cat(CatArgs),
    /// Check every block: CRC, decryption, decoding, BLAKE3, parent references.
    Verify(VerifyArgs),
    /// Be OpenBMC's nbd-proxy: relay the NBD server on stdin/stdout to /dev/nbdX (or attach a
    /// configuration's snapshot) and run the state hook. Also run as a link named nbd-proxy.
    NbdProxy(NbdProxyArgs),
    /// Attach a snapshot to a kernel NBD device (/dev/nbdX), read-only, until SIGTERM, SIGINT
    /// or `hexzd detach`.
    Attach(AttachArgs),
    /// End the session on a kernel NBD device, as `nbd-client -d` does.
    Detach(DetachArgs),
}

/// Where an encrypted archive's password comes from.
#[derive(Debug, Args, Clone, Default)]
pub struct PasswordArgs {
    /// File holding the password of an encrypted archive (one trailing newline is ignored).
    /// Without it, CLI commands read HEXZ_PASSWORD.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

/// `hexzd serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Archives to serve, as PATH or PATH=NAME (the name defaults to the file stem). The first
    /// is the default snapshot (/disk, /memory, NBD export "").
    #[arg(value_name = "ARCHIVE[=NAME]")]
    pub archives: Vec<String>,
    /// Config file (TOML); its snapshots come before those on the command line.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HTTP listen address (host:port, [v6]:port), or "off". Repeatable. Default 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR|off")]
    pub http: Vec<String>,
    /// NBD listen address (host:port, [v6]:port), or "off". Repeatable. Default 127.0.0.1:10809.
    #[arg(long, value_name = "ADDR|off")]
    pub nbd: Vec<String>,
    /// Also serve NBD on this Unix socket path.
    #[arg(long, value_name = "PATH")]
    pub nbd_unix: Vec<PathBuf>,
    /// Serve one NBD session on stdin/stdout (no listeners), for inetd-style use and tests.
    #[arg(long, conflicts_with_all = ["http", "nbd", "nbd_unix"])]
    pub stdio: bool,
    /// HTTPS listen address (host:port, [v6]:port), or "off". Repeatable. Needs
    /// --tls-certificates (or [tls] certificates). [default: none, or [http] listen_tls]
    #[arg(long, value_name = "ADDR|off")]
    pub https: Vec<String>,
    /// Certificate directory in the x509 layout of qemu-nbd and nbdkit: server-cert.pem (the
    /// chain), server-key.pem, and ca-cert.pem (for --tls-verify-peer).
    #[arg(long, value_name = "DIR")]
    pub tls_certificates: Option<PathBuf>,
    /// Require client certificates signed by ca-cert.pem (HTTPS and NBD over TLS).
    #[arg(long)]
    pub tls_verify_peer: bool,
    /// NBD_OPT_STARTTLS: off (refused), on (offered), require (nothing else before TLS).
    /// [default: off, or [nbd] tls]
    #[arg(long, value_enum, value_name = "MODE")]
    pub nbd_tls: Option<NbdTlsArg>,
    /// Require "Authorization: Bearer TOKEN" on HTTP (the token is this file's first line).
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Largest ranged HTTP response in bytes; 0 serves every range exactly (default 32 MiB).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub max_range_bytes: Option<u64>,
    /// Block cache size, e.g. 256MiB; 0 disables the cache. [default: 1/16 of memory,
    /// 64MiB-1GiB, or [cache] memory in the config file]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub cache: Option<u64>,
    /// Decompression worker threads; 0 = one per CPU. [default: 0, or [cache] workers in the
    /// config file]
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// How long a stop (SIGTERM) lets in-flight requests finish before closing connections,
    /// e.g. 10s, 500ms. [default: 10s, or [daemon] shutdown_timeout in the config file]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_timeout: Option<std::time::Duration>,
    /// The protocol of sockets passed by socket activation without a name hexzd knows: one
    /// fd from a generic activator (nbdinfo -- [ hexzd serve ... ]). systemd's sockets are
    /// named by FileDescriptorName=http or nbd and need no flag.
    #[arg(long, value_enum, value_name = "PROTOCOL")]
    pub activated_protocol: Option<ActivatedProtocol>,
    /// Validate the configuration (file and flags) and open every snapshot, then exit: 0 and
    /// one summary line on stdout, or 1 and the error (for ExecReload= before SIGHUP).
    #[arg(long, conflicts_with_all = ["stdio", "activated_protocol"])]
    pub check_config: bool,
    /// Password file for encrypted archives given on the command line.
    #[command(flatten)]
    pub password: PasswordArgs,
}

/// `--nbd-tls` values (nbdkit's `--tls` modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NbdTlsArg {
    /// STARTTLS refused.
    Off,
    /// STARTTLS offered; plaintext clients served too.
    On,
    /// TLS required before anything else.
    Require,
}

impl From<NbdTlsArg> for crate::nbd::TlsMode {
    fn from(a: NbdTlsArg) -> Self {
        match a {
            NbdTlsArg::Off => crate::nbd::TlsMode::Off,
            NbdTlsArg::On => crate::nbd::TlsMode::On,
            NbdTlsArg::Require => crate::nbd::TlsMode::Require,
        }
    }
}

/// `--activated-protocol` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ActivatedProtocol {
    /// HTTP range server.
    Http,
    /// NBD server.
    Nbd,
    /// HTTPS (HTTP over TLS).
    Https,
}

impl From<ActivatedProtocol> for crate::daemon::Protocol {
    fn from(p: ActivatedProtocol) -> Self {
        match p {
            ActivatedProtocol::Http => crate::daemon::Protocol::Http,
            ActivatedProtocol::Nbd => crate::daemon::Protocol::Nbd,
            ActivatedProtocol::Https => crate::daemon::Protocol::Https,
        }
    }
}

/// `hexzd pack`.
#[derive(Debug, Args)]
pub struct PackArgs {
    /// Raw input for the main stream (file or block device).
    pub input: PathBuf,
    /// Archive to create.
    pub output: PathBuf,
    /// Block codec.
    #[arg(long, value_enum, default_value = "lz4")]
    pub compression: Codec,
    /// Fixed block size (bytes; K/M suffixes allowed, e.g. 64K; 512 to 16M).
    #[arg(long, value_name = "BYTES", value_parser = parse_block_size, default_value = "65536")]
    pub block_size: u32,
    /// Raw input for the auxiliary ("memory") stream.
    #[arg(long, value_name = "FILE")]
    pub aux: Option<PathBuf>,
    /// Write a thin snapshot: blocks the base archive (or its parents) holds become references.
    #[arg(long, value_name = "PARENT.hxz")]
    pub base: Option<PathBuf>,
    /// Encrypt blocks with AES-256-GCM (password from --password-file or HEXZ_PASSWORD).
    #[arg(long)]
    pub encrypt: bool,
    /// Password (for --encrypt, and for an encrypted --base).
    #[command(flatten)]
    pub password: PasswordArgs,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// Compression threads (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
}

/// `--compression` values. Only codecs that are implemented are offered.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Codec {
    /// LZ4 block with a size prefix (Hexz default).
    Lz4,
    /// One Zstd frame per block, level 3.
    Zstd,
}

impl From<Codec> for Compression {
    fn from(c: Codec) -> Compression {
        match c {
            Codec::Lz4 => Compression::Lz4,
            Codec::Zstd => Compression::Zstd,
        }
    }
}

/// `hexzd inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Archive to describe.
    pub archive: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `--stream` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StreamArg {
    /// The main ("disk") stream.
    Main,
    /// The auxiliary ("memory") stream.
    Aux,
}

impl From<StreamArg> for Stream {
    fn from(s: StreamArg) -> Stream {
        match s {
            StreamArg::Main => Stream::Main,
            StreamArg::Aux => Stream::Aux,
        }
    }
}

/// `hexzd cat`.
#[derive(Debug, Args)]
pub struct CatArgs {
    /// Archive to read.
    pub archive: PathBuf,
    /// Stream to write.
    #[arg(long, value_enum, default_value = "main")]
    pub stream: StreamArg,
    /// First byte (K/M/G suffixes allowed).
    #[arg(long, value_parser = parse_size, default_value = "0")]
    pub offset: u64,
    /// Bytes to write (default: to the end of the stream).
    #[arg(long, value_parser = parse_size)]
    pub length: Option<u64>,
    /// Password of an encrypted archive.
    #[command(flatten)]
    pub password: PasswordArgs,
}

/// `hexzd verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Archive to check.
    pub archive: PathBuf,
    /// Password of an encrypted archive.
    #[command(flatten)]
    pub password: PasswordArgs,
}

pub use crate::daemon::config::{parse_duration, parse_size};

/// `hexzd nbd-proxy`.
#[derive(Debug, Args)]
pub struct NbdProxyArgs {
    /// nbd-proxy configuration file (JSON).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/nbd-proxy/config.json"
    )]
    pub config: PathBuf,
    /// State hook, run with `start NAME` and `stop NAME`.
    #[arg(long, value_name = "FILE", default_value = "/etc/nbd-proxy/state")]
    pub state_hook: PathBuf,
    /// Print every configuration's metadata as one JSON line and exit.
    #[arg(long)]
    pub metadata: bool,
    /// Configuration to use (default: the only one, or the one flagged "default").
    pub configuration: Option<String>,
}

/// `hexzd attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Archive to attach.
    pub archive: PathBuf,
    /// NBD device, e.g. /dev/nbd0 (not in use).
    pub device: PathBuf,
    /// Stream to attach.
    #[arg(long, value_enum, default_value = "main")]
    pub stream: StreamArg,
    /// Kernel per-request timeout in seconds (0: none; the server is this process).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub timeout: u32,
    /// Password of an encrypted archive.
    #[command(flatten)]
    pub password: PasswordArgs,
}

/// `hexzd detach`.
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// NBD device, e.g. /dev/nbd0.
    pub device: PathBuf,
}

/// A `--block-size`: out of range is a usage error (exit 2), like any bad argument.
fn parse_block_size(s: &str) -> Result<u32, String> {
    let range = crate::pack::MIN_BLOCK_SIZE..=crate::format::MAX_BLOCK_LEN;
    u32::try_from(parse_size(s)?)
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            format!(
                "{s:?} is out of range ({} to {} bytes)",
                range.start(),
                range.end()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("64KB"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size(" 100b "), Ok(100));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(
            parse_size("99999999999999999999"),
            Err("\"99999999999999999999\" is too large".into())
        );
        assert!(
            parse_size("12x")
                .unwrap_err()
                .contains("expected e.g. 4096")
        );
        assert!(parse_size("").is_err());
        assert!(parse_size("12x").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("20000000T").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
