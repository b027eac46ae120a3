//! A fixed set of threads mapping items in parallel and handing the results
//! back in submission order, with a cap on items in flight so memory stays
//! bounded however fast the producer is.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A worker thread panicked; the item it held is lost.
#[derive(Debug)]
pub(crate) struct WorkerPanicked;

type Job<I> = (u64, I);
type Done<O> = (u64, Result<O, WorkerPanicked>);

pub(crate) struct OrderedPool<I, O> {
    jobs: Option<SyncSender<Job<I>>>,
    done: Receiver<Done<O>>,
    pending: BTreeMap<u64, Result<O, WorkerPanicked>>,
    next_in: u64,
    next_out: u64,
    limit: usize,
    workers: Vec<JoinHandle<()>>,
}

impl<I: Send + 'static, O: Send + 'static> OrderedPool<I, O> {
    /// `threads` workers, each with its own state from `init`, applying `work`.
    pub fn new<S, Init, Work>(threads: usize, limit: usize, init: Init, work: Work) -> Self
    where
        Init: Fn() -> S + Send + Sync + 'static,
        Work: Fn(&mut S, I) -> O + Send + Sync + 'static,
    {
        let limit = limit.max(1);
        // Never more than `limit` items exist, so neither channel ever blocks
        // a sender for long.
        let (job_tx, job_rx) = sync_channel::<Job<I>>(limit);
        let (done_tx, done_rx) = sync_channel::<Done<O>>(limit);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let init = Arc::new(init);
        let work = Arc::new(work);
        let workers = (0..threads.max(1))
            .map(|i| {
                let job_rx = Arc::clone(&job_rx);
                let done_tx = done_tx.clone();
                let init = Arc::clone(&init);
                let work = Arc::clone(&work);
                std::thread::Builder::new()
                    .name(format!("snapshot-codec-{i}"))
                    .spawn(move || {
                        let mut state = init();
                        loop {
                            let job = job_rx
                                .lock()
                                .map_err(|_| ())
                                .and_then(|rx| rx.recv().map_err(|_| ()));
                            let Ok((seq, item)) = job else { return };
                            let out = catch_unwind(AssertUnwindSafe(|| work(&mut state, item)))
                                .map_err(|_| WorkerPanicked);
                            let failed = out.is_err();
                            if done_tx.send((seq, out)).is_err() || failed {
                                return;
                            }
                        }
                    })
                    .expect("spawning a codec thread")
            })
            .collect();
        Self {
            jobs: Some(job_tx),
            done: done_rx,
            pending: BTreeMap::new(),
            next_in: 0,
            next_out: 0,
            limit,
            workers,
        }
    }

    pub fn is_full(&self) -> bool {
        self.in_flight() >= self.limit
    }

    pub fn in_flight(&self) -> usize {
        (self.next_in - self.next_out) as usize
    }

    /// Queues an item; call only when not [`Self::is_full`].
    pub fn submit(&mut self, item: I) {
        debug_assert!(!self.is_full());
        let seq = self.next_in;
        self.next_in += 1;
        if let Some(jobs) = &self.jobs {
            // A send fails only once every worker is gone; `next` reports that.
            let _ = jobs.send((seq, item));
        }
    }

    /// The next result in submission order, waiting for it; `None` when
    /// nothing is in flight.
    pub fn next(&mut self) -> Option<Result<O, WorkerPanicked>> {
        if self.in_flight() == 0 {
            return None;
        }
        loop {
            if let Some(out) = self.pending.remove(&self.next_out) {
                self.next_out += 1;
                return Some(out);
            }
            match self.done.recv() {
                Ok((seq, out)) => {
                    self.pending.insert(seq, out);
                }
                // Every worker has exited without producing this item.
                Err(_) => {
                    self.next_out += 1;
                    return Some(Err(WorkerPanicked));
                }
            }
        }
    }
}

impl<I, O> Drop for OrderedPool<I, O> {
    fn drop(&mut self) {
        // Workers finish the item they hold (the result channel has room for
        // every item in flight), see the closed job channel and exit.
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order() {
        let mut pool = OrderedPool::new(
            3,
            4,
            || (),
            |_, n: u64| {
                std::thread::sleep(std::time::Duration::from_micros((n * 7919) % 500));
                n * 2
            },
        );
        let mut got = Vec::new();
        for n in 0..100 {
            while pool.is_full() {
                got.push(pool.next().unwrap().unwrap());
            }
            pool.submit(n);
        }
        while let Some(out) = pool.next() {
            got.push(out.unwrap());
        }
        assert_eq!(got, (0..100).map(|n| n * 2).collect::<Vec<_>>());
    }

    #[test]
    fn a_panicking_worker_is_reported_not_hung() {
        let mut pool = OrderedPool::new(
            2,
            2,
            || (),
            |_, n: u32| {
                if n == 1 {
                    panic!("boom");
                }
                n
            },
        );
        pool.submit(0);
        pool.submit(1);
        assert!(pool.next().unwrap().is_ok());
        assert!(pool.next().unwrap().is_err());
    }
}
