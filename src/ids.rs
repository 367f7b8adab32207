//! Names for the things the protocol talks about. A socket id is not a peer id: a peer id
//! names a session, which outlives the sockets that serve it (session recovery), so peers
//! keep knowing each other by it across a reconnect. A resume credential proves a
//! reconnecting client owns a session.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use socketioxide::socket::Sid;

/// The id every other client knows a peer by. A fresh session takes its first socket's id,
/// so clients that compare `socket.id` with roster ids see what the Node server shows them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PeerId(Arc<str>);

/// Longest id accepted from the network (a relay target, a resume credential); socket ids
/// are 16 characters.
const MAX_PEER_ID_CHARS: usize = 64;

impl PeerId {
    pub fn of_socket(sid: Sid) -> PeerId {
        PeerId(sid.to_string().into())
    }

    /// An id as clients and Redis spell it: 1 to 64 letters, digits, `-` or `_`.
    pub fn parse(text: &str) -> Option<PeerId> {
        let valid = (1..=MAX_PEER_ID_CHARS).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        valid.then(|| PeerId(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for PeerId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerId({})", self.0)
    }
}

/// A node of a cluster: its inbox channel and its entries in Redis are named after it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NodeId(Arc<str>);

/// Random bytes in a node id: enough that nodes started at once never share one.
const NODE_ID_BYTES: usize = 8;

impl NodeId {
    pub fn random() -> NodeId {
        NodeId(crate::auth::random_hex(NODE_ID_BYTES).into())
    }

    /// A node id as Redis spells it (this server's own ids are lowercase hex).
    pub fn parse(text: &str) -> Option<NodeId> {
        let valid = (1..=NODE_ID_BYTES * 2).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| NodeId(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

/// Random bytes in a resume secret: 256 bits.
const SECRET_BYTES: usize = 32;

/// A resume credential as handed to the client once: `<peer id>.<node id>.<secret>`, the node
/// being the one that holds the session, so any node of a cluster knows whom to ask for it.
/// The server keeps only [`CredentialDigest`].
pub struct Credential(String);

/// The SHA-256 of a credential's secret part. The secret is 256 random bits, so a fast hash
/// is enough: there is nothing to guess from it.
#[derive(Clone, Copy)]
pub struct CredentialDigest([u8; 32]);

impl Credential {
    /// A fresh credential for `peer`, whose session `node` holds, and the digest to keep.
    pub fn issue(peer: &PeerId, node: &NodeId) -> (Credential, CredentialDigest) {
        let secret = crate::auth::random_hex(SECRET_BYTES);
        let digest = CredentialDigest::of(&secret);
        (Credential(format!("{peer}.{node}.{secret}")), digest)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(***)")
    }
}

impl CredentialDigest {
    fn of(secret: &str) -> CredentialDigest {
        CredentialDigest(Sha256::digest(secret.as_bytes()).into())
    }

    /// The digest of a secret never handed out: it spoils a session's credential, so that no
    /// resume slips in before the session's end runs.
    pub fn unmatched() -> CredentialDigest {
        CredentialDigest::of(&crate::auth::random_hex(SECRET_BYTES))
    }

    /// Compares in constant time.
    pub fn matches(&self, other: &CredentialDigest) -> bool {
        same_digest(&self.0, &other.0)
    }
}

/// Whether two SHA-256 digests are equal, in time that does not depend on where they differ,
/// so a comparison tells an attacker nothing about the secret behind one.
pub fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// A credential a client presented: whose session it names, which node held it, and the digest
/// of its secret.
pub struct Presented {
    pub peer: PeerId,
    pub node: NodeId,
    pub digest: CredentialDigest,
}

impl Presented {
    pub fn parse(text: &str) -> Option<Presented> {
        let mut parts = text.split('.');
        let (peer, node, secret) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || secret.len() != SECRET_BYTES * 2
            || !secret.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        Some(Presented {
            peer: PeerId::parse(peer)?,
            node: NodeId::parse(node)?,
            digest: CredentialDigest::of(secret),
        })
    }
}

impl CredentialDigest {
    /// For handing a session to another node: the digest, never the secret, crosses Redis.
    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(text: &str) -> Option<CredentialDigest> {
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(CredentialDigest(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_are_bounded_and_plain() {
        assert!(PeerId::parse("Abc-_09").is_some());
        assert!(PeerId::parse("").is_none());
        assert!(PeerId::parse(&"a".repeat(65)).is_none());
        assert!(PeerId::parse("a.b").is_none());
        assert!(PeerId::parse("é").is_none());
        let sid = Sid::new();
        assert_eq!(PeerId::of_socket(sid).as_str(), sid.to_string());
    }

    #[test]
    fn ids_print_as_themselves_and_a_credential_prints_no_secret() {
        let peer = PeerId::parse("peer-1").expect("valid");
        assert_eq!(&*peer, "peer-1");
        assert_eq!(format!("{peer} {peer:?}"), "peer-1 PeerId(peer-1)");
        let node = NodeId::parse("0a1b").expect("valid");
        assert_eq!(format!("{node} {node:?}"), "0a1b NodeId(0a1b)");
        let (credential, _) = Credential::issue(&peer, &node);
        assert_eq!(format!("{credential:?}"), "Credential(***)");
    }

    #[test]
    fn digests_that_differ_anywhere_do_not_match() {
        let zeros = CredentialDigest::from_hex(&"0".repeat(64)).expect("hex");
        // Two bytes off by the same bit: their differences cancel out under XOR, not OR.
        let two_off = CredentialDigest::from_hex(&format!("0101{}", "0".repeat(60))).expect("hex");
        assert!(zeros.matches(&zeros));
        assert!(!zeros.matches(&two_off));
        assert!(!two_off.matches(&zeros));
    }

    #[test]
    fn node_ids_are_short_hex() {
        let node = NodeId::random();
        assert_eq!(NodeId::parse(node.as_str()), Some(node));
        for bad in ["", "xyz", "0123456789abcdef0", "ab|cd"] {
            assert!(NodeId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_credential_matches_only_its_own_digest() {
        let peer = PeerId::parse("peer1").expect("valid");
        let node = NodeId::random();
        let (credential, digest) = Credential::issue(&peer, &node);
        let presented = Presented::parse(credential.as_str()).expect("parses");
        assert_eq!((&presented.peer, &presented.node), (&peer, &node));
        assert!(presented.digest.matches(&digest));
        let hex = digest.to_hex();
        assert!(
            CredentialDigest::from_hex(&hex)
                .expect("hex")
                .matches(&digest)
        );
        assert!(CredentialDigest::from_hex(&hex[1..]).is_none());
        let (other, _) = Credential::issue(&peer, &node);
        let other = Presented::parse(other.as_str()).expect("parses");
        assert!(!other.digest.matches(&digest));
        assert!(!format!("{credential:?}").contains(&credential.as_str()[6..]));
        let secret = "0".repeat(64);
        assert!(Presented::parse(&format!("p.ab.{secret}")).is_some());
        for bad in [
            "",
            "peer1",
            "peer1.",
            "peer1.xyz",
            ".00",
            "a.b.c",
            &format!("p.{secret}"),
            &format!("p.zz.{secret}"),
            &format!("p.ab.{secret}.x"),
        ] {
            assert!(Presented::parse(bad).is_none(), "{bad}");
        }
    }
}
