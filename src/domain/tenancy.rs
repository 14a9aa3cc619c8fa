//! Who is calling, and what that lets them see. The rules are those of
//! `security-and-reliability.md` ("Tenancy: who sees what"); the store applies the resulting
//! [`TenantScope`] to every read so that no handler can forget it.

use std::fmt;

/// An ODS organisation code (`https://fhir.nhs.uk/Id/ods-organization-code`), e.g. `A12345` or
/// `8HV48`: 3 to 12 upper-case letters and digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OdsCode(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an ODS organisation code (3-12 upper-case letters and digits)")]
pub struct InvalidOdsCode(pub String);

impl OdsCode {
    pub const SYSTEM: &'static str = "https://fhir.nhs.uk/Id/ods-organization-code";

    pub fn parse(raw: &str) -> Result<Self, InvalidOdsCode> {
        let ok = (3..=12).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if ok {
            Ok(OdsCode(raw.to_owned()))
        } else {
            Err(InvalidOdsCode(raw.chars().take(40).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OdsCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a registered client system is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A GP clinical system: sends referrals and follows them.
    Referrer,
    /// A Community Link Worker service's tool: works the referrals assigned to it.
    Performer,
    /// The running board's admin tooling: reads the audit trail, sees every tenant.
    Operator,
}

impl Role {
    pub fn parse(raw: &str) -> Option<Role> {
        match raw {
            "referrer" => Some(Role::Referrer),
            "performer" => Some(Role::Performer),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Referrer => "referrer",
            Role::Performer => "performer",
            Role::Operator => "operator",
        }
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
        Principal {
            client_id: client_id.into(),
            organization,
            role,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ods(raw: &str) -> OdsCode {
        OdsCode::parse(raw).expect("valid ODS code")
    }

    #[test]
    fn ods_codes_are_upper_case_letters_and_digits() {
        for (raw, ok) in [("A12345", true), ("8HV48", true), ("a12345", false), ("AB", false), ("A1 2", false), ("org:X1", false)] {
            assert_eq!(OdsCode::parse(raw).is_ok(), ok, "{raw:?}");
        }
    }

    #[test]
    fn a_performer_sees_its_own_rows_directory_rows_and_open_tasks() {
        let p = Principal::new("clw-tool", ods("CLW01"), Role::Performer);
        assert_eq!(
            p.scope(),
            TenantScope::Keys(vec!["org:CLW01".into(), "everyone".into(), "any-performer".into()])
        );
    }

    #[test]
    fn a_referrer_does_not_see_open_tasks_of_other_practices() {
        let p = Principal::new("gp", ods("GP001"), Role::Referrer);
        let TenantScope::Keys(keys) = p.scope() else {
            panic!("a referrer must be restricted")
        };
        assert!(!keys.contains(&Visibility::AnyPerformer.key()));
    }

    #[test]
    fn only_the_operator_sees_everything() {
        let p = Principal::new("ops", ods("BOARD1"), Role::Operator);
        assert_eq!(p.scope(), TenantScope::Everything);
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
        T::CarePlan => &["author", "contributor"],
        T::Patient | T::Consent => &[],
    };
    let mut out = Vec::new();
    if resource_type == T::Task && resource.get("owner").is_none() {
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

/// The ODS code a Reference names through its `identifier`, if it does.
pub fn ods_code_of(reference: &serde_json::Value) -> Option<OdsCode> {
    let identifier = reference.get("identifier")?;
    if identifier.get("system")?.as_str()? != OdsCode::SYSTEM {
        return None;
    }
    OdsCode::parse(identifier.get("value")?.as_str()?).ok()
}
