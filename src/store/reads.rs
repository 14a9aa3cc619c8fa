//! Reads of current versions and history, always through the caller's [`TenantScope`].

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Arguments, Row};

use super::{Store, StoreError};
use crate::domain::ids::{ResourceId, VersionId};
use crate::domain::instant::Instant;
use crate::domain::resource_type::ResourceType;
use crate::domain::tenancy::TenantScope;
use crate::domain::versions::{HistoryQuery, StoredVersion, WriteMethod};

/// Builds the SQL predicate restricting rows of alias `r` to the caller's tenancy, binding its
/// keys. The predicate is written here once and used by every read, so no read can omit it.
pub(super) struct ScopeFilter {
    pub sql: String,
}

pub(super) fn scope_filter(
    scope: &TenantScope,
    alias: &str,
    args: &mut AnyArguments<'_>,
    next_placeholder: &mut usize,
) -> Result<ScopeFilter, StoreError> {
    scope_filter_with(scope, (&format!("{alias}.resource_type"), &format!("{alias}.id")), "", |key| {
        args.add(key.to_owned()).map_err(bind_error)?;
        let placeholder = format!("${next_placeholder}");
        *next_placeholder += 1;
        Ok(placeholder)
    })
}

/// [`scope_filter`] of the row whose type and id are the SQL expressions `resource_type` and
/// `id`, whose subquery ends with `fence` (see `store::search::Probe::PerRow`) and whose keys
/// are each written as `value_of(key)` returns: a bound placeholder, or where one
/// statement tests many searches, a column of the row it tests (see
/// `store::search::write_sets_with_matches`).
pub(super) fn scope_filter_with(
    scope: &TenantScope,
    (resource_type, id): (&str, &str),
    fence: &str,
    mut value_of: impl FnMut(&str) -> Result<String, StoreError>,
) -> Result<ScopeFilter, StoreError> {
    match scope {
        TenantScope::Everything => Ok(ScopeFilter { sql: "1 = 1".to_owned() }),
        TenantScope::Keys(keys) if keys.is_empty() => Ok(ScopeFilter { sql: "1 = 0".to_owned() }),
        TenantScope::Keys(keys) => {
            let values = keys.iter().map(|key| value_of(key)).collect::<Result<Vec<_>, _>>()?;
            Ok(ScopeFilter {
                sql: format!(
                    "EXISTS (SELECT 1 FROM resource_visibility v WHERE v.resource_type = {resource_type} \
                     AND v.id = {id} AND v.visibility_key IN ({}){fence})",
                    values.join(", ")
                ),
            })
        }
    }
}

/// `SELECT v.id FROM resource_visibility v …`: the ids of a type (`resource_type`, already
/// written as SQL) carrying one of the scope's keys, each key written as `value_of(key)`
/// returns; `hint` follows the table (an index hint, or nothing). Not distinct: a resource
/// with two of the keys is listed twice. The set [`scope_filter`] tests, for a search to be
/// driven from when the caller sees few resources of the type.
pub(super) fn visible_ids_with(
    scope: &TenantScope,
    resource_type: &str,
    hint: &str,
    mut value_of: impl FnMut(&str) -> Result<String, StoreError>,
) -> Result<String, StoreError> {
    match scope {
        TenantScope::Everything => {
            Err(StoreError::Internal("every resource is visible: there is no set to drive from".to_owned()))
        }
        TenantScope::Keys(keys) => {
            let values = keys.iter().map(|key| value_of(key)).collect::<Result<Vec<_>, _>>()?;
            let keys = if values.is_empty() { "NULL".to_owned() } else { values.join(", ") };
            Ok(format!(
                "SELECT v.id FROM resource_visibility v{hint} WHERE v.visibility_key IN ({keys}) \
                 AND v.resource_type = {resource_type}"
            ))
        }
    }
}

pub(super) fn bind_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("cannot bind query value: {e}"))
}

pub(super) fn version_from_row(row: &AnyRow) -> Result<StoredVersion, StoreError> {
    let type_name: String = row.try_get("resource_type")?;
    let resource_type =
        ResourceType::parse(&type_name).map_err(|e| StoreError::Internal(format!("unknown type in database: {e}")))?;
    let id: String = row.try_get("id")?;
    let id = ResourceId::parse(&id).map_err(|e| StoreError::Internal(format!("bad id in database: {e}")))?;
    let method: String = row.try_get("method")?;
    Ok(StoredVersion {
        resource_type,
        id,
        version: VersionId::from_stored(row.try_get("version_id")?),
        last_updated: Instant::from_micros(row.try_get("last_updated")?),
        deleted: row.try_get::<i64, _>("deleted")? != 0,
        method: WriteMethod::from_stored(&method),
        body: row.try_get("body")?,
        change_seq: row.try_get("change_seq")?,
    })
}

impl Store {
    /// The current version of a resource the caller may see (deleted ones included, so the
    /// service can answer 410), or `None`: missing and not-yours look the same.
    pub async fn read_current(
        &self,
        scope: &TenantScope,
        resource_type: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let mut args = AnyArguments::default();
        args.add(resource_type.as_str().to_owned()).map_err(bind_error)?;
        args.add(id.as_str().to_owned()).map_err(bind_error)?;
        let mut next = 3;
        let filter = scope_filter(scope, "r", &mut args, &mut next)?;
        let sql = format!(
            "SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, \
             CASE WHEN r.deleted = 1 THEN 'DELETE' ELSE 'PUT' END AS method, r.body, r.change_seq \
             FROM resources r WHERE r.resource_type = $1 AND r.id = $2 AND {}",
            filter.sql
        );
        let row = sqlx::query_with(&sql, args).fetch_optional(&mut *self.reader().await?).await?;
        row.as_ref().map(version_from_row).transpose()
    }

    /// One specific version (vread), if the caller may see the resource.
    pub async fn read_version(
        &self,
        scope: &TenantScope,
        resource_type: ResourceType,
        id: &ResourceId,
        version: VersionId,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let mut args = AnyArguments::default();
        args.add(resource_type.as_str().to_owned()).map_err(bind_error)?;
        args.add(id.as_str().to_owned()).map_err(bind_error)?;
        args.add(version.get()).map_err(bind_error)?;
        let mut next = 4;
        let filter = scope_filter(scope, "r", &mut args, &mut next)?;
        let sql = format!(
            "SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, r.method, r.body, r.change_seq \
             FROM resource_history r WHERE r.resource_type = $1 AND r.id = $2 AND r.version_id = $3 AND {}",
            filter.sql
        );
        let row = sqlx::query_with(&sql, args).fetch_optional(&mut *self.reader().await?).await?;
        row.as_ref().map(version_from_row).transpose()
    }

    /// Instance history (`id` given) or type history, newest first.
    pub async fn history(
        &self,
        scope: &TenantScope,
        resource_type: ResourceType,
        id: Option<&ResourceId>,
        query: &HistoryQuery,
    ) -> Result<Vec<StoredVersion>, StoreError> {
        let mut args = AnyArguments::default();
        let mut next = 1;
        let mut conditions = Vec::new();
        let bind_text = |args: &mut AnyArguments<'_>, next: &mut usize, value: String| {
            let placeholder = format!("${next}");
            *next += 1;
            args.add(value).map(|_| placeholder).map_err(bind_error)
        };
        let p = bind_text(&mut args, &mut next, resource_type.as_str().to_owned())?;
        conditions.push(format!("r.resource_type = {p}"));
        if let Some(id) = id {
            let p = bind_text(&mut args, &mut next, id.as_str().to_owned())?;
            conditions.push(format!("r.id = {p}"));
        }
        if let Some(since) = query.since {
            args.add(since.micros()).map_err(bind_error)?;
            conditions.push(format!("r.last_updated >= ${next}"));
            next += 1;
        }
        if let Some(before) = query.before_seq {
            args.add(before).map_err(bind_error)?;
            conditions.push(format!("r.change_seq < ${next}"));
            next += 1;
        }
        let filter = scope_filter(scope, "r", &mut args, &mut next)?;
        conditions.push(filter.sql);
        args.add(i64::from(query.count)).map_err(bind_error)?;
        let sql = format!(
            "SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.deleted, r.method, r.body, r.change_seq \
             FROM resource_history r WHERE {} ORDER BY r.change_seq DESC LIMIT ${next}",
            conditions.join(" AND ")
        );
        let rows = self.bounded_read(async |conn| sqlx::query_with(&sql, args).fetch_all(conn).await).await?;
        rows.iter().map(version_from_row).collect()
    }

    /// The resource id a conditional-create key currently points at, if any.
    pub async fn conditional_key(&self, key: &ConditionalKey<'_>) -> Result<Option<String>, StoreError> {
        let sql = ConditionalKey::lookup(1);
        let row = key.bind_to(sqlx::query(&sql)).fetch_optional(&mut *self.reader().await?).await?;
        Ok(row.map(|r| r.try_get::<String, _>(0)).transpose()?)
    }
}

/// A conditional-create key: `criteria` (canonical) of `resource_type` within `scope_key`.
#[derive(Debug, Clone, Copy)]
pub struct ConditionalKey<'a> {
    pub scope_key: &'a str,
    pub resource_type: ResourceType,
    pub criteria: &'a str,
}

impl<'a> ConditionalKey<'a> {
    /// The statement reading the id this key points at, its three [`values`](Self::values)
    /// bound from `$first` on: alone, or as a subquery of a larger read.
    pub(super) fn lookup(first: usize) -> String {
        let (scope, resource_type, criteria) = (first, first + 1, first + 2);
        format!(
            "SELECT id FROM conditional_keys \
             WHERE scope_key = ${scope} AND resource_type = ${resource_type} AND criteria = ${criteria}"
        )
    }

    /// The key's values, in the order [`ConditionalKey::lookup`] names them.
    pub(super) fn values(&self) -> [&'a str; 3] {
        [self.scope_key, self.resource_type.as_str(), self.criteria]
    }

    /// Binds the key's [`values`](Self::values).
    pub(super) fn bind_to<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Any, AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, AnyArguments<'q>>
    where
        'a: 'q,
    {
        self.values().into_iter().fold(query, |query, value| query.bind(value))
    }
}
