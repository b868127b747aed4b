//! The worker pool: a few threads that run many instances, sharing them out among tenants by the
//! CPU time each has used.
//!
//! The pool runs anything [`Runnable`]: something with a tenant and a [`Mailbox`] of jobs (an instance).
//! A runnable with work to do is queued at most once (its mailbox's `scheduled` flag); a worker resumes
//! its suspended job or starts queued ones (a batch at most), until the job finishes or suspends, then
//! either queues it again (it was woken, or has more jobs) or clears the flag. So one
//! instance never runs on two threads at once. Calls are preempted: at each epoch tick a call yields
//! its worker if anything else is runnable (see `instance`), and a waiting host call parks without a
//! worker, so no call holds a worker for longer than a tick while others wait.
//!
//! Which tenant goes next is decided by CPU time, as Linux CFS does: every tenant has a virtual
//! runtime, the worker time its instances used divided by its `cpu_shares` weight, and the runnable
//! tenant with the smallest virtual runtime goes next (ties in round-robin order). A tenant that was
//! idle comes back no lower than the virtual runtime of the last tenant given a turn, so idling earns
//! no credit to starve the others with later; and one turn is charged at most a few ticks (a call
//! yields within a tick of anyone else wanting a worker), so using an idle machine earns no debt. A
//! tenant with many busy instances gets its weighted share, not one share per instance. Within a
//! tenant, instances run in the order they became runnable. New work of a tenant that is owed a worker
//! (its virtual runtime is no higher than a running tenant's, that tenant's current turn counted so
//! far) preempts at once rather than at the next tick, including a turn taken just before it arrived
//! whose call has not started or resumed yet ([`PoolHandle::preempted_this_turn`]).
//!
//! A tenant's blocking tasks (compiles) run on the workers too, as its turns: a task cannot be
//! preempted, so it is charged in full, as it runs, and at most one fewer task than workers runs at
//! once. A compile on a thread of its own would be one more busy thread than cores, and the kernel's
//! time slices among them all would delay every tenant's calls behind one tenant's uploads.
//!
//! A tenant whose `max_workers` quota is set occupies at most that many workers at once (its tasks
//! included): it is passed over (keeping its place) while that many of its turns are running, so its
//! long calls leave the other workers to everyone else.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::tenant::{Quotas, Tenant, TenantId};

/// The most worker time one turn is charged. A running call yields within a tick of other work
/// becoming runnable, so time beyond a few ticks in one turn was time no other tenant asked for:
/// charging it would let a tenant that used an idle machine be starved afterwards by one that was not
/// there (the scheduler is work-conserving). Host operations without an epoch check inside (one large
/// copy) can overrun by their own length; this undercharges them, and only them.
const MAX_CHARGE: Duration = Duration::from_millis(4 * super::engine::EPOCH_TICK_MS);

/// Jobs an instance starts in one turn before it gives its worker back.
const BATCH: usize = 16;

/// Rounds of exponential spinning (1, 2, 4, ... 64 pause instructions, then 64 each) an idle worker
/// does before it sleeps: a few microseconds.
const IDLE_SPINS: u32 = 12;

/// One tenant's place in the scheduler.
struct TenantQueue<T> {
    /// Its runnable instances, in the order they became runnable.
    runnable: VecDeque<T>,
    /// Workers it occupies right now.
    running: usize,
    /// Worker time used, in nanoseconds scaled by `Quotas::DEFAULT_CPU_SHARES / cpu_shares`.
    vruntime: u64,
    /// When its latest running turn started (none before its first), and the weight its time is
    /// charged at.
    started: Option<Instant>,
    shares: u64,
    /// Of `running`, the workers running its tasks.
    tasks: usize,
}

impl<T> TenantQueue<T> {
    /// Its virtual runtime with its latest running turn counted so far (at most [`MAX_CHARGE`]; tasks
    /// are counted as they run, see [`Queues::accrue`]).
    fn current(&self, now: Instant) -> u64 {
        let turn = match self.started {
            Some(at) if self.running > self.tasks => now.saturating_duration_since(at).min(MAX_CHARGE),
            _ => Duration::ZERO,
        };
        self.vruntime.saturating_add(weighted(turn, self.shares))
    }
}

/// The runnable instances, by tenant, and the tenants' turn order.
struct Queues<T> {
    /// Tenants with runnable instances, in round-robin order (which breaks ties of virtual runtime).
    /// **Invariant:** a tenant is here exactly once iff its `runnable` list is non-empty.
    turns: VecDeque<TenantId>,
    /// Tenants with runnable or running instances, and idle ones still ahead of `floor` (an idle one
    /// at or behind it would come back at `floor` anyway, so it is forgotten).
    tenants: HashMap<TenantId, TenantQueue<T>>,
    /// The virtual runtime of the last tenant given a turn (the least runnable one then); never
    /// decreases.
    floor: u64,
    /// The pool is shutting down: workers exit.
    stopping: bool,
    /// Tasks running now, and when their time was last added to their tenants' virtual runtimes.
    tasks: usize,
    accrued_at: Option<Instant>,
}

impl<T> Default for Queues<T> {
    fn default() -> Queues<T> {
        Queues {
            turns: VecDeque::new(),
            tenants: HashMap::new(),
            floor: 0,
            stopping: false,
            tasks: 0,
            accrued_at: None,
        }
    }
}

impl<T> Queues<T> {
    /// Adds `item` at the back of its tenant's list (and the tenant to the rotation if it had nothing
    /// runnable; one that was idle comes back no lower than the current floor).
    fn push(&mut self, tenant: TenantId, item: T) {
        let floor = self.floor;
        let q = self.tenants.entry(tenant).or_insert_with(|| TenantQueue {
            runnable: VecDeque::new(),
            running: 0,
            vruntime: floor,
            started: None,
            shares: Quotas::DEFAULT_CPU_SHARES,
            tasks: 0,
        });
        if q.runnable.is_empty() {
            if q.running == 0 {
                q.vruntime = q.vruntime.max(floor);
            }
            self.turns.push_back(tenant);
        }
        q.runnable.push_back(item);
    }

    /// Whether `tenant` (with `max_workers` `cap`, 0 for none) is owed a worker before another tenant
    /// that holds one at `now`: its virtual runtime is no higher than that tenant's with its current
    /// turn counted so far (as CFS updates the running thread's before it decides on a wake-up).
    /// A tenant at its worker cap is owed nothing: it could not take a freed worker.
    fn owed(&self, tenant: TenantId, cap: usize, now: Instant) -> bool {
        let Some(q) = self.tenants.get(&tenant) else { return false };
        if cap != 0 && q.running >= cap {
            return false;
        }
        let mine = q.vruntime;
        self.tenants.iter().any(|(t, o)| *t != tenant && o.running > 0 && o.current(now) >= mine)
    }

    /// Takes the first item of the runnable tenant with the least virtual runtime whose first item may
    /// run now (`may_run`, given the item and the workers its tenant occupies: its `max_workers` cap;
    /// the first in rotation order among equals), moves the tenant to the back of the rotation if it
    /// has more, and counts the worker it takes.
    fn take_turn(&mut self, may_run: impl Fn(&T, usize) -> bool) -> Option<T> {
        let mut best: Option<(usize, u64)> = None;
        for (i, tenant) in self.turns.iter().enumerate() {
            let Some(q) = self.tenants.get(tenant) else { continue };
            let Some(first) = q.runnable.front() else { continue };
            if !may_run(first, q.running) {
                continue;
            }
            if best.is_none_or(|(_, v)| q.vruntime < v) {
                best = Some((i, q.vruntime));
            }
        }
        let (i, vruntime) = best?;
        let tenant = self.turns.remove(i)?;
        let q = self.tenants.get_mut(&tenant)?;
        let item = q.runnable.pop_front();
        q.running += 1;
        if !q.runnable.is_empty() {
            self.turns.push_back(tenant);
        }
        self.floor = self.floor.max(vruntime);
        item
    }

    /// A worker of `tenant` finished its turn after `ran`, charged at weight `shares` (at most
    /// [`MAX_CHARGE`]: the turn yielded as soon as anyone else wanted the worker).
    fn finished(&mut self, tenant: TenantId, ran: Duration, shares: u64) {
        self.charge(tenant, ran.min(MAX_CHARGE), shares);
    }

    /// Adds the time tasks ran since the last call to their tenants' virtual runtimes, as it passes
    /// (as CFS charges the running thread at every tick): a task runs for up to seconds, and its tenant
    /// must not look owed a worker meanwhile. A task is never preempted, so all of its time is charged,
    /// not [`MAX_CHARGE`] of it.
    fn accrue(&mut self, now: Instant) {
        if self.tasks == 0 {
            self.accrued_at = None;
            return;
        }
        let since = self.accrued_at.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        self.accrued_at = Some(now);
        for q in self.tenants.values_mut().filter(|q| q.tasks > 0) {
            let ran = since.saturating_mul(u32::try_from(q.tasks).unwrap_or(u32::MAX));
            q.vruntime = q.vruntime.saturating_add(weighted(ran, q.shares));
        }
    }

    /// `tenant`'s turn just taken (by `take_turn`) started at `now`, charged at weight `shares`.
    fn turn_started(&mut self, tenant: TenantId, shares: u64, now: Instant) {
        if let Some(q) = self.tenants.get_mut(&tenant) {
            q.started = Some(now);
            q.shares = shares;
        }
    }

    /// `tenant`'s turn just taken (by `take_turn`) is a task charged at weight `shares`.
    fn task_started(&mut self, tenant: TenantId, shares: u64, now: Instant) {
        self.accrue(now);
        let Some(q) = self.tenants.get_mut(&tenant) else { return };
        q.tasks += 1;
        q.shares = shares;
        self.tasks += 1;
        self.accrued_at = Some(now);
    }

    /// A worker of `tenant` finished a task; its time was charged as it ran.
    fn task_finished(&mut self, tenant: TenantId, now: Instant) {
        self.accrue(now);
        let Some(q) = self.tenants.get_mut(&tenant) else { return };
        q.tasks = q.tasks.saturating_sub(1);
        self.tasks = self.tasks.saturating_sub(1);
        self.charge(tenant, Duration::ZERO, Quotas::DEFAULT_CPU_SHARES);
    }

    /// Gives `tenant`'s worker back and adds `ran` at weight `shares` to its virtual runtime.
    fn charge(&mut self, tenant: TenantId, ran: Duration, shares: u64) {
        let Some(q) = self.tenants.get_mut(&tenant) else { return };
        q.running = q.running.saturating_sub(1);
        q.vruntime = q.vruntime.saturating_add(weighted(ran, shares));
        if q.running == 0 && q.runnable.is_empty() && q.vruntime <= self.floor {
            self.tenants.remove(&tenant);
        }
    }

    /// Whether `tenant` has runnable instances.
    fn has_runnable(&self, tenant: TenantId) -> bool {
        self.tenants.get(&tenant).is_some_and(|q| !q.runnable.is_empty())
    }
}

/// `ran` in nanoseconds, scaled by the default weight over `shares` (at least 1).
fn weighted(ran: Duration, shares: u64) -> u64 {
    let ns = u128::from(u64::try_from(ran.as_nanos()).unwrap_or(u64::MAX));
    let scaled = ns * u128::from(Quotas::DEFAULT_CPU_SHARES) / u128::from(shares.max(1));
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// Something the pool runs in turns, with a [`Mailbox`] of its jobs: an instance (see `instance`). The
/// pool knows nothing else about it: it queues it when its mailbox says so, charges its turns to its
/// tenant, and queues it again when a turn ends with more to do.
pub(crate) trait Runnable: Send + Sync + 'static {
    /// What its mailbox holds.
    type Job: Send + 'static;

    /// The tenant its turns are charged to.
    fn tenant(&self) -> &Arc<Tenant>;

    /// Its jobs and scheduling flags.
    fn mailbox(&self) -> &Mailbox<Self::Job>;

    /// Runs one turn on the calling thread (a worker, or one in [`PoolHandle::run_here`]), which holds
    /// it: resumes a suspended job, if any, then
    /// starts queued jobs ([`Mailbox::next_job`]), at most `max`, until one suspends
    /// ([`Mailbox::set_suspended`]) or none is left.
    fn run_turn(self: &Arc<Self>, max: usize);

    /// It was queued again with a job suspended (woken, or preempted with more to do): the time until
    /// its next turn is waiting, not running.
    fn queued_suspended(&self) {}
}

/// A [`Runnable`] with its job type erased, as the run queue holds it.
trait Turn: Send + Sync {
    fn tenant(&self) -> &Arc<Tenant>;

    /// Runs a turn; true if it must be queued again.
    fn take_turn(self: Arc<Self>, max: usize) -> bool;
}

impl<R: Runnable> Turn for R {
    fn tenant(&self) -> &Arc<Tenant> {
        Runnable::tenant(self)
    }

    fn take_turn(self: Arc<Self>, max: usize) -> bool {
        self.run_turn(max);
        let mailbox = self.mailbox();
        let requeue = mailbox.end_turn();
        if requeue && mailbox.suspended.load(Ordering::Relaxed) {
            self.queued_suspended();
        }
        requeue
    }
}

/// A runnable's jobs, and the flags that keep it in the run queue at most once.
///
/// **Invariant:** `scheduled` is set while the owner is queued or running, so it is queued at most
/// once and never runs on two threads (workers, or one in [`PoolHandle::run_here`]). Posting (job,
/// then flag) and waking (`woken`, then flag) race with the end of a turn (flag, then jobs and `woken`); each side has a full fence between its store
/// and its load, so at least one of them sees the other and the owner is queued: no lost wake-up.
pub(crate) struct Mailbox<J> {
    tx: crossbeam_channel::Sender<J>,
    rx: crossbeam_channel::Receiver<J>,
    scheduled: AtomicBool,
    /// Its owner was woken since its last turn began: it must run again.
    woken: AtomicBool,
    /// A job is suspended (only the thread holding the owner writes this).
    suspended: AtomicBool,
}

impl<J> Default for Mailbox<J> {
    fn default() -> Mailbox<J> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Mailbox {
            tx,
            rx,
            scheduled: AtomicBool::new(false),
            woken: AtomicBool::new(false),
            suspended: AtomicBool::new(false),
        }
    }
}

impl<J> Mailbox<J> {
    /// Posts a job; true if the caller took the owner's place in the run queue (and must queue it).
    fn post(&self, job: J) -> bool {
        // The mailbox owns both ends of its channel, so this send cannot fail.
        let _ = self.tx.send(job);
        // Store (the job) then load (the flag), against the worker's store (the flag) then load (the
        // mailbox): without a full fence on both sides each could miss the other's store, and the job
        // would sit in a mailbox no worker is scheduled to run (a lost wake-up, seen as a hung call).
        fence(Ordering::SeqCst);
        !self.scheduled.swap(true, Ordering::SeqCst)
    }

    /// Marks the owner woken; true if the caller took its place in the run queue.
    fn wake(&self) -> bool {
        self.woken.store(true, Ordering::SeqCst);
        // Store (woken) then load (scheduled), against the worker's store (scheduled) then load
        // (woken): see `end_turn`.
        fence(Ordering::SeqCst);
        !self.scheduled.swap(true, Ordering::SeqCst)
    }

    /// Called by the owner as its turn begins: a wake-up from now on is kept for `end_turn`. A swap, so
    /// the turn sees what the waker's caller wrote before waking (an interrupt's kill flag).
    pub(crate) fn begin_turn(&self) {
        self.woken.swap(false, Ordering::SeqCst);
    }

    /// The next queued job, if any.
    pub(crate) fn next_job(&self) -> Option<J> {
        self.rx.try_recv().ok()
    }

    /// Records whether the owner's current job is suspended (it then starts no other job).
    pub(crate) fn set_suspended(&self, suspended: bool) {
        self.suspended.store(suspended, Ordering::Relaxed);
    }

    /// After a turn: clears `scheduled`, then takes the owner's place again if it was woken meanwhile
    /// or has jobs it can start. True if the caller must queue it again.
    fn end_turn(&self) -> bool {
        self.scheduled.store(false, Ordering::SeqCst);
        // Pairs with the fences in `post` and `wake`: a job posted or a wake-up made during the turn,
        // which saw `scheduled == true` and so did not queue the owner, is seen here.
        fence(Ordering::SeqCst);
        let suspended = self.suspended.load(Ordering::Relaxed);
        let runnable = self.woken.load(Ordering::SeqCst) || (!suspended && !self.rx.is_empty());
        runnable && !self.scheduled.swap(true, Ordering::SeqCst)
    }
}

/// Work a worker takes a turn at.
enum Work {
    /// A runnable with jobs to run or a job to resume.
    Runnable(Arc<dyn Turn>),
    /// A tenant's blocking task.
    Task(Task),
}

/// A closure run once on a worker, as a turn of its tenant: compiling a module.
///
/// Compiling takes a core for up to seconds and cannot be preempted. On a thread of its own it would
/// be one more busy thread than the workers, and the kernel would share the cores among them all, so
/// every tenant's calls would wait kernel time slices behind one tenant's uploads. On a worker it takes
/// that tenant's seat, counts against its `max_workers` and its CPU time, and the other workers stay
/// with the other tenants.
struct Task {
    tenant: Arc<Tenant>,
    run: Box<dyn FnOnce() + Send>,
}

impl Work {
    fn tenant(&self) -> &Arc<Tenant> {
        match self {
            Work::Runnable(r) => r.tenant(),
            Work::Task(task) => &task.tenant,
        }
    }
}

/// What the workers and the submitters share.
struct Scheduler {
    queues: Mutex<Queues<Work>>,
    ready: Condvar,
    /// Instances runnable (a hint read without the lock, so spinning workers leave the lock to
    /// submitters).
    runnable: AtomicUsize,
    /// Workers running an instance right now, and how many there are.
    busy: AtomicUsize,
    workers: usize,
    /// How many workers may run tasks at once: one fewer than the workers, so a task never holds every
    /// worker (calls are preempted; tasks are not).
    task_limit: usize,
    /// The engine whose epoch is advanced to preempt running calls at once (see `push`).
    engine: wasmtime::Engine,
    /// The tokio runtime host futures may need (WASI's timers), entered by every thread that runs turns.
    context: Option<tokio::runtime::Handle>,
    /// Pushes so far that preempted running calls, counted under the queue lock. A turn notes the
    /// count as it is taken ([`TURN_MARK`]); a call whose count has moved since yields at its next
    /// epoch check, even one that missed the epoch advance (see [`PoolHandle::preempted_this_turn`]).
    preempts: AtomicU64,
}

thread_local! {
    /// [`Scheduler::preempts`] when this thread took its current turn.
    static TURN_MARK: Cell<u64> = const { Cell::new(0) };
    /// This thread is one of the pool's workers.
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
    /// When this thread, not a worker, started the turn of a runnable it is running
    /// ([`PoolHandle::run_here`]), if it is running one.
    static HERE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// How long a turn on a thread that is not a worker ([`PoolHandle::run_here`]) may have run when an
/// epoch tick comes and still go on: a short call that started just before a tick is not moved to a
/// worker for it. So the thread is back within a tick plus this.
pub(crate) const HERE_GRACE: Duration = Duration::from_millis(1);

/// What [`PoolHandle::run_here`] did with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RanHere {
    /// The job ran on the calling thread and finished there, in `ran`.
    Finished(Duration),
    /// The job started on the calling thread and suspended (it yielded at an epoch tick, or waits): a
    /// worker goes on with it.
    Suspended(Duration),
    /// Work was ahead of the job (queued jobs, or a suspended one): the job went to the mailbox and the
    /// runnable to the workers, in order.
    Queued,
}

/// Marks the calling thread as running a turn of its own until dropped, and restores its turn mark.
struct HereTurn {
    mark: u64,
}

impl HereTurn {
    fn enter(preempts: u64, started: Instant) -> HereTurn {
        HERE.set(Some(started));
        HereTurn { mark: TURN_MARK.replace(preempts) }
    }
}

impl Drop for HereTurn {
    fn drop(&mut self) {
        HERE.set(None);
        TURN_MARK.set(self.mark);
    }
}

/// Why an instance became runnable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// New work: a job was posted, or a parked call was woken.
    New,
    /// A worker queued it again after its turn (it yielded, or has more jobs).
    Again,
}

impl Scheduler {
    /// Makes `item` runnable (for an instance, the caller set its `scheduled` flag).
    ///
    /// New work of a tenant that is owed a worker (its virtual runtime is lower than that of a tenant
    /// running now), arriving while every worker is busy, advances the engine's epoch: every running
    /// call reaches its epoch check at once and yields, instead of at the next tick. So a tenant's call
    /// waits microseconds, not a tick, for a worker that spinners hold. Work queued again after a turn
    /// never does this (two spinners would make each other yield without end).
    fn push(&self, item: Work, arrival: Arrival) {
        let tenant = item.tenant().id();
        let cap = worker_cap(item.tenant());
        let mut q = self.queues.lock();
        if q.stopping {
            // No worker will run it; keeping it would also keep the cell alive through a cycle (the
            // cell holds a handle to this scheduler). A task's caller learns from its dropped channel.
            return;
        }
        q.push(tenant, item);
        let preempt = arrival == Arrival::New && self.busy.load(Ordering::Relaxed) >= self.workers && {
            let now = Instant::now();
            q.accrue(now);
            q.owed(tenant, cap, now)
        };
        if preempt {
            self.preempts.fetch_add(1, Ordering::Relaxed);
        }
        self.runnable.fetch_add(1, Ordering::Relaxed);
        drop(q);
        self.ready.notify_one();
        if preempt {
            // Orders the count above before the advance, for a call that reads the epoch and then the
            // count (see `PoolHandle::preempted_this_turn`): one that sees the advance sees the count.
            fence(Ordering::Release);
            self.engine.increment_epoch();
        }
    }

    /// The next instance to run: the first of the tenant whose turn it is; `None` once the pool is
    /// stopping (what is still runnable then is dropped: nobody waits for it, since the broker is being
    /// dropped, and a job that keeps re-posting itself must not hold the shutdown).
    ///
    /// An idle worker spins briefly (a few microseconds, never yielding its core) before it sleeps:
    /// calls often arrive microseconds apart, and a futex wake-up costs more than the call, while
    /// yielding in a loop would take CPU time from the tenants' work on a small machine.
    fn pop(&self) -> Option<Work> {
        let mut spins = 0u32;
        loop {
            let mut q = self.queues.lock();
            loop {
                if q.stopping {
                    return None;
                }
                let now = (q.tasks > 0).then(Instant::now);
                if let Some(now) = now {
                    q.accrue(now);
                }
                let tasks_full = q.tasks >= self.task_limit;
                let may_run = |item: &Work, running: usize| {
                    let cap = worker_cap(item.tenant());
                    (cap == 0 || running < cap) && !(tasks_full && matches!(item, Work::Task(_)))
                };
                if let Some(item) = q.take_turn(may_run) {
                    // Under the lock `push` counts preemptions under: a push ordered before this turn
                    // was taken (and so lost to it) is in the mark; one after is not.
                    TURN_MARK.set(self.preempts.load(Ordering::Relaxed));
                    self.runnable.fetch_sub(1, Ordering::Relaxed);
                    // Counted under the lock `push` takes, so a push that finds every worker busy and
                    // preempts sees this one too (the caller gives it back after its turn).
                    self.busy.fetch_add(1, Ordering::Relaxed);
                    let now = now.unwrap_or_else(Instant::now);
                    let (tenant, shares) = (item.tenant().id(), item.tenant().quotas().cpu_shares);
                    if matches!(item, Work::Task(_)) {
                        q.task_started(tenant, shares, now);
                    } else {
                        q.turn_started(tenant, shares, now);
                    }
                    return Some(item);
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

    /// A worker finished running `tenant`'s turn after `ran` (a task's if `task`): it is charged, and
    /// another of its instances (or another task) may run now, so a worker waiting for one is woken.
    fn finished(&self, tenant: TenantId, ran: Duration, shares: u64, task: bool) {
        let mut q = self.queues.lock();
        if task {
            q.task_finished(tenant, Instant::now());
        } else {
            q.finished(tenant, ran, shares);
        }
        let waiting = task || q.has_runnable(tenant);
        drop(q);
        if waiting {
            self.ready.notify_one();
        }
    }

    /// Adds a turn run on a thread that is not a worker to `tenant`'s virtual runtime, if the tenant is
    /// in the scheduler (running or runnable, or idle ahead of the floor); an idle tenant comes back at
    /// the floor anyway, so there is nothing to charge it.
    fn charge_here(&self, tenant: &Tenant, ran: Duration) {
        let mut q = self.queues.lock();
        if let Some(t) = q.tenants.get_mut(&tenant.id()) {
            t.vruntime = t.vruntime.saturating_add(weighted(ran.min(MAX_CHARGE), tenant.quotas().cpu_shares));
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
            std::mem::take(&mut q.tenants)
        };
        self.ready.notify_all();
        drop(runnable);
    }
}

/// Threads that drive runnables' mailboxes.
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
    /// Posts a job to a runnable's mailbox and makes sure a worker will run it.
    pub(crate) fn submit<R: Runnable>(&self, runnable: &Arc<R>, job: R::Job) {
        if runnable.mailbox().post(job) {
            self.scheduler.push(Work::Runnable(Arc::clone(runnable) as Arc<dyn Turn>), Arrival::New);
        }
    }

    /// Makes a runnable run again (its suspended job was woken).
    pub(crate) fn wake<R: Runnable>(&self, runnable: &Arc<R>) {
        if runnable.mailbox().wake() {
            runnable.queued_suspended();
            self.scheduler.push(Work::Runnable(Arc::clone(runnable) as Arc<dyn Turn>), Arrival::New);
        }
    }

    /// Runs `job` of `runnable` on the calling thread, as one turn of it, if nothing else of it is queued
    /// or running: the hop to a worker (a wake-up and two context switches) costs more than a short
    /// callback. The turn takes the runnable's place in the run queue (its `scheduled` flag), so it never
    /// runs beside a worker's turn of it, and a job posted meanwhile (even just before this job, by a
    /// poster that found the flag taken) goes to a worker after the turn, as it would after a worker's
    /// turn. A call in it yields at an epoch tick once the turn is [`HERE_GRACE`] old
    /// ([`PoolHandle::yield_here`]), and a worker resumes it: the calling thread is given back within a
    /// tick and a grace, whatever the job does (but a single host operation without an epoch check).
    ///
    /// The caller gets `job` back, to submit it, when it calls from a worker or from a turn of its own
    /// (a callback's host call), or when the runnable is queued or running elsewhere.
    ///
    /// The time is charged to the tenant's virtual runtime as a worker's turn is (but no worker ran it,
    /// so the tenant's `max_workers` cap does not count it: the calling thread is the host's, which
    /// chose to run it, and callers bound it, `InstanceCell::deliver_here`).
    pub(crate) fn run_here<R: Runnable>(&self, runnable: &Arc<R>, job: R::Job) -> Result<RanHere, R::Job> {
        if !PoolHandle::may_run_here() {
            return Err(job);
        }
        let mailbox = runnable.mailbox();
        if mailbox.scheduled.swap(true, Ordering::SeqCst) {
            return Err(job);
        }
        // The runnable's place is ours: no worker runs it and nobody else queues it until we give it up.
        // The mailbox owns both ends of its channel, so this send cannot fail. Sent first, so a job
        // posted before it (whose poster saw the flag set and left the runnable to us) is seen below:
        // only the holder of the flag takes jobs, so the count cannot shrink meanwhile.
        let _ = mailbox.tx.send(job);
        let ahead = mailbox.suspended.load(Ordering::Relaxed) || mailbox.rx.len() > 1;
        if ahead {
            self.scheduler.push(Work::Runnable(Arc::clone(runnable) as Arc<dyn Turn>), Arrival::New);
            return Ok(RanHere::Queued);
        }
        let started = Instant::now();
        let suspended = {
            // As on a worker: host futures (WASI's timers) find their runtime.
            let _entered = self.scheduler.context.as_ref().map(tokio::runtime::Handle::enter);
            let _here = HereTurn::enter(self.scheduler.preempts.load(Ordering::Relaxed), started);
            runnable.run_turn(1);
            mailbox.suspended.load(Ordering::Relaxed)
        };
        let ran = started.elapsed();
        // Charged to the tenant's virtual runtime like a worker's turn, so time its callbacks take on
        // writers' threads counts against its share of the workers.
        self.scheduler.charge_here(runnable.tenant(), ran);
        if mailbox.end_turn() {
            // A job posted during the turn is new work, which may preempt; a suspended job is not.
            let arrival = if suspended {
                runnable.queued_suspended();
                Arrival::Again
            } else {
                Arrival::New
            };
            self.scheduler.push(Work::Runnable(Arc::clone(runnable) as Arc<dyn Turn>), arrival);
        }
        Ok(if suspended { RanHere::Suspended(ran) } else { RanHere::Finished(ran) })
    }

    /// Whether [`PoolHandle::run_here`] may run a turn on the calling thread at all: not from a worker,
    /// nor from inside a turn of its own.
    pub(crate) fn may_run_here() -> bool {
        !ON_WORKER.get() && HERE.get().is_none()
    }

    /// If the calling thread is running a turn of its own ([`PoolHandle::run_here`]): whether it has
    /// run for [`HERE_GRACE`] or more, so a call in it yields at this epoch check and the thread is
    /// back with its owner within a tick and a grace (one that merely started just before a tick goes
    /// on). Nothing else decides it: work waiting for a worker gains nothing from this thread.
    pub(super) fn yield_here() -> Option<bool> {
        HERE.get().map(|since| since.elapsed() >= HERE_GRACE)
    }

    /// Whether instances wait for a worker: a long call then yields its own at the next tick.
    pub(super) fn contended(&self) -> bool {
        self.scheduler.runnable.load(Ordering::Relaxed) > 0
    }

    /// Whether work owed a worker arrived since the calling worker took its current turn (so the
    /// turn must end at once). Called from a call's epoch check, which runs on the thread polling it.
    ///
    /// The epoch advance that preempts can land while a call is suspended or not yet started (a worker
    /// took the turn, the push came next), and wasmtime sets a resumed or new call's deadline from the
    /// epoch as it is then: the advance is absorbed, and the call would run on until the next tick.
    /// So a call starting checks this after it sets its deadline, and a resumed one at its first epoch
    /// check, which comes at once.
    pub(super) fn preempted_this_turn(&self) -> bool {
        self.scheduler.preempts.load(Ordering::Relaxed) != TURN_MARK.get()
    }
}

impl WorkerPool {
    /// Starts `workers` threads (at least one) that run calls on `engine`, at `priority`, inside
    /// `context` (the tokio runtime host futures may need) if given.
    pub(crate) fn new(
        workers: usize,
        engine: wasmtime::Engine,
        priority: super::WorkerPriority,
        context: Option<tokio::runtime::Handle>,
    ) -> std::io::Result<WorkerPool> {
        let scheduler = Arc::new(Scheduler {
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
            runnable: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            workers: workers.max(1),
            task_limit: workers.saturating_sub(1).max(1),
            engine,
            context: context.clone(),
            preempts: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        for i in 0..workers.max(1) {
            let s = Arc::clone(&scheduler);
            let context = context.clone();
            let spawned = std::thread::Builder::new().name(format!("broker-worker-{i}")).spawn(move || {
                // Host futures that need a tokio runtime (WASI's timers) find it from here.
                let _entered = context.as_ref().map(tokio::runtime::Handle::enter);
                work(&s, priority);
            });
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

    /// Posts a job to a runnable's mailbox and makes sure a worker will run it.
    pub(crate) fn submit<R: Runnable>(&self, runnable: &Arc<R>, job: R::Job) {
        self.handle().submit(runnable, job);
    }

    /// A handle for posting jobs later.
    pub(crate) fn handle(&self) -> PoolHandle {
        PoolHandle { scheduler: Arc::clone(&self.scheduler) }
    }

    /// Runs `task` on a worker as one turn of `tenant` (see [`Task`]) and waits for its result, which
    /// is `None` if the pool stopped first or the task panicked. At most one fewer task than workers
    /// run at once, so calls always keep a worker. Must not be called from a worker (it would wait for itself).
    pub(crate) fn run_task<R: Send + 'static>(
        &self,
        tenant: &Arc<Tenant>,
        task: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = super::reply::reply();
        let run = Box::new(move || tx.send(task()));
        self.scheduler.push(Work::Task(Task { tenant: Arc::clone(tenant), run }), Arrival::New);
        rx.recv()
    }
}

/// The most workers `tenant` may occupy at once (0: no cap).
fn worker_cap(tenant: &Tenant) -> usize {
    usize::try_from(tenant.quotas().max_workers).unwrap_or(usize::MAX)
}

fn work(scheduler: &Scheduler, priority: super::WorkerPriority) {
    super::priority::lower_this_thread(priority);
    ON_WORKER.set(true);
    while let Some(item) = scheduler.pop() {
        let started = Instant::now();
        match item {
            Work::Runnable(runnable) => {
                let again = Arc::clone(&runnable).take_turn(BATCH);
                scheduler.busy.fetch_sub(1, Ordering::Relaxed);
                let tenant = runnable.tenant();
                scheduler.finished(tenant.id(), started.elapsed(), tenant.quotas().cpu_shares, false);
                if again {
                    scheduler.push(Work::Runnable(runnable), Arrival::Again);
                }
            }
            Work::Task(Task { tenant, run }) => {
                // A task that panics (a compiler bug) drops its reply unsent, so its caller is told,
                // and must not take this worker, and the pool's count of running tasks, with it.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).is_err() {
                    tracing::error!(tenant = %tenant.name(), "a blocking task panicked; its caller gets no result");
                }
                scheduler.busy.fetch_sub(1, Ordering::Relaxed);
                scheduler.finished(tenant.id(), started.elapsed(), tenant.quotas().cpu_shares, true);
            }
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
    use std::time::{Duration, Instant};

    use std::sync::Arc;

    use crossbeam_channel::bounded;

    use super::super::WorkerPriority;
    use super::{weighted, Mailbox, PoolHandle, Queues, RanHere, Runnable, TenantId, WorkerPool, MAX_CHARGE};
    use crate::name::Name;
    use crate::tenant::{Quotas, Tenant};

    const DEFAULT_CPU_SHARES: u64 = Quotas::DEFAULT_CPU_SHARES;

    const MS: Duration = Duration::from_millis(1);

    /// Lets every item run.
    fn any(_: &&str, _: usize) -> bool {
        true
    }

    /// Queues where `a` and then `b` each took a worker (with items "a1" and "b1").
    fn both_running(a: TenantId, b: TenantId) -> Queues<&'static str> {
        let mut q = Queues::default();
        q.push(a, "a1");
        q.push(b, "b1");
        assert_eq!(q.take_turn(any), Some("a1"));
        assert_eq!(q.take_turn(any), Some("b1"));
        q
    }

    #[test]
    fn tenants_take_turns_however_many_instances_they_have() {
        let (a, b, c) = (TenantId(1), TenantId(2), TenantId(3));
        let mut q = Queues::default();
        for item in ["a1", "a2", "a3"] {
            q.push(a, item);
        }
        q.push(b, "b1");
        let first: Vec<_> = (0..3).filter_map(|_| q.take_turn(any)).collect();
        assert_eq!(first, ["a1", "b1", "a2"], "equal virtual runtimes go round robin");
        q.push(c, "c1");
        q.push(b, "b2");
        let rest: Vec<_> = std::iter::from_fn(|| q.take_turn(any)).collect();
        assert_eq!(rest, ["a3", "c1", "b2"]);
        assert!(q.turns.is_empty(), "an empty rotation holds nothing");
        for t in [a, a, a, b, b, c] {
            q.finished(t, Duration::ZERO, DEFAULT_CPU_SHARES);
        }
        assert!(q.tenants.is_empty(), "idle tenants at the floor are forgotten");
    }

    #[test]
    fn the_tenant_that_used_the_least_cpu_goes_next() {
        let (a, b) = (TenantId(1), TenantId(2));
        let mut q = both_running(a, b);
        // a spun for 5 ms, b ran 1 ms; both stay runnable.
        q.finished(a, 5 * MS, DEFAULT_CPU_SHARES);
        q.push(a, "a2");
        q.finished(b, MS, DEFAULT_CPU_SHARES);
        q.push(b, "b2");
        q.push(b, "b3");
        assert_eq!(q.take_turn(any), Some("b2"), "b used less CPU, though a was first in the rotation");
        q.finished(b, MS, DEFAULT_CPU_SHARES);
        assert_eq!(q.take_turn(any), Some("b3"), "b at 2 ms is still behind a at 5 ms");
        q.finished(b, 4 * MS, DEFAULT_CPU_SHARES);
        assert_eq!(q.take_turn(any), Some("a2"), "b at 6 ms has passed a");
    }

    #[test]
    fn cpu_time_is_charged_by_weight() {
        let (a, b) = (TenantId(1), TenantId(2));
        let mut q = both_running(a, b);
        // a has twice b's weight: 4 ms of a count as 2 ms, 3 ms of b as 3 ms.
        q.finished(a, 4 * MS, 2 * DEFAULT_CPU_SHARES);
        q.finished(b, 3 * MS, DEFAULT_CPU_SHARES);
        q.push(b, "b2");
        q.push(a, "a2");
        assert_eq!(q.take_turn(any), Some("a2"), "a's 4 ms weigh less than b's 3 ms");
    }

    #[test]
    fn an_idle_tenant_comes_back_without_credit() {
        let (a, b) = (TenantId(1), TenantId(2));
        let mut q = Queues::default();
        // a runs alone for a while: 10 turns of 5 ms.
        for _ in 0..10 {
            q.push(a, "a");
            assert_eq!(q.take_turn(any), Some("a"));
            q.finished(a, 5 * MS, DEFAULT_CPU_SHARES);
        }
        q.push(a, "a");
        assert_eq!(q.take_turn(any), Some("a"));
        // b arrives while a runs: it starts at the floor (a's virtual runtime at its last turn), not
        // at 0, so it does not get 50 ms of the workers to itself before a runs again.
        q.push(b, "b");
        q.finished(a, 5 * MS, DEFAULT_CPU_SHARES);
        q.push(a, "a-next");
        assert_eq!(q.take_turn(any), Some("b"));
        q.finished(b, 6 * MS, DEFAULT_CPU_SHARES);
        q.push(b, "b-next");
        assert_eq!(q.take_turn(any), Some("a-next"), "b's 6 ms put it past a");
    }

    #[test]
    fn a_long_turn_on_an_idle_machine_earns_no_debt() {
        let (a, b) = (TenantId(1), TenantId(2));
        let mut q = Queues::default();
        q.push(a, "a");
        assert_eq!(q.take_turn(any), Some("a"));
        // b arrives while a's call has been running alone for a minute; a yields at the next tick.
        q.push(b, "b");
        q.finished(a, Duration::from_secs(60), DEFAULT_CPU_SHARES);
        q.push(a, "a");
        // b always has more work, in 5 ms turns. a was charged a few ticks, not a minute, so it gets a
        // turn again after a few of b's, not after a minute of them.
        let mut b_turns = 0;
        loop {
            match q.take_turn(any) {
                Some("b") => {
                    b_turns += 1;
                    assert!(b_turns <= 8, "a starved after using an idle machine");
                    q.finished(b, 5 * MS, DEFAULT_CPU_SHARES);
                    q.push(b, "b");
                }
                other => {
                    assert_eq!(other, Some("a"));
                    break;
                }
            }
        }
        assert!(b_turns >= 1, "b went first: a had used more");
    }

    #[test]
    fn new_work_of_a_tenant_that_used_less_is_owed_a_running_tenants_worker() {
        let now = Instant::now();
        let (a, b) = (TenantId(1), TenantId(2));
        let mut q = Queues::default();
        q.push(a, "a1");
        assert!(!q.owed(a, 0, now), "nobody runs: nothing to preempt");
        assert_eq!(q.take_turn(any), Some("a1"));
        q.push(b, "b1");
        assert!(q.owed(b, 0, now), "b at the floor is owed a worker a holds (a's turn is not charged yet)");
        assert_eq!(q.take_turn(any), Some("b1"));
        q.finished(b, 5 * MS, DEFAULT_CPU_SHARES);
        q.finished(a, MS, DEFAULT_CPU_SHARES);
        q.push(a, "a2");
        assert!(!q.owed(a, 0, now), "nobody runs");
        assert_eq!(q.take_turn(any), Some("a2"));
        q.push(a, "a3");
        assert!(!q.owed(a, 0, now), "a tenant is never owed its own worker");
        q.push(b, "b2");
        assert!(!q.owed(b, 0, now), "b has used more than a, which runs: not owed");
    }

    #[test]
    fn a_running_turn_counts_as_it_goes() {
        let (a, b) = (TenantId(1), TenantId(2));
        let t0 = Instant::now();
        let mut q = both_running(a, b);
        q.turn_started(a, DEFAULT_CPU_SHARES, t0);
        // b ran 3 ms, then has new work while a's turn goes on.
        q.finished(b, 3 * MS, DEFAULT_CPU_SHARES);
        q.push(b, "b2");
        assert!(!q.owed(b, 0, t0 + MS), "a's turn so far (1 ms) is below b's 3 ms");
        assert!(q.owed(b, 0, t0 + 3 * MS), "after 3 ms of a's turn, b is owed a's worker");
        let minute = t0 + Duration::from_secs(60);
        assert_eq!(
            q.tenants[&a].current(minute),
            weighted(MAX_CHARGE, DEFAULT_CPU_SHARES),
            "at most MAX_CHARGE"
        );
    }

    #[test]
    fn a_task_is_charged_in_full_as_it_runs() {
        let (a, b) = (TenantId(1), TenantId(2));
        let t0 = Instant::now();
        let mut q = both_running(a, b);
        // a's turn is a task (a compile); b's is a call that ran 10 ms.
        q.task_started(a, DEFAULT_CPU_SHARES, t0);
        q.finished(b, 10 * MS, DEFAULT_CPU_SHARES);
        q.push(b, "b2");
        assert!(!q.owed(b, 0, t0 + 5 * MS), "5 ms into a's task, b has used more");
        q.accrue(t0 + 5 * MS);
        q.accrue(t0 + Duration::from_secs(1));
        assert!(q.owed(b, 0, t0 + Duration::from_secs(1)), "a second into it, b is owed");
        q.task_finished(a, t0 + Duration::from_secs(2));
        assert_eq!(
            q.tenants[&a].vruntime,
            weighted(Duration::from_secs(2), DEFAULT_CPU_SHARES),
            "all 2 s of the task, not MAX_CHARGE"
        );
        q.push(a, "a2");
        assert_eq!(q.take_turn(any), Some("b2"), "b, 1.99 s behind, goes first");
    }

    #[test]
    fn a_tenant_at_its_worker_cap_is_owed_nothing() {
        let now = Instant::now();
        let (a, b) = (TenantId(1), TenantId(2));
        let mut q = Queues::default();
        q.push(a, "a1");
        assert_eq!(q.take_turn(any), Some("a1"));
        q.push(b, "b1");
        assert!(q.owed(b, 1, now), "below its cap of one worker, b is owed a's");
        assert_eq!(q.take_turn(any), Some("b1"));
        q.push(b, "b2");
        assert!(!q.owed(b, 1, now), "at its cap it could not take a freed worker: nothing to preempt");
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
        let cap = |item: &&str, running: usize| !item.starts_with('a') || running < 1;
        assert_eq!(q.take_turn(cap), Some("a1"));
        assert_eq!(q.take_turn(cap), Some("b1"), "a is at its cap: b goes next");
        assert_eq!(q.take_turn(cap), None, "only a has work, and it is at its cap");
        q.finished(a, Duration::ZERO, DEFAULT_CPU_SHARES);
        assert_eq!(q.take_turn(cap), Some("a2"), "a's worker came back");
        q.finished(a, Duration::ZERO, DEFAULT_CPU_SHARES);
        q.finished(b, Duration::ZERO, DEFAULT_CPU_SHARES);
        assert_eq!(q.take_turn(cap), Some("a3"));
        q.finished(a, Duration::ZERO, DEFAULT_CPU_SHARES);
        assert!(q.tenants.is_empty(), "every worker was given back");
    }

    /// A runnable whose jobs are closures: a turn runs the queued ones.
    struct Probe {
        tenant: Arc<Tenant>,
        mailbox: Mailbox<Box<dyn FnOnce() + Send>>,
    }

    impl Probe {
        fn of(tenant: &Arc<Tenant>) -> Arc<Probe> {
            Arc::new(Probe { tenant: Arc::clone(tenant), mailbox: Mailbox::default() })
        }
    }

    impl Runnable for Probe {
        type Job = Box<dyn FnOnce() + Send>;

        fn tenant(&self) -> &Arc<Tenant> {
            &self.tenant
        }

        fn mailbox(&self) -> &Mailbox<Self::Job> {
            &self.mailbox
        }

        fn run_turn(self: &Arc<Self>, max: usize) {
            self.mailbox.begin_turn();
            for _ in 0..max {
                let Some(job) = self.mailbox.next_job() else { return };
                job();
            }
        }
    }

    fn tenant(id: u64, name: &str) -> Arc<Tenant> {
        Tenant::new(TenantId(id), Name::new(name).expect("valid name"), Quotas::default())
    }

    /// `run_here` runs a job on the calling thread only while nothing else of the runnable is queued or
    /// running: a job posted while a worker holds it goes to the worker, a job behind queued ones waits
    /// its turn on a worker, and a worker's own call is refused (it would run a turn inside a turn).
    #[test]
    fn run_here_runs_a_job_on_the_caller_only_when_the_runnable_is_free() {
        let pool = WorkerPool::new(1, wasmtime::Engine::default(), WorkerPriority::Normal, None)
            .expect("a one-worker pool");
        let handle = pool.handle();
        let a = tenant(1, "a");
        let probe = Probe::of(&a);
        let me = std::thread::current().id();
        let (ran_on, ran_rx) = bounded(8);
        let job = |tx: crossbeam_channel::Sender<std::thread::ThreadId>| -> Box<dyn FnOnce() + Send> {
            Box::new(move || {
                let _ = tx.send(std::thread::current().id());
            })
        };
        let here = handle.run_here(&probe, job(ran_on.clone()));
        assert!(matches!(here, Ok(RanHere::Finished(_))), "a free runnable's job runs here");
        assert_eq!(ran_rx.recv_timeout(Duration::from_secs(30)), Ok(me));

        // A worker holds the runnable (its job waits on a gate): the job is handed back.
        let (gate, gate_rx) = bounded::<()>(0);
        pool.submit(
            &probe,
            Box::new(move || {
                let _ = gate_rx.recv();
            }),
        );
        while !probe.mailbox.rx.is_empty() {
            std::thread::yield_now();
        }
        let refused = handle.run_here(&probe, job(ran_on.clone()));
        let Err(refused) = refused else { panic!("ran beside a worker's turn") };
        let _ = gate.send(());
        pool.submit(&probe, refused);
        assert_ne!(ran_rx.recv_timeout(Duration::from_secs(30)).expect("ran"), me);

        // A job was posted just before (its poster has sent it and not yet taken the flag): the new job
        // goes behind it, both on the worker, in order. (The worker first ends the turn above.)
        while probe.mailbox.scheduled.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let first = ran_on.clone();
        let _ = probe.mailbox.tx.send(Box::new(move || {
            let _ = first.send(std::thread::current().id());
        }));
        let queued = handle.run_here(&probe, job(ran_on.clone()));
        assert!(matches!(queued, Ok(RanHere::Queued)), "ran ahead of a job posted before it");
        for _ in 0..2 {
            assert_ne!(ran_rx.recv_timeout(Duration::from_secs(30)).expect("ran"), me);
        }

        // From a worker, run_here refuses whatever the runnable's state.
        let other = Probe::of(&a);
        let (verdict, verdict_rx) = bounded(1);
        let (h2, o2, tx2) = (handle.clone(), Arc::clone(&other), ran_on.clone());
        pool.submit(
            &probe,
            Box::new(move || {
                let _ = verdict.send(h2.run_here(&o2, job(tx2)).is_err());
            }),
        );
        assert_eq!(verdict_rx.recv_timeout(Duration::from_secs(30)), Ok(true));
        drop(ran_on);
    }

    /// A task that panics is reported to its caller (no result) and leaves the worker, and the pool's
    /// count of running tasks, as they were: on a one-worker pool, the next task still runs.
    #[test]
    fn a_panicking_task_leaves_the_worker_running() {
        let pool = WorkerPool::new(1, wasmtime::Engine::default(), WorkerPriority::Normal, None)
            .expect("a one-worker pool");
        let a = tenant(1, "a");
        let (done, done_rx) = bounded(1);
        // Detached, so that a pool that lost its worker fails the test rather than hanging it.
        std::thread::spawn(move || {
            let panicked: Option<u32> = pool.run_task(&a, || panic!("a compiler bug"));
            let next = pool.run_task(&a, || 7u32);
            let _ = done.send((panicked, next));
        });
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(30)), Ok((None, Some(7))));
    }

    /// The race the turn mark closes: a worker takes a turn, and owed work arrives before that turn's
    /// call starts or resumes (wasmtime then sets the call's deadline from the epoch the preemption
    /// already advanced, and the advance alone would be lost). The turn must still see it; a turn
    /// taken after it, and new work of the running tenant itself, must not.
    #[test]
    fn owed_work_that_arrives_as_a_turn_starts_preempts_that_turn() {
        let pool = WorkerPool::new(1, wasmtime::Engine::default(), WorkerPriority::Normal, None)
            .expect("a one-worker pool");
        let (a, b) = (tenant(1, "a"), tenant(2, "b"));
        let (a_job, a_more, b_job) = (Probe::of(&a), Probe::of(&a), Probe::of(&b));
        let (taken, taken_rx) = bounded::<()>(0);
        let (go, go_rx) = bounded::<()>(0);
        let (seen, seen_rx) = bounded::<bool>(2);
        let handle: PoolHandle = pool.handle();
        pool.submit(
            &a_job,
            Box::new(move || {
                let _ = taken.send(());
                for _ in 0..2 {
                    let _ = go_rx.recv();
                    let _ = seen.send(handle.preempted_this_turn());
                }
            }),
        );
        // a's turn holds the only worker.
        taken_rx.recv().expect("a's turn started");
        let (a_more_ran, a_more_rx) = bounded::<()>(1);
        pool.submit(
            &a_more,
            Box::new(move || {
                let _ = a_more_ran.send(());
            }),
        );
        go.send(()).expect("a's turn waits");
        assert!(!seen_rx.recv().expect("a's turn answers"), "a's own new work does not preempt a");
        let (b_seen, b_seen_rx) = bounded::<bool>(1);
        let handle = pool.handle();
        pool.submit(
            &b_job,
            Box::new(move || {
                let _ = b_seen.send(handle.preempted_this_turn());
            }),
        );
        go.send(()).expect("a's turn waits");
        assert!(seen_rx.recv().expect("a's turn answers"), "b arrived owed the worker a holds");
        assert!(!b_seen_rx.recv().expect("b ran"), "b's turn was taken after the preemption");
        a_more_rx.recv().expect("a's other instance ran too");
    }
}
