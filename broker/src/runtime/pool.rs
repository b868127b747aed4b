//! The worker pool: a few threads that run many instances' mailboxes.
//!
//! An instance with pending jobs is on the run queue at most once (its `scheduled` flag); a worker runs
//! a batch of its jobs, then either re-queues it (more jobs arrived) or clears the flag. So one instance
//! never runs on two threads at once, and a busy instance cannot starve the others for more than a batch.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Receiver, Sender};

use super::instance::{InstanceCell, Job};

/// Jobs an instance runs before it yields its worker.
const BATCH: usize = 16;

enum Msg {
    Run(Arc<InstanceCell>),
    Stop,
}

/// Threads that drive instance mailboxes.
pub(crate) struct WorkerPool {
    queue: Sender<Msg>,
    threads: Vec<JoinHandle<()>>,
}

/// A cheap handle for posting jobs, held by instances so events can schedule their own delivery.
#[derive(Clone)]
pub(crate) struct PoolHandle {
    queue: Sender<Msg>,
}

impl PoolHandle {
    /// Posts a job to an instance's mailbox and makes sure a worker will run it.
    pub(crate) fn submit(&self, cell: &Arc<InstanceCell>, job: Job) {
        // The cell owns both ends of its mailbox, so this send cannot fail.
        let _ = cell.mailbox_tx.send(job);
        // Store (the job) then load (the flag), against the worker's store (the flag) then load (the
        // mailbox): without a full fence on both sides each could miss the other's store, and the job
        // would sit in a mailbox no worker is scheduled to run (a lost wake-up, seen as a hung call).
        fence(Ordering::SeqCst);
        if !cell.scheduled.swap(true, Ordering::SeqCst) {
            let _ = self.queue.send(Msg::Run(Arc::clone(cell)));
        }
    }
}

impl WorkerPool {
    /// Starts `workers` threads (at least one).
    pub(crate) fn new(workers: usize) -> std::io::Result<WorkerPool> {
        let (queue, rx) = unbounded::<Msg>();
        let mut threads = Vec::new();
        for i in 0..workers.max(1) {
            let (rx, queue) = (rx.clone(), queue.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("broker-worker-{i}"))
                    .spawn(move || work(&rx, &queue))?,
            );
        }
        Ok(WorkerPool { queue, threads })
    }

    /// Posts a job to an instance's mailbox and makes sure a worker will run it.
    pub(crate) fn submit(&self, cell: &Arc<InstanceCell>, job: Job) {
        self.handle().submit(cell, job);
    }

    /// A handle for posting jobs later.
    pub(crate) fn handle(&self) -> PoolHandle {
        PoolHandle { queue: self.queue.clone() }
    }
}

fn work(rx: &Receiver<Msg>, queue: &Sender<Msg>) {
    while let Ok(Msg::Run(cell)) = rx.recv() {
        cell.run_jobs(BATCH);
        cell.scheduled.store(false, Ordering::SeqCst);
        // A job posted after the batch but before the flag was cleared saw `scheduled == true` and did not
        // queue the cell: pick it up here, unless a submitter already re-queued it. The fence pairs with
        // the one in `PoolHandle::submit`.
        fence(Ordering::SeqCst);
        if !cell.mailbox_rx.is_empty() && !cell.scheduled.swap(true, Ordering::SeqCst) {
            let _ = queue.send(Msg::Run(cell));
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        for _ in &self.threads {
            let _ = self.queue.send(Msg::Stop);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
