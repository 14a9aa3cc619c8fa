//! A resource's versions as every layer sees them: one stored version as served
//! ([`StoredVersion`]), how it came about ([`WriteMethod`]) and which of them a history asks
//! for ([`HistoryQuery`]).
//!
//! These are plain values: the store produces and takes them, the services pass them on, and
//! `http` renders them into Bundles. They live here rather than in `store` so that `http` can
//! name them without naming the store, and rather than behind a service type of their own
//! because a copy of the same fields would only add a conversion on every read.

use super::ids::{ResourceId, VersionId};
use super::instant::Instant;
use super::resource_type::ResourceType;

/// How a resource version came about; recorded for history bundles (`entry.request.method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMethod {
    /// `POST`: the server names the new resource, with an id it has just generated (FHIR
    /// create ignores any id the client sends; a client-named create is an `Update`).
    Create,
    Update,
    Patch,
    Delete,
}

impl WriteMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMethod::Create => "POST",
            WriteMethod::Update => "PUT",
            WriteMethod::Patch => "PATCH",
            WriteMethod::Delete => "DELETE",
        }
    }

    pub fn from_stored(raw: &str) -> WriteMethod {
        match raw {
            "POST" => WriteMethod::Create,
            "PATCH" => WriteMethod::Patch,
            "DELETE" => WriteMethod::Delete,
            _ => WriteMethod::Update,
        }
    }
}

/// One stored version of a resource, as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    pub resource_type: ResourceType,
    pub id: ResourceId,
    pub version: VersionId,
    pub last_updated: Instant,
    pub deleted: bool,
    pub method: WriteMethod,
    /// The JSON text with `id` and `meta`; empty for a deletion.
    pub body: String,
    /// Position in the global change sequence (history paging).
    pub change_seq: i64,
}

/// Which history entries to return, newest first.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Only versions changed after this instant (`_since`, exclusive per R4 http.html#history
    /// "changed at or after": we include equal timestamps).
    pub since: Option<Instant>,
    /// Only versions older than this position in the change sequence (paging cursor).
    pub before_seq: Option<i64>,
    pub count: u32,
}
