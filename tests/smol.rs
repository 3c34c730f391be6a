//! The smol queue on smol's executor, in real time.

mod realtime;

use std::future::Future;
use std::pin::Pin;

struct Smol;

impl realtime::Executor for Smol {
    fn spawn<F>(future: F) -> Pin<Box<dyn Future<Output = F::Output> + Send>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Box::pin(smol::spawn(future))
    }
}

#[test]
fn grants_keep_order_and_spacing() {
    smol::block_on(realtime::grants_keep_order_and_spacing());
}

#[test]
fn concurrent_tasks_all_get_their_turn() {
    smol::block_on(realtime::concurrent_tasks_all_get_their_turn::<Smol>());
}

#[test]
fn a_dropped_waiter_is_cancelled() {
    smol::block_on(realtime::a_dropped_waiter_is_cancelled());
}

#[test]
fn hold_mode_waits_for_the_permit() {
    smol::block_on(realtime::hold_mode_waits_for_the_permit());
}

#[test]
fn an_update_refills_the_budget() {
    smol::block_on(realtime::an_update_refills_the_budget());
}
