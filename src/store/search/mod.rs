//! Turns a [`SearchQuery`] into SQL over the index tables, inside the caller's tenancy.
//!
//! Every clause becomes `r.id IN (SELECT x.id FROM idx_… x WHERE …)` (negated with `NOT`):
//! the planner of either database can then drive the query from the index of the most
//! selective clause, or from `resources (resource_type, last_updated, id)` for `_lastUpdated`.
//! Every value is bound; only column names, operators and parameter keys (integers computed
//! here) are written into the SQL. Paging is keyset paging: the sort key values and id of the
//! row next to the page, never an offset, so rows written between two pages cannot shift the
//! rows of the next one.

mod walk;

use walk::{candidate_rank, shape_of, walk_without_counting, Shape};
pub use walk::{Walk, SMALL_SET};

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{AnyConnection, Arguments, Row};

use super::param_keys::row_keys;
use super::reads::{bind_error, scope_filter_with, version_from_row, visible_ids_with, ConditionalKey};
use super::rows::Dialect;
use super::write_set::{NoMatchRequired, WriteSet};
use super::{BackendKind, Store, StoreError};
use crate::domain::ids::ResourceId;
use crate::domain::instant::Instant;
use crate::domain::resource_type::ResourceType;
use crate::domain::search_params::{normalise_string, Chain, ParamKind, SearchParam};
use crate::domain::search_query::{
    Clause, DatePrefix, PageDirection, ParamRef, Predicate, SearchQuery, SortField, SortKey, SortValue, StringMatch,
    SystemMatch,
};
use crate::domain::tenancy::TenantScope;
use crate::domain::versions::StoredVersion;

/// The columns of a resource row a lateral subquery passes out as `r`.
const RESOURCE_ROW: &str = "r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, r.body, r.change_seq";

/// The columns of a [`StoredVersion`] read from `resources r`.
const VERSION_COLUMNS: &str = "r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, \
                               'PUT' AS method, r.body, r.change_seq";

/// A page to read: which rows, in which order, from which position.
#[derive(Debug, Clone)]
pub struct SearchPage<'a> {
    pub query: &'a SearchQuery,
    /// The order asked for; the store appends `_id` as the final tie-breaker unless present.
    pub sort: &'a [SortKey],
    /// Only rows whose `last_updated` is at or before this instant.
    pub horizon: Option<Instant>,
    /// Rows strictly after (or before) this position in the order.
    pub position: Option<Position<'a>>,
    pub limit: u32,
}

/// A keyset position: the values of the sort keys (without the final `_id`) and the id.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    pub direction: PageDirection,
    pub keys: &'a [SortValue],
    pub id: &'a str,
}

/// One matching row with the values of its sort keys (without the final `_id`), so that
/// the caller can write the cursor of the row.
#[derive(Debug, Clone)]
pub struct SearchHit {
    pub version: StoredVersion,
    pub keys: Vec<SortValue>,
}

/// What [`Store::conditional_lookup`] found: the id the key points at now (a claim to take
/// over if its resource no longer matches), and the ids of live matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionalLookup {
    pub claimed: Option<String>,
    pub matches: Vec<ResourceId>,
}

/// Bound arguments and the next `$n`, for one database's dialect; or, where one statement
/// tests many searches of one shape, the values written as columns of a row instead (see
/// [`Sql::over_row`]).
struct Sql {
    args: AnyArguments<'static>,
    next: usize,
    backend: BackendKind,
    row: Option<RowValues>,
    probed: ProbedRow,
}

/// The row a per-row probe ([`Probe::PerRow`]) tests, as SQL expressions of its type and id.
#[derive(Clone)]
struct ProbedRow {
    resource_type: String,
    id: &'static str,
}

impl ProbedRow {
    /// The resource read, `r`.
    fn resource() -> Self {
        ProbedRow { resource_type: "r.resource_type".to_owned(), id: "r.id" }
    }
}

/// The values of one search, each written into the statement as a column of the JSON array
/// `source` (`(c.x->>2)`), and kept here in order to become that array.
struct RowValues {
    source: &'static str,
    values: Vec<serde_json::Value>,
}

impl RowValues {
    /// Keeps `value` as the next column and returns how the statement reads it as text.
    fn column(&mut self, value: serde_json::Value) -> String {
        self.values.push(value);
        format!("({}->>{})", self.source, self.values.len() - 1)
    }
}

impl Sql {
    fn new(backend: BackendKind) -> Self {
        Sql { args: AnyArguments::default(), next: 1, backend, row: None, probed: ProbedRow::resource() }
    }

    /// Makes the per-row probes written from now on test the index row a walk is at (`id`, of
    /// `resource_type`) instead of the resource read: the database then makes them before it
    /// reads the resource, so that a row walked and rejected costs its index probes only (on
    /// SQLite, a tenth of reading its resource first).
    fn probe_walked(&mut self, resource_type: ResourceType, id: &'static str) -> Result<(), StoreError> {
        self.probed = ProbedRow { resource_type: self.text(resource_type.as_str())?, id };
        Ok(())
    }

    /// A PostgreSQL statement whose values are the columns of `source`, a JSON array of one
    /// row of many the statement runs over: its text is then the same for every search of one
    /// shape, whatever the values (see [`write_sets_with_matches`]).
    fn over_row(source: &'static str) -> Self {
        Sql { row: Some(RowValues { source, values: Vec::new() }), ..Sql::new(BackendKind::Postgres) }
    }

    /// The index hint that makes SQLite read an index table's rows of one resource by its id
    /// (`<table>_owner`): where a probe tests only the parameter (presence, a date's smallest
    /// value), SQLite without statistics prefers the parameter's index and walks its every row.
    fn by_owner(&self, table: &str) -> String {
        match self.backend {
            BackendKind::Sqlite => format!(" INDEXED BY {table}_owner"),
            BackendKind::Postgres => String::new(),
        }
    }

    /// What ends the subquery of a per-row probe ([`Probe::PerRow`]). PostgreSQL turns a
    /// correlated `EXISTS` into a semi-join and, without fresh statistics (a table that grew
    /// since the last ANALYZE, or autovacuum off), may drive the join from the other side or
    /// probe without the id: 40 ms instead of 0.3 ms for a poll over 10,000 Tasks. `OFFSET 0`
    /// keeps the subquery a per-row SubPlan whose index condition always includes the id.
    /// SQLite always runs a correlated `EXISTS` per row.
    fn per_row_fence(&self) -> &'static str {
        match self.backend {
            BackendKind::Postgres => " OFFSET 0",
            BackendKind::Sqlite => "",
        }
    }

    /// The caller's tenancy on the resources `r`: a set the planner may drive from (`Probe::Set`),
    /// or tested for each row read (`Probe::PerRow`: fenced, see [`Sql::per_row_fence`]).
    /// Per row, it tests the probed row ([`Sql::probe_walked`]).
    fn tenancy(&mut self, scope: &TenantScope, probe: Probe) -> Result<String, StoreError> {
        let ProbedRow { resource_type, id } = match probe {
            Probe::Set => ProbedRow::resource(),
            Probe::PerRow => self.probed.clone(),
        };
        self.tenancy_with(scope, (&resource_type, id), probe)
    }

    /// [`Sql::tenancy`] on the resources of another alias (the other end of a chain).
    fn tenancy_of(&mut self, alias: &str, scope: &TenantScope, probe: Probe) -> Result<String, StoreError> {
        self.tenancy_with(scope, (&format!("{alias}.resource_type"), &format!("{alias}.id")), probe)
    }

    fn tenancy_with(&mut self, scope: &TenantScope, row: (&str, &str), probe: Probe) -> Result<String, StoreError> {
        let fence = match probe {
            Probe::Set => "",
            Probe::PerRow => self.per_row_fence(),
        };
        Ok(scope_filter_with(scope, row, fence, |key| self.text(key))?.sql)
    }

    /// `SELECT v.id …`: the ids of `resource_type` the caller may see (not distinct), to drive
    /// a search from ([`Drive::Visible`]) or to count. SQLite is told the index by key:
    /// without statistics it would walk the visibility rows of the whole type.
    fn visible_ids(&mut self, scope: &TenantScope, resource_type: ResourceType) -> Result<String, StoreError> {
        let hint = match self.backend {
            BackendKind::Sqlite => " INDEXED BY resource_visibility_key",
            BackendKind::Postgres => "",
        };
        let resource_type = self.text(resource_type.as_str())?;
        visible_ids_with(scope, &resource_type, hint, |key| self.text(key))
    }

    fn placeholder(&mut self) -> String {
        let p = format!("${}", self.next);
        self.next += 1;
        p
    }

    fn text(&mut self, value: impl Into<String>) -> Result<String, StoreError> {
        if let Some(row) = &mut self.row {
            return Ok(row.column(serde_json::Value::String(value.into())));
        }
        self.args.add(value.into()).map_err(bind_error)?;
        Ok(self.placeholder())
    }

    fn int(&mut self, value: i64) -> Result<String, StoreError> {
        if let Some(row) = &mut self.row {
            return Ok(format!("{}::bigint", row.column(serde_json::Value::from(value))));
        }
        self.args.add(value).map_err(bind_error)?;
        Ok(self.placeholder())
    }

    fn list<'v>(&mut self, values: impl Iterator<Item = &'v str>) -> Result<String, StoreError> {
        let placeholders = values.map(|v| self.text(v)).collect::<Result<Vec<_>, _>>()?;
        Ok(placeholders.join(", "))
    }

    /// `($1), ($2)…`: the values as the rows of a `VALUES` list.
    fn rows<'v>(&mut self, values: impl Iterator<Item = &'v str>) -> Result<String, StoreError> {
        let placeholders =
            values.map(|v| Ok(format!("({})", self.text(v)?))).collect::<Result<Vec<_>, StoreError>>()?;
        Ok(placeholders.join(", "))
    }
}

/// The index table of a parameter type.
fn index_table(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::Token => "idx_token",
        ParamKind::Reference => "idx_reference",
        ParamKind::Date => "idx_date",
        ParamKind::String => "idx_string",
    }
}

/// `x.param_key = k`, or `x.param_key IN (…)`: the index rows (of alias `x`) that answer `p`
/// ([`SearchParam::row_params`]). The keys imply the type, so no test of the type goes with
/// them; they are integers computed here ([`super::param_keys`]), written into the statement.
fn key_test(alias: &str, p: &'static SearchParam) -> String {
    let keys: Vec<String> = row_keys(p).map(|key| key.to_string()).collect();
    match keys.as_slice() {
        [one] => format!("{alias}.param_key = {one}"),
        many => format!("{alias}.param_key IN ({})", many.join(", ")),
    }
}

/// The target types `p` is narrowed to where it reads the rows of a wider parameter (`patient`
/// answered from `subject`'s rows); `None` where its rows are its own.
fn narrowed_targets(p: &'static SearchParam) -> Option<impl Iterator<Item = &'static str>> {
    (!p.has_own_rows() && !p.targets.is_empty()).then(|| p.targets.iter().map(|t| t.as_str()))
}

/// `LIKE` pattern text with `%`, `_` and the escape character itself escaped.
fn like_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A token test on columns `system` and `code` (R4 search.html#token).
fn token_sql(
    sql: &mut Sql,
    system_column: &str,
    code_column: &str,
    system: &SystemMatch,
    code: Option<&str>,
) -> Result<String, StoreError> {
    let mut conditions = Vec::new();
    if let Some(code) = code {
        conditions.push(format!("{code_column} = {}", sql.text(code)?));
    }
    match system {
        SystemMatch::Any => {}
        SystemMatch::None => conditions.push(format!("{system_column} IS NULL")),
        SystemMatch::Exactly(s) => conditions.push(format!("{system_column} = {}", sql.text(s.as_str())?)),
    }
    if conditions.is_empty() {
        conditions.push("1 = 1".to_owned());
    }
    Ok(conditions.join(" AND "))
}

/// A date test of the value range `[low_col, high_col]` against the search range
/// `[low, high]` (R4 search.html#prefix: each prefix is defined on ranges).
fn date_sql(
    sql: &mut Sql,
    low_col: &str,
    high_col: &str,
    prefix: DatePrefix,
    low: i64,
    high: i64,
) -> Result<String, StoreError> {
    let contained = |sql: &mut Sql| -> Result<String, StoreError> {
        Ok(format!("({low_col} >= {} AND {high_col} <= {})", sql.int(low)?, sql.int(high)?))
    };
    Ok(match prefix {
        // The value's range lies within the search value's range.
        DatePrefix::Eq => contained(sql)?,
        DatePrefix::Ne => format!("NOT {}", contained(sql)?),
        // "the range above the search value intersects the range of the target value".
        DatePrefix::Gt => format!("{high_col} > {}", sql.int(high)?),
        DatePrefix::Lt => format!("{low_col} < {}", sql.int(low)?),
        // gt or eq, lt or eq.
        DatePrefix::Ge => format!("({high_col} > {} OR {})", sql.int(high)?, contained(sql)?),
        DatePrefix::Le => format!("({low_col} < {} OR {})", sql.int(low)?, contained(sql)?),
        // Starts after the end of the search range; ends before its start.
        DatePrefix::Sa => format!("{low_col} > {}", sql.int(high)?),
        DatePrefix::Eb => format!("{high_col} < {}", sql.int(low)?),
        // Overlaps the widened range.
        DatePrefix::Ap => format!("({low_col} <= {} AND {high_col} >= {})", sql.int(high)?, sql.int(low)?),
    })
}

/// The condition on one index row (alias `x`) for one predicate.
fn index_condition(sql: &mut Sql, predicate: &Predicate) -> Result<Option<String>, StoreError> {
    index_condition_on(sql, "x", predicate)
}

/// [`index_condition`] on the index rows of `alias`.
fn index_condition_on(sql: &mut Sql, alias: &str, predicate: &Predicate) -> Result<Option<String>, StoreError> {
    Ok(Some(match predicate {
        Predicate::Present => return Ok(None),
        Predicate::Token { system, code } => {
            token_sql(sql, &format!("{alias}.system"), &format!("{alias}.code"), system, code.as_deref())?
        }
        Predicate::TokenText(text) => {
            // `:text` is a string search on the display text; the index keeps it as written,
            // so both sides are folded. LOWER folds ASCII on SQLite, all letters on PostgreSQL.
            let pattern = format!("%{}%", like_escape(text));
            format!("LOWER({alias}.text) LIKE LOWER({}) ESCAPE '\\'", sql.text(pattern)?)
        }
        Predicate::Reference { target_type, target_id } => {
            let mut c = format!("{alias}.target_id = {}", sql.text(target_id.as_str())?);
            if let Some(t) = target_type {
                c.push_str(&format!(" AND {alias}.target_type = {}", sql.text(t.as_str())?));
            }
            c
        }
        Predicate::ReferenceIdentifier { system, value } => token_sql(
            sql,
            &format!("{alias}.identifier_system"),
            &format!("{alias}.identifier_value"),
            system,
            Some(value),
        )?,
        Predicate::Date { prefix, low, high } => {
            date_sql(sql, &format!("{alias}.low"), &format!("{alias}.high"), *prefix, *low, *high)?
        }
        Predicate::String { mode, value } => match mode {
            // By the folded value first: the lookup index finds the rows, and the text as
            // written is checked on them (an index of it cost every string row an entry).
            StringMatch::Exact => {
                format!(
                    "{alias}.value = {} AND {alias}.exact = {}",
                    sql.text(normalise_string(value))?,
                    sql.text(value.as_str())?
                )
            }
            StringMatch::StartsWith => {
                format!("{alias}.value LIKE {} ESCAPE '\\'", sql.text(format!("{}%", like_escape(value)))?)
            }
            StringMatch::Contains => {
                format!("{alias}.value LIKE {} ESCAPE '\\'", sql.text(format!("%{}%", like_escape(value)))?)
            }
        },
        Predicate::Id(_) => return Err(StoreError::Internal("an _id value on an indexed parameter".to_owned())),
    }))
}

/// How an indexed clause is tested against the rows the query walks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// `r.id IN (every id with a matching index row)`: the set is built once per statement,
    /// good when the clause is what narrows the search.
    Set,
    /// `EXISTS (a matching index row of this r)`, one index probe per row walked: for searches
    /// walked along `last_updated` (polls), whose few recent rows must not cost a set of every
    /// resource the clause matches (a practice's every Task, which only grows).
    PerRow,
}

fn predicate_sql(sql: &mut Sql, param: ParamRef, predicate: &Predicate, probe: Probe) -> Result<String, StoreError> {
    match (param, predicate) {
        (ParamRef::Id, Predicate::Id(id)) => Ok(format!("r.id = {}", sql.text(id.as_str())?)),
        (ParamRef::LastUpdated, Predicate::Date { prefix, low, high }) => {
            // meta.lastUpdated is an instant: its range is the one microsecond stored.
            date_sql(sql, "r.last_updated", "r.last_updated", *prefix, *low, *high)
        }
        (ParamRef::Registered(p), predicate) => {
            let table = index_table(p.kind);
            let key_test = key_test("x", p);
            let condition = match (predicate, narrowed_targets(p)) {
                // `patient:missing` on `subject`'s rows: a reference to a Patient, or to a type
                // not named (by identifier only), counts as present; one to a Group does not.
                (Predicate::Present, Some(targets)) => {
                    Some(format!("(x.target_type IS NULL OR x.target_type IN ({}))", sql.list(targets)?))
                }
                _ => index_condition(sql, predicate)?,
            };
            let condition = condition.map(|c| format!(" AND {c}")).unwrap_or_default();
            Ok(match probe {
                Probe::Set => format!("r.id IN (SELECT x.id FROM {table} x WHERE {key_test}{condition})"),
                // A code, a reference's target or identifier is an index equality down to the id;
                // any other test (presence, a range, a string) has only the parameter to look up
                // by, and SQLite, without statistics, would walk the parameter's every row for
                // each row probed: it is told the resource's own rows.
                Probe::PerRow => format!(
                    "EXISTS (SELECT 1 FROM {table} x{} WHERE x.id = {} AND {key_test}{condition}{})",
                    match predicate {
                        Predicate::Token { code: Some(_), .. }
                        | Predicate::Reference { .. }
                        | Predicate::ReferenceIdentifier { .. } => String::new(),
                        _ => sql.by_owner(table),
                    },
                    sql.probed.id,
                    sql.per_row_fence()
                ),
            })
        }
        (param, predicate) => {
            Err(StoreError::Internal(format!("the predicate {predicate:?} does not apply to {}", param.name())))
        }
    }
}

/// The resources at the far end of a forward chain that match any of its alternatives and that
/// the caller may see: `SELECT t.id …`. Driven by the index rows of the chained parameter, one
/// index probe per alternative (a `UNION`, so that neither database turns the alternatives into
/// a scan of the parameter's rows), each target then read by its key and its visibility probed
/// by its id. The tenancy test is what keeps a chain from telling a caller whether another
/// practice holds a patient with that identifier.
fn chain_targets(
    sql: &mut Sql,
    scope: &TenantScope,
    chain: &Chain,
    any_of: &[Predicate],
) -> Result<String, StoreError> {
    let table = index_table(chain.param.kind);
    let key_test = key_test("x", chain.param);
    let mut probes = Vec::with_capacity(any_of.len());
    for predicate in any_of {
        let condition = index_condition(sql, predicate)?
            .ok_or_else(|| StoreError::Internal(format!("{}: a chain tests values, not presence", chain.name)))?;
        probes.push(format!("SELECT x.id FROM {table} x WHERE {key_test} AND {condition}"));
    }
    let target_type = sql.text(chain.other_end().as_str())?;
    let tenancy = sql.tenancy_of("t", scope, Probe::PerRow)?;
    let probes = probes.join(" UNION ");
    let target = format!("t.resource_type = {target_type} AND t.id = dx.id AND t.deleted = 0 AND {tenancy}");
    Ok(match sql.backend {
        // `CROSS JOIN` keeps the identifiers' rows `dx` the outer loop: SQLite never reorders it.
        BackendKind::Sqlite => format!("SELECT t.id FROM ({probes}) dx CROSS JOIN resources t WHERE {target}"),
        // A lateral join reads each target by its key whatever the statistics (see
        // `included_statement`).
        BackendKind::Postgres => format!(
            "SELECT t.id FROM ({probes}) dx CROSS JOIN LATERAL (SELECT t.id FROM resources t WHERE {target}{}) t",
            sql.per_row_fence()
        ),
    })
}

/// The ids of the resources whose chain's reference points at one of its targets
/// ([`chain_targets`]): `SELECT c.id …`, the references found by their target through
/// `idx_reference_search`.
fn chain_ids(sql: &mut Sql, scope: &TenantScope, chain: &Chain, any_of: &[Predicate]) -> Result<String, StoreError> {
    let targets = chain_targets(sql, scope, chain, any_of)?;
    let target_type = sql.text(chain.other_end().as_str())?;
    let references =
        format!("{} AND c.target_id = dt.id AND c.target_type = {target_type}", key_test("c", chain.reference));
    Ok(match sql.backend {
        BackendKind::Sqlite => format!("SELECT c.id FROM ({targets}) dt CROSS JOIN idx_reference c WHERE {references}"),
        BackendKind::Postgres => format!(
            "SELECT c.id FROM ({targets}) dt CROSS JOIN LATERAL (SELECT c.id FROM idx_reference c WHERE {references}{}) c",
            sql.per_row_fence()
        ),
    })
}

/// A chained clause. Forward (`patient.identifier`): from the targets to the references to
/// them, as a set; or, for a walk along `last_updated`, per row: the row's own references by
/// its id, each target read by its key, tested and its visibility probed. Reverse
/// (`_has:Task:focus:status`): per row, the references to it by their target, each source
/// read, tested and probed the same way, so that a source the caller may not see does not
/// make its target match.
fn chain_sql(
    sql: &mut Sql,
    scope: &TenantScope,
    chain: &Chain,
    any_of: &[Predicate],
    probe: Probe,
) -> Result<String, StoreError> {
    if !chain.reverse && probe == Probe::Set {
        return Ok(format!("r.id IN ({})", chain_ids(sql, scope, chain, any_of)?));
    }
    // The row's references (`c.id = r.id`) or the references to it (`c.target_id = r.id`),
    // and the resource `s` at their other end.
    let ProbedRow { resource_type, id } = sql.probed.clone();
    let (link, other_end) = if chain.reverse {
        (format!("c.target_id = {id} AND c.target_type = {resource_type}"), "s.id = c.id")
    } else {
        (format!("c.id = {id}"), "s.id = c.target_id AND c.target_type = s.resource_type")
    };
    let table = index_table(chain.param.kind);
    let param_key = key_test("x", chain.param);
    let fence = sql.per_row_fence();
    let mut tests = Vec::with_capacity(any_of.len());
    for predicate in any_of {
        let condition = index_condition(sql, predicate)?
            .ok_or_else(|| StoreError::Internal(format!("{}: a chain tests values, not presence", chain.name)))?;
        tests
            .push(format!("EXISTS (SELECT 1 FROM {table} x WHERE x.id = s.id AND {param_key} AND {condition}{fence})"));
    }
    let other_type = sql.text(chain.other_end().as_str())?;
    let tenancy = sql.tenancy_of("s", scope, Probe::PerRow)?;
    Ok(format!(
        "EXISTS (SELECT 1 FROM idx_reference c CROSS JOIN resources s WHERE {link} AND {} \
         AND s.resource_type = {other_type} AND {other_end} AND s.deleted = 0 AND ({}) AND {tenancy}{fence})",
        key_test("c", chain.reference),
        tests.join(" OR ")
    ))
}

fn clause_sql(sql: &mut Sql, scope: &TenantScope, clause: &Clause, probe: Probe) -> Result<String, StoreError> {
    if let ParamRef::Chained(chain) = &clause.param {
        let chained = chain_sql(sql, scope, chain, &clause.any_of, probe)?;
        return Ok(if clause.negated { format!("NOT {chained}") } else { chained });
    }
    let alternatives =
        clause.any_of.iter().map(|p| predicate_sql(sql, clause.param, p, probe)).collect::<Result<Vec<_>, _>>()?;
    let any = format!("({})", alternatives.join(" OR "));
    Ok(if clause.negated { format!("NOT {any}") } else { any })
}

/// How selective a single positive alternative is likely to be, best first; `None` for
/// predicates that should not drive a query (ranges, prefixes, `:missing`).
fn driver_rank(predicate: &Predicate) -> Option<u8> {
    match predicate {
        Predicate::Reference { .. } => Some(0),
        Predicate::ReferenceIdentifier { .. } => Some(1),
        Predicate::Token { code: Some(_), .. } => Some(2),
        Predicate::String { mode: StringMatch::Exact, .. } => Some(3),
        _ => None,
    }
}

/// The clause whose index rows should drive the query: the most selective positive clause
/// with one alternative. SQLite plans without statistics (nobody runs ANALYZE on an embedded
/// database) and then prefers walking `resources` by type, which is every row of the type;
/// naming the driver (and joining with `CROSS JOIN`, which SQLite never reorders) keeps the
/// polling queries on their indexes. PostgreSQL reorders the join by its statistics as usual.
fn driver_clause(query: &SearchQuery) -> Option<usize> {
    (0..query.clauses.len()).filter_map(|n| candidate_rank(query, n).map(|rank| (rank, n))).min().map(|(_, n)| n)
}

/// How a statement's FROM clause finds its rows, and so how its other tests are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drive {
    /// From the set of a clause's ids (or, without one, the resources of the type), every other
    /// clause and the tenancy tested as sets the planner may drive from instead.
    Set(Option<usize>),
    /// From the ids the caller may see (a caller who sees few), every clause tested on each row.
    Visible,
    /// Walked along an order (the resources by `last_updated` or id, or the index of the clause
    /// `walked`, whose test the walk's FROM makes): every other clause and the tenancy tested on
    /// each row walked, so that the walk stops when the page is full.
    PerRow { walked: Option<usize> },
}

/// The FROM clause and the WHERE conditions shared by a page and its count: type, live,
/// clauses, horizon, tenancy, as `drive` says.
fn from_and_filter(
    sql: &mut Sql,
    scope: &TenantScope,
    query: &SearchQuery,
    horizon: Option<Instant>,
    drive: Drive,
    along_last_updated: bool,
) -> Result<(String, Vec<String>), StoreError> {
    let probe = match drive {
        Drive::Set(_) => Probe::Set,
        Drive::Visible | Drive::PerRow { .. } => Probe::PerRow,
    };
    let mut from = "resources r".to_owned();
    let mut conditions =
        vec![format!("r.resource_type = {}", sql.text(query.resource_type.as_str())?), "r.deleted = 0".to_owned()];
    if drive == Drive::Visible {
        let visible = sql.visible_ids(scope, query.resource_type)?;
        from = format!("(SELECT DISTINCT d.id FROM ({visible}) d) d CROSS JOIN resources r");
        conditions.push("r.id = d.id".to_owned());
    }
    for (i, clause) in query.clauses.iter().enumerate() {
        match drive {
            Drive::Set(Some(driver)) if driver == i => {
                from = format!(
                    "(SELECT DISTINCT d.id FROM ({}) d) d CROSS JOIN resources r",
                    clause_ids(sql, scope, clause)?
                );
                conditions.push("r.id = d.id".to_owned());
                continue;
            }
            Drive::PerRow { walked: Some(walked) } if walked == i => continue,
            _ => {}
        }
        conditions.push(clause_sql(sql, scope, clause, probe)?);
    }
    if let Some(horizon) = horizon {
        // Only a walk along `last_updated` looks the horizon up in that index. Anywhere else
        // the horizon is a test of each row (the unary `+` keeps it out of index lookups):
        // PostgreSQL without statistics otherwise read each resource of a walk by
        // `(resource_type, last_updated, id)`, a range over every row within the horizon, not
        // by its key: 6 s for ten Tasks of 10,000.
        let column = if drive == (Drive::PerRow { walked: None }) && along_last_updated {
            "r.last_updated"
        } else {
            "+r.last_updated"
        };
        conditions.push(format!("{column} <= {}", sql.int(horizon.micros())?));
    }
    // Driven by what the caller may see, the tenancy is the driver. Walked, it is a per-row
    // probe: driving the walk from the caller's visibility keys would visit everything the
    // caller can see.
    if drive != Drive::Visible {
        conditions.push(sql.tenancy(scope, probe)?);
    }
    Ok((from, conditions))
}

/// `SELECT … id …`: the ids (not distinct) of the resources a positive clause of one indexed
/// test, or a forward chain, matches. What a set-driven search starts from, and what
/// [`walk::choose_walk`] counts.
fn clause_ids(sql: &mut Sql, scope: &TenantScope, clause: &Clause) -> Result<String, StoreError> {
    if let ParamRef::Chained(chain) = &clause.param {
        return chain_ids(sql, scope, chain, &clause.any_of);
    }
    let (ParamRef::Registered(p), [predicate]) = (clause.param, clause.any_of.as_slice()) else {
        return Err(StoreError::Internal("the driving clause is not a single indexed test".to_owned()));
    };
    let condition = index_condition(sql, predicate)?.map(|c| format!(" AND {c}")).unwrap_or_default();
    Ok(format!("SELECT x.id FROM {} x WHERE {}{condition}", index_table(p.kind), key_test("x", p)))
}

/// Whether a sort key holds integers (else text).
fn is_int_key(field: SortField) -> bool {
    match field {
        SortField::LastUpdated => true,
        SortField::Id => false,
        SortField::Param(p) => p.kind == ParamKind::Date,
    }
}

/// What a statement's order is read from: the resource's own columns, or, where the statement
/// walks an index in the page's order, that index's columns (the planner keeps the walk's
/// order only when the ORDER BY names the walked columns).
#[derive(Debug, Clone, Copy)]
struct OrderColumns {
    id: &'static str,
    /// The walked date index's value, standing for the first (date) sort key.
    walked_date: Option<&'static str>,
}

const RESOURCE_COLUMNS: OrderColumns = OrderColumns { id: "r.id", walked_date: None };
const WALKED_ID: OrderColumns = OrderColumns { id: "w.id", walked_date: None };
const WALKED_DATE: OrderColumns = OrderColumns { id: "w.id", walked_date: Some("w.low") };

/// The SQL expression of a sort key. A parameter with several values sorts by its smallest.
/// A resource without a date sorts after every dated one, both ways, so that a walk along the
/// date index meets the undated only at the end (R4 search.html#sort leaves both to the
/// server); one without a token or string sorts first.
fn sort_expression(sql: &mut Sql, key: SortKey, columns: OrderColumns) -> Result<String, StoreError> {
    Ok(match key.field {
        SortField::Id => columns.id.to_owned(),
        SortField::LastUpdated => "r.last_updated".to_owned(),
        SortField::Param(p) => match columns.walked_date {
            Some(walked) if p.kind == ParamKind::Date => walked.to_owned(),
            _ => sort_param_expression(sql, p, key.descending)?,
        },
    })
}

/// The sort value of a resource without a date: after every date, in either direction.
fn undated(descending: bool) -> i64 {
    if descending {
        i64::MIN
    } else {
        i64::MAX
    }
}

fn sort_param_expression(sql: &mut Sql, p: &'static SearchParam, descending: bool) -> Result<String, StoreError> {
    let (column, missing) = match p.kind {
        ParamKind::Token => ("x.code", sql.text("")?),
        ParamKind::String => ("x.value", sql.text("")?),
        ParamKind::Date => ("x.low", sql.int(undated(descending))?),
        ParamKind::Reference => return Err(StoreError::Internal("sorting by a reference".to_owned())),
    };
    let table = index_table(p.kind);
    let key_test = key_test("x", p);
    let by_owner = sql.by_owner(table);
    Ok(format!("COALESCE((SELECT MIN({column}) FROM {table} x{by_owner} WHERE x.id = r.id AND {key_test}), {missing})"))
}

/// The full order: the keys asked for, then `_id` unless already there (and nothing after
/// `_id`: it is unique). The tie-breaker follows the first key's direction.
fn full_order(sort: &[SortKey]) -> Vec<SortKey> {
    let mut order = Vec::new();
    for key in sort {
        order.push(*key);
        if key.field == SortField::Id {
            return order;
        }
    }
    let descending = sort.first().is_some_and(|k| k.descending);
    order.push(SortKey { field: SortField::Id, descending });
    order
}

fn bind_value(sql: &mut Sql, value: &SortValue) -> Result<String, StoreError> {
    match value {
        SortValue::Int(n) => sql.int(*n),
        SortValue::Text(s) => sql.text(s.as_str()),
    }
}

/// The keyset condition "strictly after (before) the position" in the order:
/// `k1 > v1 OR (k1 = v1 AND k2 > v2) OR …`, with `<` for descending keys.
fn keyset_condition(
    sql: &mut Sql,
    order: &[SortKey],
    position: &Position<'_>,
    columns: OrderColumns,
) -> Result<String, StoreError> {
    let id_value = SortValue::Text(position.id.to_owned());
    let values: Vec<&SortValue> = position.keys.iter().chain(std::iter::once(&id_value)).collect();
    if values.len() != order.len() {
        return Err(StoreError::Internal("the cursor does not fit the sort order".to_owned()));
    }
    let mut alternatives = Vec::new();
    for i in 0..order.len() {
        let mut terms = Vec::new();
        for j in 0..i {
            let e = sort_expression(sql, order[j], columns)?;
            terms.push(format!("{e} = {}", bind_value(sql, values[j])?));
        }
        let forward = order[i].descending == (position.direction == PageDirection::Before);
        let op = if forward { ">" } else { "<" };
        let e = sort_expression(sql, order[i], columns)?;
        terms.push(format!("{e} {op} {}", bind_value(sql, values[i])?));
        alternatives.push(format!("({})", terms.join(" AND ")));
    }
    // The first key's bound on its own lets the planner use an index range on it.
    let forward = order[0].descending == (position.direction == PageDirection::Before);
    let e = sort_expression(sql, order[0], columns)?;
    let bound = format!("{e} {} {}", if forward { ">=" } else { "<=" }, bind_value(sql, values[0])?);
    Ok(format!("{bound} AND ({})", alternatives.join(" OR ")))
}

/// The index rows a walk goes along (alias `w`), the tests made on each, and the walk's order
/// (by which a resource met twice is one).
struct WalkedIndex {
    rows: String,
    on_walk: Vec<String>,
    order: &'static str,
}

/// The index a page of `shape` walks, if it walks one.
fn walked_index(sql: &mut Sql, query: &SearchQuery, shape: Shape) -> Result<Option<WalkedIndex>, StoreError> {
    Ok(match shape {
        Shape::ClauseById(walked) => {
            let clause = &query.clauses[walked];
            let (ParamRef::Registered(p), [predicate]) = (clause.param, clause.any_of.as_slice()) else {
                return Err(StoreError::Internal("the walked clause is not a single indexed test".to_owned()));
            };
            let mut on_walk = vec![key_test("w", p)];
            on_walk.extend(index_condition_on(sql, "w", predicate)?);
            Some(WalkedIndex { rows: format!("{} w", index_table(p.kind)), on_walk, order: "w.id" })
        }
        Shape::Dated { param, .. } => {
            // Each resource where the walk meets its smallest value, the one it sorts by.
            let smallest = format!(
                "w.low = (SELECT MIN(y.low) FROM idx_date y{} WHERE y.id = w.id AND {}{})",
                sql.by_owner("idx_date"),
                key_test("y", param),
                sql.per_row_fence()
            );
            Some(WalkedIndex {
                rows: "idx_date w".to_owned(),
                on_walk: vec![key_test("w", param), smallest],
                order: "w.low, w.id",
            })
        }
        Shape::AlongLastUpdated | Shape::ById | Shape::Set(_) | Shape::Undated { .. } => None,
    })
}

/// A walk joined to the resources it meets: the FROM clause, the WHERE conditions, and what
/// makes a resource met twice one (SQLite's GROUP BY, PostgreSQL's DISTINCT ON).
struct WalkJoin {
    from: String,
    conditions: Vec<String>,
    order: &'static str,
}

/// Joins `walk` to the resources it meets, each tested by `on_resource`.
fn join_walk(sql: &Sql, walk: WalkedIndex, on_resource: Vec<String>) -> WalkJoin {
    let WalkedIndex { rows, on_walk, order } = walk;
    match sql.backend {
        // SQLite keeps the join's order as written (`CROSS JOIN`) and makes each test as soon
        // as the rows it names are read: the probes of the walked row before its resource is
        // read by its key. It keeps the walk's order through the GROUP BY.
        BackendKind::Sqlite => {
            let mut conditions = on_resource;
            conditions.extend(on_walk);
            conditions.push("r.id = w.id".to_owned());
            WalkJoin { from: format!("{rows} CROSS JOIN resources r"), conditions, order }
        }
        // The walk stays the outer loop whatever the statistics: each resource it meets is read
        // by its key in a lateral subquery (as `included_statement` reads), the tests inside;
        // those of the walked row alone gate the subquery, so a row they reject is not read.
        // Joined plainly, PostgreSQL without statistics drove the join from the resources
        // within the horizon and read the date index for each (7 s for ten Tasks of 10,000),
        // and with them merged the walk with every resource of the type.
        BackendKind::Postgres => WalkJoin {
            from: format!(
                "{rows} CROSS JOIN LATERAL (SELECT {RESOURCE_ROW} FROM resources r \
                 WHERE r.id = w.id AND {}{}) r",
                on_resource.join(" AND "),
                sql.per_row_fence()
            ),
            conditions: on_walk,
            order,
        },
    }
}

/// Builds the statement of a page of the given shape; returns the SQL and the sort keys
/// whose values it reads as columns `k0…` (without the final `_id`).
fn page_statement(
    sql: &mut Sql,
    scope: &TenantScope,
    page: &SearchPage<'_>,
    shape: Shape,
) -> Result<(String, Vec<SortKey>), StoreError> {
    let order = full_order(page.sort);
    let keys = &order[..order.len() - 1];
    let (columns, drive) = match shape {
        Shape::AlongLastUpdated | Shape::ById | Shape::Undated { .. } => {
            (RESOURCE_COLUMNS, Drive::PerRow { walked: None })
        }
        Shape::Set(drive) => (RESOURCE_COLUMNS, drive),
        Shape::ClauseById(walked) => (WALKED_ID, Drive::PerRow { walked: Some(walked) }),
        Shape::Dated { .. } => (WALKED_DATE, Drive::PerRow { walked: None }),
    };
    let mut select = vec![VERSION_COLUMNS.to_owned()];
    for (i, key) in keys.iter().enumerate() {
        let value = match shape {
            // Every row of the tail is undated: its key is the undated value.
            Shape::Undated { descending, .. } => sql.int(undated(descending))?,
            _ => sort_expression(sql, *key, columns)?,
        };
        select.push(format!("{value} AS k{i}"));
    }
    let along_last_updated = matches!(shape, Shape::AlongLastUpdated);
    if matches!(shape, Shape::ClauseById(_) | Shape::Dated { .. }) {
        // Most rows a walk meets fail the other tests (a small service's Tasks in a large
        // backlog): tested on the walked index row, they cost no read of the resource.
        sql.probe_walked(page.query.resource_type, "w.id")?;
    }
    let (mut from, mut conditions) = from_and_filter(sql, scope, page.query, page.horizon, drive, along_last_updated)?;
    if let Shape::Undated { param, .. } = shape {
        conditions.push(format!(
            "NOT EXISTS (SELECT 1 FROM idx_date y{} WHERE y.id = r.id AND {}{})",
            sql.by_owner("idx_date"),
            key_test("y", param),
            sql.per_row_fence()
        ));
    }
    let mut group_by = None;
    let mut distinct_on = None;
    if let Some(walk) = walked_index(sql, page.query, shape)? {
        let join = join_walk(sql, walk, std::mem::take(&mut conditions));
        (from, conditions) = (join.from, join.conditions);
        match sql.backend {
            BackendKind::Sqlite => group_by = Some(join.order),
            BackendKind::Postgres => distinct_on = Some(join.order),
        }
    }
    let reverse = page.position.is_some_and(|p| p.direction == PageDirection::Before);
    if let Some(position) = &page.position {
        conditions.push(match shape {
            // The tail is in id order: after (before) the position's id.
            Shape::Undated { .. } => {
                let forward = order[0].descending == reverse;
                format!("r.id {} {}", if forward { ">" } else { "<" }, sql.text(position.id)?)
            }
            _ => keyset_condition(sql, &order, position, columns)?,
        });
    }
    let mut order_by = Vec::new();
    for key in &order {
        if matches!(shape, Shape::Undated { .. }) && key.field != SortField::Id {
            continue;
        }
        let descending = key.descending != reverse;
        order_by.push(format!("{} {}", sort_expression(sql, *key, columns)?, if descending { "DESC" } else { "ASC" }));
    }
    let limit = sql.int(i64::from(page.limit))?;
    let group_by = group_by.map(|g| format!(" GROUP BY {g}")).unwrap_or_default();
    let distinct_on = distinct_on.map(|d| format!("DISTINCT ON ({d}) ")).unwrap_or_default();
    let text = format!(
        "SELECT {distinct_on}{} FROM {from} WHERE {}{group_by} ORDER BY {} LIMIT {limit}",
        select.join(", "),
        conditions.join(" AND "),
        order_by.join(", ")
    );
    Ok((text, keys.to_vec()))
}

/// The statement of [`Store::conditional_lookup`]: one row per match (at least one row), each
/// with the id the key points at.
fn conditional_lookup_statement(
    sql: &mut Sql,
    claim: &ConditionalKey<'_>,
    scope: &TenantScope,
    page: &SearchPage<'_>,
) -> Result<String, StoreError> {
    let first = sql.next;
    for value in claim.values() {
        sql.text(value)?;
    }
    let key = ConditionalKey::lookup(first);
    let (matches, _) = page_statement(sql, scope, page, writer_shape(page))?;
    Ok(format!(
        "SELECT ({key}) AS claimed, matches.id AS match_id \
         FROM (SELECT 1 AS one) AS anchor LEFT JOIN ({matches}) AS matches ON 1 = 1"
    ))
}

/// How many searches one SQLite statement of [`write_sets_with_matches`] tests: a group
/// commit's referrals in one or two statements, each a few dozen kilobytes of SQL at most.
const NO_MATCH_CHUNK: usize = 32;

/// The positions among `write_sets` of those with a required absence ([`NoMatchRequired`])
/// that some live resource now breaks, in order. Run by the writer inside the transaction the
/// write sets are to commit in: every search sees what committed before it, and two creates
/// of one batch that would match each other claim the same conditional key, which only one
/// can. Where searching first cost a read round trip each, a batch's searches are a statement
/// or two: on SQLite `SELECT n WHERE EXISTS (search n)` for each, joined by `UNION ALL`
/// ([`NO_MATCH_CHUNK`] at most per statement); on PostgreSQL one statement per shape of
/// search ([`postgres_searches_with_matches`]).
pub(super) async fn write_sets_with_matches(
    conn: &mut AnyConnection,
    write_sets: &[&WriteSet],
) -> Result<Vec<usize>, StoreError> {
    let backend = BackendKind::from(Dialect::of(conn));
    let searches: Vec<(usize, &NoMatchRequired)> = write_sets
        .iter()
        .enumerate()
        .flat_map(|(position, write_set)| write_set.no_match_required.iter().map(move |search| (position, search)))
        .collect();
    let mut matched = match backend {
        BackendKind::Postgres => postgres_searches_with_matches(conn, &searches).await?,
        BackendKind::Sqlite => sqlite_searches_with_matches(conn, &searches).await?,
    };
    matched.sort_unstable();
    matched.dedup();
    Ok(matched)
}

/// The statement form of the writer's searches and conditional lookups (no count first: see
/// [`walk_without_counting`]).
fn writer_shape(page: &SearchPage<'_>) -> Shape {
    shape_of(page, walk_without_counting(page.query))
}

/// A search of [`write_sets_with_matches`] that matches nothing at most.
fn no_match_page(search: &NoMatchRequired) -> SearchPage<'_> {
    SearchPage { query: &search.query, sort: &[], horizon: None, position: None, limit: 1 }
}

async fn sqlite_searches_with_matches(
    conn: &mut AnyConnection,
    searches: &[(usize, &NoMatchRequired)],
) -> Result<Vec<usize>, StoreError> {
    let mut matched = Vec::new();
    for chunk in searches.chunks(NO_MATCH_CHUNK) {
        let mut sql = Sql::new(BackendKind::Sqlite);
        let mut tests = Vec::with_capacity(chunk.len());
        for (n, (_, search)) in chunk.iter().enumerate() {
            let page = no_match_page(search);
            let (matches, _) = page_statement(&mut sql, &search.scope, &page, writer_shape(&page))?;
            tests.push(format!("SELECT CAST({n} AS BIGINT) AS n WHERE EXISTS ({matches})"));
        }
        let rows = sqlx::query_with(&tests.join(" UNION ALL "), sql.args).fetch_all(&mut *conn).await?;
        for row in &rows {
            let n: i64 = row.try_get(0)?;
            let found = usize::try_from(n).ok().and_then(|n| chunk.get(n));
            matched.extend(found.map(|(position, _)| *position));
        }
    }
    Ok(matched)
}

/// On PostgreSQL, the searches of one shape (the same statement but for its values: every
/// referral's is `identifier=system|value` in its practice's scope) are one statement over a
/// JSON array of their values, each row tested by a per-row `EXISTS` whose values are that
/// row's columns ([`Sql::over_row`]). The statement's text is the same whatever the batch, so
/// the writer plans it once: a `UNION ALL` of as many searches as the batch held was a text
/// per batch size, planned again whenever autoanalyze invalidated it, about 3 ms a time.
async fn postgres_searches_with_matches(
    conn: &mut AnyConnection,
    searches: &[(usize, &NoMatchRequired)],
) -> Result<Vec<usize>, StoreError> {
    let mut matched = Vec::new();
    for shape in no_match_shapes(searches)? {
        for row in sqlx::query(&shape.statement).bind(shape.rows).fetch_all(&mut *conn).await? {
            let n: i64 = row.try_get(0)?;
            let found = usize::try_from(n - 1).ok().and_then(|i| shape.positions.get(i));
            matched.extend(found.copied());
        }
    }
    Ok(matched)
}

/// The PostgreSQL statement of the searches of one shape (see
/// [`postgres_searches_with_matches`]): its text, the write sets' positions of its searches,
/// and their values, the JSON array of rows it takes as `$1`.
struct NoMatchShape {
    statement: String,
    positions: Vec<usize>,
    rows: String,
}

fn no_match_shapes(searches: &[(usize, &NoMatchRequired)]) -> Result<Vec<NoMatchShape>, StoreError> {
    // Each shape's search text, and its searches' positions and values, in order of first use.
    let mut shapes: Vec<(String, Vec<usize>, Vec<serde_json::Value>)> = Vec::new();
    for (position, search) in searches {
        let mut sql = Sql::over_row("c.x");
        let page = no_match_page(search);
        let (matches, _) = page_statement(&mut sql, &search.scope, &page, writer_shape(&page))?;
        let values = serde_json::Value::Array(sql.row.map(|row| row.values).unwrap_or_default());
        match shapes.iter_mut().find(|(shape, _, _)| *shape == matches) {
            Some((_, positions, rows)) => {
                positions.push(*position);
                rows.push(values);
            }
            None => shapes.push((matches, vec![*position], vec![values])),
        }
    }
    shapes
        .into_iter()
        .map(|(matches, positions, rows)| {
            Ok(NoMatchShape {
                // The `LIMIT` of each search reads a column too, so PostgreSQL cannot flatten
                // its `EXISTS` into a join: it stays a probe per row, by the row's values.
                statement: format!(
                    "SELECT c.n FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS c(x, n) \
                     WHERE EXISTS ({matches})"
                ),
                positions,
                rows: serde_json::to_string(&rows)
                    .map_err(|e| StoreError::Internal(format!("cannot encode rows: {e}")))?,
            })
        })
        .collect()
}

pub(super) fn hit_from_row(row: &AnyRow, keys: &[SortKey]) -> Result<SearchHit, StoreError> {
    let version = version_from_row(row)?;
    let keys = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let column = format!("k{i}");
            Ok(if is_int_key(key.field) {
                SortValue::Int(row.try_get(column.as_str())?)
            } else {
                SortValue::Text(row.try_get(column.as_str())?)
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(SearchHit { version, keys })
}

/// The distinct targets (type, id) that resources `ids` of `param`'s type reference through
/// it: the driving part of [`included_statement`].
fn reference_targets_statement(sql: &mut Sql, param: &'static SearchParam, ids: &[&str]) -> Result<String, StoreError> {
    let key_test = key_test("s", param);
    // The ids' own index rows first (the owner index), then their parameter, so that neither
    // database walks the parameter's rows of every resource instead. SQLite is told the index.
    // PostgreSQL without statistics read a page's ten ids as a filter over every row of the
    // type (1 ms per poll, growing with the table): a lateral join probes the owner index once
    // per id whatever the statistics.
    let owned = match sql.backend {
        BackendKind::Sqlite => format!(
            "SELECT x.param_key, x.target_type, x.target_id FROM idx_reference x INDEXED BY idx_reference_owner \
             WHERE x.id IN ({})",
            sql.list(ids.iter().copied())?
        ),
        BackendKind::Postgres => format!(
            "SELECT x.param_key, x.target_type, x.target_id FROM (VALUES {}) AS wanted(id) CROSS JOIN LATERAL \
             (SELECT x.param_key, x.target_type, x.target_id FROM idx_reference x WHERE x.id = wanted.id{}) x",
            sql.rows(ids.iter().copied())?,
            sql.per_row_fence()
        ),
    };
    let text = format!(
        "SELECT DISTINCT s.target_type, s.target_id FROM ({owned}) s \
         WHERE {key_test} AND s.target_id IS NOT NULL AND s.target_type IS NOT NULL"
    );
    Ok(text)
}

/// The statement of [`Store::included`]: the targets of the ids' references
/// ([`reference_targets_statement`]) drive, each read by its key and tested against the
/// caller's tenancy. One statement where there were two, each a round trip and a reader of
/// the pool: a third of a poll's statements.
fn included_statement(
    sql: &mut Sql,
    scope: &TenantScope,
    param: &'static SearchParam,
    target_types: &[ResourceType],
    ids: &[&str],
) -> Result<String, StoreError> {
    let targets = reference_targets_statement(sql, param, ids)?;
    let types = sql.list(target_types.iter().map(|t| t.as_str()))?;
    let tenancy = sql.tenancy(scope, Probe::PerRow)?;
    let text = match sql.backend {
        // `CROSS JOIN` keeps the targets `d` the outer loop: SQLite never reorders it.
        BackendKind::Sqlite => format!(
            "SELECT {VERSION_COLUMNS} FROM ({targets}) d CROSS JOIN resources r \
             WHERE d.target_type IN ({types}) AND r.resource_type = d.target_type AND r.id = d.target_id \
             AND r.deleted = 0 AND {tenancy} ORDER BY r.resource_type, r.id"
        ),
        // A lateral join reads each target by its key whatever the statistics, as the
        // targets' own lateral probes do.
        BackendKind::Postgres => format!(
            "SELECT r.* FROM ({targets}) d CROSS JOIN LATERAL \
             (SELECT {VERSION_COLUMNS} FROM resources r WHERE r.resource_type = d.target_type \
              AND r.id = d.target_id AND r.deleted = 0 AND {tenancy}{fence}) r \
             WHERE d.target_type IN ({types}) ORDER BY r.resource_type, r.id",
            fence = sql.per_row_fence()
        ),
    };
    Ok(text)
}

impl Store {
    /// How many live resources match, in the caller's tenancy (`_total`).
    pub async fn count_matches(
        &self,
        scope: &TenantScope,
        query: &SearchQuery,
        horizon: Option<Instant>,
    ) -> Result<u64, StoreError> {
        let mut sql = Sql::new(self.kind());
        let drive = match query.uses_last_updated() {
            true => Drive::PerRow { walked: None },
            false => Drive::Set(driver_clause(query)),
        };
        let (from, conditions) = from_and_filter(&mut sql, scope, query, horizon, drive, query.uses_last_updated())?;
        let text = format!("SELECT COUNT(*) FROM {from} WHERE {}", conditions.join(" AND "));
        let row = self.bounded_read(async |conn| sqlx::query_with(&text, sql.args).fetch_one(conn).await).await?;
        let count: i64 = row.try_get(0)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// The database's plan for a page query, one line per plan node (`EXPLAIN QUERY PLAN` on
    /// SQLite, `EXPLAIN` on PostgreSQL with sequential scans priced out, so that a plan still
    /// holding one has no index to use). For the plan regression tests and for operators.
    pub async fn explain_search(&self, scope: &TenantScope, page: &SearchPage<'_>) -> Result<Vec<String>, StoreError> {
        let walk = self.choose_walk(scope, page).await?;
        self.explain_search_as(scope, page, walk).await
    }

    /// The plan of an `_include`'s read ([`Store::included`]), as [`Store::explain_search`]
    /// gives it. For the plan regression tests.
    pub async fn explain_include(
        &self,
        scope: &TenantScope,
        param: &'static SearchParam,
        target_types: &[ResourceType],
        ids: &[&str],
    ) -> Result<Vec<String>, StoreError> {
        let mut sql = Sql::new(self.kind());
        let text = included_statement(&mut sql, scope, param, target_types, ids)?;
        self.explain(&text, sql).await
    }

    /// The plan of the writer's test that `searches` match nothing (see
    /// [`write_sets_with_matches`]), on PostgreSQL, where searches of one shape are one
    /// statement over their values, planned once: the plan of that statement. For the plan
    /// regression tests.
    pub async fn explain_no_match(&self, searches: &[NoMatchRequired]) -> Result<Vec<String>, StoreError> {
        let searches: Vec<(usize, &NoMatchRequired)> = searches.iter().enumerate().collect();
        let mut shapes = no_match_shapes(&searches)?.into_iter();
        let (Some(shape), None) = (shapes.next(), shapes.next()) else {
            return Err(StoreError::Internal("the searches are not of one shape".to_owned()));
        };
        let mut sql = Sql::new(BackendKind::Postgres);
        sql.args.add(shape.rows).map_err(bind_error)?;
        self.explain(&shape.statement, sql).await
    }

    async fn explain(&self, text: &str, sql: Sql) -> Result<Vec<String>, StoreError> {
        let mut conn = self.reader().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        if self.kind() == BackendKind::Postgres {
            sqlx::query("SET LOCAL enable_seqscan = off").execute(&mut *tx).await?;
        }
        let lines = super::rows::plan_lines(&mut tx, text, sql.args).await?;
        tx.rollback().await?;
        Ok(lines)
    }

    /// What a conditional create must know before it claims its key, in one statement: the
    /// resource the key points at now, and the ids of live resources matching the criteria, at
    /// most `limit`. One statement reads one state of the database (a snapshot on both), so a
    /// key whose resource the search does not find is truly stale (deleted or changed), never
    /// merely not yet visible: the key and its resource commit together. (Two statements, the
    /// key read first for that reason, were one round trip in three of a submission's reads.)
    pub async fn conditional_lookup(
        &self,
        claim: &ConditionalKey<'_>,
        scope: &TenantScope,
        query: &SearchQuery,
        limit: u32,
    ) -> Result<ConditionalLookup, StoreError> {
        let mut sql = Sql::new(self.kind());
        let page = SearchPage { query, sort: &[], horizon: None, position: None, limit };
        let text = conditional_lookup_statement(&mut sql, claim, scope, &page)?;
        let rows = sqlx::query_with(&text, sql.args).fetch_all(&mut *self.reader().await?).await?;
        let mut lookup = ConditionalLookup { claimed: None, matches: Vec::new() };
        for row in &rows {
            lookup.claimed = row.try_get::<Option<String>, _>("claimed")?;
            if let Some(id) = row.try_get::<Option<String>, _>("match_id")? {
                lookup.matches.push(ResourceId::parse(&id).map_err(|e| StoreError::Internal(e.to_string()))?);
            }
        }
        Ok(lookup)
    }

    /// Ids of live resources matching every clause, at most `limit` of them.
    pub async fn find_ids(
        &self,
        scope: &TenantScope,
        query: &SearchQuery,
        limit: u32,
    ) -> Result<Vec<ResourceId>, StoreError> {
        let page = SearchPage { query, sort: &[], horizon: None, position: None, limit };
        let hits = self.search_page(scope, &page).await?;
        Ok(hits.into_iter().map(|hit| hit.version.id).collect())
    }

    /// The live resources of `target_types` that resources `ids` of `param`'s type reference
    /// through it, that the caller may see (`_include`), in type and id order. The ids are the
    /// caller's own matches, already inside its scope; the targets are read through it.
    pub async fn included(
        &self,
        scope: &TenantScope,
        param: &'static SearchParam,
        target_types: &[ResourceType],
        ids: &[&str],
    ) -> Result<Vec<StoredVersion>, StoreError> {
        if ids.is_empty() || target_types.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new(self.kind());
        let text = included_statement(&mut sql, scope, param, target_types, ids)?;
        let rows = self.bounded_read(async |conn| sqlx::query_with(&text, sql.args).fetch_all(conn).await).await?;
        rows.iter().map(version_from_row).collect()
    }

    /// Live resources of `param`'s type that reference one of `target_ids` of `target_type`
    /// through it, that the caller may see, at most `limit` (`_revinclude`).
    pub async fn referencing(
        &self,
        scope: &TenantScope,
        param: &'static SearchParam,
        target_type: ResourceType,
        target_ids: &[&str],
        limit: u32,
    ) -> Result<Vec<StoredVersion>, StoreError> {
        if target_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new(self.kind());
        let text = referencing_statement(&mut sql, scope, param, target_type, target_ids, limit)?;
        let rows = self.bounded_read(async |conn| sqlx::query_with(&text, sql.args).fetch_all(conn).await).await?;
        rows.iter().map(version_from_row).collect()
    }

    /// The plan of a `_revinclude` read ([`Store::referencing`]), as [`Store::explain_search`]
    /// gives it. For the plan regression tests.
    pub async fn explain_revinclude(
        &self,
        scope: &TenantScope,
        param: &'static SearchParam,
        target_type: ResourceType,
        target_ids: &[&str],
    ) -> Result<Vec<String>, StoreError> {
        let mut sql = Sql::new(self.kind());
        let text = referencing_statement(&mut sql, scope, param, target_type, target_ids, 1000)?;
        self.explain(&text, sql).await
    }
}

/// The statement of [`Store::referencing`].
fn referencing_statement(
    sql: &mut Sql,
    scope: &TenantScope,
    param: &'static SearchParam,
    target_type: ResourceType,
    target_ids: &[&str],
    limit: u32,
) -> Result<String, StoreError> {
    let source = param.resource_type;
    let source_placeholder = sql.text(source.as_str())?;
    let key_test = key_test("x", param);
    let target_placeholder = sql.text(target_type.as_str())?;
    // The referencing rows by their target, one probe of the reference index per target id.
    // PostgreSQL without statistics read a page's ten targets as a filter over every row of
    // the parameter (every Task's `focus`); a lateral join probes per id whatever the
    // statistics. SQLite's plan of the `IN` list is already a probe per id.
    let referencing = match sql.backend {
        BackendKind::Sqlite => format!(
            "SELECT x.id FROM idx_reference x WHERE {key_test} AND x.target_id IN ({}) \
             AND x.target_type = {target_placeholder}",
            sql.list(target_ids.iter().copied())?
        ),
        BackendKind::Postgres => format!(
            "SELECT x.id FROM (VALUES {}) AS wanted(target_id) CROSS JOIN LATERAL \
             (SELECT x.id FROM idx_reference x WHERE {key_test} AND x.target_id = wanted.target_id \
              AND x.target_type = {target_placeholder}{}) x",
            sql.rows(target_ids.iter().copied())?,
            sql.per_row_fence()
        ),
    };
    let tenancy = sql.tenancy(scope, Probe::PerRow)?;
    let limit = sql.int(i64::from(limit))?;
    Ok(format!(
        "SELECT {VERSION_COLUMNS} FROM resources r WHERE r.resource_type = {source_placeholder} AND r.deleted = 0 \
         AND r.id IN ({referencing}) AND {tenancy} ORDER BY r.id LIMIT {limit}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_their_wildcards() {
        assert_eq!(like_escape("50%_a\\b"), "50\\%\\_a\\\\b");
    }

    #[test]
    fn the_order_ends_with_the_id_and_nothing_after_it() {
        let last = SortKey { field: SortField::LastUpdated, descending: true };
        let id = SortKey { field: SortField::Id, descending: false };
        assert_eq!(
            full_order(&[last]),
            vec![last, SortKey { field: SortField::Id, descending: true }],
            "tie-breaker follows the first key"
        );
        assert_eq!(full_order(&[id, last]), vec![id], "nothing sorts after the unique id");
        assert_eq!(full_order(&[]), vec![SortKey { field: SortField::Id, descending: false }], "default: by id");
    }
}
