//! One instance: its store, its mailbox and its status.
//!
//! [`InstanceCell`] is shared between the broker (which posts jobs) and the worker running it; the
//! [`wasmtime::Store`] lives inside behind a mutex that only the thread running its turn takes (a
//! worker, or a host writer delivering a callback, see [`CallbacksHere`]). Restarting replaces the
//! store (and so every capability the old one held) but keeps the id, name and mailbox.
//! Stopping drops the store and keeps the cell, stopped, so the instance can be restarted; deleting
//! stops it for good (the broker then unregisters it).
//!
//! A job is a future that owns the store while it runs and hands it back when it is done. Calls into
//! wasm are `call_async` on a fiber, so a job can suspend: a long call yields at an epoch tick when
//! other work waits for a worker, and `region_wait` parks until it is woken. A suspended job stays in
//! the cell (it owns the store) and the worker goes back to the pool; the cell's waker puts the cell
//! back in the run queue, and the next worker to take it resumes the job where it stopped. Jobs still
//! run one at a time, in mailbox order: the next starts when the previous one finished.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmtime::{
    Instance, InstancePre, Ref, Store, Table, Trap, TypedFunc, UpdateDeadline, Val, ValType, WasmParams,
};

use super::events::{self, EventKind, EventQueue, Pending};
use super::fault;
use super::limits::TenantLimiter;
use super::memory_creator;
use super::pool::{Mailbox, PoolHandle, RanHere, Runnable, WorkerPool};
use super::{InstanceConfig, InstanceError, InstanceId, InstanceStatus, RunState};
use crate::abi::GuestCtx;
use crate::error::Error;
use crate::mode::shared::{Fence, Stop};
use crate::name::Name;
use crate::region::Traffic;
use crate::registry::Core;
use crate::tenant::Tenant;

/// Work in progress on an instance: it owns the live store (if any) and gives it back when done.
pub(crate) type Task = Pin<Box<dyn Future<Output = Option<Live>> + Send>>;

/// A job for an instance's worker: given the cell and its live store, the task to run.
pub(crate) struct Job {
    start: Box<dyn FnOnce(Arc<InstanceCell>, Option<Live>) -> Task + Send>,
    /// Whether the task delivers events to the app's callbacks (events its callbacks produce are echoes).
    delivering: bool,
}

impl Job {
    fn new(start: impl FnOnce(Arc<InstanceCell>, Option<Live>) -> Task + Send + 'static) -> Job {
        Job { start: Box::new(start), delivering: false }
    }
}

/// What an instance's worker holds between turns.
enum Slot {
    /// No job in progress: the live store, if the instance has one.
    Idle(Option<Live>),
    /// A job that suspended (a long call yielded, or a host call waits); it owns the store.
    Busy { task: Task, delivering: bool },
}

/// The data of every instance's [`Store`].
pub(crate) struct InstanceState {
    /// What host functions need: the broker core, the caller's identity and memory.
    pub(crate) ctx: GuestCtx,
    limiter: TenantLimiter,
    /// When the current call's budget runs out. A deadline rather than a count of ticks, so extra
    /// epoch advances (a fault handler stopping another instance) cost nobody any budget.
    deadline: Instant,
    /// Set by [`InstanceCell::interrupt`] to stop the current call at the next tick.
    kill: Arc<AtomicBool>,
    /// Time the current call spent runnable but waiting for a worker (preempted), in nanoseconds: it
    /// extends the deadline, so other tenants' fair share never uses up this call's budget.
    credit: Arc<AtomicU64>,
    /// Says whether other work waits for a worker, so a long call yields its own.
    pool: PoolHandle,
    /// The next epoch check is the first after a yield (the resumed call's deadline is the epoch as it
    /// was then, so the check comes at once). That check yields only to work owed a worker that
    /// arrived since the turn was taken, not to any runnable work: two calls sharing a worker would
    /// otherwise hand it to each other without either running.
    first_check: bool,
    /// A WASI app's context (see [`crate::wasi`]); `None` for other modules, which never reach it.
    wasi: Option<wasmtime_wasi::p1::WasiP1Ctx>,
}

impl InstanceState {
    /// The WASI context, for wasmtime-wasi's host functions. Only a WASI app calls them, and it has
    /// one from its instantiation; anything else gets an empty context rather than a panic.
    pub(crate) fn wasi(&mut self) -> &mut wasmtime_wasi::p1::WasiP1Ctx {
        self.wasi.get_or_insert_with(|| wasmtime_wasi::WasiCtxBuilder::new().build_p1())
    }

    /// Whether the current call must end: the host interrupted it or its budget ran out.
    pub(crate) fn interrupted(&self) -> bool {
        self.kill.load(Ordering::Acquire) || Instant::now() >= self.call_deadline()
    }

    /// When the current call's budget runs out: its deadline, plus the time it spent preempted.
    pub(crate) fn call_deadline(&self) -> Instant {
        let credit = Duration::from_nanos(self.credit.load(Ordering::Relaxed));
        self.deadline.checked_add(credit).unwrap_or(self.deadline)
    }

    /// Starts a new call's budget.
    fn start_call(&mut self, timeout: Duration) {
        self.deadline = deadline_after(timeout);
        self.credit.store(0, Ordering::Relaxed);
    }
}

/// Arms a new call's epoch deadline: the next epoch advance, or at once if work owed a worker arrived
/// since this worker took its turn.
///
/// A preempting push advances the epoch, but wasmtime sets a deadline from the epoch as it is when
/// set, so an advance that landed between the worker taking this turn and this call starting would be
/// absorbed, and the call would keep the worker until the next tick. The deadline is set first and the
/// pool's count of preemptions read after: a push counted after that read advances the epoch past the
/// deadline just set, and one counted before it is seen here ([`PoolHandle::preempted_this_turn`]).
fn arm_epoch_deadline(store: &mut Store<InstanceState>) {
    store.set_epoch_deadline(1);
    // Pairs with the release fence before the pool's epoch advance: if the deadline above was set from
    // an advanced epoch, the count read below includes the push that advanced it.
    std::sync::atomic::fence(Ordering::Acquire);
    // A new call's first check is an ordinary one (a flag left by a call that resumed and then ended
    // before reaching a check must not make this call ignore waiting work at its first tick).
    store.data_mut().first_check = false;
    if store.data().pool.preempted_this_turn() {
        store.set_epoch_deadline(0);
    }
}

/// A running instance.
pub(crate) struct Live {
    store: Store<InstanceState>,
    instance: Instance,
    /// What deliveries keep between them (boxed: an idle instance's slot stays small).
    deliveries: Box<Deliveries>,
}

/// What an instance's deliveries keep between them.
struct Deliveries {
    /// Its function table, where callbacks are looked up (exports are fixed at instantiation).
    table: Option<Table>,
    /// The watch and native callbacks delivered last, as typed functions: a table entry is looked up
    /// for every event, and type-checked again only when it holds another function than last time.
    watch_fn: Option<Callback<WatchParams>>,
    native_fn: Option<Callback<NativeParams>>,
    /// An empty event buffer, swapped with the queue's at each delivery.
    spare_events: VecDeque<Pending>,
}

/// A watch callback's parameters (see [`events::watch_signature`]).
type WatchParams = (i32, i32, i64, i64, i64, i32);

/// A native event callback's parameters (see [`events::native_signature`]).
type NativeParams = (i32, i32, i32, i32, i32);

/// A callback function as last found in the table: its identity (the store's function reference) and
/// its typed form.
struct Callback<P> {
    raw: usize,
    func: TypedFunc<P, ()>,
}

impl Live {
    fn new(store: Store<InstanceState>, instance: Instance) -> Live {
        let mut live = Live {
            store,
            instance,
            deliveries: Box::new(Deliveries {
                table: None,
                watch_fn: None,
                native_fn: None,
                spare_events: VecDeque::new(),
            }),
        };
        live.deliveries.table = live.instance.get_table(&mut live.store, events::TABLE_EXPORT);
        live
    }
}

/// The typed function at `index` of `table` with parameters `P` and no results, reusing `cached` if
/// the entry is still the function it was made from; `None` (the event cannot be delivered) for a
/// null, missing or out-of-range entry or one of another type: the app may have changed its table since
/// the callback was registered.
fn callback<'c, P: WasmParams>(
    store: &mut Store<InstanceState>,
    table: Option<Table>,
    index: u32,
    cached: &'c mut Option<Callback<P>>,
) -> Option<&'c TypedFunc<P, ()>> {
    if index == 0 {
        return None;
    }
    let Some(Ref::Func(Some(f))) = table?.get(&mut *store, u64::from(index)) else {
        return None;
    };
    let raw = f.to_raw(&mut *store).addr();
    if cached.as_ref().is_none_or(|c| c.raw != raw) {
        *cached = Some(Callback { raw, func: f.typed::<P, ()>(&*store).ok()? });
    }
    cached.as_ref().map(|c| &c.func)
}

impl Drop for Live {
    /// Capabilities (and so the shared windows mapped into the store's memory) go before the store
    /// and its memory do, however the store is dropped: torn down, or unwound with a panicking job.
    /// Removing an instance's capabilities twice is a no-op.
    fn drop(&mut self) {
        let ctx = &self.store.data().ctx;
        if let Err(e) = ctx.core.remove_instance(ctx.instance) {
            tracing::warn!(instance = %ctx.instance, "{e}");
        }
    }
}

/// What a new instance cell is made of (see [`InstanceCell::start`] and [`InstanceCell::stopped`]).
pub(crate) struct CellParts {
    pub(crate) id: InstanceId,
    pub(crate) name: Name,
    pub(crate) tenant: Arc<Tenant>,
    pub(crate) module: Name,
    pub(crate) config: InstanceConfig,
    pub(crate) pre: InstancePre<InstanceState>,
    pub(crate) core: Arc<Core>,
    pub(crate) pool: PoolHandle,
    /// A WASI app's log, its ring already charged to the tenant.
    pub(crate) log: Option<Arc<crate::wasi::InstanceLog>>,
    /// The tenant's app data directory, under which a WASI app's granted directories are opened.
    pub(crate) wasi_root: Option<std::path::PathBuf>,
}

/// An instance as the broker and the pool see it.
pub(crate) struct InstanceCell {
    pub(crate) id: InstanceId,
    pub(crate) name: Name,
    pub(crate) tenant: Arc<Tenant>,
    config: InstanceConfig,
    pre: InstancePre<InstanceState>,
    core: Arc<Core>,
    /// Its jobs, run one at a time by the pool (which keeps the cell queued at most once).
    mailbox: Mailbox<Job>,
    /// Wakes this cell's suspended job: puts the cell back in the run queue.
    waker: Waker,
    kill: Arc<AtomicBool>,
    /// See [`InstanceState::credit`].
    credit: Arc<AtomicU64>,
    /// When the cell was queued again with its job suspended (preempted or woken), to credit the wait.
    requeued: Mutex<Option<Instant>>,
    /// Stopping or stopped: calls and deliveries still queued are refused rather than run. Set while
    /// the instance is stopped; a restart clears it.
    closing: AtomicBool,
    /// Serialises stop, restart and delete of this instance, so each sees the state the one before it
    /// left; true once the instance is deleted, after which it never runs again.
    lifecycle: Mutex<bool>,
    /// Bytes and pages this instance moved, across restarts.
    pub(crate) traffic: Arc<Traffic>,
    /// A WASI app's output, across restarts; `None` for other modules.
    log: Option<Arc<crate::wasi::InstanceLog>>,
    /// See [`CellParts::wasi_root`].
    wasi_root: Option<std::path::PathBuf>,
    /// Events waiting for delivery to the app's callbacks.
    events: EventQueue,
    /// Events that could not be delivered (instance trapped, stopped, or callback gone).
    dead_events: AtomicU64,
    /// Callbacks delivered.
    delivered: AtomicU64,
    /// Consecutive deliveries made only of events this app's own callbacks produced.
    echo_chain: std::sync::atomic::AtomicU32,
    /// Deliveries still to go through the mailbox after one on a writing thread overran (see
    /// [`InstanceCell::deliver_here`]).
    here_cooldown: std::sync::atomic::AtomicU32,
    me: Weak<InstanceCell>,
    pool: PoolHandle,
    /// The store, or the suspended job that owns it; taken only by the thread holding the cell's turn.
    slot: Mutex<Slot>,
    status: Mutex<InstanceStatus>,
}

impl Drop for InstanceCell {
    /// Events still queued go with the instance: its tenant no longer holds them.
    fn drop(&mut self) {
        let rest = self.events.take();
        self.tenant.events_taken(u64::try_from(rest.len()).unwrap_or(u64::MAX));
    }
}

/// The pool runs an instance's jobs in turns charged to its tenant.
impl Runnable for InstanceCell {
    type Job = Job;

    fn tenant(&self) -> &Arc<Tenant> {
        &self.tenant
    }

    fn mailbox(&self) -> &Mailbox<Job> {
        &self.mailbox
    }

    fn run_turn(self: &Arc<Self>, max: usize) {
        let mut slot = self.slot.lock();
        // Before polling, so a wake-up during the poll is kept for the end of the turn.
        self.mailbox.begin_turn();
        if let Some(since) = self.requeued.lock().take() {
            if matches!(*slot, Slot::Busy { .. }) {
                let waited = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.credit.fetch_add(waited, Ordering::Relaxed);
            }
        }
        let mut cx = Context::from_waker(&self.waker);
        let mut started = 0;
        loop {
            if let Slot::Busy { task, delivering } = &mut *slot {
                let _delivering = delivering.then(|| Delivering::enter(self.id));
                // A panic here would be a broker bug; contain it to this instance rather than lose the
                // worker.
                match std::panic::catch_unwind(AssertUnwindSafe(|| task.as_mut().poll(&mut cx))) {
                    Ok(Poll::Pending) => {
                        self.mailbox.set_suspended(true);
                        return;
                    }
                    Ok(Poll::Ready(live)) => *slot = Slot::Idle(live),
                    Err(_) => {
                        self.contain_panic(&mut slot);
                    }
                }
                self.mailbox.set_suspended(false);
            }
            if started == max {
                return;
            }
            let Some(job) = self.mailbox.next_job() else {
                return;
            };
            started += 1;
            let live = match &mut *slot {
                Slot::Idle(live) => live.take(),
                Slot::Busy { .. } => None,
            };
            *slot = Slot::Busy { task: (job.start)(Arc::clone(self), live), delivering: job.delivering };
        }
    }

    fn queued_suspended(&self) {
        self.requeued.lock().get_or_insert_with(Instant::now);
    }
}

/// See [`InstanceCell::budgeted`].
struct Budgeted<'a, F> {
    call: Pin<&'a mut F>,
    kill: &'a AtomicBool,
    credit: &'a AtomicU64,
    deadline: Instant,
    timers: &'a super::Timers,
    /// The timer set at the deadline while the call is pending, and when it fires.
    timer: Option<(super::TimerKey, Instant)>,
}

impl<T, F: Future<Output = wasmtime::Result<T>>> Future for Budgeted<'_, F> {
    type Output = wasmtime::Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let credit = Duration::from_nanos(self.credit.load(Ordering::Relaxed));
        let due = self.deadline.checked_add(credit).unwrap_or(self.deadline);
        if self.kill.load(Ordering::Acquire) || Instant::now() >= due {
            // Dropping the call (with this future) unwinds its fiber: the wasm traps.
            return Poll::Ready(Err(wasmtime::Error::new(Trap::Interrupt)));
        }
        match self.call.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => {
                if self.timer.is_none_or(|(_, at)| at != due) {
                    if let Some((key, _)) = self.timer.take() {
                        self.timers.cancel(key);
                    }
                    let key = self.timers.set(due, cx.waker().clone());
                    self.timer = Some((key, due));
                }
                Poll::Pending
            }
        }
    }
}

impl<F> Drop for Budgeted<'_, F> {
    fn drop(&mut self) {
        if let Some((key, _)) = self.timer.take() {
            self.timers.cancel(key);
        }
    }
}

/// The waker of an instance's jobs. Weak, so a waker left in a timer or a region's waiter list does
/// not keep a stopped instance alive.
struct CellWaker(Weak<InstanceCell>);

impl Wake for CellWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(cell) = self.0.upgrade() {
            cell.wake();
        }
    }
}

impl InstanceCell {
    /// Instantiates the module (on a worker, where its start function may be preempted like any call);
    /// the instance is running when this returns.
    ///
    /// # Errors
    /// [`Error::Quota`] if the tenant's memory quota refuses the initial memory, or
    /// [`InstanceError::Instantiate`].
    pub(crate) fn start(parts: CellParts) -> Result<Arc<InstanceCell>, Error> {
        let cell = InstanceCell::new(parts, RunState::Running);
        let (tx, rx) = super::reply::reply();
        cell.pool.submit(
            &cell,
            Job::new(move |cell, live| {
                Box::pin(async move {
                    match cell.instantiate().await {
                        Ok(l) => {
                            tx.send(Ok(()));
                            Some(l)
                        }
                        Err(e) => {
                            tx.send(Err(e));
                            live
                        }
                    }
                })
            }),
        );
        rx.recv().unwrap_or(Err(InstanceError::ShuttingDown.into()))?;
        Ok(cell)
    }

    /// Registers the instance without running it (no start function, no store, no memory): the cell
    /// [`InstanceCell::stop`] leaves, with no run before. [`InstanceCell::restart`] starts it.
    pub(crate) fn stopped(parts: CellParts) -> Arc<InstanceCell> {
        let cell = InstanceCell::new(parts, RunState::Stopped);
        cell.closing.store(true, Ordering::Release);
        // As for an instance stopped after running, its (empty) handle table and inbox exist, so regions
        // can be granted to it before it restarts (the restart drops them, as it drops every grant).
        cell.core.caps.lock().add_instance(cell.id);
        cell
    }

    fn new(parts: CellParts, state: RunState) -> Arc<InstanceCell> {
        let CellParts { id, name, tenant, module, config, pre, core, pool, log, wasi_root } = parts;
        let status = InstanceStatus {
            module: module.to_string(),
            state,
            calls: 0,
            traps: 0,
            restarts: 0,
            last_trap: None,
        };
        Arc::new_cyclic(|me| InstanceCell {
            id,
            name,
            tenant,
            config,
            pre,
            core,
            mailbox: Mailbox::default(),
            waker: Waker::from(Arc::new(CellWaker(me.clone()))),
            kill: Arc::new(AtomicBool::new(false)),
            credit: Arc::new(AtomicU64::new(0)),
            requeued: Mutex::new(None),
            closing: AtomicBool::new(false),
            lifecycle: Mutex::new(false),
            traffic: Arc::new(Traffic::one_writer()),
            log,
            wasi_root,
            events: EventQueue::default(),
            dead_events: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            echo_chain: std::sync::atomic::AtomicU32::new(0),
            here_cooldown: std::sync::atomic::AtomicU32::new(0),
            me: me.clone(),
            pool,
            slot: Mutex::new(Slot::Idle(None)),
            status: Mutex::new(status),
        })
    }

    /// A WASI app's output (`None` for other modules).
    pub(crate) fn log(&self) -> Option<Arc<crate::wasi::InstanceLog>> {
        self.log.clone()
    }

    /// Makes the cell run again (its suspended job was woken).
    fn wake(self: &Arc<Self>) {
        self.pool.wake(self);
    }

    /// Where producers (region watchers, native trampolines) send events for this instance.
    pub(crate) fn sink(&self) -> EventSink {
        EventSink(self.me.clone())
    }

    /// Queues an event and, if none is pending, posts a job that delivers the queue, or, under a
    /// [`CallbacksHere`] scope, leaves the delivery to the scope's end.
    fn deliver(self: &Arc<Self>, e: Pending) {
        let pushed = self.events.push(e);
        if pushed.grew {
            self.tenant.events_queued(1);
        }
        if pushed.schedule && !CallbacksHere::defer(self) {
            self.pool.submit(self, delivery_job());
        }
    }

    /// Delivers the queued events on this thread if the instance is idle, else through its mailbox
    /// (see [`CallbacksHere`]). An instance whose delivery here ran long or suspended gets its next
    /// [`HERE_COOLDOWN`] deliveries through the mailbox: a slow or spinning callback costs a host that
    /// writes what it watches one tick, not one per write.
    fn deliver_here(self: &Arc<Self>) {
        if !PoolHandle::may_run_here() {
            self.pool.submit(self, delivery_job());
            return;
        }
        let cooling = self
            .here_cooldown
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if cooling {
            self.pool.submit(self, delivery_job());
            return;
        }
        let overran = match self.pool.run_here(self, delivery_job()) {
            Err(job) => {
                self.pool.submit(self, job);
                false
            }
            Ok(RanHere::Queued) => false,
            Ok(RanHere::Finished(ran)) => ran > HERE_SLICE,
            Ok(RanHere::Suspended(_)) => true,
        };
        if overran {
            self.here_cooldown.store(HERE_COOLDOWN, Ordering::Relaxed);
        }
    }

    /// Calls the app's callback for every queued event, in a turn of this instance (on its worker or
    /// on a writing thread).
    async fn drain_events(&self, live: &mut Option<Live>) {
        // The queue's buffer and the live instance's spare trade places, so a delivery allocates none.
        let mut events =
            live.as_mut().map(|l| std::mem::take(&mut l.deliveries.spare_events)).unwrap_or_default();
        self.events.take_into(&mut events);
        self.deliver_events(live, &events).await;
        events.clear();
        if let Some(l) = live.as_mut() {
            l.deliveries.spare_events = events;
        }
    }

    /// Calls the app's callback for each of `events`, taken from the queue.
    async fn deliver_events(&self, live: &mut Option<Live>, events: &VecDeque<Pending>) {
        self.tenant.events_taken(u64::try_from(events.len()).unwrap_or(u64::MAX));
        let state = self.status.lock().state;
        // An interrupt that came while the instance was idle is stale: it was for no call of this job.
        self.kill.store(false, Ordering::Release);
        let closing = self.closing.load(Ordering::Acquire);
        let Some(l) = live.as_mut().filter(|_| state == RunState::Running && !closing) else {
            self.dead_events.fetch_add(u64::try_from(events.len()).unwrap_or(u64::MAX), Ordering::Relaxed);
            return;
        };
        // A callback that re-triggers itself (writes the region it watches, fires the event it handles)
        // would keep this instance's mailbox busy forever, one bounded callback at a time: stop it as a
        // runaway once a long enough chain consists of nothing but its own echoes.
        let chain = if !events.is_empty() && events.iter().all(|e| e.echo) {
            self.echo_chain.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.echo_chain.store(0, Ordering::Relaxed);
            0
        };
        if chain > events::MAX_ECHO_CHAIN {
            let message = format!(
                "callback loop: the app's callbacks re-triggered themselves {chain} times in a row without \
                 any other event"
            );
            self.mark_trapped(InstanceError::Trapped { message });
            self.dead_events.fetch_add(u64::try_from(events.len()).unwrap_or(u64::MAX), Ordering::Relaxed);
            return;
        }
        for (i, e) in events.iter().enumerate() {
            let bits = |v: u32| i32::from_ne_bytes(v.to_ne_bytes());
            let wide = |v: u64| i64::from_ne_bytes(v.to_ne_bytes());
            // Checked at registration, but the app may have changed its table since: check again.
            let call = match e.kind {
                EventKind::Watch { handle, version, offset, len } => {
                    callback(&mut l.store, l.deliveries.table, e.callback, &mut l.deliveries.watch_fn).map(
                        |_| {
                            Delivery::Watch((
                                bits(e.user_data),
                                bits(handle),
                                wide(version),
                                wide(offset),
                                wide(len),
                                bits(e.missed),
                            ))
                        },
                    )
                }
                EventKind::Native { object, code, param } => callback(
                    &mut l.store,
                    l.deliveries.table,
                    e.callback,
                    &mut l.deliveries.native_fn,
                )
                .map(|_| {
                    Delivery::Native((bits(e.user_data), bits(object), bits(code), param, bits(e.missed)))
                }),
            };
            let Some(call) = call else {
                self.dead_events.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            // Its watch may have ended since the batch was taken (the app unwatched in an earlier
            // callback of this batch, or the grant was revoked): then it is not delivered.
            if !self.events.deliverable(e) {
                self.dead_events.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if let Some(stop) = l.store.data().ctx.fence.stop() {
                self.record_trap(&wasmtime::Error::new(StopTrap(stop)), false);
                let rest = events.len() - i;
                self.dead_events.fetch_add(u64::try_from(rest).unwrap_or(u64::MAX), Ordering::Relaxed);
                return;
            }
            // An interrupt that arrived between two callbacks stops the rest of the delivery too.
            if self.kill.swap(false, Ordering::AcqRel) {
                self.mark_trapped(InstanceError::Killed);
                let rest = events.len() - i;
                self.dead_events.fetch_add(u64::try_from(rest).unwrap_or(u64::MAX), Ordering::Relaxed);
                return;
            }
            l.store.data_mut().start_call(self.config.call_timeout);
            arm_epoch_deadline(&mut l.store);
            let deadline = l.store.data().deadline;
            // The function `callback` just found for this event (the match above cached it).
            let Live { store, deliveries, .. } = &mut *l;
            let called = match (call, deliveries.watch_fn.as_ref(), deliveries.native_fn.as_ref()) {
                (Delivery::Watch(args), Some(f), _) => {
                    let call = std::pin::pin!(f.func.call_async(&mut *store, args));
                    self.budgeted(call, deadline).await
                }
                (Delivery::Native(args), _, Some(f)) => {
                    let call = std::pin::pin!(f.func.call_async(&mut *store, args));
                    self.budgeted(call, deadline).await
                }
                _ => {
                    self.dead_events.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            if let Some(log) = &self.log {
                log.flush();
            }
            match stopped(&l.store, called) {
                Ok(()) => {
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    let killed = self.kill.swap(false, Ordering::AcqRel);
                    self.record_trap(&err, killed);
                    let rest = events.len() - i - 1;
                    self.dead_events.fetch_add(u64::try_from(rest).unwrap_or(u64::MAX), Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    /// Callbacks delivered, events that could not be delivered, and events merged away.
    pub(crate) fn event_counts(&self) -> (u64, u64, u64) {
        (
            self.delivered.load(Ordering::Relaxed),
            self.dead_events.load(Ordering::Relaxed),
            self.events.merged(),
        )
    }

    async fn instantiate(&self) -> Result<Live, Error> {
        if self.closing.load(Ordering::Acquire) {
            return Err(InstanceError::NotRunning { state: RunState::Stopped }.into());
        }
        let module = self.pre.module();
        let fence = Fence::new(module.engine().clone());
        // A stale interrupt (sent while the instance was idle) must not cut the start function short.
        self.kill.store(false, Ordering::Release);
        self.credit.store(0, Ordering::Relaxed);
        let state = InstanceState {
            ctx: GuestCtx::new(
                Arc::clone(&self.core),
                self.id,
                Arc::clone(&self.tenant),
                Arc::clone(&self.traffic),
                self.sink(),
                Arc::clone(&fence),
            ),
            limiter: TenantLimiter::new(Arc::clone(&self.tenant), self.config.max_memory_bytes),
            deadline: deadline_after(self.config.call_timeout),
            kill: Arc::clone(&self.kill),
            credit: Arc::clone(&self.credit),
            pool: self.pool.clone(),
            first_check: false,
            wasi: None,
        };
        let mut state = state;
        if crate::wasi::imports_wasi(module) {
            let wasi = crate::wasi::context(&self.config.wasi, self.log.as_ref(), self.wasi_root.as_deref())
                .map_err(|e| InstanceError::Instantiate(format!("WASI: {e}")))?;
            state.wasi = Some(wasi);
        }
        let mut store = Store::new(module.engine(), state);
        store.limiter(|s| &mut s.limiter);
        // What one WASI call may carry from the guest to the host (buffers, iovecs, subscriptions): a
        // bound on the host memory and time a single call takes, which wasmtime-wasi charges as it goes.
        store.set_hostcall_fuel(crate::wasi::HOSTCALL_BYTES);
        let code = module.image_range();
        fault::install(&mut store, Arc::clone(&fence), code.start as usize..code.end as usize);
        // Checked at every epoch tick: a fault outside wasm code, the call's own budget, or the host's
        // interrupt ends it; otherwise it yields its worker if other work waits for one. A yield's
        // deadline is the epoch it resumes at, so a resumed call checks again at once, and then yields
        // only if work owed a worker came since its new turn was taken (see `arm_epoch_deadline`). A
        // push between this callback's read of the count and wasmtime setting the next deadline is
        // absorbed; the call then yields at the next tick at the latest.
        store.epoch_deadline_callback(|mut ctx| {
            let s = ctx.data_mut();
            if let Some(stop) = s.ctx.fence.stop() {
                return Err(wasmtime::Error::new(StopTrap(stop)));
            }
            if s.interrupted() {
                return Ok(UpdateDeadline::Interrupt);
            }
            let first = std::mem::take(&mut s.first_check);
            // A call running on a thread that is not a worker (a watch callback on the writing
            // thread) gives the thread back at a tick, and goes on on a worker.
            let yield_now = match PoolHandle::yield_here() {
                Some(here) => here,
                None => s.pool.preempted_this_turn() || (!first && s.pool.contended()),
            };
            if yield_now {
                s.first_check = true;
                return Ok(UpdateDeadline::Yield(0));
            }
            Ok(UpdateDeadline::Continue(1))
        });
        arm_epoch_deadline(&mut store);
        self.core.caps.lock().add_instance(self.id);
        let deadline = store.data().deadline;
        let instantiated = {
            let start = std::pin::pin!(self.pre.instantiate_async(&mut store));
            self.budgeted(start, deadline).await
        };
        match instantiated {
            Ok(instance) => {
                let memory = instance.get_memory(&mut store, "memory");
                if let Some(shape) =
                    memory.and_then(|m| memory_creator::shape_of(m.data_ptr(&store) as usize))
                {
                    fence.set_shape(shape);
                }
                store.data_mut().ctx.set_memory(memory);
                let mut live = Live::new(store, instance);
                self.initialize(&mut live).await?;
                Ok(live)
            }
            Err(e) => {
                // Instantiation failed before the app could hold a capability.
                let _ = self.core.remove_instance(self.id);
                match store.data().limiter.last_refusal {
                    Some(q) => Err(Error::Quota(q)),
                    None => Err(InstanceError::Instantiate(format!("{e:#}")).into()),
                }
            }
        }
    }

    /// Runs a WASI reactor's `_initialize` (see [`crate::wasi`]) within the start's budget. On error
    /// the caller drops `live`, and its capabilities with it.
    async fn initialize(&self, live: &mut Live) -> Result<(), Error> {
        if live.store.data().wasi.is_none() {
            return Ok(());
        }
        let Some(init) = live.instance.get_func(&mut live.store, crate::wasi::INITIALIZE) else {
            return Ok(());
        };
        let failed = |why: String| {
            Error::from(InstanceError::Instantiate(format!("{}: {why}", crate::wasi::INITIALIZE)))
        };
        let init = init.typed::<(), ()>(&live.store).map_err(|e| failed(format!("{e:#}")))?;
        let deadline = live.store.data().deadline;
        let run = std::pin::pin!(init.call_async(&mut live.store, ()));
        let ran = self.budgeted(run, deadline).await;
        if let Some(log) = &self.log {
            log.flush();
        }
        ran.map_err(|e| match crate::wasi::exit_status(&e) {
            Some(status) => failed(format!("the app exited with status {status}")),
            None => failed(format!("{e:#}")),
        })
    }

    /// Drops the live store, if any, and every capability the instance holds: with no store too, since
    /// a stopped instance may have been granted regions (a restart starts with none).
    ///
    /// # Errors
    /// [`crate::capability::CapError::NotRevoked`] if a window of another instance, derived from this
    /// one's capabilities, could not be taken away (that instance was told to stop); this one is torn
    /// down regardless.
    fn teardown(&self, live: &mut Option<Live>) -> Result<(), Error> {
        // Capabilities (and their windows) go before the store and its memory do.
        let removed = self.core.remove_instance(self.id);
        drop(live.take());
        Ok(removed?)
    }

    /// After a job panicked: the task is dropped (its store went while the panic unwound, and took its
    /// capabilities with it first: see `Live`'s `Drop`), and the instance is marked trapped.
    fn contain_panic(&self, slot: &mut Slot) {
        *slot = Slot::Idle(None);
        let mut s = self.status.lock();
        s.state = RunState::Trapped;
        s.traps += 1;
        s.last_trap = Some("internal broker error while running this instance".into());
    }

    /// Calls an export and waits for its results.
    pub(crate) fn call(
        self: &Arc<Self>,
        pool: &WorkerPool,
        export: &str,
        args: &[Val],
    ) -> Result<Vec<Val>, InstanceError> {
        let (tx, rx) = super::reply::reply();
        let (export, args) = (export.to_owned(), args.to_vec());
        pool.submit(
            self,
            Job::new(move |cell, mut live| {
                Box::pin(async move {
                    tx.send(cell.run_call(&mut live, &export, &args).await);
                    live
                })
            }),
        );
        rx.recv().unwrap_or(Err(InstanceError::ShuttingDown))
    }

    /// The parameter types of an export of the module, or `None` if it exports no such function.
    pub(crate) fn export_params(&self, export: &str) -> Option<Vec<ValType>> {
        match self.pre.module().get_export(export)? {
            wasmtime::ExternType::Func(f) => Some(f.params().collect()),
            _ => None,
        }
    }

    async fn run_call(
        &self,
        live: &mut Option<Live>,
        export: &str,
        args: &[Val],
    ) -> Result<Vec<Val>, InstanceError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(InstanceError::NotRunning { state: RunState::Stopped });
        }
        let state = self.status.lock().state;
        let Some(l) = live.as_mut().filter(|_| state == RunState::Running) else {
            return Err(InstanceError::NotRunning { state });
        };
        let func = l
            .instance
            .get_func(&mut l.store, export)
            .ok_or_else(|| InstanceError::NoSuchExport(export.to_owned()))?;
        let ty = func.ty(&l.store);
        let expected: Vec<ValType> = ty.params().collect();
        let matches = expected.len() == args.len()
            && expected.iter().zip(args).all(|(t, v)| kind_of_type(t) == kind_of_val(v));
        if !matches {
            return Err(InstanceError::BadArguments {
                export: export.to_owned(),
                expected: expected.iter().map(kind_of_type).collect::<Vec<_>>().join(", "),
                got: args.iter().map(kind_of_val).collect::<Vec<_>>().join(", "),
            });
        }
        let mut results: Vec<Val> =
            ty.results().map(|t| Val::default_for_ty(&t).unwrap_or(Val::I32(0))).collect();
        if let Some(stop) = l.store.data().ctx.fence.stop() {
            // Told to stop (a window could not be revoked, say) before this call began: run nothing.
            return Err(self.record_trap(&wasmtime::Error::new(StopTrap(stop)), false));
        }
        self.kill.store(false, Ordering::Release);
        l.store.data_mut().start_call(self.config.call_timeout);
        arm_epoch_deadline(&mut l.store);
        let deadline = l.store.data().deadline;
        let called = {
            let call = std::pin::pin!(func.call_async(&mut l.store, args, &mut results));
            self.budgeted(call, deadline).await
        };
        if let Some(log) = &self.log {
            log.flush();
        }
        let outcome = stopped(&l.store, called);
        let killed = self.kill.swap(false, Ordering::AcqRel);
        match outcome {
            Ok(()) => {
                self.status.lock().calls += 1;
                Ok(results)
            }
            Err(e) => match crate::wasi::exit_status(&e) {
                Some(status) => Err(self.exited(live, status)),
                None => Err(self.record_trap(&e, killed)),
            },
        }
    }

    /// `call` (into this instance's wasm), ended with [`Trap::Interrupt`] when its budget runs out or
    /// the host interrupts it, even while it is parked in a host future that checks neither (a WASI
    /// sleep): the epoch callback only sees a call that runs wasm.
    fn budgeted<'a, F, T>(&'a self, call: Pin<&'a mut F>, deadline: Instant) -> Budgeted<'a, F>
    where
        F: Future<Output = wasmtime::Result<T>>,
    {
        Budgeted {
            call,
            kill: &self.kill,
            credit: &self.credit,
            deadline,
            timers: &self.core.timers,
            timer: None,
        }
    }

    /// A WASI app called `proc_exit(status)`: the call ends, and the instance stops as if the host
    /// had stopped it (restartable; not a trap).
    fn exited(&self, live: &mut Option<Live>, status: i32) -> InstanceError {
        // Not `closing`: that is the host's (a restart queued behind this call clears it first, and
        // must still run). The stopped state refuses the calls queued behind.
        if let Err(e) = self.teardown(live) {
            tracing::warn!(instance = %self.name, error = %e, "after proc_exit");
        }
        self.status.lock().state = RunState::Stopped;
        InstanceError::Exited { status }
    }

    /// Classifies a failed call, marks the instance trapped and records the trap.
    fn record_trap(&self, e: &wasmtime::Error, killed: bool) -> InstanceError {
        if let Some(StopTrap(stop)) = e.downcast_ref::<StopTrap>() {
            let message = match *stop {
                Stop::Fault { addr } => {
                    let what = self.core.windows.explain_fault(self.id, addr).unwrap_or_else(|| {
                        format!("fault at wasm address {addr:#x} in a shared window (since unmapped)")
                    });
                    format!(
                        "{what}: memory fault outside wasm code (a bulk-memory or atomic helper, or a host \
                         call) at wasm address {addr:#x}; the instance's memory was cleared"
                    )
                }
                Stop::Sealed => "a shared window of this instance could not be revoked, so its memory was \
                                 cleared and the instance stopped"
                    .to_owned(),
            };
            return self.mark_trapped(InstanceError::Trapped { message });
        }
        let err = match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) if killed => InstanceError::Killed,
            Some(Trap::Interrupt) => InstanceError::Interrupted { timeout: self.config.call_timeout },
            _ => InstanceError::Trapped { message: self.explain(format!("{e:#}")) },
        };
        self.mark_trapped(err)
    }

    /// Marks the instance trapped with `err` as its last trap.
    fn mark_trapped(&self, err: InstanceError) -> InstanceError {
        let mut status = self.status.lock();
        status.state = RunState::Trapped;
        status.traps += 1;
        status.last_trap = Some(err.to_string());
        err
    }

    /// Replaces the store with a fresh instantiation (of a running, trapped or stopped instance); every
    /// capability of the old one is gone.
    ///
    /// # Errors
    /// [`Error::InstanceNotFound`] if the instance was deleted meanwhile; [`Error::Quota`] or
    /// [`InstanceError::Instantiate`] if the new instantiation fails, and
    /// [`InstanceError::NotRunning`] if a stop came first. A stopped instance stays stopped then.
    pub(crate) fn restart(self: &Arc<Self>, pool: &WorkerPool) -> Result<(), Error> {
        let deleted = self.lifecycle.lock();
        if *deleted {
            return Err(Error::InstanceNotFound(self.id.to_string()));
        }
        // A stopped instance refuses everything while `closing`; the restart opens it again.
        self.closing.store(false, Ordering::Release);
        let (tx, rx) = super::reply::reply();
        pool.submit(
            self,
            Job::new(move |cell, mut live| {
                Box::pin(async move {
                    let outcome = match cell.teardown(&mut live) {
                        Ok(()) => cell.instantiate().await,
                        Err(e) => Err(e),
                    };
                    tx.send(outcome.map(|l| {
                        live = Some(l);
                        let mut s = cell.status.lock();
                        s.state = RunState::Running;
                        s.restarts += 1;
                    }));
                    live
                })
            }),
        );
        let restarted = rx.recv().unwrap_or(Err(InstanceError::ShuttingDown.into()));
        if restarted.is_err() && self.status.lock().state == RunState::Stopped {
            self.closing.store(true, Ordering::Release);
        }
        drop(deleted);
        restarted
    }

    /// Stops the instance: interrupts its call, refuses the calls and deliveries queued behind it, and
    /// drops its store (so its memory and windows) and every capability it held. It stays registered,
    /// stopped, until [`InstanceCell::restart`]; stopping a stopped instance changes nothing.
    ///
    /// # Errors
    /// As `teardown`: the instance is stopped either way.
    pub(crate) fn stop(self: &Arc<Self>, pool: &WorkerPool) -> Result<(), Error> {
        self.shut_down(pool, false)
    }

    /// Stops the instance for good: as [`InstanceCell::stop`], and a restart that comes later (holding
    /// the cell from before it was unregistered) finds it gone.
    ///
    /// # Errors
    /// As [`InstanceCell::stop`].
    pub(crate) fn delete(self: &Arc<Self>, pool: &WorkerPool) -> Result<(), Error> {
        self.shut_down(pool, true)
    }

    fn shut_down(self: &Arc<Self>, pool: &WorkerPool, delete: bool) -> Result<(), Error> {
        // Interrupted before the lock is taken, so a restart in progress (its start function running)
        // is cut short rather than waited for.
        self.close();
        let mut deleted = self.lifecycle.lock();
        *deleted |= delete;
        // Again under the lock: a restart that finished meanwhile opened the instance again.
        self.close();
        let (tx, rx) = super::reply::reply();
        pool.submit(
            self,
            Job::new(move |cell, mut live| {
                Box::pin(async move {
                    let torn = cell.teardown(&mut live);
                    cell.status.lock().state = RunState::Stopped;
                    tx.send(torn);
                    live
                })
            }),
        );
        let stopped = rx.recv().unwrap_or(Ok(()));
        drop(deleted);
        stopped
    }

    /// Prefixes a memory fault inside a shared window (revoked, or written while read-only) with the
    /// region it belonged to, so the trap says what the app touched.
    fn explain(&self, message: String) -> String {
        const MARK: &str = "memory fault at wasm address 0x";
        let addr = message.find(MARK).and_then(|i| {
            let hex: String = message[i + MARK.len()..].chars().take_while(char::is_ascii_hexdigit).collect();
            u64::from_str_radix(&hex, 16).ok()
        });
        match addr.and_then(|a| self.core.windows.explain_fault(self.id, a)) {
            Some(what) => format!("{what}: {message}"),
            None => message,
        }
    }

    /// Marks the instance as stopping and interrupts its call in progress: calls and deliveries queued
    /// behind it are refused instead of run, so stopping takes at most a tick.
    pub(crate) fn close(self: &Arc<Self>) {
        self.closing.store(true, Ordering::Release);
        self.interrupt();
    }

    /// Stops the call in progress (if any) at the next epoch tick, or now if it is parked in a wait;
    /// the instance is then trapped.
    pub(crate) fn interrupt(self: &Arc<Self>) {
        self.kill.store(true, Ordering::Release);
        self.wake();
    }

    /// A snapshot of the status.
    pub(crate) fn status(&self) -> InstanceStatus {
        self.status.lock().clone()
    }
}

/// The error an instance that must stop traps with (see [`Fence::stop`]): raised by the epoch callback
/// and by host calls, or added when a call returns normally after a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StopTrap(pub(crate) Stop);

impl std::fmt::Display for StopTrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Stop::Fault { addr } => write!(f, "memory fault outside wasm code at wasm address {addr:#x}"),
            Stop::Sealed => f.write_str("the instance's memory was sealed"),
        }
    }
}

impl std::error::Error for StopTrap {}

/// A call that returned normally after a fault outside wasm code (straight-line code after a helper
/// that faulted reaches no epoch check) still traps.
fn stopped(store: &Store<InstanceState>, outcome: wasmtime::Result<()>) -> wasmtime::Result<()> {
    match (outcome, store.data().ctx.fence.stop()) {
        (Ok(()), Some(stop)) => Err(wasmtime::Error::new(StopTrap(stop))),
        (outcome, _) => outcome,
    }
}

/// When a call of `timeout` started now must end.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout).unwrap_or(now + Duration::from_secs(365 * 24 * 3600))
}

fn kind_of_type(t: &ValType) -> &'static str {
    match t {
        ValType::I32 => "i32",
        ValType::I64 => "i64",
        ValType::F32 => "f32",
        ValType::F64 => "f64",
        ValType::V128 => "v128",
        ValType::Ref(_) => "ref",
    }
}

fn kind_of_val(v: &Val) -> &'static str {
    match v {
        Val::I32(_) => "i32",
        Val::I64(_) => "i64",
        Val::F32(_) => "f32",
        Val::F64(_) => "f64",
        Val::V128(_) => "v128",
        // Reference arguments are not accepted from the host API: they would be refused anyway.
        _ => "ref",
    }
}

/// The arguments of one callback call, by kind.
enum Delivery {
    Watch(WatchParams),
    Native(NativeParams),
}

/// The job that delivers an instance's queued events to its callbacks.
fn delivery_job() -> Job {
    let mut job = Job::new(|cell, mut live| {
        Box::pin(async move {
            cell.drain_events(&mut live).await;
            live
        })
    });
    job.delivering = true;
    job
}

/// A delivery on the writing thread that runs longer than this (or suspends) sends the instance's
/// next [`HERE_COOLDOWN`] deliveries through its mailbox.
const HERE_SLICE: Duration = Duration::from_micros(200);

/// See [`HERE_SLICE`].
const HERE_COOLDOWN: u32 = 1024;

/// The delivery scope open on a thread (see [`CallbacksHere`]).
enum Scope {
    /// None: deliveries are posted to the instances' mailboxes.
    Closed,
    /// Deliveries run on this thread at the scope's end: the instances, in order.
    Here(Vec<Arc<InstanceCell>>),
    /// Deliveries are posted, whatever scope is open outside this one.
    Queued,
}

thread_local! {
    /// The delivery scope open on this thread.
    static DEFERRED: std::cell::RefCell<Scope> = const { std::cell::RefCell::new(Scope::Closed) };
}

/// A scope in which host writes on this thread (not a worker) leave the watch callbacks they trigger
/// to the scope's end, which delivers them on this thread to every instance that is idle then, instead
/// of through a worker: a callback costs about a call, not a wake-up and two context switches.
///
/// Watchers run while the writer holds the region's lock, so the callbacks cannot run there (they may
/// read the region); the scope ends after the write released it. Each delivery is one turn of its
/// instance, under its lock, never beside a call of it ([`PoolHandle::run_here`]), with the same checks
/// and budget as on a worker; a call still running at an epoch tick once its turn is
/// [`super::pool::HERE_GRACE`] old moves to a worker. The scope stops running deliveries here once
/// they have taken [`HERE_SLICE`] together and posts the rest, so the thread is back within about a
/// tick and a grace per write (a single host operation without an epoch check inside, one large
/// `memory.fill`, can overrun that by its own length, as it can a worker's tick).
///
/// A scope opened inside a `Here` scope joins it. One opened while this thread publishes a region's
/// change (a host watcher writing another region, under the first region's lock) is `Queued`
/// instead, as is [`CallbacksHere::queued`]: app code never runs on a thread holding a region's lock,
/// and a queued write never runs it on its caller. Deliveries left when a thread unwinds from a panic
/// are posted.
pub(crate) struct CallbacksHere {
    /// What was open before this scope (restored when it ends); `None` if this scope joined it.
    outer: Option<Scope>,
}

impl CallbacksHere {
    /// Opens a scope that runs deliveries on this thread (or joins the one open), unless this thread is
    /// publishing a region's change: then a queued one.
    pub(crate) fn begin() -> CallbacksHere {
        if crate::region::publishing() {
            return CallbacksHere::queued();
        }
        let outer = DEFERRED
            .try_with(|d| {
                let mut d = d.borrow_mut();
                match &*d {
                    Scope::Here(_) => None,
                    _ => Some(std::mem::replace(&mut *d, Scope::Here(Vec::new()))),
                }
            })
            .ok()
            .flatten();
        CallbacksHere { outer }
    }

    /// Opens a scope in which every delivery is posted to the instances' workers, whatever is open
    /// outside it.
    pub(crate) fn queued() -> CallbacksHere {
        let outer = DEFERRED.try_with(|d| std::mem::replace(&mut *d.borrow_mut(), Scope::Queued)).ok();
        CallbacksHere { outer }
    }

    /// Leaves `cell`'s delivery to the `Here` scope open on this thread; false if none is.
    fn defer(cell: &Arc<InstanceCell>) -> bool {
        DEFERRED
            .try_with(|d| match d.try_borrow_mut().as_deref_mut() {
                Ok(Scope::Here(cells)) => {
                    cells.push(Arc::clone(cell));
                    true
                }
                _ => false,
            })
            .unwrap_or(false)
    }
}

impl Drop for CallbacksHere {
    fn drop(&mut self) {
        let Some(outer) = self.outer.take() else { return };
        // Closed before any callback runs: what the callbacks trigger goes through the mailboxes.
        let scope = DEFERRED.try_with(|d| std::mem::replace(&mut *d.borrow_mut(), outer));
        let Ok(Scope::Here(cells)) = scope else { return };
        // Whatever is not run here (the scope's time is up, the thread unwinds, or a delivery panics)
        // is posted: an instance whose delivery is pending and neither run nor posted would never
        // hear of its events again.
        let mut rest = Posted(cells.into_iter());
        if std::thread::panicking() {
            return;
        }
        // One delivery (the common case) needs no clock of its own.
        let started = (rest.0.len() > 1).then(Instant::now);
        for cell in rest.0.by_ref() {
            cell.deliver_here();
            if started.is_some_and(|t| t.elapsed() > HERE_SLICE) {
                return;
            }
        }
    }
}

/// Instances whose delivery is posted to their workers when this drops.
struct Posted(std::vec::IntoIter<Arc<InstanceCell>>);

impl Drop for Posted {
    fn drop(&mut self) {
        for cell in self.0.by_ref() {
            cell.pool.submit(&cell, delivery_job());
        }
    }
}

/// A weak reference to an instance for event producers: delivering to a stopped instance is a no-op
/// that reports failure.
#[derive(Clone)]
pub(crate) struct EventSink(Weak<InstanceCell>);

thread_local! {
    /// The instance whose callbacks this thread is delivering right now, if any.
    static DELIVERING: std::cell::Cell<Option<InstanceId>> = const { std::cell::Cell::new(None) };
}

/// Marks this thread as delivering to an instance until dropped.
struct Delivering(Option<InstanceId>);

impl Delivering {
    fn enter(id: InstanceId) -> Delivering {
        Delivering(DELIVERING.with(|d| d.replace(Some(id))))
    }
}

impl Drop for Delivering {
    fn drop(&mut self) {
        DELIVERING.with(|d| d.set(self.0));
    }
}

impl EventSink {
    /// Registers a watch of this instance (see [`EventQueue::watch_started`]).
    pub(crate) fn watch_started(&self, source: u64) {
        if let Some(cell) = self.0.upgrade() {
            cell.events.watch_started(source);
        }
    }

    /// Ends a watch of this instance: its queued events are dropped and no callback of it runs later.
    pub(crate) fn watch_ended(&self, source: u64) {
        if let Some(cell) = self.0.upgrade() {
            let dropped = cell.events.watch_ended(source);
            cell.tenant.events_taken(u64::try_from(dropped).unwrap_or(u64::MAX));
            cell.dead_events.fetch_add(u64::try_from(dropped).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }

    /// Queues an event for the instance; false if the instance is gone or not running. An event produced
    /// on the thread that is delivering to this same instance comes from its own callback: an echo.
    pub(crate) fn deliver(&self, mut e: Pending) -> bool {
        match self.0.upgrade() {
            Some(cell) if cell.status.lock().state == RunState::Running => {
                e.echo = DELIVERING.with(std::cell::Cell::get) == Some(cell.id);
                cell.deliver(e);
                true
            }
            Some(cell) => {
                cell.dead_events.fetch_add(1, Ordering::Relaxed);
                false
            }
            None => false,
        }
    }
}
