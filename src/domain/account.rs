//! Account values: usernames and passwords, validated on the way in.

use std::fmt;

/// Why a domain value was rejected. HTTP maps every variant to `400 {"code": "invalid"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The username is empty, too long or has a character outside `[A-Za-z0-9_.@+-]`.
    #[error(
        "username must be 1-150 characters of letters, digits and _ . @ + - (got {len} characters)"
    )]
    InvalidUsername {
        /// Length of the rejected input, in characters.
        len: usize,
    },
    /// The password is shorter than [`Password::MIN_LEN`] characters.
    #[error("password must be at least {min} characters", min = Password::MIN_LEN)]
    PasswordTooShort,
    /// The password is longer than [`Password::MAX_LEN`] bytes (a hashing-cost guard).
    #[error("password must be at most {max} bytes", max = Password::MAX_LEN)]
    PasswordTooLong,
    /// A status text is blank or longer than 100 characters.
    #[error("text must be 1-100 characters")]
    StatusText,
    /// A status emoji is not exactly one emoji.
    #[error("emoji must be exactly one emoji, e.g. 📅")]
    StatusEmoji,
    /// A status expiry is not in the future.
    #[error("expires_at must be in the future")]
    StatusExpiry,
    /// A device name is blank or longer than 64 characters.
    #[error("device name must be 1-64 characters")]
    DeviceName,
}

/// A username following Django's default rules: 1–150 characters of `[A-Za-z0-9_.@+-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    /// Longest accepted username, in characters.
    pub const MAX_LEN: usize = 150;

    /// Validates `raw` as a username.
    ///
    /// # Errors
    /// [`DomainError::InvalidUsername`] when it is empty, too long or has a forbidden character.
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let len = raw.chars().count();
        let allowed = |c: char| c.is_ascii_alphanumeric() || "_.@+-".contains(c);
        if len == 0 || len > Self::MAX_LEN || !raw.chars().all(allowed) {
            return Err(DomainError::InvalidUsername { len });
        }
        Ok(Self(raw.to_owned()))
    }

    /// The username as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Username {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A plaintext password that met the length rules. It is never logged or serialised.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Shortest accepted password, in characters.
    pub const MIN_LEN: usize = 8;
    /// Longest accepted password, in bytes; bounds the hashing work a client can ask for.
    pub const MAX_LEN: usize = 1024;

    /// Validates `raw` as a new password.
    ///
    /// # Errors
    /// [`DomainError::PasswordTooShort`] or [`DomainError::PasswordTooLong`].
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        if raw.chars().count() < Self::MIN_LEN {
            return Err(DomainError::PasswordTooShort);
        }
        if raw.len() > Self::MAX_LEN {
            return Err(DomainError::PasswordTooLong);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The password's bytes, for hashing.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_django_rules() {
        for ok in ["a", "ahmad", "a.b@c+d-e_f", &"x".repeat(150), "User123"] {
            assert!(Username::parse(ok).is_ok(), "{ok} should be accepted");
        }
        for bad in [
            "",
            " ",
            "a b",
            "ümlaut",
            "semi;colon",
            &"x".repeat(151),
            "tab\t",
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn every_allowed_character_is_accepted_alone_and_others_rejected() {
        for c in (0u8..=127).map(char::from) {
            let allowed = c.is_ascii_alphanumeric() || "_.@+-".contains(c);
            assert_eq!(
                Username::parse(&c.to_string()).is_ok(),
                allowed,
                "char {c:?}"
            );
        }
    }

    #[test]
    fn passwords_need_eight_characters() {
        assert_eq!(
            Password::parse("1234567").unwrap_err(),
            DomainError::PasswordTooShort
        );
        assert!(Password::parse("12345678").is_ok());
        assert!(
            Password::parse("ééééééé").is_err(),
            "counts characters, not bytes"
        );
        assert_eq!(
            Password::parse(&"p".repeat(1025)).unwrap_err(),
            DomainError::PasswordTooLong
        );
    }

    #[test]
    fn password_debug_is_redacted() {
        let p = Password::parse("hunter2hunter2").unwrap();
        assert!(!format!("{p:?}").contains("hunter"));
    }
}
