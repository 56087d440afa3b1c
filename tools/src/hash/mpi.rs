//! `shmpool hash --mpi`: the engine's tasks go to the ranks of an MPI job instead of a local
//! pool.
//!
//! Started as `mpirun -n K shmpool hash --mpi [OPTIONS] PATH...`, every rank parses the same
//! command line and starts the cluster; ranks 1.. then serve (each with a pool of `--jobs`
//! processes) and exit, and rank 0 runs the same engine as one-machine `shmpool hash`: it walks,
//! keeps the window, cuts big BLAKE3 files into pieces and prints, so its output is the same
//! byte for byte. Only where a task runs changes: a task (many small files, one big file, or one
//! BLAKE3 piece) is one [`Cluster::apply_async`], handed to a rank with room. Every rank must see
//! the paths rank 0 walks (a shared file system, and the same working directory: `mpirun` starts
//! ranks in its own, `--wdir` changes it).

use std::cell::RefCell;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shmpool::cluster::{Cluster, ClusterResult};

use super::engine::{Msg, Reply, Task, Workers, run_task};

/// The engine's [`Workers`] over a [`Cluster`].
#[derive(Debug)]
pub(crate) struct ClusterWorkers<'c> {
    cluster: &'c Cluster,
    /// Tasks started and not yet answered.
    pending: RefCell<Vec<(u64, ClusterResult<'c, Reply>)>>,
}

impl<'c> ClusterWorkers<'c> {
    pub(crate) fn new(cluster: &'c Cluster) -> Self {
        ClusterWorkers {
            cluster,
            pending: RefCell::new(Vec::new()),
        }
    }
}

impl Workers for ClusterWorkers<'_> {
    fn processes(&self) -> usize {
        self.cluster.processes()
    }

    fn start(&self, id: u64, task: Task, _reply: mpsc::Sender<Msg>) -> anyhow::Result<()> {
        let r = self.cluster.apply_async(run_task, task)?;
        self.pending.borrow_mut().push((id, r));
        Ok(())
    }

    /// Drives the cluster (replies arrive only while rank 0 polls MPI) until a task is answered,
    /// a message comes on `rx` (Ctrl-C's), or `timeout` passes, sleeping between polls (at most
    /// 0.5 ms, a small part of a task). Polling is MPI's way: no event wakes this wait.
    fn wait(&self, rx: &mpsc::Receiver<Msg>, timeout: Option<Duration>) -> Option<Msg> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut nap = Duration::from_micros(20);
        loop {
            {
                let mut pending = self.pending.borrow_mut();
                if let Some(i) = pending.iter().position(|(_, r)| r.ready()) {
                    let (id, r) = pending.swap_remove(i);
                    return Some(Msg::Reply(id, r.get()));
                }
            }
            if let Ok(msg) = rx.try_recv() {
                return Some(msg);
            }
            let now = Instant::now();
            let nap_now = match deadline {
                Some(d) if now >= d => return None,
                Some(d) => nap.min(d - now),
                None => nap,
            };
            std::thread::sleep(nap_now);
            nap = (nap * 2).min(Duration::from_micros(500));
        }
    }
}
