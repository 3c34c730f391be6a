//! The driver: the task the queue owns, which sleeps on the queue's one timer and
//! hands out the grants that come due (quinn's `ConnectionDriver`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::shared::{Shared, WakeWaiters, Wakeups, lock, wake};
use super::{DriverTask, Runtime};

/// Who makes a change: a waiting future's poll (which tries again itself if no driver
/// can start here), or anyone else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Caller {
    WaiterPoll,
    Other,
}

/// Runs `change` under the lock, then acts on what it collected once the lock is
/// released: wakes the wakers, starts a driver.
pub(super) fn change<R: Runtime, T>(
    shared: &Arc<Mutex<Shared>>,
    caller: Caller,
    change: impl FnOnce(&mut Shared, &mut Wakeups) -> T,
) -> T {
    let mut wakeups = Wakeups::default();
    let result = change(&mut lock(shared), &mut wakeups);
    // Most changes (a request, a delivery) wake no one.
    if !wakeups.wakers.is_empty() {
        wake(wakeups.wakers);
    }
    if let Some(id) = wakeups.start_driver {
        let driver: DriverTask = Box::pin(Driver::<R>::new(Arc::clone(shared), id));
        if let Err(driver) = R::spawn(driver) {
            // No runtime here (a permit dropped on a plain thread, say): the slot
            // is freed, and the waiting futures are woken to start a driver from
            // their own runtime. Not from a waiter's poll: it would wake itself,
            // and fail again, in a loop; it tries again when next polled.
            let mut wakeups = Wakeups::default();
            let wake_waiters = match caller {
                Caller::WaiterPoll => WakeWaiters::No,
                Caller::Other => WakeWaiters::Yes,
            };
            lock(shared).driver_gone(id, wake_waiters, &mut wakeups);
            drop(driver);
            wake(wakeups.wakers);
        }
    }
    result
}

/// Fired timers in a row after which the driver yields to its executor: a timer that
/// keeps firing before the clock reaches its deadline is not trusted to stop.
const MAX_ROUNDS: u32 = 4;

/// The driver task of one queue. It lives while shards wait: started by
/// [`Shared::ensure_driver`], it ends when the queue is idle, or when another driver
/// replaced it.
pub(super) struct Driver<R: Runtime> {
    shared: Arc<Mutex<Shared>>,
    id: u64,
    /// Made on the first wait, on the runtime that runs the driver.
    timer: Option<Pin<Box<R::Timer>>>,
    /// The deadline the timer is set to, until it fires.
    armed_for: Option<Instant>,
    /// The list a round collects wakers in, kept between rounds: a tick wakes a shard
    /// per bucket, and growing a new list each round is about a tenth of the round's
    /// work (`benches/compare`'s `--profile ours`).
    wakers: Vec<Waker>,
}

impl<R: Runtime> Driver<R> {
    pub(super) fn new(shared: Arc<Mutex<Shared>>, id: u64) -> Self {
        Self {
            shared,
            id,
            timer: None,
            armed_for: None,
            wakers: Vec::new(),
        }
    }
}

impl<R: Runtime> Future for Driver<R> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        for _ in 0..MAX_ROUNDS {
            let mut wakeups = Wakeups {
                wakers: std::mem::take(&mut this.wakers),
                start_driver: None,
            };
            let mut shared = lock(&this.shared);
            if !shared.is_driver(this.id) {
                return Poll::Ready(());
            }
            shared.stats.driver_polls += 1;
            // The clock is read before the timer is polled: a timer that fires late,
            // or returns Pending past its deadline (tokio's cooperative budget), never
            // delays a grant.
            shared.drive(R::now(), &mut wakeups);
            let Some(deadline) = shared.deadline() else {
                shared.driver_gone(this.id, WakeWaiters::No, &mut wakeups);
                drop(shared);
                wake(wakeups.wakers);
                return Poll::Ready(());
            };
            if this.armed_for != Some(deadline) {
                match &mut this.timer {
                    Some(timer) => R::reset(timer.as_mut(), deadline),
                    None => this.timer = Some(Box::pin(R::timer(deadline))),
                }
                this.armed_for = Some(deadline);
                shared.stats.timer_resets += 1;
            }
            let timer = this.timer.as_mut().map(Pin::as_mut);
            let fired = timer.is_none_or(|timer| R::poll_timer(timer, cx).is_ready());
            if !fired {
                // Parked under the lock: a change after this wakes it (invariant 2).
                shared.park_driver(this.id, cx.waker(), deadline);
            }
            drop(shared);
            this.wake(wakeups.wakers);
            if !fired {
                return Poll::Pending;
            }
            this.armed_for = None;
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<R: Runtime> Driver<R> {
    /// Wakes what a round collected, with the lock released, and keeps the list for
    /// the next round (unless a rare round made it large).
    fn wake(&mut self, mut wakers: Vec<Waker>) {
        /// Wakers a kept list has room for: ticks of up to this many buckets.
        const KEPT: usize = 1024;
        wakers.drain(..).for_each(Waker::wake);
        if wakers.capacity() <= KEPT {
            self.wakers = wakers;
        }
    }
}

impl<R: Runtime> Drop for Driver<R> {
    fn drop(&mut self) {
        // Dropped while it is the queue's driver: its runtime went away, before or
        // after running it. Waiters are woken to start a new one on their runtime.
        // (A driver no runtime would take is given up by `Queue::change` first.)
        let mut wakeups = Wakeups::default();
        lock(&self.shared).driver_gone(self.id, WakeWaiters::Yes, &mut wakeups);
        wake(wakeups.wakers);
    }
}
