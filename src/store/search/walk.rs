//! Which way a page's rows are found, so that a search costs what its page costs.
//!
//! A page is read either from a small set sorted whole, or by walking an index in the page's
//! own order and testing each row until the page is full. Which is cheaper depends on how many
//! rows each side holds, which neither database can be trusted to know (SQLite has no
//! statistics; PostgreSQL's lag a table that grows): a CLW service's inbox
//! (`owner:identifier=…&status=requested`) is a few rows of a huge `status` when the backlog is
//! small, and a few rows of a huge `owner` when the service holds most of it. So before a page
//! is read, one statement counts each candidate's rows up to [`SMALL_SET`]:
//!
//! - a candidate under it (a clause's index rows, or the resources the caller may see) is
//!   the driver: read whole and sorted, or walked by id, it costs at most that many rows;
//! - when every candidate is large, the page is walked in its order (by id along the most
//!   selective clause's index, or along the resources or a date parameter's index), every
//!   other test made per row: the rows walked are then about the page divided by the share of
//!   rows that pass, which does not grow with the rows that do not. Where two clauses could be
//!   walked, a second count up to [`LARGE_SET`] picks the one with fewer rows.
//!
//! Searches on `_lastUpdated` and those sorted by it always walk `last_updated` (a poll's few
//! recent rows).

use sqlx::Row;

use super::{clause_ids, driver_clause, driver_rank, full_order, page_statement, Drive, SearchHit, SearchPage, Sql};
use crate::domain::search_params::{ParamKind, SearchParam};
use crate::domain::search_query::{
    Clause, PageDirection, ParamRef, Predicate, SearchQuery, SortField, SortKey, SortValue,
};
use crate::domain::tenancy::TenantScope;
use crate::store::param_keys::row_keys;
use crate::store::{Store, StoreError};

/// Up to how many rows each candidate driver is counted; a set under it is small enough to
/// read whole (a few hundred index entries cost about what a page's probes cost).
pub const SMALL_SET: i64 = 256;

/// Up to how many rows the clauses a page can be walked along are counted when every
/// candidate is over [`SMALL_SET`]: to walk the smaller. Counted only then, at about 40 ns an
/// index entry on SQLite.
pub const LARGE_SET: i64 = 8 * SMALL_SET;

/// Where a page's rows come from (chosen by [`Store::choose_walk`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// The resources clause `n` of the query matches (its index rows): walked in id order
    /// where the page is in id order and the clause's index keeps it, otherwise read whole.
    Clause(usize),
    /// The resources the caller may see, read whole: a caller who sees few.
    Visible,
    /// Along the page's order itself: the resources by id or by `last_updated`, or a date
    /// parameter's index, every test made on each row walked.
    Order,
}

/// The statement form a page is read with.
#[derive(Debug, Clone, Copy)]
pub(super) enum Shape {
    /// Along `resources (resource_type, last_updated, id)`: polls and `_sort=_lastUpdated`.
    AlongLastUpdated,
    /// A set (a clause's ids, the resources of the type, or the visible ids), sorted.
    Set(Drive),
    /// Along clause `n`'s index in id order.
    ClauseById(usize),
    /// Along the resources' key in id order.
    ById,
    /// Along a date parameter's index; then, if the page is not full, [`Shape::Undated`].
    Dated { param: &'static SearchParam, descending: bool },
    /// The resources without a value of the date parameter, in id order: they sort after the
    /// dated ones.
    Undated { param: &'static SearchParam, descending: bool },
}

/// Whether a page is read along `last_updated`.
fn along_last_updated(page: &SearchPage<'_>) -> bool {
    page.query.uses_last_updated() || page.sort.first().is_some_and(|k| k.field == SortField::LastUpdated)
}

/// Whether clause `n` can be walked in id order: one positive test whose index holds, for
/// its one parameter key and value, the ids in order (a token's code, a typed reference, a
/// reference's identifier).
fn walks_by_id(query: &SearchQuery, n: usize) -> bool {
    let Some(clause) = query.clauses.get(n) else { return false };
    let (ParamRef::Registered(p), [predicate]) = (clause.param, clause.any_of.as_slice()) else { return false };
    !clause.negated
        && row_keys(p).count() == 1
        && matches!(
            predicate,
            Predicate::Token { code: Some(_), .. }
                | Predicate::Reference { target_type: Some(_), .. }
                | Predicate::ReferenceIdentifier { .. }
        )
}

/// The drivers worth counting, most selective kind first: each positive clause of one indexed
/// equality (or a forward chain), then the caller's visible set.
fn candidates(query: &SearchQuery, scope: &TenantScope) -> Vec<Walk> {
    let mut ranked: Vec<(u8, usize)> =
        (0..query.clauses.len()).filter_map(|n| candidate_rank(query, n).map(|rank| (rank, n))).collect();
    ranked.sort_unstable();
    let mut walks: Vec<Walk> = ranked.into_iter().map(|(_, i)| Walk::Clause(i)).collect();
    if matches!(scope, TenantScope::Keys(keys) if !keys.is_empty()) {
        walks.push(Walk::Visible);
    }
    walks
}

/// How selective clause `n` is likely to be as a driver, best first; `None` where it cannot
/// drive (negated, several alternatives, a range or a presence test).
pub(super) fn candidate_rank(query: &SearchQuery, n: usize) -> Option<u8> {
    let clause = query.clauses.get(n).filter(|c| !c.negated)?;
    match (clause.param, clause.any_of.as_slice()) {
        (ParamRef::Registered(_), [one]) => driver_rank(one),
        (ParamRef::Chained(chain), _) if !chain.reverse => Some(1),
        _ => None,
    }
}

/// The date parameter a page's order can be walked along: sorted by one date parameter (then
/// the id), read forwards.
fn date_walk(page: &SearchPage<'_>) -> Option<(&'static SearchParam, bool)> {
    let order = full_order(page.sort);
    let backwards = page.position.is_some_and(|p| p.direction == PageDirection::Before);
    match order.as_slice() {
        [SortKey { field: SortField::Param(p), descending }, _]
            if p.kind == ParamKind::Date && row_keys(p).count() == 1 && !backwards =>
        {
            Some((*p, *descending))
        }
        _ => None,
    }
}

/// The statement form of `page` read by `walk`.
pub(super) fn shape_of(page: &SearchPage<'_>, walk: Walk) -> Shape {
    if along_last_updated(page) {
        return Shape::AlongLastUpdated;
    }
    let by_id = full_order(page.sort)[0].field == SortField::Id;
    // A walk that cannot drive this query (a negated clause, or the visible set of a caller who
    // sees everything) reads along the order instead.
    let walk = match walk {
        Walk::Clause(n) if candidate_rank(page.query, n).is_none() => Walk::Order,
        _ => walk,
    };
    match walk {
        Walk::Clause(n) if by_id && walks_by_id(page.query, n) => Shape::ClauseById(n),
        Walk::Clause(n) => Shape::Set(Drive::Set(Some(n))),
        Walk::Visible => Shape::Set(Drive::Visible),
        Walk::Order if by_id => Shape::ById,
        Walk::Order => match date_walk(page) {
            Some((param, descending)) => {
                let in_tail = page
                    .position
                    .is_some_and(|p| matches!(p.keys, [SortValue::Int(v)] if *v == super::undated(descending)));
                if in_tail {
                    Shape::Undated { param, descending }
                } else {
                    Shape::Dated { param, descending }
                }
            }
            // Sorted by a token or a string, or backwards by a date: the whole match set,
            // sorted (the cost docs/searching.md names).
            None => Shape::Set(Drive::Set(driver_clause(page.query))),
        },
    }
}

/// The walk the writer's searches take (conditional creates, `NoMatchRequired`): they have no
/// sort, and their criteria (an identifier) are selective, so no count is spent on them.
pub(super) fn walk_without_counting(query: &SearchQuery) -> Walk {
    driver_clause(query).map_or(Walk::Order, Walk::Clause)
}

/// The rows a count of clause `clause` reads: its ids, but for a code or a reference's
/// identifier, by the value alone, so that the count reads only the index (a system test
/// would read a table row for each entry). A count a system would narrow only overstates.
fn counted_ids(sql: &mut Sql, scope: &TenantScope, clause: &Clause) -> Result<String, StoreError> {
    if let (ParamRef::Registered(p), [predicate]) = (clause.param, clause.any_of.as_slice()) {
        let value = match predicate {
            Predicate::Token { code: Some(code), .. } => Some(("x.code", code.as_str())),
            Predicate::ReferenceIdentifier { value, .. } => Some(("x.identifier_value", value.as_str())),
            _ => None,
        };
        if let Some((column, value)) = value {
            let value = sql.text(value)?;
            return Ok(format!(
                "SELECT x.id FROM {} x WHERE {} AND {column} = {value}",
                super::index_table(p.kind),
                super::key_test("x", p)
            ));
        }
    }
    clause_ids(sql, scope, clause)
}

/// The walk with the fewest rows under `cap`; the first of equals, as walks come most
/// selective kind first.
fn smallest_under(walks: &[Walk], counts: &[i64], cap: i64) -> Option<Walk> {
    walks.iter().zip(counts).filter(|(_, n)| **n < cap).min_by_key(|(_, n)| **n).map(|(w, _)| *w)
}

impl Store {
    /// Chooses where `page`'s rows come from: see the module documentation. One statement
    /// counts the candidates, each up to [`SMALL_SET`] rows, unless the choice needs no count.
    pub async fn choose_walk(&self, scope: &TenantScope, page: &SearchPage<'_>) -> Result<Walk, StoreError> {
        if along_last_updated(page) {
            return Ok(Walk::Order);
        }
        let candidates = candidates(page.query, scope);
        let by_id = full_order(page.sort)[0].field == SortField::Id;
        // The candidates a page in id order can be walked along, most selective kind first.
        let streams: Vec<Walk> = candidates
            .iter()
            .copied()
            .filter(|w| by_id && matches!(w, Walk::Clause(n) if walks_by_id(page.query, *n)))
            .collect();
        match candidates.as_slice() {
            [] => return Ok(Walk::Order),
            // Walked in the page's order, a lone clause costs no more than its set would.
            [only] if streams.first() == Some(only) => return Ok(*only),
            _ => {}
        }
        let counts = self.count_capped(scope, page.query, &candidates, SMALL_SET).await?;
        if let Some(walk) = smallest_under(&candidates, &counts, SMALL_SET) {
            return Ok(walk);
        }
        let Some(&most_selective) = streams.first() else { return Ok(Walk::Order) };
        // Every set is large: the walk goes along the clause with the fewest rows, where a
        // larger count tells them apart (a small service's every Task against the open
        // backlog), else along the most selective kind.
        if streams.len() > 1 {
            let counts = self.count_capped(scope, page.query, &streams, LARGE_SET).await?;
            if let Some(walk) = smallest_under(&streams, &counts, LARGE_SET) {
                return Ok(walk);
            }
        }
        Ok(most_selective)
    }

    /// How many rows each of `walks` holds, counted up to `cap`, in one statement.
    async fn count_capped(
        &self,
        scope: &TenantScope,
        query: &SearchQuery,
        walks: &[Walk],
        cap: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let mut sql = Sql::new(self.kind());
        let mut counts = Vec::with_capacity(walks.len());
        for (i, walk) in walks.iter().enumerate() {
            let rows = match walk {
                Walk::Clause(n) => counted_ids(&mut sql, scope, &query.clauses[*n])?,
                Walk::Visible => sql.visible_ids(scope, query.resource_type)?,
                Walk::Order => return Err(StoreError::Internal("an order walk has no set to count".to_owned())),
            };
            let cap = sql.int(cap)?;
            counts.push(format!("(SELECT COUNT(*) FROM ({rows} LIMIT {cap}) c{i}) AS n{i}"));
        }
        let text = format!("SELECT {}", counts.join(", "));
        let row = self.bounded_read(async |conn| sqlx::query_with(&text, sql.args).fetch_one(conn).await).await?;
        (0..walks.len()).map(|i| Ok(row.try_get::<i64, _>(i)?)).collect()
    }

    /// One page of live resources matching the query, in the caller's tenancy, in the order
    /// asked for (reversed back to it when read backwards from a `previous` cursor).
    pub async fn search_page(&self, scope: &TenantScope, page: &SearchPage<'_>) -> Result<Vec<SearchHit>, StoreError> {
        let walk = self.choose_walk(scope, page).await?;
        self.search_page_as(scope, page, walk).await
    }

    /// [`Store::search_page`] read by a given walk: every walk reads the same page, at its own
    /// cost. For the tests that hold the walks to one answer.
    pub async fn search_page_as(
        &self,
        scope: &TenantScope,
        page: &SearchPage<'_>,
        walk: Walk,
    ) -> Result<Vec<SearchHit>, StoreError> {
        let walk = match (walk, scope) {
            (Walk::Visible, TenantScope::Everything) => Walk::Order,
            _ => walk,
        };
        let shape = shape_of(page, walk);
        let mut hits = self.read_shape(scope, page, shape).await?;
        if let Shape::Dated { param, descending } = shape {
            let wanted = usize::try_from(page.limit).unwrap_or(usize::MAX);
            if hits.len() < wanted {
                // The dated rows ran out: the undated follow, from the first.
                let remaining = u32::try_from(wanted - hits.len()).unwrap_or(u32::MAX);
                let tail = SearchPage { position: None, limit: remaining, ..page.clone() };
                hits.extend(self.read_shape(scope, &tail, Shape::Undated { param, descending }).await?);
            }
        }
        if page.position.is_some_and(|p| p.direction == PageDirection::Before) {
            hits.reverse();
        }
        Ok(hits)
    }

    async fn read_shape(
        &self,
        scope: &TenantScope,
        page: &SearchPage<'_>,
        shape: Shape,
    ) -> Result<Vec<SearchHit>, StoreError> {
        let mut sql = Sql::new(self.kind());
        let (text, keys) = page_statement(&mut sql, scope, page, shape)?;
        let rows = self.bounded_read(async |conn| sqlx::query_with(&text, sql.args).fetch_all(conn).await).await?;
        rows.iter().map(|row| super::hit_from_row(row, &keys)).collect()
    }

    /// The database's plan for a page read by `walk` (both statements of a walk along a date
    /// parameter), as [`Store::explain_search`] gives it. For the plan regression tests.
    pub async fn explain_search_as(
        &self,
        scope: &TenantScope,
        page: &SearchPage<'_>,
        walk: Walk,
    ) -> Result<Vec<String>, StoreError> {
        let shape = shape_of(page, walk);
        let mut plan = self.explain_shape(scope, page, shape).await?;
        if let Shape::Dated { param, descending } = shape {
            plan.extend(self.explain_shape(scope, page, Shape::Undated { param, descending }).await?);
        }
        Ok(plan)
    }

    async fn explain_shape(
        &self,
        scope: &TenantScope,
        page: &SearchPage<'_>,
        shape: Shape,
    ) -> Result<Vec<String>, StoreError> {
        let mut sql = Sql::new(self.kind());
        let (text, _) = page_statement(&mut sql, scope, page, shape)?;
        self.explain(&text, sql).await
    }
}
