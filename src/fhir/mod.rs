//! FHIR R4 value rules that fhirbolt does not check: primitive formats and required code bindings.
