//! The resource types linkbridge serves, and what it can do with each. The router, the
//! CapabilityStatement and the search registry all read this one list, so they cannot drift.

use std::fmt;

/// A FHIR resource type served by linkbridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    ServiceRequest,
    Task,
    CarePlan,
    Patient,
    Organization,
    Practitioner,
    PractitionerRole,
    Consent,
    /// A topic-based subscription (Subscriptions R5 Backport IG): how a GP system hears of changes.
    Subscription,
}

/// The RESTful interactions of FHIR R4 http.html that linkbridge offers per type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Read,
    Vread,
    Update,
    Patch,
    Delete,
    HistoryInstance,
    HistoryType,
    Create,
    SearchType,
}

impl Interaction {
    /// The code of the `TypeRestfulInteraction` value set.
    pub fn code(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Update => "update",
            Interaction::Patch => "patch",
            Interaction::Delete => "delete",
            Interaction::HistoryInstance => "history-instance",
            Interaction::HistoryType => "history-type",
            Interaction::Create => "create",
            Interaction::SearchType => "search-type",
        }
    }
}

/// The type name in a URL or a body is not one linkbridge serves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resource type '{0}' is not supported by this server")]
pub struct UnsupportedResourceType(pub String);

impl ResourceType {
    pub const ALL: [ResourceType; 9] = [
        ResourceType::ServiceRequest,
        ResourceType::Task,
        ResourceType::CarePlan,
        ResourceType::Patient,
        ResourceType::Organization,
        ResourceType::Practitioner,
        ResourceType::PractitionerRole,
        ResourceType::Consent,
        ResourceType::Subscription,
    ];

    pub fn parse(name: &str) -> Result<Self, UnsupportedResourceType> {
        Self::ALL.into_iter().find(|t| t.as_str() == name).ok_or_else(|| UnsupportedResourceType(name.to_owned()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::ServiceRequest => "ServiceRequest",
            ResourceType::Task => "Task",
            ResourceType::CarePlan => "CarePlan",
            ResourceType::Patient => "Patient",
            ResourceType::Organization => "Organization",
            ResourceType::Practitioner => "Practitioner",
            ResourceType::PractitionerRole => "PractitionerRole",
            ResourceType::Consent => "Consent",
            ResourceType::Subscription => "Subscription",
        }
    }

    /// Every type offers the full set today; the list is per type so that a type with
    /// fewer rights (e.g. a read-only directory) changes the CapabilityStatement with it.
    pub fn interactions(self) -> &'static [Interaction] {
        &[
            Interaction::Read,
            Interaction::Vread,
            Interaction::Update,
            Interaction::Patch,
            Interaction::Delete,
            Interaction::HistoryInstance,
            Interaction::HistoryType,
            Interaction::Create,
            Interaction::SearchType,
        ]
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_parses_back_from_its_name() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::parse(t.as_str()), Ok(t), "{t}");
        }
    }

    #[test]
    fn unknown_and_wrongly_cased_types_are_unsupported() {
        for name in ["Observation", "task", "", "Task/1"] {
            assert!(ResourceType::parse(name).is_err(), "{name:?} should be unsupported");
        }
    }
}
