//! `region_wait`: a host call that parks the calling instance until a notify, its timeout or the call's
//! end, without holding a worker.
//!
//! The call is an async host function: while it waits, wasmtime suspends the instance's fiber and the
//! worker goes back to the pool. The wait is woken by `region_notify` (through the region's
//! [`crate::region::Waiters`]), by a timer at the earlier of its own timeout and the call's deadline,
//! or by the host interrupting the instance; each wake-up re-checks everything, so a spurious one
//! costs a poll and nothing else.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use broker_abi::Status;
use wasmtime::Trap;

use super::{code, AbiError, Ctx};
use crate::capability::Rights;
use crate::region::Region;
use crate::runtime::StopTrap;

/// What a wait parked as.
struct Parked {
    /// The region's notify generation when the wait parked.
    generation: u64,
    /// The waiter's key in the region's list.
    key: u64,
    timer: crate::runtime::TimerKey,
}

/// A `region_wait` in progress.
pub(super) struct Wait<'a> {
    caller: Ctx<'a>,
    /// Checked before the wait parks: the handle's capability, the word's offset, the value it waits
    /// to change from and when the wait times out.
    ready: Result<(Arc<Region>, u64, u32, Instant), AbiError>,
    parked: Option<Parked>,
}

impl<'a> Wait<'a> {
    /// Checks the handle and offset; the wait itself happens when the future is polled.
    pub(super) fn new(caller: Ctx<'a>, handle: u32, offset: i64, expected: u32, timeout_ms: u32) -> Wait<'a> {
        let ready = (|| {
            let cap = caller.data().ctx.lookup(handle)?;
            cap.require(Rights::READ)?;
            let at = cap.range.access(offset, 4)?;
            let timeout = Duration::from_millis(u64::from(timeout_ms.min(broker_abi::MAX_WAIT_MS)));
            Ok((Arc::clone(&cap.region), at, expected, Instant::now() + timeout))
        })();
        Wait { caller, ready, parked: None }
    }

    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<wasmtime::Result<i32>> {
        let state = self.caller.data();
        if let Some(stop) = state.ctx.fence.stop() {
            return Poll::Ready(Err(wasmtime::Error::new(StopTrap(stop))));
        }
        // The call's own deadline and the host's interrupt end a wait as they end a running call.
        if state.interrupted() {
            return Poll::Ready(Err(wasmtime::Error::new(Trap::Interrupt)));
        }
        let (region, at, expected, until) = match &self.ready {
            Ok(r) => r,
            Err(e) => return Poll::Ready(Ok(code(Err(e.clone())))),
        };
        let mut waiters = region.waiters.lock();
        match &self.parked {
            None => {
                // Checked under the waiters lock, which `region_notify` takes too: a store followed by
                // a notify cannot slip between this check and parking.
                match region.memory.load_u32(*at) {
                    Ok(v) if v != *expected => return Poll::Ready(Ok(Status::Ok.code())),
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Ok(code(Err(e.into())))),
                }
                if Instant::now() >= *until {
                    return Poll::Ready(Ok(code(Err(AbiError::TimedOut))));
                }
                let generation = waiters.generation();
                let key = waiters.park(cx.waker());
                drop(waiters);
                let wake_at = (*until).min(state.call_deadline());
                let timer = state.ctx.core.timers.set(wake_at, cx.waker().clone());
                self.parked = Some(Parked { generation, key, timer });
                Poll::Pending
            }
            Some(p) if waiters.generation() != p.generation => Poll::Ready(Ok(Status::Ok.code())),
            Some(_) if Instant::now() >= *until => Poll::Ready(Ok(code(Err(AbiError::TimedOut)))),
            Some(p) => {
                waiters.repark(p.key, cx.waker());
                Poll::Pending
            }
        }
    }
}

impl Future for Wait<'_> {
    type Output = wasmtime::Result<i32>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_wait(cx)
    }
}

impl Drop for Wait<'_> {
    /// However the wait ends (woken, timed out, or dropped with its instance), it leaves neither a
    /// waiter nor a timer behind.
    fn drop(&mut self) {
        if let (Some(p), Ok((region, ..))) = (self.parked.take(), &self.ready) {
            region.waiters.lock().unpark(p.key);
            self.caller.data().ctx.core.timers.cancel(p.timer);
        }
    }
}

/// `region_notify`: wakes every call parked on the region.
pub(super) fn region_notify(caller: &mut Ctx<'_>, handle: u32, offset: i64) -> Result<(), AbiError> {
    let cap = caller.data().ctx.lookup(handle)?;
    cap.require(Rights::WRITE)?;
    cap.range.access(offset, 4)?;
    let woken = cap.region.waiters.lock().notify();
    for waker in woken {
        waker.wake();
    }
    Ok(())
}
