//! Which serving thread the code is running on. Callers are served by `server.workers`
//! threads, each with its own current-thread runtime and listening socket (`server::workers`);
//! what a request touches that owns I/O — the upstream connection pool — is kept per thread
//! in a [`PerWorker`], so that one request is handled from accept to answer on one thread and
//! never has to wake another (measured in `benches/e2e`: a 10 KiB upload cost 50 µs of CPU on
//! the shared multi-thread runtime and 44 µs served this way; docs/benchmarks.md has the steps).

use std::cell::Cell;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// 1..=n on serving thread n; 0 elsewhere (the control runtime: admin listener, token
/// refreshers, file watchers; and tests that drive a service directly).
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Marks the calling thread as serving thread `i` (from 1).
pub(crate) fn enter(i: usize) {
    INDEX.with(|c| c.set(i));
}

/// One `T` per serving thread, plus one for every other thread.
pub struct PerWorker<T> {
    items: Box<[T]>,
}

impl<T> PerWorker<T> {
    /// `workers + 1` values from `make`.
    pub fn new(workers: usize, make: impl FnMut() -> T) -> Self {
        let mut make = make;
        Self {
            items: (0..=workers).map(|_| make()).collect(),
        }
    }

    /// Every thread's value.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    /// The calling thread's value.
    pub fn get(&self) -> &T {
        // A thread numbered beyond the set (not one this value was built for) shares slot 0,
        // which is always there.
        self.items.get(index()).unwrap_or(&self.items[0])
    }
}

impl<T> std::fmt::Debug for PerWorker<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerWorker")
            .field("threads", &self.items.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_serving_thread_gets_its_own_value_and_other_threads_share_slot_zero() {
        let n = std::sync::atomic::AtomicUsize::new(0);
        let per = std::sync::Arc::new(PerWorker::new(2, || {
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        }));
        assert_eq!(*per.get(), 0, "a thread that never entered");
        let on = |i: usize| {
            let per = per.clone();
            std::thread::spawn(move || {
                enter(i);
                *per.get()
            })
            .join()
            .expect("thread")
        };
        assert_eq!((on(1), on(2)), (1, 2));
        assert_eq!(on(7), 0, "beyond the set: slot 0");
    }
}
