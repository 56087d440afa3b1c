//! End-to-end tests of `shmpool hash` against the real `sha256sum`, `sha512sum` and `b3sum`.
//!
//! One tree is built once per test process in the target directory: names with spaces, `\`,
//! newlines, carriage returns and non-UTF-8 bytes; dotfiles; empty files and directories; 2000
//! tiny files; files of 256 KiB - 1 to 4 MiB + 1 around the engine's thresholds; a 70 MB random
//! file (many BLAKE3 pieces); a 300 MB sparse file; symlinks to a
//! file and to a directory; a FIFO. The expected file list comes from an independent walk here
//! (sorted per directory, symlinks and FIFOs skipped), and the reference tools hash it in that
//! order, so the outputs must be equal byte for byte.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

/// Aborts the whole test process if it is still running after 300 s (a hung pool, a FIFO
/// opened by mistake).
fn watchdog() {
    static ARM: Once = Once::new();
    ARM.call_once(|| {
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(300));
            eprintln!("tools/tests/hash.rs: watchdog: still running after 300 s, aborting");
            std::process::abort();
        });
    });
}

fn shmpool() -> Command {
    watchdog();
    Command::new(env!("CARGO_BIN_EXE_shmpool"))
}

fn run(args: &[&OsStr]) -> Output {
    shmpool()
        .args(args)
        .output()
        .expect("run the shmpool binary")
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Deterministic pseudo-random bytes.
fn random_bytes(n: usize, mut x: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// The shared test tree (built once).
fn tree() -> &'static Path {
    static TREE: OnceLock<PathBuf> = OnceLock::new();
    TREE.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hash-tree");
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("tiny")).unwrap();
        fs::create_dir_all(root.join("mid")).unwrap();
        fs::create_dir_all(root.join("empty dir")).unwrap();
        fs::create_dir_all(root.join("deep/er/est")).unwrap();
        let name = |b: &[u8]| root.join(OsStr::from_bytes(b));
        fs::write(name(b"sp ace"), "space\n").unwrap();
        fs::write(name(b"back\\slash"), "backslash\n").unwrap();
        fs::write(name(b"new\nline"), "newline\n").unwrap();
        fs::write(name(b"carriage\rreturn"), "cr\n").unwrap();
        fs::write(name(b"all\\of\nthem\r"), "all\n").unwrap();
        fs::write(name(b"not-utf8-\xff\xfe"), "latin\n").unwrap();
        fs::write(root.join(".dotfile"), "hidden\n").unwrap();
        fs::write(root.join("empty"), "").unwrap();
        fs::write(root.join("deep/er/est/leaf"), "leaf\n").unwrap();
        for i in 0..2000 {
            fs::write(root.join(format!("tiny/{i:04}")), format!("{i}\n")).unwrap();
        }
        fs::write(root.join("random-70M"), random_bytes(70_000_000, 7)).unwrap();
        // Around the sizes where the engine changes course: mapped from 256 KiB (every
        // algorithm), sent alone by cost above ~1.2 MB (SHA-512), BLAKE3 pieces above 4 MiB.
        for (i, len) in [
            (256 << 10) - 1,
            256 << 10,
            600_000,
            1_300_000,
            (4 << 20) + 1,
        ]
        .into_iter()
        .enumerate()
        {
            let data = random_bytes(len, 11 + i as u64);
            fs::write(root.join(format!("mid/{len}")), data).unwrap();
        }
        let sparse = fs::File::create(root.join("sparse-300M")).unwrap();
        sparse.set_len(300_000_000).unwrap();
        symlink(root.join("sp ace"), root.join("link-to-file")).unwrap();
        symlink(root.join("deep"), root.join("link-to-dir")).unwrap();
        let fifo = std::ffi::CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: `fifo` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        root
    })
}

/// The regular files under `dir` in walk order (entries sorted by name per directory;
/// symlinks, FIFOs skipped), joined as `find` joins them.
fn expected_files(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort_by(|a, b| {
        a.file_name()
            .unwrap()
            .as_bytes()
            .cmp(b.file_name().unwrap().as_bytes())
    });
    let mut out = Vec::new();
    for p in entries {
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            out.extend(expected_files(&p));
        } else if m.is_file() {
            out.push(p);
        }
    }
    out
}

/// What `tool FILE...` prints for `files`, in that order.
fn reference(tool: &str, files: &[PathBuf]) -> Vec<u8> {
    let o = Command::new(tool)
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("{tool} must be installed (ci/test.sh installs it): {e}"));
    assert!(o.status.success(), "{tool}: {}", stderr(&o));
    o.stdout
}

fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split_inclusive(|&c| c == b'\n').collect()
}

fn hash_tree(algo: &str, jobs: &str) -> Vec<u8> {
    let o = run(&[
        os("hash"),
        os("-a"),
        os(algo),
        os("-j"),
        os(jobs),
        tree().as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
    o.stdout
}

#[test]
fn sha256_lines_equal_sha256sum_byte_for_byte_with_one_and_two_workers() {
    let want = reference("sha256sum", &expected_files(tree()));
    let two = hash_tree("sha256", "2");
    assert_eq!(
        String::from_utf8_lossy(&two),
        String::from_utf8_lossy(&want)
    );
    assert_eq!(two, want);
    assert_eq!(hash_tree("sha256", "1"), want);
}

#[test]
fn sha512_lines_equal_sha512sum_byte_for_byte_with_one_and_two_workers() {
    let want = reference("sha512sum", &expected_files(tree()));
    assert_eq!(hash_tree("sha512", "2"), want);
    assert_eq!(hash_tree("sha512", "1"), want);
}

#[test]
fn blake3_lines_equal_b3sum_including_split_big_files() {
    // b3sum prints U+FFFD for a name that is not UTF-8, we print its bytes: those lines are
    // compared on their digest only.
    let files = expected_files(tree());
    let want = reference("b3sum", &files);
    for jobs in ["2", "1", "3"] {
        let got = hash_tree("blake3", jobs);
        let (got, want) = (lines(&got), lines(&want));
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            if std::str::from_utf8(g).is_ok() {
                assert_eq!(String::from_utf8_lossy(g), String::from_utf8_lossy(w));
            } else {
                assert_eq!(g[..64], w[..64]);
                assert!(g.ends_with(b"not-utf8-\xff\xfe\n"));
            }
        }
    }
}

#[test]
fn unordered_prints_the_same_lines_in_some_order() {
    let ordered = hash_tree("blake3", "2");
    let o = run(&[
        os("hash"),
        os("--unordered"),
        os("-a"),
        os("blake3"),
        tree().as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut got = lines(&o.stdout);
    let mut want = lines(&ordered);
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn zero_terminated_lines_escape_nothing() {
    let dir = tree().join("deep");
    let o = run(&[
        os("hash"),
        os("-z"),
        tree().join("new\nline").as_os_str(),
        dir.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want_newline = reference("sha256sum", &[tree().join("new\nline")]);
    // sha256sum escapes the name; -z writes the name raw and ends with NUL.
    let mut want = want_newline[1..65].to_vec();
    want.extend_from_slice(b"  ");
    want.extend_from_slice(tree().join("new\nline").as_os_str().as_bytes());
    want.push(0);
    let leaf = reference("sha256sum", &[dir.join("er/est/leaf")]);
    want.extend_from_slice(&leaf[..leaf.len() - 1]);
    want.push(0);
    assert_eq!(o.stdout, want);
}

#[test]
fn symlinks_are_skipped_while_walking_followed_with_follow_and_on_the_command_line() {
    let o = run(&[os("hash"), os("-L"), tree().as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let root = tree().to_str().unwrap();
    assert!(text.contains(&format!("  {root}/link-to-file\n")));
    assert!(text.contains(&format!("  {root}/link-to-dir/er/est/leaf\n")));
    assert!(!String::from_utf8_lossy(&hash_tree("sha256", "2")).contains("link-to"));
    let o = run(&[os("hash"), tree().join("link-to-dir").as_os_str()]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&reference(
            "sha256sum",
            &[tree().join("link-to-dir/er/est/leaf")]
        ))
    );
}

/// A small tree of its own, for tests that change files.
fn small_tree(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("a"), "a\n").unwrap();
    fs::write(root.join("back\\slash"), "b\n").unwrap();
    fs::write(root.join("new\nline"), "n\n").unwrap();
    fs::write(root.join("sub/big"), random_bytes(9 << 20, 3)).unwrap();
    root
}

#[test]
fn check_round_trip_passes_then_reports_a_changed_and_a_missing_file() {
    for (algo, tool) in [
        ("sha256", "sha256sum"),
        ("sha512", "sha512sum"),
        ("blake3", "b3sum"),
    ] {
        let root = small_tree(&format!("hash-check-{algo}"));
        let manifest = root.with_extension("sums");
        let o = run(&[os("hash"), os("-a"), os(algo), root.as_os_str()]);
        assert!(o.status.success(), "{}", stderr(&o));
        fs::write(&manifest, &o.stdout).unwrap();
        // The reference tool accepts our manifest...
        let r = Command::new(tool)
            .arg("-c")
            .arg(&manifest)
            .output()
            .unwrap();
        assert!(r.status.success(), "{tool} -c: {}", stderr(&r));
        // ...and we accept it, printing what the reference tool prints.
        let c = run(&[
            os("hash"),
            os("-a"),
            os(algo),
            os("-c"),
            manifest.as_os_str(),
        ]);
        assert_eq!(c.status.code(), Some(0), "{}", stderr(&c));
        assert_eq!(
            String::from_utf8_lossy(&c.stdout),
            String::from_utf8_lossy(&r.stdout)
        );
        // A changed file and a missing one.
        fs::write(root.join("a"), "changed\n").unwrap();
        fs::remove_file(root.join("back\\slash")).unwrap();
        let c = run(&[
            os("hash"),
            os("-a"),
            os(algo),
            os("-c"),
            manifest.as_os_str(),
        ]);
        assert_eq!(c.status.code(), Some(1));
        let out = String::from_utf8_lossy(&c.stdout);
        let root_s = root.to_str().unwrap();
        assert!(out.contains(&format!("{root_s}/a: FAILED\n")), "{out}");
        assert!(out.contains("slash: FAILED open or read\n"), "{out}");
        assert!(out.contains("/sub/big: OK\n"), "{out}");
        let err = stderr(&c);
        assert!(err.contains("slash: No such file or directory\n"), "{err}");
        assert!(
            err.contains("shmpool: WARNING: 1 listed file could not be read\n"),
            "{err}"
        );
        assert!(
            err.contains("shmpool: WARNING: 1 computed checksum did NOT match\n"),
            "{err}"
        );
        if algo == "sha256" {
            // coreutils prints the same lines.
            let r = Command::new(tool)
                .arg("-c")
                .arg(&manifest)
                .output()
                .unwrap();
            assert_eq!(r.status.code(), Some(1));
            assert_eq!(c.stdout, r.stdout);
            // --quiet keeps only the failures; --status prints nothing on stdout.
            let q = run(&[os("hash"), os("-c"), os("--quiet"), manifest.as_os_str()]);
            assert_eq!(q.status.code(), Some(1));
            assert!(!String::from_utf8_lossy(&q.stdout).contains(": OK"));
            assert!(String::from_utf8_lossy(&q.stdout).contains(": FAILED"));
            let s = run(&[os("hash"), os("-c"), os("--status"), manifest.as_os_str()]);
            assert_eq!(s.status.code(), Some(1));
            assert!(s.stdout.is_empty());
            assert!(!stderr(&s).contains("WARNING"));
        }
        fs::remove_dir_all(&root).unwrap();
        fs::remove_file(&manifest).unwrap();
    }
}

#[test]
fn check_counts_improperly_formatted_lines_and_refuses_a_manifest_without_any() {
    let root = small_tree("hash-check-format");
    let manifest = root.with_extension("sums");
    let o = run(&[os("hash"), root.join("a").as_os_str()]);
    let mut text = o.stdout.clone();
    text.extend_from_slice(b"garbage\n");
    fs::write(&manifest, &text).unwrap();
    let c = run(&[os("hash"), os("-c"), manifest.as_os_str()]);
    assert_eq!(c.status.code(), Some(0), "{}", stderr(&c));
    assert_eq!(
        stderr(&c),
        "shmpool: WARNING: 1 line is improperly formatted\n"
    );
    fs::write(&manifest, "garbage\n").unwrap();
    let c = run(&[os("hash"), os("-c"), manifest.as_os_str()]);
    assert_eq!(c.status.code(), Some(1));
    assert_eq!(
        stderr(&c),
        format!(
            "shmpool: {}: no properly formatted checksum lines found\n",
            manifest.display()
        )
    );
    let missing = root.join("no-such-manifest");
    let c = run(&[os("hash"), os("-c"), missing.as_os_str()]);
    assert_eq!(c.status.code(), Some(1));
    assert!(stderr(&c).ends_with(": No such file or directory\n"));
    fs::remove_dir_all(&root).unwrap();
    fs::remove_file(&manifest).unwrap();
}

#[test]
fn a_missing_path_is_reported_and_everything_else_is_still_hashed() {
    let root = small_tree("hash-missing");
    let missing = root.join("no-such-file");
    let o = run(&[os("hash"), missing.as_os_str(), root.as_os_str()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "shmpool: {}: No such file or directory\n",
            missing.display()
        )
    );
    let want = reference("sha256sum", &expected_files(&root));
    assert_eq!(o.stdout, want);
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn an_error_line_escapes_the_name_as_the_output_lines_do() {
    let root = small_tree("hash-missing-odd");
    let odd = root.join("no\nsuch\\file");
    let o = run(&[os("hash"), odd.as_os_str()]);
    assert_eq!(o.status.code(), Some(1));
    // One line: the newline written `\n`, the backslash doubled, a `\` before the name.
    assert_eq!(
        stderr(&o),
        format!(
            "shmpool: \\{}/no\\nsuch\\\\file: No such file or directory\n",
            root.display()
        )
    );
    // With -z, names are written raw everywhere.
    let o = run(&[os("hash"), os("-z"), odd.as_os_str()]);
    assert_eq!(
        stderr(&o),
        format!("shmpool: {}: No such file or directory\n", odd.display())
    );
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn standard_input_is_hashed_without_a_path_and_as_dash() {
    for args in [
        vec!["hash"],
        vec!["hash", "-"],
        vec!["hash", "-a", "blake3", "-"],
    ] {
        let mut child = shmpool()
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"hello from stdin\n")
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success());
        let tool = if args.contains(&"blake3") {
            "b3sum"
        } else {
            "sha256sum"
        };
        let mut r = Command::new(tool)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        r.stdin
            .take()
            .unwrap()
            .write_all(b"hello from stdin\n")
            .unwrap();
        assert_eq!(o.stdout, r.wait_with_output().unwrap().stdout);
    }
}

#[test]
fn a_manifest_line_for_dash_checks_standard_input() {
    let d = small_tree("check-stdin");
    let manifest = d.join("manifest");
    let a = d.join("a");
    let mut m = b"98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4  -\n".to_vec();
    m.extend_from_slice(&reference("sha256sum", std::slice::from_ref(&a)));
    fs::write(&manifest, &m).unwrap();
    let mut child = shmpool()
        .args([os("hash"), os("-c"), manifest.as_os_str()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("-: OK\n{}: OK\n", a.display())
    );
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_options_are_usage_errors_with_exit_code_2() {
    for args in [
        vec!["hash", "-a", "md5"],
        vec!["hash", "--no-such-option"],
        vec!["hash", "-j", "0"],
        vec!["hash", "--quiet", "x"],
    ] {
        let o = run(&args.iter().map(|a| os(a)).collect::<Vec<_>>());
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).is_empty());
    }
}

#[test]
fn more_jobs_than_the_open_file_limit_allows_is_an_error_that_names_the_limit() {
    let f = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("jobs_limit.txt");
    fs::write(&f, b"abc").unwrap();
    let mut cmd = shmpool();
    cmd.args([os("hash"), os("-j"), os("1000"), f.as_os_str()]);
    // SAFETY: setrlimit is async-signal-safe, and the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: `lim` is a valid rlimit that lives for the call.
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The soft limit only: the hard one cannot be raised back, and may be lower than
            // any number we would pick.
            lim.rlim_cur = lim.rlim_max.min(256);
            // SAFETY: `lim` is a valid rlimit that lives for the call.
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("processes(1000)") && e.contains("ulimit -n"),
        "{e}"
    );
    assert!(e.contains("ran out of file descriptors"), "{e}");
    assert!(o.stdout.is_empty());
}

#[test]
fn check_with_zero_is_a_usage_error() {
    // Manifests are read by lines: `-c -z` was accepted and read a NUL-terminated manifest as
    // lines. coreutils 9 refuses `--check --zero` as a usage error; so do we.
    let m = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("check_zero.manifest");
    fs::write(&m, b"").unwrap();
    for flags in [["-c", "-z"], ["--zero", "--check"]] {
        let o = run(&[os("hash"), os(flags[0]), os(flags[1]), m.as_os_str()]);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("--check") && e.contains("--zero"),
            "{flags:?}: {e}"
        );
        assert!(o.stdout.is_empty(), "{flags:?}");
    }
}

#[test]
fn a_closed_stdout_is_success() {
    let mut child = shmpool()
        .args([os("hash"), tree().join("tiny").as_os_str()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 10];
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    drop(out);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// How a shell with job control starts a foreground job, for the Ctrl-C tests: in its own
/// process group (the terminal's Ctrl-C goes to the whole group) and with SIGINT at its default
/// action. The test process may have inherited SIGINT *ignored* (a non-interactive shell ignores
/// it in a job started with `&`, as `cargo test &` in a script or a CI runner that does so), and
/// `shmpool hash` rightly leaves an inherited SIG_IGN alone (see
/// `started_with_sigint_ignored_it_stays_ignored`): without the reset every Ctrl-C test failed
/// there, the runs never ending on SIGINT.
trait Foreground {
    fn foreground(&mut self) -> &mut Self;
}

impl Foreground for Command {
    fn foreground(&mut self) -> &mut Command {
        self.process_group(0);
        // SAFETY: the closure only calls signal(2), which is async-signal-safe.
        unsafe {
            self.pre_exec(|| {
                // SAFETY: SIGINT and SIG_DFL are valid arguments; no handler is installed.
                if libc::signal(libc::SIGINT, libc::SIG_DFL) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        }
    }
}

/// The processes of group `pgid` as `/proc/PID/stat` shows them (pid, name, state, parent),
/// for a failure message.
fn describe(pgid: i32) -> String {
    group_members(pgid)
        .iter()
        .map(|p| {
            fs::read_to_string(format!("/proc/{p}/stat")).map_or_else(
                |_| format!("{p} (gone)"),
                |s| s.split(' ').take(4).collect::<Vec<_>>().join(" "),
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Fails, naming them, if any process of group `pgid` is left (zombies included).
fn assert_group_gone(pgid: i32) {
    assert_eq!(
        group_members(pgid),
        Vec::<i32>::new(),
        "left behind: {}",
        describe(pgid)
    );
}

/// Pids of live processes in process group `pgid` (zombies count: they were not reaped).
fn group_members(pgid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the `(comm)`: state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits until `ready` says yes; at most 60 s, only so that a broken build cannot spin forever.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(60), "never {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child`, the leader of process group `pgid`, to end after a signal; still running
/// 60 s later (a bound only so that a broken build fails instead of hanging): kills the group
/// and fails with `hung`.
fn ends(child: &mut std::process::Child, pgid: i32, hung: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            // SAFETY: kill of a process group we made, with a valid signal.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            panic!("still running 60 s after SIGINT: {hung}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGINT to `child` (the leader of its own process group), waits for it to end, and
/// checks that it died of SIGINT, printed nothing on stderr, and left no process of its group.
/// Still running 60 s later: kills the group and fails with `hung`.
fn sigint_ends(mut child: std::process::Child, whole_group: bool, hung: &str) {
    let pgid = child.id() as i32;
    let target = if whole_group { -pgid } else { pgid };
    // SAFETY: kill with a pid we own (our child or its process group) and a valid signal.
    assert_eq!(unsafe { libc::kill(target, libc::SIGINT) }, 0);
    let status = ends(&mut child, pgid, hung);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).unwrap();
    }
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}: {err}");
    assert!(err.is_empty(), "{err}");
    assert_group_gone(pgid);
}

/// Starts a long SHA-512 run (the sparse file, many times) in its own process group, waits
/// until its workers exist, sends SIGINT (to the whole group, as a terminal does, or to the
/// parent alone) and checks the exit status and that no process of the group is left.
fn interrupt(whole_group: bool) {
    let sparse = tree().join("sparse-300M");
    let mut cmd = shmpool();
    cmd.args(["hash", "-a", "sha512", "-j", "2"]);
    for _ in 0..40 {
        cmd.arg(&sparse);
    }
    // The parent, its fork server and two workers.
    let child = running(&mut cmd, 4);
    sigint_ends(child, whole_group, "still running after SIGINT");
}

/// Spawns `cmd` as a foreground job (stdout to /dev/null, stderr piped) and returns once its
/// process group has `processes` members, and a moment more for them to settle.
fn running(cmd: &mut Command, processes: usize) -> std::process::Child {
    let child = cmd
        .foreground()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pgid = child.id() as i32;
    wait_until(&format!("{processes} processes"), || {
        group_members(pgid).len() >= processes
    });
    std::thread::sleep(Duration::from_millis(200));
    child
}

#[test]
fn ctrl_c_to_the_process_group_exits_130_and_leaves_no_process() {
    interrupt(true);
}

#[test]
fn sigint_to_the_parent_alone_exits_130_and_leaves_no_process() {
    interrupt(false);
}

#[test]
fn ctrl_c_ends_a_run_blocked_on_a_full_stdout_pipe() {
    // Nobody reads the output (as `shmpool hash DIR | less` when less is not reading): the
    // parent blocks writing its lines to a full pipe, and Ctrl-C must still end it.
    let child = shmpool()
        .args([os("hash"), os("-j"), os("2"), tree().as_os_str()])
        .foreground()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Until the pipe is full: the parent sleeps in a write (in `pipe_write`) or a poll for
    // room.
    wait_until("blocked on the full pipe", || {
        let wchan = fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        wchan.contains("pipe_write") || wchan.contains("poll")
    });
    sigint_ends(child, false, "blocked on its full stdout pipe");
}

#[test]
fn ctrl_c_ends_a_run_whose_only_task_never_answers() {
    // A FIFO named on the command line is read as sha256sum reads it: the worker blocks in
    // `open` (nobody writes), so no reply will ever come. The engine's wait has no timeout:
    // only Ctrl-C's wake-up (the SIGINT handler's byte, the watcher thread) can end it.
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ctrl_c_fifo");
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    let fifo = d.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // The parent, its fork server and the worker, blocked in `open`.
    let child = running(
        shmpool().args([os("hash"), os("-j"), os("1"), fifo.as_os_str()]),
        3,
    );
    sigint_ends(child, false, "Ctrl-C did not wake the engine's wait");
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bench_hash_times_every_contender_and_writes_a_csv() {
    let root = small_tree("hash-bench-tree");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hash-bench-out");
    let _ = fs::remove_dir_all(&out);
    // One round over the small tree, the CSV into `out`; `only` picks the contenders, `more`
    // adds options.
    let bench_with = |only: &str, more: &[&str]| {
        let mut args = vec![
            os("bench"),
            os("hash"),
            root.as_os_str(),
            os("--runs"),
            os("1"),
            os(only),
            os("--out"),
            out.as_os_str(),
        ];
        args.extend(more.iter().map(|m| os(m)));
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    let bench = |only: &str| bench_with(only, &[]);
    let o = bench("--no-python");
    let table = String::from_utf8_lossy(&o.stdout);
    for row in [
        "| shmpool hash -a sha512 -j 2 | sha512 |",
        "| shmpool hash -a sha256 -j 2 | sha256 |",
        "| shmpool hash -a blake3 -j 2 | blake3 |",
        "| xargs -P2 -n64 sha512sum | sha512 |",
        "| xargs b3sum (its own threads) | blake3 |",
        "sha512: floor ",
        "sha512: 2-stream floor ",
        "blake3: 2-stream floor ",
    ] {
        assert!(table.contains(row), "{row} missing from\n{table}");
    }
    let csv = fs::read_to_string(out.join("hash.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "round,command,algo,seconds,cpu_seconds,files,bytes,disk_bytes"
    );
    // 3 x shmpool, 2 x xargs, b3sum (and rhash/hashdeep when installed).
    assert!(rows.len() > 6, "{csv}");
    // 4 files, 9 MiB + 6 bytes, then the bytes read from disk.
    let tree_bytes: u64 = (9 << 20) + 6;
    let (rest, disk) = rows[1].rsplit_once(',').unwrap();
    assert!(rest.ends_with(&format!(",4,{tree_bytes}")), "{}", rows[1]);
    disk.parse::<u64>().unwrap();
    // Every row of the table ends with its disk MB, a number.
    assert!(table.contains("| CPU / shmpool's | disk MB |"), "{table}");
    let disk_mb = |table: &str, row: &str| -> f64 {
        let line = table.lines().find(|l| l.starts_with(row)).unwrap();
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| a | ... | disk |" splits into "", a, ..., disk, "".
        cells[cells.len() - 2].parse().unwrap()
    };
    disk_mb(&table, "| xargs b3sum (its own threads) |");
    assert!(
        table.contains("disk MB = bytes read from storage"),
        "{table}"
    );
    // --shmpool-only: our three commands and the floors, no other tool.
    let o = bench("--shmpool-only");
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("| shmpool hash -a blake3 -j 2 |"), "{table}");
    assert!(table.contains("sha256: 2-stream floor "), "{table}");
    assert!(!table.contains("xargs"), "{table}");
    // A header, then per round the three commands and the three 2-stream floors.
    let csv = fs::read_to_string(out.join("hash.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7, "{csv}");
    assert!(csv.contains(",\"2-stream floor\",sha512,"), "{csv}");
    // The tree was just read (the bench's check): warm, `shmpool hash` reads (almost) nothing
    // from disk. (DAMON's pageout takes pages idle for a minute; these are seconds old.)
    assert!(table.contains(", warm cache, -j 2;"), "{table}");
    let warm = disk_mb(&table, "| shmpool hash -a sha256 -j 2 |");
    assert!(warm * 1e6 < tree_bytes as f64 / 2.0, "{table}");
    // The disk column's figures, per round in the CSV.
    let disk_of = |csv: &str| -> Vec<(String, u64)> {
        csv.lines()
            .skip(1)
            .map(|l| {
                let (rest, disk) = l.rsplit_once(',').unwrap();
                (rest.to_string(), disk.parse().unwrap())
            })
            .collect()
    };

    // --cold: the tree leaves the page cache before every command and floor, so each of them
    // reads all of it from disk. Only clean pages are dropped: write the new tree back first.
    for f in ["a", "back\\slash", "new\nline", "sub/big"] {
        fs::File::open(root.join(f)).unwrap().sync_all().unwrap();
    }
    let o = bench_with("--shmpool-only", &["--cold"]);
    let table = String::from_utf8_lossy(&o.stdout);
    for line in [
        ", cold cache (the tree evicted before every command and floor), -j 2;",
        "cold: before every command and floor measurement the tree left the page cache \
         (posix_fadvise DONTNEED on 4 files, 0 skipped): 12 evictions,",
        "measured floor = CPU of one thread",
        "each of its two passes starts cold",
        "CPU floor ",
    ] {
        assert!(table.contains(line), "{line} missing from\n{table}");
    }
    assert!(!table.contains("NOT COLD"), "{table}");
    assert!(!table.contains("warm cache"), "{table}");
    // At least the 9 MiB file each time: the three tiny files may cost no data block read
    // (ext4's inline_data, btrfs store such files in the inode). The table rounds to 0.1 MB.
    let big: u64 = 9 << 20;
    let cold = disk_mb(&table, "| shmpool hash -a blake3 -j 2 |");
    assert!(cold >= big as f64 / 1e6 - 0.05, "{table}");
    let csv = fs::read_to_string(out.join("hash.csv")).unwrap();
    let rows = disk_of(&csv);
    assert_eq!(rows.len(), 6, "{csv}");
    for (row, disk) in rows {
        assert!(disk >= big, "{row}: {disk} bytes from disk, cold\n{csv}");
    }
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn proc_files_that_say_zero_bytes_are_read_to_their_end() {
    // /proc/kallsyms says 0 bytes and comes in page-sized pieces: a short read is not its end
    // (it was, once, and the digest covered the first piece only).
    let path = Path::new("/proc/kallsyms");
    assert_eq!(fs::metadata(path).unwrap().len(), 0);
    let o = run(&[os("hash"), path.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&reference("sha256sum", &[path.to_path_buf()]))
    );
}

#[test]
fn a_big_file_that_mmap_refuses_is_read_as_sha256sum_reads_it() {
    // /sys/kernel/btf/vmlinux (5 MB, on kernels built with BTF, as these machines' are): `read`
    // serves it, `mmap` says `Permission denied`. Files from 256 KiB are mapped, and such a
    // file failed with that error (b3sum fails on it the same way; sha*sum read it).
    let path = Path::new("/sys/kernel/btf/vmlinux");
    let Ok(meta) = fs::metadata(path) else {
        eprintln!("no {}: nothing to check on this kernel", path.display());
        return;
    };
    assert!(meta.len() >= 256 << 10);
    let file = [path.to_path_buf()];
    for (algo, tool) in [("sha256", "sha256sum"), ("sha512", "sha512sum")] {
        let o = run(&[os("hash"), os("-a"), os(algo), path.as_os_str()]);
        assert!(o.status.success(), "{algo}: {}", stderr(&o));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&reference(tool, &file))
        );
    }
    // BLAKE3 (split in pieces): the digest of its bytes.
    let o = run(&[os("hash"), os("-a"), os("blake3"), path.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = blake3::hash(&fs::read(path).unwrap()).to_hex();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{want}  {}\n", path.display())
    );
}

/// Runs `shmpool ARGS...` through `sh` with `redirect` (`<&-`, `>&-`) applied first.
fn run_with_closed(redirect: &str, args: &[&str]) -> Output {
    watchdog();
    Command::new("sh")
        .arg("-c")
        .arg(format!(r#"exec "$0" "$@" {redirect}"#))
        .arg(env!("CARGO_BIN_EXE_shmpool"))
        .args(args)
        .output()
        .expect("run the shmpool binary through sh")
}

#[test]
fn a_closed_standard_input_or_output_fails_as_with_sha256sum() {
    // Rust's runtime opens /dev/null on a closed standard descriptor before `main`: a closed
    // stdin was hashed as empty, and a closed stdout swallowed every line, with exit status 0.
    let dir = tree();
    let file = dir.join("deep/er/est/leaf");
    let file = file.to_str().unwrap();
    for args in [vec!["hash"], vec!["hash", "-a", "sha512", "-", file]] {
        let o = run_with_closed("<&-", &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("shmpool: -: Bad file descriptor\n"),
            "{args:?}: {}",
            stderr(&o)
        );
        // The file named with it is still hashed; standard input is not (an empty digest).
        let out = String::from_utf8(o.stdout).unwrap();
        assert_eq!(out.lines().count(), usize::from(args.len() > 1), "{out}");
        assert!(!out.contains("  -\n"), "{out}");
    }
    let o = run_with_closed("<&-", &["hash", "-c", "-"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("Bad file descriptor"), "{}", stderr(&o));

    let o = run_with_closed(">&-", &["hash", file]);
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("Bad file descriptor"), "{}", stderr(&o));
    // Nothing to write: as `sha256sum -c --status` with a closed stdout, a success.
    let manifest = run(&[os("hash"), os(file)]);
    assert!(manifest.status.success());
    let m = std::env::temp_dir().join(format!("shmpool-closed-fds-{}", std::process::id()));
    fs::write(&m, &manifest.stdout).unwrap();
    let o = run_with_closed(">&-", &["hash", "-c", "--status", m.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    fs::remove_file(&m).unwrap();
}

/// Whether the main thread of `pid` sits in `read` of descriptor 0 or in `poll`
/// (`/proc/PID/syscall`: the number, then the arguments).
fn waiting_for_input(pid: u32) -> bool {
    let Ok(s) = fs::read_to_string(format!("/proc/{pid}/syscall")) else {
        return false;
    };
    let mut f = s.split_whitespace();
    matches!(
        (f.next(), f.next()),
        (Some("0"), Some("0x0")) | (Some("7"), _)
    )
}

/// Whether `pid` runs the shmpool binary (a child of bash has exec'd it) and waits for input.
fn is_shmpool_waiting_for_input(pid: u32) -> bool {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
    let bin = fs::canonicalize(env!("CARGO_BIN_EXE_shmpool")).ok();
    exe.is_some() && exe == bin && waiting_for_input(pid)
}

/// Whether `pid` has a handler for SIGINT (`SigCgt` of `/proc/PID/status`, a hex mask of
/// signals 1..=64).
fn catches_sigint(pid: u32) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (libc::SIGINT - 1)) != 0)
}

/// The `nfds` and `timeout` arguments of the `poll` the main thread of `pid` sits in, if it
/// does (x86_64: `poll` is syscall 7; the timeout is an `int`, shown as a register).
fn poll_args(pid: u32) -> Option<(u64, i32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    let f: Vec<&str> = s.split_whitespace().collect();
    let hex = |s: &str| u64::from_str_radix(s.strip_prefix("0x")?, 16).ok();
    if f.first() != Some(&"7") {
        return None;
    }
    Some((hex(f.get(2)?)?, hex(f.get(3)?)? as u32 as i32))
}

#[test]
fn ctrl_c_stops_a_run_waiting_for_standard_input() {
    // The SIGINT handler that stops the pool is SA_RESTART: a `read` of a terminal or an idle
    // pipe went on after it, and `shmpool hash` waiting for input could not be stopped.
    let file = tree().join("deep/er/est/leaf");
    let file = file.to_str().unwrap();
    for args in [
        vec!["hash"],
        vec!["hash", "-", file],
        vec!["hash", "--unordered", "-", file],
        vec!["hash", "-c", "-"],
    ] {
        let mut child = shmpool()
            .args(&args)
            .foreground()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Until it waits for input, seen twice 100 ms apart (the handler is installed by then).
        let start = Instant::now();
        let mut seen = 0;
        while seen < 2 && start.elapsed() < Duration::from_secs(60) {
            seen = if waiting_for_input(pid) { seen + 1 } else { 0 };
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(seen, 2, "{args:?}: never waited for standard input");
        // The wait ends by an event, never by a timeout: one `poll` of standard input and the
        // SIGINT self-pipe, with no timeout (it was 50 ms slices of standard input alone).
        assert_eq!(poll_args(pid), Some((2, -1)), "{args:?}");
        // SAFETY: kill of the process group we made, with a valid signal.
        assert_eq!(unsafe { libc::kill(-(pid as i32), libc::SIGINT) }, 0);
        ends(
            &mut child,
            pid as i32,
            &format!("{args:?}, waiting for standard input"),
        );
        drop(child.stdin.take());
        let o = child.wait_with_output().unwrap();
        assert_eq!(
            o.status.signal(),
            Some(libc::SIGINT),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(o.stdout.is_empty(), "{args:?}");
        assert!(stderr(&o).is_empty(), "{args:?}: {}", stderr(&o));
        assert_eq!(
            group_members(pid as i32),
            Vec::<i32>::new(),
            "{args:?}: left behind: {}",
            describe(pid as i32)
        );
    }
}

/// `bash -c SCRIPT` with `$0` the shmpool binary, in its own process group, its standard
/// streams piped.
fn bash_running_shmpool(script: &str) -> std::process::Child {
    Command::new("bash")
        .args(["-c", script])
        .arg(env!("CARGO_BIN_EXE_shmpool"))
        .foreground()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Ctrl-C in a shell script stops the script, not only `shmpool hash`: bash, waiting for a
/// foreground program when it gets SIGINT itself, goes on with the script if the program
/// exited normally (it "handled" Ctrl-C), and stops if the program was killed by SIGINT.
/// `shmpool hash` used to exit with status 130, so the script printed `survived`.
#[test]
fn ctrl_c_stops_the_shell_script_that_runs_it() {
    watchdog();
    let mut child = bash_running_shmpool("\"$0\" hash -; echo survived");
    let pgid = child.id() as i32;
    // shmpool waiting for standard input (which stays open and empty): its handler is
    // installed by then (a SIGINT before it would kill shmpool by default and prove nothing).
    // And bash waiting for it: only then does bash catch SIGINT (its `wait_for` handler).
    // Before, a non-interactive bash has SIGINT at its default action, so a Ctrl-C that came
    // while a loaded machine had not yet run bash from its fork to its wait killed bash at
    // once, and shmpool, still stopping its pool, was "left behind".
    wait_until(
        "bash waiting for shmpool waiting for standard input",
        || {
            catches_sigint(pgid as u32)
                && group_members(pgid)
                    .into_iter()
                    .any(|p| p != pgid && is_shmpool_waiting_for_input(p as u32))
        },
    );
    // SAFETY: kill with our child's process group and a valid signal, as a terminal does.
    assert_eq!(unsafe { libc::kill(-pgid, libc::SIGINT) }, 0);
    ends(&mut child, pgid, "the script");
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("survived"),
        "the script went on after Ctrl-C ({:?}): {}",
        o.status,
        stderr(&o)
    );
    assert_eq!(o.status.signal(), Some(libc::SIGINT), "{}", stderr(&o));
    assert_group_gone(pgid);
}

/// Started with SIGINT ignored (`cmd &` in a script, `nohup`), `shmpool hash` leaves it
/// ignored, as programs that do not catch it do: a Ctrl-C meant for the foreground program does
/// not stop it. It used to install its handler anyway and stop with the foreground program.
#[test]
fn started_with_sigint_ignored_it_stays_ignored() {
    watchdog();
    // `trap '' INT` ignores SIGINT, and `exec` keeps that.
    let mut child = bash_running_shmpool("trap '' INT; exec \"$0\" hash -");
    let pid = child.id() as i32;
    // Until bash has ignored SIGINT and exec'd shmpool, and shmpool has set up (and, before the
    // fix, installed its handler): it then waits for standard input. (After a fixed sleep, a
    // SIGINT on a loaded machine could reach bash before its `trap` and kill it.)
    wait_until("shmpool waiting for standard input", || {
        is_shmpool_waiting_for_input(pid as u32)
    });
    // SAFETY: kill with our child's process group and a valid signal, as a terminal does.
    assert_eq!(unsafe { libc::kill(-pid, libc::SIGINT) }, 0);
    // Standard input ends: the run hashes it, as if no Ctrl-C had come.
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{:?}: {}", o.status, stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  -\n"
    );
}
