//! linkbridge: the FHIR R4 exchange for social prescribing referrals.
//! See ARCHITECTURE.md for the map.

pub mod admin;
pub mod auth;
pub mod config;
pub mod domain;
pub mod fhir;
pub mod http;
pub mod metrics;
pub mod profiles;
pub mod sandbox;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
