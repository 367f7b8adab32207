//! The JWT door: every refusal of the contract, each key type, and the claims that shape a
//! session (`name`, `rooms`, `sub`). Keys under `tests/keys/` exist only for these tests.

mod support;

use base64ct::{Base64UrlUnpadded, Encoding};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use sioclient::ConnectError;
use support::{Server, repo_path, unix_now};

fn key_file(name: &str) -> String {
    repo_path(&format!("tests/keys/{name}"))
        .to_string_lossy()
        .into_owned()
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(key_file(name)).expect("test key")
}

async fn refusal(server: &Server, auth: Option<Value>) -> String {
    match server.connect_with(auth).await {
        Err(ConnectError::Refused(message)) => message,
        Err(other) => panic!("expected a connect error, got {other}"),
        Ok(client) => panic!("connected as {} but should have been refused", client.sid),
    }
}

/// A token's claims, read without checking its signature.
fn claims_of(token: &str) -> Value {
    let body = token.split('.').nth(1).expect("a JWT has three parts");
    let json = Base64UrlUnpadded::decode_vec(body).expect("base64url claims");
    serde_json::from_slice(&json).expect("JSON claims")
}

fn unsigned(claims: &Value) -> String {
    let header = Base64UrlUnpadded::encode_string(br#"{"alg":"none","typ":"JWT"}"#);
    let body = Base64UrlUnpadded::encode_string(claims.to_string().as_bytes());
    format!("{header}.{body}.")
}

#[tokio::test]
async fn hs256_refusals_match_the_contract() {
    let server = Server::start().await;
    let now = unix_now();
    assert_eq!(refusal(&server, None).await, "missing token");
    assert_eq!(refusal(&server, Some(json!({}))).await, "missing token");
    assert_eq!(
        refusal(&server, Some(json!({ "token": 42 }))).await,
        "missing token"
    );
    assert_eq!(
        refusal(&server, Some(json!({ "token": "" }))).await,
        "missing token"
    );
    assert_eq!(
        refusal(&server, Some(json!({ "token": "not.a.jwt" }))).await,
        "invalid token"
    );

    let wrong_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": "u", "exp": now + 60 }),
        &EncodingKey::from_secret(b"some-other-secret-entirely"),
    )
    .expect("sign");
    assert_eq!(
        refusal(&server, Some(json!({ "token": wrong_key }))).await,
        "invalid token"
    );

    let none = unsigned(&json!({ "sub": "u", "exp": now + 60 }));
    assert_eq!(
        refusal(&server, Some(json!({ "token": none }))).await,
        "invalid token"
    );

    let expired = server.sign(&json!({ "sub": "u", "exp": now - 120 }));
    assert_eq!(
        refusal(&server, Some(json!({ "token": expired }))).await,
        "token expired"
    );

    let no_sub = server.sign(&json!({ "exp": now + 60 }));
    assert_eq!(
        refusal(&server, Some(json!({ "token": no_sub }))).await,
        "invalid token"
    );
    let no_exp = server.sign(&json!({ "sub": "u" }));
    assert_eq!(
        refusal(&server, Some(json!({ "token": no_exp }))).await,
        "invalid token"
    );
    // An empty `sub`, and a `name` over 64 characters (each check on its own).
    for claims in [
        json!({ "sub": "", "exp": now + 60 }),
        json!({ "sub": "u", "exp": now + 60, "name": "é".repeat(65) }),
    ] {
        let token = server.sign(&claims);
        assert_eq!(
            refusal(&server, Some(json!({ "token": token }))).await,
            "invalid token",
            "{claims}"
        );
    }
    let longest_name = server.sign(&json!({ "sub": "u", "exp": now + 60, "name": "é".repeat(64) }));
    server
        .connect_with(Some(json!({ "token": longest_name })))
        .await
        .expect("a name of exactly 64 characters (128 bytes) is accepted");

    // The refused attempts left the server serving everyone else.
    let (mut alice, bob) = support::pair(&server, &server, "r").await;
    alice.assert_nothing_before_probe(&bob).await;
}

#[tokio::test]
async fn claims_name_rooms_and_sub_shape_the_session() {
    let server = Server::start().await;
    let exp = unix_now() + 600;
    let token = server
        .sign(&json!({ "sub": "user-7", "exp": exp, "name": "Dr. Seven", "rooms": ["allowed"] }));
    let mut seven = server.client_with_token(&token).await;
    seven.join("elsewhere", "x");
    let err = seven.expect("join-error").await;
    assert_eq!(
        (err["roomId"].clone(), err["reason"].clone()),
        (json!("elsewhere"), json!("forbidden"))
    );
    seven.join("allowed", "I typed this");
    seven.expect("join-ok").await;

    let mut other = server.client("other").await;
    other.join("allowed", "other");
    let seen = other.expect("user-connected").await;
    assert_eq!(
        seen,
        json!({ "id": seven.id(), "name": "Dr. Seven", "userId": "user-7" }),
        "the token's name wins and sub is carried as userId"
    );
}

#[tokio::test]
async fn rs256_public_key_verifies_and_refuses_key_confusion() {
    let server = Server::start_with(&[], &[("JWT_PUBLIC_KEY_FILE", &key_file("rsa-public.pem"))])
        .await
        .signing_with(
            EncodingKey::from_rsa_pem(&pem("rsa-private.pem")).expect("rsa key"),
            Algorithm::RS256,
        );
    let (_alice, _bob) = support::pair(&server, &server, "r").await;

    // HS256 signed with the public key's PEM bytes as the secret: the classic confusion.
    let claims = json!({ "sub": "eve", "exp": unix_now() + 60 });
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&pem("rsa-public.pem")),
    )
    .expect("sign");
    assert_eq!(
        refusal(&server, Some(json!({ "token": confused }))).await,
        "invalid token"
    );
    let none = unsigned(&claims);
    assert_eq!(
        refusal(&server, Some(json!({ "token": none }))).await,
        "invalid token"
    );
    let es = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(&pem("ec-private.pem")).expect("ec key"),
    )
    .expect("sign");
    assert_eq!(
        refusal(&server, Some(json!({ "token": es }))).await,
        "invalid token"
    );
}

#[tokio::test]
async fn es256_public_key_with_issuer_and_audience() {
    let server = Server::start_with(
        &[
            "--jwt-issuer",
            "https://auth.example",
            "--jwt-audience",
            "video",
        ],
        &[("JWT_PUBLIC_KEY_FILE", &key_file("ec-public.pem"))],
    )
    .await
    .signing_with(
        EncodingKey::from_ec_pem(&pem("ec-private.pem")).expect("ec key"),
        Algorithm::ES256,
    );
    let exp = unix_now() + 60;
    let good = server
        .sign(&json!({ "sub": "u", "exp": exp, "iss": "https://auth.example", "aud": "video" }));
    server
        .connect_with(Some(json!({ "token": good })))
        .await
        .expect("issuer and audience match");
    for claims in [
        json!({ "sub": "u", "exp": exp, "iss": "https://evil.example", "aud": "video" }),
        json!({ "sub": "u", "exp": exp, "iss": "https://auth.example", "aud": "other" }),
        json!({ "sub": "u", "exp": exp }),
    ] {
        let token = server.sign(&claims);
        assert_eq!(
            refusal(&server, Some(json!({ "token": token }))).await,
            "invalid token",
            "{claims}"
        );
    }
}

#[tokio::test]
async fn dev_tokens_exist_only_in_dev_mode() {
    // Each says at start whether it is in dev mode (before it listens, so the log has it by
    // the time it is up).
    let log =
        |name: &str| std::env::temp_dir().join(format!("rtcio-{name}-{}.log", std::process::id()));
    let (normal_log, dev_log) = (log("normal"), log("dev"));
    let create = |path: &std::path::PathBuf| std::fs::File::create(path).expect("log file").into();
    let normal =
        Server::start_logging_to(&[], &[("JWT_SECRET", support::SECRET)], create(&normal_log))
            .await;
    let (status, _) = support::http_get(normal.addr, "/dev/token?name=x").await;
    assert_eq!(status, 404);

    let dev = Server::start_logging_to(&["--dev"], &[], create(&dev_log)).await;
    let said = |path| std::fs::read_to_string(path).expect("log");
    assert!(
        !said(&normal_log).contains("DEV MODE"),
        "{}",
        said(&normal_log)
    );
    assert!(said(&dev_log).contains("DEV MODE"), "{}", said(&dev_log));
    let minted = support::http_get_json(dev.addr, "/dev/token?name=Ann").await;
    let token = minted["token"].as_str().expect("token");
    let claims = claims_of(token);
    assert_eq!(claims["name"], "Ann");
    // Short-lived: DEV_TOKEN_SECONDS (an hour) from now.
    let exp = claims["exp"].as_u64().expect("exp");
    let lifetime = rtcio_signal::auth::DEV_TOKEN_SECONDS;
    let now = unix_now();
    assert!(
        (now + lifetime - 10..=now + lifetime + 10).contains(&exp),
        "exp {exp}, now {now}"
    );
    let nameless = support::http_get_json(dev.addr, "/dev/token?name=").await;
    let nameless = claims_of(nameless["token"].as_str().expect("token"));
    assert!(nameless.get("name").is_none(), "{nameless}");
    let mut ann = dev.client_with_token(token).await;
    ann.join("r", "ignored");
    ann.expect("join-ok").await;
    // Tokens from another server's random secret are worthless here.
    let other_dev = Server::start_with(&["--dev"], &[]).await;
    let foreign = support::http_get_json(other_dev.addr, "/dev/token?name=x").await;
    assert_eq!(
        refusal(&dev, Some(json!({ "token": foreign["token"] }))).await,
        "invalid token"
    );
}

#[tokio::test]
async fn refuses_to_start_without_a_key() {
    let stderr = support::refused_start(&[]).await;
    assert!(
        stderr.contains("JWT_SECRET")
            && stderr.contains("JWT_PUBLIC_KEY_FILE")
            && stderr.contains("--dev"),
        "{stderr}"
    );
    let stderr = support::refused_start(&[("JWT_SECRET", "fifteen bytes!!")]).await;
    assert!(stderr.contains("at least 16 bytes"), "{stderr}");
    // Exactly 16 is enough: the server starts (it would exit before listening otherwise).
    Server::start_with(&[], &[("JWT_SECRET", "sixteen bytes!!!")]).await;
}
