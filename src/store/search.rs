//! Turns a [`SearchQuery`] into SQL over the index tables, inside the caller's tenancy.

use sqlx::any::AnyArguments;
use sqlx::{Arguments, Row};

use super::reads::{bind_error, scope_filter};
use super::{Store, StoreError};
use crate::domain::ids::ResourceId;
use crate::domain::search_query::{ParamRef, Predicate, SearchQuery, SystemMatch};
use crate::domain::tenancy::TenantScope;

struct Sql {
    args: AnyArguments<'static>,
    next: usize,
}

impl Sql {
    fn bind(&mut self, value: String) -> Result<String, StoreError> {
        self.args.add(value).map_err(bind_error)?;
        let placeholder = format!("${}", self.next);
        self.next += 1;
        Ok(placeholder)
    }
}

fn predicate_sql(sql: &mut Sql, param: ParamRef, predicate: &Predicate) -> Result<String, StoreError> {
    match (param, predicate) {
        (_, Predicate::Id(id)) => Ok(format!("r.id = {}", sql.bind(id.clone())?)),
        (ParamRef::Registered(p), Predicate::Token { system, code }) => {
            let mut conditions = vec![format!("t.param = {}", sql.bind(p.name.to_owned())?)];
            if let Some(code) = code {
                conditions.push(format!("t.code = {}", sql.bind(code.clone())?));
            }
            match system {
                SystemMatch::Any => {}
                SystemMatch::None => conditions.push("t.system IS NULL".to_owned()),
                SystemMatch::Exactly(s) => conditions.push(format!("t.system = {}", sql.bind(s.clone())?)),
            }
            Ok(format!(
                "EXISTS (SELECT 1 FROM idx_token t WHERE t.resource_type = r.resource_type AND t.id = r.id AND {})",
                conditions.join(" AND ")
            ))
        }
        (ParamRef::Registered(p), Predicate::Reference { target_type, target_id }) => {
            let mut conditions = vec![
                format!("x.param = {}", sql.bind(p.name.to_owned())?),
                format!("x.target_id = {}", sql.bind(target_id.clone())?),
            ];
            if let Some(t) = target_type {
                conditions.push(format!("x.target_type = {}", sql.bind(t.clone())?));
            }
            Ok(format!(
                "EXISTS (SELECT 1 FROM idx_reference x WHERE x.resource_type = r.resource_type AND x.id = r.id AND {})",
                conditions.join(" AND ")
            ))
        }
        (ParamRef::Id, _) => Err(StoreError::Config("_id only takes ids".to_owned())),
    }
}

impl Store {
    /// Ids of live resources matching every clause, at most `limit` of them.
    pub async fn find_ids(
        &self,
        scope: &TenantScope,
        query: &SearchQuery,
        limit: u32,
    ) -> Result<Vec<ResourceId>, StoreError> {
        let mut sql = Sql { args: AnyArguments::default(), next: 1 };
        let type_placeholder = sql.bind(query.resource_type.as_str().to_owned())?;
        let mut conditions = vec![format!("r.resource_type = {type_placeholder}"), "r.deleted = 0".to_owned()];
        for clause in &query.clauses {
            let alternatives = clause
                .any_of
                .iter()
                .map(|p| predicate_sql(&mut sql, clause.param, p))
                .collect::<Result<Vec<_>, _>>()?;
            conditions.push(format!("({})", alternatives.join(" OR ")));
        }
        let filter = scope_filter(scope, "r", &mut sql.args, &mut sql.next)?;
        conditions.push(filter.sql);
        sql.args.add(i64::from(limit)).map_err(bind_error)?;
        let text = format!(
            "SELECT r.id FROM resources r WHERE {} ORDER BY r.id LIMIT ${}",
            conditions.join(" AND "),
            sql.next
        );
        let rows = sqlx::query_with(&text, sql.args).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0)?;
                ResourceId::parse(&id).map_err(|e| StoreError::Config(e.to_string()))
            })
            .collect()
    }
}
