//! The dashboard: three static files compiled into the binary, served by the admin server at
//! `/` and `/dashboard/` (`/dashboard` redirects there). The page holds no data and no
//! credentials of its own: it signs in with the admin API's credentials and talks to
//! `/api/v4` from the browser. A strict Content-Security-Policy allows nothing but this
//! origin's own script, style and API.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};

const INDEX: &str = include_str!("../assets/dashboard/index.html");
const APP: &str = include_str!("../assets/dashboard/app.js");
const STYLE: &str = include_str!("../assets/dashboard/style.css");

/// The page may load its own script and style, call its own origin, show data: images, and
/// nothing else; no other site may frame it.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'";

/// The file for a path, with its content type.
fn file(path: &str) -> Option<(&'static str, &'static str)> {
    let name = path
        .strip_prefix("/dashboard/")
        .or_else(|| path.strip_prefix('/'))?;
    match name {
        "" | "index.html" => Some((INDEX, "text/html; charset=utf-8")),
        "app.js" => Some((APP, "text/javascript; charset=utf-8")),
        "style.css" => Some((STYLE, "text/css; charset=utf-8")),
        _ => None,
    }
}

/// The dashboard's answer to a request, or `None` when the path is not one of its files.
pub(crate) fn serve(method: &Method, path: &str) -> Option<Response<Full<Bytes>>> {
    if path == "/dashboard" {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
        response
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/dashboard/"));
        return Some(response);
    }
    let (body, content_type) = file(path)?;
    if method != Method::GET && method != Method::HEAD {
        let mut response = Response::new(Full::new(Bytes::from_static(b"method not allowed")));
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(response);
    }
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from_static(body.as_bytes())
    };
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_served_at_the_root_and_under_dashboard() {
        for path in ["/", "/index.html", "/dashboard/", "/dashboard/index.html"] {
            assert_eq!(
                file(path).map(|f| f.1),
                Some("text/html; charset=utf-8"),
                "{path}"
            );
        }
        assert_eq!(
            file("/dashboard/app.js").map(|f| f.1),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(
            file("/style.css").map(|f| f.1),
            Some("text/css; charset=utf-8")
        );
        for path in [
            "/api/v1",
            "/dashboard/../etc/passwd",
            "/x.js",
            "/dashboard/x",
        ] {
            assert!(file(path).is_none(), "{path}");
        }
        let redirect = serve(&Method::GET, "/dashboard").map(|r| r.status());
        assert_eq!(redirect, Some(StatusCode::MOVED_PERMANENTLY));
        let post = serve(&Method::POST, "/").map(|r| r.status());
        assert_eq!(post, Some(StatusCode::METHOD_NOT_ALLOWED));
    }
}
