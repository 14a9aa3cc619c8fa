//! The ODS organisation code that names every party of a referral (a GP practice, a CLW
//! service, a health board), and how a FHIR Reference names one.

use std::fmt;

/// An ODS organisation code (`https://fhir.nhs.uk/Id/ods-organization-code`), e.g. `A81001`
/// or `8HV48`: 3 to 10 letters and digits, stored upper case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OdsCode(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an ODS organisation code (3-10 letters and digits)")]
pub struct InvalidOdsCode(pub String);

impl OdsCode {
    pub const SYSTEM: &'static str = "https://fhir.nhs.uk/Id/ods-organization-code";
    pub const MIN_LEN: usize = 3;
    pub const MAX_LEN: usize = 10;

    pub fn parse(raw: &str) -> Result<Self, InvalidOdsCode> {
        let ok = (Self::MIN_LEN..=Self::MAX_LEN).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_alphanumeric());
        if ok {
            Ok(OdsCode(raw.to_ascii_uppercase()))
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

/// The ODS code a Reference names through its `identifier`, if it does.
pub fn ods_code_of(reference: &serde_json::Value) -> Option<OdsCode> {
    let identifier = reference.get("identifier")?;
    if identifier.get("system")?.as_str()? != OdsCode::SYSTEM {
        return None;
    }
    OdsCode::parse(identifier.get("value")?.as_str()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ods_codes_are_letters_and_digits_stored_upper_case() {
        for (raw, ok) in [
            ("A12345", true),
            ("8HV48", true),
            ("AB", false),
            ("A1 2", false),
            ("org:X1", false),
            ("A81001A81001", false),
            ("../x", false),
        ] {
            assert_eq!(OdsCode::parse(raw).is_ok(), ok, "{raw:?}");
        }
        assert_eq!(OdsCode::parse("a81001").map(|c| c.as_str().to_owned()), Ok("A81001".to_owned()));
    }
}
