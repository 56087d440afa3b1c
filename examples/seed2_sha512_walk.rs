//! Twin of seed `002_c4d35fbb90cb6e3c.txt`, "实例2：利用进程池遍历目录": walk a directory tree,
//! hash every file with SHA-512 in a pool of two workers via `imap_unordered` with chunksize 20,
//! and collect `path -> digest` into a map.
//!
//! Usage: `cargo run --example seed2_sha512_walk [DIR]` (default: this crate's `src/`).
//!
//! The walk is lazy like the seed's generator over `os.walk`: paths are produced only as the
//! pool's window asks for more. A file that cannot be opened gives `None` (the seed's
//! `except IOError: return None`) and is left out of the map. The seed prints the raw digest
//! bytes; this twin prints them as hex, and prints the map in path order, then the number of
//! files hashed:
//!
//! ```text
//! 文件目录： /path/to/shmpool/src/README.md
//! SHA512摘要值： 3f1c...
//! ...
//! 52
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File, ReadDir};
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha512};
use shmpool::Pool;

/// Number of worker processes.
const POOLSIZE: usize = 2;
/// Read buffer size (the seed's value).
const BUFSIZE: usize = 8196;

/// Hashes one file; `None` if it cannot be read.
fn mark(filename: PathBuf) -> Option<(PathBuf, Vec<u8>)> {
    let mut f = File::open(&filename).ok()?;
    let mut digest = Sha512::new();
    let mut buf = vec![0u8; BUFSIZE];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
    }
    Some((filename, digest.finalize().to_vec()))
}

/// Every file under a directory, depth first, produced lazily (like `os.walk` + a generator).
/// Unreadable directories are skipped, as `os.walk` does by default.
struct Walk {
    stack: Vec<ReadDir>,
}

impl Walk {
    fn new(dir: &Path) -> Walk {
        Walk {
            stack: fs::read_dir(dir).into_iter().collect(),
        }
    }
}

impl Iterator for Walk {
    type Item = PathBuf;

    fn next(&mut self) -> Option<PathBuf> {
        while let Some(top) = self.stack.last_mut() {
            let Some(entry) = top.next() else {
                self.stack.pop();
                continue;
            };
            let Ok(entry) = entry else { continue };
            // `file_type` does not follow symlinks (os.walk's followlinks=False).
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if let Ok(rd) = fs::read_dir(entry.path()) {
                    self.stack.push(rd);
                }
            } else {
                return Some(entry.path());
            }
        }
        None
    }
}

fn build_map(dir: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>, shmpool::Error> {
    let pool = Pool::new(POOLSIZE)?;
    let all_files = Walk::new(dir);
    let mut map = BTreeMap::new();
    for item in pool.imap_unordered(mark, all_files).chunksize(20) {
        if let Some((path, digest)) = item? {
            map.insert(path, digest);
        }
    }
    pool.close();
    pool.join()?;
    Ok(map)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let digest_map = build_map(&dir)?;
    for (item, digest) in &digest_map {
        println!("文件目录： {}", item.display());
        println!("SHA512摘要值： {}", hex(digest));
    }
    // The count.
    println!("{}", digest_map.len());
    Ok(())
}
