//! Topic-based subscriptions in the shape of the FHIR Subscriptions R5 Backport IG on R4
//! (`docs/referral-workflow.md`, "How the referrer learns of changes"): the topics this server
//! publishes, a Subscription resource parsed into what delivery needs, and the filters that decide
//! which changes a subscription hears of. Pure: no I/O, no clock.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use super::outcome::{Issue, IssueCode};
use super::resource_type::ResourceType;
use super::search_params::{self, IndexEntry, ParamKind, SearchParam};
use super::search_query::{check_bounds, parse_reference, parse_token, Predicate, SystemMatch};
use super::tenancy::{OdsCode, Principal, Role, TenantScope};
use super::webhook::WebhookSecret;

/// The Backport IG's extension and profile URLs.
pub mod backport {
    pub const FILTER_CRITERIA: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";
    pub const PAYLOAD_CONTENT: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
    pub const HEARTBEAT_PERIOD: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period";
    pub const TIMEOUT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-timeout";
    pub const STATUS_PROFILE: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";
    pub const SUBSCRIPTION_PROFILE: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription";
    pub const TOPIC_CANONICAL: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical";
}

/// linkbridge's own extension carrying the subscriber's webhook signing secret. The server
/// keeps the secret out of the stored resource (and so out of reads and history).
pub const WEBHOOK_SECRET_EXTENSION: &str = "https://linkbridge.scot/fhir/StructureDefinition/webhook-secret";

/// A topic this server publishes (R5 SubscriptionTopic, referenced by canonical URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A referral Task was created, changed (accepted, rejected, in progress, completed...) or deleted.
    ReferralTask,
    /// A referral ServiceRequest was created, changed (e.g. revoked) or deleted.
    ReferralServiceRequest,
    /// A link worker CarePlan was created or updated.
    CarePlan,
}

impl Topic {
    pub const ALL: [Topic; 3] = [Topic::ReferralTask, Topic::ReferralServiceRequest, Topic::CarePlan];

    pub fn url(self) -> &'static str {
        match self {
            Topic::ReferralTask => "https://linkbridge.scot/fhir/SubscriptionTopic/referral-task",
            Topic::ReferralServiceRequest => "https://linkbridge.scot/fhir/SubscriptionTopic/referral-servicerequest",
            Topic::CarePlan => "https://linkbridge.scot/fhir/SubscriptionTopic/link-worker-careplan",
        }
    }

    pub fn parse(url: &str) -> Option<Topic> {
        Self::ALL.into_iter().find(|t| t.url() == url)
    }

    pub fn title(self) -> &'static str {
        match self {
            Topic::ReferralTask => "Referral Task created, changed or deleted",
            Topic::ReferralServiceRequest => "Referral ServiceRequest created, changed or deleted",
            Topic::CarePlan => "Link worker CarePlan created or updated",
        }
    }

    pub fn resource_type(self) -> ResourceType {
        match self {
            Topic::ReferralTask => ResourceType::Task,
            Topic::ReferralServiceRequest => ResourceType::ServiceRequest,
            Topic::CarePlan => ResourceType::CarePlan,
        }
    }

    /// The topics a change of `resource_type` belongs to.
    pub fn of(resource_type: ResourceType) -> Option<Topic> {
        Self::ALL.into_iter().find(|t| t.resource_type() == resource_type)
    }

    /// The search parameters a filter of this topic may use (R5 `canFilterBy`).
    pub fn filter_parameters(self) -> &'static [&'static str] {
        match self {
            Topic::ReferralTask => &["requester", "owner", "status", "code", "business-status", "patient", "focus"],
            Topic::ReferralServiceRequest => &["requester", "performer", "status", "code", "patient"],
            Topic::CarePlan => &["author", "status", "patient", "based-on"],
        }
    }

    /// Whether deletions notify (a CarePlan topic is about creation and updates).
    pub fn notifies_deletion(self) -> bool {
        !matches!(self, Topic::CarePlan)
    }
}

/// What a notification carries (`backport-payload-content`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadContent {
    /// No resource ids at all: the subscriber asks `$events` what happened.
    Empty,
    /// The focus reference; the subscriber reads it with its own (audited) token.
    IdOnly,
    /// The focus resource itself, as of the event.
    FullResource,
}

impl PayloadContent {
    pub fn code(self) -> &'static str {
        match self {
            PayloadContent::Empty => "empty",
            PayloadContent::IdOnly => "id-only",
            PayloadContent::FullResource => "full-resource",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        match code {
            "empty" => Some(PayloadContent::Empty),
            "id-only" => Some(PayloadContent::IdOnly),
            "full-resource" => Some(PayloadContent::FullResource),
            _ => None,
        }
    }
}

/// The server's view of a subscription (R4 `Subscription.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionStatus {
    /// Created; the handshake has not succeeded yet.
    Requested,
    /// Notifications are delivered.
    Active,
    /// Delivery failed (handshake, or an event's last retry): events are kept, not sent,
    /// until the subscriber or operator asks for them to be resent.
    Error,
    /// Turned off by the subscriber, or by the endpoint answering 410.
    Off,
}

impl SubscriptionStatus {
    pub fn code(self) -> &'static str {
        match self {
            SubscriptionStatus::Requested => "requested",
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::Error => "error",
            SubscriptionStatus::Off => "off",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        match code {
            "requested" => Some(SubscriptionStatus::Requested),
            "active" => Some(SubscriptionStatus::Active),
            "error" => Some(SubscriptionStatus::Error),
            "off" => Some(SubscriptionStatus::Off),
            _ => None,
        }
    }
}

/// One `backport-filter-criteria` value, e.g. `Task?owner=Organization/CLW001&status=completed`:
/// every parameter must hold (AND), each with any of its comma-separated values (OR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    raw: String,
    clauses: Vec<(&'static SearchParam, Vec<Predicate>)>,
}

impl TopicFilter {
    pub fn parse(topic: Topic, raw: &str) -> Result<TopicFilter, Issue> {
        let invalid = |message: String| {
            Issue::error(IssueCode::Invalid, message)
                .at("Subscription.criteria.extension('backport-filter-criteria')".to_owned())
        };
        let resource_type = topic.resource_type();
        let query = raw
            .strip_prefix(resource_type.as_str())
            .and_then(|rest| rest.strip_prefix('?'))
            .ok_or_else(|| invalid(format!("filter '{raw}' must start with '{resource_type}?' for this topic")))?;
        let pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        check_bounds(
            pairs.iter().map(|(name, value)| (name.as_str(), value.as_str())),
            "Subscription.criteria.extension('backport-filter-criteria')",
        )?;
        let mut clauses = Vec::new();
        for (name, value) in pairs {
            if !topic.filter_parameters().contains(&name.as_ref()) {
                return Err(invalid(format!(
                    "'{name}' cannot filter topic {}; it accepts: {}",
                    topic.url(),
                    topic.filter_parameters().join(", ")
                )));
            }
            let param = search_params::find(resource_type, &name)
                .ok_or_else(|| invalid(format!("'{name}' is not a search parameter of {resource_type}")))?;
            if value.is_empty() {
                return Err(invalid(format!("filter parameter '{name}' has no value")));
            }
            let alternatives = value
                .split(',')
                .map(|alternative| match param.kind {
                    ParamKind::Reference => parse_reference(param, alternative).map_err(|_| {
                        invalid(format!("'{alternative}' is not a reference (Type/id) for filter parameter '{name}'"))
                    }),
                    _ => Ok(parse_token(alternative)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            clauses.push((param, alternatives));
        }
        if clauses.is_empty() {
            return Err(invalid(format!("filter '{raw}' has no parameters")));
        }
        Ok(TopicFilter { raw: raw.to_owned(), clauses })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether a resource with these index entries passes the filter.
    pub fn matches(&self, index: &[IndexEntry]) -> bool {
        // Tested on the index rows that answer the parameter (`patient`: those of `subject`).
        self.clauses.iter().all(|(param, alternatives)| {
            alternatives.iter().any(|predicate| {
                index.iter().any(|entry| param.row_params().iter().any(|rows| entry_matches(rows, predicate, entry)))
            })
        })
    }

    /// The organisations (ODS codes) a reference parameter of this filter names.
    fn organizations_in(&self, parameter: &str) -> Vec<String> {
        self.clauses
            .iter()
            .filter(|(param, _)| param.name == parameter)
            .flat_map(|(_, alternatives)| alternatives)
            .filter_map(|predicate| match predicate {
                Predicate::Reference { target_type, target_id }
                    if target_type.as_deref().is_none_or(|t| t == "Organization") =>
                {
                    Some(target_id.to_ascii_uppercase())
                }
                _ => None,
            })
            .collect()
    }
}

/// The visibility keys a subscriber (its organisation and role, as stored) reads with: the
/// same as a request of its client would.
pub fn subscriber_scope(organization: &str, role: &str) -> Option<TenantScope> {
    Some(Principal::new(String::new(), OdsCode::parse(organization).ok()?, Role::parse(role)?).scope())
}

/// A live subscription as a change is matched against it: its topic, its filters, and what
/// its subscriber may see (the same visibility keys a request of its client reads with).
#[derive(Debug)]
pub struct Listener {
    topic: Topic,
    filters: Vec<TopicFilter>,
    scope: TenantScope,
}

impl Listener {
    /// The listener a stored subscription makes: nothing when the record no longer makes sense
    /// (an unknown topic, organisation or role), and nothing when a stored filter no longer
    /// parses (a parameter withdrawn): it then matches nothing rather than everything.
    pub fn parse(topic: &str, filters: &[String], organization: &str, role: &str) -> Option<Listener> {
        let topic = Topic::parse(topic)?;
        let filters = filters.iter().map(|raw| TopicFilter::parse(topic, raw).ok()).collect::<Option<Vec<_>>>()?;
        Some(Listener { topic, filters, scope: subscriber_scope(organization, role)? })
    }

    /// Whether a version of `resource_type` with these index entries, visible under these
    /// keys, is news for this subscription. A deletion is matched on the content deleted, and
    /// only for topics that announce deletions.
    pub fn hears(
        &self,
        resource_type: ResourceType,
        deleted: bool,
        index: &[IndexEntry],
        visibility: &[String],
    ) -> bool {
        Topic::of(resource_type) == Some(self.topic)
            && (!deleted || self.topic.notifies_deletion())
            && self.scope.admits(visibility)
            && self.filters.iter().all(|f| f.matches(index))
    }
}

fn entry_matches(param: &str, predicate: &Predicate, entry: &IndexEntry) -> bool {
    match (predicate, entry) {
        (Predicate::Token { system, code }, IndexEntry::Token { param: p, system: s, code: c, .. }) if *p == param => {
            let system_ok = match system {
                SystemMatch::Any => true,
                SystemMatch::None => s.is_none(),
                SystemMatch::Exactly(expected) => s.as_deref() == Some(expected.as_str()),
            };
            system_ok && code.as_ref().is_none_or(|code| c.as_deref() == Some(code.as_str()))
        }
        (
            Predicate::Reference { target_type, target_id },
            IndexEntry::Reference { param: p, target_type: t, target_id: i, identifier_system, identifier_value },
        ) if *p == param => {
            let literal = i.as_deref() == Some(target_id.as_str())
                && target_type.as_ref().is_none_or(|expected| t.as_deref() == Some(expected.as_str()));
            // Organisations are named by ODS code in referrals: `Organization/GP0001` also
            // matches a reference by identifier to ODS code GP0001.
            let by_ods_code = target_type.as_deref().is_none_or(|t| t == "Organization")
                && identifier_system.as_deref() == Some(OdsCode::SYSTEM)
                && identifier_value.as_deref().is_some_and(|v| v.eq_ignore_ascii_case(target_id));
            literal || by_ods_code
        }
        _ => false,
    }
}

/// Which endpoints the operator lets subscriptions name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointPolicy {
    /// Allow http and private, loopback and link-local addresses (tests, closed networks).
    pub allow_private: bool,
}

impl EndpointPolicy {
    /// Checks a rest-hook endpoint: https, no credentials in the URL, and not an address
    /// inside the server's own network (SSRF). Host names are checked again when resolved
    /// at delivery (see `service::delivery`), so a name pointing inwards is refused too.
    pub fn check(&self, raw: &str) -> Result<url::Url, String> {
        let url = url::Url::parse(raw).map_err(|e| format!("'{raw}' is not an absolute URL: {e}"))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_private => {}
            other => return Err(format!("the endpoint must use https, not '{other}'")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the endpoint must not carry credentials; use channel.header".to_owned());
        }
        if url.fragment().is_some() {
            return Err("the endpoint must not have a fragment".to_owned());
        }
        if self.allow_private {
            return Ok(url);
        }
        match url.host() {
            None => Err("the endpoint has no host".to_owned()),
            Some(url::Host::Ipv4(ip)) if !is_public_address(IpAddr::V4(ip)) => {
                Err(format!("the endpoint address {ip} is private, loopback or link-local"))
            }
            Some(url::Host::Ipv6(ip)) if !is_public_address(IpAddr::V6(ip)) => {
                Err(format!("the endpoint address {ip} is private, loopback or link-local"))
            }
            Some(url::Host::Domain(name)) if is_internal_name(name) => {
                Err(format!("the endpoint host '{name}' names this network, not a public server"))
            }
            Some(_) => Ok(url),
        }
    }
}

fn is_internal_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || [".localhost", ".local", ".internal", ".localdomain"].iter().any(|suffix| name.ends_with(suffix))
        || !name.contains('.')
}

/// Whether an address is one a webhook may be delivered to: not loopback, private,
/// link-local, shared (CGNAT), unspecified, multicast or documentation space.
pub fn is_public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_address(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

/// What the subscriber asked for in its Subscription resource, checked. The status and the
/// error are the server's; see [`requested_status`].
#[derive(Debug, Clone)]
pub struct SubscriptionRequest {
    pub topic: Topic,
    pub filters: Vec<TopicFilter>,
    pub endpoint: url::Url,
    pub payload: PayloadContent,
    /// `channel.header`, as `(name, value)`.
    pub headers: Vec<(String, String)>,
    pub heartbeat_period: Option<Duration>,
    /// Present when the resource carries the secret extension (create, or rotation).
    pub secret: Option<WebhookSecret>,
}

/// Headers the server sets itself and a subscription may not override.
const RESERVED_HEADERS: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
];

/// The longest heartbeat period: a day.
const MAX_HEARTBEAT_SECS: u64 = 86_400;
/// The shortest heartbeat period, so that heartbeats cannot be used to flood an endpoint.
const MIN_HEARTBEAT_SECS: u64 = 10;

impl SubscriptionRequest {
    /// Parses a Subscription resource (already structurally valid R4): every problem found is
    /// reported, not only the first.
    pub fn parse(resource: &Value, policy: &EndpointPolicy) -> Result<SubscriptionRequest, Vec<Issue>> {
        let mut issues = Vec::new();
        let (topic, filters) = topic_and_filters(resource, &mut issues);
        let channel = resource.get("channel").cloned().unwrap_or(Value::Null);
        let endpoint = rest_hook_endpoint(&channel, policy, &mut issues);
        let payload = payload_content(&channel, &mut issues);
        let headers = channel_headers(&channel, &mut issues);
        let heartbeat_period = heartbeat_period(&channel, &mut issues);
        let secret = webhook_secret(&channel, &mut issues);
        match (topic, endpoint) {
            (Some(topic), Some(endpoint)) if issues.is_empty() => {
                Ok(SubscriptionRequest { topic, filters, endpoint, payload, headers, heartbeat_period, secret })
            }
            _ => Err(issues),
        }
    }

    /// The organisations this subscription's filters name for `parameter`.
    pub fn filtered_organizations(&self, parameter: &str) -> Vec<String> {
        self.filters.iter().flat_map(|f| f.organizations_in(parameter)).collect()
    }
}

fn subscription_issue(code: IssueCode, message: String, at: &str) -> Issue {
    Issue::error(code, message).at(at.to_owned())
}

/// The topic `criteria` names, and the filters of its `backport-filter-criteria`.
fn topic_and_filters(resource: &Value, issues: &mut Vec<Issue>) -> (Option<Topic>, Vec<TopicFilter>) {
    let criteria = resource.get("criteria").and_then(Value::as_str).unwrap_or_default();
    let Some(topic) = Topic::parse(criteria) else {
        let known: Vec<&str> = Topic::ALL.iter().map(|t| t.url()).collect();
        issues.push(subscription_issue(
            IssueCode::Value,
            format!("criteria '{criteria}' is not a topic of this server; topics: {}", known.join(", ")),
            "Subscription.criteria",
        ));
        return (None, Vec::new());
    };
    let mut filters = Vec::new();
    for raw in extension_values(resource.get("_criteria"), backport::FILTER_CRITERIA, "valueString") {
        match TopicFilter::parse(topic, raw) {
            Ok(filter) => filters.push(filter),
            Err(e) => issues.push(e),
        }
    }
    (Some(topic), filters)
}

/// The channel's endpoint, where it is a rest-hook to an endpoint `policy` allows.
fn rest_hook_endpoint(channel: &Value, policy: &EndpointPolicy, issues: &mut Vec<Issue>) -> Option<url::Url> {
    if channel.get("type").and_then(Value::as_str) != Some("rest-hook") {
        issues.push(subscription_issue(
            IssueCode::NotSupported,
            "only channel type 'rest-hook' is supported".to_owned(),
            "Subscription.channel.type",
        ));
    }
    match channel.get("endpoint").and_then(Value::as_str) {
        None => {
            issues.push(subscription_issue(
                IssueCode::Required,
                "a rest-hook channel needs an endpoint".to_owned(),
                "Subscription.channel.endpoint",
            ));
            None
        }
        Some(raw) => match policy.check(raw) {
            Ok(url) => Some(url),
            Err(reason) => {
                issues.push(subscription_issue(IssueCode::Value, reason, "Subscription.channel.endpoint"));
                None
            }
        },
    }
}

/// What each notification carries (`backport-payload-content`, id-only when not given), sent
/// as FHIR JSON.
fn payload_content(channel: &Value, issues: &mut Vec<Issue>) -> PayloadContent {
    match channel.get("payload").and_then(Value::as_str) {
        None | Some("application/fhir+json") | Some("application/json") => {}
        Some(other) => issues.push(subscription_issue(
            IssueCode::NotSupported,
            format!("payload type '{other}' is not supported; use application/fhir+json"),
            "Subscription.channel.payload",
        )),
    }
    match extension_values(channel.get("_payload"), backport::PAYLOAD_CONTENT, "valueCode").first() {
        None => PayloadContent::IdOnly,
        Some(code) => PayloadContent::parse(code).unwrap_or_else(|| {
            issues.push(subscription_issue(
                IssueCode::Value,
                format!("payload content '{code}' is not one of empty, id-only, full-resource"),
                "Subscription.channel.payload.extension('backport-payload-content')",
            ));
            PayloadContent::IdOnly
        }),
    }
}

/// The headers the subscriber asks to be sent with each notification.
fn channel_headers(channel: &Value, issues: &mut Vec<Issue>) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    for raw in channel.get("header").and_then(Value::as_array).into_iter().flatten() {
        match raw.as_str().map(parse_header) {
            Some(Ok(header)) => headers.push(header),
            Some(Err(reason)) => {
                issues.push(subscription_issue(IssueCode::Value, reason, "Subscription.channel.header"))
            }
            None => {}
        }
    }
    headers
}

/// The heartbeat period (`backport-heartbeat-period`), none when absent or 0.
fn heartbeat_period(channel: &Value, issues: &mut Vec<Issue>) -> Option<Duration> {
    let secs = channel
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(backport::HEARTBEAT_PERIOD))
        .and_then(|e| e.get("valueUnsignedInt"))
        .and_then(Value::as_u64);
    match secs {
        None | Some(0) => None,
        Some(secs) if (MIN_HEARTBEAT_SECS..=MAX_HEARTBEAT_SECS).contains(&secs) => Some(Duration::from_secs(secs)),
        Some(secs) => {
            issues.push(subscription_issue(
                IssueCode::Value,
                format!("heartbeat period {secs} s is outside {MIN_HEARTBEAT_SECS}..={MAX_HEARTBEAT_SECS} s"),
                "Subscription.channel.extension('backport-heartbeat-period')",
            ));
            None
        }
    }
}

/// The secret the subscriber gives for signing its webhooks, if it gives one.
fn webhook_secret(channel: &Value, issues: &mut Vec<Issue>) -> Option<WebhookSecret> {
    match WebhookSecret::parse(secret_extension(channel)?) {
        Ok(secret) => Some(secret),
        Err(reason) => {
            issues.push(subscription_issue(
                IssueCode::Value,
                reason,
                "Subscription.channel.extension('https://linkbridge.scot/fhir/StructureDefinition/webhook-secret')",
            ));
            None
        }
    }
}

/// The raw value of the webhook secret extension on `channel`, if any.
fn secret_extension(channel: &Value) -> Option<&str> {
    channel
        .get("extension")
        .and_then(Value::as_array)?
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(WEBHOOK_SECRET_EXTENSION))
        .and_then(|e| e.get("valueString"))
        .and_then(Value::as_str)
}

/// Removes the webhook secret extension from a Subscription before it is stored.
pub fn strip_secret(resource: &mut Value) {
    let Some(extensions) = resource.pointer_mut("/channel/extension").and_then(Value::as_array_mut) else {
        return;
    };
    extensions.retain(|e| e.get("url").and_then(Value::as_str) != Some(WEBHOOK_SECRET_EXTENSION));
    if extensions.is_empty() {
        if let Some(channel) = resource.get_mut("channel").and_then(Value::as_object_mut) {
            channel.remove("extension");
        }
    }
}

/// The status a subscriber's write asks for: a create always starts `requested`; on update
/// the subscriber may ask for `requested` (handshake again, e.g. after fixing its endpoint) or
/// `off`; anything else keeps the server's current status.
pub fn requested_status(written: Option<&str>, current: Option<SubscriptionStatus>) -> SubscriptionStatus {
    match (current, written.and_then(SubscriptionStatus::parse)) {
        (None, _) => SubscriptionStatus::Requested,
        (Some(_), Some(SubscriptionStatus::Off)) => SubscriptionStatus::Off,
        (Some(_), Some(SubscriptionStatus::Requested)) => SubscriptionStatus::Requested,
        (Some(current), _) => current,
    }
}

/// The string values of the extensions with `url` in a primitive's `_element` (or an
/// element's own `extension`).
fn extension_values<'v>(element: Option<&'v Value>, url: &str, value_key: &str) -> Vec<&'v str> {
    element
        .and_then(|e| e.get("extension"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("url").and_then(Value::as_str) == Some(url))
        .filter_map(|e| e.get(value_key).and_then(Value::as_str))
        .collect()
}

fn parse_header(raw: &str) -> Result<(String, String), String> {
    let (name, value) =
        raw.split_once(':').ok_or_else(|| format!("header '{raw}' is not in the form 'Name: value'"))?;
    let name = name.trim();
    let value = value.trim();
    let valid_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
    if !valid_name {
        return Err(format!("'{name}' is not a valid header name"));
    }
    if value.bytes().any(|b| b.is_ascii_control()) {
        return Err(format!("the value of header '{name}' contains control characters"));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!("header '{name}' is set by the server and cannot be overridden"));
    }
    Ok((name.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::search_params::extract_index;
    use serde_json::json;

    fn task(owner: &str, status: &str) -> Vec<IndexEntry> {
        extract_index(
            ResourceType::Task,
            &json!({
                "resourceType": "Task", "status": status, "intent": "order",
                "requester": {"identifier": {"system": OdsCode::SYSTEM, "value": "GP0001"}},
                "owner": {"identifier": {"system": OdsCode::SYSTEM, "value": owner}},
                "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]}
            }),
        )
    }

    fn seen_by(ods: &str) -> Vec<String> {
        vec![format!("org:{ods}")]
    }

    #[test]
    fn a_listener_hears_changes_of_its_topic_that_pass_its_filters_and_its_subscriber_may_see() {
        let filters = vec!["Task?owner=Organization/CLW001".to_owned()];
        let listener = Listener::parse(Topic::ReferralTask.url(), &filters, "CLW001", "performer").expect("listener");
        assert!(listener.hears(ResourceType::Task, false, &task("CLW001", "requested"), &seen_by("CLW001")));
        assert!(!listener.hears(ResourceType::Task, false, &task("CLW002", "requested"), &seen_by("CLW001")), "filter");
        assert!(
            !listener.hears(ResourceType::Task, false, &task("CLW001", "requested"), &seen_by("CLW009")),
            "tenancy"
        );
        assert!(!listener.hears(ResourceType::ServiceRequest, false, &[], &seen_by("CLW001")), "another topic's type");
    }

    #[test]
    fn deletions_are_heard_only_on_topics_that_announce_them() {
        let tasks = Listener::parse(Topic::ReferralTask.url(), &[], "GP0001", "referrer").expect("listener");
        assert!(tasks.hears(ResourceType::Task, true, &task("CLW001", "requested"), &seen_by("GP0001")));
        let care_plans = Listener::parse(Topic::CarePlan.url(), &[], "GP0001", "referrer").expect("listener");
        assert!(care_plans.hears(ResourceType::CarePlan, false, &[], &seen_by("GP0001")));
        assert!(!care_plans.hears(ResourceType::CarePlan, true, &[], &seen_by("GP0001")));
    }

    #[test]
    fn a_stored_subscription_that_no_longer_makes_sense_is_no_listener() {
        let withdrawn = vec!["Task?no-such-parameter=x".to_owned()];
        assert!(Listener::parse(Topic::ReferralTask.url(), &withdrawn, "GP0001", "referrer").is_none());
        assert!(Listener::parse("https://example.org/unknown-topic", &[], "GP0001", "referrer").is_none());
        assert!(Listener::parse(Topic::ReferralTask.url(), &[], "GP0001", "no-such-role").is_none());
    }

    #[test]
    fn a_filter_naming_an_organisation_matches_references_by_ods_code() {
        let filter = TopicFilter::parse(Topic::ReferralTask, "Task?owner=Organization/CLW001").expect("filter");
        assert!(filter.matches(&task("CLW001", "requested")));
        assert!(!filter.matches(&task("CLW002", "requested")));
    }

    #[test]
    fn a_patient_filter_matches_the_subject_rows_of_a_patient_only() {
        let task_for = |subject: &str| {
            extract_index(ResourceType::Task, &json!({"resourceType": "Task", "for": {"reference": subject}}))
        };
        for raw in ["Task?patient=Patient/p1", "Task?patient=p1"] {
            let filter = TopicFilter::parse(Topic::ReferralTask, raw).expect("filter");
            assert!(filter.matches(&task_for("Patient/p1")), "{raw}");
            assert!(!filter.matches(&task_for("Patient/p2")), "{raw}");
            assert!(!filter.matches(&task_for("Group/p1")), "{raw}: a Group is no patient");
        }
    }

    #[test]
    fn filter_parameters_are_anded_and_their_values_ored() {
        let filter = TopicFilter::parse(Topic::ReferralTask, "Task?owner=Organization/CLW001&status=accepted,rejected")
            .expect("filter");
        assert!(filter.matches(&task("CLW001", "accepted")));
        assert!(filter.matches(&task("CLW001", "rejected")));
        assert!(!filter.matches(&task("CLW001", "requested")), "status must match");
        assert!(!filter.matches(&task("CLW002", "accepted")), "owner must match");
    }

    #[test]
    fn a_code_filter_with_a_system_matches_only_that_system() {
        let filter =
            TopicFilter::parse(Topic::ReferralTask, "Task?code=http://hl7.org/fhir/CodeSystem/task-code|fulfill")
                .expect("filter");
        assert!(filter.matches(&task("CLW001", "requested")));
        let other = TopicFilter::parse(Topic::ReferralTask, "Task?code=http://example.org|fulfill").expect("filter");
        assert!(!other.matches(&task("CLW001", "requested")));
    }

    #[test]
    fn filters_on_parameters_the_topic_does_not_offer_or_another_type_are_refused() {
        for raw in ["Task?intent=order", "ServiceRequest?status=active", "Task?", "owner=Organization/X", "Task?owner="]
        {
            assert!(TopicFilter::parse(Topic::ReferralTask, raw).is_err(), "{raw} should be refused");
        }
    }

    #[test]
    fn endpoints_inside_the_network_are_refused_unless_the_operator_allows_them() {
        let strict = EndpointPolicy::default();
        for raw in [
            "http://gp.example.org/hook",
            "https://127.0.0.1/hook",
            "https://10.1.2.3/hook",
            "https://192.168.0.1/hook",
            "https://169.254.169.254/latest",
            "https://[::1]/hook",
            "https://[fe80::1]/hook",
            "https://[::ffff:127.0.0.1]/hook",
            "https://localhost/hook",
            "https://metadata.internal/hook",
            "https://user:pw@gp.example.org/hook",
            "ftp://gp.example.org/hook",
        ] {
            assert!(strict.check(raw).is_err(), "{raw} should be refused");
        }
        assert!(strict.check("https://gp.example.org/hook").is_ok());
        assert!(strict.check("https://203.0.114.10/hook").is_ok());
        let open = EndpointPolicy { allow_private: true };
        assert!(open.check("http://127.0.0.1:8080/hook").is_ok());
    }

    #[test]
    fn a_subscriber_may_ask_for_requested_or_off_but_not_for_active() {
        use SubscriptionStatus as S;
        assert_eq!(requested_status(Some("active"), None), S::Requested);
        assert_eq!(requested_status(Some("active"), Some(S::Error)), S::Error);
        assert_eq!(requested_status(Some("off"), Some(S::Active)), S::Off);
        assert_eq!(requested_status(Some("requested"), Some(S::Off)), S::Requested);
        assert_eq!(requested_status(Some("error"), Some(S::Active)), S::Active);
    }

    #[test]
    fn reserved_and_malformed_headers_are_refused() {
        assert!(parse_header("Authorization: Bearer abc").is_ok());
        for raw in ["webhook-id: x", "Content-Type: text/plain", "no colon", "Bad Name: x", "X-A: a\nb"] {
            assert!(parse_header(raw).is_err(), "{raw:?} should be refused");
        }
    }
}
