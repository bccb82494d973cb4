//! Provider tokens: a bearer token with its refresh deadline, and the single-flight cache that
//! shares one token (and one refresh) between all of a client's callers.

use crate::provider::{Provider, ProviderError};
use http::header::HeaderValue;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A bearer token ready to send, and when to stop using it.
pub struct BearerToken {
    header: HeaderValue,
    refresh_at: Instant,
}

impl BearerToken {
    /// `Authorization: Bearer <token>`, to be refreshed `margin` before `lifetime` runs out (at
    /// once when the lifetime is shorter than the margin; it is still used for the current call).
    /// A token that is not a valid header value is [`ProviderError::InvalidResponse`].
    pub fn new(
        provider: Provider,
        operation: &'static str,
        token: &str,
        lifetime: Duration,
        margin: Duration,
    ) -> Result<Self, ProviderError> {
        let mut header = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            ProviderError::InvalidResponse {
                provider,
                operation,
                message: "the token is not a valid HTTP header value".into(),
            }
        })?;
        header.set_sensitive(true);
        Ok(Self {
            header,
            refresh_at: Instant::now() + lifetime.saturating_sub(margin),
        })
    }

    /// The `Authorization` header value (marked sensitive).
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    fn is_fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerToken")
            .field("token", &"[redacted]")
            .field("refresh_at", &self.refresh_at)
            .finish()
    }
}

/// A shared token with single-flight refresh.
///
/// At most one token request runs at a time (the lock is held across it), and callers that were
/// waiting while a token request completed take that request's result (token or error) instead
/// of starting another. So N concurrent callers needing a token cause exactly one token request,
/// and N concurrent rejections of the same stale token cause exactly one refresh. Every token
/// request is reported once, here ([`crate::telemetry::token_refreshed`]).
pub struct TokenCache {
    provider: Provider,
    /// Number of token requests completed so far.
    completed: AtomicU64,
    /// The current token, readable without waiting for a refresh in progress: the fast path of
    /// every request.
    current: std::sync::Mutex<Option<Arc<BearerToken>>>,
    state: tokio::sync::Mutex<TokenState>,
}

#[derive(Default)]
struct TokenState {
    current: Option<Arc<BearerToken>>,
    /// The number and result of the last completed token request.
    last: Option<(u64, Result<Arc<BearerToken>, ProviderError>)>,
}

impl TokenCache {
    /// An empty cache for `provider`'s tokens.
    pub fn new(provider: Provider) -> Self {
        Self {
            provider,
            completed: AtomicU64::new(0),
            current: std::sync::Mutex::new(None),
            state: tokio::sync::Mutex::new(TokenState::default()),
        }
    }

    /// A fresh token: the cached one, or one from `fetch`.
    ///
    /// `rejected` is the token the provider just refused (401/403): it is not returned again.
    pub async fn get<F, Fut>(
        &self,
        rejected: Option<&Arc<BearerToken>>,
        fetch: F,
    ) -> Result<Arc<BearerToken>, ProviderError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<BearerToken, ProviderError>>,
    {
        if rejected.is_none() {
            let current = self
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(token) = current.filter(|t| t.is_fresh()) {
                return Ok(token);
            }
        }
        let seen = self.completed.load(Ordering::Acquire);
        let mut state = self.state.lock().await;
        if let Some((number, result)) = &state.last {
            if *number > seen {
                // A token request completed while we waited: share its result.
                return result.clone();
            }
        }
        if let Some(current) = &state.current {
            let was_rejected = rejected.is_some_and(|r| Arc::ptr_eq(r, current));
            if current.is_fresh() && !was_rejected {
                return Ok(current.clone());
            }
        }
        let result = fetch().await.map(Arc::new);
        crate::telemetry::token_refreshed(self.provider, result.is_ok());
        state.current = result.as_ref().ok().cloned();
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = state.current.clone();
        let number = self.completed.fetch_add(1, Ordering::AcqRel) + 1;
        state.last = Some((number, result.clone()));
        result
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("requests", &self.completed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(lifetime: Duration) -> BearerToken {
        BearerToken::new(
            Provider::Unico,
            "token",
            "t",
            lifetime,
            Duration::from_secs(60),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn token_cache_reuses_a_fresh_token_and_refreshes_a_rejected_one() {
        let cache = TokenCache::new(Provider::ClearSale);
        let first = cache
            .get(None, || async { Ok(token(Duration::from_secs(3600))) })
            .await
            .unwrap();
        let again = cache
            .get(None, || async { panic!("must not fetch") })
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let second = cache
            .get(Some(&first), || async {
                Ok(token(Duration::from_secs(3600)))
            })
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        // The old token being rejected again does not cause another refresh.
        let third = cache
            .get(Some(&first), || async { panic!("must not fetch") })
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&second, &third));
    }

    #[tokio::test]
    async fn token_cache_refreshes_a_token_within_the_margin() {
        let cache = TokenCache::new(Provider::ClearSale);
        let short = cache
            .get(None, || async { Ok(token(Duration::from_secs(30))) })
            .await
            .unwrap();
        let next = cache
            .get(None, || async { Ok(token(Duration::from_secs(3600))) })
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&short, &next));
    }

    #[test]
    fn bearer_token_debug_is_redacted() {
        let t = BearerToken::new(
            Provider::ClearSale,
            "authenticate",
            "eyJsecret",
            Duration::from_secs(10),
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(t.header().to_str().unwrap(), "Bearer eyJsecret");
        assert!(!format!("{t:?}").contains("eyJsecret"));
        let bad = BearerToken::new(
            Provider::ClearSale,
            "authenticate",
            "line\nbreak",
            Duration::from_secs(10),
            Duration::ZERO,
        );
        assert!(matches!(bad, Err(ProviderError::InvalidResponse { .. })));
    }
}
