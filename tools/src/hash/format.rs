//! Output lines in the exact bytes of `sha256sum`/`sha512sum` (GNU coreutils 9) and `b3sum`:
//! lowercase hex, two spaces, the path; the escaping rules; error reasons without Rust's suffix.
//!
//! The tools disagree on escaping, and each mode copies its reference tool:
//!
//! | | escaped when the name holds | escapes |
//! |---|---|---|
//! | coreutils, hash lines | `\`, newline or carriage return | `\\`, `\n`, `\r` |
//! | coreutils 9.1, `--check` lines | a newline | `\\`, `\n`, `\r` |
//! | b3sum, hash and check lines | `\` or newline | `\\`, `\n` |
//!
//! An escaped line starts with one `\` (before the hex, or before the path in check output).
//! Names that are not UTF-8 are written as their raw bytes (coreutils does the same; b3sum
//! would print U+FFFD, which could not be checked back). `-z` lines escape nothing.
//!
//! Error lines on stderr (`shmpool: NAME: REASON`) escape the name by the same rule as the
//! run's output lines, with the leading `\` before the name: a name holding a newline would
//! otherwise split one error over two lines.

use super::Algo;

/// Lowercase hex of `bytes`, appended to `out`.
pub(crate) fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // A digest at a time through a stack buffer: one copy into `out`, not a push per digit
    // (this runs once per file in the parent).
    let mut buf = [0u8; 128];
    for part in bytes.chunks(buf.len() / 2) {
        for (pair, &b) in buf.chunks_exact_mut(2).zip(part) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 15)];
        }
        out.extend_from_slice(&buf[..part.len() * 2]);
    }
}

/// Decodes lowercase or uppercase hex; `None` when `s` is not an even run of hex digits.
pub(crate) fn parse_hex(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    s.chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// Which bytes force a name to be escaped, and which are then escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escape {
    /// Nothing (`-z`).
    None,
    /// coreutils hash lines: `\`, `\n`, `\r` trigger and are escaped.
    Coreutils,
    /// coreutils 9.1 `--check` lines: only `\n` triggers; then `\`, `\n`, `\r` are escaped.
    CoreutilsCheck,
    /// b3sum: `\` and `\n` trigger and are escaped; `\r` is written raw.
    B3sum,
}

impl Escape {
    /// The rule for hash lines of `algo` (`zero`: `-z`).
    pub(crate) fn for_hash(algo: Algo, zero: bool) -> Escape {
        match (zero, algo) {
            (true, _) => Escape::None,
            (false, Algo::Blake3) => Escape::B3sum,
            (false, _) => Escape::Coreutils,
        }
    }

    /// The rule for `--check` output lines of `algo`.
    pub(crate) fn for_check(algo: Algo) -> Escape {
        match algo {
            Algo::Blake3 => Escape::B3sum,
            _ => Escape::CoreutilsCheck,
        }
    }

    /// Whether `name` must be written escaped (with the leading `\`).
    pub(crate) fn needed(self, name: &[u8]) -> bool {
        // memchr: this runs once per file in the parent, over names ~100 bytes long.
        match self {
            Escape::None => false,
            Escape::Coreutils => memchr::memchr3(b'\\', b'\n', b'\r', name).is_some(),
            Escape::CoreutilsCheck => memchr::memchr(b'\n', name).is_some(),
            Escape::B3sum => memchr::memchr2(b'\\', b'\n', name).is_some(),
        }
    }

    /// Appends `name`, escaped by this rule (call only when [`needed`](Escape::needed)).
    fn push_escaped(self, out: &mut Vec<u8>, name: &[u8]) {
        for &c in name {
            match c {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' if self != Escape::B3sum => out.extend_from_slice(b"\\r"),
                _ => out.push(c),
            }
        }
    }
}

/// Appends one hash line: `[\]HEX  PATH` and `\n` (or NUL with `Escape::None` and `zero`).
pub(crate) fn push_hash_line(
    out: &mut Vec<u8>,
    digest: &[u8],
    name: &[u8],
    esc: Escape,
    zero: bool,
) {
    let escaped = esc.needed(name);
    if escaped {
        out.push(b'\\');
    }
    push_hex(out, digest);
    out.extend_from_slice(b"  ");
    if escaped {
        esc.push_escaped(out, name);
    } else {
        out.extend_from_slice(name);
    }
    out.push(if zero { 0 } else { b'\n' });
}

/// Appends one check line: `[\]PATH: STATUS\n`.
pub(crate) fn push_check_line(out: &mut Vec<u8>, name: &[u8], status: &str, esc: Escape) {
    if esc.needed(name) {
        out.push(b'\\');
        esc.push_escaped(out, name);
    } else {
        out.extend_from_slice(name);
    }
    out.extend_from_slice(b": ");
    out.extend_from_slice(status.as_bytes());
    out.push(b'\n');
}

/// Undoes the escaping of a manifest path (`\\`, `\n`, `\r`); `None` for any other escape or
/// a trailing lone `\` (coreutils calls such a line improperly formatted).
pub(crate) fn unescape(name: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len());
    let mut it = name.iter();
    while let Some(&c) = it.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some(b'\\') => out.push(b'\\'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            _ => return None,
        }
    }
    Some(out)
}

/// The reason of an I/O error as the C library words it (`No such file or directory`), without
/// the ` (os error 2)` that Rust's `Display` adds.
pub(crate) fn reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match (e.raw_os_error(), s.rfind(" (os error ")) {
        (Some(_), Some(at)) => s[..at].to_string(),
        _ => s,
    }
}

/// Appends `shmpool: NAME: REASON\n`, the name escaped as the output lines escape it (`esc`,
/// the rule of the run's hash or check lines): a name that needs it is written `\` + escaped,
/// as in a check line, so one error is one line whatever the name holds. Otherwise (and with
/// `-z`, `Escape::None`) the name is its raw bytes.
pub(crate) fn push_error_line(out: &mut Vec<u8>, name: &[u8], reason: &str, esc: Escape) {
    out.extend_from_slice(b"shmpool: ");
    if esc.needed(name) {
        out.push(b'\\');
        esc.push_escaped(out, name);
    } else {
        out.extend_from_slice(name);
    }
    out.extend_from_slice(b": ");
    out.extend_from_slice(reason.as_bytes());
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(digest: &[u8], name: &[u8], esc: Escape, zero: bool) -> Vec<u8> {
        let mut v = Vec::new();
        push_hash_line(&mut v, digest, name, esc, zero);
        v
    }

    #[test]
    fn hex_round_trips() {
        let mut v = Vec::new();
        push_hex(&mut v, &[0x00, 0x9f, 0xff, 0x10]);
        assert_eq!(v, b"009fff10");
        assert_eq!(parse_hex(b"009FfF10"), Some(vec![0x00, 0x9f, 0xff, 0x10]));
        assert_eq!(parse_hex(b"0"), None);
        assert_eq!(parse_hex(b"0g"), None);
        assert_eq!(parse_hex(b""), Some(vec![]));
        // Longer than the 64 bytes hexed at a time, appended after what `out` holds.
        let long: Vec<u8> = (0..=255).collect();
        let mut v = b"x".to_vec();
        push_hex(&mut v, &long);
        assert_eq!(v.len(), 1 + 512);
        assert_eq!(&v[..7], b"x000102");
        assert_eq!(&v[v.len() - 4..], b"feff");
        assert_eq!(parse_hex(&v[1..]), Some(long));
    }

    #[test]
    fn plain_names_are_written_as_is() {
        assert_eq!(
            line(&[0xab], b"dir/sp ace", Escape::Coreutils, false),
            b"ab  dir/sp ace\n"
        );
        // Not UTF-8: raw bytes.
        assert_eq!(
            line(&[0xab], b"x\xffy", Escape::Coreutils, false),
            b"ab  x\xffy\n"
        );
    }

    #[test]
    fn coreutils_escapes_backslash_newline_and_cr() {
        assert_eq!(
            line(&[0x01], b"p\\q\nr\rs", Escape::Coreutils, false),
            b"\\01  p\\\\q\\nr\\rs\n"
        );
        assert_eq!(
            line(&[0x01], b"c\rr", Escape::Coreutils, false),
            b"\\01  c\\rr\n"
        );
    }

    #[test]
    fn b3sum_escapes_backslash_and_newline_but_not_cr() {
        assert_eq!(
            line(&[0x01], b"a\\b", Escape::B3sum, false),
            b"\\01  a\\\\b\n"
        );
        assert_eq!(line(&[0x01], b"c\rr", Escape::B3sum, false), b"01  c\rr\n");
        assert_eq!(
            line(&[0x01], b"n\nl\r", Escape::B3sum, false),
            b"\\01  n\\nl\r\n"
        );
    }

    #[test]
    fn zero_lines_escape_nothing() {
        assert_eq!(
            line(
                &[0x01],
                b"n\nl\\",
                Escape::for_hash(Algo::Sha256, true),
                true
            ),
            b"01  n\nl\\\0"
        );
    }

    #[test]
    fn check_lines_follow_coreutils_9_1() {
        let mut v = Vec::new();
        push_check_line(&mut v, b"a\\b", "OK", Escape::CoreutilsCheck);
        push_check_line(&mut v, b"p\\q\nr\rs", "OK", Escape::CoreutilsCheck);
        push_check_line(&mut v, b"a\\b", "FAILED", Escape::B3sum);
        assert_eq!(v, b"a\\b: OK\n\\p\\\\q\\nr\\rs: OK\n\\a\\\\b: FAILED\n");
    }

    #[test]
    fn unescape_inverts_escape_and_refuses_unknown_escapes() {
        assert_eq!(
            unescape(b"p\\\\q\\nr\\rs").as_deref(),
            Some(&b"p\\q\nr\rs"[..])
        );
        assert_eq!(unescape(b"a\\tb"), None);
        assert_eq!(unescape(b"trailing\\"), None);
    }

    #[test]
    fn error_lines_escape_names_as_the_output_lines_do() {
        let err = |name: &[u8], esc| {
            let mut v = Vec::new();
            push_error_line(&mut v, name, "No such file or directory", esc);
            v
        };
        let odd = b"a\\b\nc\rd";
        assert_eq!(
            err(odd, Escape::Coreutils),
            b"shmpool: \\a\\\\b\\nc\\rd: No such file or directory\n"
        );
        assert_eq!(
            err(odd, Escape::B3sum),
            b"shmpool: \\a\\\\b\\nc\rd: No such file or directory\n"
        );
        // The check rule escapes only names with a newline; -z escapes nothing.
        assert_eq!(
            err(b"a\\b", Escape::CoreutilsCheck),
            b"shmpool: a\\b: No such file or directory\n"
        );
        assert_eq!(
            err(b"a\nb", Escape::None),
            b"shmpool: a\nb: No such file or directory\n"
        );
        assert_eq!(
            err(b"plain", Escape::Coreutils),
            b"shmpool: plain: No such file or directory\n"
        );
    }

    #[test]
    fn reasons_drop_the_os_error_suffix() {
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(reason(&e), "No such file or directory");
        let e = std::io::Error::other("file changed while hashing");
        assert_eq!(reason(&e), "file changed while hashing");
    }
}
