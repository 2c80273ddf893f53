//! The audit as people read it: per integration, its mode and cutover state, what it
//! sent, and the least set of OAuth scopes its client needs.
//!
//! One builder ([`build()`]) feeds `keybridge audit` (table, JSON, CSV), `GET /audit` and
//! the dashboard, so they always agree. [`model`] is the report's shape, [`build`](mod@build)
//! fills it from a store's snapshot, [`advice`] works out the scopes, [`render`] turns
//! it into text.

pub mod advice;
pub mod build;
pub mod model;
pub mod render;

pub use build::build;
pub use model::*;
pub use render::{plural, render_csv, render_table};
