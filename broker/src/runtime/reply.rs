//! A one-shot reply slot: how a thread that handed a worker a job waits for its result.
//!
//! The waiting thread (an embedder's, a control-plane handler's) sleeps in the kernel at once, without
//! spinning or calling `sched_yield` first as a channel's receiver does. The broker's workers run
//! below those threads (see `priority`): a waiter that yields keeps its CPU from a worker queued on
//! it, which on a small machine is often the worker that would produce the reply, and on a busy one a
//! victim's next job. Measured in `broker scenario run noisy-neighbor`: a yielding wait let a driver
//! thread hold a core while a worker stood runnable on it for milliseconds.

use parking_lot::{Condvar, Mutex};
use std::sync::Arc;

struct Slot<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

enum State<T> {
    Waiting,
    Sent(T),
    /// The sender was dropped unsent (the job was dropped: the broker is shutting down), or the value
    /// was taken.
    Closed,
}

/// Sends the one reply; dropping it unsent wakes the receiver with `None`.
pub(crate) struct ReplyTx<T>(Option<Arc<Slot<T>>>);

/// Receives the one reply.
pub(crate) struct ReplyRx<T>(Arc<Slot<T>>);

/// A connected pair.
pub(crate) fn reply<T>() -> (ReplyTx<T>, ReplyRx<T>) {
    let slot = Arc::new(Slot { state: Mutex::new(State::Waiting), ready: Condvar::new() });
    (ReplyTx(Some(Arc::clone(&slot))), ReplyRx(slot))
}

impl<T> ReplyTx<T> {
    /// Delivers `value` and wakes the receiver (a value nobody waits for any more is dropped).
    pub(crate) fn send(mut self, value: T) {
        if let Some(slot) = self.0.take() {
            Self::finish(&slot, State::Sent(value));
        }
    }

    fn finish(slot: &Slot<T>, to: State<T>) {
        let mut s = slot.state.lock();
        if matches!(*s, State::Waiting) {
            *s = to;
        }
        drop(s);
        slot.ready.notify_one();
    }
}

impl<T> Drop for ReplyTx<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            Self::finish(&slot, State::Closed);
        }
    }
}

impl<T> ReplyRx<T> {
    /// Waits for the reply; `None` if the sender was dropped without one.
    pub(crate) fn recv(self) -> Option<T> {
        let mut s = self.0.state.lock();
        while matches!(*s, State::Waiting) {
            self.0.ready.wait(&mut s);
        }
        match std::mem::replace(&mut *s, State::Closed) {
            State::Sent(v) => Some(v),
            State::Waiting | State::Closed => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reply;

    #[test]
    fn a_reply_sent_from_another_thread_arrives() {
        let (tx, rx) = reply();
        let t = std::thread::spawn(move || tx.send(42u32));
        assert_eq!(rx.recv(), Some(42));
        t.join().expect("sender");
    }

    #[test]
    fn a_sender_dropped_unsent_wakes_the_receiver_with_none() {
        let (tx, rx) = reply::<u32>();
        let t = std::thread::spawn(move || drop(tx));
        assert_eq!(rx.recv(), None);
        t.join().expect("sender");
    }

    #[test]
    fn a_reply_sent_before_the_wait_is_kept() {
        let (tx, rx) = reply();
        tx.send(String::from("early"));
        assert_eq!(rx.recv().as_deref(), Some("early"));
    }
}
