//! The session cookie: an HMAC-SHA256 signature over the user id, the name and the issue time.
//!
//! Cookie value: `v1.<kid>.<payload>.<mac>` where `payload` is base64url of
//! `{"uid":..,"name":..,"iat":..,"gen":..}`, `kid` names the key (the first 8 hex digits of SHA-256 of
//! the key, so a rotated key is recognised as "another key", not as a forgery), and `mac` is
//! base64url of HMAC-SHA256 over `v1.<kid>.<payload>`.
//!
//! Logout revokes: `gen` is the user's session generation when the cookie was issued, and a
//! logout raises the user's generation ([`Revocations`]), so every older cookie of that user is
//! refused afterwards. Verification stays stateless but for one lookup in a small map (users who
//! ever logged out).

use std::collections::HashMap;
use std::sync::RwLock;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The cookie's name.
pub const COOKIE_NAME: &str = "nebula_session";

/// A user as every frame shows it. Cheap to clone: both strings are shared.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct User {
    pub id: Arc<str>,
    pub name: Arc<str>,
}

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: User,
    /// Seconds since the epoch when the session stops being valid.
    pub expires_at: u64,
    /// The user's session generation when it was issued.
    pub generation: u64,
}

/// Why a cookie or a name was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("malformed session")]
    Malformed,
    #[error("session signed with another key")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("session expired")]
    Expired,
    #[error("session logged out")]
    Revoked,
    #[error("name must be 1 to 32 characters without control characters")]
    InvalidName,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    uid: String,
    name: String,
    iat: u64,
    #[serde(default, rename = "gen")]
    generation: u64,
}

/// Signs and verifies session cookies.
#[derive(Clone)]
pub struct Keys {
    key: Arc<[u8]>,
    kid: Arc<str>,
    ttl: Duration,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Keys from a secret and a session lifetime.
    pub fn new(secret: &[u8], ttl: Duration) -> Keys {
        let digest = Sha256::digest(secret);
        let kid: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        Keys {
            key: secret.into(),
            kid: kid.into(),
            ttl,
        }
    }

    /// The secret given (`--secret` or `--secret-file`), or the one kept in `data_dir/secret`
    /// (created with mode 0600 on first start), so cookies survive restarts.
    pub fn load_or_create(
        secret: Option<&[u8]>,
        data_dir: &Path,
        ttl: Duration,
    ) -> std::io::Result<Keys> {
        if let Some(s) = secret.filter(|s| !s.is_empty()) {
            return Ok(Keys::new(s, ttl));
        }
        let path = data_dir.join("secret");
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => return Ok(Keys::new(s.trim().as_bytes(), ttl)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let bytes: [u8; 32] = rand::random();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        crate::datadir::write_private(&path, hex.as_bytes())?;
        Ok(Keys::new(hex.as_bytes(), ttl))
    }

    /// The session lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn mac(&self, signed: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(signed.as_bytes());
        mac
    }

    /// Signs a session for `user` of generation `generation`, issued at `iat` (seconds since the
    /// epoch).
    pub fn sign(&self, user: &User, iat: u64, generation: u64) -> String {
        let payload = Payload {
            uid: user.id.to_string(),
            name: user.name.to_string(),
            iat,
            generation,
        };
        let payload = B64.encode(serde_json::to_vec(&payload).expect("payload serializes"));
        let signed = format!("v1.{}.{payload}", self.kid);
        let tag = B64.encode(self.mac(&signed).finalize().into_bytes());
        format!("{signed}.{tag}")
    }

    /// Verifies a cookie value at time `now` (seconds since the epoch).
    pub fn verify(&self, value: &str, now: u64) -> Result<User, AuthError> {
        self.verify_session(value, now).map(|s| s.user)
    }

    /// Verifies a cookie value and says until when the session is valid.
    pub fn verify_session(&self, value: &str, now: u64) -> Result<Session, AuthError> {
        let mut parts = value.split('.');
        let (Some("v1"), Some(kid), Some(payload), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(AuthError::Malformed);
        };
        if kid != &*self.kid {
            return Err(AuthError::UnknownKey);
        }
        let tag = B64.decode(tag).map_err(|_| AuthError::Malformed)?;
        let signed_len = value.len() - tag_len(value);
        self.mac(&value[..signed_len])
            .verify_slice(&tag)
            .map_err(|_| AuthError::BadSignature)?;
        let payload = B64.decode(payload).map_err(|_| AuthError::Malformed)?;
        let payload: Payload =
            serde_json::from_slice(&payload).map_err(|_| AuthError::Malformed)?;
        if payload.iat.saturating_add(self.ttl.as_secs()) <= now || payload.iat > now + 300 {
            return Err(AuthError::Expired);
        }
        let name = validate_name(&payload.name)?;
        Ok(Session {
            user: User {
                id: payload.uid.into(),
                name: name.into(),
            },
            expires_at: payload.iat.saturating_add(self.ttl.as_secs()),
            generation: payload.generation,
        })
    }

    /// Finds and verifies the session cookie in a `Cookie` header value.
    pub fn verify_cookie_header(&self, header: &str, now: u64) -> Result<Session, AuthError> {
        let value = header
            .split(';')
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == COOKIE_NAME)
            .map(|(_, v)| v)
            .ok_or(AuthError::Malformed)?;
        self.verify_session(value, now)
    }

    /// The `Set-Cookie` header value for a session.
    pub fn set_cookie(&self, user: &User, now: u64, generation: u64) -> String {
        format!(
            "{COOKIE_NAME}={}; HttpOnly; SameSite=Lax; Path=/; Max-Age={}",
            self.sign(user, now, generation),
            self.ttl.as_secs()
        )
    }
}

/// Length of the `.<tag>` suffix of a cookie value.
fn tag_len(value: &str) -> usize {
    value.rfind('.').map_or(0, |i| value.len() - i)
}

/// The `Set-Cookie` header value that clears the session.
pub fn clear_cookie() -> String {
    format!("{COOKIE_NAME}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0")
}

/// Users who logged out, with their current session generation: a session of an older
/// generation is refused. Shared by every request handler and (cluster) the broker, which
/// applies other nodes' logouts; a std lock, held only for a map lookup or insert, never across
/// an await.
#[derive(Debug, Default)]
pub struct Revocations {
    generations: RwLock<HashMap<Arc<str>, u64>>,
}

impl Revocations {
    /// The generation a new session of `user` gets.
    pub fn current(&self, user: &str) -> u64 {
        self.generations
            .read()
            .expect("revocations lock")
            .get(user)
            .copied()
            .unwrap_or(0)
    }

    /// Refuses a session whose generation was revoked.
    pub fn check(&self, session: Session) -> Result<Session, AuthError> {
        if session.generation < self.current(&session.user.id) {
            return Err(AuthError::Revoked);
        }
        Ok(session)
    }

    /// Logs out every current session of `user`; returns the new generation.
    pub fn revoke(&self, user: &Arc<str>) -> u64 {
        let mut map = self.generations.write().expect("revocations lock");
        let generation = map.entry(user.clone()).or_insert(0);
        *generation += 1;
        *generation
    }

    /// Applies a revocation learned elsewhere (the store at start, another node); true when
    /// it changed anything.
    pub fn apply(&self, user: Arc<str>, generation: u64) -> bool {
        let mut map = self.generations.write().expect("revocations lock");
        let current = map.entry(user).or_insert(0);
        if generation > *current {
            *current = generation;
            return true;
        }
        false
    }
}

/// Trims a user name and checks it: 1 to 32 characters, no control characters.
pub fn validate_name(name: &str) -> Result<&str, AuthError> {
    let name = name.trim();
    let count = name.chars().count();
    if count == 0 || count > 32 || name.chars().any(char::is_control) {
        return Err(AuthError::InvalidName);
    }
    Ok(name)
}

/// A new opaque user id.
pub fn new_user_id() -> Arc<str> {
    let bytes: [u8; 12] = rand::random();
    B64.encode(bytes).into()
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> User {
        User {
            id: "u1".into(),
            name: "alice".into(),
        }
    }

    #[test]
    fn signed_cookie_round_trips() {
        let keys = Keys::new(b"secret", Duration::from_secs(60));
        let v = keys.sign(&alice(), 1000, 0);
        assert_eq!(keys.verify(&v, 1010), Ok(alice()));
    }

    #[test]
    fn tampered_expired_and_foreign_cookies_are_refused() {
        let keys = Keys::new(b"secret", Duration::from_secs(60));
        let v = keys.sign(&alice(), 1000, 0);
        let other = User {
            id: "u2".into(),
            name: "mallory".into(),
        };
        let forged_payload = keys.sign(&other, 1000, 0);
        let (head, _) = forged_payload.rsplit_once('.').unwrap();
        let (_, tag) = v.rsplit_once('.').unwrap();
        assert_eq!(
            keys.verify(&format!("{head}.{tag}"), 1010),
            Err(AuthError::BadSignature)
        );
        assert_eq!(keys.verify(&v, 1060), Err(AuthError::Expired));
        assert_eq!(keys.verify("garbage", 1010), Err(AuthError::Malformed));
        let foreign = Keys::new(b"other", Duration::from_secs(60));
        assert_eq!(foreign.verify(&v, 1010), Err(AuthError::UnknownKey));
    }

    #[test]
    fn cookie_header_is_parsed() {
        let keys = Keys::new(b"secret", Duration::from_secs(60));
        let header = format!("a=b; {COOKIE_NAME}={}; c=d", keys.sign(&alice(), 1000, 0));
        let session = keys.verify_cookie_header(&header, 1001).unwrap();
        assert_eq!(
            session,
            Session {
                user: alice(),
                expires_at: 1060,
                generation: 0
            }
        );
        assert!(keys.verify_cookie_header("a=b", 1001).is_err());
    }

    #[test]
    fn a_logout_revokes_older_sessions_only() {
        let keys = Keys::new(b"secret", Duration::from_secs(60));
        let revocations = Revocations::default();
        let old = keys
            .verify_session(&keys.sign(&alice(), 1000, 0), 1001)
            .unwrap();
        assert!(revocations.check(old.clone()).is_ok());
        assert_eq!(revocations.revoke(&alice().id), 1);
        assert_eq!(revocations.check(old), Err(AuthError::Revoked));
        let new = keys
            .verify_session(&keys.sign(&alice(), 1000, 1), 1001)
            .unwrap();
        assert!(revocations.check(new).is_ok());
        assert!(!revocations.apply(alice().id, 1));
        assert!(revocations.apply(alice().id, 2));
    }

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(validate_name("  bob "), Ok("bob"));
        assert!(validate_name("").is_err());
        assert!(validate_name("   ").is_err());
        assert!(validate_name("a\u{7}b").is_err());
        assert!(validate_name(&"x".repeat(33)).is_err());
        assert_eq!(validate_name(&"é".repeat(32)).map(str::len), Ok(64));
    }

    #[test]
    fn generated_secret_is_kept_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("nebula-auth-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = Keys::load_or_create(None, &dir, Duration::from_secs(60)).unwrap();
        let b = Keys::load_or_create(None, &dir, Duration::from_secs(60)).unwrap();
        assert_eq!(a.kid, b.kid);
        let mode = std::fs::metadata(dir.join("secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
