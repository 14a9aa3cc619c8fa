//! The one integration test binary: each module tests one area through `spawn_app()` (HTTP)
//! or the store directly, on SQLite and PostgreSQL.

mod crud;
mod errors;
mod fixtures;
mod formats;
mod helpers;
mod store_contract;
