//! The per-pool scoreboard: one shared anonymous mapping, created by the master before it
//! forks, holding pool-wide counters and one slot per worker.
//!
//! Workers write their own slot, the master and status requests read all of them. Only
//! atomics live here: std's Mutex uses process-private futexes, so it cannot guard memory
//! shared across fork. A slot's multi-field updates (a request's method, URI, script…)
//! go through a per-slot sequence counter (a seqlock): a reader retries while a write is
//! in progress or if one happened under it, so it never mixes two requests' fields. Each
//! slot has one writer at a time: the master while no worker owns it, else its worker.

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};
use std::io;
use std::mem::size_of;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

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
    /// Requests begun (php-fpm's "accepted conn", which also counts requests, not
    /// connections).
    pub accepted_conn: AtomicU64,
    /// CGI requests served.
    pub requests: AtomicU64,
    /// Requests that ran past `request_slowlog_timeout`.
    pub slow_requests: AtomicU64,
    /// Times the pool manager wanted more workers than `pm.max_children` allows.
    pub max_children_reached: AtomicU64,
    /// The most workers busy at once.
    pub max_active: AtomicU32,
    /// The longest listen queue seen.
    pub max_listen_queue: AtomicU32,
    /// When the pool started, in microseconds since the Unix epoch.
    pub start_time_us: AtomicU64,
    /// Parked kept connections workers took from the master (see `parking`).
    pub handoffs_taken: AtomicU64,
    /// Non-zero while the master sleeps with no round scheduled: the first worker to get
    /// busy must ring the master's doorbell (see [`Scoreboard::arm_doorbell`]).
    master_asleep: AtomicU32,
    /// Requests the master answered 503 because no worker came free within
    /// request_queue_timeout.
    pub queue_refusals: AtomicU64,
    /// Connections the master holds for this pool until a worker comes free (they are
    /// part of the `listen queue` the status page shows).
    pub held_for_worker: AtomicU32,
    /// Non-zero while the master holds connections for this pool: a worker that turns
    /// idle must ring the doorbell, so that the master hands it the oldest (see
    /// [`Scoreboard::idle_wanted`]).
    master_holding: AtomicU32,
}

/// Bytes kept of a request's method.
pub const METHOD_BYTES: usize = 16;
/// Bytes kept of a request's URI with its query string.
pub const URI_BYTES: usize = 512;
/// Bytes kept of a request's script path.
pub const SCRIPT_BYTES: usize = 256;
/// Bytes kept of a request's user name.
pub const USER_BYTES: usize = 64;

/// A short byte string in shared memory: a length and 8-byte words, all atomics.
#[repr(C)]
struct Text<const WORDS: usize> {
    len: AtomicU32,
    words: [AtomicU64; WORDS],
}

impl<const WORDS: usize> Text<WORDS> {
    const CAPACITY: usize = WORDS * 8;

    fn store(&self, bytes: &[u8]) {
        let bytes = truncate_utf8(bytes, Self::CAPACITY);
        for (word, chunk) in self.words.iter().zip(bytes.chunks(8)) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_le_bytes(buf), Ordering::Relaxed);
        }
        self.len.store(bytes.len() as u32, Ordering::Relaxed);
    }

    fn load(&self) -> Vec<u8> {
        let len = (self.len.load(Ordering::Relaxed) as usize).min(Self::CAPACITY);
        let mut out = Vec::with_capacity(len);
        for word in self.words.iter().take(len.div_ceil(8)) {
            out.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// Cut `bytes` to at most `max`, not inside a UTF-8 sequence (text stays text).
fn truncate_utf8(bytes: &[u8], max: usize) -> &[u8] {
    if bytes.len() <= max {
        return bytes;
    }
    let mut end = max;
    while end > 0 && bytes[end] & 0b1100_0000 == 0b1000_0000 {
        end -= 1;
    }
    &bytes[..end]
}

/// What a worker publishes about the request it is serving.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    pub method: Vec<u8>,
    /// The URI with its query string, as the status page shows it.
    pub uri: Vec<u8>,
    pub script: Vec<u8>,
    pub user: Vec<u8>,
    pub content_length: u64,
}

/// One worker's slot. A slot is free when `pid` is 0; the master claims it before forking.
#[repr(C)]
pub struct Slot {
    /// Odd while a multi-field write is in progress.
    seq: AtomicU32,
    pub pid: AtomicI32,
    state: AtomicU32,
    /// The running CGI child (its process group has the same id), or 0.
    pub cgi_pid: AtomicI32,
    /// The resident FastCGI app that serves (or served) the current (or last) request,
    /// or 0 when a CGI child did. Unlike `cgi_pid` it outlives the request, as the
    /// script's name does, so that an idle worker's row still names its last app.
    pub app_pid: AtomicI32,
    pub requests: AtomicU64,
    pub started_at_us: AtomicU64,
    /// When the current (or last) request began.
    pub request_started_at_us: AtomicU64,
    /// When the worker last became idle (or started).
    last_idle_at_us: AtomicU64,
    content_length: AtomicU64,
    last_duration_us: AtomicU64,
    /// CPU time the last request cost the worker and its CGI child.
    last_cpu_us: AtomicU64,
    /// Peak resident memory of the last request's CGI child, in bytes.
    last_memory: AtomicU64,
    method: Text<{ METHOD_BYTES / 8 }>,
    uri: Text<{ URI_BYTES / 8 }>,
    script: Text<{ SCRIPT_BYTES / 8 }>,
    user: Text<{ USER_BYTES / 8 }>,
}

/// A consistent copy of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSnapshot {
    pub pid: i32,
    pub state: WorkerState,
    pub cgi_pid: i32,
    pub app_pid: i32,
    pub requests: u64,
    pub started_at_us: u64,
    pub request_started_at_us: u64,
    pub last_idle_at_us: u64,
    pub content_length: u64,
    pub last_duration_us: u64,
    pub last_cpu_us: u64,
    pub last_memory: u64,
    pub method: Vec<u8>,
    pub uri: Vec<u8>,
    pub script: Vec<u8>,
    pub user: Vec<u8>,
}

impl SlotSnapshot {
    /// A worker with no request figures or texts: a slot read without its request, or a
    /// stand-in where no worker runs.
    pub fn without_request(pid: i32, state: WorkerState, cgi_pid: i32) -> SlotSnapshot {
        SlotSnapshot {
            pid,
            state,
            cgi_pid,
            app_pid: 0,
            requests: 0,
            started_at_us: 0,
            request_started_at_us: 0,
            last_idle_at_us: 0,
            content_length: 0,
            last_duration_us: 0,
            last_cpu_us: 0,
            last_memory: 0,
            method: Vec::new(),
            uri: Vec::new(),
            script: Vec::new(),
            user: Vec::new(),
        }
    }
}

/// How long a reader retries a slot that keeps changing under it before it gives up on
/// the multi-field values (a worker killed mid-write leaves the counter odd until the
/// master frees the slot; a live one may be descheduled mid-write for longer than this on
/// a loaded machine). Bounds what a status request can wait per slot.
pub const READ_PATIENCE: std::time::Duration = std::time::Duration::from_millis(20);

impl Slot {
    pub fn state(&self) -> WorkerState {
        WorkerState::from_u32(self.state.load(Ordering::Acquire))
    }

    /// When the worker last became idle (or started).
    pub fn idle_since_us(&self) -> u64 {
        self.last_idle_at_us.load(Ordering::Relaxed)
    }

    /// A single-field update, visible at once, outside any write section.
    pub fn set_state(&self, state: WorkerState) {
        self.state.store(state as u32, Ordering::Release);
    }

    /// Run `write` as one multi-field update.
    fn write(&self, write: impl FnOnce()) {
        let seq = self.seq.load(Ordering::Relaxed);
        // Make it odd even if a writer died leaving it odd.
        let start = seq.wrapping_add(1) | 1;
        self.seq.store(start, Ordering::Relaxed);
        fence(Ordering::Release);
        write();
        self.seq.store(start.wrapping_add(1), Ordering::Release);
    }

    /// Reset for a newly forked worker.
    pub fn claim(&self, pid: i32) {
        let now = now_us();
        self.write(|| {
            self.cgi_pid.store(0, Ordering::Relaxed);
            self.app_pid.store(0, Ordering::Relaxed);
            self.requests.store(0, Ordering::Relaxed);
            self.request_started_at_us.store(0, Ordering::Relaxed);
            self.started_at_us.store(now, Ordering::Relaxed);
            self.last_idle_at_us.store(now, Ordering::Relaxed);
            self.content_length.store(0, Ordering::Relaxed);
            self.last_duration_us.store(0, Ordering::Relaxed);
            self.last_cpu_us.store(0, Ordering::Relaxed);
            self.last_memory.store(0, Ordering::Relaxed);
            self.clear_request_texts();
            self.set_state(WorkerState::Idle);
            self.pid.store(pid, Ordering::Release);
        });
    }

    /// Empty the method, URI, script and user (inside a `write`).
    fn clear_request_texts(&self) {
        for text in [
            &self.method.len,
            &self.uri.len,
            &self.script.len,
            &self.user.len,
        ] {
            text.store(0, Ordering::Relaxed);
        }
    }

    pub fn release(&self) {
        self.write(|| {
            self.pid.store(0, Ordering::Release);
            self.cgi_pid.store(0, Ordering::Relaxed);
            self.set_state(WorkerState::Idle);
        });
    }

    /// A request's head has started to arrive; it counts from now (as in php-fpm).
    pub fn begin_request(&self, now_us: u64) {
        self.write(|| {
            self.requests.fetch_add(1, Ordering::Relaxed);
            self.request_started_at_us.store(now_us, Ordering::Relaxed);
            self.content_length.store(0, Ordering::Relaxed);
            self.app_pid.store(0, Ordering::Relaxed);
            self.clear_request_texts();
            self.set_state(WorkerState::Reading);
        });
    }

    /// A resident FastCGI app serves the request (see `app_pid`).
    pub fn set_app_pid(&self, pid: i32) {
        self.app_pid.store(pid, Ordering::Relaxed);
    }

    /// The request's params are known.
    pub fn set_request_info(&self, info: &RequestInfo) {
        self.write(|| {
            self.method.store(&info.method);
            self.uri.store(&info.uri);
            self.script.store(&info.script);
            self.user.store(&info.user);
            self.content_length
                .store(info.content_length, Ordering::Relaxed);
        });
    }

    /// The request is answered: record what it cost and go idle.
    pub fn end_request(&self, now_us: u64, cpu_us: u64, memory: u64) {
        let started = self.request_started_at_us.load(Ordering::Relaxed);
        self.write(|| {
            self.last_duration_us
                .store(now_us.saturating_sub(started), Ordering::Relaxed);
            self.last_cpu_us.store(cpu_us, Ordering::Relaxed);
            self.last_memory.store(memory, Ordering::Relaxed);
            self.last_idle_at_us.store(now_us, Ordering::Relaxed);
            self.set_state(WorkerState::Idle);
        });
    }

    /// A consistent copy. If no consistent copy comes within [`READ_PATIENCE`] (the writer
    /// died or stalls mid-write), only the fields that stand alone: see
    /// [`Slot::unsettled`]. Never a mix of two writes.
    pub fn snapshot(&self) -> SlotSnapshot {
        self.snapshot_by(None)
    }

    /// As [`Slot::snapshot`], but waiting for a stalled writer no later than `deadline`
    /// (past it, only the brief spin): a reader of many slots bounds its whole read.
    pub fn snapshot_by(&self, deadline: Option<Instant>) -> SlotSnapshot {
        let mut attempt = 0u32;
        let mut give_up_at = None;
        loop {
            let before = self.seq.load(Ordering::Acquire);
            let copy = self.read_fields();
            fence(Ordering::Acquire);
            let after = self.seq.load(Ordering::Relaxed);
            if before == after && before.is_multiple_of(2) {
                return copy;
            }
            attempt += 1;
            if attempt < 64 {
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            let patience = now + READ_PATIENCE;
            let limit = deadline.map_or(patience, |d| d.min(patience));
            if *give_up_at.get_or_insert(limit) <= now {
                // `copy` failed the check: it may mix two requests' fields.
                return self.unsettled();
            }
            std::thread::yield_now();
        }
    }

    /// What can be told without the sequence check: pid, state and CGI pid are each one
    /// word that is also written on its own, outside write sections, so each is a value
    /// some write left. The request's texts and figures only mean something together
    /// with each other, so they are left empty (the status page shows "-"), as after
    /// `claim`.
    fn unsettled(&self) -> SlotSnapshot {
        SlotSnapshot::without_request(
            self.pid.load(Ordering::Acquire),
            self.state(),
            self.cgi_pid.load(Ordering::Relaxed),
        )
    }

    fn read_fields(&self) -> SlotSnapshot {
        SlotSnapshot {
            pid: self.pid.load(Ordering::Relaxed),
            state: WorkerState::from_u32(self.state.load(Ordering::Relaxed)),
            cgi_pid: self.cgi_pid.load(Ordering::Relaxed),
            app_pid: self.app_pid.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            started_at_us: self.started_at_us.load(Ordering::Relaxed),
            request_started_at_us: self.request_started_at_us.load(Ordering::Relaxed),
            last_idle_at_us: self.last_idle_at_us.load(Ordering::Relaxed),
            content_length: self.content_length.load(Ordering::Relaxed),
            last_duration_us: self.last_duration_us.load(Ordering::Relaxed),
            last_cpu_us: self.last_cpu_us.load(Ordering::Relaxed),
            last_memory: self.last_memory.load(Ordering::Relaxed),
            method: self.method.load(),
            uri: self.uri.load(),
            script: self.script.load(),
            user: self.user.load(),
        }
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A copy of a pool's counters and of its live workers' slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSnapshot {
    pub accepted_conn: u64,
    pub requests: u64,
    pub slow_requests: u64,
    pub max_children_reached: u64,
    pub max_active: u32,
    pub max_listen_queue: u32,
    pub start_time_us: u64,
    /// See [`PoolCounters::queue_refusals`].
    pub queue_refusals: u64,
    /// See [`PoolCounters::held_for_worker`].
    pub held_for_worker: u32,
    /// Slots of started workers, in slot order.
    pub workers: Vec<SlotSnapshot>,
    /// Workers of the image before a reload, still finishing (see
    /// [`Scoreboard::finishing_workers`]): listed with the others, counted apart.
    pub previous: Vec<SlotSnapshot>,
}

impl PoolSnapshot {
    pub fn idle(&self) -> u32 {
        self.workers
            .iter()
            .filter(|w| w.state == WorkerState::Idle)
            .count() as u32
    }

    pub fn active(&self) -> u32 {
        self.total() - self.idle()
    }

    pub fn total(&self) -> u32 {
        self.workers.len() as u32
    }
}

#[repr(C)]
struct Header {
    /// [`layout_mark`]: a scoreboard handed over by an image whose layout differs is
    /// not read.
    layout: AtomicU64,
    counters: PoolCounters,
}

/// Names this build's scoreboard layout: a reload may run another binary, whose old
/// workers keep writing the old layout.
fn layout_mark() -> u64 {
    const MAGIC: u64 = 0x6367_6966_706d_0000; // "cgifpm"
    MAGIC ^ ((size_of::<Header>() as u64) << 32) ^ size_of::<Slot>() as u64
}

/// A pool's shared mapping. It survives fork (workers see the master's); backed by a
/// memfd, it also survives a reload's exec, so that the new image can show the old
/// image's workers while they finish (see [`Scoreboard::adopt`]).
pub struct Scoreboard {
    base: NonNull<u8>,
    len: usize,
    slots: usize,
    /// The memfd behind the mapping (none if memfd_create failed: an anonymous one).
    fd: Option<std::os::fd::OwnedFd>,
}

impl Scoreboard {
    pub fn new(slots: usize) -> io::Result<Scoreboard> {
        let len = size_of::<Header>() + slots * size_of::<Slot>();
        let size = NonZeroUsize::new(len).ok_or_else(|| io::Error::other("empty scoreboard"))?;
        let fd = nix::sys::memfd::memfd_create(
            c"cgi-fpm scoreboard",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .and_then(|fd| nix::unistd::ftruncate(&fd, len as i64).map(|()| fd))
        .ok();
        let protection = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        // SAFETY: a fresh mapping (of a new, zero-filled memfd, or anonymous) aliases
        // nothing; all-zero bytes are a valid Header and valid Slots (every field is an
        // atomic integer). The mapping is page-aligned, which satisfies their alignment.
        let base = unsafe {
            match &fd {
                Some(fd) => {
                    nix::sys::mman::mmap(None, size, protection, MapFlags::MAP_SHARED, fd, 0)
                }
                None => mmap_anonymous(None, size, protection, MapFlags::MAP_SHARED),
            }
        }?;
        let scoreboard = Scoreboard {
            base: base.cast(),
            len,
            slots,
            fd,
        };
        let header = scoreboard.header();
        header.layout.store(layout_mark(), Ordering::Release);
        header
            .counters
            .start_time_us
            .store(now_us(), Ordering::Relaxed);
        Ok(scoreboard)
    }

    /// The scoreboard of the image before a reload, from its memfd: its workers are
    /// still writing their slots. Refused unless it is one of ours with this layout.
    pub fn adopt(fd: std::os::fd::OwnedFd) -> io::Result<Scoreboard> {
        let len = nix::sys::stat::fstat(&fd)?.st_size as usize;
        let slots = len.saturating_sub(size_of::<Header>()) / size_of::<Slot>();
        if len < size_of::<Header>() || size_of::<Header>() + slots * size_of::<Slot>() != len {
            return Err(io::Error::other("not a scoreboard of this size"));
        }
        let size = NonZeroUsize::new(len).ok_or_else(|| io::Error::other("empty scoreboard"))?;
        // SAFETY: a shared mapping of the whole file; every byte pattern is valid for the
        // atomics it holds, and the layout mark is checked before any slot is read.
        let base = unsafe {
            nix::sys::mman::mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }?;
        let scoreboard = Scoreboard {
            base: base.cast(),
            len,
            slots,
            fd: Some(fd),
        };
        if scoreboard.header().layout.load(Ordering::Acquire) != layout_mark() {
            return Err(io::Error::other("a scoreboard of another layout"));
        }
        Ok(scoreboard)
    }

    /// The memfd to hand over across a reload's exec.
    pub fn fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a Header and lives as long as `self`.
        unsafe { &*self.base.as_ptr().cast::<Header>() }
    }

    /// The workers of a previous image still at work, as the status page lists them:
    /// in state Finishing (they finish the request in hand and exit), their request as is.
    pub fn finishing_workers(&self) -> Vec<SlotSnapshot> {
        self.finishing_workers_by(None)
    }

    /// As [`Scoreboard::finishing_workers`], within a reader's `deadline` (see
    /// [`Slot::snapshot_by`]).
    pub fn finishing_workers_by(&self, deadline: Option<Instant>) -> Vec<SlotSnapshot> {
        self.slots()
            .map(|slot| slot.snapshot_by(deadline))
            .filter(|s| s.pid > 0)
            .map(|s| SlotSnapshot {
                state: WorkerState::Finishing,
                ..s
            })
            .collect()
    }

    /// Free the slot of `pid`, a previous image's worker that exited; whether any slot
    /// is still in use.
    pub fn release_pid(&self, pid: i32) -> bool {
        for slot in self.slots() {
            if slot.pid.load(Ordering::Acquire) == pid {
                slot.release();
            }
        }
        self.in_use()
    }

    /// Whether any slot belongs to a worker.
    pub fn in_use(&self) -> bool {
        self.slots().any(|s| s.pid.load(Ordering::Acquire) > 0)
    }

    /// Free every slot whose pid is not among `live` (workers gone before the handover).
    pub fn keep_only(&self, live: &[i32]) {
        for slot in self.slots() {
            let pid = slot.pid.load(Ordering::Acquire);
            if pid != 0 && !live.contains(&pid) {
                slot.release();
            }
        }
    }

    pub fn counters(&self) -> &PoolCounters {
        &self.header().counters
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

    /// Workers busy right now (a worker being forked counts as idle).
    pub fn active_count(&self) -> u32 {
        self.slots()
            .filter(|s| s.pid.load(Ordering::Relaxed) != 0 && s.state() != WorkerState::Idle)
            .count() as u32
    }

    /// Remember `active` if it is the most seen.
    pub fn note_active(&self, active: u32) {
        self.counters()
            .max_active
            .fetch_max(active, Ordering::Relaxed);
    }

    /// The master is about to sleep with nothing scheduled. Returns whether a worker is
    /// busy already, in which case it must not (the worker may have looked at the flag
    /// before it was set).
    ///
    /// The flag and the workers' states form a Dekker pair: the master stores the flag
    /// then reads the states, a worker stores its state then reads the flag, each with a
    /// SeqCst fence between. So either the master sees the busy worker here, or the worker
    /// sees the flag in [`Scoreboard::take_doorbell`]: a busy worker is never missed.
    pub fn arm_doorbell(&self) -> bool {
        self.counters().master_asleep.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let busy = self.active_count() > 0;
        if busy {
            self.counters().master_asleep.store(0, Ordering::Relaxed);
        }
        busy
    }

    /// A worker has just published a busy state: whether it is the one to wake the master.
    /// One atomic load on the request path while the master is awake.
    pub fn take_doorbell(&self) -> bool {
        fence(Ordering::SeqCst);
        let flag = &self.counters().master_asleep;
        flag.load(Ordering::Relaxed) != 0 && flag.swap(0, Ordering::Relaxed) != 0
    }

    /// request_queue_timeout: the master starts (`true`) or stops holding connections
    /// for this pool. Starting returns whether a worker is idle already: it may have
    /// looked at the flag before it was set, so the master must not wait for its ring.
    /// The same Dekker pair as [`Scoreboard::arm_doorbell`], with [`Scoreboard::idle_wanted`].
    pub fn set_holding(&self, holding: bool) -> bool {
        self.counters()
            .master_holding
            .store(holding as u32, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        holding && self.idle_count() > 0
    }

    /// A worker has just published that it is idle: whether the master holds connections
    /// for it to take (it must ring the doorbell).
    pub fn idle_wanted(&self) -> bool {
        fence(Ordering::SeqCst);
        self.counters().master_holding.load(Ordering::Relaxed) != 0
    }

    /// Whether the master holds connections for this pool now (no ordering: a hint).
    pub fn master_holds(&self) -> bool {
        self.counters().master_holding.load(Ordering::Relaxed) != 0
    }

    /// A worker has just published that it is busy: whether it was the last idle one, so
    /// that the master must look whether to start holding connections (request_queue_timeout).
    /// Workers going busy at once each store their state before they look (SeqCst fences):
    /// the last of them in that order sees all the others busy, so one of them says so.
    pub fn none_idle(&self) -> bool {
        fence(Ordering::SeqCst);
        self.counters().master_holding.load(Ordering::Relaxed) == 0 && self.idle_count() == 0
    }

    /// Started workers (not being forked) that are idle now.
    pub fn idle_count(&self) -> u32 {
        self.slots()
            .filter(|s| s.pid.load(Ordering::Relaxed) > 0 && s.state() == WorkerState::Idle)
            .count() as u32
    }

    /// Remember `queued` if it is the longest listen queue seen.
    pub fn note_listen_queue(&self, queued: u32) {
        self.counters()
            .max_listen_queue
            .fetch_max(queued, Ordering::Relaxed);
    }

    /// Copy the counters and the slots of started workers.
    pub fn snapshot(&self) -> PoolSnapshot {
        self.snapshot_by(None)
    }

    /// As [`Scoreboard::snapshot`], but slots whose writer stalls are waited for no later
    /// than `deadline` and read without their request past it (see [`Slot::snapshot_by`]):
    /// N stalled slots cost one patience, not N.
    pub fn snapshot_by(&self, deadline: Option<Instant>) -> PoolSnapshot {
        let c = self.counters();
        let workers: Vec<SlotSnapshot> = self
            .slots()
            .map(|slot| slot.snapshot_by(deadline))
            .filter(|s| s.pid > 0)
            .collect();
        let snapshot = PoolSnapshot {
            accepted_conn: c.accepted_conn.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            slow_requests: c.slow_requests.load(Ordering::Relaxed),
            max_children_reached: c.max_children_reached.load(Ordering::Relaxed),
            max_active: c.max_active.load(Ordering::Relaxed),
            max_listen_queue: c.max_listen_queue.load(Ordering::Relaxed),
            start_time_us: c.start_time_us.load(Ordering::Relaxed),
            queue_refusals: c.queue_refusals.load(Ordering::Relaxed),
            held_for_worker: c.held_for_worker.load(Ordering::Relaxed),
            workers,
            previous: Vec::new(),
        };
        // What is busy now is at least the most ever busy.
        let active = snapshot.active();
        PoolSnapshot {
            max_active: snapshot.max_active.max(active),
            ..snapshot
        }
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
    fn a_scoreboard_is_adopted_from_its_memfd_and_shows_the_old_workers_as_finishing() {
        let board = Scoreboard::new(3).unwrap();
        let fd = board.fd().expect("a memfd");
        let slot = board.slot(1).unwrap();
        slot.claim(4242);
        slot.begin_request(now_us());
        slot.set_request_info(&RequestInfo {
            uri: b"/long.sh".to_vec(),
            ..RequestInfo::default()
        });
        board.slot(2).unwrap().claim(99);
        // SAFETY: a duplicate the test owns, as the new image owns the handed-over one.
        let dup = nix::unistd::dup(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }).unwrap();
        let adopted = Scoreboard::adopt(dup).unwrap();
        adopted.keep_only(&[4242]);
        let rows = adopted.finishing_workers();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!((rows[0].pid, rows[0].state), (4242, WorkerState::Finishing));
        assert_eq!(rows[0].uri, b"/long.sh");
        // Still shared: what the old worker writes, the new image sees.
        slot.set_state(WorkerState::Running);
        assert!(adopted.in_use());
        assert!(!adopted.release_pid(4242), "no worker left");
        assert_eq!(board.slot(1).unwrap().pid.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_file_that_is_not_a_scoreboard_of_this_layout_is_refused() {
        let board = Scoreboard::new(2).unwrap();
        board.header().layout.store(1, Ordering::Relaxed);
        // SAFETY: as above.
        let dup =
            nix::unistd::dup(unsafe { std::os::fd::BorrowedFd::borrow_raw(board.fd().unwrap()) })
                .unwrap();
        assert!(Scoreboard::adopt(dup).is_err());
        let other =
            nix::sys::memfd::memfd_create(c"x", nix::sys::memfd::MFdFlags::empty()).unwrap();
        nix::unistd::ftruncate(&other, 100).unwrap();
        assert!(Scoreboard::adopt(other).is_err());
    }

    #[test]
    fn the_doorbell_is_rung_once_by_the_first_worker_to_get_busy() {
        let board = Scoreboard::new(2).unwrap();
        assert!(!board.take_doorbell(), "not armed: the master is awake");
        assert!(!board.arm_doorbell(), "nobody busy: the master may sleep");
        let slot = board.slot(0).unwrap();
        slot.claim(42);
        slot.set_state(WorkerState::Reading);
        assert!(board.take_doorbell());
        assert!(!board.take_doorbell(), "one ring per sleep");
        // Armed while a worker is busy already: the master must not sleep, and nobody
        // rings for that worker.
        assert!(board.arm_doorbell());
        assert!(!board.take_doorbell());
    }

    #[test]
    fn the_last_worker_to_get_busy_and_the_first_idle_one_call_the_master() {
        let board = Scoreboard::new(2).unwrap();
        let (a, b) = (board.slot(0).unwrap(), board.slot(1).unwrap());
        a.claim(41);
        b.claim(42);
        a.set_state(WorkerState::Reading);
        assert!(!board.none_idle(), "one is still idle");
        b.set_state(WorkerState::Reading);
        assert!(board.none_idle(), "the last one calls");
        assert_eq!(board.idle_count(), 0);
        // The master holds: nobody needs to call about getting busy, and a worker that
        // turns idle calls for the oldest connection.
        assert!(!board.set_holding(true), "nobody idle already");
        assert!(board.master_holds());
        assert!(!board.none_idle());
        a.set_state(WorkerState::Idle);
        assert!(board.idle_wanted());
        // Starting to hold while a worker is idle: the master looks itself.
        board.set_holding(false);
        assert!(!board.idle_wanted());
        assert!(board.set_holding(true));
        // A slot being forked (pid -1) is nobody to hand a connection to.
        board.set_holding(false);
        a.release();
        a.claim(-1);
        assert_eq!(board.idle_count(), 0);
        assert!(board.none_idle());
    }

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
                sb.slot(1).unwrap().set_request_info(&RequestInfo {
                    method: b"GET".to_vec(),
                    uri: b"/x?y=1".to_vec(),
                    ..RequestInfo::default()
                });
                // SAFETY: _exit skips the test harness's atexit work, as a forked child must.
                unsafe { nix::libc::_exit(0) };
            }
            ForkResult::Parent { child } => {
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            }
        }
        assert_eq!(sb.counters().accepted_conn.load(Ordering::Relaxed), 7);
        let slot = sb.slot(1).unwrap().snapshot();
        assert_eq!(slot.state, WorkerState::Running);
        assert_eq!(slot.method, b"GET");
        assert_eq!(slot.uri, b"/x?y=1");
    }

    #[test]
    fn texts_round_trip_and_truncate_on_a_character_boundary() {
        let sb = Scoreboard::new(1).unwrap();
        let slot = sb.slot(0).unwrap();
        slot.claim(1);
        let long_uri = "/é".repeat(URI_BYTES); // 3 bytes per repetition
        slot.set_request_info(&RequestInfo {
            method: b"PROPFIND-EXTENDED-LONG".to_vec(),
            uri: long_uri.clone().into_bytes(),
            script: b"/srv/www/a.sh".to_vec(),
            user: b"alice".to_vec(),
            content_length: 12,
        });
        let s = slot.snapshot();
        assert_eq!(s.method, b"PROPFIND-EXTENDE");
        assert!(s.uri.len() <= URI_BYTES && s.uri.len() > URI_BYTES - 3);
        let uri = String::from_utf8(s.uri).expect("still UTF-8");
        assert!(long_uri.starts_with(&uri));
        assert_eq!(s.script, b"/srv/www/a.sh");
        assert_eq!(s.user, b"alice");
        assert_eq!(s.content_length, 12);
        // A shorter value replaces a longer one entirely.
        slot.set_request_info(&RequestInfo {
            uri: b"/b".to_vec(),
            ..RequestInfo::default()
        });
        assert_eq!(slot.snapshot().uri, b"/b");
    }

    #[test]
    fn a_request_cycle_updates_the_slot() {
        let sb = Scoreboard::new(1).unwrap();
        let slot = sb.slot(0).unwrap();
        slot.claim(5);
        slot.begin_request(1_000_000);
        assert_eq!(slot.state(), WorkerState::Reading);
        assert_eq!(slot.snapshot().requests, 1);
        assert_eq!(sb.active_count(), 1);
        slot.end_request(1_250_000, 4_000, 2048);
        let s = slot.snapshot();
        assert_eq!(s.state, WorkerState::Idle);
        assert_eq!(s.last_duration_us, 250_000);
        assert_eq!(s.last_cpu_us, 4_000);
        assert_eq!(s.last_memory, 2048);
        assert_eq!(s.last_idle_at_us, 1_250_000);
        assert_eq!(sb.active_count(), 0);
    }

    #[test]
    fn snapshots_count_only_started_workers() {
        let sb = Scoreboard::new(4).unwrap();
        sb.slot(0).unwrap().claim(10);
        sb.slot(2).unwrap().claim(12);
        sb.slot(2).unwrap().set_state(WorkerState::Running);
        sb.slot(3).unwrap().claim(-1); // being forked
        let snap = sb.snapshot();
        assert_eq!(snap.total(), 2);
        assert_eq!(snap.idle(), 1);
        assert_eq!(snap.active(), 1);
        assert_eq!(snap.max_active, 1);
        assert!(snap.start_time_us > 0);
    }

    #[test]
    fn a_reader_never_sees_a_torn_multi_field_update() {
        let sb = Scoreboard::new(1).unwrap();
        let slot = sb.slot(0).unwrap();
        slot.claim(1);
        // SAFETY: the child only writes atomics in the shared mapping and then _exits.
        let child = match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                for i in 0..20_000u64 {
                    // A worker does other work between updates; back-to-back writes
                    // would starve any reader.
                    for _ in 0..200 {
                        std::hint::spin_loop();
                    }
                    let (a, b) = if i % 2 == 0 {
                        (b"/aaaaaaaaaaaaaaaaaaaa".to_vec(), b"/script-a".to_vec())
                    } else {
                        (b"/b".to_vec(), b"/script-b-is-longer-than-a".to_vec())
                    };
                    slot.set_request_info(&RequestInfo {
                        uri: a,
                        script: b,
                        content_length: i % 2,
                        ..RequestInfo::default()
                    });
                }
                // SAFETY: as above.
                unsafe { nix::libc::_exit(0) };
            }
            ForkResult::Parent { child } => child,
        };
        let mut reads = 0;
        loop {
            let s = slot.snapshot();
            // One of the two writes whole, or nothing of a request at all (as `claim` left
            // it, or when the reader gave up on a stalled writer), never a mix.
            let consistent = match (s.uri.as_slice(), s.content_length) {
                (b"/aaaaaaaaaaaaaaaaaaaa", 0) => s.script == b"/script-a",
                (b"/b", 1) => s.script == b"/script-b-is-longer-than-a",
                (b"", 0) => s.script.is_empty(),
                _ => false,
            };
            assert!(consistent, "torn read: {s:?}");
            reads += 1;
            if let Ok(WaitStatus::Exited(..)) =
                waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
            {
                break;
            }
        }
        assert!(reads > 0);
    }

    #[test]
    fn a_reader_of_many_stalled_slots_waits_one_patience_not_one_per_slot() {
        const SLOTS: usize = 25;
        let sb = Scoreboard::new(SLOTS).unwrap();
        for (index, slot) in sb.slots().enumerate() {
            slot.claim(100 + index as i32);
            slot.set_request_info(&RequestInfo {
                uri: b"/stalled".to_vec(),
                ..RequestInfo::default()
            });
            // Every writer stopped half way through its next write.
            slot.seq.fetch_add(1, Ordering::Release);
        }
        let started = std::time::Instant::now();
        let snapshot = sb.snapshot_by(Some(started + READ_PATIENCE));
        let took = started.elapsed();
        // One patience per slot would be 25 x 20 ms = 500 ms.
        assert!(
            took < READ_PATIENCE * 10,
            "{SLOTS} stalled slots took {took:?} to read"
        );
        assert_eq!(
            snapshot.total(),
            SLOTS as u32,
            "every worker is still listed"
        );
        assert!(
            snapshot.workers.iter().all(|w| w.uri.is_empty()),
            "a stalled slot read with its request: {:?}",
            snapshot.workers
        );
    }

    #[test]
    fn a_writer_stalled_mid_write_yields_no_request_rather_than_a_torn_one() {
        let sb = Scoreboard::new(1).unwrap();
        let slot = sb.slot(0).unwrap();
        slot.claim(7);
        slot.set_state(WorkerState::Running);
        slot.set_request_info(&RequestInfo {
            uri: b"/first".to_vec(),
            script: b"/srv/first.sh".to_vec(),
            content_length: 3,
            ..RequestInfo::default()
        });
        // What a worker killed (or descheduled) half way through the next
        // set_request_info leaves: an odd counter and one field of the new request.
        slot.seq.fetch_add(1, Ordering::Release);
        slot.uri.store(b"/second");
        let started = std::time::Instant::now();
        let s = slot.snapshot();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "a status request must not hang on a stalled writer"
        );
        assert_eq!((s.pid, s.state), (7, WorkerState::Running));
        assert!(s.uri.is_empty() && s.script.is_empty(), "torn read: {s:?}");
        assert_eq!(s.content_length, 0);
        // Once the slot is written whole again, readers see it all.
        slot.set_request_info(&RequestInfo {
            uri: b"/third".to_vec(),
            ..RequestInfo::default()
        });
        assert_eq!(slot.snapshot().uri, b"/third");
    }
}
