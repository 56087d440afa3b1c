//! `shmpool hash --mpi` under `mpirun -n 3` against one-machine `shmpool hash`: the same bytes
//! on stdout, the same error lines, failing exit statuses for the same reasons, and `--check`
//! the same way, on a tree with awkward names, many tiny files and a BLAKE3 file big enough to
//! be split into pieces that go to different ranks. Missing `mpirun` fails the test.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs `cmd`, killing it (and failing) if it outlives `limit`.
fn run(mut cmd: Command, limit: Duration) -> Run {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e} (ci/test.sh installs openmpi-bin)"));
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} hung for {limit:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        code: status.code(),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

fn local(args: &[&OsStr]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shmpool"));
    cmd.arg("hash").args(["-j", "2"]).args(args);
    run(cmd, Duration::from_secs(300))
}

fn mpi(args: &[&OsStr]) -> Run {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-n", "3"])
        .arg(env!("CARGO_BIN_EXE_shmpool"))
        .args(["hash", "--mpi", "-j", "1"])
        .args(args);
    run(cmd, Duration::from_secs(300))
}

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

fn tree() -> &'static Path {
    static TREE: OnceLock<PathBuf> = OnceLock::new();
    TREE.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hash-mpi-tree");
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("tiny")).unwrap();
        fs::create_dir_all(root.join("empty dir")).unwrap();
        fs::create_dir_all(root.join("deep/er/est")).unwrap();
        let name = |b: &[u8]| root.join(OsStr::from_bytes(b));
        fs::write(name(b"sp ace"), "space\n").unwrap();
        fs::write(name(b"back\\slash"), "backslash\n").unwrap();
        fs::write(name(b"new\nline"), "newline\n").unwrap();
        fs::write(name(b"carriage\rreturn"), "cr\n").unwrap();
        fs::write(name(b"-dash"), "dash\n").unwrap();
        fs::write(name(b"not-utf8-\xff\xfe"), "latin\n").unwrap();
        fs::write(root.join(".dotfile"), "hidden\n").unwrap();
        fs::write(root.join("empty"), "").unwrap();
        fs::write(root.join("deep/er/est/leaf"), "leaf\n").unwrap();
        for i in 0..1500 {
            fs::write(root.join(format!("tiny/{i:04}")), format!("{i}\n")).unwrap();
        }
        // Five BLAKE3 pieces of 4 MiB; several SHA-2 "big file" tasks.
        fs::write(root.join("random-20M"), random_bytes(20_000_000, 7)).unwrap();
        fs::write(root.join("random-9M"), random_bytes(9_000_000, 9)).unwrap();
        std::os::unix::fs::symlink(root.join("nowhere"), root.join("dangling")).unwrap();
        root
    })
}

fn ctx(r: &Run) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        r.code,
        String::from_utf8_lossy(&r.stdout),
        r.stderr
    )
}

#[test]
fn mpi_output_equals_one_machine_output_for_sha256_sha512_and_blake3() {
    let missing = tree().join("missing");
    for algo in ["sha256", "sha512", "blake3"] {
        let args = [
            OsStr::new("-a"),
            OsStr::new(algo),
            tree().as_os_str(),
            missing.as_os_str(),
        ];
        let one = local(&args);
        let many = mpi(&args);
        // The missing path: an error line and status 1 on one machine.
        assert_eq!(one.code, Some(1), "{}", ctx(&one));
        assert!(one.stderr.contains("missing"), "{}", ctx(&one));
        assert!(one.stdout.len() > 1500 * 64, "{}", ctx(&one));
        assert!(
            one.stdout == many.stdout,
            "{algo}: stdout differs\n--- one machine\n{}\n--- mpi\n{}",
            ctx(&one),
            ctx(&many)
        );
        // The same error line (mpirun adds its own report of the failing rank).
        assert!(
            many.stderr.contains(one.stderr.trim_end()),
            "{}",
            ctx(&many)
        );
        assert_ne!(many.code, Some(0), "{}", ctx(&many));
    }
}

#[test]
fn mpi_check_passes_and_fails_as_on_one_machine() {
    let one = local(&[OsStr::new("-a"), OsStr::new("blake3"), tree().as_os_str()]);
    assert_eq!(one.code, Some(0), "{}", ctx(&one));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let good = dir.join("hash-mpi-good.b3");
    fs::write(&good, &one.stdout).unwrap();
    // The same manifest with the digest of `tiny/0007` altered.
    let mut bad_text = Vec::new();
    for line in one.stdout.split_inclusive(|&c| c == b'\n') {
        let mut line = line.to_vec();
        if line.ends_with(b"tiny/0007\n") {
            line[0] = if line[0] == b'0' { b'1' } else { b'0' };
        }
        bad_text.extend_from_slice(&line);
    }
    let bad = dir.join("hash-mpi-bad.b3");
    fs::write(&bad, &bad_text).unwrap();
    for (manifest, ok) in [(&good, true), (&bad, false)] {
        let args: [OsString; 4] = [
            "-a".into(),
            "blake3".into(),
            "--check".into(),
            manifest.into(),
        ];
        let args: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let one = local(&args);
        let many = mpi(&args);
        assert_eq!(one.code, Some(if ok { 0 } else { 1 }), "{}", ctx(&one));
        assert!(
            one.stdout == many.stdout,
            "--check {}: stdout differs\n--- one machine\n{}\n--- mpi\n{}",
            manifest.display(),
            ctx(&one),
            ctx(&many)
        );
        if ok {
            assert_eq!(many.code, Some(0), "{}", ctx(&many));
        } else {
            assert!(
                String::from_utf8_lossy(&many.stdout).contains("tiny/0007: FAILED\n"),
                "{}",
                ctx(&many)
            );
            assert!(
                many.stderr.contains("1 computed checksum did NOT match"),
                "{}",
                ctx(&many)
            );
            assert_ne!(many.code, Some(0), "{}", ctx(&many));
        }
    }
}
