//! PACKETS
//!
//! A `Packet` is an owned handle to one buffer. It cannot be cloned by
//! accident (`clone` makes a new buffer and copies), and dropping it returns
//! the buffer to where it came from:
//!
//!   * a **host** packet lives in DMA memory from this thread's freelist and
//!     goes back on it;
//!   * a **foreign** packet wraps a buffer the engine does not own (a guest's
//!     vring buffer, say). It names its [`BufferOwner`] and the owner's token,
//!     and on drop the token goes on the owner's return ring, which the owner
//!     drains on its next breath. It never reaches the host freelist.
//!
//! Host buffer layout (one record, 64-byte aligned, never straddling a huge
//! page):
//!
//! ```text
//!   | record header 64 B | headroom 256 B | payload 10240 B |
//!                        ^ base           ^ data at base+start (start = 256)
//! ```
//!
//! Stripping a header (`shift_left`) or prepending one (`shift_right`,
//! `prepend`) moves `start`: O(1), no bytes move, as long as the headroom
//! allows it. A buffer whose start is fixed (a guest receive buffer: the used
//! ring has no offset field) moves its bytes instead.
//!
//! Packets are `!Send`: each engine thread has its own freelist and no lock
//! is taken on the hot path. Allocations and frees are counted per thread
//! ([`stats`]) so that tests can check conservation.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ptr::{self, NonNull};
use std::rc::Rc;

use crate::memory::{self, CHUNK_SIZE};

/// Bytes available in front of a fresh packet's data for prepending headers.
pub const HEADROOM: usize = 256;
/// Maximum packet length: 10 KiB, room for a 9216-byte jumbo frame and
/// its encapsulation. It is a whole number of KiB so that a NIC's receive
/// buffer size (SRRCTL.BSIZEPACKET, 1 KiB units) can match it exactly.
pub const PAYLOAD_SIZE: usize = 10 * 1024;
/// Bytes in a host buffer: headroom plus payload.
pub const BUFFER_SIZE: usize = HEADROOM + PAYLOAD_SIZE;

const HEADER_SIZE: usize = 64;
const RECORD_SIZE: usize = HEADER_SIZE + BUFFER_SIZE;
const RECORDS_PER_CHUNK: usize = CHUNK_SIZE / RECORD_SIZE;

/// Owner id of host packets.
const HOST: u32 = 0;
/// Flag: the data must stay where it is (see [`Packet::has_fixed_start`]).
const FIXED_START: u32 = 1;

/// The per-packet metadata, at the front of a host record or in a separate
/// "shell" for a foreign buffer. One cache line.
#[repr(C, align(64))]
struct Record {
    /// First byte of the buffer.
    base: *mut u8,
    /// Device address of `base` (0 when unknown).
    dma: u64,
    /// Offset of the first data byte from `base`.
    start: u32,
    len: u32,
    /// Bytes of buffer from `base`.
    cap: u32,
    /// HOST, or a foreign owner's id (slot | generation << 16).
    owner: u32,
    /// The owner's token for this buffer (a descriptor chain head, say).
    token: u64,
    flags: u32,
}

const _: () = assert!(std::mem::size_of::<Record>() == HEADER_SIZE);
const _: () = assert!(RECORD_SIZE % 64 == 0);

/// An owned packet buffer. See the module documentation.
pub struct Packet {
    rec: NonNull<Record>,
    // Packets belong to the thread whose freelist they came from.
    _not_send: PhantomData<*mut Record>,
}

impl Packet {
    /// A new empty host packet with the default headroom.
    #[inline]
    pub fn new() -> Packet {
        allocate()
    }

    /// A new host packet holding a copy of `bytes`. Panics when `bytes` is
    /// longer than [`PAYLOAD_SIZE`].
    pub fn from_bytes(bytes: &[u8]) -> Packet {
        let mut p = allocate();
        p.append(bytes);
        p
    }

    #[inline]
    fn rec(&self) -> &Record {
        // SAFETY: rec points to a live record this handle owns exclusively.
        unsafe { self.rec.as_ref() }
    }
    #[inline]
    fn rec_mut(&mut self) -> &mut Record {
        // SAFETY: as above; &mut self gives exclusive access.
        unsafe { self.rec.as_mut() }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.rec().len as usize
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The packet's bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        let r = self.rec();
        // SAFETY: start+len <= cap is an invariant of every record, and the
        // buffer stays valid while this handle lives.
        unsafe { std::slice::from_raw_parts(r.base.add(r.start as usize), r.len as usize) }
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let r = self.rec_mut();
        // SAFETY: as for data(); &mut self is exclusive.
        unsafe { std::slice::from_raw_parts_mut(r.base.add(r.start as usize), r.len as usize) }
    }

    /// Bytes free in front of the data.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.rec().start as usize
    }
    /// Bytes free after the data.
    #[inline]
    pub fn tailroom(&self) -> usize {
        let r = self.rec();
        (r.cap - r.start - r.len) as usize
    }
    /// The largest length the packet can take without moving its start.
    #[inline]
    pub fn capacity(&self) -> usize {
        let r = self.rec();
        (r.cap - r.start) as usize
    }

    /// Device address of the first data byte (0 when unknown).
    #[inline]
    pub fn dma_addr(&self) -> u64 {
        let r = self.rec();
        if r.dma == 0 { 0 } else { r.dma + r.start as u64 }
    }

    /// True when the buffer belongs to a [`BufferOwner`], not the host freelist.
    #[inline]
    pub fn is_foreign(&self) -> bool {
        self.rec().owner != HOST
    }
    /// True when the data cannot move inside its buffer: header edits move bytes.
    #[inline]
    pub fn has_fixed_start(&self) -> bool {
        self.rec().flags & FIXED_START != 0
    }

    /// Set the length; bytes beyond the old length are whatever the buffer
    /// holds (a NIC or guest wrote them). Panics past the capacity.
    #[inline]
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity(), "set_len({len}) beyond capacity {}", self.capacity());
        self.rec_mut().len = len as u32;
    }

    /// Shorten to `len` bytes (no-op when already shorter).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.rec_mut().len = len as u32;
        }
    }

    /// Set the length, zero-filling any growth. Panics past the capacity.
    pub fn resize(&mut self, len: usize) {
        let old = self.len();
        self.set_len(len);
        if len > old {
            self.data_mut()[old..].fill(0);
        }
    }

    /// Append bytes at the tail. Panics when they do not fit.
    pub fn append(&mut self, bytes: &[u8]) {
        let old = self.len();
        assert!(bytes.len() <= self.tailroom(), "append of {} bytes: tailroom {}", bytes.len(), self.tailroom());
        self.rec_mut().len += bytes.len() as u32;
        crate::copy::copy(&mut self.data_mut()[old..], bytes);
    }

    /// Remove `n` bytes from the front (strip a header). O(1) unless the start
    /// is fixed, in which case the remaining bytes move down. Panics when `n`
    /// exceeds the length.
    #[inline]
    pub fn shift_left(&mut self, n: usize) {
        assert!(n <= self.len(), "shift_left({n}) of a {}-byte packet", self.len());
        if self.has_fixed_start() {
            let len = self.len();
            let d = self.data_mut();
            crate::copy::move_within(d, n..len, 0);
        } else {
            self.rec_mut().start += n as u32;
        }
        self.rec_mut().len -= n as u32;
    }

    /// Make room for `n` bytes at the front (their content is unspecified).
    /// O(1) when the headroom allows it and the start is not fixed; otherwise
    /// the data moves up. Panics when the packet would not fit its buffer.
    #[inline]
    pub fn shift_right(&mut self, n: usize) {
        let len = self.len();
        if !self.has_fixed_start() && n <= self.headroom() {
            let r = self.rec_mut();
            r.start -= n as u32;
            r.len += n as u32;
            return;
        }
        assert!(n <= self.tailroom(), "shift_right({n}): {len}-byte packet does not fit its buffer");
        self.rec_mut().len += n as u32;
        let d = self.data_mut();
        crate::copy::move_within(d, 0..len, n);
    }

    /// Prepend a header. See [`Packet::shift_right`].
    pub fn prepend(&mut self, header: &[u8]) {
        self.shift_right(header.len());
        crate::copy::copy(&mut self.data_mut()[..header.len()], header);
    }

    /// A host packet with a copy of this packet's bytes. Foreign packets
    /// become host packets this way (the SIMD copy mode of a link).
    #[inline]
    pub fn copy_to_host(&self) -> Packet {
        let mut p = allocate_raw();
        let r = p.rec_mut();
        r.start = HEADROOM as u32;
        r.len = self.len() as u32;
        crate::copy::copy(p.data_mut(), self.data());
        p
    }

    /// The owner id and token of a foreign packet.
    pub fn foreign_token(&self) -> Option<(u32, u64)> {
        let r = self.rec();
        (r.owner != HOST).then_some((r.owner, r.token))
    }
}

impl Default for Packet {
    fn default() -> Self {
        Packet::new()
    }
}

impl Clone for Packet {
    /// A new host packet with the same bytes and the same headroom.
    #[inline]
    fn clone(&self) -> Packet {
        let mut p = allocate_raw();
        let r = p.rec_mut();
        r.start = self.headroom().min(HEADROOM) as u32;
        r.len = self.len() as u32;
        crate::copy::copy(p.data_mut(), self.data());
        p
    }
}

impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.rec();
        f.debug_struct("Packet")
            .field("len", &r.len)
            .field("start", &r.start)
            .field("owner", &r.owner)
            .field("token", &r.token)
            .finish()
    }
}

impl Drop for Packet {
    #[inline(always)]
    fn drop(&mut self) {
        if self.rec().owner == HOST {
            free_host(self.rec);
        } else {
            return_foreign(self.rec);
        }
    }
}

// ---------------------------------------------------------------------------
// Per-thread state: the host freelist, shells for foreign packets, the owner
// table and the counters.

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Host packets handed out (frees + in_use).
    pub allocs: u64,
    /// Host packets returned to the freelist.
    pub frees: u64,
    /// Foreign packets created by owners.
    pub foreign_wrapped: u64,
    /// Foreign packets handed back to their owner (dropped or reclaimed).
    pub foreign_returned: u64,
    /// Host packets that exist now (allocs - frees).
    pub in_use: u64,
    /// Host packets this thread owns in all (free or in use).
    pub total: u64,
}

struct OwnerSlot {
    generation: u16,
    open: bool,
    name: String,
    outstanding: u64,
    returns: Vec<u64>,
    /// Kept alive while the owner's buffers are out (its guest memory, say).
    keepalive: Option<Rc<dyn std::any::Any>>,
}

struct State {
    free: Vec<NonNull<Record>>,
    shells: Vec<NonNull<Record>>,
    chunks: Vec<memory::Chunk>,
    shell_blocks: Vec<Box<[Record]>>,
    owners: Vec<OwnerSlot>,
    stats: Stats,
    next_step: usize,
}

thread_local! {
    // A raw pointer without a destructor: access is one TLS load.
    static STATE: Cell<*mut State> = const { Cell::new(ptr::null_mut()) };
    static RETIRE: Retire = const { Retire };
}

/// Runs at thread exit: a pool with every packet home gives its chunks back.
struct Retire;
impl Drop for Retire {
    fn drop(&mut self) {
        let st = STATE.with(|s| s.replace(ptr::null_mut()));
        if st.is_null() {
            return;
        }
        // SAFETY: the pointer came from Box::into_raw in state() and was
        // just unhooked, so nothing else reaches it.
        let st = unsafe { Box::from_raw(st) };
        let home = st.free.len() as u64 == st.stats.total && st.owners.iter().all(|o| o.outstanding == 0);
        if home {
            for c in &st.chunks {
                memory::recycle_chunk(*c);
            }
            drop(st);
        } else {
            // Packets still exist (leaked or held by another destructor):
            // their memory must stay valid, so the whole pool is leaked.
            Box::leak(st);
        }
    }
}

#[inline]
fn state() -> *mut State {
    let st = STATE.with(|s| s.get());
    if !st.is_null() {
        return st;
    }
    init_state()
}

#[cold]
fn init_state() -> *mut State {
    let st = Box::into_raw(Box::new(State {
        free: Vec::new(),
        shells: Vec::new(),
        chunks: Vec::new(),
        shell_blocks: Vec::new(),
        // Slot 0 stands for the host.
        owners: vec![OwnerSlot {
            generation: 0,
            open: false,
            name: "host".into(),
            outstanding: 0,
            returns: Vec::new(),
            keepalive: None,
        }],
        stats: Stats::default(),
        next_step: 1,
    }));
    STATE.with(|s| s.set(st));
    // Register the exit hook; harmless if the thread is already exiting.
    let _ = RETIRE.try_with(|_| ());
    st
}

/// Allocate a host packet: pop the freelist, growing it when empty.
#[inline]
pub fn allocate() -> Packet {
    let mut p = allocate_raw();
    let r = p.rec_mut();
    r.start = HEADROOM as u32;
    r.len = 0;
    p
}

/// A host packet whose start and length are whatever its last user left:
/// the caller sets both.
#[inline(always)]
fn allocate_raw() -> Packet {
    // SAFETY: state() is this thread's State; the reference ends before
    // anything else can reach the State.
    let st = unsafe { &mut *state() };
    let rec = match st.free.pop() {
        Some(r) => r,
        None => grow(st),
    };
    Packet { rec, _not_send: PhantomData }
}

#[inline(always)]
fn free_host(rec: NonNull<Record>) {
    // SAFETY: rec is a host record of this thread (Packet is !Send) that its
    // handle is giving up; State is this thread's, referenced only here.
    unsafe {
        let st = &mut *state();
        // Capacity was reserved for every record: this never reallocates.
        st.free.push(rec);
        st.stats.frees += 1;
    }
}

/// Drop `n` packets that `next` yields, with one look-up of the freelist
/// for the whole batch (host packets; foreign ones go home one by one).
/// `next` must yield at least `n` packets.
#[inline]
pub fn free_batch(n: usize, mut next: impl FnMut() -> Packet) {
    let st = state();
    let mut left = n;
    while left > 0 {
        // A run of host packets goes straight into the freelist's spare
        // capacity; a foreign packet ends the run and goes home on its own.
        let mut foreign = None;
        // SAFETY: this thread's State. The capacity of `free` covers every
        // host record of this thread, so there is room past its length for
        // every host packet that exists; the slots written are counted into
        // the length before anything else (the foreign drop) touches `free`.
        unsafe {
            let free = &mut (*st).free;
            let room = free.capacity() - free.len();
            let base = free.as_mut_ptr().add(free.len());
            let mut m = 0;
            while left > 0 && m < room {
                let p = next();
                left -= 1;
                if p.rec().owner != HOST {
                    foreign = Some(p);
                    break;
                }
                base.add(m).write(p.rec);
                std::mem::forget(p);
                m += 1;
            }
            let free = &mut (*st).free;
            free.set_len(free.len() + m);
            if m == room && left > 0 {
                // Cannot happen while the capacity covers the pool; stay
                // safe if it ever does.
                free.reserve(left);
            }
            (*st).stats.frees += m as u64;
        }
        drop(foreign);
    }
}

/// Fresh host packets taken from the freelist in one go, so that a loop
/// that makes many packets pays for the freelist once.
pub struct Allocator {
    recs: [MaybeUninit<NonNull<Record>>; ALLOC_BATCH],
    next: usize,
    len: usize,
}

const ALLOC_BATCH: usize = 64;

impl Allocator {
    /// An allocator holding up to `n` (at most 64) packets at a time.
    #[inline(always)]
    pub fn new(n: usize) -> Allocator {
        // SAFETY: an array of MaybeUninit needs no initialisation.
        let recs = unsafe { MaybeUninit::<[MaybeUninit<NonNull<Record>>; ALLOC_BATCH]>::uninit().assume_init() };
        let mut a = Allocator { recs, next: 0, len: 0 };
        a.refill(n.clamp(1, ALLOC_BATCH));
        a
    }

    #[inline(always)]
    fn refill(&mut self, n: usize) {
        // SAFETY: this thread's State, referenced only within this block.
        let st = unsafe { &mut *state() };
        while st.free.len() < n {
            let r = grow(st);
            st.free.push(r);
        }
        let from = st.free.len() - n;
        // SAFETY: the records moved here leave the freelist (its length is
        // cut below), so each is owned by this allocator alone.
        unsafe {
            std::ptr::copy_nonoverlapping(st.free.as_ptr().add(from), self.recs.as_mut_ptr() as *mut NonNull<Record>, n);
            st.free.set_len(from);
        }
        self.next = 0;
        self.len = n;
    }

    /// A host packet with start and length for the caller to set.
    #[inline(always)]
    fn take(&mut self) -> Packet {
        if self.next == self.len {
            self.refill(ALLOC_BATCH);
        }
        // SAFETY: slots next..len hold records this allocator owns.
        let rec = unsafe { self.recs.get_unchecked(self.next).assume_init() };
        self.next += 1;
        Packet { rec, _not_send: PhantomData }
    }

    /// A new empty packet, as `Packet::new`.
    #[inline(always)]
    pub fn allocate(&mut self) -> Packet {
        let mut p = self.take();
        let r = p.rec_mut();
        r.start = HEADROOM as u32;
        r.len = 0;
        p
    }

    /// A copy of `p`, as `p.clone()`.
    #[inline(always)]
    pub fn clone_of(&mut self, p: &Packet) -> Packet {
        let mut c = self.take();
        let r = c.rec_mut();
        r.start = p.headroom().min(HEADROOM) as u32;
        r.len = p.len() as u32;
        crate::copy::copy(c.data_mut(), p.data());
        c
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        // SAFETY: this thread's State; the unused records go back to the
        // freelist, whose capacity covers them.
        let st = unsafe { &mut *state() };
        for i in self.next..self.len {
            // SAFETY: slots next..len are owned and initialised.
            st.free.push(unsafe { self.recs[i].assume_init() });
        }
    }
}

/// Add chunks to the pool: one the first time, then twice as many as the
/// step before (as Snabb does), so a busy graph stops growing quickly.
#[cold]
fn grow(st: &mut State) -> NonNull<Record> {
    let n = st.next_step;
    st.next_step = (n * 2).min(64);
    for _ in 0..n {
        let c = memory::alloc_chunk().expect("packet memory: cannot map a 2 MiB chunk");
        st.chunks.push(c);
        // The freelist can hold every record of the pool: frees never
        // reallocate, and `free_batch` relies on it.
        let total = st.stats.total as usize + RECORDS_PER_CHUNK;
        st.free.reserve(total - st.free.len());
        for i in (0..RECORDS_PER_CHUNK).rev() {
            let off = i * RECORD_SIZE;
            let rec = (c.virt + off) as *mut Record;
            let dma = c.dma + (off + HEADER_SIZE) as u64;
            // SAFETY: the record lies inside the new chunk, which nobody else uses.
            unsafe {
                rec.write(Record {
                    base: (rec as *mut u8).add(HEADER_SIZE),
                    dma,
                    start: HEADROOM as u32,
                    len: 0,
                    cap: BUFFER_SIZE as u32,
                    owner: HOST,
                    token: 0,
                    flags: 0,
                });
                st.free.push(NonNull::new_unchecked(rec));
            }
        }
        st.stats.total += RECORDS_PER_CHUNK as u64;
    }
    st.free.pop().unwrap()
}

/// This thread's packet counters.
pub fn stats() -> Stats {
    // SAFETY: a read of this thread's State.
    let st = unsafe { &*state() };
    let in_use = st.stats.total - st.free.len() as u64;
    Stats { allocs: st.stats.frees + in_use, in_use, total: st.stats.total, ..st.stats }
}

// ---------------------------------------------------------------------------
// Foreign buffers.

/// Describes a buffer that a [`BufferOwner`] lends to the graph.
#[derive(Clone, Copy, Debug)]
pub struct ForeignBuffer {
    /// First byte of the buffer in this process's memory.
    pub base: NonNull<u8>,
    /// Bytes in the buffer.
    pub cap: u32,
    /// Device address of `base` (0 when unknown).
    pub dma: u64,
    /// Offset of the first data byte.
    pub start: u32,
    /// Bytes of data now in the buffer.
    pub len: u32,
    /// The owner's name for the buffer, given back when it returns.
    pub token: u64,
    /// Data must not move inside the buffer (header edits move bytes).
    pub fixed_start: bool,
}

/// What an owner gets back when it takes its own packet out of the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reclaimed {
    pub token: u64,
    pub start: u32,
    pub len: u32,
}

/// A lender of foreign buffers (a vhost-user port lending guest receive
/// buffers, say). Its packets come back either through
/// [`BufferOwner::reclaim`] (the owner consumes one of its own packets) or,
/// when dropped anywhere else, on its return ring ([`BufferOwner::drain_returns`]).
///
/// If the owner is dropped while packets are out, its slot stays closed but
/// alive, holding the keep-alive object, until the last one comes back; its
/// tokens are then discarded.
pub struct BufferOwner {
    id: u32,
    _not_send: PhantomData<*mut Record>,
}

impl BufferOwner {
    /// Register an owner. `keepalive` holds whatever must outlive every
    /// buffer lent (the mapping of guest memory, for instance).
    pub fn register(name: &str, keepalive: Option<Rc<dyn std::any::Any>>) -> BufferOwner {
        // SAFETY: this thread's State; no other reference is live.
        let st = unsafe { &mut *state() };
        let slot = match st.owners.iter().skip(1).position(|o| !o.open && o.outstanding == 0) {
            Some(i) => i + 1,
            None => {
                assert!(st.owners.len() < 0xffff, "too many buffer owners");
                st.owners.push(OwnerSlot {
                    generation: 0,
                    open: false,
                    name: String::new(),
                    outstanding: 0,
                    returns: Vec::new(),
                    keepalive: None,
                });
                st.owners.len() - 1
            }
        };
        let o = &mut st.owners[slot];
        o.generation = o.generation.wrapping_add(1);
        o.open = true;
        o.name = name.to_string();
        o.returns = Vec::with_capacity(4096);
        o.keepalive = keepalive;
        BufferOwner { id: slot as u32 | (o.generation as u32) << 16, _not_send: PhantomData }
    }

    fn slot(&self) -> usize {
        (self.id & 0xffff) as usize
    }

    /// Lend a buffer to the graph as a packet.
    ///
    /// # Safety
    /// `buf.base .. buf.base + buf.cap` must be valid for reads and writes
    /// for as long as the packet exists: until it comes back through
    /// `reclaim` or the return ring, or, if the owner is dropped first, for
    /// as long as the owner's keep-alive object lives. `start + len <= cap`
    /// is checked here.
    pub unsafe fn wrap(&self, buf: ForeignBuffer) -> Packet {
        assert!(
            buf.start as u64 + buf.len as u64 <= buf.cap as u64,
            "foreign buffer: start {} + len {} beyond cap {}",
            buf.start,
            buf.len,
            buf.cap
        );
        // SAFETY: this thread's State; no other reference is live.
        let st = unsafe { &mut *state() };
        let shell = match st.shells.pop() {
            Some(s) => s,
            None => grow_shells(st),
        };
        st.owners[self.slot()].outstanding += 1;
        st.stats.foreign_wrapped += 1;
        // SAFETY: shell is a free shell record owned by this thread.
        unsafe {
            shell.as_ptr().write(Record {
                base: buf.base.as_ptr(),
                dma: buf.dma,
                start: buf.start,
                len: buf.len,
                cap: buf.cap,
                owner: self.id,
                token: buf.token,
                flags: if buf.fixed_start { FIXED_START } else { 0 },
            });
        }
        Packet { rec: shell, _not_send: PhantomData }
    }

    /// Take back one of this owner's packets without going through the
    /// return ring (to put it on a used ring with its final start and
    /// length). A packet of another owner, or a host packet, is given back.
    pub fn reclaim(&self, p: Packet) -> Result<Reclaimed, Packet> {
        let r = p.rec();
        if r.owner != self.id {
            return Err(p);
        }
        let out = Reclaimed { token: r.token, start: r.start, len: r.len };
        let shell = p.rec;
        std::mem::forget(p);
        // SAFETY: this thread's State; the shell's handle was just consumed.
        let st = unsafe { &mut *state() };
        st.owners[self.slot()].outstanding -= 1;
        st.stats.foreign_returned += 1;
        st.shells.push(shell);
        Ok(out)
    }

    /// Hand every token that came back since the last call to `f`.
    pub fn drain_returns(&self, mut f: impl FnMut(u64)) {
        // Swap the ring out so that f may drop packets (of any owner).
        let mut ring = {
            // SAFETY: this thread's State; the reference ends in this block.
            let st = unsafe { &mut *state() };
            std::mem::take(&mut st.owners[self.slot()].returns)
        };
        for &t in &ring {
            f(t);
        }
        ring.clear();
        // SAFETY: as above.
        let st = unsafe { &mut *state() };
        let o = &mut st.owners[self.slot()];
        if o.returns.is_empty() {
            o.returns = ring;
        } else {
            // f dropped more of our packets: keep them for the next call.
            ring.extend_from_slice(&o.returns);
            o.returns = ring;
        }
    }

    /// Buffers lent and not yet back.
    pub fn outstanding(&self) -> u64 {
        // SAFETY: a read of this thread's State.
        let st = unsafe { &*state() };
        st.owners[self.slot()].outstanding
    }

    /// Tokens waiting on the return ring.
    pub fn returns_pending(&self) -> usize {
        // SAFETY: a read of this thread's State.
        let st = unsafe { &*state() };
        st.owners[self.slot()].returns.len()
    }

    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for BufferOwner {
    fn drop(&mut self) {
        let keepalive = {
            // SAFETY: this thread's State; the reference ends in this block.
            let st = unsafe { &mut *state() };
            let o = &mut st.owners[self.slot()];
            o.open = false;
            o.returns = Vec::new();
            if o.outstanding == 0 { o.keepalive.take() } else { None }
        };
        // Dropped outside the borrow: it may own packets itself.
        drop(keepalive);
    }
}

impl fmt::Debug for BufferOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: a read of this thread's State.
        let st = unsafe { &*state() };
        write!(f, "BufferOwner({} #{})", st.owners[self.slot()].name, self.id)
    }
}

#[cold]
fn grow_shells(st: &mut State) -> NonNull<Record> {
    let block: Box<[Record]> = (0..256)
        .map(|_| Record {
            base: ptr::null_mut(),
            dma: 0,
            start: 0,
            len: 0,
            cap: 0,
            owner: HOST,
            token: 0,
            flags: 0,
        })
        .collect();
    let mut block = block;
    for r in block.iter_mut() {
        st.shells.push(NonNull::from(r));
    }
    st.shell_blocks.push(block);
    st.shells.pop().unwrap()
}

#[cold]
fn return_foreign(shell: NonNull<Record>) {
    let keepalive = {
        // SAFETY: this thread's State; shell is the dropped packet's record,
        // now unreachable from any handle. The borrow ends in this block.
        let st = unsafe { &mut *state() };
        let (owner, token) = unsafe { ((*shell.as_ptr()).owner, (*shell.as_ptr()).token) };
        let slot = (owner & 0xffff) as usize;
        st.shells.push(shell);
        st.stats.foreign_returned += 1;
        let o = &mut st.owners[slot];
        o.outstanding -= 1;
        if o.open {
            o.returns.push(token);
            None
        } else if o.outstanding == 0 {
            o.keepalive.take()
        } else {
            None
        }
    };
    drop(keepalive);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_conserves() {
        let before = stats();
        {
            let mut v: Vec<Packet> = (0..1000).map(|_| Packet::new()).collect();
            assert_eq!(stats().in_use, before.in_use + 1000);
            v.truncate(10);
        }
        let after = stats();
        assert_eq!(after.in_use, before.in_use);
        assert_eq!(after.allocs - before.allocs, 1000);
        assert_eq!(after.frees - before.frees, 1000);
    }

    #[test]
    fn shifts_are_o1_within_headroom() {
        let mut p = Packet::from_bytes(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(p.headroom(), HEADROOM);
        let a = p.data().as_ptr();
        p.shift_left(2);
        assert_eq!(p.data(), &[3, 4, 5, 6]);
        // SAFETY: pointer arithmetic only, for comparison.
        assert_eq!(p.data().as_ptr(), unsafe { a.add(2) }, "strip moved the start, not bytes");
        p.prepend(&[9, 9, 9]);
        assert_eq!(p.data(), &[9, 9, 9, 3, 4, 5, 6]);
        assert_eq!(p.headroom(), HEADROOM - 1);
        // Beyond the headroom: the data moves up, nothing is lost.
        let big = vec![7u8; HEADROOM + 10];
        p.prepend(&big);
        assert_eq!(p.len(), 7 + HEADROOM + 10);
        assert_eq!(&p.data()[HEADROOM + 10..], &[9, 9, 9, 3, 4, 5, 6]);
        assert!(p.data()[..HEADROOM + 10].iter().all(|&b| b == 7));
    }

    #[test]
    fn capacity_and_resize() {
        let mut p = Packet::new();
        assert_eq!(p.capacity(), PAYLOAD_SIZE);
        p.resize(PAYLOAD_SIZE);
        assert!(p.data().iter().all(|&b| b == 0));
        assert_eq!(p.tailroom(), 0);
        p.truncate(10);
        assert_eq!(p.len(), 10);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.set_len(PAYLOAD_SIZE + 1)));
        assert!(r.is_err());
    }

    #[test]
    fn freed_packets_come_back_clean() {
        let mut p = Packet::from_bytes(&[1; 100]);
        p.shift_left(50);
        drop(p);
        let q = Packet::new();
        assert_eq!(q.headroom(), HEADROOM);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn clone_is_a_copy() {
        let mut p = Packet::from_bytes(b"hello");
        let q = p.clone();
        p.data_mut()[0] = b'j';
        assert_eq!(q.data(), b"hello");
        assert_eq!(p.data(), b"jello");
    }

    #[test]
    fn dma_address_follows_start() {
        let mut p = Packet::from_bytes(&[0; 64]);
        let a = p.dma_addr();
        assert_ne!(a, 0);
        p.shift_left(14);
        assert_eq!(p.dma_addr(), a + 14);
        assert_eq!(memory::virt_to_dma(p.data().as_ptr()), Some(p.dma_addr()));
    }

    /// A test owner: a pool of plain buffers lent out by index.
    struct TestOwner {
        bufs: Vec<Box<[u8; 2048]>>,
        owner: BufferOwner,
    }
    impl TestOwner {
        fn new(n: usize) -> TestOwner {
            TestOwner { bufs: (0..n).map(|_| Box::new([0u8; 2048])).collect(), owner: BufferOwner::register("test", None) }
        }
        fn lend(&mut self, i: usize, fixed: bool) -> Packet {
            let b = &mut self.bufs[i];
            b[12..16].copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
            // SAFETY: the boxes live as long as the owner, which outlives
            // every packet in these tests.
            unsafe {
                self.owner.wrap(ForeignBuffer {
                    base: NonNull::new(b.as_mut_ptr()).unwrap(),
                    cap: 2048,
                    dma: 0x1000 * (i as u64 + 1),
                    start: 12,
                    len: 4,
                    token: i as u64,
                    fixed_start: fixed,
                })
            }
        }
    }

    #[test]
    fn foreign_drop_returns_to_owner_not_freelist() {
        let mut t = TestOwner::new(4);
        let before = stats();
        let p = t.lend(2, false);
        assert!(p.is_foreign());
        assert_eq!(p.data(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(p.dma_addr(), 0x3000 + 12);
        assert_eq!(t.owner.outstanding(), 1);
        drop(p);
        let after = stats();
        assert_eq!(after.frees, before.frees, "never freed into the host freelist");
        assert_eq!(t.owner.outstanding(), 0);
        let mut got = vec![];
        t.owner.drain_returns(|tok| got.push(tok));
        assert_eq!(got, vec![2]);
        t.owner.drain_returns(|_| panic!("drained twice"));
    }

    #[test]
    fn reclaim_takes_own_packet_only() {
        let mut t = TestOwner::new(2);
        let mut other = TestOwner::new(1);
        let mut p = t.lend(1, true);
        p.shift_left(2);
        let r = t.owner.reclaim(p).unwrap();
        assert_eq!(r, Reclaimed { token: 1, start: 12, len: 2 });
        assert_eq!(&t.bufs[1][12..14], &[0xcc, 0xdd], "fixed start: bytes moved down");
        let q = other.lend(0, false);
        let q = t.owner.reclaim(q).unwrap_err();
        assert!(t.owner.reclaim(Packet::new()).is_err());
        drop(q);
        assert_eq!(other.owner.returns_pending(), 1);
        assert_eq!(t.owner.outstanding(), 0);
    }

    #[test]
    fn copy_to_host_detaches() {
        let mut t = TestOwner::new(1);
        let p = t.lend(0, false);
        let h = p.copy_to_host();
        drop(p);
        assert!(!h.is_foreign());
        assert_eq!(h.data(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(t.owner.returns_pending(), 1);
    }

    #[test]
    fn owner_dropped_with_buffers_out_keeps_memory_alive() {
        let mem: Rc<dyn std::any::Any> = Rc::new(vec![0u8; 64]);
        let weak = Rc::downgrade(&mem);
        let owner = BufferOwner::register("closing", Some(mem));
        let mut backing = [0u8; 64];
        // SAFETY: backing outlives p in this test.
        let p = unsafe {
            owner.wrap(ForeignBuffer {
                base: NonNull::new(backing.as_mut_ptr()).unwrap(),
                cap: 64,
                dma: 0,
                start: 0,
                len: 64,
                token: 9,
                fixed_start: false,
            })
        };
        drop(owner);
        assert!(weak.upgrade().is_some(), "keep-alive held while a buffer is out");
        drop(p);
        assert!(weak.upgrade().is_none(), "released with the last buffer");
        // The slot can be reused with a new generation.
        let o2 = BufferOwner::register("next", None);
        assert_eq!(o2.outstanding(), 0);
    }
}
