//! The worker pool: a few threads that run many instances' mailboxes, taking turns by tenant.
//!
//! An instance with pending jobs is runnable at most once (its `scheduled` flag); a worker runs a batch
//! of its jobs, then either makes it runnable again (more jobs arrived) or clears the flag. So one
//! instance never runs on two threads at once, and a busy instance cannot starve the others for more
//! than a batch.
//!
//! Runnable instances wait in one queue per tenant, and workers serve the tenants round robin: a tenant
//! with many busy instances (an attacker keeping three apps busy, say) gets one turn in the rotation
//! like any other tenant, not one per instance, so it cannot crowd out another tenant's work by
//! running more apps. Within a tenant, instances run in the order they became runnable.
//!
//! A tenant whose `max_workers` quota is set occupies at most that many workers at once: its turn is
//! skipped (it keeps its place in the rotation) while that many of its instances are running, so its
//! long calls leave the other workers to everyone else.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use super::instance::{InstanceCell, Job};
use crate::tenant::TenantId;

/// Jobs an instance runs before it yields its worker.
const BATCH: usize = 16;

/// Rounds of exponential spinning (1, 2, 4, ... 64 pause instructions, then 64 each) an idle worker
/// does before it sleeps: a few microseconds.
const IDLE_SPINS: u32 = 12;

/// The runnable instances, by tenant, and the tenants' turn order.
struct Queues<T> {
    /// Tenants with runnable instances, in turn order.
    /// **Invariant:** a tenant is here exactly once iff its list in `runnable` is non-empty.
    turns: VecDeque<TenantId>,
    /// Runnable instances per tenant, in the order they became runnable.
    runnable: HashMap<TenantId, VecDeque<T>>,
    /// Workers each tenant occupies right now.
    running: HashMap<TenantId, usize>,
    /// The pool is shutting down: workers exit.
    stopping: bool,
}

impl<T> Default for Queues<T> {
    fn default() -> Queues<T> {
        Queues { turns: VecDeque::new(), runnable: HashMap::new(), running: HashMap::new(), stopping: false }
    }
}

impl<T> Queues<T> {
    /// Adds `item` at the back of its tenant's list (and the tenant to the rotation if it was idle).
    fn push(&mut self, tenant: TenantId, item: T) {
        let list = self.runnable.entry(tenant).or_default();
        let was_idle = list.is_empty();
        list.push_back(item);
        if was_idle {
            self.turns.push_back(tenant);
        }
    }

    /// Takes the first item of the first tenant in turn order that may run another worker (`cap`:
    /// its `max_workers`, 0 for none), moving the tenant to the back of the rotation if it has more,
    /// and counts the worker it takes. Tenants at their cap keep their place.
    fn take_turn(&mut self, cap: impl Fn(&T) -> usize) -> Option<T> {
        for _ in 0..self.turns.len() {
            let Some(tenant) = self.turns.pop_front() else { break };
            let running = self.running.get(&tenant).copied().unwrap_or(0);
            let at_cap = self
                .runnable
                .get(&tenant)
                .and_then(|l| l.front())
                .is_some_and(|first| cap(first) != 0 && running >= cap(first));
            if at_cap {
                self.turns.push_back(tenant);
                continue;
            }
            let (item, more) = match self.runnable.get_mut(&tenant) {
                Some(list) => (list.pop_front(), !list.is_empty()),
                None => (None, false),
            };
            if more {
                self.turns.push_back(tenant);
            } else {
                self.runnable.remove(&tenant);
            }
            if item.is_some() {
                *self.running.entry(tenant).or_default() += 1;
                return item;
            }
        }
        None
    }

    /// A worker of `tenant` finished its batch.
    fn finished(&mut self, tenant: TenantId) {
        if let Some(n) = self.running.get_mut(&tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running.remove(&tenant);
            }
        }
    }
}

/// What the workers and the submitters share.
#[derive(Default)]
struct Scheduler {
    queues: Mutex<Queues<Arc<InstanceCell>>>,
    ready: Condvar,
    /// Instances runnable (a hint read without the lock, so spinning workers leave the lock to
    /// submitters).
    runnable: AtomicUsize,
}

impl Scheduler {
    /// Makes `cell` runnable (the caller set its `scheduled` flag).
    fn push(&self, cell: Arc<InstanceCell>) {
        let tenant = cell.tenant.id();
        let mut q = self.queues.lock();
        if q.stopping {
            // No worker will run it; keeping it would also keep the cell alive through a cycle (the
            // cell holds a handle to this scheduler).
            return;
        }
        q.push(tenant, cell);
        self.runnable.fetch_add(1, Ordering::Relaxed);
        drop(q);
        self.ready.notify_one();
    }

    /// The next instance to run: the first of the tenant whose turn it is; `None` once the pool is
    /// stopping (what is still runnable then is dropped: nobody waits for it, since the broker is being
    /// dropped, and a job that keeps re-posting itself must not hold the shutdown).
    ///
    /// An idle worker spins briefly (a few microseconds, never yielding its core) before it sleeps:
    /// calls often arrive microseconds apart, and a futex wake-up costs more than the call, while
    /// yielding in a loop would take CPU time from the tenants' work on a small machine.
    fn pop(&self) -> Option<Arc<InstanceCell>> {
        let mut spins = 0u32;
        loop {
            let mut q = self.queues.lock();
            loop {
                if q.stopping {
                    return None;
                }
                if let Some(cell) = q.take_turn(worker_cap) {
                    self.runnable.fetch_sub(1, Ordering::Relaxed);
                    return Some(cell);
                }
                if spins < IDLE_SPINS {
                    break;
                }
                // Checked and found empty under the lock that `push` takes before notifying: no
                // wake-up is lost.
                self.ready.wait(&mut q);
                spins = 0;
            }
            drop(q);
            for _ in 0..(1u32 << spins.min(6)) {
                if self.runnable.load(Ordering::Relaxed) > 0 {
                    break;
                }
                std::hint::spin_loop();
            }
            spins += 1;
        }
    }

    /// A worker finished running `tenant`'s batch: another of its instances may run now, so a worker
    /// waiting for one is woken.
    fn finished(&self, tenant: TenantId) {
        let mut q = self.queues.lock();
        q.finished(tenant);
        let waiting = q.runnable.contains_key(&tenant);
        drop(q);
        if waiting {
            self.ready.notify_one();
        }
    }

    /// Stops the workers and drops every runnable instance's entry (breaking the cell -> scheduler ->
    /// cell cycle).
    fn stop(&self) {
        let runnable = {
            let mut q = self.queues.lock();
            q.stopping = true;
            q.turns.clear();
            self.runnable.store(0, Ordering::Relaxed);
            std::mem::take(&mut q.runnable)
        };
        self.ready.notify_all();
        drop(runnable);
    }
}

/// Threads that drive instance mailboxes.
pub(crate) struct WorkerPool {
    scheduler: Arc<Scheduler>,
    threads: Vec<JoinHandle<()>>,
}

/// A cheap handle for posting jobs, held by instances so events can schedule their own delivery.
#[derive(Clone)]
pub(crate) struct PoolHandle {
    scheduler: Arc<Scheduler>,
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
            self.scheduler.push(Arc::clone(cell));
        }
    }
}

impl WorkerPool {
    /// Starts `workers` threads (at least one).
    pub(crate) fn new(workers: usize) -> std::io::Result<WorkerPool> {
        let scheduler = Arc::new(Scheduler::default());
        let mut threads = Vec::new();
        for i in 0..workers.max(1) {
            let s = Arc::clone(&scheduler);
            let spawned =
                std::thread::Builder::new().name(format!("broker-worker-{i}")).spawn(move || work(&s));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // Stop the threads already started before reporting.
                    scheduler.stop();
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(WorkerPool { scheduler, threads })
    }

    /// Posts a job to an instance's mailbox and makes sure a worker will run it.
    pub(crate) fn submit(&self, cell: &Arc<InstanceCell>, job: Job) {
        self.handle().submit(cell, job);
    }

    /// A handle for posting jobs later.
    pub(crate) fn handle(&self) -> PoolHandle {
        PoolHandle { scheduler: Arc::clone(&self.scheduler) }
    }
}

/// The most workers `cell`'s tenant may occupy at once (0: no cap).
fn worker_cap(cell: &Arc<InstanceCell>) -> usize {
    usize::try_from(cell.tenant.quotas().max_workers).unwrap_or(usize::MAX)
}

fn work(scheduler: &Scheduler) {
    while let Some(cell) = scheduler.pop() {
        cell.run_jobs(BATCH);
        scheduler.finished(cell.tenant.id());
        cell.scheduled.store(false, Ordering::SeqCst);
        // A job posted after the batch but before the flag was cleared saw `scheduled == true` and did not
        // make the cell runnable: pick it up here, unless a submitter already did. The fence pairs with
        // the one in `PoolHandle::submit`.
        fence(Ordering::SeqCst);
        if !cell.mailbox_rx.is_empty() && !cell.scheduled.swap(true, Ordering::SeqCst) {
            scheduler.push(cell);
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.scheduler.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Queues, TenantId};

    #[test]
    fn tenants_take_turns_however_many_instances_they_have() {
        let (a, b, c) = (TenantId(1), TenantId(2), TenantId(3));
        let mut q = Queues::default();
        for item in ["a1", "a2", "a3"] {
            q.push(a, item);
        }
        q.push(b, "b1");
        let first: Vec<_> = (0..3).filter_map(|_| q.take_turn(|_| 0)).collect();
        assert_eq!(first, ["a1", "b1", "a2"]);
        q.push(c, "c1");
        q.push(b, "b2");
        let rest: Vec<_> = std::iter::from_fn(|| q.take_turn(|_| 0)).collect();
        assert_eq!(rest, ["a3", "c1", "b2"]);
        assert!(q.turns.is_empty() && q.runnable.is_empty(), "an empty rotation holds nothing");
    }

    #[test]
    fn a_tenant_at_its_worker_cap_waits_while_others_run() {
        let (a, b) = (TenantId(1), TenantId(2));
        let mut q = Queues::default();
        for item in ["a1", "a2", "a3"] {
            q.push(a, item);
        }
        q.push(b, "b1");
        // Tenant a may occupy one worker.
        let cap = |item: &&str| if item.starts_with('a') { 1 } else { 0 };
        assert_eq!(q.take_turn(cap), Some("a1"));
        assert_eq!(q.take_turn(cap), Some("b1"), "a is at its cap: b goes next");
        assert_eq!(q.take_turn(cap), None, "only a has work, and it is at its cap");
        q.finished(a);
        assert_eq!(q.take_turn(cap), Some("a2"), "a's worker came back");
        q.finished(a);
        q.finished(b);
        assert_eq!(q.take_turn(cap), Some("a3"));
        q.finished(a);
        assert!(q.running.is_empty(), "every worker was given back");
    }
}
