//! MAC TABLE: (destination MAC, VLAN id) -> the pools that take the frame.
//!
//! A small open-addressing table, built once per config and read once per
//! packet. A key is 60 bits: the six address bytes read as a little-endian
//! number (what one unaligned load of the frame's first eight bytes gives,
//! masked), with the VLAN id above them (0 for untagged). No key can equal
//! `EMPTY`, which marks a free slot.
//!
//! The hash is one multiplication (Fibonacci hashing) and the table is kept
//! at most a quarter full, so a lookup nearly always reads one slot; slots are
//! 32 bytes and aligned, so a slot never straddles two cache lines.

/// Bits of a key that hold the MAC address.
pub const MAC_BITS: u64 = 0xffff_ffff_ffff;
const EMPTY: u64 = u64::MAX;

/// Where a frame goes: a bitmap of pools, and which of them get the frame
/// with its 802.1Q tag stripped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    pub pools: u64,
    pub strip: u64,
}

#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Slot {
    key: u64,
    route: Route,
}

/// The key of a MAC address (as the frame carries it) on VLAN `vid`.
#[inline(always)]
pub fn key(mac: &[u8; 6], vid: u16) -> u64 {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(mac);
    u64::from_le_bytes(b) | (vid as u64) << 48
}

pub struct MacTable {
    slots: Box<[Slot]>,
    mask: usize,
    shift: u32,
    len: usize,
}

impl MacTable {
    /// A table for up to `n` keys.
    pub fn with_capacity(n: usize) -> MacTable {
        let size = (n * 4).next_power_of_two().max(16);
        MacTable {
            slots: vec![Slot { key: EMPTY, route: Route::default() }; size].into_boxed_slice(),
            mask: size - 1,
            shift: 64 - size.trailing_zeros(),
            len: 0,
        }
    }

    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    /// Add or replace the route of `key`. Grows the table to stay a quarter full.
    pub fn insert(&mut self, key: u64, route: Route) {
        assert!(key != EMPTY, "reserved key");
        if (self.len + 1) * 4 > self.slots.len() {
            let mut bigger = MacTable::with_capacity(self.len + 1);
            for s in self.slots.iter().filter(|s| s.key != EMPTY) {
                bigger.insert(s.key, s.route);
            }
            *self = bigger;
        }
        let mut i = self.home(key);
        loop {
            let s = &mut self.slots[i];
            if s.key == key {
                s.route = route;
                return;
            }
            if s.key == EMPTY {
                *s = Slot { key, route };
                self.len += 1;
                return;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The route of `key`, if it is in the table.
    #[inline(always)]
    pub fn get(&self, key: u64) -> Option<Route> {
        let mut i = self.home(key);
        loop {
            // The index is masked to the table's size, so the bounds check
            // folds away; the table always has an empty slot, so this ends.
            let s = &self.slots[i & self.mask];
            if s.key == key {
                return Some(s.route);
            }
            if s.key == EMPTY {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every key and its route, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Route)> + '_ {
        self.slots.iter().filter(|s| s.key != EMPTY).map(|s| (s.key, s.route))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn key_is_the_first_six_bytes_little_endian() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let frame = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0xaa, 0xbb];
        assert_eq!(key(&mac, 0), u64::from_le_bytes(frame) & MAC_BITS);
        assert_eq!(key(&mac, 4094) >> 48, 4094);
        assert!(key(&[0xff; 6], 4095) != EMPTY);
    }

    #[test]
    fn grows_and_replaces() {
        let mut t = MacTable::with_capacity(1);
        for k in 0..1000u64 {
            t.insert(k * 7919, Route { pools: k, strip: 0 });
        }
        assert_eq!(t.len(), 1000);
        t.insert(7919, Route { pools: 99, strip: 1 });
        assert_eq!(t.len(), 1000);
        assert_eq!(t.get(7919), Some(Route { pools: 99, strip: 1 }));
        assert_eq!(t.get(3), None);
        assert!(t.slots.len() >= 4000);
    }

    proptest! {
        #[test]
        fn agrees_with_a_btreemap(keys in proptest::collection::vec(0u64..(1 << 60), 0..300),
                                  probes in proptest::collection::vec(0u64..(1 << 60), 0..300)) {
            let mut t = MacTable::with_capacity(keys.len() / 3);
            let mut m = BTreeMap::new();
            for (i, &k) in keys.iter().enumerate() {
                let r = Route { pools: i as u64, strip: k };
                t.insert(k, r);
                m.insert(k, r);
            }
            prop_assert_eq!(t.len(), m.len());
            for k in keys.iter().chain(&probes) {
                prop_assert_eq!(t.get(*k), m.get(k).copied());
            }
        }
    }
}
