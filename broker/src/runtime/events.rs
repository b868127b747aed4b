//! Events for apps: change notifications (watch) and native library callbacks, queued per instance and
//! delivered by calling the app's callback on its own worker.
//!
//! A wasm "function pointer" is an index into the instance's exported function table
//! (`__indirect_function_table`). [`check_callback`] validates an index and its signature when the app
//! registers it; delivery looks it up again and calls it with the call's epoch budget. Each instance has
//! a bounded queue: when it is full, a new event is merged into the last pending event of the same
//! source (version and range widened, `missed` counted), so a slow app costs bounded memory and still
//! learns how much it missed. Change notifications are bounded per watch too: beyond
//! [`WATCH_SOURCE_CAPACITY`] undelivered changes of one watch, the next merge into its newest, so a
//! tenant that floods a region others watch costs each watcher a few callbacks per delivery, not one
//! per write (a change notification says "the region moved on to version v"; merged ones lose nothing
//! the app can act on). Events keep the order they were produced in.

use std::collections::VecDeque;

use parking_lot::Mutex;
use rustc_hash::{FxHashMap, FxHashSet};
use wasmtime::{AsContextMut, Caller, FuncType, Ref, Table, ValType};

/// Events pending per instance before they are merged.
pub const QUEUE_CAPACITY: usize = 256;

/// Undelivered change notifications of one watch beyond which new changes merge into the newest.
pub const WATCH_SOURCE_CAPACITY: usize = 8;

/// The export that holds a wasm module's function table.
pub const TABLE_EXPORT: &str = "__indirect_function_table";

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A region changed: `(handle, version, offset, len)`.
    Watch {
        /// The handle the watch was registered through.
        handle: u32,
        /// The region's version after the change.
        version: u64,
        /// Start of the changed bytes.
        offset: u64,
        /// Number of changed bytes.
        len: u64,
    },
    /// A native object fired an event.
    Native {
        /// The object's handle in the app.
        object: u32,
        /// The event code.
        code: u32,
        /// The event's parameter.
        param: i32,
    },
}

/// One queued event with the callback it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Identifies the registration, so events of the same source can be merged.
    pub source: u64,
    /// Table index of the app's callback.
    pub callback: u32,
    /// The app's user data, passed back verbatim.
    pub user_data: u32,
    /// The event.
    pub kind: EventKind,
    /// Events merged into this one.
    pub missed: u32,
    /// Whether the app's own callback produced this event while it was being delivered to (set by the
    /// broker; a chain of such echoes is a callback loop).
    pub echo: bool,
}

/// Consecutive deliveries made only of echoes (events the app's own callbacks produced) after which
/// the app is stopped as a callback loop.
pub const MAX_ECHO_CHAIN: u32 = 1024;

/// What [`EventQueue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// No delivery was pending: the caller must schedule one.
    pub schedule: bool,
    /// The queue holds one more event (the tenant's count of queued events goes up).
    pub grew: bool,
}

/// The bounded queue of an instance.
#[derive(Debug, Default)]
pub struct EventQueue {
    inner: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Pending>,
    /// Whether a delivery job is posted (or left to a scope that runs it on the writing thread, see
    /// `runtime::CallbacksHere`) and has not started draining yet.
    scheduled: bool,
    /// Events merged away so far (for stats).
    merged: u64,
    /// Pending watch events per source. Sources are capability ids the broker assigns, so a fast
    /// hasher is safe.
    watch_pending: FxHashMap<u64, usize>,
    /// Watches registered and not yet ended: an event of any other watch source is dropped, queued or
    /// not, so no callback of a watch runs after its unwatch, close or revoke returned.
    live_watches: FxHashSet<u64>,
}

impl EventQueue {
    /// Registers a watch source: its events are queued from now on.
    pub fn watch_started(&self, source: u64) {
        self.inner.lock().live_watches.insert(source);
    }

    /// Ends a watch source: its pending events are dropped, and later ones are not queued; returns how
    /// many pending events were dropped.
    pub fn watch_ended(&self, source: u64) -> usize {
        let mut q = self.inner.lock();
        q.live_watches.remove(&source);
        q.watch_pending.remove(&source);
        let before = q.events.len();
        q.events.retain(|e| !(e.source == source && matches!(e.kind, EventKind::Watch { .. })));
        before - q.events.len()
    }

    /// Whether an event may still be delivered (a watch event only while its watch is live).
    pub fn deliverable(&self, e: &Pending) -> bool {
        !matches!(e.kind, EventKind::Watch { .. }) || self.inner.lock().live_watches.contains(&e.source)
    }

    /// Queues an event; says whether the caller must schedule a delivery job and whether the queue
    /// grew (rather than merging the event into a pending one or replacing the oldest).
    pub fn push(&self, e: Pending) -> Pushed {
        let mut q = self.inner.lock();
        let q = &mut *q;
        let is_watch = matches!(e.kind, EventKind::Watch { .. });
        if is_watch && !q.live_watches.contains(&e.source) {
            // The watch ended (or never started): nothing of it is delivered any more.
            return Pushed { schedule: false, grew: false };
        }
        if is_watch && q.watch_pending.get(&e.source).is_some_and(|n| *n >= WATCH_SOURCE_CAPACITY) {
            if let Some(last) = q.events.iter_mut().rev().find(|p| p.source == e.source) {
                merge(last, &e);
                q.merged += 1;
                // Events of this source are pending, so a delivery is already scheduled.
                return Pushed { schedule: false, grew: false };
            }
        }
        let grew = if q.events.len() >= QUEUE_CAPACITY {
            if let Some(last) = q.events.iter_mut().rev().find(|p| p.source == e.source) {
                merge(last, &e);
                q.merged += 1;
                return Pushed { schedule: false, grew: false };
            }
            // Nothing of this source to merge into: drop the oldest event instead, counted on the new one.
            if let Some(oldest) = q.events.pop_front() {
                if let Some(n) = q.watch_pending.get_mut(&oldest.source) {
                    *n = n.saturating_sub(1);
                }
            }
            q.merged += 1;
            let mut e = e;
            e.missed = e.missed.saturating_add(1);
            q.events.push_back(e);
            false
        } else {
            q.events.push_back(e);
            true
        };
        if is_watch {
            *q.watch_pending.entry(e.source).or_default() += 1;
        }
        let schedule = !q.scheduled;
        q.scheduled = true;
        Pushed { schedule, grew }
    }

    /// Takes every pending event (the delivery job calls this before delivering).
    pub fn take(&self) -> VecDeque<Pending> {
        let mut taken = VecDeque::new();
        self.take_into(&mut taken);
        taken
    }

    /// Swaps every pending event into `into`, which must be empty: the queue keeps `into`'s buffer, so a
    /// delivery that hands back its emptied buffer allocates nothing.
    pub fn take_into(&self, into: &mut VecDeque<Pending>) {
        debug_assert!(into.is_empty());
        let mut q = self.inner.lock();
        q.scheduled = false;
        q.watch_pending.clear();
        std::mem::swap(&mut q.events, into);
    }

    /// Events merged away since the instance started.
    pub fn merged(&self) -> u64 {
        self.inner.lock().merged
    }
}

fn merge(into: &mut Pending, e: &Pending) {
    into.missed = into.missed.saturating_add(1).saturating_add(e.missed);
    into.echo = into.echo && e.echo;
    match (&mut into.kind, e.kind) {
        (
            EventKind::Watch { version, offset, len, .. },
            EventKind::Watch { version: v2, offset: o2, len: l2, .. },
        ) => {
            let start = (*offset).min(o2);
            let end = (*offset + *len).max(o2 + l2);
            *version = (*version).max(v2);
            *offset = start;
            *len = end - start;
        }
        (k, other) => *k = other,
    }
}

/// Parameter types of a watch callback: `(user_data, handle, version, offset, len, missed)`.
pub fn watch_signature() -> [ValType; 6] {
    [ValType::I32, ValType::I32, ValType::I64, ValType::I64, ValType::I64, ValType::I32]
}

/// Parameter types of a native event callback: `(user_data, object, code, param, missed)`.
pub fn native_signature() -> [ValType; 5] {
    [ValType::I32, ValType::I32, ValType::I32, ValType::I32, ValType::I32]
}

/// Why a callback was refused at registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// The module exports no function table.
    #[error("the module exports no function table ({TABLE_EXPORT}); link with --export-table")]
    NoTable,
    /// Index 0 (the null function pointer) or an empty table slot.
    #[error("callback {0} is a null function pointer")]
    Null(u32),
    /// The index lies beyond the table.
    #[error("callback {index} is outside the function table of {size} entries")]
    OutOfRange {
        /// The index.
        index: u32,
        /// The table's size.
        size: u64,
    },
    /// The function has another signature.
    #[error("callback {index} has signature {found}, expected ({expected}) -> ()")]
    WrongSignature {
        /// The index.
        index: u32,
        /// Its type.
        found: String,
        /// The parameters expected.
        expected: String,
    },
}

fn kinds(ps: &[ValType]) -> String {
    ps.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Looks up `index` in the instance's table and checks it is a function with parameters `params` and no
/// results.
///
/// # Errors
/// [`CallbackError`] naming what is wrong.
pub fn check_callback<T>(
    caller: &mut Caller<'_, T>,
    index: u32,
    params: &[ValType],
) -> Result<(), CallbackError> {
    let table = caller
        .get_export(TABLE_EXPORT)
        .and_then(wasmtime::Extern::into_table)
        .ok_or(CallbackError::NoTable)?;
    check_in_table(caller, table, index, params)
}

pub(crate) fn check_in_table(
    mut store: impl AsContextMut,
    table: Table,
    index: u32,
    params: &[ValType],
) -> Result<(), CallbackError> {
    let size = table.size(&store);
    if index == 0 {
        return Err(CallbackError::Null(index));
    }
    let func = match table.get(&mut store, u64::from(index)) {
        None => return Err(CallbackError::OutOfRange { index, size }),
        Some(Ref::Func(Some(f))) => f,
        Some(_) => return Err(CallbackError::Null(index)),
    };
    let ty: FuncType = func.ty(&store);
    let ok = ty.results().len() == 0
        && ty.params().len() == params.len()
        && ty.params().zip(params).all(|(a, b)| ValType::eq(&a, b));
    if ok {
        Ok(())
    } else {
        let found = format!(
            "({}) -> ({})",
            kinds(&ty.params().collect::<Vec<_>>()),
            kinds(&ty.results().collect::<Vec<_>>())
        );
        Err(CallbackError::WrongSignature { index, found, expected: kinds(params) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(source: u64, version: u64, offset: u64) -> Pending {
        Pending {
            source,
            callback: 1,
            user_data: 0,
            kind: EventKind::Watch { handle: 1, version, offset, len: 8 },
            missed: 0,
            echo: false,
        }
    }

    fn native(source: u64, param: i32) -> Pending {
        Pending {
            source,
            callback: 1,
            user_data: 0,
            kind: EventKind::Native { object: 1, code: 3, param },
            missed: 0,
            echo: false,
        }
    }

    #[test]
    fn changes_of_one_watch_merge_beyond_its_capacity() {
        let q = EventQueue::default();
        q.watch_started(1);
        q.watch_started(2);
        assert_eq!(q.push(watch(1, 1, 0)), Pushed { schedule: true, grew: true });
        let mut grew = 1;
        for v in 2..=1000u64 {
            let pushed = q.push(watch(1, v, (v % 3) * 8));
            assert!(!pushed.schedule, "already scheduled");
            grew += usize::from(pushed.grew);
        }
        assert_eq!(grew, WATCH_SOURCE_CAPACITY, "merged events do not grow the queue");
        q.push(watch(2, 1001, 0));
        let events = q.take();
        let of_one: Vec<&Pending> = events.iter().filter(|p| p.source == 1).collect();
        assert_eq!(of_one.len(), WATCH_SOURCE_CAPACITY);
        let last = of_one.last().copied().copied().expect("events");
        assert_eq!(last.missed as usize, 1000 - WATCH_SOURCE_CAPACITY);
        assert_eq!(last.kind, EventKind::Watch { handle: 1, version: 1000, offset: 0, len: 24 });
        assert_eq!(events.len(), WATCH_SOURCE_CAPACITY + 1, "another watch is not merged into it");
        assert_eq!(q.merged() as usize, 1000 - WATCH_SOURCE_CAPACITY);
        assert!(q.push(watch(1, 2000, 0)).schedule, "after a take, the next push schedules again");
    }

    #[test]
    fn a_full_queue_merges_into_the_same_source_and_counts() {
        let q = EventQueue::default();
        assert!(q.push(native(1, 0)).schedule);
        for k in 1..QUEUE_CAPACITY {
            let pushed = q.push(native(1, i32::try_from(k).expect("small")));
            assert_eq!(pushed, Pushed { schedule: false, grew: true }, "already scheduled");
        }
        // Full: the next events merge into the last one of their source.
        assert!(!q.push(native(1, 1000)).grew);
        assert!(!q.push(native(1, 1001)).grew);
        let events = q.take();
        assert_eq!(events.len(), QUEUE_CAPACITY);
        let last = events.back().copied().expect("events");
        assert_eq!(last.missed, 2);
        assert_eq!(q.merged(), 2);
        let params: Vec<i32> = events
            .iter()
            .map(|p| match p.kind {
                EventKind::Native { param, .. } => param,
                EventKind::Watch { .. } => -1,
            })
            .collect();
        assert!(params[..QUEUE_CAPACITY - 1].windows(2).all(|w| w[0] < w[1]), "order kept");
    }

    #[test]
    fn a_full_queue_of_other_sources_drops_the_oldest_and_counts_it() {
        let q = EventQueue::default();
        for s in (0..QUEUE_CAPACITY as u64).chain([9999]) {
            q.watch_started(s);
        }
        for s in 0..QUEUE_CAPACITY as u64 {
            q.push(watch(s, 1, 0));
        }
        assert!(!q.push(watch(9999, 2, 0)).grew, "one in, the oldest out");
        let events = q.take();
        assert_eq!(events.len(), QUEUE_CAPACITY);
        assert_eq!(events.front().map(|p| p.source), Some(1), "the oldest went");
        assert_eq!(events.back().map(|p| (p.source, p.missed)), Some((9999, 1)));
    }

    #[test]
    fn an_ended_watch_delivers_nothing_more() {
        let q = EventQueue::default();
        assert_eq!(q.push(watch(1, 1, 0)), Pushed { schedule: false, grew: false }, "not started: dropped");
        q.watch_started(1);
        q.watch_started(2);
        assert!(q.push(watch(1, 2, 0)).grew);
        assert!(q.push(watch(2, 3, 0)).grew);
        assert!(q.push(watch(1, 4, 8)).grew);
        let first = watch(1, 5, 0);
        assert!(q.deliverable(&first));
        assert_eq!(q.watch_ended(1), 2, "its two pending events are dropped");
        assert!(!q.deliverable(&first), "an event of it taken before the end is not delivered either");
        assert!(!q.push(watch(1, 6, 0)).grew, "and none is queued after");
        let left: Vec<u64> = q.take().iter().map(|p| p.source).collect();
        assert_eq!(left, [2], "other watches keep theirs");
        assert!(q.deliverable(&native(1, 0)), "native callbacks are not watches");
    }
}
