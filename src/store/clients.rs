//! The client registry and the client-assertion replay guard. Both live in the database so
//! that every replica sees the same registrations and refuses the same replays.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::Row;

use super::reads::ConditionalKey;
use super::{Store, StoreError};
use crate::domain::instant::Instant;

/// How long a process trusts that an organisation has a client of a role without asking the
/// database again. Every referral given to a CLW service asks it; registrations change by the
/// CLI, from any process, so a replica is never told: a removal reaches every replica within
/// this time. That an organisation lacks a role is never remembered, so a new registration
/// counts at once.
const ROLE_TRUSTED_FOR: Duration = Duration::from_secs(30);

/// More organisations than any deployment has; past it the memory starts afresh.
const MAX_KNOWN_ORGANIZATIONS: usize = 10_000;

/// The roles this process has lately found each organisation registered in, and when. By
/// organisation, then role: a look-up borrows both names, no key is built per referral.
#[derive(Debug, Default)]
pub(super) struct KnownRoles {
    seen: Mutex<HashMap<String, HashMap<String, std::time::Instant>>>,
}

impl KnownRoles {
    fn holds(&self, organization: &str, role: &str) -> bool {
        let Ok(seen) = self.seen.lock() else { return false };
        seen.get(organization).and_then(|roles| roles.get(role)).is_some_and(|found| found.elapsed() < ROLE_TRUSTED_FOR)
    }

    fn found(&self, organization: &str, role: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() >= MAX_KNOWN_ORGANIZATIONS && !seen.contains_key(organization) {
                seen.clear();
            }
            seen.entry(organization.to_owned()).or_default().insert(role.to_owned(), std::time::Instant::now());
        }
    }

    /// Forgets everything: this process changed a registration.
    fn forget(&self) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.clear();
        }
    }
}

/// A registered client system, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    pub client_id: String,
    /// ODS code of the organisation the client acts for.
    pub organization: String,
    /// `referrer`, `performer` or `operator`.
    pub role: String,
    /// Inline JWKS (JSON text), when registered that way.
    pub jwks: Option<String>,
    /// JWKS URL, when registered that way.
    pub jwks_url: Option<String>,
    /// The scopes the client may ever hold, space separated.
    pub scopes: String,
    pub created_at: Instant,
}

fn record_from_row(row: &sqlx::any::AnyRow) -> Result<ClientRecord, StoreError> {
    Ok(ClientRecord {
        client_id: row.try_get("client_id")?,
        organization: row.try_get("organization")?,
        role: row.try_get("role")?,
        jwks: row.try_get("jwks")?,
        jwks_url: row.try_get("jwks_url")?,
        scopes: row.try_get("scopes")?,
        created_at: Instant::from_micros(row.try_get("created_at")?),
    })
}

const CLIENT_COLUMNS: &str = "client_id, organization, role, jwks, jwks_url, scopes, created_at";

impl Store {
    /// Registers a client, or replaces the registration of the same `client_id`.
    pub async fn upsert_client(&self, client: &ClientRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO clients (client_id, organization, role, jwks, jwks_url, scopes, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (client_id) DO UPDATE SET organization = excluded.organization, role = excluded.role, \
             jwks = excluded.jwks, jwks_url = excluded.jwks_url, scopes = excluded.scopes",
        )
        .bind(&client.client_id)
        .bind(&client.organization)
        .bind(&client.role)
        .bind(client.jwks.as_deref())
        .bind(client.jwks_url.as_deref())
        .bind(&client.scopes)
        .bind(client.created_at.micros())
        .execute(&mut *self.reader().await?)
        .await?;
        // A registration moved to another organisation or role takes the old one's away.
        self.inner.known_roles.forget();
        Ok(())
    }

    pub async fn find_client(&self, client_id: &str) -> Result<Option<ClientRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE client_id = $1"))
            .bind(client_id)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    pub async fn list_clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {CLIENT_COLUMNS} FROM clients ORDER BY client_id"))
            .fetch_all(&mut *self.reader().await?)
            .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Removes a registration; answers whether there was one.
    pub async fn remove_client(&self, client_id: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM clients WHERE client_id = $1")
            .bind(client_id)
            .execute(&mut *self.reader().await?)
            .await?;
        self.inner.known_roles.forget();
        Ok(result.rows_affected() > 0)
    }

    /// Whether an organisation has a registered client in the given role (e.g. "is this ODS
    /// code a registered performer?"). A yes is remembered for [`ROLE_TRUSTED_FOR`].
    pub async fn organization_has_role(&self, organization: &str, role: &str) -> Result<bool, StoreError> {
        if self.inner.known_roles.holds(organization, role) {
            return Ok(true);
        }
        let row = sqlx::query("SELECT 1 FROM clients WHERE organization = $1 AND role = $2 LIMIT 1")
            .bind(organization)
            .bind(role)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        if row.is_some() {
            self.inner.known_roles.found(organization, role);
        }
        Ok(row.is_some())
    }

    /// Whether `organization` has a client of `role`, and, when `key` is given, which
    /// resource holds that conditional key now: one round trip for the two checks of a Task
    /// given to an organisation (see `service::rules`).
    pub async fn role_and_claim(
        &self,
        organization: &str,
        role: &str,
        key: Option<&ConditionalKey<'_>>,
    ) -> Result<RoleAndClaim, StoreError> {
        let Some(key) = key else {
            return Ok(RoleAndClaim {
                has_role: self.organization_has_role(organization, role).await?,
                claimed_by: None,
            });
        };
        // A row only if the organisation has the role; its one column is the key's holder.
        let sql = format!(
            "SELECT ({}) FROM clients WHERE organization = $1 AND role = $2 LIMIT 1",
            ConditionalKey::lookup(3)
        );
        let row = key
            .bind_to(sqlx::query(&sql).bind(organization).bind(role))
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        Ok(match row {
            Some(row) => {
                self.inner.known_roles.found(organization, role);
                RoleAndClaim { has_role: true, claimed_by: row.try_get::<Option<String>, _>(0)? }
            }
            None => RoleAndClaim { has_role: false, claimed_by: None },
        })
    }

    /// Records a client assertion's `jti`. Answers `false` when this issuer used it before:
    /// a replay. The unique key makes this hold across replicas; expired rows are purged.
    pub async fn record_assertion_jti(&self, issuer: &str, jti: &str, expires_at: Instant) -> Result<bool, StoreError> {
        sqlx::query("DELETE FROM assertion_jtis WHERE expires_at < $1")
            .bind(Instant::now().micros())
            .execute(&mut *self.reader().await?)
            .await?;
        let result = sqlx::query(
            "INSERT INTO assertion_jtis (issuer, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(issuer)
        .bind(jti)
        .bind(expires_at.micros())
        .execute(&mut *self.reader().await?)
        .await?;
        Ok(result.rows_affected() == 1)
    }
}

impl Store {
    /// The record of an earlier request with this client's X-Request-ID: (body hash, outcome).
    pub async fn find_request(
        &self,
        client_id: &str,
        request_id: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query("SELECT body_hash, outcome FROM request_ids WHERE client_id = $1 AND request_id = $2")
            .bind(client_id)
            .bind(request_id)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }
}

/// What [`Store::role_and_claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleAndClaim {
    pub has_role: bool,
    /// The resource holding the key (nothing when the organisation lacks the role).
    pub claimed_by: Option<String>,
}
