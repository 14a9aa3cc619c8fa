//! Bounds on a request's head. actix-web reads a request head of up to 128 KiB and 96 header
//! fields and has no setting below that, so a 100 KB header reached every middleware and
//! handler. [`bound_headers`] refuses, before authentication or any other work, a request
//! whose header fields together exceed [`MAX_HEADER_BYTES`]: 431 (RFC 6585) with an
//! OperationOutcome. The connection stays usable.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::ResponseError;

use super::error::ApiError;

/// The most header bytes (names and values) a request may carry: four times the largest a
/// client of this server needs (a bearer token of about 1 KB and the usual fields), and the
/// 16 KiB most HTTP servers and proxies allow by default.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

pub async fn bound_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let size: usize = req.headers().iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if size > MAX_HEADER_BYTES {
        let refusal = ApiError::HeaderFieldsTooLarge(format!(
            "the request's header fields hold {size} bytes; at most {MAX_HEADER_BYTES} are accepted"
        ));
        return Ok(req.into_response(refusal.error_response()));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}
