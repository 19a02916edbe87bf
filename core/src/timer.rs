//! TIMERS
//!
//! Two kinds: engine timers ([`Timers`], run once per breath when due, with
//! access to the engine: periodic reports, config reloads) and throttles
//! ([`Throttle`], for periodic work inside an app without a callback).

use std::time::{Duration, Instant};

/// Fire at most once per `period`.
#[derive(Clone, Debug)]
pub struct Throttle {
    period: Duration,
    next: Instant,
}

impl Throttle {
    pub fn new(period: Duration) -> Throttle {
        Throttle { period, next: Instant::now() + period }
    }
    /// True (and re-armed) when the period has passed.
    #[inline]
    pub fn ready(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.period;
        true
    }
}

pub(crate) struct Timer<E> {
    pub name: String,
    pub next: Instant,
    pub period: Option<Duration>,
    pub action: Box<dyn FnMut(&mut E)>,
}

/// Timers owned by a value of type `E` (the engine), whose actions get
/// `&mut E` when they fire.
pub struct Timers<E> {
    timers: Vec<Timer<E>>,
    next: Option<Instant>,
}

impl<E> Default for Timers<E> {
    fn default() -> Self {
        Timers { timers: Vec::new(), next: None }
    }
}

impl<E> Timers<E> {
    /// Run `action` after `delay`, then every `delay` again if `repeat`.
    pub fn add(&mut self, name: &str, delay: Duration, repeat: bool, action: Box<dyn FnMut(&mut E)>) {
        let next = Instant::now() + delay;
        self.timers.push(Timer { name: name.to_string(), next, period: repeat.then_some(delay), action });
        self.next = Some(self.next.map_or(next, |n| n.min(next)));
    }

    /// Remove every timer called `name`; returns how many there were.
    pub fn cancel(&mut self, name: &str) -> usize {
        let before = self.timers.len();
        self.timers.retain(|t| t.name != name);
        self.recompute();
        before - self.timers.len()
    }

    pub fn len(&self) -> usize {
        self.timers.len()
    }
    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }

    fn recompute(&mut self) {
        self.next = self.timers.iter().map(|t| t.next).min();
    }

    /// Whether any timer is due at `now` (cheap: one comparison).
    #[inline]
    pub fn due(&self, now: Instant) -> bool {
        self.next.is_some_and(|n| n <= now)
    }

    /// Take out the timers due at `now`.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<Timer<E>> {
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.timers).into_iter().partition(|t| t.next <= now);
        self.timers = keep;
        self.recompute();
        due
    }

    /// Put fired timers back (repeating ones re-armed from `now`).
    pub(crate) fn put_back(&mut self, fired: Vec<Timer<E>>, now: Instant) {
        for mut t in fired {
            if let Some(p) = t.period {
                t.next = now + p;
                self.timers.push(t);
            }
        }
        self.recompute();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_and_repeat() {
        let mut t: Timers<u32> = Timers::default();
        t.add("once", Duration::ZERO, false, Box::new(|n| *n += 1));
        t.add("again", Duration::ZERO, true, Box::new(|n| *n += 10));
        t.add("later", Duration::from_secs(3600), false, Box::new(|_| panic!("not due")));
        let now = Instant::now();
        assert!(t.due(now));
        let mut n = 0;
        let mut fired = t.take_due(now);
        for f in &mut fired {
            (f.action)(&mut n);
        }
        assert_eq!(n, 11);
        t.put_back(fired, now);
        assert_eq!(t.len(), 2, "one-shot dropped, repeating kept");
        assert_eq!(t.cancel("again"), 1);
        assert!(!t.due(now));
    }

    #[test]
    fn throttle() {
        let mut th = Throttle::new(Duration::from_millis(10));
        let now = Instant::now();
        assert!(!th.ready(now));
        assert!(th.ready(now + Duration::from_millis(11)));
        assert!(!th.ready(now + Duration::from_millis(12)));
    }
}
