//! The wire contract (`PROTOCOL.md`): event names, why an event is refused, and (in
//! [`inbound`] and [`outbound`]) the payloads clients send, how they are validated, and the
//! payloads the server sends. Nothing else in the crate spells an event name or builds a
//! payload by hand.

pub mod inbound;
pub mod outbound;

pub use inbound::{Frame, JoinRequest, MediaState, Password, RelayRequest, RoomCheck};

// Client -> server.
pub const JOIN_ROOM: &str = "join-room";
pub const CHECK_ROOM: &str = "check-room";
pub const LEAVE_ROOM: &str = "leave-room";
pub const MEDIA_STATE: &str = "media-state";
pub const STOP_SCREEN_SHARE: &str = "stopScreenShare";
pub const CHAT_MESSAGE: &str = "chat-message";
pub const RELAY: &str = "#rtcio:message";
/// Answered through the client's acknowledgement callback, not with an event.
pub const ASK_ICE: &str = "ask-ice";

// Server -> client (besides the echoes of `media-state`, `stopScreenShare`, `chat-message` and
// the relay).
pub const SESSION: &str = "session";
pub const ROOM_CHECK_OK: &str = "room-check-ok";
pub const USER_CONNECTED: &str = "user-connected";
pub const USER_DISCONNECTED: &str = "user-disconnected";
pub const INIT_OFFER: &str = "#rtcio:init-offer";
pub const PEER_LEFT: &str = "#rtcio:peer-left";
pub const JOIN_OK: &str = "join-ok";
pub const JOIN_ERROR: &str = "join-error";
pub const ERROR: &str = "error";
/// Sent to a client an operator removed (admin API) just before its connection is closed.
pub const KICKED: &str = "kicked";

/// Events the server sends to a peer after its `session` greeting, by name: one node may hand
/// any of them to another (in a letter, or among a moving session's kept events).
pub fn server_event(name: &str) -> Option<&'static str> {
    [
        RELAY,
        MEDIA_STATE,
        STOP_SCREEN_SHARE,
        CHAT_MESSAGE,
        USER_CONNECTED,
        USER_DISCONNECTED,
        INIT_OFFER,
        PEER_LEFT,
        ROOM_CHECK_OK,
        JOIN_OK,
        JOIN_ERROR,
        ERROR,
    ]
    .into_iter()
    .find(|event| *event == name)
}

pub const MAX_ROOM_ID_CHARS: usize = 128;
pub const MAX_NAME_CHARS: usize = 64;
pub const MAX_PASSWORD_CHARS: usize = 256;

/// Why a client's event was refused; becomes `join-error.reason` or `error.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    InvalidPayload,
    InvalidRoom,
    InvalidName,
    InvalidPassword,
    Forbidden,
    RoomFull,
    TooManyRooms,
    PasswordRequired,
    WrongPassword,
    /// Over a limit; the client may try again after this many milliseconds.
    RateLimited {
        retry_after_ms: u64,
    },
    NotInRoom,
    UnknownTarget,
    PayloadTooLarge,
    UnknownEvent,
    Busy,
    Unavailable,
    /// An event answered only through an acknowledgement was sent without a callback.
    AckRequired,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::InvalidPayload => "invalid-payload",
            Refusal::InvalidRoom => "invalid-room",
            Refusal::InvalidName => "invalid-name",
            Refusal::InvalidPassword => "invalid-password",
            Refusal::Forbidden => "forbidden",
            Refusal::RoomFull => "room-full",
            Refusal::TooManyRooms => "too-many-rooms",
            Refusal::PasswordRequired => "password-required",
            Refusal::WrongPassword => "wrong-password",
            Refusal::RateLimited { .. } => "rate-limited",
            Refusal::NotInRoom => "not-in-room",
            Refusal::UnknownTarget => "unknown-target",
            Refusal::PayloadTooLarge => "payload-too-large",
            Refusal::UnknownEvent => "unknown-event",
            Refusal::Busy => "busy",
            Refusal::Unavailable => "unavailable",
            Refusal::AckRequired => "ack-required",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::InvalidPayload => "payload has the wrong shape for this event",
            Refusal::InvalidRoom => {
                "roomId must be a string of 1 to 128 characters without control characters"
            }
            Refusal::InvalidName => "name must be a string of at most 64 characters",
            Refusal::InvalidPassword => "password must be a string of at most 256 characters",
            Refusal::Forbidden => "this token may not join that room",
            Refusal::RoomFull => "the room has reached its member limit",
            Refusal::TooManyRooms => {
                "this connection is in as many rooms as it may join; leave one first"
            }
            Refusal::PasswordRequired => "this room is locked: a password is required",
            Refusal::WrongPassword => "that is not this room's password",
            Refusal::RateLimited { .. } => "too many attempts; wait before trying again",
            Refusal::NotInRoom => "this socket has not joined that room",
            Refusal::UnknownTarget => "target is not a socket that shares a room with you",
            Refusal::PayloadTooLarge => "event is larger than the server accepts",
            Refusal::UnknownEvent => "the server does not handle this event",
            Refusal::Busy => "too many events are waiting; slow down",
            Refusal::Unavailable => "room state is unreachable right now; try again",
            Refusal::AckRequired => {
                "this event is answered through an acknowledgement: emit it with a callback"
            }
        }
    }

    /// `retryAfterMs` of the reply, for refusals that have one.
    pub fn retry_after_ms(self) -> Option<u64> {
        match self {
            Refusal::RateLimited { retry_after_ms } => Some(retry_after_ms),
            _ => None,
        }
    }
}

pub fn valid_room_id(room: &str) -> bool {
    let chars = room.chars().count();
    (1..=MAX_ROOM_ID_CHARS).contains(&chars) && !room.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::Refusal;
    use std::collections::HashSet;

    const EVERY_REFUSAL: [Refusal; 17] = [
        Refusal::InvalidPayload,
        Refusal::InvalidRoom,
        Refusal::InvalidName,
        Refusal::InvalidPassword,
        Refusal::Forbidden,
        Refusal::RoomFull,
        Refusal::TooManyRooms,
        Refusal::PasswordRequired,
        Refusal::WrongPassword,
        Refusal::RateLimited { retry_after_ms: 1 },
        Refusal::NotInRoom,
        Refusal::UnknownTarget,
        Refusal::PayloadTooLarge,
        Refusal::UnknownEvent,
        Refusal::Busy,
        Refusal::Unavailable,
        Refusal::AckRequired,
    ];

    /// A client tells refusals apart by code, and a developer by message.
    #[test]
    fn every_refusal_has_a_code_and_a_message_of_its_own() {
        let codes: HashSet<_> = EVERY_REFUSAL.iter().map(|r| r.code()).collect();
        let messages: HashSet<_> = EVERY_REFUSAL.iter().map(|r| r.message()).collect();
        assert_eq!(codes.len(), EVERY_REFUSAL.len());
        assert_eq!(messages.len(), EVERY_REFUSAL.len());
        assert!(messages.iter().all(|m| !m.is_empty()));
    }
}
