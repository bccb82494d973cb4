//! Authentication of a provider's webhook request: Basic, a static bearer token, an API key (in a
//! named header or as the bare `Authorization` value), or none by explicit opt-in.
//!
//! Every comparison of a credential is constant-time ([`subtle`]): how long a check takes does
//! not depend on how much of a guess was right. (Only the length of the expected value may show,
//! as with any constant-time comparison of unequal lengths.) The expected credentials are
//! [`Secret`]s and never printed.

use super::settings::{AuthMode, AuthSettings};
use crate::secret::Secret;
use base64::Engine as _;
use http::header::{HeaderMap, HeaderName, AUTHORIZATION};
use subtle::ConstantTimeEq;

/// Why a request failed authentication (the `reason` label of the failure counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credentials where the mode expects them.
    Missing,
    /// Credentials of the wrong form (another scheme, bad base64, repeated header).
    Malformed,
    /// Well-formed credentials that do not match.
    Mismatch,
}

impl AuthFailure {
    /// Every reason, in a fixed order (for per-reason metric handles).
    pub const ALL: [AuthFailure; 3] = [
        AuthFailure::Missing,
        AuthFailure::Malformed,
        AuthFailure::Mismatch,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Mismatch => "mismatch",
        }
    }
}

enum Check {
    None,
    Basic {
        username: Secret,
        password: Secret,
    },
    Bearer {
        token: Secret,
    },
    /// `header` is `None` for the bare key as the whole `Authorization` value.
    ApiKey {
        header: Option<HeaderName>,
        key: Secret,
    },
}

/// The authentication of one endpoint, built from validated settings.
pub struct Authenticator {
    check: Check,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode().as_str())
            .finish_non_exhaustive()
    }
}

/// Settings that validation should have refused.
#[derive(Debug, thiserror::Error)]
#[error("authentication settings: {0}")]
pub struct AuthConfigError(String);

impl Authenticator {
    /// Builds the check for `settings` (validated: a mode is set).
    pub fn new(settings: &AuthSettings) -> Result<Self, AuthConfigError> {
        let check = match settings.mode {
            None => return Err(AuthConfigError("no mode".into())),
            Some(AuthMode::None) => Check::None,
            Some(AuthMode::Basic) => Check::Basic {
                username: Secret::new(settings.username.clone()),
                password: settings.password.clone(),
            },
            Some(AuthMode::Bearer) => Check::Bearer {
                token: settings.token.clone(),
            },
            Some(AuthMode::ApiKey) => {
                let name = settings.header.trim().to_ascii_lowercase();
                let header = if name.is_empty() || name == "authorization" {
                    None
                } else {
                    Some(
                        HeaderName::from_bytes(name.as_bytes())
                            .map_err(|_| AuthConfigError(format!("bad header name {name:?}")))?,
                    )
                };
                Check::ApiKey {
                    header,
                    key: settings.api_key.clone(),
                }
            }
        };
        Ok(Self { check })
    }

    /// The mode.
    pub fn mode(&self) -> AuthMode {
        match self.check {
            Check::None => AuthMode::None,
            Check::Basic { .. } => AuthMode::Basic,
            Check::Bearer { .. } => AuthMode::Bearer,
            Check::ApiKey { .. } => AuthMode::ApiKey,
        }
    }

    /// The `WWW-Authenticate` challenge of a 401, for the schemes that have one.
    pub fn challenge(&self) -> Option<&'static str> {
        match self.check {
            Check::Basic { .. } => Some("Basic realm=\"webhook-enricher\", charset=\"UTF-8\""),
            Check::Bearer { .. } => Some("Bearer realm=\"webhook-enricher\""),
            _ => None,
        }
    }

    /// Checks a request's headers.
    pub fn verify(&self, headers: &HeaderMap) -> Result<(), AuthFailure> {
        match &self.check {
            Check::None => Ok(()),
            Check::Basic { username, password } => {
                let encoded = scheme_value(headers, "basic")?;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded))
                    .map_err(|_| AuthFailure::Malformed)?;
                // RFC 7617: the user id cannot contain ':', the password can.
                let colon = decoded
                    .iter()
                    .position(|b| *b == b':')
                    .ok_or(AuthFailure::Malformed)?;
                let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
                let user_ok = equal(user, username.expose().as_bytes());
                let pass_ok = equal(pass, password.expose().as_bytes());
                // Both compared before deciding, so a right user name is not told apart.
                if bool::from(user_ok & pass_ok) {
                    Ok(())
                } else {
                    Err(AuthFailure::Mismatch)
                }
            }
            Check::Bearer { token } => {
                let presented = scheme_value(headers, "bearer")?;
                matches(presented.as_bytes(), token)
            }
            Check::ApiKey { header, key } => {
                let name = header.as_ref().unwrap_or(&AUTHORIZATION);
                let value = single(headers, name)?;
                matches(value, key)
            }
        }
    }
}

fn equal(presented: &[u8], expected: &[u8]) -> subtle::Choice {
    presented.ct_eq(expected)
}

fn matches(presented: &[u8], expected: &Secret) -> Result<(), AuthFailure> {
    if bool::from(equal(presented, expected.expose().as_bytes())) {
        Ok(())
    } else {
        Err(AuthFailure::Mismatch)
    }
}

/// The one value of a header: missing when absent, malformed when repeated (two credentials
/// are ambiguous, and a proxy may have added one).
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<&'a [u8], AuthFailure> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(AuthFailure::Missing)?;
    if values.next().is_some() {
        return Err(AuthFailure::Malformed);
    }
    Ok(value.as_bytes())
}

/// The credentials of `Authorization: <scheme> <credentials>` (scheme case-insensitive).
fn scheme_value<'a>(headers: &'a HeaderMap, scheme: &str) -> Result<&'a str, AuthFailure> {
    let value = single(headers, &AUTHORIZATION)?;
    let text = std::str::from_utf8(value).map_err(|_| AuthFailure::Malformed)?;
    let (given, credentials) = text.trim().split_once(' ').ok_or(AuthFailure::Malformed)?;
    if !given.eq_ignore_ascii_case(scheme) {
        return Err(AuthFailure::Malformed);
    }
    let credentials = credentials.trim();
    if credentials.is_empty() {
        return Err(AuthFailure::Missing);
    }
    Ok(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn auth(mode: AuthMode, f: impl FnOnce(&mut AuthSettings)) -> Authenticator {
        let mut s = AuthSettings {
            mode: Some(mode),
            ..Default::default()
        };
        f(&mut s);
        Authenticator::new(&s).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn basic(user_pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    #[test]
    fn basic_splits_at_the_first_colon_so_passwords_may_hold_colons() {
        let a = auth(AuthMode::Basic, |s| {
            s.username = "clearsale".into();
            s.password = "p:a:ss".into();
        });
        let ok = |v: &str| a.verify(&headers(&[("authorization", v)]));
        assert_eq!(ok(&basic("clearsale:p:a:ss")), Ok(()));
        assert_eq!(
            ok(&basic("clearsale:p:a:ss").replace("Basic", "bAsIc")),
            Ok(())
        );
        assert_eq!(
            ok(basic("clearsale:p:a:ss").trim_end_matches('=')),
            Ok(()),
            "unpadded base64"
        );
        assert_eq!(ok(&basic("clearsale:p:a:sS")), Err(AuthFailure::Mismatch));
        assert_eq!(ok(&basic("clearsale:p:a")), Err(AuthFailure::Mismatch));
        assert_eq!(ok(&basic("clearsale:p")), Err(AuthFailure::Mismatch));
        assert_eq!(ok(&basic("clearsal:p:a:ss")), Err(AuthFailure::Mismatch));
        assert_eq!(ok(&basic("clearsale")), Err(AuthFailure::Malformed));
        assert_eq!(ok("Basic %%%"), Err(AuthFailure::Malformed));
        assert_eq!(ok("Bearer abc"), Err(AuthFailure::Malformed));
        assert_eq!(ok("Basic "), Err(AuthFailure::Malformed));
        assert_eq!(a.verify(&HeaderMap::new()), Err(AuthFailure::Missing));
        assert!(a.challenge().unwrap().starts_with("Basic"));
    }

    #[test]
    fn bearer_compares_the_token() {
        let a = auth(AuthMode::Bearer, |s| s.token = "eyJhbGciOi.tok.en".into());
        let ok = |v: &str| a.verify(&headers(&[("authorization", v)]));
        assert_eq!(ok("Bearer eyJhbGciOi.tok.en"), Ok(()));
        assert_eq!(ok("bearer  eyJhbGciOi.tok.en "), Ok(()));
        assert_eq!(ok("Bearer eyJhbGciOi.tok.eN"), Err(AuthFailure::Mismatch));
        assert_eq!(ok("Bearer eyJhbGciOi.tok.e"), Err(AuthFailure::Mismatch));
        assert_eq!(ok("eyJhbGciOi.tok.en"), Err(AuthFailure::Malformed));
        assert_eq!(ok("Basic eyJhbGciOi.tok.en"), Err(AuthFailure::Malformed));
        assert_eq!(
            a.verify(&headers(&[
                ("authorization", "Bearer eyJhbGciOi.tok.en"),
                ("authorization", "Bearer other")
            ])),
            Err(AuthFailure::Malformed),
            "two credentials are refused"
        );
    }

    #[test]
    fn api_key_in_a_named_header() {
        let a = auth(AuthMode::ApiKey, |s| {
            s.header = "X-Api-Key".into();
            s.api_key = "k3y:with:colons".into();
        });
        assert_eq!(
            a.verify(&headers(&[("x-api-key", "k3y:with:colons")])),
            Ok(())
        );
        assert_eq!(
            a.verify(&headers(&[("x-api-key", "k3y:with:colonz")])),
            Err(AuthFailure::Mismatch)
        );
        assert_eq!(
            a.verify(&headers(&[("authorization", "k3y:with:colons")])),
            Err(AuthFailure::Missing),
            "the key counts only in its header"
        );
        assert!(a.challenge().is_none());
    }

    #[test]
    fn api_key_as_the_bare_authorization_value() {
        for header in ["", "Authorization"] {
            let a = auth(AuthMode::ApiKey, |s| {
                s.header = header.into();
                s.api_key = "bare-key-123".into();
            });
            assert_eq!(
                a.verify(&headers(&[("authorization", "bare-key-123")])),
                Ok(())
            );
            assert_eq!(
                a.verify(&headers(&[("authorization", "Bearer bare-key-123")])),
                Err(AuthFailure::Mismatch)
            );
            assert_eq!(a.verify(&HeaderMap::new()), Err(AuthFailure::Missing));
        }
    }

    #[test]
    fn none_accepts_anything_and_debug_hides_secrets() {
        let a = auth(AuthMode::None, |_| {});
        assert_eq!(a.verify(&HeaderMap::new()), Ok(()));
        let b = auth(AuthMode::Basic, |s| {
            s.username = "user".into();
            s.password = "hunter2-secret".into();
        });
        let debug = format!("{b:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("basic"),
            "{debug}"
        );
    }
}
