//! The ICE servers a client is handed, with short-lived TURN credentials. A TURN relay costs
//! its operator bandwidth, so it should serve only this server's users, without a long-lived
//! password that would leak with the page. coturn's REST API scheme (`use-auth-secret`) does
//! that with a secret shared between coturn and this server: the username is
//! `<expiry>:<user>` and the password its HMAC-SHA1 under the secret, so coturn checks a
//! credential without asking anyone, and refuses it once the expiry (unix seconds) has passed.
//! Credentials are minted per user and limited per user, since each one can allocate a relay.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha1::Sha1;

use crate::config::Config;
use crate::limits::{KeyedWindows, WindowLimit};
use crate::protocol::outbound::{IceConfig, IceServer};
use crate::server::StartError;

/// The configured ICE servers, and the TURN server credentials are minted for, if any.
pub struct IceServers {
    configured: Vec<Value>,
    turn: Option<TurnMint>,
}

struct TurnMint {
    /// Keyed with the shared secret once; each credential is computed on a clone.
    mac: Hmac<Sha1>,
    urls: Vec<String>,
    ttl: Duration,
    issued: KeyedWindows,
}

/// How long a user must wait for another credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited(pub Duration);

/// A credential issue counts against this window per user.
const ISSUE_WINDOW: Duration = Duration::from_secs(60);

impl IceServers {
    pub fn from_config(config: &Config) -> Result<IceServers, StartError> {
        let configured = match serde_json::from_str(&config.ice_servers) {
            Ok(Value::Array(servers)) => servers,
            Ok(_) => return Err(StartError("ICE_SERVERS must be a JSON array".into())),
            Err(e) => return Err(StartError(format!("ICE_SERVERS is not valid JSON: {e}"))),
        };
        let urls = config.turn_urls.as_deref().map(|urls| {
            urls.split(',')
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        });
        let turn = match (&config.turn_secret, urls) {
            (None, None) => None,
            (Some(secret), Some(urls)) => {
                if secret.expose().is_empty() {
                    return Err(StartError("TURN_SECRET must not be empty".into()));
                }
                if urls.is_empty() {
                    return Err(StartError("TURN_URLS names no URL".into()));
                }
                if let Some(url) = urls
                    .iter()
                    .find(|url| !url.starts_with("turn:") && !url.starts_with("turns:"))
                {
                    return Err(StartError(format!(
                        "TURN_URLS: {url:?} is not a turn: or turns: URL"
                    )));
                }
                let mac = Hmac::<Sha1>::new_from_slice(secret.expose().as_bytes())
                    .map_err(|_| StartError("TURN_SECRET cannot key HMAC-SHA1".into()))?;
                Some(TurnMint {
                    mac,
                    urls,
                    ttl: Duration::from_secs(config.turn_ttl_secs),
                    issued: KeyedWindows::new(WindowLimit {
                        limit: config.turn_credentials_per_minute,
                        window: ISSUE_WINDOW,
                    }),
                })
            }
            (Some(_), None) => {
                return Err(StartError("TURN_SECRET is set without TURN_URLS".into()));
            }
            (None, Some(_)) => {
                return Err(StartError("TURN_URLS is set without TURN_SECRET".into()));
            }
        };
        Ok(IceServers { configured, turn })
    }

    /// Whether the list carries TURN credentials, and so is only for authenticated users.
    pub fn mints_credentials(&self) -> bool {
        self.turn.is_some()
    }

    /// The configured servers alone: all anyone gets without TURN.
    pub fn configured(&self) -> IceConfig<'_> {
        IceConfig {
            ice_servers: self.configured.iter().map(IceServer::Configured).collect(),
            ttl: None,
        }
    }

    /// The list for `user`: the configured servers and, with TURN, a fresh credential for
    /// `user`, counted against the user's allowance.
    pub fn for_user(&self, user: &Arc<str>) -> Result<IceConfig<'_>, RateLimited> {
        let mut config = self.configured();
        let Some(turn) = &self.turn else {
            return Ok(config);
        };
        turn.issued
            .take(user, Instant::now())
            .map_err(RateLimited)?;
        let expiry = unix_seconds(SystemTime::now()) + turn.ttl.as_secs();
        let username = format!("{expiry}:{user}");
        tracing::debug!(user = %user, expiry, "TURN credential issued");
        config.ice_servers.push(IceServer::Turn {
            urls: &turn.urls,
            credential: turn.credential(&username),
            username,
        });
        config.ttl = Some(turn.ttl.as_secs());
        Ok(config)
    }
}

impl TurnMint {
    /// base64(HMAC-SHA1(secret, username)), what coturn computes for `use-auth-secret`.
    fn credential(&self, username: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(username.as_bytes());
        BASE64.encode(mac.finalize().into_bytes())
    }
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn ice(args: &[&str]) -> Result<IceServers, StartError> {
        let config = Config::try_parse_from([&["rtcio-signal", "--dev"], args].concat())
            .expect("settings parse");
        IceServers::from_config(&config)
    }

    #[test]
    fn a_credential_is_the_base64_hmac_sha1_of_its_username() {
        // HMAC-SHA1 with key "key" over the pangram: the well-known example value.
        let turn = ice(&["--turn-secret", "key", "--turn-urls", "turn:t.example:3478"])
            .expect("turn settings");
        let mint = turn.turn.as_ref().expect("turn configured");
        assert_eq!(
            mint.credential("The quick brown fox jumps over the lazy dog"),
            BASE64.encode([
                0xde, 0x7c, 0x9b, 0x85, 0xb8, 0xb7, 0x8a, 0xa6, 0xbc, 0x8a, 0x7a, 0x36, 0xf7, 0x0a,
                0x90, 0x70, 0x1c, 0x9d, 0xb4, 0xd9
            ])
        );
    }

    #[test]
    fn a_credential_names_its_expiry_and_user() {
        let turn = ice(&[
            "--turn-secret",
            "s3cret",
            "--turn-urls",
            "turn:a.example:3478, turns:a.example:5349",
            "--turn-ttl-secs",
            "120",
            "--ice-servers",
            r#"[{"urls":"stun:stun.example:3478"}]"#,
        ])
        .expect("turn settings");
        let before = unix_seconds(SystemTime::now());
        let config = serde_json::to_value(turn.for_user(&"alice".into()).expect("allowed"))
            .expect("serializes");
        let servers = config["iceServers"].as_array().expect("list");
        assert_eq!(
            servers[0],
            serde_json::json!({"urls": "stun:stun.example:3478"})
        );
        assert_eq!(
            servers[1]["urls"],
            serde_json::json!(["turn:a.example:3478", "turns:a.example:5349"])
        );
        let username = servers[1]["username"].as_str().expect("username");
        let (expiry, user) = username.split_once(':').expect("expiry:user");
        let expiry: u64 = expiry.parse().expect("unix seconds");
        assert!((before + 120..=before + 121).contains(&expiry), "{expiry}");
        assert_eq!(user, "alice");
        assert_eq!(config["ttl"], 120);
    }

    #[test]
    fn each_user_gets_their_allowance() {
        let turn = ice(&[
            "--turn-secret",
            "s3cret",
            "--turn-urls",
            "turn:a.example",
            "--turn-credentials-per-minute",
            "2",
        ])
        .expect("turn settings");
        let (alice, bob): (Arc<str>, Arc<str>) = ("alice".into(), "bob".into());
        assert!(turn.for_user(&alice).is_ok());
        assert!(turn.for_user(&alice).is_ok());
        let Err(RateLimited(wait)) = turn.for_user(&alice) else {
            panic!("a third credential within the minute");
        };
        assert!(wait <= ISSUE_WINDOW && wait > Duration::from_secs(59));
        assert!(turn.for_user(&bob).is_ok());
    }

    #[test]
    fn incomplete_or_wrong_turn_settings_stop_the_start() {
        let refusal = |args: &[&str]| ice(args).err().map(|e| e.0).unwrap_or_default();
        assert!(refusal(&["--turn-secret", "s"]).contains("without TURN_URLS"));
        assert!(refusal(&["--turn-urls", "turn:a"]).contains("without TURN_SECRET"));
        assert!(refusal(&["--turn-secret", "s", "--turn-urls", "stun:a"]).contains("stun:a"));
        assert!(refusal(&["--turn-secret", "", "--turn-urls", "turn:a"]).contains("empty"));
        assert!(refusal(&["--ice-servers", "{}"]).contains("JSON array"));
        // Without TURN nothing is minted and nothing is counted.
        let plain = ice(&[]).expect("no turn");
        assert!(!plain.mints_credentials());
        for _ in 0..100 {
            assert!(plain.for_user(&"alice".into()).is_ok());
        }
    }

    #[test]
    fn secrets_stay_out_of_the_settings_debug() {
        let config = Config::try_parse_from([
            "rtcio-signal",
            "--jwt-secret",
            "do-not-print-me-either",
            "--turn-secret",
            "do-not-print-me",
            "--turn-urls",
            "turn:a",
        ])
        .expect("settings parse");
        let shown = format!("{config:?}");
        assert!(!shown.contains("do-not-print-me"), "{shown}");
    }
}
