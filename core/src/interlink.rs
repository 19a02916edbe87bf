//! INTERLINKS
//!
//! An interlink is a ring of packets between two workers (threads of one
//! process): single producer, single consumer, no lock. The engine of each
//! worker reaches it through a hidden app at each end, so apps only ever see
//! ordinary links; a config link whose ends are on different workers becomes
//!
//! ```text
//!   a.out -> <producer end> ==interlink==> <consumer end> -> b.in
//!
//!   Interlink::new(size) -> Arc       size a power of two in 2..=MAX_SIZE
//!   push_from(&link) -> n             producer: move what fits from a local
//!                                     link into the ring, publish once
//!   pull_into(&link) -> n             consumer: move what fits from the ring
//!                                     onto a local link, publish once
//!   nreadable() / capacity()
//!   counters()                        packets in and out, drops
//! ```
//!
//! Each cursor is written by one side only and sits on a cache line of its
//! own (two, against the adjacent-line prefetcher); each side keeps a copy
//! of the other's cursor and reads the shared one again only when its copy
//! says the ring is full (producer) or empty (consumer), so in a busy
//! stream the sides touch each other's line about once a batch. A batch is
//! published with one Release store and taken with one Acquire load, which
//! is what hands the packets' records over. The consumer asks for the slot
//! lines a little ahead of where it reads (the producer's core wrote them).
//!
//! What does not fit stays on the producer's local link: a full interlink
//! is seen as that link filling up, and its drops are counted there, never
//! pushed back further. Host packets are marked with their home pool as
//! they leave (`Packet::leave_home`), so that the consumer's worker sends
//! them home when it drops them (see `packet`).

use std::cell::UnsafeCell;
use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::link::{self, Link};
use crate::packet::{self, Packet};

/// Keeps a value on two cache lines of its own.
#[repr(align(128))]
struct Padded<T>(T);

pub struct Interlink {
    slots: Box<[UnsafeCell<MaybeUninit<Packet>>]>,
    mask: usize,
    /// Next slot the consumer reads (written by the consumer only).
    head: Padded<AtomicUsize>,
    /// Next slot the producer writes (written by the producer only).
    tail: Padded<AtomicUsize>,
    /// Each side's copy of the other's cursor, on its own line.
    producer: Padded<Side>,
    consumer: Padded<Side>,
    /// Counters for reports, written by their side, read by anyone.
    drops: AtomicU64,
    /// Packets a producer end left on its local link when it was removed
    /// (its app moved to another worker): older than anything on the ring
    /// after them, so the consumer takes them once the ring is empty, and
    /// producers wait until it has.
    stash: Mutex<std::collections::VecDeque<Packet>>,
    stashed: AtomicBool,
    /// An end is attached (a second one would break single-producer or
    /// single-consumer).
    tx_attached: AtomicBool,
    rx_attached: AtomicBool,
}

/// A side's private state: only the thread attached to that side touches it.
struct Side {
    other: UnsafeCell<usize>,
}

// SAFETY: the ring is shared by exactly one producer and one consumer
// (`attach` enforces it). Slots in head..tail belong to the consumer and
// the rest to the producer; a slot changes hands only through the Release
// store of a cursor and the Acquire load of it on the other side, so a
// packet's record is written by one thread at a time. Records of one
// thread's pool dropped on another go home through the packet module's
// return rings (that is what `leave_home` prepares), so moving a Packet
// handle this way is sound although `Packet` itself is !Send. Each `Side`
// is touched by its own side's thread only.
unsafe impl Send for Interlink {}
// SAFETY: as above.
unsafe impl Sync for Interlink {}

/// Counters of an interlink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterlinkCounters {
    /// Packets the producer put on the ring.
    pub txpackets: u64,
    /// Packets the consumer took.
    pub rxpackets: u64,
    /// Packets dropped when the ring was dropped with packets on it.
    pub drops: u64,
}

impl Interlink {
    pub fn new(size: usize) -> Arc<Interlink> {
        assert!(link::valid_size(size), "interlink size {size}: must be a power of two in 2..={}", link::MAX_SIZE);
        Arc::new(Interlink {
            slots: (0..size).map(|_| UnsafeCell::new(MaybeUninit::uninit())).collect(),
            mask: size - 1,
            head: Padded(AtomicUsize::new(0)),
            tail: Padded(AtomicUsize::new(0)),
            producer: Padded(Side { other: UnsafeCell::new(0) }),
            consumer: Padded(Side { other: UnsafeCell::new(0) }),
            drops: AtomicU64::new(0),
            stash: Mutex::new(std::collections::VecDeque::new()),
            stashed: AtomicBool::new(false),
            tx_attached: AtomicBool::new(false),
            rx_attached: AtomicBool::new(false),
        })
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Packets on the ring now (a snapshot).
    pub fn nreadable(&self) -> usize {
        let stashed = if self.stashed.load(Ordering::Acquire) { self.stash.lock().unwrap().len() } else { 0 };
        self.tail.0.load(Ordering::Acquire).wrapping_sub(self.head.0.load(Ordering::Acquire)) + stashed
    }

    /// A producer end is going (its app leaves this worker): keep what its
    /// local link `from` still holds for the consumer (see `stash`).
    pub fn stash_from(&self, from: &Link) {
        if from.is_empty() {
            return;
        }
        let pool = packet::pool_id();
        let mut st = self.stash.lock().unwrap();
        for p in from.drain() {
            p.leave_home(pool);
            st.push_back(p);
        }
        self.stashed.store(true, Ordering::Release);
        packet::flush_returns();
    }

    pub fn counters(&self) -> InterlinkCounters {
        InterlinkCounters {
            txpackets: self.tail.0.load(Ordering::Relaxed) as u64,
            rxpackets: self.head.0.load(Ordering::Relaxed) as u64,
            drops: self.drops.load(Ordering::Relaxed),
        }
    }

    /// Become the producer (`tx`) or consumer end: false when that end is
    /// taken. The end must be let go with `detach` before another thread
    /// takes it.
    pub fn attach(&self, tx: bool) -> bool {
        let flag = if tx { &self.tx_attached } else { &self.rx_attached };
        let ok = flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if ok {
            // Our copy of the other cursor may be from an earlier holder of
            // this end: start from the shared value.
            let (side, other) = if tx { (&self.producer, &self.head) } else { (&self.consumer, &self.tail) };
            // SAFETY: this thread now holds this end alone.
            unsafe { *side.0.other.get() = other.0.load(Ordering::Acquire) };
        }
        ok
    }

    /// Let go of an end (its cursor stays where it is: a new holder goes on).
    pub fn detach(&self, tx: bool) {
        let flag = if tx { &self.tx_attached } else { &self.rx_attached };
        flag.store(false, Ordering::Release);
    }

    /// Producer: move up to the ring's room from `from` (a local link),
    /// oldest first, and publish them at once. Returns how many moved.
    ///
    /// The caller must hold the producer end (`attach(true)`).
    pub fn push_from(&self, from: &Link) -> usize {
        let n = from.nreadable();
        if n == 0 || self.stashed.load(Ordering::Acquire) {
            return 0;
        }
        let tail = self.tail.0.load(Ordering::Relaxed);
        // SAFETY: the producer's side, touched by this thread only.
        let head = unsafe { &mut *self.producer.0.other.get() };
        let size = self.slots.len();
        if tail.wrapping_sub(*head) + n > size {
            *head = self.head.0.load(Ordering::Acquire);
        }
        let room = size - tail.wrapping_sub(*head);
        let k = n.min(room);
        if k == 0 {
            return 0;
        }
        let pool = packet::pool_id();
        let mut t = tail;
        for p in from.drain().take(k) {
            p.leave_home(pool);
            // SAFETY: slot t is outside head..tail (k <= room): the
            // producer's, empty; the consumer reads it only after the
            // Release store below.
            unsafe { (*self.slots[t & self.mask].get()).write(p) };
            t = t.wrapping_add(1);
        }
        self.tail.0.store(t, Ordering::Release);
        k
    }

    /// Consumer: move up to `to`'s room from the ring onto `to` (a local
    /// link), oldest first, and publish how far it read. Returns how many.
    ///
    /// The caller must hold the consumer end (`attach(false)`).
    pub fn pull_into(&self, to: &Link) -> usize {
        let head = self.head.0.load(Ordering::Relaxed);
        // SAFETY: the consumer's side, touched by this thread only.
        let tail = unsafe { &mut *self.consumer.0.other.get() };
        if *tail == head {
            *tail = self.tail.0.load(Ordering::Acquire);
            if *tail == head {
                return if self.stashed.load(Ordering::Acquire) { self.unstash(to) } else { 0 };
            }
        }
        let k = tail.wrapping_sub(head).min(to.nwritable());
        if k == 0 {
            return 0;
        }
        let mut tx = to.transmitter();
        let mut h = head;
        let end = head.wrapping_add(k);
        for _ in 0..k {
            // The slots were written on the producer's core: ask for the
            // lines a little ahead (inside what is published), so that
            // their misses overlap.
            if h.is_multiple_of(packet::SLOTS_PER_LINE) && end.wrapping_sub(h) > packet::RING_AHEAD {
                packet::prefetch(self.slots[h.wrapping_add(packet::RING_AHEAD) & self.mask].get());
            }
            // SAFETY: slot h is inside head..tail: published by the
            // producer (seen through the Acquire load), the consumer's to
            // take; it is given back by the Release store below.
            let p = unsafe { (*self.slots[h & self.mask].get()).assume_init_read() };
            tx.send(p);
            h = h.wrapping_add(1);
        }
        drop(tx);
        self.head.0.store(h, Ordering::Release);
        k
    }
}

impl Interlink {
    /// Consumer, with the ring empty: deliver what a producer end left.
    #[cold]
    fn unstash(&self, to: &Link) -> usize {
        let mut st = self.stash.lock().unwrap();
        let k = st.len().min(to.nwritable());
        for p in st.drain(..k) {
            to.transmit(p);
        }
        if st.is_empty() {
            self.stashed.store(false, Ordering::Release);
        }
        k
    }
}

impl Drop for Interlink {
    fn drop(&mut self) {
        // The last reference: no end is running. Packets still on the ring
        // are dropped here (and go home).
        let mut h = *self.head.0.get_mut();
        let t = *self.tail.0.get_mut();
        let mut n = 0;
        while h != t {
            // SAFETY: slots in head..tail hold published packets that no
            // one else will take.
            drop(unsafe { (*self.slots[h & self.mask].get()).assume_init_read() });
            h = h.wrapping_add(1);
            n += 1;
        }
        n += self.stash.get_mut().unwrap().drain(..).count() as u64;
        *self.drops.get_mut() += n;
        packet::flush_returns();
    }
}

/// The interlinks of the process by name, so that both ends (made by two
/// workers' engines, from config text) find the same ring. An entry lives
/// while an end holds it.
static TABLE: Mutex<BTreeMap<String, std::sync::Weak<Interlink>>> = Mutex::new(BTreeMap::new());

/// The interlink called `name`, made with `size` slots if it does not
/// exist. (A ring that exists keeps its size: both ends name the same.)
pub fn named(name: &str, size: usize) -> Arc<Interlink> {
    let mut t = TABLE.lock().unwrap();
    if let Some(l) = t.get(name).and_then(|w| w.upgrade()) {
        return l;
    }
    let l = Interlink::new(size);
    t.insert(name.to_string(), Arc::downgrade(&l));
    t.retain(|_, w| w.strong_count() > 0);
    l
}

/// The interlink called `name`, if it exists.
pub fn get(name: &str) -> Option<Arc<Interlink>> {
    TABLE.lock().unwrap().get(name).and_then(|w| w.upgrade())
}

/// Counters of every interlink that exists, by name.
pub fn all_counters() -> Vec<(String, InterlinkCounters)> {
    let t = TABLE.lock().unwrap();
    t.iter().filter_map(|(k, w)| w.upgrade().map(|l| (k.clone(), l.counters()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_sum(a: &packet::Stats, b: &packet::Stats) -> (u64, u64) {
        (a.allocs + b.allocs, a.frees + b.frees)
    }

    #[test]
    fn packets_cross_in_order_and_go_home() {
        let il = Interlink::new(256);
        let il2 = il.clone();
        const N: u64 = 200_000;
        let consumer = std::thread::spawn(move || {
            assert!(il2.attach(false));
            packet::expect_visitors();
            let local = Link::new(128);
            let mut seen = 0u64;
            while seen < N {
                il2.pull_into(&local);
                while let Some(p) = local.receive() {
                    let v = u64::from_le_bytes(p.data()[..8].try_into().unwrap());
                    assert_eq!(v, seen, "packets arrive in order");
                    seen += 1;
                }
                packet::flush_returns();
                packet::collect_returns();
            }
            il2.detach(false);
            packet::flush_returns();
            packet::stats()
        });
        assert!(il.attach(true));
        assert!(!il.attach(true), "a second producer is refused");
        let local = Link::new(1024);
        let mut sent = 0u64;
        let mut grown = Vec::new();
        while sent < N {
            while sent < N && !local.is_full() {
                let mut p = Packet::new();
                p.append(&sent.to_le_bytes());
                local.transmit(p);
                sent += 1;
            }
            il.push_from(&local);
            packet::collect_returns();
            grown.push(packet::stats().total);
        }
        while !local.is_empty() {
            il.push_from(&local);
            packet::collect_returns();
        }
        let theirs = consumer.join().unwrap();
        // Everything the consumer dropped comes home.
        let mut ours = packet::stats();
        for _ in 0..1000 {
            packet::collect_returns();
            ours = packet::stats();
            if ours.in_use == 0 {
                break;
            }
            std::thread::yield_now();
        }
        assert_eq!(ours.in_use, 0, "every record home: {ours:?}");
        assert_eq!(theirs.allocs, 0, "the consumer allocated nothing");
        let (allocs, frees) = stats_sum(&ours, &theirs);
        assert_eq!(allocs, frees, "conservation across the two workers");
        // One-way traffic does not grow the producer's pool without bound:
        // at most what is in flight (two links, the ring, the return ring)
        // is away at once, far below the N a pool that never got its
        // records back would hold.
        let most = *grown.iter().max().unwrap();
        assert!(most < N / 4, "the producer's pool grew to {most} records under one-way traffic");
        assert_eq!(il.counters().txpackets, N);
        assert_eq!(il.counters().rxpackets, N);
    }

    #[test]
    fn a_full_ring_leaves_packets_on_the_local_link() {
        let il = Interlink::new(4);
        assert!(il.attach(true));
        let local = Link::new(16);
        for _ in 0..10 {
            local.transmit(Packet::new());
        }
        assert_eq!(il.push_from(&local), 4);
        assert_eq!(local.nreadable(), 6);
        assert_eq!(il.push_from(&local), 0);
        assert!(il.attach(false));
        let out = Link::new(2);
        assert_eq!(il.pull_into(&out), 2);
        assert_eq!(il.push_from(&local), 2);
        drop(out);
        local.discard();
        il.detach(true);
        il.detach(false);
        drop(il);
    }

    #[test]
    fn a_stash_comes_before_later_packets() {
        let il = Interlink::new(4);
        assert!(il.attach(true));
        let local = Link::new(16);
        for i in 0..8u8 {
            local.transmit(Packet::from_bytes(&[i]));
        }
        assert_eq!(il.push_from(&local), 4);
        il.stash_from(&local);
        il.detach(true);
        assert_eq!(il.nreadable(), 8);
        // A new producer waits for the stash to be taken.
        assert!(il.attach(true));
        local.transmit(Packet::from_bytes(&[8]));
        assert_eq!(il.push_from(&local), 0);
        assert!(il.attach(false));
        let out = Link::new(64);
        il.pull_into(&out);
        il.pull_into(&out);
        assert_eq!(il.push_from(&local), 1);
        il.pull_into(&out);
        let got: Vec<u8> = out.drain().map(|p| p.data()[0]).collect();
        assert_eq!(got, (0..9).collect::<Vec<u8>>());
    }

    #[test]
    fn chain_packets_go_home_whole_from_another_worker() {
        use crate::packet::{BufferOwner, ForeignBuffer};
        let il = Interlink::new(64);
        let il2 = il.clone();
        let mut buf = vec![0u8; 3 * 1024 * 64];
        let base = buf.as_mut_ptr() as usize;
        let owner = BufferOwner::register("guest", None);
        assert!(il.attach(true));
        // The consumer flattens every other chain (its copy is a host packet
        // of the owner's pool, away from home) and drops the rest whole.
        let consumer = std::thread::spawn(move || {
            assert!(il2.attach(false));
            packet::expect_visitors();
            let local = Link::new(64);
            let mut n = 0;
            while n < 100 {
                il2.pull_into(&local);
                while let Some(p) = local.receive() {
                    assert!(p.is_chain() && p.len() == 2500);
                    if n % 2 == 0 {
                        assert!(p.data().iter().all(|&b| b == (n % 64) as u8));
                    }
                    n += 1;
                }
            }
            packet::flush_returns();
        });
        let local = Link::new(256);
        let mut returned = 0;
        let mut sent = 0;
        let lend = |i: usize, k: usize, len: u32| {
            let at = base + (i * 3 + k) * 1024;
            // SAFETY: the buffer lives until every token is back (below).
            unsafe { std::slice::from_raw_parts_mut(at as *mut u8, 1024).fill(i as u8) };
            let fb = ForeignBuffer {
                base: std::ptr::NonNull::new(at as *mut u8).unwrap(),
                start: 0,
                len,
                cap: 1024,
                dma: 0,
                token: (i * 3 + k) as u64,
                fixed_start: true,
            };
            // SAFETY: as above.
            Some(unsafe { owner.wrap(fb) })
        };
        while sent < 100 {
            let i = sent % 64;
            let mut parts = [lend(i, 0, 1024), lend(i, 1, 1024), lend(i, 2, 452)];
            local.transmit(packet::chain(&mut parts).unwrap());
            sent += 1;
            while il.push_from(&local) == 0 {
                packet::collect_returns();
                owner.drain_returns(|_| returned += 1);
            }
            packet::collect_returns();
            owner.drain_returns(|_| returned += 1);
        }
        consumer.join().unwrap();
        for _ in 0..1000 {
            packet::collect_returns();
            owner.drain_returns(|_| returned += 1);
            if returned == 300 {
                break;
            }
        }
        assert_eq!(returned, 300, "every buffer of every chain back on its owner's thread");
        assert_eq!(owner.outstanding(), 0);
        drop(owner);
        drop(buf);
    }

    #[test]
    fn foreign_packets_go_home_to_their_owners_worker() {
        use crate::packet::{BufferOwner, ForeignBuffer};
        let il = Interlink::new(64);
        let il2 = il.clone();
        let mut buf = vec![0u8; 64 * 256];
        let base = buf.as_mut_ptr() as usize;
        let owner = BufferOwner::register("guest", None);
        assert!(il.attach(true));
        let consumer = std::thread::spawn(move || {
            assert!(il2.attach(false));
            packet::expect_visitors();
            let local = Link::new(64);
            let mut n = 0;
            while n < 200 {
                il2.pull_into(&local);
                n += local.discard().0;
            }
            packet::flush_returns();
        });
        let local = Link::new(256);
        let mut returned = 0;
        let mut sent = 0;
        while sent < 200 {
            let i = sent % 256;
            let fb = ForeignBuffer {
                base: std::ptr::NonNull::new((base + i * 64) as *mut u8).unwrap(),
                start: 0,
                len: 60,
                cap: 64,
                dma: 0,
                token: i as u64,
                fixed_start: false,
            };
            // SAFETY: the buffer lives until every token is back (below).
            local.transmit(unsafe { owner.wrap(fb) });
            sent += 1;
            il.push_from(&local);
            packet::collect_returns();
            owner.drain_returns(|_| returned += 1);
        }
        while !local.is_empty() {
            il.push_from(&local);
        }
        consumer.join().unwrap();
        for _ in 0..1000 {
            packet::collect_returns();
            owner.drain_returns(|_| returned += 1);
            if returned == 200 {
                break;
            }
        }
        assert_eq!(returned, 200, "every lent buffer back on its owner's thread");
        drop(owner);
        drop(buf);
    }
}
