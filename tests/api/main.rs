//! The one integration test binary: each module tests one area through `spawn_app()` (HTTP)
//! or the store directly, on SQLite and PostgreSQL; `tidy` reads the source tree itself.

mod audit;
mod crud;
mod directory;
mod docs;
mod errors;
mod external_issuer;
mod faults;
mod fixtures;
mod formats;
mod helpers;
mod idempotency;
mod metrics;
mod openapi;
mod processes;
mod profiles;
mod readme;
mod reference_tenancy;
mod replicas;
mod request_bounds;
mod sandbox;
mod search;
mod search_safety;
mod search_walks;
mod security;
mod shutdown;
mod store_contract;
mod subscriptions;
mod tidy;
mod topology;
mod transactions;
mod webhook_receiver;
mod workflow;
mod workflow_guards;
