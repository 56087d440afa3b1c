//! Reading checksum manifests for `--check`: the lines `sha256sum`, `sha512sum` (plain or
//! `--tag`) and `b3sum` write, escaped lines included.

use super::Algo;
use super::format::{parse_hex, unescape};

/// One properly formatted manifest line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The digest the file should have.
    pub(crate) expected: Vec<u8>,
    /// The file's path (unescaped).
    pub(crate) path: Vec<u8>,
}

/// Parses one manifest line (without its line end) for `algo`; `None` when it is not a properly
/// formatted line for that algorithm (coreutils counts and reports those).
///
/// Accepted, as coreutils accepts them: an optional leading `\` (the path is then unescaped),
/// leading blanks, `HEX  PATH`, `HEX *PATH` (binary mode marker), and the tagged form
/// `SHA256 (PATH) = HEX`. The digest must have the algorithm's length.
pub(crate) fn parse_line(line: &[u8], algo: Algo) -> Option<Entry> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let start = line.iter().position(|&c| c != b' ' && c != b'\t')?;
    let mut line = &line[start..];
    let escaped = line.first() == Some(&b'\\');
    if escaped {
        line = &line[1..];
    }
    let hex_len = algo.digest_len() * 2;
    let (hex, raw_path) = if let Some(rest) = line
        .strip_prefix(algo.tag().as_bytes())
        .and_then(|r| r.strip_prefix(b" ("))
    {
        // `TAG (PATH) = HEX`: the path is everything up to the last `) = `.
        let at = rest.windows(4).rposition(|w| w == b") = ")?;
        (&rest[at + 4..], &rest[..at])
    } else {
        if line.len() < hex_len + 2 {
            return None;
        }
        let (hex, rest) = line.split_at(hex_len);
        if rest[0] != b' ' || !matches!(rest[1], b' ' | b'*') {
            return None;
        }
        (hex, &rest[2..])
    };
    if hex.len() != hex_len || raw_path.is_empty() {
        return None;
    }
    let expected = parse_hex(hex)?;
    let path = if escaped {
        unescape(raw_path)?
    } else {
        raw_path.to_vec()
    };
    Some(Entry { expected, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H64: &str = "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb";

    fn p(line: &str, algo: Algo) -> Option<(String, String)> {
        parse_line(line.as_bytes(), algo).map(|e| {
            let mut hex = Vec::new();
            super::super::format::push_hex(&mut hex, &e.expected);
            (
                String::from_utf8(hex).unwrap(),
                String::from_utf8_lossy(&e.path).into_owned(),
            )
        })
    }

    #[test]
    fn plain_binary_and_tagged_lines_parse() {
        let want = Some((H64.to_string(), "a b".to_string()));
        assert_eq!(p(&format!("{H64}  a b"), Algo::Sha256), want);
        assert_eq!(p(&format!("{H64} *a b"), Algo::Sha256), want);
        assert_eq!(p(&format!("  {H64}  a b"), Algo::Sha256), want);
        assert_eq!(p(&format!("{H64}  a b\r"), Algo::Sha256), want);
        assert_eq!(p(&format!("SHA256 (a b) = {H64}"), Algo::Sha256), want);
        assert_eq!(
            p(&format!("SHA256 (x) = y) = {H64}"), Algo::Sha256),
            Some((H64.to_string(), "x) = y".to_string()))
        );
        // b3sum writes the same plain lines.
        assert_eq!(p(&format!("{H64}  a b"), Algo::Blake3), want);
        // Upper-case hex is accepted and compared by value.
        assert_eq!(
            p(&format!("{}  a b", H64.to_uppercase()), Algo::Sha256),
            want
        );
    }

    #[test]
    fn escaped_lines_are_unescaped() {
        assert_eq!(
            p(&format!("\\{H64}  p\\\\q\\nr\\rs"), Algo::Sha256),
            Some((H64.to_string(), "p\\q\nr\rs".to_string()))
        );
        // Without the leading backslash the path is taken literally.
        assert_eq!(
            p(&format!("{H64}  a\\nb"), Algo::Sha256),
            Some((H64.to_string(), "a\\nb".to_string()))
        );
        assert_eq!(p(&format!("\\{H64}  bad\\tescape"), Algo::Sha256), None);
    }

    #[test]
    fn malformed_lines_are_refused() {
        for bad in [
            String::new(),
            "garbage line".into(),
            format!("{H64} a"),
            format!("{H64}  "),
            format!("{H64}x  a"),
            format!("{}  a", &H64[1..]),
            format!("SHA512 (a) = {H64}"),
            format!("{}g  a", &H64[..63]),
        ] {
            assert_eq!(p(&bad, Algo::Sha256), None, "{bad:?}");
        }
        // Right length for SHA-256, wrong for SHA-512.
        assert_eq!(p(&format!("{H64}  a"), Algo::Sha512), None);
    }
}
