//! Search (R4 search.html): `GET [type]?…` and `POST [type]/_search`. Parses the request,
//! fixes the traversal's horizon, reads one page in the caller's tenancy with its includes
//! and total, and says where the next and previous pages start.
//!
//! # Polling never misses a change: the settle rule
//!
//! `meta.lastUpdated` is stamped before the write commits (`ResourceService::prepare_write`),
//! and writes do not commit in stamp order: the SQLite group-commit writer may apply requests
//! in another order than they were stamped, and PostgreSQL transactions commit in any order.
//! A poller asking `Task?requester=…&_lastUpdated=gt<T>` with the largest `lastUpdated` it has
//! seen could therefore skip a version stamped before `T` that committed after its poll.
//! linkbridge closes that gap with a settle window `W` (`settle_window_ms`, default 5 s):
//!
//! 1. **Writers**: the store refuses to commit a resource write whose `last_updated` is more
//!    than `W/2` old when it is applied, checked again just before COMMIT
//!    (`StoreError::SettleWindowPassed`, answered 503 with `Retry-After`; a retry is stamped
//!    afresh).
//! 2. **Readers**: a search that tests `_lastUpdated` returns only rows with
//!    `last_updated <= H`, where the horizon `H = now - W` is fixed when its first page is
//!    read and carried by the paging cursor to every later page. A search only sorted by
//!    `_lastUpdated` is no poll (it has no `gt<T>` to miss a row by): it sees what was just
//!    written.
//!
//! Proof that a poller which reads every page of each poll and then polls again with
//! `gt<T>`, `T` the largest `lastUpdated` it has seen, never misses the latest version `v` of
//! a matching resource (stamped `L`): by rule 1, `v` passed its last check before COMMIT at
//! the latest at `L + W/2` (the remaining margin `W/2` covers the COMMIT itself and the clock
//! difference between replicas: the one timing assumption). Let poll `k` be the first whose horizon
//! `H_k = t_k - W` is `>= L`. Then `t_k >= L + W`, so `v` is visible to poll `k`. Every row
//! an earlier poll returned had `last_updated <= H_(k-1) < L`, hence `T_k < L`: `v` satisfies
//! `gt<T_k>` and `<= H_k`, and poll `k` returns it. The price is a delay: a change is seen by
//! polls that start at least `W` after it was stamped.
//!
//! # Stable paging
//!
//! Pages are keyset pages (sort key values plus id of the row next to the page, in
//! `_cursor`), never offsets. When the order is by `_id` alone (the default without
//! `_lastUpdated`), a row's position never changes, so every row that matches throughout the
//! traversal is returned exactly once. When the order uses a key that changes on update
//! (`_lastUpdated`, `status`, dates), the horizon fixed by the first page (`now - W` when
//! settled, else the first page's `now`) makes updated rows leave the traversal instead of
//! reappearing further on: no row is returned twice, and a row changed during the traversal
//! is the next poll's news (its new `lastUpdated` is after the horizon).

use std::collections::HashSet;
use std::time::Duration;

use super::ServiceError;
use crate::domain::instant::Instant;
use crate::domain::outcome::{Issue, IssueCode};
use crate::domain::resource_type::ResourceType;
use crate::domain::search_query::{
    parse_search, Cursor, Include, PageDirection, ParamRef, ParseContext, ParsedSearch, SortField, SortKey,
    SummaryMode, TotalMode,
};
use crate::domain::tenancy::Principal;
use crate::store::{Position, SearchHit, SearchPage, Store, StoredVersion};

/// At most this many resources are added per `_revinclude` and page: a referral with
/// thousands of Tasks must not make one page unbounded.
pub const REVINCLUDE_LIMIT: u32 = 1000;

/// Page sizes from configuration.
#[derive(Debug, Clone, Copy)]
pub struct PageLimits {
    /// `_count` when none is given.
    pub default_count: u32,
    /// The largest `_count` honoured; larger ones are capped, never refused.
    pub max_count: u32,
}

/// One search request as the HTTP layer received it.
#[derive(Debug, Clone, Copy)]
pub struct SearchRequest<'a> {
    /// URL parameters, then (for `POST _search`) body parameters, in order.
    pub params: &'a [(String, String)],
    /// Unknown parameters are refused; `false` under `Prefer: handling=lenient`.
    pub strict: bool,
    /// This server's base URL, for references given as absolute URLs.
    pub base_url: &'a str,
    /// The resource types the caller's token may read: included resources of other types are
    /// left out.
    pub readable: &'a [ResourceType],
}

/// One page of a search and what is needed to render it as a searchset Bundle.
#[derive(Debug, Clone)]
pub struct SearchResult {
    pub resource_type: ResourceType,
    /// `search.mode = match`, in order.
    pub matches: Vec<StoredVersion>,
    /// `search.mode = include`: targets of `_include`, sources of `_revinclude`.
    pub included: Vec<StoredVersion>,
    pub total: Option<u64>,
    /// The parameters used (for links), without `_count` and `_cursor`.
    pub link_params: Vec<(String, String)>,
    /// The page size used.
    pub count: u32,
    /// The cursor this page was read from (`None`: the first page).
    pub cursor: Option<Cursor>,
    pub next: Option<Cursor>,
    pub previous: Option<Cursor>,
    pub elements: Option<Vec<String>>,
    pub summary: SummaryMode,
    /// Parameters ignored as unknown.
    pub ignored: Vec<String>,
}

impl SearchResult {
    /// The query string of a link to this search at `cursor` (`None`: the first page).
    pub fn link_query(&self, cursor: Option<&Cursor>) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in &self.link_params {
            query.append_pair(name, value);
        }
        query.append_pair("_count", &self.count.to_string());
        if let Some(cursor) = cursor {
            query.append_pair("_cursor", &cursor.encode());
        }
        query.finish()
    }
}

/// The search use case over one store.
#[derive(Clone)]
pub struct SearchService {
    store: Store,
}

impl SearchService {
    pub fn new(store: Store) -> Self {
        SearchService { store }
    }

    /// `GET [type]?…` / `POST [type]/_search`: one page of `resource_type` resources the
    /// caller may see.
    pub async fn search_resources(
        &self,
        caller: &Principal,
        resource_type: ResourceType,
        request: &SearchRequest<'_>,
        limits: PageLimits,
    ) -> Result<SearchResult, ServiceError> {
        let now = Instant::now();
        let context = ParseContext { base_url: request.base_url, strict: request.strict, now };
        let parsed = parse_search(resource_type, request.params, &context).map_err(ServiceError::Invalid)?;
        check_chains_are_readable(&parsed, request.readable)?;
        let count = u32::try_from(parsed.count.unwrap_or(u64::from(limits.default_count)))
            .unwrap_or(u32::MAX)
            .min(limits.max_count);
        let sort = effective_sort(&parsed);
        let horizon = self.horizon(&parsed, &sort, now);
        let scope = caller.scope();

        let mut result = SearchResult {
            resource_type,
            matches: Vec::new(),
            included: Vec::new(),
            total: None,
            link_params: parsed.used.clone(),
            count,
            cursor: parsed.cursor.clone(),
            next: None,
            previous: None,
            elements: parsed.elements.clone(),
            summary: parsed.summary,
            ignored: parsed.ignored.clone(),
        };
        if parsed.summary == SummaryMode::Count {
            result.total = Some(self.store.count_matches(&scope, &parsed.query, horizon).await?);
            return Ok(result);
        }

        let position = parsed.cursor.as_ref().map(|c| Position { direction: c.direction, keys: &c.keys, id: &c.id });
        let page = SearchPage {
            query: &parsed.query,
            sort: &sort,
            horizon,
            position,
            // One more than the page, to learn whether there is a page beyond it.
            limit: count.saturating_add(1),
        };
        let hits = if count == 0 && parsed.cursor.is_none() {
            Vec::new()
        } else {
            self.store.search_page(&scope, &page).await?
        };
        let PageOfHits { hits, more_beyond, next, previous } =
            page_of_hits(hits, count, parsed.cursor.as_ref(), horizon);
        (result.next, result.previous) = (next, previous);
        result.total = match parsed.total {
            TotalMode::Accurate => Some(self.store.count_matches(&scope, &parsed.query, horizon).await?),
            // The whole result is on this first page: its size is the total, for free.
            TotalMode::None if parsed.cursor.is_none() && !more_beyond && count > 0 => Some(hits.len() as u64),
            TotalMode::None => None,
        };
        result.matches = hits.into_iter().map(|hit| hit.version).collect();
        result.included = self.included(caller, &parsed, &result.matches, request.readable).await?;
        Ok(result)
    }

    /// The latest `last_updated` this traversal may return (see the module documentation).
    /// Only a poll, a search that filters by `_lastUpdated`, waits for the settle window; one
    /// merely sorted by it sees what was just written (its horizon is its first page's `now`).
    fn horizon(&self, parsed: &ParsedSearch, sort: &[SortKey], now: Instant) -> Option<Instant> {
        let settled = parsed.query.uses_last_updated();
        let settle_bound = Instant::from_micros(now.micros() - micros(self.store.settle_window()));
        if let Some(cursor) = &parsed.cursor {
            // The first page fixed the horizon. A cursor cannot see past what a fresh search
            // would see: a forged horizon would only break the settle rule for its forger,
            // but capping it costs nothing.
            return cursor.horizon.map(|h| {
                let bound = if settled { settle_bound } else { now };
                Instant::from_micros(h.min(bound.micros()))
            });
        }
        if settled {
            Some(settle_bound)
        } else if sort.iter().any(|k| k.field.is_mutable()) {
            Some(now)
        } else {
            None
        }
    }

    /// The `_include` targets and `_revinclude` sources of a page, in the caller's tenancy,
    /// each resource once and none that is already a match (R4 search.html#include).
    async fn included(
        &self,
        caller: &Principal,
        parsed: &ParsedSearch,
        matches: &[StoredVersion],
        readable: &[ResourceType],
    ) -> Result<Vec<StoredVersion>, ServiceError> {
        if matches.is_empty() || (parsed.includes.is_empty() && parsed.revincludes.is_empty()) {
            return Ok(Vec::new());
        }
        let scope = caller.scope();
        let ids: Vec<&str> = matches.iter().map(|m| m.id.as_str()).collect();
        let mut seen: HashSet<(ResourceType, String)> =
            matches.iter().map(|m| (m.resource_type, m.id.as_str().to_owned())).collect();
        let mut included = Vec::new();
        let mut keep = |version: StoredVersion, included: &mut Vec<StoredVersion>| {
            if seen.insert((version.resource_type, version.id.as_str().to_owned())) {
                included.push(version);
            }
        };
        for include in &parsed.includes {
            let target_types = reachable(include, readable);
            for version in self.store.included(&scope, include.param, &target_types, &ids).await? {
                keep(version, &mut included);
            }
        }
        for revinclude in &parsed.revincludes {
            if !readable.contains(&revinclude.source) {
                continue;
            }
            let sources = self
                .store
                .referencing(&scope, revinclude.param, parsed.query.resource_type, &ids, REVINCLUDE_LIMIT)
                .await?;
            for version in sources {
                keep(version, &mut included);
            }
        }
        Ok(included)
    }
}

/// A chain reads the resources at its other end: the caller's token must allow reading them,
/// as it must for an `_include` of them, or the chain would tell it what it may not read.
fn check_chains_are_readable(parsed: &ParsedSearch, readable: &[ResourceType]) -> Result<(), ServiceError> {
    for clause in &parsed.query.clauses {
        if let ParamRef::Chained(chain) = clause.param {
            let other_end = chain.other_end();
            if !readable.contains(&other_end) {
                return Err(ServiceError::ForbiddenAt(
                    Issue::error(
                        IssueCode::Forbidden,
                        format!("'{}' reads {other_end} resources, which this token may not read", chain.name),
                    )
                    .at(chain.name.to_owned()),
                ));
            }
        }
    }
    Ok(())
}

/// The target types of an include the caller may read.
fn reachable(include: &Include, readable: &[ResourceType]) -> Vec<ResourceType> {
    include.target_types().into_iter().filter(|t| readable.contains(t)).collect()
}

/// The order of the traversal: as asked; else by `_lastUpdated` when the search tests it (the
/// polling order: a poller sees changes oldest first); else by id alone (the store adds the
/// id as tie-breaker in every case).
fn effective_sort(parsed: &ParsedSearch) -> Vec<SortKey> {
    if !parsed.sort.is_empty() {
        return parsed.sort.clone();
    }
    if parsed.query.uses_last_updated() {
        return vec![SortKey { field: SortField::LastUpdated, descending: false }];
    }
    Vec::new()
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// A page read with one row more than asked for: the page itself, whether more lie beyond it
/// in the direction read, and the cursors to the pages after and before it.
struct PageOfHits {
    hits: Vec<SearchHit>,
    more_beyond: bool,
    next: Option<Cursor>,
    previous: Option<Cursor>,
}

/// Trims `hits` (read with one extra row) to `count` and writes the cursors around them, each
/// carrying the traversal's `horizon`.
fn page_of_hits(mut hits: Vec<SearchHit>, count: u32, cursor: Option<&Cursor>, horizon: Option<Instant>) -> PageOfHits {
    let backwards = cursor.is_some_and(|c| c.direction == PageDirection::Before);
    let more_beyond = hits.len() > count as usize;
    if more_beyond {
        // Reading backwards, the extra row is the farthest back: the first one.
        if backwards {
            hits.remove(0);
        } else {
            hits.truncate(count as usize);
        }
    }
    let h = horizon.map(Instant::micros);
    let at = |direction, hit: &SearchHit| Cursor {
        direction,
        horizon: h,
        keys: hit.keys.clone(),
        id: hit.version.id.as_str().to_owned(),
    };
    let (first, last) = (hits.first(), hits.last());
    let next = match (backwards, last) {
        (false, Some(last)) if more_beyond => Some(at(PageDirection::After, last)),
        (true, Some(last)) => Some(at(PageDirection::After, last)),
        _ => None,
    };
    let previous = match (cursor.is_some(), backwards, first) {
        (true, false, Some(first)) => Some(at(PageDirection::Before, first)),
        (true, true, Some(first)) if more_beyond => Some(at(PageDirection::Before, first)),
        _ => None,
    };
    PageOfHits { hits, more_beyond, next, previous }
}
