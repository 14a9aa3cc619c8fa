//! The API reference: the OpenAPI contract and a Swagger UI page to browse and try it. The
//! Swagger UI assets (npm `swagger-ui-dist`, Apache-2.0, vendored in `openapi/docs/`) are
//! compiled into the binary, so the page works on a network with no internet access.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::error::ApiError;
use super::state::AppState;

/// The contract as written in the repository; `servers` is rewritten per request (below).
const OPENAPI_YAML: &str = include_str!("../../openapi/linkbridge.openapi.yaml");

/// Vendored assets: (name under `/docs/`, content type, bytes).
const ASSETS: [(&str, &str, &[u8]); 4] = [
    (
        "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../openapi/docs/swagger-ui-bundle.js"),
    ),
    ("swagger-ui.css", "text/css; charset=utf-8", include_bytes!("../../openapi/docs/swagger-ui.css")),
    ("init.js", "text/javascript; charset=utf-8", include_bytes!("../../openapi/docs/init.js")),
    ("LICENSE", "text/plain; charset=utf-8", include_bytes!("../../openapi/docs/LICENSE")),
];

/// Relative links, so the page also works behind a reverse proxy that adds a path prefix.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>linkbridge API reference</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/init.js"></script>
</body>
</html>
"#;

/// Scripts and styles only from this server: the page pulls nothing from elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
     script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .body(PAGE)
}

pub async fn asset(name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let (_, content_type, bytes) = ASSETS
        .iter()
        .find(|(asset, _, _)| *asset == name.as_str())
        .ok_or_else(|| ApiError::UnknownRoute(format!("/docs/{}", name.chars().take(100).collect::<String>())))?;
    Ok(HttpResponse::Ok()
        .content_type(*content_type)
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(*bytes))
}

/// The contract, with `servers` naming this server's public base URL, so that "Try it out"
/// on the docs page (and any client generator) calls the server that served it.
pub async fn openapi(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().content_type("application/yaml").body(with_server(OPENAPI_YAML, &state.base_url))
}

fn with_server(spec: &str, base_url: &str) -> String {
    let servers = format!("servers: [{{url: '{base_url}', description: 'This server.'}}]");
    spec.lines()
        .map(|line| if line.starts_with("servers:") { servers.as_str() } else { line })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_contract_names_the_server_that_serves_it() {
        let served = with_server(OPENAPI_YAML, "https://lb.example.scot/fhir");
        let servers: Vec<&str> = served.lines().filter(|l| l.starts_with("servers:")).collect();
        assert_eq!(servers, ["servers: [{url: 'https://lb.example.scot/fhir', description: 'This server.'}]"]);
        assert_eq!(served.lines().count(), OPENAPI_YAML.lines().count());
    }
}
