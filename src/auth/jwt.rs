//! External tokens: JWTs minted by another auth system (Django REST Framework simplejwt, say),
//! checked against a shared HS256 secret or an RS256/ES256 public key.
//!
//! This module only verifies a token and says who it names and which session it counts as;
//! the authenticator (`auth`) caches the result, provisions the user and opens the session.

mod crypto;

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::TokenHash;
use crate::domain::Username;

/// Longest external id accepted (a claim's value as text).
const MAX_EXTERNAL_ID: usize = 255;

/// How lastseen checks external tokens.
#[derive(Debug, Clone, Default)]
pub struct JwtConfig {
    /// Shared secret of HS256 (also HS384/HS512) tokens.
    pub hs256_secret: Option<String>,
    /// PEM text of the RSA (RS256) or P-256 (ES256) public key.
    pub public_key_pem: Option<Vec<u8>>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's), if set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` (and `nbf`).
    pub leeway: Duration,
    /// The claim holding the user's external id.
    pub user_claim: String,
    /// The claim holding the user's name (used when the user is created).
    pub username_claim: String,
}

/// Why the JWT settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JwtSetupError {
    /// The public key is neither an RSA nor a P-256 public key in PEM.
    #[error("jwt_public_key_file is not a PEM public key (RSA for RS256, P-256 for ES256): {0}")]
    PublicKey(String),
    /// The HS256 secret cannot be used as a key.
    #[error("jwt_hs256_secret cannot be used: {0}")]
    Secret(String),
}

/// Reads a PEM public key: RSA (for RS256) or P-256 (for ES256).
///
/// # Errors
/// [`JwtSetupError::PublicKey`] for anything else.
pub fn public_key_from_pem(pem: &[u8]) -> Result<(Algorithm, DecodingKey), JwtSetupError> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((Algorithm::RS256, key));
    }
    let key = DecodingKey::from_ec_pem(pem).map_err(|e| JwtSetupError::PublicKey(e.to_string()))?;
    // An uncompressed P-256 point is 65 bytes (P-384's is 97).
    match key.try_get_as_bytes() {
        Ok(point) if point.len() == 65 => Ok((Algorithm::ES256, key)),
        _ => Err(JwtSetupError::PublicKey(
            "only the P-256 curve is supported".into(),
        )),
    }
}

/// Whether `token` is shaped like a JWT (three parts separated by dots). Opaque lastseen
/// tokens are hex, so they never are.
pub fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|&b| b == b'.').count() == 2
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The session the token counts as: SHA-256 of its user and `jti`, else of the token.
    pub session_key: TokenHash,
    /// The user claim's value as text.
    pub external_id: String,
    /// The username claim, when present and a valid username.
    pub username: Option<Username>,
    /// `exp`, in seconds since the Unix epoch.
    pub expires_at: u64,
}

impl Verified {
    /// `exp` as a time (capped at the end of year 9999, which every store can hold).
    pub fn expires_at_time(&self) -> chrono::DateTime<chrono::Utc> {
        const LAST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
        let secs = i64::try_from(self.expires_at).unwrap_or(LAST).min(LAST);
        chrono::DateTime::from_timestamp(secs, 0)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
    }
}

/// Why a token was refused (all become 401 `invalid_token`; the reason is only logged).
#[derive(Debug, thiserror::Error)]
pub enum JwtRejection {
    /// Bad shape, signature, algorithm, `exp`, `iss` or `aud`.
    #[error(transparent)]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// `token_type` is there and is not `access` (a simplejwt refresh token, say).
    #[error("token_type is not access")]
    NotAccess,
    /// The user claim is missing, empty, too long, or neither a string nor an integer.
    #[error("the user claim is missing or not a string or integer")]
    NoUser,
}

/// Verifies JWTs with the configured keys.
pub struct JwtVerifier {
    hmac: Option<DecodingKey>,
    public: Option<(Algorithm, DecodingKey)>,
    config: JwtConfig,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("public", &self.public.as_ref().map(|(alg, _)| alg))
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// A verifier for `config`; `None` when it names no key (JWTs are then not accepted).
    ///
    /// # Errors
    /// [`JwtSetupError`] if the public key cannot be read.
    pub fn new(config: JwtConfig) -> Result<Option<Self>, JwtSetupError> {
        let secret = config.hs256_secret.as_deref().filter(|s| !s.is_empty());
        let hmac = secret.map(|s| DecodingKey::from_secret(s.as_bytes()));
        let hmac = hmac
            .transpose()
            .map_err(|e| JwtSetupError::Secret(e.to_string()))?;
        let public = config
            .public_key_pem
            .as_deref()
            .map(public_key_from_pem)
            .transpose()?;
        if hmac.is_none() && public.is_none() {
            return Ok(None);
        }
        crypto::install();
        Ok(Some(Self {
            hmac,
            public,
            config,
        }))
    }

    /// Checks `token`'s signature and claims.
    ///
    /// # Errors
    /// [`JwtRejection`] for a token lastseen must refuse.
    pub fn verify(&self, token: &str) -> Result<Verified, JwtRejection> {
        let header = jsonwebtoken::decode_header(token)?;
        let key = match (header.alg, &self.hmac, &self.public) {
            (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512, Some(key), _) => key,
            (alg, _, Some((public, key))) if alg == *public => key,
            _ => return Err(JwtRejection::Invalid(ErrorKind::InvalidAlgorithm.into())),
        };
        let claims: Map<String, Value> =
            jsonwebtoken::decode(token, key, &self.validation(header.alg))?.claims;
        if claims
            .get("token_type")
            .is_some_and(|kind| kind.as_str() != Some("access"))
        {
            return Err(JwtRejection::NotAccess);
        }
        let external_id =
            external_id(claims.get(&self.config.user_claim)).ok_or(JwtRejection::NoUser)?;
        let session_key = match claims.get("jti").and_then(Value::as_str) {
            Some(jti) => TokenHash::of(&format!("jwt-jti\0{external_id}\0{jti}")),
            None => TokenHash::of(&format!("jwt\0{token}")),
        };
        let username = claims
            .get(&self.config.username_claim)
            .and_then(Value::as_str)
            .and_then(|name| Username::parse(name).ok());
        let expires_at = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Ok(Verified {
            session_key,
            external_id,
            username,
            expires_at,
        })
    }

    /// Seconds a token is still accepted after its `exp`.
    pub fn leeway(&self) -> u64 {
        self.config.leeway.as_secs()
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway();
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &self.config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }
}

/// A user claim as text: a non-empty string, or an integer (simplejwt's `user_id` is the
/// Django primary key, a number).
fn external_id(claim: Option<&Value>) -> Option<String> {
    let id = match claim? {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        _ => return None,
    };
    (!id.is_empty() && id.chars().count() <= MAX_EXTERNAL_ID).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_three_part_tokens_look_like_jwts() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(!looks_like_jwt(&"0f".repeat(32)));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
    }

    #[test]
    fn user_claims_are_strings_or_integers() {
        assert_eq!(external_id(Some(&json!(42))), Some("42".into()));
        assert_eq!(external_id(Some(&json!("auth0|7"))), Some("auth0|7".into()));
        assert_eq!(external_id(Some(&json!(""))), None);
        assert_eq!(external_id(Some(&json!(4.5))), None);
        assert_eq!(external_id(Some(&json!(["x"]))), None);
        assert_eq!(external_id(Some(&json!("x".repeat(256)))), None);
        assert_eq!(external_id(None), None);
    }

    #[test]
    fn a_config_without_keys_accepts_no_jwts() {
        assert!(JwtVerifier::new(JwtConfig::default()).unwrap().is_none());
        let bad = JwtConfig {
            public_key_pem: Some(b"not a key".to_vec()),
            ..JwtConfig::default()
        };
        assert!(JwtVerifier::new(bad).is_err());
    }
}
