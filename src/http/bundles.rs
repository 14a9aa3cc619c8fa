//! `POST /`: transaction and batch Bundles.

use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;
use super::negotiate::{body_format, parse_resource, read_body, render_resource_text, rendering};
use super::state::{AppState, Caller};

pub async fn process(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let render = rendering(&req)?;
    let format = body_format(&req)?;
    let bytes = read_body(payload, state.max_body_bytes).await?;
    let request_key = super::resources::request_key(&req, &caller.principal, &bytes)?;
    let bundle = parse_resource(format, &bytes)?;
    let authorize = |resource_type: crate::domain::resource_type::ResourceType, interaction| {
        caller.allows(resource_type.as_str(), interaction)
    };
    let response = state.resources.process_bundle(&caller.principal, bundle, &authorize, request_key.as_ref()).await?;
    let (text, content_type) = render_resource_text(render, &response.to_string())?;
    Ok(HttpResponse::Ok().content_type(content_type).body(text))
}
