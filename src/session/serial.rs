//! The queue that runs one session's events one after another.
//!
//! socketioxide spawns a task per incoming event, so two events from one client could be
//! handled out of order (a relayed ICE candidate overtaking its offer, a `media-state`
//! overtaking the `join-room` before it). Node handles a socket's events in arrival order and
//! rtc.io clients rely on that, so every event of a session goes through its [`Serial`] queue.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

use super::lock;

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Most events one socket may have waiting; beyond it the client is told to slow down.
pub const MAX_QUEUED_EVENTS: usize = 1024;

/// Runs jobs one at a time in submission order.
///
/// A job is first polled right where it is submitted (in the socket's receive path): most
/// finish there, with no task spawned. One that has to wait (a contended room turn, a Redis
/// round trip) moves into a drain task, which also runs whatever queued up behind it; the
/// task ends when the queue is empty, so an idle socket costs no task.
#[derive(Default)]
pub struct Serial {
    state: Mutex<SerialState>,
}

#[derive(Default)]
struct SerialState {
    /// A job is running (inline or in the drain task); new ones must queue.
    busy: bool,
    queue: VecDeque<Job>,
}

impl Serial {
    pub fn run(self: &Arc<Self>, job: impl Future<Output = ()> + Send + 'static) -> bool {
        self.submit(job, true)
    }

    /// Like [`Serial::run`], but never refused: for the server's own jobs (a session's end),
    /// which must run however far behind the client's events are.
    pub fn run_always(self: &Arc<Self>, job: impl Future<Output = ()> + Send + 'static) {
        self.submit(job, false);
    }

    fn submit(
        self: &Arc<Self>,
        job: impl Future<Output = ()> + Send + 'static,
        bounded: bool,
    ) -> bool {
        {
            let mut state = lock(&self.state);
            if state.busy {
                if bounded && state.queue.len() >= MAX_QUEUED_EVENTS {
                    return false;
                }
                state.queue.push_back(Box::pin(job));
                return true;
            }
            state.busy = true;
        }
        let mut job: Job = Box::pin(job);
        let mut cx = Context::from_waker(Waker::noop());
        if job.as_mut().poll(&mut cx).is_ready() {
            // Something may have queued meanwhile (a disconnect arrives from another task).
            if let Some(next) = self.next_or_idle() {
                self.drain(next);
            }
        } else {
            // Polling again from a fresh task registers a real waker: the task's first poll
            // is unconditional, so a wake-up aimed at the no-op waker is not lost.
            self.drain(job);
        }
        true
    }

    /// Runs `first`, then the queue, in a task of their own.
    fn drain(self: &Arc<Self>, first: Job) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut job = first;
            loop {
                job.await;
                match this.next_or_idle() {
                    Some(next) => job = next,
                    None => return,
                }
            }
        });
    }

    fn next_or_idle(&self) -> Option<Job> {
        let mut state = lock(&self.state);
        let next = state.queue.pop_front();
        state.busy = next.is_some();
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_run_in_submission_order() {
        let serial = Arc::new(Serial::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let mut done_tx = Some(done_tx);
        for i in 0..500u32 {
            let seen = seen.clone();
            let done = if i == 499 { done_tx.take() } else { None };
            assert!(serial.run(async move {
                if i % 7 == 0 {
                    tokio::task::yield_now().await;
                }
                lock(&seen).push(i);
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }));
        }
        done_rx.await.expect("last job ran");
        assert_eq!(*lock(&seen), (0..500).collect::<Vec<_>>());
    }
}
