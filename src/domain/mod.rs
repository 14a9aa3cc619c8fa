//! Pure rules of the referral exchange: resource types, identities, tenancy and the search
//! parameter registry, subscriptions and webhooks. Nothing in `domain` does IO.

pub mod audit;
pub mod identifiers;
pub mod ids;
pub mod instant;
pub mod notification;
pub mod ods;
pub mod outcome;
pub mod patch;
pub mod references;
pub mod referral_request;
pub mod resource_type;
pub mod search_params;
pub mod search_query;
pub mod subscriptions;
pub mod task_workflow;
pub mod tenancy;
pub mod versions;
pub mod webhook;
