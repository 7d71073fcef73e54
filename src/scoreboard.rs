//! The per-pool scoreboard: one shared anonymous mapping, created by the master before it
//! forks, holding pool-wide counters and one slot per worker.
//!
//! Workers write their own slot, the master and status requests read all of them. Only
//! atomics live here: std's Mutex uses process-private futexes, so it cannot guard memory
//! shared across fork.

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};
use std::io;
use std::mem::size_of;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// What a worker is doing, php-fpm's request stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum WorkerState {
    /// Waiting for a connection, or for the next request on a kept one.
    Idle = 0,
    /// Reading a request's head (BEGIN_REQUEST and params).
    Reading = 1,
    /// A CGI child is running.
    Running = 2,
    /// Finishing a response after the child is done.
    Finishing = 3,
}

impl WorkerState {
    pub fn from_u32(v: u32) -> WorkerState {
        match v {
            1 => WorkerState::Reading,
            2 => WorkerState::Running,
            3 => WorkerState::Finishing,
            _ => WorkerState::Idle,
        }
    }

    /// The name php-fpm's status page uses.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Idle => "Idle",
            WorkerState::Reading => "Reading headers",
            WorkerState::Running => "Running",
            WorkerState::Finishing => "Finishing",
        }
    }
}

/// Pool-wide counters.
#[repr(C)]
#[derive(Default)]
pub struct PoolCounters {
    pub accepted_conn: AtomicU64,
    pub requests: AtomicU64,
    pub slow_requests: AtomicU64,
}

/// One worker's slot. A slot is free when `pid` is 0; the master claims it before forking.
#[repr(C)]
#[derive(Default)]
pub struct Slot {
    pub pid: AtomicI32,
    state: AtomicU32,
    /// The running CGI child (its process group has the same id), or 0.
    pub cgi_pid: AtomicI32,
    pub requests: AtomicU64,
    pub started_at_us: AtomicU64,
    pub request_started_at_us: AtomicU64,
}

impl Slot {
    pub fn state(&self) -> WorkerState {
        WorkerState::from_u32(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, state: WorkerState) {
        self.state.store(state as u32, Ordering::Release);
    }

    /// Reset for a newly forked worker.
    pub fn claim(&self, pid: i32) {
        self.cgi_pid.store(0, Ordering::Relaxed);
        self.requests.store(0, Ordering::Relaxed);
        self.request_started_at_us.store(0, Ordering::Relaxed);
        self.started_at_us.store(now_us(), Ordering::Relaxed);
        self.set_state(WorkerState::Idle);
        self.pid.store(pid, Ordering::Release);
    }

    pub fn release(&self) {
        self.pid.store(0, Ordering::Release);
        self.cgi_pid.store(0, Ordering::Relaxed);
        self.set_state(WorkerState::Idle);
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[repr(C)]
struct Header {
    counters: PoolCounters,
}

/// A pool's shared mapping. It survives fork (workers see the master's) but not exec.
pub struct Scoreboard {
    base: NonNull<u8>,
    len: usize,
    slots: usize,
}

impl Scoreboard {
    pub fn new(slots: usize) -> io::Result<Scoreboard> {
        let len = size_of::<Header>() + slots * size_of::<Slot>();
        let size = NonZeroUsize::new(len).ok_or_else(|| io::Error::other("empty scoreboard"))?;
        // SAFETY: a fresh anonymous mapping aliases nothing; the kernel zero-fills it, and
        // all-zero bytes are a valid Header and valid Slots (every field is an atomic
        // integer). The mapping is page-aligned, which satisfies their alignment.
        let base = unsafe {
            mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }?;
        Ok(Scoreboard {
            base: base.cast(),
            len,
            slots,
        })
    }

    pub fn counters(&self) -> &PoolCounters {
        // SAFETY: the mapping starts with a Header and lives as long as `self`.
        unsafe { &(*self.base.as_ptr().cast::<Header>()).counters }
    }

    pub fn slot_count(&self) -> usize {
        self.slots
    }

    pub fn slot(&self, index: usize) -> Option<&Slot> {
        if index >= self.slots {
            return None;
        }
        // SAFETY: index is in bounds; slots follow the header contiguously and the
        // mapping lives as long as `self`. Only atomics are accessed through the reference.
        unsafe {
            let first = self.base.as_ptr().add(size_of::<Header>()).cast::<Slot>();
            Some(&*first.add(index))
        }
    }

    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        (0..self.slots).filter_map(|i| self.slot(i))
    }

    /// A slot no live worker uses.
    pub fn free_slot(&self) -> Option<usize> {
        (0..self.slots).find(|&i| {
            self.slot(i)
                .is_some_and(|s| s.pid.load(Ordering::Acquire) == 0)
        })
    }
}

impl Drop for Scoreboard {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly the mapping made in `new`, and no reference into it
        // outlives `self`.
        let _ = unsafe { munmap(self.base.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};

    #[test]
    fn slots_start_free_and_can_be_claimed() {
        let sb = Scoreboard::new(3).unwrap();
        assert_eq!(sb.free_slot(), Some(0));
        sb.slot(0).unwrap().claim(42);
        assert_eq!(sb.free_slot(), Some(1));
        assert_eq!(sb.slot(0).unwrap().state(), WorkerState::Idle);
        sb.slot(0).unwrap().release();
        assert_eq!(sb.free_slot(), Some(0));
        assert!(sb.slot(3).is_none());
    }

    #[test]
    fn a_forked_child_writes_what_the_parent_reads() {
        let sb = Scoreboard::new(2).unwrap();
        // SAFETY: the child only touches atomics in the shared mapping and then _exits.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                sb.counters().accepted_conn.fetch_add(7, Ordering::Relaxed);
                sb.slot(1).unwrap().set_state(WorkerState::Running);
                // SAFETY: _exit skips the test harness's atexit work, as a forked child must.
                unsafe { nix::libc::_exit(0) };
            }
            ForkResult::Parent { child } => {
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            }
        }
        assert_eq!(sb.counters().accepted_conn.load(Ordering::Relaxed), 7);
        assert_eq!(sb.slot(1).unwrap().state(), WorkerState::Running);
    }
}
