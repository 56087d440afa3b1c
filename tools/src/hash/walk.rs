//! The walk: command-line paths into a lazy, deterministic stream of [`Source`]s.
//!
//! The rules (those of `find ARG -type f`, with `-H`):
//! - a path named on the command line is followed if it is a symlink; `-` is standard input;
//! - directories are walked recursively, hidden entries included, each directory's entries
//!   sorted by name (byte order), so the output is the same on every run;
//! - a walked path is the argument joined with the relative path as `find` prints it (`d/x`,
//!   `d/x` for `d/`, `d//x` for `d//`);
//! - symlinks met while walking are skipped, unless `follow` (then they are followed, and a link
//!   back to a directory being walked is reported as a loop, as `find -L` does); dangling ones
//!   are skipped;
//! - FIFOs, sockets and devices met while walking are skipped, never opened (opening a FIFO
//!   would block); one put in a file's place after the walk fails in the worker, which opens
//!   walked files without blocking (`digest::open_regular`). Named on the command line they are
//!   read, as `sha256sum` reads them.
//!
//! One directory's listing is held at a time per level (sorting needs it whole); nothing else
//! grows with the tree.
//!
//! Directories are listed with `getdents64` into one buffer the walk reuses, their names copied
//! into one byte string per directory and sorted as offsets into it: one allocation per file
//! (its joined path), where `fs::read_dir` made three (the entry's name, its `OsString` copy,
//! the path) besides the entry itself. malloc and free were a quarter of the parent's samples of
//! a run over the toolchain tree (`perf record`), the parent an eighth of the run's CPU time.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use super::digest::os_path;
use super::format::reason;

/// One input, in output order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A file to hash, with its size when it was stat'ed as a regular file (a path named on
    /// the command line, or a symlink followed); files met while walking are not stat'ed.
    /// `regular`: the walk or a stat saw a regular file here, so the worker opens it without
    /// blocking and refuses anything else found there by then (a FIFO put in its place must
    /// not block it); else (a FIFO or device named on the command line, a manifest's path) it
    /// is opened and read whatever it is, as `sha256sum` does.
    File {
        path: Vec<u8>,
        size: Option<u64>,
        regular: bool,
    },
    /// Standard input (`-`, or no path at all).
    Stdin,
    /// An input that cannot be hashed (it does not exist, a directory cannot be listed, a loop).
    Failed { path: Vec<u8>, reason: String },
    /// No input: a mark that passes through the engine in order (the end of a manifest).
    Marker,
}

/// What `getdents64` says an entry is (`d_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    /// The file system does not say (`DT_UNKNOWN`): ask `lstat`.
    Unknown,
    /// FIFOs, sockets, devices: skipped.
    Other,
}

/// One entry of a listing: its name is `names[start..start + len]`.
#[derive(Debug, Clone, Copy)]
struct Entry {
    start: usize,
    len: usize,
    kind: Kind,
}

/// A directory being listed.
struct Dir {
    /// Its path as printed (the prefix of its entries).
    path: Vec<u8>,
    /// The names of its entries, one after the other.
    names: Vec<u8>,
    /// Its entries, sorted by name; `next` is the first not yet visited.
    entries: Vec<Entry>,
    next: usize,
    /// `(device, inode)`, for loop detection.
    id: (u64, u64),
}

/// Bytes asked of `getdents64` at a time (glibc's `readdir` asks 32 KiB).
const DENTS_BUF: usize = 64 << 10;

/// The lazy walk over the command-line paths (see the module docs).
pub(crate) struct Walk {
    args: std::vec::IntoIter<Vec<u8>>,
    stack: Vec<Dir>,
    follow: bool,
    /// The `getdents64` buffer, reused for every directory.
    dents: Vec<u8>,
}

/// The entries of the directory at `path` (without `.` and `..`), unsorted, their names
/// appended to `names`, read through `buf`.
fn list(path: &[u8], buf: &mut [u8], names: &mut Vec<u8>) -> io::Result<Vec<Entry>> {
    // O_DIRECTORY, as `opendir`: a path that is no longer a directory (a FIFO put in its place)
    // fails here instead of blocking in `open`.
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(os_path(path))?;
    let mut entries = Vec::new();
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call, and `dir` is
        // an open descriptor that outlives it; getdents64 writes at most that many bytes.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(entries);
        }
        let n = usize::try_from(n).unwrap_or(0).min(buf.len());
        parse_dents(&buf[..n], names, &mut entries)?;
    }
}

/// Appends the records of one `getdents64` answer (`struct linux_dirent64`: inode u64, offset
/// i64, record length u16, type u8, NUL-terminated name) to `entries`, skipping `.` and `..`.
/// Every length is checked: a malformed answer is an error, never a read out of bounds.
fn parse_dents(mut recs: &[u8], names: &mut Vec<u8>, entries: &mut Vec<Entry>) -> io::Result<()> {
    const NAME_AT: usize = 19;
    let bad = || io::Error::other("malformed directory listing");
    while !recs.is_empty() {
        let reclen = match recs.get(16..18) {
            Some(b) => usize::from(u16::from_ne_bytes([b[0], b[1]])),
            None => return Err(bad()),
        };
        let rec = recs
            .get(..reclen)
            .filter(|_| reclen > NAME_AT)
            .ok_or_else(bad)?;
        recs = &recs[reclen..];
        let name = &rec[NAME_AT..];
        let name = &name[..memchr::memchr(0, name).ok_or_else(bad)?];
        if name.is_empty() || name == b"." || name == b".." {
            continue;
        }
        let kind = match rec[18] {
            libc::DT_REG => Kind::File,
            libc::DT_DIR => Kind::Dir,
            libc::DT_LNK => Kind::Symlink,
            libc::DT_UNKNOWN => Kind::Unknown,
            _ => Kind::Other,
        };
        entries.push(Entry {
            start: names.len(),
            len: name.len(),
            kind,
        });
        names.extend_from_slice(name);
    }
    Ok(())
}

impl std::fmt::Debug for Walk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Walk")
            .field("depth", &self.stack.len())
            .field("follow", &self.follow)
            .finish_non_exhaustive()
    }
}

/// `dir` joined with `name` as `find` joins them.
fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    if !dir.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl Walk {
    /// A walk over `args` (raw path bytes); an empty list means standard input.
    pub(crate) fn new(args: Vec<Vec<u8>>, follow: bool) -> Walk {
        let args = if args.is_empty() {
            vec![b"-".to_vec()]
        } else {
            args
        };
        Walk {
            args: args.into_iter(),
            stack: Vec::new(),
            follow,
            dents: Vec::new(),
        }
    }

    /// Starts listing the directory at `path`; a `Failed` source if it cannot be listed.
    fn enter(&mut self, path: Vec<u8>, id: (u64, u64)) -> Option<Source> {
        if self.dents.is_empty() {
            self.dents = vec![0; DENTS_BUF];
        }
        let mut names = Vec::new();
        match list(&path, &mut self.dents, &mut names) {
            Ok(mut entries) => {
                let name = |e: &Entry| &names[e.start..e.start + e.len];
                entries.sort_unstable_by(|a, b| name(a).cmp(name(b)));
                self.stack.push(Dir {
                    path,
                    names,
                    entries,
                    next: 0,
                    id,
                });
                None
            }
            Err(e) => Some(Source::Failed {
                path,
                reason: reason(&e),
            }),
        }
    }

    /// A command-line argument.
    fn arg(&mut self, arg: Vec<u8>) -> Option<Source> {
        if arg == b"-" {
            return Some(Source::Stdin);
        }
        match fs::metadata(os_path(&arg)) {
            Err(e) => Some(Source::Failed {
                path: arg,
                reason: reason(&e),
            }),
            Ok(m) if m.is_dir() => self.enter(arg, (m.dev(), m.ino())),
            Ok(m) => Some(Source::File {
                path: arg,
                size: m.is_file().then_some(m.len()),
                regular: m.is_file(),
            }),
        }
    }

    /// One entry of the directory on top of the stack.
    fn entry(&mut self, entry: Entry) -> Option<Source> {
        let dir = self.stack.last()?;
        let path = join(&dir.path, &dir.names[entry.start..entry.start + entry.len]);
        let kind = match entry.kind {
            Kind::Unknown => match fs::symlink_metadata(os_path(&path)) {
                Ok(m) if m.is_file() => Kind::File,
                Ok(m) if m.is_dir() => Kind::Dir,
                Ok(m) if m.is_symlink() => Kind::Symlink,
                Ok(_) => Kind::Other,
                Err(e) => {
                    return Some(Source::Failed {
                        path,
                        reason: reason(&e),
                    });
                }
            },
            k => k,
        };
        if kind == Kind::File {
            // No stat here: the worker learns the size from the open file (fstat, no path
            // lookup) and hands a big one back. Stat'ing in the walk cost ~1.7 µs a file in
            // the parent; without it a run's CPU time fell 3–5% (4 paired runs, busy machine).
            return Some(Source::File {
                path,
                size: None,
                regular: true,
            });
        }
        if kind == Kind::Dir {
            let id = if self.follow {
                match fs::symlink_metadata(os_path(&path)) {
                    Ok(m) => (m.dev(), m.ino()),
                    Err(e) => {
                        return Some(Source::Failed {
                            path,
                            reason: reason(&e),
                        });
                    }
                }
            } else {
                (0, 0)
            };
            return self.enter(path, id);
        }
        if kind == Kind::Symlink && self.follow {
            // Dangling links are skipped, like `find -L -type f`.
            let m = fs::metadata(os_path(&path)).ok()?;
            if m.is_file() {
                return Some(Source::File {
                    path,
                    size: Some(m.len()),
                    regular: true,
                });
            }
            if m.is_dir() {
                let id = (m.dev(), m.ino());
                if self.stack.iter().any(|d| d.id == id) {
                    return Some(Source::Failed {
                        path,
                        reason: "file system loop detected".into(),
                    });
                }
                return self.enter(path, id);
            }
        }
        // Symlinks not followed, FIFOs, sockets, devices: skipped, never opened.
        None
    }
}

impl Iterator for Walk {
    type Item = Source;

    fn next(&mut self) -> Option<Source> {
        loop {
            let next = match self.stack.last_mut() {
                Some(top) => match top.entries.get(top.next).copied() {
                    Some(entry) => {
                        top.next += 1;
                        self.entry(entry)
                    }
                    None => {
                        self.stack.pop();
                        None
                    }
                },
                None => {
                    let arg = self.args.next()?;
                    self.arg(arg)
                }
            };
            if next.is_some() {
                return next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("shmpool-walk-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn paths(w: Walk) -> Vec<String> {
        w.map(|s| match s {
            Source::File { path, .. } => String::from_utf8_lossy(&path).into_owned(),
            Source::Stdin | Source::Marker => "-".into(),
            Source::Failed { path, reason } => {
                format!("ERR {} {reason}", String::from_utf8_lossy(&path))
            }
        })
        .collect()
    }

    fn b(p: &std::path::Path) -> Vec<u8> {
        p.as_os_str().as_bytes().to_vec()
    }

    #[test]
    fn walk_is_sorted_recursive_and_joins_like_find() {
        let d = tmp("sorted");
        fs::create_dir_all(d.join("b/c")).unwrap();
        fs::create_dir_all(d.join("empty")).unwrap();
        fs::write(d.join("b/c/z"), "z").unwrap();
        fs::write(d.join("b/a"), "a").unwrap();
        fs::write(d.join(".hidden"), "h").unwrap();
        fs::write(d.join("A"), "A").unwrap();
        let root = d.to_str().unwrap().to_string();
        let got = paths(Walk::new(vec![b(&d)], false));
        assert_eq!(
            got,
            [".hidden", "A", "b/a", "b/c/z"].map(|p| format!("{root}/{p}"))
        );
        let got = paths(Walk::new(vec![format!("{root}//").into_bytes()], false));
        assert_eq!(got[0], format!("{root}//.hidden"));
        assert_eq!(got[3], format!("{root}//b/c/z"));
        let got = paths(Walk::new(vec![format!("{root}/").into_bytes()], false));
        assert_eq!(got[0], format!("{root}/.hidden"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn symlinks_and_fifos_met_while_walking_are_skipped_unless_following() {
        let d = tmp("links");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("sub/f"), "f").unwrap();
        std::os::unix::fs::symlink(d.join("sub/f"), d.join("to_file")).unwrap();
        std::os::unix::fs::symlink(d.join("sub"), d.join("to_dir")).unwrap();
        std::os::unix::fs::symlink(d.join("nowhere"), d.join("dangling")).unwrap();
        std::os::unix::fs::symlink(&d, d.join("sub/loop")).unwrap();
        let fifo = std::ffi::CString::new(b(&d.join("fifo"))).unwrap();
        // SAFETY: `fifo` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let root = d.to_str().unwrap().to_string();
        assert_eq!(
            paths(Walk::new(vec![b(&d)], false)),
            [format!("{root}/sub/f")]
        );
        assert_eq!(
            paths(Walk::new(vec![b(&d)], true)),
            [
                format!("{root}/sub/f"),
                format!("ERR {root}/sub/loop file system loop detected"),
                format!("{root}/to_dir/f"),
                format!("ERR {root}/to_dir/loop file system loop detected"),
                format!("{root}/to_file"),
            ]
        );
        // A symlink named on the command line is followed.
        assert_eq!(
            paths(Walk::new(vec![b(&d.join("to_dir"))], false)),
            [format!("{root}/to_dir/f")]
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_directory_longer_than_one_listing_buffer_is_listed_whole_and_sorted() {
        let d = tmp("many");
        // ~3,000 records of ~80 bytes: several `getdents64` calls of DENTS_BUF bytes.
        let mut want = Vec::new();
        for i in (0..3000).rev() {
            let name = format!("{i:05}-{}", "n".repeat(50));
            fs::write(d.join(&name), "").unwrap();
            want.push(format!("{}/{name}", d.to_str().unwrap()));
        }
        want.sort();
        assert_eq!(paths(Walk::new(vec![b(&d)], false)), want);
        fs::remove_dir_all(&d).unwrap();
    }

    /// One `linux_dirent64` record, padded to 8 bytes as the kernel pads them.
    fn dirent(name: &[u8], kind: u8) -> Vec<u8> {
        let len = (19 + name.len() + 1).next_multiple_of(8);
        let mut r = vec![0u8; len];
        r[16..18].copy_from_slice(&(len as u16).to_ne_bytes());
        r[18] = kind;
        r[19..19 + name.len()].copy_from_slice(name);
        r
    }

    #[test]
    fn listings_skip_dot_entries_keep_kinds_and_refuse_malformed_records() {
        let recs = [
            dirent(b".", libc::DT_DIR),
            dirent(b"..", libc::DT_DIR),
            dirent(b"f", libc::DT_REG),
            dirent(b".hidden-dir", libc::DT_DIR),
            dirent(b"l", libc::DT_LNK),
            dirent(b"u", libc::DT_UNKNOWN),
            dirent(b"fifo", libc::DT_FIFO),
        ]
        .concat();
        let (mut names, mut entries) = (Vec::new(), Vec::new());
        parse_dents(&recs, &mut names, &mut entries).unwrap();
        let got: Vec<_> = entries
            .iter()
            .map(|e| (&names[e.start..e.start + e.len], e.kind))
            .collect();
        assert_eq!(
            got,
            [
                (&b"f"[..], Kind::File),
                (b".hidden-dir", Kind::Dir),
                (b"l", Kind::Symlink),
                (b"u", Kind::Unknown),
                (b"fifo", Kind::Other),
            ]
        );
        // A record length of 0 (which would loop forever), one past the end, a name without
        // its NUL, a truncated header: errors.
        let mut zero = dirent(b"x", libc::DT_REG);
        zero[16..18].copy_from_slice(&0u16.to_ne_bytes());
        let mut long = dirent(b"x", libc::DT_REG);
        long[16..18].copy_from_slice(&64u16.to_ne_bytes());
        let mut no_nul = dirent(b"abcd", libc::DT_REG);
        let n = no_nul.len();
        no_nul[19..n].fill(b'a');
        for bad in [zero, long, no_nul, vec![0u8; 10]] {
            let e = parse_dents(&bad, &mut Vec::new(), &mut Vec::new()).unwrap_err();
            assert_eq!(e.to_string(), "malformed directory listing");
        }
    }

    #[test]
    fn entries_of_unknown_type_are_looked_up() {
        let d = tmp("unknown");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("sub/f"), "f").unwrap();
        fs::write(d.join("file"), "x").unwrap();
        std::os::unix::fs::symlink(d.join("file"), d.join("link")).unwrap();
        // A listing as a file system without `d_type` gives it, plus a name that vanished.
        let mut names = Vec::new();
        let mut entries = Vec::new();
        for name in ["file", "gone", "link", "sub"] {
            entries.push(Entry {
                start: names.len(),
                len: name.len(),
                kind: Kind::Unknown,
            });
            names.extend_from_slice(name.as_bytes());
        }
        let root = d.to_str().unwrap().to_string();
        for follow in [false, true] {
            let mut w = Walk::new(vec![], follow);
            w.args = Vec::new().into_iter();
            w.stack.push(Dir {
                path: b(&d),
                names: names.clone(),
                entries: entries.clone(),
                next: 0,
                id: (0, 0),
            });
            let mut want = vec![
                format!("{root}/file"),
                format!("ERR {root}/gone No such file or directory"),
            ];
            if follow {
                want.push(format!("{root}/link"));
            }
            want.push(format!("{root}/sub/f"));
            assert_eq!(paths(w), want, "follow {follow}");
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_paths_fail_and_no_path_means_stdin() {
        let got = paths(Walk::new(
            vec![b"/nonexistent/x".to_vec(), b"-".to_vec()],
            false,
        ));
        assert_eq!(got, ["ERR /nonexistent/x No such file or directory", "-"]);
        assert_eq!(paths(Walk::new(vec![], false)), ["-"]);
    }
}
