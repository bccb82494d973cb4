//! Enrichment: fetch the provider's result for one event, with retries, the bounded 404 grace,
//! and the bounded ClearSale "pending" re-fetch. The result is either the fetched answer, a
//! permanent failure (to dead-letter, with a class), or a systemic failure (the engine pauses).
//!
//! The clients make single attempts (plus their one token refresh on 401); every retry decision
//! is made here, with [`crate::provider::classify`] and the pure delays of [`crate::retry`].

mod settings;
pub use settings::{EnrichSettings, NotFoundSettings};
mod enricher;
pub use enricher::{Budget, EnrichFailure, EnrichOutcome, Enricher};
