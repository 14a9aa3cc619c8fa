//! Following references backwards: which resources point at a given one. The workflow rules
//! use it (the Tasks of a referral, the open Tasks of a patient).

use sqlx::any::AnyArguments;
use sqlx::{Arguments, Row};

use super::reads::{bind_error, scope_filter};
use super::{Store, StoreError};
use crate::domain::ids::ResourceId;
use crate::domain::resource_type::ResourceType;
use crate::domain::tenancy::TenantScope;

impl Store {
    /// Live resources of `resource_type` whose reference parameter `param` points at
    /// `target_type/target_id`, within the caller's tenancy.
    pub async fn referencing_ids(
        &self,
        scope: &TenantScope,
        resource_type: ResourceType,
        param: &str,
        target_type: ResourceType,
        target_id: &str,
    ) -> Result<Vec<ResourceId>, StoreError> {
        let mut args = AnyArguments::default();
        for value in [resource_type.as_str(), param, target_type.as_str(), target_id] {
            args.add(value.to_owned()).map_err(bind_error)?;
        }
        let mut next = 5;
        let filter = scope_filter(scope, "r", &mut args, &mut next)?;
        let sql = format!(
            "SELECT DISTINCT r.id FROM idx_reference x JOIN resources r ON r.resource_type = x.resource_type AND r.id = x.id \
             WHERE x.resource_type = $1 AND x.param = $2 AND x.target_type = $3 AND x.target_id = $4 AND r.deleted = 0 AND {} \
             ORDER BY r.id",
            filter.sql
        );
        let rows = sqlx::query_with(&sql, args).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0)?;
                ResourceId::parse(&id).map_err(|e| StoreError::Config(e.to_string()))
            })
            .collect()
    }
}
