//! Who is calling, and what that lets them see. The rules are those of
//! `docs/security-and-reliability.md` ("Tenancy: who sees what"); the store applies the resulting
//! [`TenantScope`] to every read so that no handler can forget it.

use std::fmt;

pub use super::ods::{ods_code_of, InvalidOdsCode, OdsCode};

/// What a registered client system is for; fixed at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A GP clinical system: sends referrals and follows them.
    Referrer,
    /// A Community Link Worker service's tool: works the referrals assigned to it.
    Performer,
    /// The running board's admin tooling: reads the audit trail, sees every tenant.
    Operator,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("role must be one of referrer, performer, operator")]
pub struct InvalidRole;

impl Role {
    pub fn parse(raw: &str) -> Option<Role> {
        raw.parse().ok()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Referrer => "referrer",
            Role::Performer => "performer",
            Role::Operator => "operator",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = InvalidRole;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "referrer" => Ok(Role::Referrer),
            "performer" => Ok(Role::Performer),
            "operator" => Ok(Role::Operator),
            _ => Err(InvalidRole),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated caller. The organisation and role come from the client registration,
/// never from anything the request says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    client_id: String,
    organization: OdsCode,
    role: Role,
}

impl Principal {
    pub fn new(client_id: impl Into<String>, organization: OdsCode, role: Role) -> Self {
        Principal { client_id: client_id.into(), organization, role }
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn organization(&self) -> &OdsCode {
        &self.organization
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The rows this caller may read.
    pub fn scope(&self) -> TenantScope {
        match self.role {
            Role::Operator => TenantScope::Everything,
            Role::Referrer => TenantScope::Keys(vec![
                Visibility::Organization(self.organization.clone()).key(),
                Visibility::Everyone.key(),
            ]),
            Role::Performer => TenantScope::Keys(vec![
                Visibility::Organization(self.organization.clone()).key(),
                Visibility::Everyone.key(),
                Visibility::AnyPerformer.key(),
            ]),
        }
    }
}

/// Who a stored resource version is visible to. A resource carries one or more of these;
/// a read sees it when one of them is among the caller's [`TenantScope`] keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Visibility {
    /// The named organisation (requester, owner, author...).
    Organization(OdsCode),
    /// Every authenticated caller: directory entries (Organization, Practitioner...).
    Everyone,
    /// Every performer: an open Task (no owner) that any CLW service may claim.
    AnyPerformer,
}

impl Visibility {
    /// The form stored in the `resource_visibility` table.
    pub fn key(&self) -> String {
        match self {
            Visibility::Organization(ods) => format!("org:{ods}"),
            Visibility::Everyone => "everyone".to_owned(),
            Visibility::AnyPerformer => "any-performer".to_owned(),
        }
    }
}

/// The read filter the store applies. There is no "no filter" default: the operator's
/// unrestricted view is a variant that has to be asked for by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantScope {
    /// Only rows carrying one of these visibility keys.
    Keys(Vec<String>),
    /// Every row: the operator role, and the server's own background work.
    Everything,
}

impl TenantScope {
    /// Whether a resource carrying these visibility keys is within the scope: the rule the
    /// store applies in SQL (`store::reads::scope_filter`), for resources held in memory.
    pub fn admits(&self, visibility: &[String]) -> bool {
        match self {
            TenantScope::Everything => true,
            TenantScope::Keys(keys) => keys.iter().any(|key| visibility.contains(key)),
        }
    }
}

/// Visibility that follows from a resource's content: directory entries are for everyone, an
/// open Task is for every performer, and organisations named by ODS code in the referral's
/// party elements (requester, owner, performer, author) are parties to it.
pub fn derived_visibility(
    resource_type: super::resource_type::ResourceType,
    resource: &serde_json::Value,
) -> Vec<Visibility> {
    use super::resource_type::ResourceType as T;
    let party_elements: &[&str] = match resource_type {
        T::Organization | T::Practitioner | T::PractitionerRole => return vec![Visibility::Everyone],
        T::Task => &["requester", "owner"],
        T::ServiceRequest => &["requester", "performer"],
        // Not `contributor`: only the parties the workflow names see a CarePlan (its author,
        // and the referring practice, which the rules add), not whoever the author lists.
        T::CarePlan => &["author"],
        // A Subscription is its creator's alone (the creation grant).
        T::Patient | T::Consent | T::Subscription => &[],
    };
    let mut out = Vec::new();
    // An open Task is for every CLW service to claim while it has not ended; a cancelled or
    // otherwise ended one is its requester's alone.
    if resource_type == T::Task && super::task_workflow::ReferralTask::parse(resource).is_open_to_every_performer() {
        out.push(Visibility::AnyPerformer);
    }
    for element in party_elements {
        let values: Vec<&serde_json::Value> = match resource.get(*element) {
            Some(serde_json::Value::Array(items)) => items.iter().collect(),
            Some(single) => vec![single],
            None => vec![],
        };
        for reference in values {
            if let Some(ods) = ods_code_of(reference) {
                out.push(Visibility::Organization(ods));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ods(raw: &str) -> OdsCode {
        OdsCode::parse(raw).expect("valid ODS code")
    }

    #[test]
    fn roles_round_trip_through_their_wire_names() {
        for role in [Role::Referrer, Role::Performer, Role::Operator] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role), "role {role}");
        }
        assert!("Referrer".parse::<Role>().is_err(), "role names are case sensitive");
    }

    #[test]
    fn a_performer_sees_its_own_rows_directory_rows_and_open_tasks() {
        let p = Principal::new("clw-tool", ods("CLW01"), Role::Performer);
        assert_eq!(p.scope(), TenantScope::Keys(vec!["org:CLW01".into(), "everyone".into(), "any-performer".into()]));
    }

    #[test]
    fn a_referrer_does_not_see_open_tasks_of_other_practices() {
        let p = Principal::new("gp", ods("GP001"), Role::Referrer);
        let TenantScope::Keys(keys) = p.scope() else { panic!("a referrer must be restricted") };
        assert!(!keys.contains(&Visibility::AnyPerformer.key()));
    }

    #[test]
    fn only_the_operator_sees_everything() {
        let p = Principal::new("ops", ods("BOARD1"), Role::Operator);
        assert_eq!(p.scope(), TenantScope::Everything);
    }
}
