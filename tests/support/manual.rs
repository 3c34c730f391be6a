//! A hand-driven runtime for the async queue: a clock that moves only when told,
//! timers that record their wakers, spawned tasks run only when asked, and
//! hand-polled futures that record whether they were woken (tokio-test's
//! `task::spawn` / `is_woken` style). Everything is per thread: one test, one world.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use identify_queue::runtime::{DriverTask, Runtime};

/// The runtime: `now` is the thread's manual clock.
#[derive(Clone, Copy, Debug)]
pub struct Manual;

/// A timer's deadline and the waker its last poll registered.
#[derive(Debug)]
struct TimerState {
    deadline: Instant,
    waker: Option<Waker>,
}

/// The queue's timer on the manual runtime.
#[derive(Debug)]
pub struct ManualTimer(Arc<Mutex<TimerState>>);

struct Spawned {
    task: DriverTask,
    woken: Arc<Flag>,
}

#[derive(Default)]
struct World {
    now: Option<Instant>,
    timers: Vec<Arc<Mutex<TimerState>>>,
    tasks: Vec<Spawned>,
    spawned: usize,
}

thread_local! {
    static WORLD: RefCell<World> = RefCell::new(World::default());
}

/// A waker that sets a flag.
#[derive(Default)]
pub struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Flag {
    /// Whether it was woken since the last call.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

impl Runtime for Manual {
    type Timer = ManualTimer;

    fn now() -> Instant {
        WORLD.with(|world| world.borrow().now.expect("manual::start first"))
    }

    fn timer(deadline: Instant) -> ManualTimer {
        let state = Arc::new(Mutex::new(TimerState {
            deadline,
            waker: None,
        }));
        WORLD.with(|world| world.borrow_mut().timers.push(Arc::clone(&state)));
        ManualTimer(state)
    }

    fn reset(timer: Pin<&mut ManualTimer>, deadline: Instant) {
        // The harshest reading of the contract: a reset forgets the waker.
        let mut state = timer.0.lock().unwrap();
        state.deadline = deadline;
        state.waker = None;
    }

    fn poll_timer(timer: Pin<&mut ManualTimer>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = timer.0.lock().unwrap();
        if state.deadline <= Self::now() {
            Poll::Ready(())
        } else {
            state.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn spawn(task: DriverTask) -> Result<(), DriverTask> {
        let woken = Arc::new(Flag(AtomicBool::new(true)));
        WORLD.with(|world| {
            let mut world = world.borrow_mut();
            world.spawned += 1;
            world.tasks.push(Spawned { task, woken });
        });
        Ok(())
    }
}

/// A fresh world whose clock reads `now`.
pub fn start(now: Instant) {
    WORLD.with(|world| {
        *world.borrow_mut() = World {
            now: Some(now),
            ..World::default()
        }
    });
}

/// Moves the clock to `to` (never back) and wakes the timers due by then.
pub fn advance_to(to: Instant) {
    let due: Vec<Waker> = WORLD.with(|world| {
        let mut world = world.borrow_mut();
        let to = world.now.map_or(to, |now| now.max(to));
        world.now = Some(to);
        // Timers nobody holds any more are forgotten.
        world.timers.retain(|timer| Arc::strong_count(timer) > 1);
        world
            .timers
            .iter()
            .filter_map(|timer| {
                let mut state = timer.lock().unwrap();
                if state.deadline <= to {
                    state.waker.take()
                } else {
                    None
                }
            })
            .collect()
    });
    due.into_iter().for_each(Waker::wake);
}

/// The earliest deadline of a timer some task waits on.
pub fn next_timer() -> Option<Instant> {
    WORLD.with(|world| {
        let world = world.borrow();
        world
            .timers
            .iter()
            .filter(|timer| Arc::strong_count(timer) > 1)
            .filter_map(|timer| {
                let state = timer.lock().unwrap();
                state.waker.as_ref().map(|_| state.deadline)
            })
            .min()
    })
}

/// Runs the spawned tasks that were woken until none is; how many polls that took.
pub fn run_spawned() -> usize {
    let mut polls = 0;
    loop {
        let ready: Vec<Spawned> = WORLD.with(|world| {
            let mut world = world.borrow_mut();
            let (ready, idle) = std::mem::take(&mut world.tasks)
                .into_iter()
                .partition(|spawned| spawned.woken.take());
            world.tasks = idle;
            ready
        });
        if ready.is_empty() {
            return polls;
        }
        for mut spawned in ready {
            polls += 1;
            assert!(polls < 10_000, "spawned tasks keep waking each other");
            let waker = Waker::from(Arc::clone(&spawned.woken));
            let done = spawned
                .task
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready();
            if !done {
                WORLD.with(|world| world.borrow_mut().tasks.push(spawned));
            }
        }
    }
}

/// Spawned tasks not yet finished, and spawned ever.
pub fn tasks() -> (usize, usize) {
    WORLD.with(|world| {
        let world = world.borrow();
        (world.tasks.len(), world.spawned)
    })
}

/// Drops every spawned task, as a runtime that shuts down does.
pub fn shut_down() {
    let tasks = WORLD.with(|world| std::mem::take(&mut world.borrow_mut().tasks));
    drop(tasks);
}

/// A future polled by hand, recording whether it was woken.
pub struct Polled<F> {
    pub future: Pin<Box<F>>,
    pub woken: Arc<Flag>,
}

impl<F: Future> Polled<F> {
    pub fn new(future: F) -> Self {
        Self {
            future: Box::pin(future),
            woken: Arc::default(),
        }
    }

    pub fn poll(&mut self) -> Poll<F::Output> {
        let waker = Waker::from(Arc::clone(&self.woken));
        self.future.as_mut().poll(&mut Context::from_waker(&waker))
    }

    /// Whether it was woken since this was last asked.
    pub fn is_woken(&self) -> bool {
        self.woken.take()
    }
}
