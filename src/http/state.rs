//! What every handler can reach, and the authenticated caller.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};

use super::error::ApiError;
use crate::domain::tenancy::Principal;
use crate::service::resources::ResourceService;

/// Shared, immutable application state (cheap to clone; every replica builds its own from
/// configuration: nothing here is state that matters beyond the process).
#[derive(Clone)]
pub struct AppState {
    pub resources: ResourceService,
    /// The public base URL of the FHIR endpoint, without a trailing slash.
    pub base_url: String,
    pub max_body_bytes: usize,
    pub default_page_size: u32,
    pub max_page_size: u32,
}

/// The authenticated caller of a FHIR endpoint, put in the request by the authentication
/// middleware. Handlers take it as an argument, so an unauthenticated request cannot reach one.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
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
