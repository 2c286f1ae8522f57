//! A `jsonwebtoken` crypto provider over `ring`, which the server already builds for rustls.
//!
//! It verifies only what lastseen accepts: HS256/HS384/HS512 (constant-time HMAC comparison),
//! RS256 (PKCS#1 v1.5, 2048–8192-bit keys) and ES256 (P-256, fixed-width signatures). It signs
//! nothing: the server never issues JWTs.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{Error as SignatureError, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use ring::{hmac, signature};

/// The provider; installed once per process by [`install`].
static RING_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: no_signer,
    verifier_factory: verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes [`RING_PROVIDER`] the process's provider (a second call changes nothing).
pub(super) fn install() {
    // Already installed (by an earlier call): the same provider.
    let _ = RING_PROVIDER.install_default();
}

fn no_signer(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    Err(ErrorKind::InvalidAlgorithm.into())
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let bytes = key.try_get_as_bytes()?.to_vec();
    let check = match algorithm {
        Algorithm::HS256 => Check::Hmac(hmac::Key::new(hmac::HMAC_SHA256, &bytes)),
        Algorithm::HS384 => Check::Hmac(hmac::Key::new(hmac::HMAC_SHA384, &bytes)),
        Algorithm::HS512 => Check::Hmac(hmac::Key::new(hmac::HMAC_SHA512, &bytes)),
        Algorithm::RS256 => Check::Public(&signature::RSA_PKCS1_2048_8192_SHA256, bytes),
        Algorithm::ES256 => Check::Public(&signature::ECDSA_P256_SHA256_FIXED, bytes),
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(Box::new(RingVerifier {
        algorithm: *algorithm,
        check,
    }))
}

enum Check {
    Hmac(hmac::Key),
    /// A public key as `ring` takes it: PKCS#1 `RSAPublicKey` DER, or an uncompressed P-256
    /// point (what `DecodingKey::from_rsa_pem` / `from_ec_pem` extract from a PEM).
    Public(&'static dyn signature::VerificationAlgorithm, Vec<u8>),
}

struct RingVerifier {
    algorithm: Algorithm,
    check: Check,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], sig: &Vec<u8>) -> std::result::Result<(), SignatureError> {
        let verified = match &self.check {
            Check::Hmac(key) => hmac::verify(key, message, sig),
            Check::Public(algorithm, key) => {
                signature::UnparsedPublicKey::new(*algorithm, key).verify(message, sig)
            }
        };
        verified.map_err(|_| SignatureError::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}
