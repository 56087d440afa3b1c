//! The Python half of the chunksize sweep: runs `compare/chunksize_sweep.py` and reads its JSON.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::measure::{Measurement, Plan};

/// The script, built into the binary so the tool works away from the source tree. It is written
/// to the output directory before it runs, where it can also be re-run by hand.
const SCRIPT: &str = include_str!("../compare/chunksize_sweep.py");

/// What the script prints.
#[derive(Debug, Deserialize)]
pub(crate) struct PythonSweep {
    /// The interpreter's version.
    pub(crate) python: String,
    /// The calibrated cost of one round of the script's busy loop, ns.
    pub(crate) ns_per_iteration: f64,
    /// Every measurement.
    pub(crate) measurements: Vec<Measurement>,
}

/// The interpreter's version, or why it cannot be used.
pub(crate) fn probe(python: &Path) -> std::result::Result<String, String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import sys, multiprocessing; print(sys.version.split()[0])",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{}`: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`{}` cannot import multiprocessing ({})",
            python.display(),
            out.status
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn join<T: ToString>(v: &[T]) -> String {
    v.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

/// Writes the script into `dir` and runs it with `plan`; `step` is called once per progress step.
pub(crate) fn sweep_python(
    python: &Path,
    plan: &Plan,
    dir: &Path,
    step: &(dyn Fn() + Sync),
) -> Result<PythonSweep> {
    let script: PathBuf = dir.join("chunksize_sweep.py");
    std::fs::write(&script, SCRIPT).with_context(|| format!("writing {}", script.display()))?;
    let mut child = Command::new(python)
        .arg(&script)
        .args(["--work-ns", &join(&plan.work)])
        .args(["--chunksizes", &join(&plan.chunksizes)])
        .args(["--workers", &join(&plan.workers)])
        .args(["--reps", &plan.reps.to_string()])
        .args(["--target-ms", &plan.target.as_millis().to_string()])
        .args(["--max-items", &plan.max_items.to_string()])
        .arg("--progress")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let (json, messages) = std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut messages = Vec::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line == "progress" {
                    step();
                } else {
                    messages.push(line);
                }
            }
            messages
        });
        let mut json = String::new();
        let read = stdout.read_to_string(&mut json);
        let messages = reader.join().unwrap_or_default();
        (read.map(|_| json), messages)
    });
    let status = child.wait().context("waiting for the Python sweep")?;
    let json = json.context("reading the Python sweep's output")?;
    if !status.success() {
        let tail = messages[messages.len().saturating_sub(15)..].join("\n");
        bail!("the Python sweep failed ({status}):\n{tail}");
    }
    serde_json::from_str(&json).context("parsing the Python sweep's JSON")
}
