//! CPU priority of the broker's workers: they run below the threads that hand them calls and take
//! their replies. (Compiles run on the workers too, as their tenant's turns: see `runtime::pool`.)
//!
//! Workers are busy by design (with preemption, a spinning tenant keeps every worker busy), while the
//! threads that feed them (the control plane's, an embedder's) mostly sleep. When one of those wakes to
//! take a reply while every core runs a worker, the kernel must run it at once, not after the worker's
//! time slice: otherwise each call of a tenant waits a kernel time slice (milliseconds) for a core a
//! spinning tenant's call holds, whatever share of the workers the pool gives it.

#![allow(unsafe_code, reason = "sched_setscheduler and sched_getscheduler; each block is justified below")]

/// How the broker's workers share the host's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerPriority {
    /// `SCHED_IDLE` for the workers (which also compile): they run on whatever CPU time no normal thread wants, so
    /// the threads that feed them always get a core at once. For a host that runs the broker (the
    /// daemon's default): on a host shared with other busy processes, or in a program whose own threads
    /// busy-wait, the broker's calls get only the CPU time those leave.
    Idle,
    /// Normal scheduling, with workers at nice +5 relative to the process:
    /// for a host shared with other work. A thread feeding the workers then waits up to a kernel time
    /// slice for a core when every worker is busy.
    Normal,
}

impl std::str::FromStr for WorkerPriority {
    type Err = String;

    fn from_str(s: &str) -> Result<WorkerPriority, String> {
        match s {
            "idle" => Ok(WorkerPriority::Idle),
            "normal" => Ok(WorkerPriority::Normal),
            other => Err(format!("{other:?} is not a worker priority: idle or normal")),
        }
    }
}

impl std::fmt::Display for WorkerPriority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkerPriority::Idle => "idle",
            WorkerPriority::Normal => "normal",
        })
    }
}

/// Lowers the calling worker's priority (never raises it: that would need privileges). A kernel that
/// refuses leaves the thread as it was, which costs latency, not correctness.
pub(crate) fn lower_this_thread(priority: WorkerPriority) {
    let lowered = match priority {
        WorkerPriority::Idle => set_idle_policy(),
        WorkerPriority::Normal => {
            let me = rustix::thread::gettid();
            let own = rustix::process::getpriority_process(Some(me)).unwrap_or(0);
            rustix::process::setpriority_process(Some(me), own.saturating_add(5))
                .map_err(std::io::Error::from)
        }
    };
    if let Err(e) = lowered {
        tracing::debug!(%priority, "worker keeps its priority: {e}");
    }
}

/// Switches the calling thread to `SCHED_IDLE` (allowed without privileges).
fn set_idle_policy() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler` reads the `sched_param` it is given, which lives on this stack for
    // the duration of the call; pid 0 is the calling thread. It has no other memory effect.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread's scheduling policy (`libc::SCHED_*`).
#[cfg(test)]
fn this_thread_policy() -> i32 {
    // SAFETY: `sched_getscheduler` takes a pid (0: the calling thread) and touches no memory.
    unsafe { libc::sched_getscheduler(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_a_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| s.spawn(f).join().expect("thread"))
    }

    #[test]
    fn idle_priority_puts_workers_in_the_idle_class() {
        let policy = on_a_thread(|| {
            lower_this_thread(WorkerPriority::Idle);
            this_thread_policy()
        });
        assert_eq!(policy, libc::SCHED_IDLE);
        assert_ne!(this_thread_policy(), libc::SCHED_IDLE, "the caller's thread is untouched");
    }

    #[test]
    fn normal_priority_nices_workers() {
        let own = rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("priority");
        let (policy, nice) = on_a_thread(|| {
            lower_this_thread(WorkerPriority::Normal);
            (this_thread_policy(), rustix::process::getpriority_process(Some(rustix::thread::gettid())))
        });
        assert_eq!(policy, libc::SCHED_OTHER);
        assert_eq!(nice.expect("priority"), (own + 5).min(19));
    }

    #[test]
    fn priorities_parse_and_print() {
        for p in [WorkerPriority::Idle, WorkerPriority::Normal] {
            assert_eq!(p.to_string().parse::<WorkerPriority>(), Ok(p));
        }
        assert!("realtime".parse::<WorkerPriority>().is_err_and(|e| e.contains("idle or normal")));
    }
}
