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
//!   would block). Named on the command line they are read, as `sha256sum` reads them.
//!
//! One directory's listing is held at a time per level (sorting needs it whole); nothing else
//! grows with the tree.

use std::ffi::OsString;
use std::fs::{self, DirEntry};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;

use super::digest::os_path;
use super::format::reason;

/// One input, in output order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A file to hash, with its size when it was stat'ed as a regular file (a path named on
    /// the command line, or a symlink followed); files met while walking are not stat'ed.
    File { path: Vec<u8>, size: Option<u64> },
    /// Standard input (`-`, or no path at all).
    Stdin,
    /// An input that cannot be hashed (it does not exist, a directory cannot be listed, a loop).
    Failed { path: Vec<u8>, reason: String },
    /// No input: a mark that passes through the engine in order (the end of a manifest).
    Marker,
}

/// A directory being listed.
struct Dir {
    /// Its path as printed (the prefix of its entries).
    path: Vec<u8>,
    /// Its entries not yet visited, sorted by name.
    entries: std::vec::IntoIter<(OsString, DirEntry)>,
    /// `(device, inode)`, for loop detection.
    id: (u64, u64),
}

/// The lazy walk over the command-line paths (see the module docs).
pub(crate) struct Walk {
    args: std::vec::IntoIter<Vec<u8>>,
    stack: Vec<Dir>,
    follow: bool,
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
        }
    }

    /// Starts listing the directory at `path`; a `Failed` source if it cannot be listed.
    fn enter(&mut self, path: Vec<u8>, id: (u64, u64)) -> Option<Source> {
        let listing = fs::read_dir(os_path(&path)).and_then(|rd| {
            rd.map(|e| e.map(|e| (e.file_name(), e)))
                .collect::<std::io::Result<Vec<_>>>()
        });
        match listing {
            Ok(mut entries) => {
                entries.sort_unstable_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
                self.stack.push(Dir {
                    path,
                    entries: entries.into_iter(),
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
            }),
        }
    }

    /// One entry of the directory on top of the stack.
    fn entry(&mut self, name: OsString, entry: DirEntry) -> Option<Source> {
        let dir = self.stack.last()?;
        let path = join(&dir.path, &name.into_vec());
        let kind = match entry.file_type() {
            Ok(k) => k,
            Err(e) => {
                return Some(Source::Failed {
                    path,
                    reason: reason(&e),
                });
            }
        };
        if kind.is_file() {
            // No stat here: the worker learns the size from the open file (fstat, no path
            // lookup) and hands a big one back. Stat'ing in the walk cost ~1.7 µs a file in
            // the parent; without it a run's CPU time fell 3–5% (4 paired runs, busy machine).
            return Some(Source::File { path, size: None });
        }
        if kind.is_dir() {
            let id = if self.follow {
                match entry.metadata() {
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
        if kind.is_symlink() && self.follow {
            // Dangling links are skipped, like `find -L -type f`.
            let m = fs::metadata(os_path(&path)).ok()?;
            if m.is_file() {
                return Some(Source::File {
                    path,
                    size: Some(m.len()),
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
                Some(top) => match top.entries.next() {
                    Some((name, entry)) => self.entry(name, entry),
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
    fn missing_paths_fail_and_no_path_means_stdin() {
        let got = paths(Walk::new(
            vec![b"/nonexistent/x".to_vec(), b"-".to_vec()],
            false,
        ));
        assert_eq!(got, ["ERR /nonexistent/x No such file or directory", "-"]);
        assert_eq!(paths(Walk::new(vec![], false)), ["-"]);
    }
}
