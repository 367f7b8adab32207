//! Who may connect: verifies the JWT a client puts in its Socket.IO CONNECT auth payload (or,
//! for `GET /client-config` with TURN, its `Authorization: Bearer` header) and turns its
//! claims into an [`Identity`]. One algorithm is accepted per server (HS256 with a
//! shared secret, or RS256/ES256 with a PEM public key), which is what keeps `alg: none` and
//! HS/RS key confusion out.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::protocol::MAX_NAME_CHARS;

/// The connect-error messages of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    MissingToken,
    InvalidToken,
    TokenExpired,
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthError::MissingToken => "missing token",
            AuthError::InvalidToken => "invalid token",
            AuthError::TokenExpired => "token expired",
        })
    }
}

impl std::error::Error for AuthError {}

/// What a verified token says about the user behind a socket.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user_id: Arc<str>,
    /// Display name from the token; when present it wins over the one the client sends.
    pub name: Option<Arc<str>>,
    /// Rooms this token may join; `None` means any room.
    pub rooms: Option<Arc<[String]>>,
}

impl Identity {
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|rooms| rooms.iter().any(|r| r == room))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rooms: Option<Vec<String>>,
}

/// Why the server cannot start with the key settings it was given.
#[derive(Debug)]
pub struct KeyError(pub String);

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    /// Present only in dev mode, where the server mints tokens for the demo page.
    dev_signer: Option<EncodingKey>,
}

/// How long a dev-mode token lives.
pub const DEV_TOKEN_SECONDS: u64 = 3600;

impl Verifier {
    pub fn from_config(config: &Config) -> Result<Verifier, KeyError> {
        if config.dev {
            let secret = random_hex(32);
            let mut verifier = Verifier::hs256(secret.as_bytes(), config);
            verifier.dev_signer = Some(EncodingKey::from_secret(secret.as_bytes()));
            return Ok(verifier);
        }
        match (&config.jwt_secret, &config.jwt_public_key_file) {
            (Some(_), Some(_)) => Err(KeyError(
                "set either JWT_SECRET or JWT_PUBLIC_KEY_FILE, not both".into(),
            )),
            (Some(secret), None) if secret.expose().len() < 16 => {
                Err(KeyError("JWT_SECRET must be at least 16 bytes long".into()))
            }
            (Some(secret), None) => Ok(Verifier::hs256(secret.expose().as_bytes(), config)),
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    KeyError(format!(
                        "cannot read JWT_PUBLIC_KEY_FILE {}: {e}",
                        path.display()
                    ))
                })?;
                let (key, alg) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    (key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    (key, Algorithm::ES256)
                } else {
                    return Err(KeyError(format!(
                        "{} is not a PEM RSA or EC public key",
                        path.display()
                    )));
                };
                Ok(Verifier::new(key, alg, config))
            }
            (None, None) => Err(KeyError(
                "no token key configured: set JWT_SECRET (HS256) or JWT_PUBLIC_KEY_FILE \
                 (RS256/ES256 PEM public key), or start with --dev to try the server locally"
                    .into(),
            )),
        }
    }

    fn hs256(secret: &[u8], config: &Config) -> Verifier {
        Verifier::new(DecodingKey::from_secret(secret), Algorithm::HS256, config)
    }

    fn new(key: DecodingKey, alg: Algorithm, config: &Config) -> Verifier {
        let mut validation = Validation::new(alg);
        let mut required = vec!["exp", "sub"];
        required.extend(config.jwt_issuer.as_ref().map(|_| "iss"));
        required.extend(config.jwt_audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        validation.leeway = 5;
        match &config.jwt_issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &config.jwt_audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Verifier {
            key,
            validation,
            dev_signer: None,
        }
    }

    pub fn is_dev(&self) -> bool {
        self.dev_signer.is_some()
    }

    /// Verifies the `token` field of a CONNECT auth payload.
    pub fn verify(&self, auth: Option<&serde_json::Value>) -> Result<Identity, AuthError> {
        self.verify_token(auth.and_then(|a| a.get("token")).and_then(|t| t.as_str()))
    }

    /// Verifies a token however it came (CONNECT auth payload, HTTP bearer); none or an empty
    /// one is a missing token.
    pub fn verify_token(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::MissingToken)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::TokenExpired,
                _ => AuthError::InvalidToken,
            },
        )?;
        let claims = data.claims;
        if claims.sub.is_empty()
            || claims
                .name
                .as_ref()
                .is_some_and(|n| n.chars().count() > MAX_NAME_CHARS)
        {
            return Err(AuthError::InvalidToken);
        }
        Ok(Identity {
            user_id: claims.sub.into(),
            name: claims.name.map(Into::into),
            rooms: claims.rooms.map(Into::into),
        })
    }

    /// Mints a short-lived token (dev mode only).
    pub fn dev_token(&self, name: Option<&str>) -> Option<String> {
        let signer = self.dev_signer.as_ref()?;
        let claims = Claims {
            sub: format!("dev-{}", random_hex(8)),
            exp: unix_now() + DEV_TOKEN_SECONDS,
            name: name
                .filter(|n| !n.is_empty())
                .map(|n| n.chars().take(MAX_NAME_CHARS).collect()),
            rooms: None,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, signer).ok()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    use rand::RngExt;
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}
