//! How a page's rows are found (`store::search::walk`), on SQLite and PostgreSQL: the walk
//! chosen for each broad search shape by how many rows each side holds, every walk reading
//! exactly the page a model of the data says (so a faster walk can never change an answer),
//! and the plan of each chosen walk stopping after its page instead of reading and sorting
//! every match.

use std::collections::BTreeSet;

use linkbridge::domain::ids::{ResourceId, VersionId};
use linkbridge::domain::instant::Instant;
use linkbridge::domain::resource_type::ResourceType;
use linkbridge::domain::search_params::extract_index;
use linkbridge::domain::search_query::{parse_search, PageDirection, ParseContext, SortKey};
use linkbridge::domain::tenancy::TenantScope;
use linkbridge::store::{
    PoolSettings, Position, Precondition, ResourceWrite, SearchPage, Store, Walk, WriteMethod, WriteSet, SMALL_SET,
};
use serde_json::{json, Value};

use crate::fixtures::ODS;
use crate::helpers::{test_database, Db, TestDatabase};
use crate::on_both_databases;

/// A practice that sent most referrals, and one that sent few.
const GP_MANY: &str = "GP0100";
const GP_FEW: &str = "GP0200";
/// A CLW service that holds most referrals, and one that holds few.
const CLW_MANY: &str = "CLW100";
const CLW_FEW: &str = "CLW200";
const TASKS: usize = 1200;
const OTHER_SYSTEM: &str = "https://example.org/other-identifiers";

/// One Task of the data set, as the model the answers are checked against.
#[derive(Debug, Clone)]
struct TaskRow {
    id: String,
    requester: &'static str,
    owner: Option<&'static str>,
    status: &'static str,
    /// `authoredOn` as days into 2026 (some Tasks share a day), or none.
    authored_day: Option<u32>,
    patient: String,
    /// Two identifiers of one value in two systems: one match, not two.
    shared_identifier: bool,
}

impl TaskRow {
    fn new(n: usize) -> Self {
        TaskRow {
            id: ResourceId::generate().as_str().to_owned(),
            requester: if n % 7 == 0 { GP_FEW } else { GP_MANY },
            owner: match n {
                _ if n % 10 == 9 => None,
                _ if n % 50 == 0 => Some(CLW_FEW),
                _ => Some(CLW_MANY),
            },
            status: if n % 3 == 0 || n % 10 == 9 { "requested" } else { "completed" },
            authored_day: (n % 13 != 0).then_some(1 + (n as u32 * 7) % 300),
            patient: format!("p{}", n % 100),
            shared_identifier: n % 37 == 0,
        }
    }

    fn visibility(&self) -> Vec<String> {
        let mut keys = vec![format!("org:{}", self.requester)];
        match self.owner {
            Some(owner) => keys.push(format!("org:{owner}")),
            None if self.status == "requested" => keys.push("any-performer".to_owned()),
            None => {}
        }
        keys
    }

    fn body(&self) -> Value {
        let mut identifiers = vec![json!({"system": "https://example.org/tasks", "value": self.id})];
        if self.shared_identifier {
            identifiers.push(json!({"system": "https://example.org/tasks", "value": "shared"}));
            identifiers.push(json!({"system": OTHER_SYSTEM, "value": "shared"}));
        }
        let mut body = json!({
            "resourceType": "Task", "id": self.id, "status": self.status, "intent": "order",
            "identifier": identifiers,
            "requester": {"identifier": {"system": ODS, "value": self.requester}},
            "for": {"reference": format!("Patient/{}", self.patient)},
        });
        if let Some(owner) = self.owner {
            body["owner"] = json!({"identifier": {"system": ODS, "value": owner}});
        }
        if let Some(day) = self.authored_day {
            let date = time::Date::from_ordinal_date(2026, day as u16).expect("a day of 2026");
            body["authoredOn"] = json!(date.to_string());
        }
        body
    }
}

fn write_of(row: &TaskRow) -> ResourceWrite {
    let body = row.body();
    ResourceWrite {
        resource_type: ResourceType::Task,
        id: ResourceId::parse(&row.id).expect("id"),
        version: VersionId::FIRST,
        last_updated: Instant::now(),
        method: WriteMethod::Create,
        precondition: Precondition::Absent,
        index: extract_index(ResourceType::Task, &body),
        body: body.to_string(),
        visibility: row.visibility(),
        visibility_grants: Vec::new(),
    }
}

fn scope_of(ods: &str, performer: bool) -> TenantScope {
    let mut keys = vec![format!("org:{ods}"), "everyone".to_owned()];
    if performer {
        keys.push("any-performer".to_owned());
    }
    TenantScope::Keys(keys)
}

/// A search shape, who asks it, the walk it must take, and the model of its answer.
struct Case {
    query: String,
    scope: TenantScope,
    expected_walk: Walk,
    /// Every candidate set is over [`SMALL_SET`]: the walk must stop after its page.
    every_set_large: bool,
    matches: fn(&TaskRow) -> bool,
}

/// The model's answer: the rows the scope sees that match, in the query's order (by id, or by
/// `authoredOn` with undated Tasks last either way and the id breaking ties the same way).
fn expected(rows: &[TaskRow], case: &Case, sort: &[SortKey]) -> Vec<String> {
    let mut found: Vec<&TaskRow> =
        rows.iter().filter(|r| case.scope.admits(&r.visibility()) && (case.matches)(r)).collect();
    let descending = sort.first().is_some_and(|k| k.descending);
    found.sort_by(|a, b| {
        let by_id = a.id.cmp(&b.id);
        let ordered = match sort.is_empty() {
            true => by_id,
            false => match (a.authored_day, b.authored_day) {
                (Some(x), Some(y)) => x.cmp(&y).then(by_id),
                // Undated last, whichever the direction: undo the reversal below.
                (None, Some(_)) => return std::cmp::Ordering::Greater,
                (Some(_), None) => return std::cmp::Ordering::Less,
                (None, None) => by_id,
            },
        };
        if descending {
            ordered.reverse()
        } else {
            ordered
        }
    });
    found.into_iter().map(|r| r.id.clone()).collect()
}

/// Every page of the search read by `walk`, forwards in pages of `size`; then back again from
/// the last page through `previous` positions, which must retrace the same rows.
async fn every_page(store: &Store, case: &Case, walk: Walk, size: u32) -> (Vec<String>, Vec<SortKey>) {
    let context = ParseContext { base_url: "http://lb.test", strict: true, now: Instant::now() };
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(case.query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let parsed = parse_search(ResourceType::Task, &params, &context).expect("parses");
    let mut seen: Vec<String> = Vec::new();
    let mut pages: Vec<Vec<linkbridge::store::SearchHit>> = Vec::new();
    loop {
        let last = pages.last().and_then(|page| page.last());
        let position =
            last.map(|hit| Position { direction: PageDirection::After, keys: &hit.keys, id: hit.version.id.as_str() });
        if pages.last().is_some_and(|page| page.len() < size as usize) {
            break;
        }
        let page = SearchPage { query: &parsed.query, sort: &parsed.sort, horizon: None, position, limit: size };
        let hits = store.search_page_as(&case.scope, &page, walk).await.expect("page");
        seen.extend(hits.iter().map(|hit| hit.version.id.as_str().to_owned()));
        let empty = hits.is_empty();
        pages.push(hits);
        if empty {
            break;
        }
        assert!(pages.len() <= TASKS, "{}: paging never ends", case.query);
    }
    // Backwards from the first row of the last full page: the page before it, exactly.
    let full: Vec<&Vec<linkbridge::store::SearchHit>> = pages.iter().filter(|p| p.len() == size as usize).collect();
    if let [.., before, last] = full.as_slice() {
        let first = &last[0];
        let position = Position { direction: PageDirection::Before, keys: &first.keys, id: first.version.id.as_str() };
        let page = SearchPage {
            query: &parsed.query,
            sort: &parsed.sort,
            horizon: None,
            position: Some(position),
            limit: size,
        };
        let back: Vec<String> = store
            .search_page_as(&case.scope, &page, walk)
            .await
            .expect("page back")
            .iter()
            .map(|hit| hit.version.id.as_str().to_owned())
            .collect();
        let wanted: Vec<String> = before.iter().map(|hit| hit.version.id.as_str().to_owned()).collect();
        assert_eq!(back, wanted, "{} by {walk:?}: the page before, read backwards", case.query);
    }
    (seen, parsed.sort)
}

fn cases() -> Vec<Case> {
    let performer = |ods| scope_of(ods, true);
    vec![
        // The inbox of a service holding most referrals: every set is large, so the walk goes
        // in id order along the index of the clause with fewer rows: the open backlog.
        Case {
            query: format!("owner:identifier={ODS}|{CLW_MANY}&status=requested"),
            scope: performer(CLW_MANY),
            expected_walk: Walk::Clause(1),
            every_set_large: true,
            matches: |r| r.owner == Some(CLW_MANY) && r.status == "requested",
        },
        // The inbox of a service holding few: its owner rows are the small set.
        Case {
            query: format!("owner:identifier={ODS}|{CLW_FEW}&status=requested"),
            scope: performer(CLW_FEW),
            expected_walk: Walk::Clause(0),
            every_set_large: false,
            matches: |r| r.owner == Some(CLW_FEW) && r.status == "requested",
        },
        Case {
            query: "status=requested".to_owned(),
            scope: performer(CLW_MANY),
            expected_walk: Walk::Clause(0),
            every_set_large: true,
            matches: |r| r.status == "requested",
        },
        // A service that sees few Tasks: what it sees is the small set.
        Case {
            query: "status=requested".to_owned(),
            scope: scope_of(GP_FEW, false),
            expected_walk: Walk::Visible,
            every_set_large: false,
            matches: |r| r.status == "requested",
        },
        Case {
            query: "owner:missing=true&status=requested".to_owned(),
            scope: performer(CLW_MANY),
            expected_walk: Walk::Clause(1),
            every_set_large: true,
            matches: |r| r.owner.is_none() && r.status == "requested",
        },
        // A practice that sees few: its Tasks are the set, each probed for an owner.
        Case {
            query: "owner:missing=true&status=requested".to_owned(),
            scope: scope_of(GP_FEW, false),
            expected_walk: Walk::Visible,
            every_set_large: false,
            matches: |r| r.owner.is_none() && r.status == "requested",
        },
        Case {
            query: "_sort=-authored-on".to_owned(),
            scope: scope_of(GP_MANY, false),
            expected_walk: Walk::Order,
            every_set_large: true,
            matches: |_| true,
        },
        Case {
            query: "_sort=authored-on".to_owned(),
            scope: performer(CLW_MANY),
            expected_walk: Walk::Order,
            every_set_large: true,
            matches: |_| true,
        },
        Case {
            query: "_sort=-authored-on".to_owned(),
            scope: scope_of(GP_FEW, false),
            expected_walk: Walk::Visible,
            every_set_large: false,
            matches: |_| true,
        },
        Case {
            query: "patient=Patient/p1".to_owned(),
            scope: scope_of(GP_MANY, false),
            expected_walk: Walk::Clause(0),
            every_set_large: false,
            matches: |r| r.patient == "p1",
        },
        Case {
            query: String::new(),
            scope: scope_of(GP_MANY, false),
            expected_walk: Walk::Order,
            every_set_large: true,
            matches: |_| true,
        },
        // A Task with the value in two systems is one match.
        Case {
            query: "identifier=shared".to_owned(),
            scope: scope_of(GP_MANY, false),
            expected_walk: Walk::Clause(0),
            every_set_large: false,
            matches: |r| r.shared_identifier,
        },
    ]
}

/// The walks worth comparing for a query: reading along the order, from the visible set, and
/// from each clause.
fn walks_of(query: &str) -> Vec<Walk> {
    let clauses = query.split('&').filter(|p| !p.is_empty() && !p.starts_with('_')).count();
    let mut walks = vec![Walk::Order, Walk::Visible];
    walks.extend((0..clauses).map(Walk::Clause));
    walks
}

async fn stored_tasks(db: Db) -> Option<(Store, TestDatabase, Vec<TaskRow>)> {
    let database = test_database(db).await?;
    let store = Store::connect(&database.url, &PoolSettings::default()).await.expect("store connects");
    let rows: Vec<TaskRow> = (0..TASKS).map(TaskRow::new).collect();
    for chunk in rows.chunks(100) {
        let resources = chunk.iter().map(write_of).collect();
        store.commit(WriteSet { resources, ..Default::default() }).await.expect("write");
    }
    Some((store, database, rows))
}

async fn every_walk_reads_the_same_pages_as_the_model(db: Db) {
    let Some((store, _database, rows)) = stored_tasks(db).await else { return };
    for case in cases() {
        for walk in walks_of(&case.query) {
            let (seen, sort) = every_page(&store, &case, walk, 29).await;
            let unique: BTreeSet<&String> = seen.iter().collect();
            assert_eq!(unique.len(), seen.len(), "{} by {walk:?}: a row twice", case.query);
            assert_eq!(seen, expected(&rows, &case, &sort), "{} by {walk:?}", case.query);
        }
    }
}

/// Plan lines that read and sort (or group) a whole set instead of stopping after the page:
/// SQLite's temporary B-trees, PostgreSQL's sorts and hashes.
fn whole_set_steps(plan: &[String]) -> Vec<String> {
    plan.iter()
        .filter(|line| {
            line.contains("USE TEMP B-TREE")
                || line.contains("Sort")
                || line.contains("HashAggregate")
                || line.contains("Hash Join")
        })
        .cloned()
        .collect()
}

async fn each_broad_search_takes_the_walk_its_data_calls_for_and_stops_after_a_page(db: Db) {
    let Some((store, database, _rows)) = stored_tasks(db).await else { return };
    assert!(TASKS as i64 > 3 * SMALL_SET, "the large sets must be over the counting cap");
    check_walks(&store, db, "before ANALYZE").await;
    if let linkbridge::store::DatabaseUrl::Postgres(url) = &database.url {
        use sqlx::{Connection, Executor};
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        conn.execute("ANALYZE").await.expect("analyze");
        check_walks(&store, db, "after ANALYZE").await;
    }
}

async fn check_walks(store: &Store, db: Db, statistics: &str) {
    let mut failures = Vec::new();
    let context = ParseContext { base_url: "http://lb.test", strict: true, now: Instant::now() };
    for case in cases() {
        let params: Vec<(String, String)> =
            url::form_urlencoded::parse(case.query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let parsed = parse_search(ResourceType::Task, &params, &context).expect("parses");
        let page = SearchPage { query: &parsed.query, sort: &parsed.sort, horizon: None, position: None, limit: 11 };
        let walk = store.choose_walk(&case.scope, &page).await.expect("a walk");
        assert_eq!(walk, case.expected_walk, "{db:?} Task?{} for {:?}", case.query, case.scope);
        let plan = store.explain_search(&case.scope, &page).await.expect("explain");
        if std::env::var_os("LINKBRIDGE_SHOW_PLANS").is_some() {
            eprintln!("{db:?} {statistics} Task?{} by {walk:?}\n{}\n", case.query, plan.join("\n"));
        }
        // A small set may be sorted whole; where every set is large, the walk must stop after
        // its page. PostgreSQL plans a walk along the type or a date by its statistics: in a
        // database that never ran ANALYZE (autovacuum runs it as a table grows) it guesses a
        // table of a few rows, for which sorting is cheaper. Walks along a clause's index
        // hold either way.
        let unplanned_order = db == Db::Postgres && statistics == "before ANALYZE" && walk == Walk::Order;
        let streamed = case.every_set_large && !unplanned_order;
        if streamed {
            let steps = whole_set_steps(&plan);
            if !steps.is_empty() {
                failures.push(format!(
                    "{db:?} {statistics} Task?{} by {walk:?} reads a whole set: {steps:?}\n{}",
                    case.query,
                    plan.join("\n")
                ));
            }
        }
        // On SQLite every per-row probe finds its rows by the walked row's id, never by walking
        // a parameter's rows.
        let unkeyed: Vec<&String> = plan
            .iter()
            .zip(plan.iter().skip(1))
            .filter(|(line, next)| line.contains("CORRELATED") && next.contains("SEARCH") && !next.contains("id=?"))
            .map(|(_, next)| next)
            .collect();
        if !unkeyed.is_empty() {
            failures.push(format!(
                "{db:?} Task?{} probes without the id: {unkeyed:?}\n{}",
                case.query,
                plan.join("\n")
            ));
        }
        // On SQLite a walk along an index (`w`) tests each row it meets before it reads the
        // row's resource: most rows a broad walk meets fail, and a resource read costs several
        // probes.
        let starts = |line: &String, step: &str| line.trim_start().starts_with(step);
        let walks_an_index = plan.first().is_some_and(|l| starts(l, "SEARCH w ") || starts(l, "SCAN w "));
        // ... and the walk reads the index alone (the owner identifier's system is in its index).
        if db == Db::Sqlite && walks_an_index && !plan[0].contains("COVERING INDEX") {
            failures.push(format!(
                "{db:?} Task?{} walks an index that does not cover it\n{}",
                case.query,
                plan.join("\n")
            ));
        }
        if db == Db::Sqlite && walks_an_index {
            // (The plan of a walk along a date goes on with its undated tail's.)
            let read = plan.iter().position(|l| starts(l, "SEARCH r "));
            let probed_after = read.is_none_or(|read| plan.get(read + 1).is_some_and(|l| l.contains("CORRELATED")));
            if probed_after || !plan.iter().take_while(|l| !starts(l, "SEARCH r ")).any(|l| l.contains("CORRELATED")) {
                failures.push(format!(
                    "{db:?} Task?{} reads each resource before its probes\n{}",
                    case.query,
                    plan.join("\n")
                ));
            }
        }
        // PostgreSQL may join a small visible set to a small type by hashing it (a cost-based
        // choice its statistics make); the visible set's own read is by key either way.
        let hashed_visible = db == Db::Postgres && walk == Walk::Visible;
        if walk != Walk::Order && !hashed_visible {
            let scans = crate::search::full_scans(&plan);
            if !scans.is_empty() {
                failures.push(format!("{db:?} {statistics} Task?{} scans: {scans:?}\n{}", case.query, plan.join("\n")));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

on_both_databases!(
    every_walk_reads_the_same_pages_as_the_model,
    each_broad_search_takes_the_walk_its_data_calls_for_and_stops_after_a_page,
);
