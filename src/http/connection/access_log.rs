//! The access-log line: one line per request at info level, built by hand, with every
//! client-supplied field escaped so a client cannot forge log lines.

use std::time::Instant;

use super::Connection;
use crate::http::response::push_decimal;

impl Connection<'_> {
    /// Logs one request: peer, method and target, Range, status, body bytes, milliseconds.
    pub(super) fn log_access(
        &self,
        method: &str,
        target: &str,
        range: Option<&[u8]>,
        status: u16,
        bytes: u64,
        started: Instant,
    ) {
        if !log::log_enabled!(log::Level::Info) {
            return;
        }
        let range = range.map(String::from_utf8_lossy);
        let range = range.as_deref().unwrap_or("-");
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        // Built by hand rather than with `format!` arguments: one line per request.
        let mut line = String::with_capacity(128);
        line.push_str(&self.peer);
        line.push_str(" \"");
        push_printable(&mut line, method);
        line.push(' ');
        push_printable(&mut line, target);
        line.push_str("\" range=");
        push_printable(&mut line, range);
        line.push(' ');
        push_decimal(&mut line, u64::from(status));
        line.push(' ');
        push_decimal(&mut line, bytes);
        line.push(' ');
        push_decimal(&mut line, micros / 1000);
        line.push('.');
        let ms_frac = micros % 1000;
        if ms_frac < 100 {
            line.push('0');
        }
        if ms_frac < 10 {
            line.push('0');
        }
        push_decimal(&mut line, ms_frac);
        line.push_str("ms");
        log::info!("{line}");
    }
}

/// Appends `s` with its control characters, spaces, quotes and backslashes escaped, for a log
/// line a client cannot forge: no new line, and no field boundary (a space, or the quote that
/// ends the request field) that a parser splitting the line would take for the server's.
fn push_printable(out: &mut String, s: &str) {
    // What clients send needs no look at each char.
    if s.bytes()
        .all(|b| (0x21..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            ' ' => out.push_str("\\x20"),
            '"' | '\\' => out.extend(c.escape_default()),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_fields_are_escaped() {
        let shown = |s: &str| {
            let mut out = String::new();
            push_printable(&mut out, s);
            out
        };
        assert_eq!(shown("/disk"), "/disk");
        assert_eq!(shown("a\nb"), "a\\nb");
        assert_eq!(shown("caf\u{e9} \u{85}"), "caf\u{e9}\\x20\\u{85}");
        assert_eq!(shown("caf\u{e9}"), "caf\u{e9}");
        // A Range value that would fake the status and size fields, and a quote in a target.
        assert_eq!(
            shown("bytes=0-1\" 200 999"),
            "bytes=0-1\\\"\\x20200\\x20999"
        );
        assert_eq!(shown("/a\"b\\c"), "/a\\\"b\\\\c");
    }
}
