//! Enrichment: fetch the provider's result for one event, with retries, the bounded 404 grace,
//! and the bounded ClearSale "pending" re-fetch. The result is either the fetched answer, a
//! permanent failure (to dead-letter, with a class), or a systemic failure (the engine pauses).
//!
//! The clients make single attempts (plus their one token refresh on 401). Every retry, pause or
//! dead-letter decision is made in [`decision`], a pure module built on
//! [`crate::provider::classify`] and the delays of [`crate::retry`]; the enricher's loop only
//! carries it out.

mod settings;
pub use settings::{EnrichSettings, NotFoundSettings};
pub mod decision;
pub use decision::Budget;
mod enricher;
pub use enricher::{CircuitSignal, EnrichFailure, EnrichOutcome, Enricher, NoCircuit};
