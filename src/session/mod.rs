//! Per-socket state: the verified identity, the rooms the socket has joined, its count of
//! wrong room passwords, and the queue that runs its events one after another.
//!
//! socketioxide spawns a task per incoming event, so two events from one client could be
//! handled out of order (a relayed ICE candidate overtaking its offer, a `media-state`
//! overtaking the `join-room` before it). Node handles a socket's events in arrival order and
//! rtc.io clients rely on that, so every event of a socket goes through its [`Serial`] queue.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};

use socketioxide::socket::Sid;

use crate::auth::Identity;
use crate::limits::{FixedWindow, WindowLimit};

pub struct Session {
    pub sid: Sid,
    /// The id as peers see it, rendered once.
    pub sid_str: Arc<str>,
    pub identity: Identity,
    rooms: Mutex<Vec<Arc<str>>>,
    wrong_passwords: Mutex<FixedWindow>,
    serial: Arc<Serial>,
    live: Arc<AtomicUsize>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Session {
    /// `live` counts sessions in existence: one more until this one is dropped.
    pub fn new(sid: Sid, identity: Identity, live: Arc<AtomicUsize>) -> Session {
        live.fetch_add(1, Ordering::Relaxed);
        Session {
            live,
            sid,
            sid_str: sid.to_string().into(),
            identity,
            rooms: Mutex::new(Vec::new()),
            wrong_passwords: Mutex::default(),
            serial: Arc::new(Serial::default()),
        }
    }

    /// Rooms this socket has joined, in joining order.
    pub fn rooms(&self) -> Vec<Arc<str>> {
        lock(&self.rooms).clone()
    }

    pub fn in_room(&self, room: &str) -> bool {
        self.any_room(|r| r == room)
    }

    /// Whether any joined room satisfies `test` (without copying the list).
    pub fn any_room(&self, mut test: impl FnMut(&str) -> bool) -> bool {
        lock(&self.rooms).iter().any(|r| test(r))
    }

    pub fn add_room(&self, room: &str) {
        let mut rooms = lock(&self.rooms);
        if !rooms.iter().any(|r| &**r == room) {
            rooms.push(room.into());
        }
    }

    pub fn remove_room(&self, room: &str) {
        lock(&self.rooms).retain(|r| &**r != room);
    }

    /// How long until this socket may try a password again, if it has had too many wrong.
    pub fn guesses_blocked_for(&self, limit: WindowLimit) -> Option<std::time::Duration> {
        lock(&self.wrong_passwords).blocked_for(std::time::Instant::now(), limit)
    }

    pub fn record_wrong_guess(&self, limit: WindowLimit) {
        lock(&self.wrong_passwords).record(std::time::Instant::now(), limit);
    }

    /// Queues `job` behind this socket's earlier events; false if the queue is full.
    pub fn run_in_order(&self, job: impl Future<Output = ()> + Send + 'static) -> bool {
        self.serial.run(job)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data that is still consistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

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
struct Serial {
    state: Mutex<SerialState>,
}

#[derive(Default)]
struct SerialState {
    /// A job is running (inline or in the drain task); new ones must queue.
    busy: bool,
    queue: VecDeque<Job>,
}

impl Serial {
    fn run(self: &Arc<Self>, job: impl Future<Output = ()> + Send + 'static) -> bool {
        {
            let mut state = lock(&self.state);
            if state.busy {
                if state.queue.len() >= MAX_QUEUED_EVENTS {
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
