//! Unico IDUnico: the API client, its token assertion and its response models.

mod assertion;
pub mod client;
pub mod model;

pub use client::{ProcessAnswer, UnicoClient};
