//! ClearSale Connect: the API client and its response models.

pub mod client;
pub mod model;

pub use client::ClearSaleClient;
