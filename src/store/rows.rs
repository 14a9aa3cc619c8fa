//! Many rows in few statements, the way each database takes them best.
//!
//! The group commit's writer applies the rows of many requests at once, and everything it
//! does is on the path of every write: on SQLite each statement is a hand-off to the
//! connection's thread and back, on PostgreSQL a round trip over the socket, each of which
//! waits for the other side to be scheduled on a busy machine.
//!
//! - On SQLite, multi-row `VALUES` statements, chunked in powers of two (see
//!   [`statement_chunks`]) so that each table has a few statement texts the connection keeps
//!   prepared.
//! - On PostgreSQL, one statement per table whatever the number of rows, the rows bound as one
//!   JSON array of arrays and unpacked by `jsonb_array_elements`; and, where the rows of
//!   several tables go in at the same point, all of them in one statement (each insert a
//!   data-modifying `WITH` clause, see [`insert_together`]). A referral batch's resources,
//!   search index rows, visibility, conditional keys and audit records then cost one round
//!   trip, not thirty: the statement text is the same for any number of rows without bodies,
//!   so it is prepared once, where `VALUES` chunks were several statements per table. Rows
//!   that carry resource bodies ([`Table::bodies`]) are not JSON: kilobytes of JSON quoted
//!   inside JSON took PostgreSQL's JSON parser a fifth of the writer's backend to read back;
//!   those rows are bound value by value, as on SQLite, in one `VALUES` list per 256 rows
//!   padded to a power of two with rows of NULLs that the statement skips (see
//!   [`padded_chunks`]).

use serde::ser::SerializeSeq;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{AnyConnection, Arguments};

use super::StoreError;

/// What differs between the two databases in the statements built here. Every placeholder of
/// a statement is bound once, in the order it appears, so both styles bind the same arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    /// Placeholders `$1, $2, …`; many rows as one JSON argument.
    Postgres,
    /// Placeholders `?`: SQLite keeps the names of numbered parameters in a list it searches
    /// linearly, when preparing and again (through sqlx) when binding each value: quadratic
    /// in the thousands of values of a group commit's multi-row inserts, a fifth of the
    /// machine's CPU with 64 clients submitting referrals. Anonymous ones have no name to find.
    Sqlite,
}

impl From<Dialect> for super::BackendKind {
    fn from(dialect: Dialect) -> Self {
        match dialect {
            Dialect::Postgres => super::BackendKind::Postgres,
            Dialect::Sqlite => super::BackendKind::Sqlite,
        }
    }
}

impl Dialect {
    pub(super) fn of(conn: &AnyConnection) -> Self {
        if conn.backend_name() == <sqlx::Sqlite as sqlx::Database>::NAME {
            Dialect::Sqlite
        } else {
            Dialect::Postgres
        }
    }

    /// How a multi-row insert begins. On SQLite, `OR FAIL`: a multi-row `INSERT` that may abort
    /// (any `NOT NULL` or key) otherwise opens a statement journal, copying every page it
    /// touches first so that it could undo itself alone; that copying was a sixth of the
    /// writer's time. A failing statement here never needs that: its whole write set is
    /// rolled back (to its savepoint, or the transaction) whenever a statement fails.
    fn insert_into(self) -> &'static str {
        match self {
            Dialect::Postgres => "INSERT INTO",
            Dialect::Sqlite => "INSERT OR FAIL INTO",
        }
    }

    fn push_nth(self, sql: &mut String, n: usize) {
        match self {
            Dialect::Postgres => {
                sql.push('$');
                sql.push_str(&n.to_string());
            }
            Dialect::Sqlite => sql.push('?'),
        }
    }
}

/// A column's SQL type, which PostgreSQL's `json_to_recordset` must be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SqlType {
    Text,
    /// 32 bits (a parameter's key): bound as an `i64` cell like the other integers.
    Integer,
    BigInt,
}

impl SqlType {
    fn name(self) -> &'static str {
        match self {
            SqlType::Text => "text",
            SqlType::Integer => "integer",
            SqlType::BigInt => "bigint",
        }
    }
}

/// A table and the columns a statement fills, in order.
#[derive(Debug)]
pub(super) struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, SqlType)],
    /// Whether its rows carry resource bodies (kilobytes of text each): bound value by value
    /// on PostgreSQL too (see the module's notes).
    pub bodies: bool,
}

impl Table {
    fn column_list(&self) -> String {
        self.columns.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
    }

    /// `SELECT x->>0, (x->>1)::bigint FROM jsonb_array_elements($n::jsonb) AS r(x)`: the rows
    /// of the `n`th argument, a JSON array of rows, each an array of the columns' values.
    fn select_rows_of_argument(&self, n: usize) -> String {
        let columns: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| match ty {
                SqlType::Text => format!("x->>{i}"),
                other => format!("(x->>{i})::{}", other.name()),
            })
            .collect();
        format!("SELECT {} FROM jsonb_array_elements(${n}::jsonb) AS r(x)", columns.join(", "))
    }
}

/// One value of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Cell<'a> {
    Text(Option<&'a str>),
    Int(i64),
}

impl<'a> From<&'a str> for Cell<'a> {
    fn from(text: &'a str) -> Self {
        Cell::Text(Some(text))
    }
}

impl<'a> From<Option<&'a str>> for Cell<'a> {
    fn from(text: Option<&'a str>) -> Self {
        Cell::Text(text)
    }
}

impl From<i64> for Cell<'_> {
    fn from(number: i64) -> Self {
        Cell::Int(number)
    }
}

/// Rows for one table, each with a value for every column of the table, in order.
#[derive(Debug)]
pub(super) struct Rows<'a> {
    table: &'static Table,
    cells: Vec<Cell<'a>>,
}

impl<'a> Rows<'a> {
    pub(super) fn new(table: &'static Table) -> Self {
        Rows { table, cells: Vec::new() }
    }

    /// Adds a row. A row of the wrong width is a bug in the caller.
    pub(super) fn push<const N: usize>(&mut self, row: [Cell<'a>; N]) {
        assert_eq!(N, self.table.columns.len(), "a row of {} has {} columns", self.table.name, N);
        self.cells.extend(row);
    }

    pub(super) fn len(&self) -> usize {
        self.cells.len() / self.table.columns.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    fn rows(&self) -> std::slice::ChunksExact<'_, Cell<'a>> {
        self.cells.chunks_exact(self.table.columns.len())
    }

    /// Each row's values, to change in place.
    pub(super) fn rows_mut(&mut self) -> std::slice::ChunksExactMut<'_, Cell<'a>> {
        self.cells.chunks_exact_mut(self.table.columns.len())
    }

    /// The rows as a JSON array of rows, each an array of its values in column order (see
    /// [`Table::select_rows_of_argument`]).
    fn to_json(&self) -> Result<String, StoreError> {
        serde_json::to_string(&JsonRows(self)).map_err(|e| StoreError::Internal(format!("cannot encode rows: {e}")))
    }
}

struct JsonRows<'r, 'a>(&'r Rows<'a>);

impl serde::Serialize for JsonRows<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut rows = serializer.serialize_seq(Some(self.0.len()))?;
        for row in self.0.rows() {
            rows.serialize_element(&JsonRow(row))?;
        }
        rows.end()
    }
}

struct JsonRow<'r, 'a>(&'r [Cell<'a>]);

impl serde::Serialize for JsonRow<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut values = serializer.serialize_seq(Some(self.0.len()))?;
        for cell in self.0 {
            match cell {
                Cell::Text(text) => values.serialize_element(text)?,
                Cell::Int(number) => values.serialize_element(number)?,
            }
        }
        values.end()
    }
}

/// What an insert does about rows whose key is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Taken {
    /// Skips them (`ON CONFLICT DO NOTHING`): the row there is as good as the new one.
    Skip,
    /// Nothing: the table has no unique key (the search index tables). Not `Skip` for safety's
    /// sake: PostgreSQL inserts every row of an `ON CONFLICT` statement speculatively, a lock
    /// taken and released and a confirmation written to the WAL per row, even when there is no
    /// unique index to check. That was 25 of a referral's 42 rows.
    CannotBe,
    /// Updates the row there as the clause given says (` ON CONFLICT (<key>) DO UPDATE SET
    /// …`, in the syntax both databases share): the new row says more than the one there. A
    /// statement may then hold only one row per key.
    Update(&'static str),
}

impl Taken {
    fn clause(self) -> &'static str {
        match self {
            Taken::Skip => " ON CONFLICT DO NOTHING",
            Taken::CannotBe => "",
            Taken::Update(clause) => clause,
        }
    }
}

/// Bound values per statement at most: under SQLite's 32,766 and PostgreSQL's 65,535.
const MAX_BOUND_VALUES: usize = 30_000;

/// Rows per multi-row statement at most (a power of two).
const MAX_ROWS_PER_STATEMENT: usize = 256;

/// Splits `items` into the chunks of one multi-row statement each: powers of two, largest
/// first (300 rows: 256, 32, 8, 4). Each statement text is then one of a few per table, which
/// the connection's statement cache keeps prepared; a statement for every batch's exact row
/// count had to be parsed and compiled anew each time, thousands of values long.
pub(super) fn statement_chunks<T>(items: &[T], width: usize) -> impl Iterator<Item = &[T]> {
    let most = rows_per_statement(width);
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = if rest.len() >= most { most } else { 1 << rest.len().ilog2() };
        let (chunk, after) = rest.split_at(size);
        rest = after;
        Some(chunk)
    })
}

/// On PostgreSQL, the chunks of rows that carry bodies, each with the rows of padding that
/// bring it up to a power of two: one statement per [`MAX_ROWS_PER_STATEMENT`] rows, whatever
/// their number, where chunks of exact powers of two were up to eight statements per table
/// (60 rows: 32, 16, 8 and 4), each a round trip of the writer's, and still only a few
/// statement texts per table for the connection to keep prepared. A padding row is all NULLs,
/// and the statement keeps only the rows whose first column is not (a key column, never NULL).
fn padded_chunks<T>(items: &[T], width: usize) -> impl Iterator<Item = (&[T], usize)> {
    items.chunks(rows_per_statement(width)).map(|chunk| (chunk, chunk.len().next_power_of_two() - chunk.len()))
}

/// Rows of `width` values that one multi-row statement takes at most: a power of two, within
/// [`MAX_BOUND_VALUES`] and [`MAX_ROWS_PER_STATEMENT`].
fn rows_per_statement(width: usize) -> usize {
    let most = (MAX_BOUND_VALUES / width.max(1)).min(MAX_ROWS_PER_STATEMENT);
    if most.is_power_of_two() {
        most
    } else {
        most.next_power_of_two() / 2
    }
}

/// `($1::text, $2::bigint), …`: `rows` rows of the table's columns, each placeholder cast to
/// its column's type (a `VALUES` list under `SELECT` has no target column to take it from),
/// numbered from `first`.
fn typed_values_placeholders(table: &Table, rows: usize, first: usize) -> String {
    values_list(rows, table.columns.len(), |sql, n, column| {
        Dialect::Postgres.push_nth(sql, first - 1 + n);
        sql.push_str("::");
        sql.push_str(table.columns[column].1.name());
    })
}

/// On PostgreSQL, binds `rows` of `table` and then `padding` rows of NULLs, and returns the
/// `SELECT` of the rows that are not padding, its placeholders numbered from `first` (see
/// [`padded_chunks`]).
fn bind_padded<'q>(
    args: &mut AnyArguments<'q>,
    table: &Table,
    rows: &[&[Cell<'q>]],
    padding: usize,
    first: usize,
) -> Result<String, StoreError> {
    for row in rows {
        bind_cells(args, row)?;
    }
    bind_all(args, |args| {
        for _ in 0..padding {
            for (_, ty) in table.columns {
                match ty {
                    SqlType::Text => args.add(None::<&str>)?,
                    SqlType::Integer | SqlType::BigInt => args.add(None::<i64>)?,
                }
            }
        }
        Ok(())
    })?;
    let values = typed_values_placeholders(table, rows.len() + padding, first);
    Ok(format!(
        "SELECT * FROM (VALUES {values}) AS v({}) WHERE v.{} IS NOT NULL",
        table.column_list(),
        table.columns[0].0
    ))
}

/// `($1, $2), ($3, $4)…` or `(?, ?), (?, ?)…`: `rows` rows of `width` placeholders.
fn values_placeholders(dialect: Dialect, rows: usize, width: usize) -> String {
    values_list(rows, width, |sql, n, _| dialect.push_nth(sql, n))
}

/// `rows` parenthesised rows of `width` cells, each written by `cell` given its placeholder's
/// number (from 1, row after row) and its column.
fn values_list(rows: usize, width: usize, mut cell: impl FnMut(&mut String, usize, usize)) -> String {
    let mut sql = String::with_capacity(rows * width * 8);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..width {
            if column > 0 {
                sql.push_str(", ");
            }
            cell(&mut sql, row * width + column + 1, column);
        }
        sql.push(')');
    }
    sql
}

/// Runs `bind`, turning a binding error into a store error.
pub(super) fn bind_all<'q>(
    args: &mut AnyArguments<'q>,
    bind: impl FnOnce(&mut AnyArguments<'q>) -> Result<(), sqlx::error::BoxDynError>,
) -> Result<(), StoreError> {
    bind(args).map_err(|e| StoreError::Internal(format!("cannot bind a value: {e}")))
}

fn bind_cells<'q>(args: &mut AnyArguments<'q>, cells: &[Cell<'q>]) -> Result<(), StoreError> {
    bind_all(args, |args| {
        for cell in cells {
            match *cell {
                Cell::Text(text) => args.add(text)?,
                Cell::Int(number) => args.add(number)?,
            }
        }
        Ok(())
    })
}

/// The statements inserting `rows` (`tail` after each: a `RETURNING` clause), with their
/// arguments: on PostgreSQL one (unless the rows carry bodies), otherwise one per chunk.
fn insert_statements<'q>(
    dialect: Dialect,
    rows: &'q Rows<'q>,
    taken: Taken,
    tail: &str,
) -> Result<Vec<(String, AnyArguments<'q>)>, StoreError> {
    let table = rows.table;
    let head = format!("{} {} ({})", dialect.insert_into(), table.name, table.column_list());
    match dialect {
        Dialect::Postgres if !table.bodies => {
            let mut args = AnyArguments::default();
            let json = rows.to_json()?;
            bind_all(&mut args, |args| args.add(json))?;
            let sql = format!("{head} {}{}{tail}", table.select_rows_of_argument(1), taken.clause());
            Ok(vec![(sql, args)])
        }
        Dialect::Postgres => {
            let rows: Vec<&[Cell<'q>]> = rows.rows().collect();
            padded_chunks(&rows, table.columns.len())
                .map(|(chunk, padding)| {
                    let mut args = AnyArguments::default();
                    let select = bind_padded(&mut args, table, chunk, padding, 1)?;
                    Ok((format!("{head} {select}{}{tail}", taken.clause()), args))
                })
                .collect()
        }
        Dialect::Sqlite => {
            let width = table.columns.len();
            let rows: Vec<&[Cell<'q>]> = rows.rows().collect();
            statement_chunks(&rows, width)
                .map(|chunk| {
                    let mut args = AnyArguments::default();
                    for row in chunk {
                        bind_cells(&mut args, row)?;
                    }
                    let values = values_placeholders(dialect, chunk.len(), width);
                    Ok((format!("{head} VALUES {values}{}{tail}", taken.clause()), args))
                })
                .collect()
        }
    }
}

/// One of the inserts [`insert_together`] makes at one point of a transaction.
#[derive(Debug, Clone, Copy)]
pub(super) enum Insert<'r, 'a> {
    /// The rows, each whose key is taken treated as `Taken` says.
    Rows(&'r Rows<'a>, Taken),
    /// On PostgreSQL only, the rows (which cannot collide) and each again into the table given,
    /// whose every column the first table has (filled by the row or by the table itself, as a
    /// sequence's number is): `WITH f AS (INSERT … RETURNING <its columns>) INSERT INTO … SELECT
    /// … FROM f`. The values are bound once.
    Twice(&'r Rows<'a>, &'static Table),
}

impl<'r, 'a> Insert<'r, 'a> {
    fn rows(self) -> &'r Rows<'a> {
        match self {
            Insert::Rows(rows, _) | Insert::Twice(rows, _) => rows,
        }
    }

    /// Whether the rows it inserts can be fewer than its rows: counted by the statement (for
    /// the others a statement that succeeds leaves every row there, inserted or updated).
    fn may_insert_fewer(self) -> bool {
        matches!(self, Insert::Rows(_, Taken::Skip) | Insert::Twice(..))
    }
}

/// Makes every insert of `inserts` and returns how many rows each inserted (for an
/// [`Insert::Twice`], into its second table), in order.
///
/// On PostgreSQL all of them are one statement, each insert a data-modifying `WITH` clause: a
/// referral batch's new resources, search index rows, visibility, conditional keys and audit
/// records are one round trip of the writer's, where they were four, each two hand-offs that
/// wait for a core on a busy machine. Rows without bodies are one JSON argument per table (the
/// same text for any number of rows); rows with bodies are bound value by value in a `VALUES`
/// list padded to a power of two (see [`padded_chunks`]), whose chunks before the last, beyond
/// 256 rows, go in statements of their own first. The clauses of one statement run in no order
/// PostgreSQL promises, so no two inserts given together may insert the same key (the caller's
/// to ensure: a conditional key, a visibility row). On SQLite, a few statements per table, in
/// order (each a hand-off to the connection's thread, not a round trip).
pub(super) async fn insert_together(
    conn: &mut AnyConnection,
    inserts: &[Insert<'_, '_>],
) -> Result<Vec<u64>, StoreError> {
    let mut counts = vec![0; inserts.len()];
    match Dialect::of(conn) {
        Dialect::Postgres => {
            let mut together = Together::default();
            for (n, &insert) in inserts.iter().enumerate() {
                let rows = insert.rows();
                if rows.is_empty() {
                    continue;
                }
                if !rows.table.bodies {
                    together.add(n, insert, RowSource::Json)?;
                    continue;
                }
                let all: Vec<&[Cell<'_>]> = rows.rows().collect();
                let chunks: Vec<(&[&[Cell<'_>]], usize)> = padded_chunks(&all, rows.table.columns.len()).collect();
                let Some((&(last, padding), earlier)) = chunks.split_last() else { continue };
                for &(chunk, padding) in earlier {
                    let mut alone = Together::default();
                    alone.add(n, insert, RowSource::Values { rows: chunk, padding })?;
                    alone.run(conn, &mut counts).await?;
                }
                together.add(n, insert, RowSource::Values { rows: last, padding })?;
            }
            together.run(conn, &mut counts).await?;
        }
        dialect @ Dialect::Sqlite => {
            for (n, &insert) in inserts.iter().enumerate().filter(|(_, insert)| !insert.rows().is_empty()) {
                let Insert::Rows(rows, taken) = insert else {
                    return Err(StoreError::Internal(format!(
                        "a double insert into {} on SQLite",
                        insert.rows().table.name
                    )));
                };
                for (sql, args) in insert_statements(dialect, rows, taken, "")? {
                    counts[n] += sqlx::query_with(&sql, args).execute(&mut *conn).await?.rows_affected();
                }
            }
        }
    }
    for (count, insert) in counts.iter_mut().zip(inserts) {
        if !insert.may_insert_fewer() {
            *count = insert.rows().len() as u64;
        }
    }
    Ok(counts)
}

/// Where the rows of one `WITH` clause of [`Together`] come from.
enum RowSource<'r, 'q> {
    /// All of the insert's rows, as one JSON argument (see [`Table::select_rows_of_argument`]).
    Json,
    /// These of its rows, bound value by value, `padding` rows of NULLs after them that the
    /// clause skips.
    Values { rows: &'r [&'r [Cell<'q>]], padding: usize },
}

/// One PostgreSQL statement of inserts, each a data-modifying `WITH` clause, being built: its
/// clauses, each with the insert whose rows the statement counts from it (if any), and its
/// arguments (bound in the order their placeholders appear).
#[derive(Default)]
struct Together<'q> {
    clauses: Vec<(String, Option<usize>)>,
    args: AnyArguments<'q>,
    bound: usize,
}

impl<'q> Together<'q> {
    /// Adds the rows of `source` as insert `n`, `insert`.
    fn add(&mut self, n: usize, insert: Insert<'_, 'q>, source: RowSource<'_, 'q>) -> Result<(), StoreError> {
        let table = insert.rows().table;
        let select = match source {
            RowSource::Json => {
                let json = insert.rows().to_json()?;
                bind_all(&mut self.args, |args| args.add(json))?;
                self.bound += 1;
                table.select_rows_of_argument(self.bound)
            }
            RowSource::Values { rows, padding } => {
                let select = bind_padded(&mut self.args, table, rows, padding, self.bound + 1)?;
                self.bound += (rows.len() + padding) * table.columns.len();
                select
            }
        };
        let (name, columns) = (table.name, table.column_list());
        let counted = insert.may_insert_fewer().then_some(n);
        let returning = if counted.is_some() { " RETURNING 1" } else { "" };
        let clause = self.clauses.len();
        match insert {
            Insert::Rows(_, taken) => self.clauses.push((
                format!("i{clause} AS (INSERT INTO {name} ({columns}) {select}{}{returning})", taken.clause()),
                counted,
            )),
            Insert::Twice(_, then) => {
                let then_columns = then.column_list();
                self.clauses.push((
                    format!("i{clause} AS (INSERT INTO {name} ({columns}) {select} RETURNING {then_columns})"),
                    None,
                ));
                self.clauses.push((
                    format!(
                        "i{} AS (INSERT INTO {} ({then_columns}) SELECT {then_columns} FROM i{clause}{returning})",
                        clause + 1,
                        then.name
                    ),
                    counted,
                ));
            }
        }
        Ok(())
    }

    /// The statement's text: each counted insert's count a column of its one row.
    fn sql(&self) -> String {
        // Every data-modifying `WITH` clause runs to completion, read or not.
        let counts: Vec<String> = self
            .clauses
            .iter()
            .enumerate()
            .filter(|(_, (_, counted))| counted.is_some())
            .map(|(clause, _)| format!("(SELECT count(*) FROM i{clause})"))
            .collect();
        let select = if counts.is_empty() { "1".to_owned() } else { counts.join(", ") };
        let clauses: Vec<&str> = self.clauses.iter().map(|(clause, _)| clause.as_str()).collect();
        format!("WITH {} SELECT {select}", clauses.join(", "))
    }

    /// Runs the statement, if it has any clause, adding each counted insert's rows to `counts`.
    async fn run(self, conn: &mut AnyConnection, counts: &mut [u64]) -> Result<(), StoreError> {
        if self.clauses.is_empty() {
            return Ok(());
        }
        let sql = self.sql();
        let counted: Vec<usize> = self.clauses.iter().filter_map(|(_, counted)| *counted).collect();
        let row = sqlx::query_with(&sql, self.args).fetch_one(&mut *conn).await?;
        for (column, n) in counted.into_iter().enumerate() {
            let count: i64 = sqlx::Row::try_get(&row, column)?;
            counts[n] += u64::try_from(count).unwrap_or_default();
        }
        Ok(())
    }
}

/// Inserts `rows` and returns what `returning` (a `RETURNING` clause) names of the rows
/// inserted.
pub(super) async fn insert_returning(
    conn: &mut AnyConnection,
    rows: &Rows<'_>,
    taken: Taken,
    returning: &str,
) -> Result<Vec<AnyRow>, StoreError> {
    let mut inserted = Vec::with_capacity(rows.len());
    if rows.is_empty() {
        return Ok(inserted);
    }
    for (sql, args) in insert_statements(Dialect::of(conn), rows, taken, &format!(" {returning}"))? {
        inserted.extend(sqlx::query_with(&sql, args).fetch_all(&mut *conn).await?);
    }
    Ok(inserted)
}

/// Updates rows of `target` from `rows`, in one statement per chunk of them (as for inserts,
/// see [`statement_chunks`]): a row of `target` takes a row of `rows` where each pair of
/// `matched_on` (a column of `target`, a column of `rows`) is equal, and then each column named
/// in `set` takes the value of the column of `rows` of the same name. Returns what `returning`
/// (a `RETURNING` clause of columns of `target`) names of the rows updated. One statement
/// instead of one per row: each is a round trip through the writer's connection, which every
/// request of a group commit waits on (64 of them in a batch of status changes).
///
/// The rows are a `VALUES` list, whose columns both databases name `column1`, `column2`, …
/// (SQLite has no column aliases for it); each key of `matched_on` is an equality on an index
/// of `target` that both databases plan as one probe per row of the list.
pub(super) async fn update_returning(
    conn: &mut AnyConnection,
    target: &str,
    rows: &Rows<'_>,
    matched_on: &[(&str, &str)],
    set: &[&str],
    returning: &str,
) -> Result<Vec<AnyRow>, StoreError> {
    let mut updated = Vec::with_capacity(rows.len());
    if rows.is_empty() {
        return Ok(updated);
    }
    let table = rows.table;
    let column_of = |name: &str| -> Result<String, StoreError> {
        let position = table
            .columns
            .iter()
            .position(|(column, _)| *column == name)
            .ok_or_else(|| StoreError::Internal(format!("the rows updating {target} have no column {name}")))?;
        Ok(format!("v.column{}", position + 1))
    };
    let assignments =
        set.iter().map(|name| Ok(format!("{name} = {}", column_of(name)?))).collect::<Result<Vec<_>, StoreError>>()?;
    let conditions = matched_on
        .iter()
        .map(|(column, from)| Ok(format!("{target}.{column} = {}", column_of(from)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    let (assignments, conditions) = (assignments.join(", "), conditions.join(" AND "));
    let dialect = Dialect::of(conn);
    let width = table.columns.len();
    let all: Vec<&[Cell<'_>]> = rows.rows().collect();
    for chunk in statement_chunks(&all, width) {
        let mut args = AnyArguments::default();
        for row in chunk {
            bind_cells(&mut args, row)?;
        }
        let values = values_placeholders(dialect, chunk.len(), width);
        let sql =
            format!("UPDATE {target} SET {assignments} FROM (VALUES {values}) AS v WHERE {conditions} {returning}");
        updated.extend(sqlx::query_with(&sql, args).fetch_all(&mut *conn).await?);
    }
    Ok(updated)
}

/// The owners of rows, for [`delete_owned`].
pub(super) static OWNERS: Table =
    Table { name: "owners", columns: &[("resource_type", SqlType::Text), ("id", SqlType::Text)], bodies: false };

/// Rows of one table to delete: those owned by any of `owners` (rows of [`OWNERS`]) that also
/// meet `extra` (` AND …` of the table's columns, or empty).
pub(super) struct OwnedRows<'r, 'a> {
    pub table: &'static str,
    pub owners: &'r Rows<'a>,
    pub extra: &'static str,
}

/// Deletes the rows of each of `deletes`. Each owner is an equality on the table's owner index
/// (or primary key), looked up one by one:
///
/// - On PostgreSQL, all tables in one statement (each delete a data-modifying `WITH` clause),
///   the owners one JSON argument per table, each owner probed through a `LATERAL` subquery
///   and the rows found deleted by their `ctid`. PostgreSQL planned a join with rows it cannot
///   count (`jsonb_array_elements`, always 100 to it) as a hash join over a scan of the whole
///   table once it held a few tens of thousands of rows (about 350 status changes/s at 64
///   clients), and a list of `OR`ed owners as a bitmap scan, which never marks the index
///   entries of deleted rows dead: every update of a resource then visited every earlier
///   version's rows again until a vacuum (2.5 ms for 32 owners after a minute of status
///   changes). The writer's connection plans without bitmap scans and table scans (see
///   `connect`), so each probe is a plain index scan, which marks the entries of dead rows
///   it finds as dead once for all, and the rows found are deleted by a TID scan.
/// - On SQLite, a list of owners in the statement, in power-of-two chunks, a few statements
///   per table (each a hand-off to the connection's thread, not a round trip).
pub(super) async fn delete_owned(conn: &mut AnyConnection, deletes: &[OwnedRows<'_, '_>]) -> Result<(), StoreError> {
    for (sql, args) in owned_delete_statements(Dialect::of(conn), deletes)? {
        sqlx::query_with(&sql, args).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The plans of [`delete_owned`]'s statements, one line per plan node, planned on `conn`.
pub(super) async fn explain_owned_deletes(
    conn: &mut AnyConnection,
    deletes: &[OwnedRows<'_, '_>],
) -> Result<Vec<String>, StoreError> {
    let mut lines = Vec::new();
    for (sql, args) in owned_delete_statements(Dialect::of(conn), deletes)? {
        lines.extend(plan_lines(conn, &sql, args).await?);
    }
    Ok(lines)
}

/// The database's plan for `sql` with `args`, one line per plan node: `EXPLAIN QUERY PLAN` on
/// SQLite (the node's text is its fourth column), `EXPLAIN` on PostgreSQL. Planned with the
/// settings `conn` has; the statement does not run.
pub(super) async fn plan_lines(
    conn: &mut AnyConnection,
    sql: &str,
    args: AnyArguments<'_>,
) -> Result<Vec<String>, StoreError> {
    let (explain, column) = match Dialect::of(conn) {
        Dialect::Postgres => ("EXPLAIN", 0),
        Dialect::Sqlite => ("EXPLAIN QUERY PLAN", 3),
    };
    let rows = sqlx::query_with(&format!("{explain} {sql}"), args).fetch_all(&mut *conn).await?;
    rows.iter().map(|row| Ok(sqlx::Row::try_get::<String, _>(row, column)?)).collect()
}

/// The statements of [`delete_owned`], with their arguments.
fn owned_delete_statements<'q>(
    dialect: Dialect,
    deletes: &[OwnedRows<'_, 'q>],
) -> Result<Vec<(String, AnyArguments<'q>)>, StoreError> {
    let deletes: Vec<&OwnedRows<'_, 'q>> = deletes.iter().filter(|d| !d.owners.is_empty()).collect();
    let mut statements = Vec::new();
    if deletes.is_empty() {
        return Ok(statements);
    }
    match dialect {
        Dialect::Postgres => {
            let mut args = AnyArguments::default();
            let mut clauses = Vec::with_capacity(deletes.len());
            for (n, delete) in deletes.iter().enumerate() {
                let json = delete.owners.to_json()?;
                bind_all(&mut args, |args| args.add(json))?;
                clauses.push(format!(
                    "d{n} AS (DELETE FROM {table} WHERE ctid = ANY (ARRAY(SELECT t.ctid \
                     FROM jsonb_array_elements(${arg}::jsonb) AS o(x), \
                     LATERAL (SELECT ctid FROM {table} WHERE id = o.x->>1 AND resource_type = o.x->>0{extra} \
                     OFFSET 0) AS t)))",
                    table = delete.table,
                    arg = n + 1,
                    extra = delete.extra,
                ));
            }
            // Every data-modifying `WITH` clause runs to completion, read or not.
            statements.push((format!("WITH {} SELECT 1", clauses.join(", ")), args));
        }
        Dialect::Sqlite => {
            for delete in deletes {
                let rows: Vec<&[Cell<'q>]> = delete.owners.rows().collect();
                for chunk in statement_chunks(&rows, 2) {
                    let mut args = AnyArguments::default();
                    for owner in chunk {
                        bind_cells(&mut args, owner)?;
                    }
                    let conditions = vec!["(resource_type = ? AND id = ?)"; chunk.len()].join(" OR ");
                    let sql = format!("DELETE FROM {} WHERE ({conditions}){}", delete.table, delete.extra);
                    statements.push((sql, args));
                }
            }
        }
    }
    Ok(statements)
}

#[cfg(test)]
mod tests {
    use super::*;

    static PAIRS: Table =
        Table { name: "pairs", columns: &[("name", SqlType::Text), ("n", SqlType::BigInt)], bodies: false };
    static BODIES: Table =
        Table { name: "bodies", columns: &[("id", SqlType::Text), ("body", SqlType::Text)], bodies: true };

    #[test]
    fn values_placeholders_number_rows_after_one_another() {
        assert_eq!(values_placeholders(Dialect::Postgres, 2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(values_placeholders(Dialect::Postgres, 1, 1), "($1)");
    }

    #[test]
    fn sqlite_placeholders_are_anonymous_and_as_many() {
        assert_eq!(values_placeholders(Dialect::Sqlite, 2, 2), "(?, ?), (?, ?)");
    }

    #[test]
    fn statements_take_rows_in_powers_of_two_largest_first() {
        let rows: Vec<usize> = (0..300).collect();
        let sizes: Vec<usize> = statement_chunks(&rows, 6).map(<[usize]>::len).collect();
        assert_eq!(sizes, vec![256, 32, 8, 4]);
        let rejoined: Vec<usize> = statement_chunks(&rows, 6).flatten().copied().collect();
        assert_eq!(rejoined, rows, "every row once, in order");
        assert_eq!(statement_chunks(&rows[..1], 6).count(), 1);
        assert_eq!(statement_chunks::<usize>(&[], 6).count(), 0);
    }

    #[test]
    fn rows_become_json_arrays_in_column_order_with_nulls_and_escapes_kept() {
        let mut rows = Rows::new(&PAIRS);
        rows.push(["a \"quoted\"\nline".into(), 7.into()]);
        rows.push([Cell::Text(None), i64::MIN.into()]);
        assert_eq!(rows.len(), 2);
        let json: serde_json::Value = serde_json::from_str(&rows.to_json().expect("json")).expect("parses");
        assert_eq!(json, serde_json::json!([["a \"quoted\"\nline", 7], [null, i64::MIN]]));
    }

    #[test]
    fn postgres_takes_any_number_of_rows_in_one_statement_of_the_same_text() {
        let statements_for = |count: usize| {
            let mut rows = Rows::new(&PAIRS);
            for n in 0..count {
                rows.push(["x".into(), i64::try_from(n).expect("small").into()]);
            }
            let statements = insert_statements(Dialect::Postgres, &rows, Taken::Skip, " RETURNING n")
                .expect("statements")
                .into_iter()
                .map(|(sql, _)| sql)
                .collect::<Vec<_>>();
            statements
        };
        let one = statements_for(1);
        assert_eq!(
            one,
            vec!["INSERT INTO pairs (name, n) SELECT x->>0, (x->>1)::bigint FROM jsonb_array_elements($1::jsonb) \
                  AS r(x) ON CONFLICT DO NOTHING RETURNING n"
                .to_owned()]
        );
        assert_eq!(statements_for(300), one);
    }

    #[test]
    fn sqlite_takes_rows_in_chunks_of_values() {
        let mut rows = Rows::new(&PAIRS);
        for n in 0..3 {
            rows.push(["x".into(), n.into()]);
        }
        let statements: Vec<String> = insert_statements(Dialect::Sqlite, &rows, Taken::CannotBe, "")
            .expect("statements")
            .into_iter()
            .map(|(sql, _)| sql)
            .collect();
        assert_eq!(
            statements,
            vec![
                "INSERT OR FAIL INTO pairs (name, n) VALUES (?, ?), (?, ?)".to_owned(),
                "INSERT OR FAIL INTO pairs (name, n) VALUES (?, ?)".to_owned()
            ]
        );
    }

    #[test]
    fn rows_with_bodies_are_bound_value_by_value_on_postgres_too() {
        let mut rows = Rows::new(&BODIES);
        rows.push(["a".into(), "{}".into()]);
        let statements: Vec<String> = insert_statements(Dialect::Postgres, &rows, Taken::Skip, "")
            .expect("statements")
            .into_iter()
            .map(|(sql, _)| sql)
            .collect();
        assert_eq!(
            statements,
            vec!["INSERT INTO bodies (id, body) SELECT * FROM (VALUES ($1::text, $2::text)) AS v(id, body) \
                  WHERE v.id IS NOT NULL ON CONFLICT DO NOTHING"
                .to_owned()]
        );
    }

    #[test]
    fn postgres_pads_rows_with_bodies_to_a_power_of_two_in_one_statement_per_256() {
        let chunks = |count: usize| {
            let rows: Vec<usize> = (0..count).collect();
            padded_chunks(&rows, 7).map(|(chunk, padding)| (chunk.len(), padding)).collect::<Vec<_>>()
        };
        assert_eq!(chunks(60), vec![(60, 4)], "a batch of 20 referrals: one statement, not four");
        assert_eq!(chunks(1), vec![(1, 0)]);
        assert_eq!(chunks(256), vec![(256, 0)]);
        assert_eq!(chunks(300), vec![(256, 0), (44, 20)]);
        assert!(chunks(0).is_empty());
        let mut rows = Rows::new(&BODIES);
        for n in 0..3 {
            rows.push([["a", "b", "c"][n].into(), "{}".into()]);
        }
        let statements = insert_statements(Dialect::Postgres, &rows, Taken::CannotBe, "").expect("statements");
        assert_eq!(statements.len(), 1);
        assert!(statements[0].0.contains("($7::text, $8::text)) AS v(id, body)"), "{}", statements[0].0);
        assert!(!statements[0].0.contains("$9"), "four rows of two values: {}", statements[0].0);
    }

    static COPIES: Table = Table { name: "copies", columns: &[("id", SqlType::Text)], bodies: false };

    #[test]
    fn postgres_puts_inserts_together_in_one_statement_counting_those_that_may_insert_fewer() {
        let mut bodies = Rows::new(&BODIES);
        for id in ["a", "b", "c"] {
            bodies.push([id.into(), "{}".into()]);
        }
        let (mut index, mut keys) = (Rows::new(&PAIRS), Rows::new(&PAIRS));
        index.push(["x".into(), 1.into()]);
        keys.push(["y".into(), 2.into()]);
        let body_rows: Vec<&[Cell<'_>]> = bodies.rows().collect();
        let mut together = Together::default();
        let source = RowSource::Values { rows: &body_rows, padding: 1 };
        together.add(0, Insert::Twice(&bodies, &COPIES), source).expect("bodies");
        together.add(1, Insert::Rows(&index, Taken::CannotBe), RowSource::Json).expect("index");
        together.add(2, Insert::Rows(&keys, Taken::Skip), RowSource::Json).expect("keys");
        assert_eq!(
            together.sql(),
            "WITH i0 AS (INSERT INTO bodies (id, body) SELECT * FROM (VALUES ($1::text, $2::text), ($3::text, \
             $4::text), ($5::text, $6::text), ($7::text, $8::text)) AS v(id, body) WHERE v.id IS NOT NULL RETURNING \
             id), i1 AS (INSERT INTO copies (id) SELECT id FROM i0 RETURNING 1), i2 AS (INSERT INTO pairs (name, n) \
             SELECT x->>0, (x->>1)::bigint FROM jsonb_array_elements($9::jsonb) AS r(x)), i3 AS (INSERT INTO pairs \
             (name, n) SELECT x->>0, (x->>1)::bigint FROM jsonb_array_elements($10::jsonb) AS r(x) ON CONFLICT DO \
             NOTHING RETURNING 1) SELECT (SELECT count(*) FROM i1), (SELECT count(*) FROM i3)"
        );
        let counted: Vec<usize> = together.clauses.iter().filter_map(|(_, counted)| *counted).collect();
        assert_eq!(counted, vec![0, 2], "the copies and the keys that may be skipped; the index rows all go");
        assert_eq!(together.bound, 10, "eight values of the bodies and their padding, one JSON argument each after");
    }

    #[test]
    fn inserts_that_count_nothing_select_a_constant() {
        let mut index = Rows::new(&PAIRS);
        index.push(["x".into(), 1.into()]);
        let mut together = Together::default();
        together.add(0, Insert::Rows(&index, Taken::CannotBe), RowSource::Json).expect("index");
        assert!(together.sql().ends_with("AS r(x)) SELECT 1"), "{}", together.sql());
    }

    fn owners(count: usize) -> Rows<'static> {
        let mut owners = Rows::new(&OWNERS);
        for _ in 0..count {
            owners.push(["Task".into(), "an-id".into()]);
        }
        owners
    }

    fn owned_delete_texts(dialect: Dialect, deletes: &[OwnedRows<'_, '_>]) -> Vec<String> {
        owned_delete_statements(dialect, deletes).expect("statements").into_iter().map(|(sql, _)| sql).collect()
    }

    #[test]
    fn postgres_deletes_the_rows_of_every_table_in_one_statement_of_the_same_text_for_any_owners() {
        let (few, many, none) = (owners(3), owners(300), owners(0));
        let deletes = |owners| {
            [
                OwnedRows { table: "idx_token", owners, extra: "" },
                OwnedRows { table: "resource_visibility", owners, extra: " AND source = 'content'" },
            ]
        };
        let texts = owned_delete_texts(Dialect::Postgres, &deletes(&few));
        assert_eq!(texts.len(), 1, "one statement: {texts:?}");
        assert_eq!(owned_delete_texts(Dialect::Postgres, &deletes(&many)), texts, "the same text for 300 owners");
        let text = &texts[0];
        assert!(text.contains("d0 AS (DELETE FROM idx_token WHERE ctid = ANY"), "{text}");
        assert!(text.contains("jsonb_array_elements($2::jsonb)"), "each table its own argument: {text}");
        assert!(text.contains("resource_type = o.x->>0 AND source = 'content' OFFSET 0"), "{text}");
        assert!(owned_delete_texts(Dialect::Postgres, &deletes(&none)).is_empty(), "nothing to delete, no statement");
    }

    #[test]
    fn sqlite_deletes_the_rows_of_each_table_by_a_list_of_owners_in_chunks() {
        let few = owners(3);
        let texts = owned_delete_texts(Dialect::Sqlite, &[OwnedRows { table: "idx_date", owners: &few, extra: "" }]);
        assert_eq!(
            texts,
            vec![
                "DELETE FROM idx_date WHERE ((resource_type = ? AND id = ?) OR (resource_type = ? AND id = ?))"
                    .to_owned(),
                "DELETE FROM idx_date WHERE ((resource_type = ? AND id = ?))".to_owned(),
            ]
        );
    }

    #[test]
    #[should_panic(expected = "a row of pairs has 3 columns")]
    fn a_row_of_the_wrong_width_is_refused() {
        let mut rows = Rows::new(&PAIRS);
        rows.push(["x".into(), 1.into(), 2.into()]);
    }
}
