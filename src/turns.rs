//! Per-room turns: the ordering of membership changes within one room.
//!
//! [`RoomTurns`] hands out one async turn per room. A join or leave holds its room's turn from
//! the snapshot until its last emit, so the events of two membership changes in the same room
//! reach every client in the order the changes happened (a newcomer never hears
//! `user-disconnected` for a peer before `user-connected` for it). Relays and echoes don't take
//! turns. A turn is taken before any store lock and the store's locks are never held across an
//! await, so the two never nest the other way round. A room's turn is dropped once nobody holds
//! or awaits it.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{Mutex, OwnedMutexGuard};

#[derive(Default)]
pub struct RoomTurns {
    turns: DashMap<String, Arc<Mutex<()>>>,
}

/// Holding this means it is your turn in the room.
pub struct Turn<'a> {
    turns: &'a RoomTurns,
    room: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl RoomTurns {
    pub async fn take(&self, room: &str) -> Turn<'_> {
        let lock = self.turns.entry(room.to_string()).or_default().clone();
        Turn {
            turns: self,
            room: room.to_string(),
            guard: Some(lock.lock_owned().await),
        }
    }

    /// Turns currently held or awaited.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.turns.len()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        // The map and this guard hold the only references when nobody else is waiting; new
        // waiters must clone from the map under the same shard lock, so this cannot race.
        self.turns
            .turns
            .remove_if(&self.room, |_, lock| Arc::strong_count(lock) == 2);
        self.guard.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_vanish_when_released() {
        let turns = RoomTurns::default();
        {
            let _t = turns.take("r").await;
            assert_eq!(turns.len(), 1);
        }
        assert_eq!(turns.len(), 0);
    }
}
