//! Timers for suspended calls: a host call that waits (`region_wait`) parks its instance's call and
//! asks to be woken at its deadline; the epoch thread fires due timers at every tick.
//!
//! Firing on the epoch thread keeps the broker at one timekeeping thread, and a tick (see
//! [`super::engine::EPOCH_TICK`]) is as fine as a deadline that is also only checked at ticks needs to
//! be. A timer is cancelled when the wait that set it ends, so timers never outnumber waiting calls.

use std::collections::BTreeMap;
use std::task::Waker;
use std::time::Instant;

use parking_lot::Mutex;

/// Wakers to call at given instants.
#[derive(Default)]
pub(crate) struct Timers {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Due time and a sequence number (ties are fine) to the waker.
    due: BTreeMap<(Instant, u64), Waker>,
    next: u64,
}

/// Identifies a set timer, to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimerKey(Instant, u64);

impl Timers {
    /// Calls `waker` at the first tick at or after `at`.
    pub(crate) fn set(&self, at: Instant, waker: Waker) -> TimerKey {
        let mut inner = self.inner.lock();
        let seq = inner.next;
        inner.next = inner.next.wrapping_add(1);
        inner.due.insert((at, seq), waker);
        TimerKey(at, seq)
    }

    /// Forgets a timer (a no-op if it already fired).
    pub(crate) fn cancel(&self, key: TimerKey) {
        self.inner.lock().due.remove(&(key.0, key.1));
    }

    /// Wakes every timer due at `now`; the wakers run after the lock is released.
    pub(crate) fn fire(&self, now: Instant) {
        let fired = {
            let mut inner = self.inner.lock();
            let later = inner.due.split_off(&(now, u64::MAX));
            std::mem::replace(&mut inner.due, later)
        };
        for waker in fired.into_values() {
            waker.wake();
        }
    }

    /// Timers set and not yet fired or cancelled.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().due.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use std::time::Duration;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn timers_fire_once_when_due_and_not_after_cancel() {
        let timers = Timers::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let t0 = Instant::now();
        let waker = Waker::from(Arc::clone(&count));
        timers.set(t0 + Duration::from_millis(10), waker.clone());
        let cancelled = timers.set(t0 + Duration::from_millis(10), waker.clone());
        timers.set(t0 + Duration::from_millis(20), waker);
        timers.cancel(cancelled);
        timers.fire(t0 + Duration::from_millis(5));
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "nothing is due yet");
        timers.fire(t0 + Duration::from_millis(10));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "due at exactly now fires; the cancelled one does not");
        timers.fire(t0 + Duration::from_millis(15));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "a fired timer does not fire again");
        assert_eq!(timers.len(), 1);
        timers.fire(t0 + Duration::from_secs(1));
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert_eq!(timers.len(), 0, "fired timers are forgotten");
    }
}
