//! The async-std shim on async-std's own executor, in real time.

mod realtime;

use std::future::Future;
use std::pin::Pin;

struct AsyncStd;

impl realtime::Executor for AsyncStd {
    fn spawn<F>(future: F) -> Pin<Box<dyn Future<Output = F::Output> + Send>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Box::pin(async_std::task::spawn(future))
    }
}

#[test]
fn the_module_is_the_smol_queue() {
    let _: fn(identify_queue::async_std::Queue) -> identify_queue::smol::Queue = |queue| queue;
}

#[async_std::test]
async fn grants_keep_order_and_spacing() {
    realtime::grants_keep_order_and_spacing().await;
}

#[async_std::test]
async fn concurrent_tasks_all_get_their_turn() {
    realtime::concurrent_tasks_all_get_their_turn::<AsyncStd>().await;
}

#[async_std::test]
async fn a_dropped_waiter_is_cancelled() {
    realtime::a_dropped_waiter_is_cancelled().await;
}

#[async_std::test]
async fn hold_mode_waits_for_the_permit() {
    realtime::hold_mode_waits_for_the_permit().await;
}

#[async_std::test]
async fn an_update_refills_the_budget() {
    realtime::an_update_refills_the_budget().await;
}
