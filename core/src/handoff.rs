//! HANDING STATE OVER TO AN APP'S SUCCESSOR ON ANOTHER WORKER
//!
//! An app that moves to another worker is made anew there, and the old
//! instance is stopped (see `worker`). Some state should outlive the old
//! instance rather than start over: a `VhostUser` port's connection (else
//! the guest would have to connect again, losing what was in flight), an
//! 82599 pool's running rings (else the frames the chip wrote and the
//! buffers posted would be dropped). The old instance lets go of what ties
//! that state to its thread while the move waits (`App::prepare_move`),
//! parks it here when it stops, and its successor takes it over. What no
//! successor takes within PARK_TIMEOUT (its worker failed to start it) is
//! handed to the `expired` function given, on a thread of its own, which
//! winds it down.
//!
//!   announce(key)               state will be parked under `key` (the move began)
//!   withdraw(key)               it will not after all
//!   coming(key) -> bool         announced or parked: a successor waits for it
//!                               rather than start anew (connect a second time)
//!   park(key, value, expired)   keep `value` for the app that takes `key`
//!   waiting() -> bool           anything announced or parked (one atomic
//!                               load: for every tick)
//!   take(key) -> Option         what is parked under `key` (of the type asked), if any
//!   key(parts) -> String        a key from the app's name and what it serves
//!
//! A key names the app and what it serves (a socket, a pool of a port),
//! so that only the same app on the same resource takes the state over.

use std::any::Any;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long parked state waits for its successor (and an announcement for
/// its state).
pub const PARK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an app that prepared to move (`App::prepare_move`) and was
/// neither stopped nor told the move is off (its worker did not answer)
/// keeps to what it prepared; after it, it goes on as before.
pub const MOVE_ABANDONED: Duration = Duration::from_secs(40);

struct Parked {
    id: u64,
    key: String,
    value: Box<dyn Any + Send>,
}

static PARKED: Mutex<Vec<Parked>> = Mutex::new(Vec::new());
/// Keys announced and not parked yet, and since when (an announcement is
/// forgotten after PARK_TIMEOUT: its app's worker may have died).
static ANNOUNCED: Mutex<Vec<(String, Instant)>> = Mutex::new(Vec::new());
/// Entries in PARKED and ANNOUNCED.
static COUNT: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A key made of `parts` (the app's name first).
pub fn key(parts: &[&str]) -> String {
    parts.join("\0")
}

/// State will be parked under `key`: until it is (or PARK_TIMEOUT), a
/// successor that asks `coming` waits for it.
pub fn announce(key: String) {
    let mut a = ANNOUNCED.lock().unwrap_or_else(|e| e.into_inner());
    if !a.iter().any(|(k, _)| *k == key) {
        a.push((key, Instant::now()));
        COUNT.fetch_add(1, Ordering::AcqRel);
    }
}

/// Nothing will be parked under `key` after all.
pub fn withdraw(key: &str) {
    let mut a = ANNOUNCED.lock().unwrap_or_else(|e| e.into_inner());
    let before = a.len();
    a.retain(|(k, _)| k != key);
    COUNT.fetch_sub(before - a.len(), Ordering::AcqRel);
}

/// Whether state under `key` is parked, or announced less than
/// PARK_TIMEOUT ago.
pub fn coming(key: &str) -> bool {
    if !waiting() {
        return false;
    }
    {
        let mut a = ANNOUNCED.lock().unwrap_or_else(|e| e.into_inner());
        let before = a.len();
        a.retain(|(_, t)| t.elapsed() < PARK_TIMEOUT);
        COUNT.fetch_sub(before - a.len(), Ordering::AcqRel);
        if a.iter().any(|(k, _)| k == key) {
            return true;
        }
    }
    PARKED.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|p| p.key == key)
}

/// Keep `value` under `key` for PARK_TIMEOUT; then, untaken, it goes to
/// `expired` (on a thread of its own). Values parked twice under a key
/// are both kept: `take` gives the oldest first.
pub fn park<T: Send + 'static>(key: String, value: T, expired: impl FnOnce(T) + Send + 'static) {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    {
        let mut p = PARKED.lock().unwrap_or_else(|e| e.into_inner());
        p.push(Parked { id, key: key.clone(), value: Box::new(value) });
        COUNT.fetch_add(1, Ordering::AcqRel);
    }
    withdraw(&key);
    let reaper = move || {
        std::thread::sleep(PARK_TIMEOUT);
        if let Some(v) = remove(|p| p.id == id)
            && let Ok(v) = v.downcast::<T>()
        {
            expired(*v);
        }
    };
    if let Err(e) = std::thread::Builder::new().name("handoff".into()).spawn(reaper) {
        // No thread to wind it down in time: it waits for a successor (or
        // for the process to end).
        log::warn!("handoff: no thread to expire what was parked: {e}");
    }
}

/// Whether anything is announced or parked.
#[inline]
pub fn waiting() -> bool {
    COUNT.load(Ordering::Acquire) > 0
}

/// Take the `T` parked under `key` (the oldest, if the key was parked twice).
pub fn take<T: 'static>(key: &str) -> Option<T> {
    remove(|p| p.key == key && p.value.is::<T>()).and_then(|v| v.downcast::<T>().ok()).map(|v| *v)
}

fn remove(f: impl Fn(&Parked) -> bool) -> Option<Box<dyn Any + Send>> {
    let mut p = PARKED.lock().unwrap_or_else(|e| e.into_inner());
    let i = p.iter().position(f)?;
    let v = p.remove(i).value;
    COUNT.fetch_sub(1, Ordering::AcqRel);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn a_value_is_taken_once_by_its_key_only() {
        let k = key(&["hand-a", "/tmp/x.sock", "server"]);
        park(k.clone(), 7u32, |_| {});
        assert!(waiting());
        assert_eq!(take::<u32>(&key(&["hand-b", "/tmp/x.sock", "server"])), None);
        assert_eq!(take::<u32>(&key(&["hand-a", "/tmp/x.sock", "client"])), None);
        assert_eq!(take::<u64>(&k), None, "a value of another type is left alone");
        assert_eq!(take::<u32>(&k), Some(7));
        assert_eq!(take::<u32>(&k), None);
    }

    #[test]
    fn an_announced_key_is_coming_until_parked_taken_or_withdrawn() {
        let k = key(&["hand-d", "/tmp/z.sock"]);
        assert!(!coming(&k));
        announce(k.clone());
        announce(k.clone());
        assert!(coming(&k) && waiting());
        assert_eq!(take::<u16>(&k), None, "announced is not parked");
        park(k.clone(), 3u16, |_| {});
        assert!(coming(&k));
        assert_eq!(take::<u16>(&k), Some(3));
        assert!(!coming(&k), "taken: nothing more comes");
        announce(k.clone());
        withdraw(&k);
        assert!(!coming(&k), "withdrawn");
    }

    #[test]
    fn an_untaken_value_expires() {
        let k = key(&["hand-c", "/tmp/y.sock"]);
        let gone = Arc::new(AtomicBool::new(false));
        let g = gone.clone();
        park(k.clone(), 1u8, move |v| g.store(v == 1, Ordering::SeqCst));
        let end = std::time::Instant::now() + PARK_TIMEOUT + Duration::from_secs(5);
        while !gone.load(Ordering::SeqCst) && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(gone.load(Ordering::SeqCst), "expired");
        assert_eq!(take::<u8>(&k), None);
    }
}
