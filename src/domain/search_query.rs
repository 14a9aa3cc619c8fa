//! A parsed FHIR search: clauses ANDed together, each a set of ORed alternatives
//! (R4 search.html#combining). Parsing is pure; the store turns a [`SearchQuery`] into SQL.

use super::outcome::{Issue, IssueCode};
use super::resource_type::ResourceType;
use super::search_params::{self, ParamKind, SearchParam};

/// Which parameter a clause tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamRef {
    /// `_id`
    Id,
    /// A parameter of the registry.
    Registered(&'static SearchParam),
}

/// A token's system part (R4 search.html#token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemMatch {
    /// `code`: any system.
    Any,
    /// `|code`: no system.
    None,
    /// `system|code` or `system|`.
    Exactly(String),
}

/// One alternative of a clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Predicate {
    Id(String),
    Token {
        system: SystemMatch,
        /// `None` for `system|` (any code in the system).
        code: Option<String>,
    },
    Reference {
        target_type: Option<String>,
        target_id: String,
    },
}

/// One `name=value[,value]` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    pub param: ParamRef,
    pub any_of: Vec<Predicate>,
}

/// A search over one resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    pub resource_type: ResourceType,
    pub clauses: Vec<Clause>,
}

fn invalid(message: String, expression: &str) -> Issue {
    Issue::error(IssueCode::Invalid, message).at(expression.to_owned())
}

/// Parses conditional criteria (`If-None-Exist`, `ifNoneExist`): a query string of exact-match
/// token, reference and `_id` parameters. Anything else is refused rather than ignored: a
/// conditional create that silently dropped a criterion could match the wrong resource.
pub fn parse_criteria(resource_type: ResourceType, raw: &str) -> Result<SearchQuery, Issue> {
    let raw = raw.trim_start_matches('?');
    let raw = raw
        .strip_prefix(resource_type.as_str())
        .map(|rest| rest.trim_start_matches('?'))
        .unwrap_or(raw);
    let mut clauses = Vec::new();
    for (name, value) in url::form_urlencoded::parse(raw.as_bytes()) {
        if value.is_empty() {
            return Err(invalid(format!("criterion '{name}' has no value"), "If-None-Exist"));
        }
        let param = if name == "_id" {
            ParamRef::Id
        } else {
            match search_params::find(resource_type, &name) {
                Some(p) if matches!(p.kind, ParamKind::Token | ParamKind::Reference) => ParamRef::Registered(p),
                Some(_) => {
                    return Err(invalid(
                        format!("criterion '{name}' is not a token or reference parameter; conditional create supports exact matches only"),
                        "If-None-Exist",
                    ))
                }
                None => {
                    return Err(invalid(
                        format!("'{name}' is not a search parameter of {resource_type}"),
                        "If-None-Exist",
                    ))
                }
            }
        };
        let any_of = value
            .split(',')
            .map(|alternative| parse_value(param, alternative))
            .collect::<Result<Vec<_>, _>>()?;
        clauses.push(Clause { param, any_of });
    }
    if clauses.is_empty() {
        return Err(invalid("conditional criteria are empty".to_owned(), "If-None-Exist"));
    }
    Ok(SearchQuery { resource_type, clauses })
}

fn parse_value(param: ParamRef, raw: &str) -> Result<Predicate, Issue> {
    match param {
        ParamRef::Id => Ok(Predicate::Id(raw.to_owned())),
        ParamRef::Registered(p) if p.kind == ParamKind::Token => Ok(parse_token(raw)),
        ParamRef::Registered(_) => parse_reference(raw),
    }
}

/// `[system]|[code]` or `code` (R4 search.html#token).
pub fn parse_token(raw: &str) -> Predicate {
    match raw.split_once('|') {
        None => Predicate::Token { system: SystemMatch::Any, code: Some(raw.to_owned()) },
        Some(("", code)) => Predicate::Token { system: SystemMatch::None, code: Some(code.to_owned()) },
        Some((system, "")) => Predicate::Token { system: SystemMatch::Exactly(system.to_owned()), code: None },
        Some((system, code)) => Predicate::Token {
            system: SystemMatch::Exactly(system.to_owned()),
            code: Some(code.to_owned()),
        },
    }
}

/// `Type/id`, `id`, or an absolute URL ending in `Type/id` (R4 search.html#reference).
pub fn parse_reference(raw: &str) -> Result<Predicate, Issue> {
    if let Some((target_type, target_id)) = search_params::split_reference(raw) {
        return Ok(Predicate::Reference { target_type: Some(target_type), target_id });
    }
    if !raw.is_empty() && !raw.contains('/') {
        return Ok(Predicate::Reference { target_type: None, target_id: raw.to_owned() });
    }
    Err(invalid(format!("'{raw}' is not a reference (Type/id, id or an absolute URL)"), "If-None-Exist"))
}

impl SearchQuery {
    /// A canonical text of the criteria, so that the same criteria written in another order
    /// claim the same conditional-create key.
    pub fn canonical_key(&self) -> String {
        let mut parts: Vec<String> = self
            .clauses
            .iter()
            .map(|clause| {
                let name = match clause.param {
                    ParamRef::Id => "_id",
                    ParamRef::Registered(p) => p.name,
                };
                let mut values: Vec<String> = clause.any_of.iter().map(|p| format!("{p:?}")).collect();
                values.sort();
                format!("{name}={}", values.join(","))
            })
            .collect();
        parts.sort();
        parts.join("&")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_criteria_parse_into_one_token_clause() {
        let q = parse_criteria(ResourceType::ServiceRequest, "identifier=urn:gp|R-1").expect("parses");
        assert_eq!(q.clauses.len(), 1);
        assert_eq!(
            q.clauses[0].any_of,
            vec![Predicate::Token { system: SystemMatch::Exactly("urn:gp".into()), code: Some("R-1".into()) }]
        );
    }

    #[test]
    fn criteria_in_another_order_share_one_key() {
        let a = parse_criteria(ResourceType::Task, "identifier=a|1&status=requested").expect("a");
        let b = parse_criteria(ResourceType::Task, "status=requested&identifier=a|1").expect("b");
        assert_eq!(a.canonical_key(), b.canonical_key());
    }

    #[test]
    fn unknown_empty_and_non_exact_criteria_are_refused() {
        for raw in ["", "nonsense=1", "identifier=", "authored-on=2024"] {
            assert!(parse_criteria(ResourceType::Task, raw).is_err(), "{raw:?} should be refused");
        }
    }

    #[test]
    fn the_url_prefix_form_is_accepted() {
        assert!(parse_criteria(ResourceType::Patient, "Patient?identifier=x|1").is_ok());
    }
}
