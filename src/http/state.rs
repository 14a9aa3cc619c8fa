//! What every handler can reach, and the authenticated caller.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};

use super::error::ApiError;
use crate::auth::{Interaction, ScopeSet};
use crate::domain::resource_type::ResourceType;
use crate::domain::tenancy::Principal;
use crate::metrics::Metrics;
use crate::service::audit::AuditService;
use crate::service::auth::AuthService;
use crate::service::health::HealthService;
use crate::service::resources::ResourceService;
use crate::service::search::SearchService;

/// Shared, immutable application state (cheap to clone; every replica builds its own from
/// configuration: nothing here is state that matters beyond the process).
#[derive(Clone)]
pub struct AppState {
    pub resources: ResourceService,
    pub search: SearchService,
    pub audit: AuditService,
    pub health: HealthService,
    pub auth: AuthService,
    /// The public base URL of the FHIR endpoint, without a trailing slash.
    pub base_url: String,
    pub max_body_bytes: usize,
    pub default_page_size: u32,
    pub max_page_size: u32,
    pub metrics: Metrics,
}

/// The authenticated caller of a FHIR endpoint, put in the request by the authentication
/// middleware. Handlers take it as an argument, so an unauthenticated request cannot reach one.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    scopes: ScopeSet,
}

impl Caller {
    pub fn new(principal: Principal, scopes: ScopeSet) -> Self {
        Caller { principal, scopes }
    }

    /// Whether the token's scopes permit `interaction` on a type given by name.
    pub fn allows(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.scopes.allows(resource_type, interaction)
    }

    /// The caller, if its token's scopes permit `interaction` on `resource_type`
    /// (SMART v2: c create, r read/vread/instance history, u update/patch, d delete,
    /// s search/type history); otherwise 403 insufficient_scope.
    pub fn require(&self, resource_type: ResourceType, interaction: Interaction) -> Result<&Principal, ApiError> {
        if self.scopes.allows(resource_type.as_str(), interaction) {
            Ok(&self.principal)
        } else {
            Err(ApiError::InsufficientScope(format!(
                "the access token's scopes do not allow this interaction on {resource_type}"
            )))
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Caller>()
                .cloned()
                .ok_or_else(|| ApiError::Unauthorized("an access token is required".into())),
        )
    }
}
