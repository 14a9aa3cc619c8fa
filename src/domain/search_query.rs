//! A parsed FHIR search: clauses ANDed together, each a set of ORed alternatives
//! (R4 search.html#combining), plus the result parameters (`_count`, `_sort`, `_include`...).
//! Parsing is pure; the store turns a [`SearchQuery`] into SQL.
//!
//! Two entry points: [`parse_search`] for `GET [type]?…` and `POST [type]/_search`, and
//! [`parse_criteria`] for conditional create, which accepts exact matches only.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::instant::Instant;
use super::outcome::{Issue, IssueCode};
use super::resource_type::ResourceType;
use super::search_params::{self, normalise_string, partial_date_range, Chain, ParamKind, SearchParam};
use crate::fhir::excluded_from_strings;

/// Which parameter a clause tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamRef {
    /// `_id`
    Id,
    /// `_lastUpdated`, answered from `meta.lastUpdated` as stored (`resources.last_updated`).
    LastUpdated,
    /// A parameter of the registry.
    Registered(&'static SearchParam),
    /// A chained or reverse-chained parameter (`patient.identifier`, `_has:Task:focus:status`):
    /// the clause's predicates test the chain's `param` on the resources at its other end.
    Chained(Chain),
}

impl ParamRef {
    pub fn name(self) -> &'static str {
        match self {
            ParamRef::Id => "_id",
            ParamRef::LastUpdated => "_lastUpdated",
            ParamRef::Registered(p) => p.name,
            ParamRef::Chained(chain) => chain.name,
        }
    }

    pub fn kind(self) -> ParamKind {
        match self {
            ParamRef::Id => ParamKind::Token,
            ParamRef::LastUpdated => ParamKind::Date,
            ParamRef::Registered(p) => p.kind,
            ParamRef::Chained(chain) => chain.param.kind,
        }
    }
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

/// The comparison a date value makes (R4 search.html#prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatePrefix {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
    Sa,
    Eb,
    Ap,
}

impl DatePrefix {
    const ALL: [(&'static str, DatePrefix); 9] = [
        ("eq", DatePrefix::Eq),
        ("ne", DatePrefix::Ne),
        ("lt", DatePrefix::Lt),
        ("gt", DatePrefix::Gt),
        ("le", DatePrefix::Le),
        ("ge", DatePrefix::Ge),
        ("sa", DatePrefix::Sa),
        ("eb", DatePrefix::Eb),
        ("ap", DatePrefix::Ap),
    ];
}

/// How a string value is compared with the normalised index value (R4 search.html#string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatch {
    /// The default: the indexed value starts with the search value, ignoring case and accents.
    StartsWith,
    /// `:exact`: the whole value, case and accents included.
    Exact,
    /// `:contains`: anywhere in the value, ignoring case and accents.
    Contains,
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
    /// `:text`: the display text of a code or identifier type, ignoring case.
    TokenText(String),
    Reference {
        target_type: Option<String>,
        target_id: String,
    },
    /// `:identifier`: `Reference.identifier` matched like a token.
    ReferenceIdentifier {
        system: SystemMatch,
        value: String,
    },
    /// A date compared with the inclusive microsecond range `[low, high]` the search value
    /// covers at its precision. For `ap` the range is already widened.
    Date {
        prefix: DatePrefix,
        low: i64,
        high: i64,
    },
    /// A string; `value` is normalised (see [`normalise_string`]) except for `Exact`.
    String {
        mode: StringMatch,
        value: String,
    },
    /// The resource has at least one index value for the parameter (`:missing=false`;
    /// negated, `:missing=true`).
    Present,
}

/// One `name[:modifier]=value[,value]` pair: true when any alternative holds, or, when
/// `negated`, when none does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    pub param: ParamRef,
    /// `:not` (R4: "the resource does not have a value that matches") and `:missing=true`.
    pub negated: bool,
    pub any_of: Vec<Predicate>,
}

/// The filter of a search over one resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    pub resource_type: ResourceType,
    pub clauses: Vec<Clause>,
}

impl SearchQuery {
    /// Whether any clause tests `_lastUpdated` (such searches see settled rows only; see
    /// `service::search`).
    pub fn uses_last_updated(&self) -> bool {
        self.clauses.iter().any(|c| c.param == ParamRef::LastUpdated)
    }
}

/// What a search can be sorted by (R4 search.html#sort).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    Id,
    LastUpdated,
    /// A token, string or date parameter of the registry: the smallest indexed value.
    Param(&'static SearchParam),
}

impl SortField {
    pub fn name(self) -> &'static str {
        match self {
            SortField::Id => "_id",
            SortField::LastUpdated => "_lastUpdated",
            SortField::Param(p) => p.name,
        }
    }

    /// Keys whose value changes when a resource is updated. Paging over them needs a fixed
    /// horizon to stay free of duplicates (see `service::search`).
    pub fn is_mutable(self) -> bool {
        !matches!(self, SortField::Id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    pub field: SortField,
    pub descending: bool,
}

/// `_total` (R4 search.html#total).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TotalMode {
    /// Counted only when it is free (the whole result fits the first page).
    #[default]
    None,
    /// `estimate` and `accurate` are both answered with an exact count of visible rows.
    Accurate,
}

/// `_summary` (R4 search.html#summary), the values linkbridge supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SummaryMode {
    #[default]
    False,
    /// Only the total, no entries.
    Count,
    /// Everything but the narrative (`text`).
    Data,
}

/// `_include` or `_revinclude` (R4 search.html#include): resources of `source` that
/// reference through `param`, optionally only targets of type `target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Include {
    pub source: ResourceType,
    pub param: &'static SearchParam,
    pub target: Option<ResourceType>,
}

impl Include {
    /// `Source:param[:Target]`, as written in a request and in the CapabilityStatement.
    pub fn code(&self) -> String {
        match self.target {
            Some(t) => format!("{}:{}:{t}", self.source, self.param.name),
            None => format!("{}:{}", self.source, self.param.name),
        }
    }

    /// The targets this include can reach: the named one, or every type the parameter
    /// allows that linkbridge serves.
    pub fn target_types(&self) -> Vec<ResourceType> {
        match self.target {
            Some(t) => vec![t],
            None if self.param.targets.is_empty() => ResourceType::ALL.to_vec(),
            None => self.param.targets.to_vec(),
        }
    }
}

/// Every `_include` the searched type offers: one per reference parameter.
pub fn includes_of(resource_type: ResourceType) -> Vec<Include> {
    search_params::params_for(resource_type)
        .filter(|p| p.kind == ParamKind::Reference)
        .map(|param| Include { source: resource_type, param, target: None })
        .collect()
}

/// Every `_revinclude` onto the searched type: reference parameters of any type that may
/// point at it.
pub fn revincludes_of(resource_type: ResourceType) -> Vec<Include> {
    search_params::REGISTRY
        .iter()
        .filter(|p| p.kind == ParamKind::Reference)
        .filter(|p| p.targets.is_empty() || p.targets.contains(&resource_type))
        .map(|param| Include { source: param.resource_type, param, target: None })
        .collect()
}

/// The direction a page is read in relative to its cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageDirection {
    /// The rows after the cursor row (a `next` link).
    After,
    /// The rows before the cursor row (a `previous` link).
    Before,
}

/// The value of one sort key in a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortValue {
    Int(i64),
    Text(String),
}

/// A position in a result, carried by `next`/`previous` links as `_cursor` (keyset paging:
/// the sort key values and id of the row next to the page, never an offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub direction: PageDirection,
    /// The latest `last_updated` the traversal may return, fixed by its first page.
    pub horizon: Option<i64>,
    pub keys: Vec<SortValue>,
    pub id: String,
}

impl Cursor {
    /// The opaque form used in links: base64url of a small JSON array.
    pub fn encode(&self) -> String {
        let keys: Vec<serde_json::Value> = self
            .keys
            .iter()
            .map(|k| match k {
                SortValue::Int(n) => serde_json::Value::from(*n),
                SortValue::Text(s) => serde_json::Value::from(s.as_str()),
            })
            .collect();
        let direction = match self.direction {
            PageDirection::After => "n",
            PageDirection::Before => "p",
        };
        let raw = serde_json::json!([direction, self.horizon, keys, self.id]).to_string();
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn decode(raw: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let [direction, horizon, keys, id] = value.as_array()?.as_slice() else {
            return None;
        };
        let direction = match direction.as_str()? {
            "n" => PageDirection::After,
            "p" => PageDirection::Before,
            _ => return None,
        };
        let horizon = match horizon {
            serde_json::Value::Null => None,
            other => Some(other.as_i64()?),
        };
        let keys = keys
            .as_array()?
            .iter()
            .map(|k| match k {
                serde_json::Value::String(s) => Some(SortValue::Text(s.clone())),
                other => other.as_i64().map(SortValue::Int),
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Cursor { direction, horizon, keys, id: id.as_str()?.to_owned() })
    }
}

/// A search request after parsing: what to match, how to page, sort and render it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSearch {
    pub query: SearchQuery,
    /// As asked, without the `_id` tie-breaker the store adds. Empty: the default order.
    pub sort: Vec<SortKey>,
    /// `_count` as asked (capped later by the service).
    pub count: Option<u64>,
    pub total: TotalMode,
    pub summary: SummaryMode,
    /// `_elements`: top-level element names to keep.
    pub elements: Option<Vec<String>>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    pub cursor: Option<Cursor>,
    /// The parameters used, in request order, for the `self` and paging links (R4
    /// search.html#selflink: "the parameters that were actually used"). `_count` and
    /// `_cursor` are left out: the service adds its own.
    pub used: Vec<(String, String)>,
    /// Parameter names ignored as unknown (never in a link).
    pub ignored: Vec<String>,
}

/// What parsing needs from outside the request.
#[derive(Debug, Clone, Copy)]
pub struct ParseContext<'a> {
    /// This server's base URL (no trailing slash): absolute references to it are local.
    pub base_url: &'a str,
    /// Unknown parameters are errors (the default), not ignored: a search that silently dropped
    /// `patient.identifier` would answer every resource of the practice. `false` only under
    /// `Prefer: handling=lenient` (R4 search.html#errors).
    pub strict: bool,
    /// The time `ap` is judged against.
    pub now: Instant,
}

/// Parameters that are not search parameters but are understood elsewhere (rendering).
const PASS_THROUGH: &[&str] = &["_format", "_pretty"];

/// The most parameters one search may hold (URL and form body together; result parameters
/// such as `_count` included), and one set of conditional-create criteria or one subscription
/// filter. Each filter parameter is a subquery: 3,000 of them cost minutes and gigabytes of a
/// PostgreSQL backend.
pub const MAX_SEARCH_PARAMETERS: usize = 32;

/// The most values one search may hold over all its parameters, counting each comma-separated
/// alternative (an OR) as one.
pub const MAX_SEARCH_VALUES: usize = 64;

/// The most joins one search may make: chained and reverse-chained parameters, `_include`s and
/// `_revinclude`s, each a read of other resources.
pub const MAX_SEARCH_JOINS: usize = 8;

fn too_costly(message: String, expression: &str) -> Issue {
    Issue::error(IssueCode::TooCostly, message).at(expression.to_owned())
}

/// How many alternatives a value holds: its commas not escaped as `\,`, plus one.
fn alternatives_in(value: &str) -> usize {
    let mut count = 1;
    let mut escaped = false;
    for c in value.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ',' => count += 1,
            _ => {}
        }
    }
    count
}

/// Refuses a search, criteria or filter with more parameters or values than the bounds above,
/// before any of them is parsed. `expression` names where the parameters were given. `_count`
/// and `_cursor` are not counted: the service writes them into every paging link itself, and
/// the next page of a search at the bounds must not be past them (neither adds a join or a
/// filter).
pub fn check_bounds<'p>(params: impl IntoIterator<Item = (&'p str, &'p str)>, expression: &str) -> Result<(), Issue> {
    let mut parameters = 0;
    let mut values = 0;
    for (_, value) in params.into_iter().filter(|(name, _)| !matches!(*name, "_count" | "_cursor")) {
        parameters += 1;
        if parameters > MAX_SEARCH_PARAMETERS {
            return Err(too_costly(
                format!("a search may have at most {MAX_SEARCH_PARAMETERS} parameters (MAX_SEARCH_PARAMETERS)"),
                expression,
            ));
        }
        values += alternatives_in(value);
        if values > MAX_SEARCH_VALUES {
            return Err(too_costly(
                format!(
                    "a search may test at most {MAX_SEARCH_VALUES} values, counting each comma-separated alternative (MAX_SEARCH_VALUES)"
                ),
                expression,
            ));
        }
    }
    Ok(())
}

fn invalid(message: String, expression: &str) -> Issue {
    Issue::error(IssueCode::Invalid, message).at(expression.to_owned())
}

/// A parameter name or value holding a control character (other than tab, CR and LF), which
/// no stored value holds (FHIR strings exclude them) and PostgreSQL's text cannot (U+0000):
/// refused before any query rather than failing in the database.
fn control_character_in(name: &str, value: &str, expression: &str) -> Option<Issue> {
    (name.chars().any(excluded_from_strings) || value.chars().any(excluded_from_strings))
        .then(|| invalid(format!("search parameter '{}' holds a control character", name.escape_default()), expression))
}

fn not_supported(message: String, expression: &str) -> Issue {
    Issue::error(IssueCode::NotSupported, message).at(expression.to_owned())
}

/// Parses a search request: `params` are the URL (and, for `POST _search`, body) parameters
/// in request order; repeats of a name are ANDed. All problems are reported together.
pub fn parse_search(
    resource_type: ResourceType,
    params: &[(String, String)],
    context: &ParseContext<'_>,
) -> Result<ParsedSearch, Vec<Issue>> {
    let mut search = ParsedSearch {
        query: SearchQuery { resource_type, clauses: Vec::new() },
        sort: Vec::new(),
        count: None,
        total: TotalMode::None,
        summary: SummaryMode::False,
        elements: None,
        includes: Vec::new(),
        revincludes: Vec::new(),
        cursor: None,
        used: Vec::new(),
        ignored: Vec::new(),
    };
    check_bounds(params.iter().map(|(name, value)| (name.as_str(), value.as_str())), "search")
        .map_err(|issue| vec![issue])?;
    let mut issues = Vec::new();
    for (name, value) in params {
        if let Some(issue) = control_character_in(name, value, name) {
            issues.push(issue);
            continue;
        }
        let used = match parse_one(resource_type, name, value, context, &mut search) {
            Ok(Use::Keep) => true,
            Ok(Use::Silent) => false,
            Ok(Use::Unknown) if context.strict => {
                issues.push(not_supported(
                    format!(
                        "'{name}' is not a supported search parameter of {resource_type}; unknown parameters are ignored only under Prefer: handling=lenient"
                    ),
                    name,
                ));
                false
            }
            Ok(Use::Unknown) => {
                search.ignored.push(name.clone());
                false
            }
            Err(issue) => {
                issues.push(issue);
                false
            }
        };
        if used {
            search.used.push((name.clone(), value.clone()));
        }
    }
    let chains = search.query.clauses.iter().filter(|c| matches!(c.param, ParamRef::Chained(_))).count();
    if chains + search.includes.len() + search.revincludes.len() > MAX_SEARCH_JOINS {
        issues.push(too_costly(
            format!(
                "a search may make at most {MAX_SEARCH_JOINS} joins: chained parameters, _has, _include and _revinclude together (MAX_SEARCH_JOINS)"
            ),
            "search",
        ));
    }
    if issues.is_empty() {
        Ok(search)
    } else {
        Err(issues)
    }
}

/// What became of one parameter.
enum Use {
    /// Used, and kept in links.
    Keep,
    /// Used, but links carry it in their own form (`_count`, `_cursor`).
    Silent,
    Unknown,
}

/// One query parameter, recorded in `search`; how the links carry it.
fn parse_one(
    resource_type: ResourceType,
    name: &str,
    value: &str,
    context: &ParseContext<'_>,
    search: &mut ParsedSearch,
) -> Result<Use, Issue> {
    match parse_result_parameter(resource_type, name, value, search)? {
        Some(used) => Ok(used),
        None => parse_criterion(resource_type, name, value, context, search),
    }
}

/// A parameter that shapes the result (`_count`, `_sort`, `_include`, …) rather than choosing
/// what matches; `None` when `name` is not one.
fn parse_result_parameter(
    resource_type: ResourceType,
    name: &str,
    value: &str,
    search: &mut ParsedSearch,
) -> Result<Option<Use>, Issue> {
    match name {
        "_count" => {
            search.count = Some(parse_count(value)?);
            return Ok(Some(Use::Silent));
        }
        "_cursor" => {
            let cursor = Cursor::decode(value)
                .ok_or_else(|| invalid("_cursor is not a cursor this server issued".to_owned(), "_cursor"))?;
            search.cursor = Some(cursor);
            return Ok(Some(Use::Silent));
        }
        "_sort" => {
            search.sort = parse_sort(resource_type, value)?;
            return Ok(Some(Use::Keep));
        }
        "_total" => {
            search.total = match value {
                "none" => TotalMode::None,
                "estimate" | "accurate" => TotalMode::Accurate,
                other => return Err(invalid(format!("_total '{other}' is not none, estimate or accurate"), "_total")),
            };
            return Ok(Some(Use::Keep));
        }
        "_summary" => {
            search.summary = match value {
                "false" => SummaryMode::False,
                "count" => SummaryMode::Count,
                "data" => SummaryMode::Data,
                other => {
                    return Err(not_supported(
                        format!("_summary '{other}' is not supported; use count, data or false"),
                        "_summary",
                    ))
                }
            };
            return Ok(Some(Use::Keep));
        }
        "_elements" => {
            search.elements = Some(parse_elements(value)?);
            return Ok(Some(Use::Keep));
        }
        "_include" => {
            search.includes.push(parse_include(resource_type, value, false)?);
            return Ok(Some(Use::Keep));
        }
        "_revinclude" => {
            search.revincludes.push(parse_include(resource_type, value, true)?);
            return Ok(Some(Use::Keep));
        }
        _ if PASS_THROUGH.contains(&name) => return Ok(Some(Use::Keep)),
        _ => {}
    }
    Ok(None)
}

/// A criterion: a chain, `_id`, `_lastUpdated` or a registered parameter with its modifier.
fn parse_criterion(
    resource_type: ResourceType,
    name: &str,
    value: &str,
    context: &ParseContext<'_>,
    search: &mut ParsedSearch,
) -> Result<Use, Issue> {
    // A chain's name holds a `:` of its own (`subject:Patient.identifier`, `_has:Task:…`).
    if name.contains('.') || name.starts_with("_has:") {
        let Some(chain) = search_params::find_chain(resource_type, name) else {
            return Ok(Use::Unknown);
        };
        let inner = parse_clause(ParamRef::Registered(chain.param), None, name, value, context)?;
        search.query.clauses.push(Clause { param: ParamRef::Chained(chain), ..inner });
        return Ok(Use::Keep);
    }
    let (base, modifier) = match name.split_once(':') {
        Some((base, modifier)) => (base, Some(modifier)),
        None => (name, None),
    };
    let param = match base {
        "_id" => ParamRef::Id,
        "_lastUpdated" => ParamRef::LastUpdated,
        _ => match search_params::find(resource_type, base) {
            Some(p) => ParamRef::Registered(p),
            None => return Ok(Use::Unknown),
        },
    };
    let clause = parse_clause(param, modifier, name, value, context)?;
    search.query.clauses.push(clause);
    Ok(Use::Keep)
}

/// `_count`: a whole number; larger than the server's maximum is capped by the service,
/// never refused (R4 search.html#count: the server may return fewer).
fn parse_count(value: &str) -> Result<u64, Issue> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(format!("_count '{value}' is not a whole number"), "_count"));
    }
    Ok(value.parse::<u64>().unwrap_or(u64::MAX))
}

fn parse_sort(resource_type: ResourceType, value: &str) -> Result<Vec<SortKey>, Issue> {
    let mut keys = Vec::new();
    for raw in value.split(',') {
        let (descending, name) = match raw.strip_prefix('-') {
            Some(name) => (true, name),
            None => (false, raw),
        };
        let field = match name {
            "_id" => SortField::Id,
            "_lastUpdated" => SortField::LastUpdated,
            _ => match search_params::find(resource_type, name) {
                Some(p) if p.kind != ParamKind::Reference => SortField::Param(p),
                Some(_) => {
                    return Err(not_supported(
                        format!("_sort by the reference parameter '{name}' is not supported"),
                        "_sort",
                    ))
                }
                None => {
                    return Err(invalid(
                        format!("_sort: '{name}' is not a search parameter of {resource_type}"),
                        "_sort",
                    ))
                }
            },
        };
        if keys.iter().any(|k: &SortKey| k.field == field) {
            return Err(invalid(format!("_sort names '{name}' twice"), "_sort"));
        }
        keys.push(SortKey { field, descending });
    }
    Ok(keys)
}

fn parse_elements(value: &str) -> Result<Vec<String>, Issue> {
    value
        .split(',')
        .map(str::trim)
        .map(|name| {
            let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric());
            if ok {
                Ok(name.to_owned())
            } else {
                Err(invalid(format!("_elements: '{name}' is not an element name"), "_elements"))
            }
        })
        .collect()
}

/// `Source:param[:Target]`. An include starts from the searched type; a revinclude from a
/// type whose parameter can point at the searched type.
fn parse_include(resource_type: ResourceType, value: &str, reverse: bool) -> Result<Include, Issue> {
    let expression = if reverse { "_revinclude" } else { "_include" };
    let parts: Vec<&str> = value.split(':').collect();
    let (source, param, target) = match parts.as_slice() {
        [source, param] => (*source, *param, None),
        [source, param, target] => (*source, *param, Some(*target)),
        _ => return Err(invalid(format!("{expression} '{value}' is not Type:parameter[:TargetType]"), expression)),
    };
    if source == "*" || param == "*" {
        return Err(not_supported(format!("{expression} wildcards are not supported"), expression));
    }
    let source = ResourceType::parse(source).map_err(|e| invalid(format!("{expression}: {e}"), expression))?;
    let target = target
        .map(|t| ResourceType::parse(t).map_err(|e| invalid(format!("{expression}: {e}"), expression)))
        .transpose()?;
    let param = match search_params::find(source, param) {
        Some(p) if p.kind == ParamKind::Reference => p,
        _ => {
            return Err(invalid(
                format!("{expression}: '{param}' is not a reference parameter of {source}"),
                expression,
            ))
        }
    };
    let include = Include { source, param, target };
    if let Some(t) = target {
        if !param.targets.is_empty() && !param.targets.contains(&t) {
            return Err(invalid(format!("{expression}: {source}:{} cannot point at a {t}", param.name), expression));
        }
    }
    if reverse {
        let reaches = include.target_types().contains(&resource_type);
        if !reaches {
            return Err(invalid(
                format!("_revinclude: {} cannot point at a {resource_type}", include.code()),
                expression,
            ));
        }
    } else if source != resource_type {
        return Err(invalid(
            format!("_include: the source type must be the searched type {resource_type}, not {source}"),
            expression,
        ));
    }
    Ok(include)
}

/// The modifiers each parameter type accepts (R4 search.html#modifiers). Anything else is
/// refused: "Servers SHALL reject any search request that contains a search parameter with an
/// unsupported modifier".
fn parse_clause(
    param: ParamRef,
    modifier: Option<&str>,
    name: &str,
    value: &str,
    context: &ParseContext<'_>,
) -> Result<Clause, Issue> {
    if value.is_empty() {
        return Err(invalid(format!("'{name}' has no value"), name));
    }
    let alternatives = split_alternatives(value);
    let each = |f: &dyn Fn(&str) -> Result<Predicate, Issue>| -> Result<Vec<Predicate>, Issue> {
        alternatives.iter().map(|a| f(a)).collect()
    };
    let clause = |negated, any_of| Ok(Clause { param, negated, any_of });
    let unsupported = || {
        Err(not_supported(
            format!("the modifier ':{}' is not supported on '{}'", modifier.unwrap_or_default(), param.name()),
            name,
        ))
    };
    if modifier == Some("missing") {
        if matches!(param, ParamRef::Id | ParamRef::LastUpdated) {
            return unsupported();
        }
        return match value {
            "true" => clause(true, vec![Predicate::Present]),
            "false" => clause(false, vec![Predicate::Present]),
            _ => Err(invalid(format!("'{name}' takes true or false"), name)),
        };
    }
    match (param, param.kind(), modifier) {
        (ParamRef::Id, _, None) => clause(false, each(&|raw| parse_id(raw, name))?),
        (ParamRef::Id, _, Some(_)) => unsupported(),
        (_, ParamKind::Token, None) => clause(false, each(&|raw| Ok(parse_token(raw)))?),
        (_, ParamKind::Token, Some("not")) => clause(true, each(&|raw| Ok(parse_token(raw)))?),
        (_, ParamKind::Token, Some("text")) => {
            clause(false, each(&|raw| Ok(Predicate::TokenText(normalise_string(&unescape(raw)))))?)
        }
        (ParamRef::Registered(p), ParamKind::Reference, None) => {
            clause(false, each(&|raw| parse_reference_value(p, None, raw, name, context.base_url))?)
        }
        (ParamRef::Registered(_), ParamKind::Reference, Some("identifier")) => {
            clause(false, each(&|raw| Ok(parse_reference_identifier(raw)))?)
        }
        (ParamRef::Registered(p), ParamKind::Reference, Some(type_modifier)) => {
            match ResourceType::parse(type_modifier) {
                Ok(t) => clause(false, each(&|raw| parse_reference_value(p, Some(t), raw, name, context.base_url))?),
                Err(_) => unsupported(),
            }
        }
        (_, ParamKind::Date, None) => clause(false, each(&|raw| parse_date(raw, name, context.now))?),
        (_, ParamKind::String, None) => clause(false, each(&|raw| Ok(string_predicate(StringMatch::StartsWith, raw)))?),
        (_, ParamKind::String, Some("exact")) => {
            clause(false, each(&|raw| Ok(string_predicate(StringMatch::Exact, raw)))?)
        }
        (_, ParamKind::String, Some("contains")) => {
            clause(false, each(&|raw| Ok(string_predicate(StringMatch::Contains, raw)))?)
        }
        _ => unsupported(),
    }
}

/// Splits on commas not escaped as `\,` and unescapes `\,`, `\|`, `\$` and `\\`
/// (R4 search.html#escaping). `\|` stays escaped for the token parser.
fn split_alternatives(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(',') => current.push(','),
                Some('$') => current.push('$'),
                Some('\\') => current.push_str("\\\\"),
                Some('|') => current.push_str("\\|"),
                Some(other) => {
                    current.push('\\');
                    current.push(other);
                }
                None => current.push('\\'),
            },
            ',' => out.push(std::mem::take(&mut current)),
            other => current.push(other),
        }
    }
    out.push(current);
    out
}

/// Removes the escapes [`split_alternatives`] leaves for the token parser (`\\|`, `\\\\`).
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some(next @ ('|' | '\\'))) => {
                out.push(next);
                chars.next();
            }
            (other, _) => out.push(other),
        }
    }
    out
}

/// Splits `system|code` at the first unescaped `|`, unescaping both halves.
fn split_token(raw: &str) -> (Option<String>, String) {
    let mut system = None;
    let mut current = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) => current.push(escaped),
                None => current.push('\\'),
            },
            '|' if system.is_none() => system = Some(std::mem::take(&mut current)),
            other => current.push(other),
        }
    }
    (system, current)
}

fn parse_id(raw: &str, name: &str) -> Result<Predicate, Issue> {
    crate::domain::ids::ResourceId::parse(raw)
        .map(|id| Predicate::Id(id.as_str().to_owned()))
        .map_err(|e| invalid(e.to_string(), name))
}

/// `[system]|[code]` or `code` (R4 search.html#token).
pub fn parse_token(raw: &str) -> Predicate {
    match split_token(raw) {
        (None, code) => Predicate::Token { system: SystemMatch::Any, code: Some(code) },
        (Some(system), code) if system.is_empty() => Predicate::Token { system: SystemMatch::None, code: Some(code) },
        (Some(system), code) if code.is_empty() => {
            Predicate::Token { system: SystemMatch::Exactly(system), code: None }
        }
        (Some(system), code) => Predicate::Token { system: SystemMatch::Exactly(system), code: Some(code) },
    }
}

fn parse_reference_identifier(raw: &str) -> Predicate {
    match split_token(raw) {
        (None, value) => Predicate::ReferenceIdentifier { system: SystemMatch::Any, value },
        (Some(system), value) if system.is_empty() => {
            Predicate::ReferenceIdentifier { system: SystemMatch::None, value }
        }
        (Some(system), value) => Predicate::ReferenceIdentifier { system: SystemMatch::Exactly(system), value },
    }
}

/// `Type/id`, `id`, or an absolute URL of a resource on this server (R4 search.html#reference).
/// linkbridge resolves references on this server only: an absolute URL elsewhere is refused
/// rather than silently compared by its last two segments.
fn parse_reference_value(
    param: &SearchParam,
    type_modifier: Option<ResourceType>,
    raw: &str,
    name: &str,
    base_url: &str,
) -> Result<Predicate, Issue> {
    let raw = &unescape(raw);
    let local = raw.strip_prefix(base_url).and_then(|rest| rest.strip_prefix('/')).filter(|_| !base_url.is_empty());
    let relative = match local {
        Some(rest) => rest,
        None if raw.contains("://") || raw.starts_with("urn:") => {
            return Err(invalid(
                format!("'{raw}' is not a reference to this server ({base_url}); use Type/id or id"),
                name,
            ))
        }
        None => raw,
    };
    // A version-specific reference finds the resource (R4 search.html#versions).
    let relative = relative.split_once("/_history/").map_or(relative, |(head, _)| head);
    let (target_type, target_id) = match relative.split('/').collect::<Vec<_>>().as_slice() {
        [id] => (None, (*id).to_owned()),
        [ty, id]
            if ty.starts_with(|c: char| c.is_ascii_uppercase()) && ty.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            (Some((*ty).to_owned()), (*id).to_owned())
        }
        _ => return Err(invalid(format!("'{raw}' is not a reference (Type/id, id or a URL on this server)"), name)),
    };
    if crate::domain::ids::ResourceId::parse(&target_id).is_err() {
        return Err(invalid(format!("'{target_id}' in '{raw}' is not a valid id"), name));
    }
    let target_type = match (target_type, type_modifier) {
        (Some(t), Some(m)) if t != m.as_str() => {
            return Err(invalid(format!("'{raw}' is not a {m} as the modifier ':{m}' requires"), name))
        }
        (None, Some(m)) => Some(m.as_str().to_owned()),
        (None, None) => only_target(param),
        (t, _) => t,
    };
    if let Some(t) = &target_type {
        let allowed = param.targets.is_empty() || param.targets.iter().any(|target| target.as_str() == t);
        if !allowed {
            let names: Vec<&str> = param.targets.iter().map(|t| t.as_str()).collect();
            return Err(invalid(format!("'{}' refers to {} only, not to a {t}", param.name, names.join(", ")), name));
        }
    }
    Ok(Predicate::Reference { target_type, target_id })
}

/// `[prefix]value` where value is a FHIR date, dateTime or instant of any precision
/// (R4 search.html#date). The predicate carries the range the value covers.
fn parse_date(raw: &str, name: &str, now: Instant) -> Result<Predicate, Issue> {
    let (prefix, value) = DatePrefix::ALL
        .iter()
        .find_map(|(text, prefix)| raw.strip_prefix(text).map(|rest| (*prefix, rest)))
        .unwrap_or((DatePrefix::Eq, raw));
    let (low, high) = partial_date_range(value).ok_or_else(|| {
        invalid(
            format!("'{raw}' is not a date: expected [prefix]YYYY[-MM[-DD[Thh:mm[:ss[.fff]][zone]]]], prefix one of eq ne lt gt le ge sa eb ap"),
            name,
        )
    })?;
    if prefix != DatePrefix::Ap {
        return Ok(Predicate::Date { prefix, low, high });
    }
    // R4 suggests "10% of the gap between now and the date"; at least the value's own
    // precision, and at least a day, so that `ap` today is not an exact match.
    const DAY: i64 = 86_400_000_000;
    let gap = (now.micros() - low).unsigned_abs().min(i64::MAX as u64) as i64;
    let widen = (gap / 10).max(DAY);
    Ok(Predicate::Date { prefix, low: low.saturating_sub(widen), high: high.saturating_add(widen) })
}

fn string_predicate(mode: StringMatch, raw: &str) -> Predicate {
    let raw = unescape(raw);
    let value = match mode {
        StringMatch::Exact => raw,
        StringMatch::StartsWith | StringMatch::Contains => normalise_string(&raw),
    };
    Predicate::String { mode, value }
}

/// Parses conditional criteria (`If-None-Exist`, `ifNoneExist`): a query string of exact-match
/// token, reference and `_id` parameters. Anything else is refused rather than ignored: a
/// conditional create that silently dropped a criterion could match the wrong resource.
pub fn parse_criteria(resource_type: ResourceType, raw: &str) -> Result<SearchQuery, Issue> {
    let raw = raw.trim_start_matches('?');
    let raw = raw.strip_prefix(resource_type.as_str()).map(|rest| rest.trim_start_matches('?')).unwrap_or(raw);
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(raw.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    check_bounds(pairs.iter().map(|(name, value)| (name.as_str(), value.as_str())), "If-None-Exist")?;
    let mut clauses = Vec::new();
    for (name, value) in pairs {
        if let Some(issue) = control_character_in(&name, &value, "If-None-Exist") {
            return Err(issue);
        }
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
        let any_of =
            value.split(',').map(|alternative| criteria_value(param, alternative)).collect::<Result<Vec<_>, _>>()?;
        clauses.push(Clause { param, negated: false, any_of });
    }
    if clauses.is_empty() {
        return Err(invalid("conditional criteria are empty".to_owned(), "If-None-Exist"));
    }
    Ok(SearchQuery { resource_type, clauses })
}

fn criteria_value(param: ParamRef, raw: &str) -> Result<Predicate, Issue> {
    match param {
        ParamRef::Registered(p) if p.kind == ParamKind::Token => Ok(parse_token(raw)),
        ParamRef::Registered(p) => parse_reference(p, raw),
        // Criteria name `_id` or a token or reference parameter only (see `parse_criteria`).
        ParamRef::Id | ParamRef::LastUpdated | ParamRef::Chained(_) => Ok(Predicate::Id(raw.to_owned())),
    }
}

/// The type a bare id of `param` names: the one type it can point at (`patient`), if one.
/// `patient` is answered from the rows of `subject`, which may also point at a Group.
fn only_target(param: &SearchParam) -> Option<String> {
    match param.targets {
        [only] => Some(only.as_str().to_owned()),
        _ => None,
    }
}

/// `Type/id`, `id`, or an absolute URL ending in `Type/id`, of `param` (conditional criteria
/// and subscription filters, where the server's base URL is not at hand).
pub fn parse_reference(param: &SearchParam, raw: &str) -> Result<Predicate, Issue> {
    if let Some((target_type, target_id)) = search_params::split_reference(raw) {
        return Ok(Predicate::Reference { target_type: Some(target_type), target_id });
    }
    if !raw.is_empty() && !raw.contains('/') {
        return Ok(Predicate::Reference { target_type: only_target(param), target_id: raw.to_owned() });
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
                let mut values: Vec<String> = clause.any_of.iter().map(|p| format!("{p:?}")).collect();
                values.sort();
                let negation = if clause.negated { ":not" } else { "" };
                format!("{}{negation}={}", clause.param.name(), values.join(","))
            })
            .collect();
        parts.sort();
        parts.join("&")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "https://lb.example/fhir";

    fn context(strict: bool) -> ParseContext<'static> {
        ParseContext { base_url: BASE, strict, now: Instant::parse_rfc3339("2026-01-01T00:00:00Z").expect("instant") }
    }

    fn params(query: &str) -> Vec<(String, String)> {
        url::form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
    }

    fn parse(resource_type: ResourceType, query: &str) -> Result<ParsedSearch, Vec<Issue>> {
        parse_search(resource_type, &params(query), &context(false))
    }

    /// The single clause a query parses into.
    fn clause(resource_type: ResourceType, query: &str) -> Clause {
        let parsed = parse(resource_type, query).unwrap_or_else(|e| panic!("{query} should parse: {e:?}"));
        assert_eq!(parsed.query.clauses.len(), 1, "{query} is one clause");
        parsed.query.clauses[0].clone()
    }

    fn micros(raw: &str) -> i64 {
        Instant::parse_rfc3339(raw).expect("instant").micros()
    }

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
    fn the_canonical_key_of_existing_criteria_is_unchanged() {
        // Keys are stored in conditional_keys: their text must not drift.
        let q = parse_criteria(ResourceType::Task, "identifier=a|1").expect("parses");
        assert_eq!(q.canonical_key(), r#"identifier=Token { system: Exactly("a"), code: Some("1") }"#);
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

    #[test]
    fn token_values_and_modifiers_parse_per_r4() {
        use Predicate::Token;
        use SystemMatch::{Any, Exactly, None as NoSystem};
        let s = |x: &str| Some(x.to_owned());
        let cases: Vec<(&str, bool, Vec<Predicate>)> = vec![
            ("status=requested", false, vec![Token { system: Any, code: s("requested") }]),
            (
                "code=http://sct|871731000000106",
                false,
                vec![Token { system: Exactly("http://sct".into()), code: s("871731000000106") }],
            ),
            ("code=|fulfill", false, vec![Token { system: NoSystem, code: s("fulfill") }]),
            ("code=http://sct|", false, vec![Token { system: Exactly("http://sct".into()), code: None }]),
            (
                "status=requested,accepted",
                false,
                vec![Token { system: Any, code: s("requested") }, Token { system: Any, code: s("accepted") }],
            ),
            ("status:not=completed", true, vec![Token { system: Any, code: s("completed") }]),
            ("code:text=Social", false, vec![Predicate::TokenText("social".into())]),
            ("business-status:missing=true", true, vec![Predicate::Present]),
            ("business-status:missing=false", false, vec![Predicate::Present]),
            ("identifier=urn:x|a\\,b", false, vec![Token { system: Exactly("urn:x".into()), code: s("a,b") }]),
            ("identifier=urn:x|a\\|b", false, vec![Token { system: Exactly("urn:x".into()), code: s("a|b") }]),
        ];
        for (query, negated, any_of) in cases {
            let c = clause(ResourceType::Task, query);
            assert_eq!(c.negated, negated, "{query}: negation");
            assert_eq!(c.any_of, any_of, "{query}: alternatives");
        }
    }

    #[test]
    fn reference_values_and_modifiers_parse_per_r4() {
        use Predicate::{Reference, ReferenceIdentifier};
        let r = |t: Option<&str>, id: &str| Reference { target_type: t.map(str::to_owned), target_id: id.to_owned() };
        let cases: Vec<(ResourceType, &str, bool, Vec<Predicate>)> = vec![
            (ResourceType::Task, "owner=Organization/clw", false, vec![r(Some("Organization"), "clw")]),
            (ResourceType::Task, "owner=clw", false, vec![r(None, "clw")]),
            (
                ResourceType::Task,
                "focus=https://lb.example/fhir/ServiceRequest/sr1",
                false,
                vec![r(Some("ServiceRequest"), "sr1")],
            ),
            (ResourceType::Task, "focus=ServiceRequest/sr1/_history/2", false, vec![r(Some("ServiceRequest"), "sr1")]),
            (ResourceType::Task, "subject:Patient=p1", false, vec![r(Some("Patient"), "p1")]),
            (ResourceType::Task, "owner:missing=true", true, vec![Predicate::Present]),
            (
                ResourceType::Task,
                "owner:identifier=https://fhir.nhs.uk/Id/ods-organization-code|CLW01",
                false,
                vec![ReferenceIdentifier {
                    system: SystemMatch::Exactly("https://fhir.nhs.uk/Id/ods-organization-code".into()),
                    value: "CLW01".into(),
                }],
            ),
            (
                ResourceType::Task,
                "owner:identifier=CLW01",
                false,
                vec![ReferenceIdentifier { system: SystemMatch::Any, value: "CLW01".into() }],
            ),
            (
                ResourceType::ServiceRequest,
                "patient=Patient/a,Patient/b",
                false,
                vec![r(Some("Patient"), "a"), r(Some("Patient"), "b")],
            ),
        ];
        for (resource_type, query, negated, any_of) in cases {
            let c = clause(resource_type, query);
            assert_eq!(c.negated, negated, "{query}: negation");
            assert_eq!(c.any_of, any_of, "{query}: alternatives");
        }
    }

    #[test]
    fn references_that_cannot_be_resolved_here_are_refused() {
        for query in [
            "focus=https://elsewhere.example/fhir/ServiceRequest/1",
            "patient=Organization/1",
            "subject:Patient=Organization/1",
            "owner=a/b/c",
            "owner=bad id!",
            "owner:Observation=1",
        ] {
            let got = parse(ResourceType::Task, query);
            let issues = got.expect_err(query);
            assert!(issues[0].expression.is_some(), "{query}: the issue names the parameter");
        }
    }

    #[test]
    fn date_prefixes_parse_with_the_range_of_their_precision() {
        let day_low = micros("2026-03-05T00:00:00Z");
        let day_high = micros("2026-03-06T00:00:00Z") - 1;
        let second = micros("2026-03-05T10:00:00Z");
        let cases: Vec<(&str, DatePrefix, i64, i64)> = vec![
            ("authored-on=2026-03-05", DatePrefix::Eq, day_low, day_high),
            ("authored-on=eq2026-03-05", DatePrefix::Eq, day_low, day_high),
            ("authored-on=ne2026-03-05", DatePrefix::Ne, day_low, day_high),
            ("authored-on=lt2026-03-05", DatePrefix::Lt, day_low, day_high),
            ("authored-on=gt2026-03-05", DatePrefix::Gt, day_low, day_high),
            ("authored-on=le2026-03-05", DatePrefix::Le, day_low, day_high),
            ("authored-on=ge2026-03-05", DatePrefix::Ge, day_low, day_high),
            ("authored-on=sa2026-03-05", DatePrefix::Sa, day_low, day_high),
            ("authored-on=eb2026-03-05", DatePrefix::Eb, day_low, day_high),
            ("_lastUpdated=gt2026-03-05T10:00:00Z", DatePrefix::Gt, second, second + 999_999),
            ("_lastUpdated=gt2026-03-05T10:00:00.123456Z", DatePrefix::Gt, second + 123_456, second + 123_456),
            ("modified=lt2026-03-05T11:00:00%2B01:00", DatePrefix::Lt, second, second + 999_999),
            ("authored-on=2026", DatePrefix::Eq, micros("2026-01-01T00:00:00Z"), micros("2027-01-01T00:00:00Z") - 1),
        ];
        for (query, prefix, low, high) in cases {
            let c = clause(ResourceType::Task, query);
            assert_eq!(c.any_of, vec![Predicate::Date { prefix, low, high }], "{query}");
        }
    }

    #[test]
    fn approximately_widens_the_range_by_a_tenth_of_the_distance_to_now() {
        let c = clause(ResourceType::Task, "authored-on=ap2016-01-01");
        let Predicate::Date { prefix, low, high } = c.any_of[0] else { panic!("a date") };
        assert_eq!(prefix, DatePrefix::Ap);
        let gap = micros("2026-01-01T00:00:00Z") - micros("2016-01-01T00:00:00Z");
        assert_eq!(low, micros("2016-01-01T00:00:00Z") - gap / 10, "widened below by 10% of the gap");
        assert_eq!(high, micros("2016-01-02T00:00:00Z") - 1 + gap / 10, "and above");
    }

    #[test]
    fn malformed_dates_are_refused_naming_the_parameter() {
        for query in ["authored-on=2026-13", "authored-on=xx2026", "_lastUpdated=yesterday", "authored-on=2026-02-30"] {
            let issues = parse(ResourceType::Task, query).expect_err(query);
            let name = query.split('=').next().unwrap_or_default();
            assert_eq!(issues[0].expression.as_deref(), Some(name), "{query}");
        }
    }

    #[test]
    fn string_values_and_modifiers_parse_per_r4() {
        let cases = [
            ("family=MacDónald", StringMatch::StartsWith, "macdonald"),
            ("family:exact=MacDónald", StringMatch::Exact, "MacDónald"),
            ("family:contains=DON", StringMatch::Contains, "don"),
        ];
        for (query, mode, value) in cases {
            let c = clause(ResourceType::Patient, query);
            assert_eq!(c.any_of, vec![Predicate::String { mode, value: value.to_owned() }], "{query}");
        }
    }

    #[test]
    fn unsupported_modifiers_are_refused_whatever_the_handling() {
        for query in [
            "status:below=x",
            "family:text=x",
            "authored-on:missing=maybe",
            "_id:not=1",
            "_lastUpdated:missing=true",
            "owner:not=Organization/1",
            "name:exact=",
        ] {
            assert!(
                parse(ResourceType::Task, query).is_err() || parse(ResourceType::Patient, query).is_err(),
                "{query} is refused"
            );
        }
    }

    #[test]
    fn repeated_parameters_and_and_commas_or() {
        let parsed = parse(ResourceType::Task, "status=requested,accepted&status:not=accepted").expect("parses");
        assert_eq!(parsed.query.clauses.len(), 2, "two clauses ANDed");
        assert_eq!(parsed.query.clauses[0].any_of.len(), 2, "two alternatives ORed");
    }

    #[test]
    fn unknown_parameters_are_ignored_unless_handling_is_strict() {
        let lenient = parse(ResourceType::Task, "status=requested&colour=blue&_has:x=1").expect("lenient");
        assert_eq!(lenient.ignored, vec!["colour".to_owned(), "_has:x".to_owned()], "ignored are reported");
        assert_eq!(lenient.used, vec![("status".to_owned(), "requested".to_owned())], "and kept out of the self link");
        let strict = parse_search(ResourceType::Task, &params("status=requested&colour=blue"), &context(true));
        let issues = strict.expect_err("strict refuses");
        assert_eq!(issues[0].expression.as_deref(), Some("colour"));
    }

    #[test]
    fn a_search_holds_at_most_its_bounds_of_parameters_values_and_joins() {
        let repeated = |name: &str, value: &str, n: usize| vec![format!("{name}={value}"); n].join("&");
        assert!(parse(ResourceType::Task, &repeated("status", "requested", MAX_SEARCH_PARAMETERS)).is_ok());
        let paged = format!("{}&_count=1", repeated("status", "requested", MAX_SEARCH_PARAMETERS));
        assert!(parse(ResourceType::Task, &paged).is_ok(), "_count is the service's own in every link");
        let issues = parse(ResourceType::Task, &repeated("status", "requested", MAX_SEARCH_PARAMETERS + 1))
            .expect_err("one parameter too many");
        assert_eq!(issues.len(), 1, "refused before any parameter is parsed");
        assert_eq!(issues[0].code, IssueCode::TooCostly);
        assert!(issues[0].diagnostics.contains("32 parameters"), "{}", issues[0].diagnostics);

        let values = |n: usize| format!("status={}", vec!["requested"; n].join(","));
        assert!(parse(ResourceType::Task, &values(MAX_SEARCH_VALUES)).is_ok());
        assert!(parse(ResourceType::Task, &values(MAX_SEARCH_VALUES + 1)).is_err(), "one value too many");
        let escaped = format!("identifier={}", vec!["a\\,b"; MAX_SEARCH_VALUES].join(","));
        assert!(parse(ResourceType::Task, &escaped).is_ok(), "an escaped comma is no alternative");

        let joins = |n: usize| repeated("_include", "Task:focus", n);
        assert!(parse(ResourceType::Task, &joins(MAX_SEARCH_JOINS)).is_ok());
        let chains = format!("{}&patient.identifier=x", joins(MAX_SEARCH_JOINS));
        let issues = parse(ResourceType::Task, &chains).expect_err("one join too many");
        assert!(issues[0].diagnostics.contains("MAX_SEARCH_JOINS"), "{}", issues[0].diagnostics);

        assert!(parse_criteria(ResourceType::Task, &repeated("identifier", "a|1", MAX_SEARCH_PARAMETERS + 1)).is_err());
    }

    #[test]
    fn registered_chains_parse_and_others_are_unknown() {
        let c = clause(ResourceType::Task, "patient.identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919");
        let ParamRef::Chained(chain) = c.param else { panic!("a chain: {c:?}") };
        assert_eq!((chain.reference.name, chain.other_end(), chain.reverse), ("patient", ResourceType::Patient, false));
        assert_eq!(c.any_of.len(), 1);
        let c = clause(ResourceType::ServiceRequest, "_has:Task:focus:status=requested,accepted");
        assert!(
            matches!(c.param, ParamRef::Chained(chain) if chain.reverse && chain.other_end() == ResourceType::Task)
        );
        assert_eq!(c.any_of.len(), 2);
        assert_eq!(
            clause(ResourceType::Task, "subject:Patient.identifier=x").param.name(),
            "subject:Patient.identifier"
        );
        for query in ["owner.identifier=x", "patient.name=x", "patient.identifier:not=x", "_has:Task:owner:status=x"] {
            let strict = parse_search(ResourceType::Task, &params(query), &context(true));
            assert!(strict.is_err(), "{query} is refused under strict handling");
        }
        assert!(parse_search(ResourceType::ServiceRequest, &params("_has:CarePlan:based-on:status=x"), &context(true))
            .is_err());
    }

    #[test]
    fn result_parameters_parse() {
        let parsed = parse(
            ResourceType::Task,
            "_count=1000000&_sort=-_lastUpdated,status&_total=accurate&_elements=status,owner&_include=Task:focus&_include=Task:patient&_format=json",
        )
        .expect("parses");
        assert_eq!(parsed.count, Some(1_000_000), "_count is capped later, not refused");
        assert_eq!(parsed.sort.len(), 2);
        assert!(parsed.sort[0].descending && parsed.sort[0].field == SortField::LastUpdated);
        assert_eq!(parsed.total, TotalMode::Accurate);
        assert_eq!(parsed.elements, Some(vec!["status".to_owned(), "owner".to_owned()]));
        assert_eq!(parsed.includes.iter().map(Include::code).collect::<Vec<_>>(), vec!["Task:focus", "Task:patient"]);
        assert!(parsed.used.iter().any(|(k, _)| k == "_format"), "_format is carried in links");
        assert!(!parsed.used.iter().any(|(k, _)| k == "_count"), "_count is written by the service");
        let huge = parse(ResourceType::Task, "_count=99999999999999999999999").expect("a huge count is capped");
        assert_eq!(huge.count, Some(u64::MAX));
    }

    #[test]
    fn malformed_result_parameters_are_refused_naming_the_parameter() {
        let cases = [
            "_count=-1",
            "_count=ten",
            "_sort=colour",
            "_sort=owner",
            "_total=maybe",
            "_summary=true",
            "_elements=a.b",
            "_include=Task:status",
            "_include=ServiceRequest:patient",
            "_include=*",
            "_revinclude=Task:focus:Patient",
            "_cursor=garbage",
        ];
        for query in cases {
            let issues = parse(ResourceType::Task, query).expect_err(query);
            let name = query.split('=').next().unwrap_or_default();
            assert_eq!(issues[0].expression.as_deref(), Some(name), "{query}");
        }
    }

    #[test]
    fn revincludes_start_from_a_type_that_can_point_at_the_searched_one() {
        let parsed = parse(ResourceType::ServiceRequest, "_revinclude=Task:focus&_revinclude=CarePlan:based-on")
            .expect("parses");
        assert_eq!(
            parsed.revincludes.iter().map(Include::code).collect::<Vec<_>>(),
            vec!["Task:focus", "CarePlan:based-on"]
        );
        assert!(parse(ResourceType::Patient, "_revinclude=Task:owner").is_err(), "owner cannot point at a Patient");
    }

    #[test]
    fn the_include_registries_cover_the_referral_workflow() {
        let task: Vec<String> = includes_of(ResourceType::Task).iter().map(Include::code).collect();
        for code in ["Task:focus", "Task:patient", "Task:owner", "Task:requester"] {
            assert!(task.contains(&code.to_owned()), "{code} is offered");
        }
        let sr: Vec<String> = revincludes_of(ResourceType::ServiceRequest).iter().map(Include::code).collect();
        for code in ["Task:focus", "CarePlan:based-on"] {
            assert!(sr.contains(&code.to_owned()), "revinclude {code} is offered");
        }
    }

    #[test]
    fn cursors_round_trip_and_garbage_does_not_decode() {
        let cursor = Cursor {
            direction: PageDirection::Before,
            horizon: Some(42),
            keys: vec![SortValue::Int(-7), SortValue::Text("requested".into())],
            id: "abc-1".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for raw in ["", "!!", "W10", "WyJ4IiwxLFtdLCJhIl0"] {
            assert_eq!(Cursor::decode(raw), None, "{raw:?}");
        }
    }
}
