//! The signed assertion of Unico's OAuth2 JWT-bearer grant (RFC 7523): an RS256 JWT with exactly
//! the claims `iss`, `aud`, `scope`, `iat` and `exp` (the issuer rejects extra claims).

use crate::provider::settings::UnicoSettings;
use crate::provider::{Provider, ProviderError};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest assertion lifetime the issuer accepts (`exp - iat`).
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// The `scope` claim: every scope the service account holds.
const SCOPE: &str = "*";

/// The claims of the assertion; nothing else may be added.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    scope: &'static str,
    iat: u64,
    exp: u64,
}

/// Signs assertions with the service account's key. `Debug` never shows the key.
pub struct AssertionSigner {
    key: EncodingKey,
    issuer: String,
    audience: String,
    lifetime_secs: u64,
}

impl AssertionSigner {
    /// Loads the RSA private key (PEM, PKCS#1 or PKCS#8) and checks it by signing once.
    ///
    /// A missing or unusable key, an empty account or tenant, or a lifetime under one second is
    /// [`ProviderError::Config`] (the message never contains key material). A lifetime over
    /// [`MAX_ASSERTION_LIFETIME`] is clamped to it.
    pub fn new(settings: &UnicoSettings) -> Result<Self, ProviderError> {
        let config = |message: &str| ProviderError::Config {
            provider: Provider::Unico,
            message: message.to_owned(),
        };
        if settings.account.trim().is_empty() || settings.tenant.trim().is_empty() {
            return Err(config("unico.account and unico.tenant must be set"));
        }
        if settings.private_key_pem.is_empty() {
            return Err(config("unico.private_key_pem is not set"));
        }
        let key = EncodingKey::from_rsa_pem(settings.private_key_pem.expose().as_bytes()).map_err(
            |_| config("unico.private_key_pem is not an RSA private key in PEM (PKCS#1 or PKCS#8)"),
        )?;
        let lifetime_secs = settings
            .assertion_lifetime
            .min(MAX_ASSERTION_LIFETIME)
            .as_secs();
        if lifetime_secs == 0 {
            return Err(config("unico.assertion_lifetime must be at least 1s"));
        }
        let signer = Self {
            key,
            issuer: settings.issuer_claim(),
            audience: settings.audience_claim().to_owned(),
            lifetime_secs,
        };
        // The PEM parser only checks the envelope; signing once proves the key is usable.
        signer.sign_at(0).map_err(|_| {
            config("unico.private_key_pem cannot sign RS256 (is it a valid RSA private key?)")
        })?;
        Ok(signer)
    }

    /// A fresh assertion issued now.
    pub fn sign(&self) -> Result<String, ProviderError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.sign_at(now).map_err(|e| ProviderError::Config {
            provider: Provider::Unico,
            message: format!("cannot sign the token assertion: {e}"),
        })
    }

    fn sign_at(&self, iat: u64) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            iss: &self.issuer,
            aud: &self.audience,
            scope: SCOPE,
            iat,
            exp: iat + self.lifetime_secs,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
    }
}

impl fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("lifetime_secs", &self.lifetime_secs)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use jsonwebtoken::{DecodingKey, Validation};
    use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    use rsa::RsaPrivateKey;
    use std::sync::OnceLock;

    /// Key generation is slow in debug builds: one key for all tests.
    fn key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap())
    }

    fn settings(pem: String) -> UnicoSettings {
        UnicoSettings {
            account: "svc".into(),
            tenant: "tenant-1".into(),
            issuer_url: "https://identityhomolog.acesso.io".into(),
            private_key_pem: Secret::new(pem),
            ..UnicoSettings::default()
        }
    }

    fn pkcs8() -> String {
        key().to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
    }

    fn claims_of(jwt: &str) -> serde_json::Map<String, serde_json::Value> {
        let public = key().to_public_key().to_pkcs1_pem(LineEnding::LF).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["https://identityhomolog.acesso.io"]);
        validation.validate_exp = false;
        jsonwebtoken::decode(
            jwt,
            &DecodingKey::from_rsa_pem(public.as_bytes()).unwrap(),
            &validation,
        )
        .unwrap()
        .claims
    }

    #[test]
    fn signs_exactly_the_documented_claims_with_pkcs8_and_pkcs1_keys() {
        let pkcs1 = key().to_pkcs1_pem(LineEnding::LF).unwrap().to_string();
        for pem in [pkcs8(), pkcs1] {
            let signer = AssertionSigner::new(&settings(pem)).unwrap();
            let claims = claims_of(&signer.sign_at(1_000).unwrap());
            let expected = serde_json::json!({
                "iss": "svc@tenant-1.iam.acesso.io",
                "aud": "https://identityhomolog.acesso.io",
                "scope": "*",
                "iat": 1_000,
                "exp": 4_600,
            });
            assert_eq!(serde_json::Value::Object(claims), expected);
        }
    }

    #[test]
    fn lifetime_is_clamped_to_one_hour_and_must_be_positive() {
        let mut s = settings(pkcs8());
        s.assertion_lifetime = Duration::from_secs(7200);
        let claims = claims_of(&AssertionSigner::new(&s).unwrap().sign_at(0).unwrap());
        assert_eq!(claims["exp"], 3600);
        s.assertion_lifetime = Duration::from_secs(600);
        let claims = claims_of(&AssertionSigner::new(&s).unwrap().sign_at(0).unwrap());
        assert_eq!(claims["exp"], 600);
        s.assertion_lifetime = Duration::from_millis(500);
        assert!(matches!(
            AssertionSigner::new(&s),
            Err(ProviderError::Config { .. })
        ));
    }

    #[test]
    fn bad_keys_are_configuration_errors_without_key_material() {
        let pem = pkcs8();
        let broken = pem.replacen("MII", "MIX", 1);
        let truncated = pem[..pem.len() / 2].to_owned();
        for bad in [String::new(), "not a key".into(), broken, truncated] {
            let err = AssertionSigner::new(&settings(bad.clone())).unwrap_err();
            assert!(matches!(err, ProviderError::Config { .. }), "{err}");
            let text = format!("{err} {err:?}");
            assert!(!text.contains("MII") && !text.contains("BEGIN"), "{text}");
        }
    }

    #[test]
    fn account_and_tenant_are_required() {
        let mut s = settings(pkcs8());
        s.tenant.clear();
        assert!(matches!(
            AssertionSigner::new(&s),
            Err(ProviderError::Config { .. })
        ));
    }

    #[test]
    fn debug_hides_the_key() {
        let pem = pkcs8();
        let signer = AssertionSigner::new(&settings(pem.clone())).unwrap();
        let text = format!("{signer:?}");
        assert!(text.contains("svc@tenant-1.iam.acesso.io"));
        let body_line = pem.lines().nth(1).unwrap();
        assert!(!text.contains(body_line));
    }
}
