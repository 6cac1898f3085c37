//! Header hygiene between client and backend (RFC 9110 §7.6.1 hop-by-hop fields).
//!
//! Towards the backend: hop-by-hop headers go, and so does every header a client could use to
//! claim an identity the backend might believe (`X-Forwarded-*`, `Forwarded`, client-certificate
//! and user headers); the gateway then sets `X-Forwarded-For/Proto/Host` itself. Towards the
//! client: hop-by-hop headers and headers that reveal the backend's software go.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Exact names of identity-bearing headers never passed on from clients.
const IDENTITY_HEADERS: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-remote-user",
    "x-user",
    "x-user-id",
    "remote-user",
    "cookie",
];

/// Prefixes of identity-bearing headers never passed on from clients.
const IDENTITY_PREFIXES: &[&str] = &[
    "x-forwarded-",
    "x-portvagt-",
    "x-ssl-",
    "x-client-",
    "x-authenticated-",
    "x-remote-",
    "x-amzn-oidc-",
];

/// Headers some servers honour to run another method than the one policy authorised.
const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The backend's response headers that reach the client; every other goes (deny by default).
/// What is not here has no business beside a FHIR answer from behind the gateway: what the
/// backend runs (`Server`, `X-Powered-By`), its cookies, spans and challenges (`Set-Cookie`,
/// `traceresponse`, `WWW-Authenticate`, which would be about the gateway's own credentials),
/// its CORS policy, and paging or counting beside the Bundle (`Link`, whose URLs are the
/// backend's and whose `rel="last"` offset, like `X-Total-Count` or an items `Content-Range`,
/// tells how many matched, withheld entries included; `Accept-Ranges`, since no range is
/// passed on). A FHIR search pages in its body, whose links the gateway rewrites. Hop-by-hop
/// headers are not here either.
const BACKEND_RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "content-language",
    "content-disposition",
    // Rewritten to point at the gateway, or removed, by the response phase.
    "location",
    "content-location",
    // Versioning (FHIR `vread`, conditional writes, `If-Match`). Not the backend's caching
    // rules: an answer filtered for one caller is not to be kept for another (the response
    // phase says `no-store` itself).
    "etag",
    "last-modified",
    "date",
    "vary",
    // When to ask again (429, 503, a Bulk Data status still in progress).
    "retry-after",
    "x-progress",
    // RFC 7240: which `Prefer` the server honoured.
    "preference-applied",
    // The methods a 405 names.
    "allow",
];

/// Removes hop-by-hop headers, including those named in `Connection`.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_named_in_connection(headers);
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Removes the headers `Connection` names as hop-by-hop (RFC 9110 §7.6.1), whatever they are.
fn remove_named_in_connection(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// Bulk Data `$export` (after [`sanitize_request`]): the kick-off's `Prefer: respond-async`
/// passes when the client sent it (an export is asked for no other way), and a followed
/// status or file link asks for what those answer, a JSON manifest or NDJSON, both of which
/// the gateway reads and checks.
pub fn for_export(headers: &mut HeaderMap, respond_async: bool, followed: bool) {
    let prefer = HeaderName::from_static("prefer");
    if respond_async {
        let value = match headers.get(&prefer).and_then(|v| v.to_str().ok()) {
            Some(kept) => format!("respond-async, {kept}"),
            None => "respond-async".to_owned(),
        };
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(prefer, value);
        }
    }
    if followed {
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/fhir+ndjson, application/json;q=0.9, application/fhir+json;q=0.8",
            ),
        );
    }
}

/// Whether the client's `Prefer` asks for asynchronous processing (`respond-async`).
pub fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all(HeaderName::from_static("prefer"))
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

/// Prepares client request headers for the backend.
pub fn sanitize_request(
    headers: &mut HeaderMap,
    forward_authorization: bool,
    client_ip: Option<IpAddr>,
    public_host: Option<&HeaderValue>,
) {
    remove_hop_by_hop(headers);
    let identity: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            IDENTITY_HEADERS.contains(&name)
                || METHOD_OVERRIDES.contains(&name)
                || IDENTITY_PREFIXES
                    .iter()
                    .any(|prefix| name.starts_with(prefix))
        })
        .cloned()
        .collect();
    for name in identity {
        headers.remove(name);
    }
    if !forward_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    headers.remove(header::HOST);
    // A 304 carries no body to check: the gateway always asks for the full answer.
    // HAPI's cascading delete deletes what references the target too, unseen by any check.
    headers.remove("x-cascade");
    headers.remove(header::IF_NONE_MATCH);
    headers.remove(header::IF_MODIFIED_SINCE);
    // Nor a part of one: a byte range of a Bundle or resource cannot be read for whose it is.
    headers.remove(header::RANGE);
    headers.remove(header::IF_RANGE);
    // `Prefer: handling=lenient` makes servers ignore parameters they do not know, pins
    // included: only `return=` preferences pass.
    let prefer: Vec<String> = headers
        .get_all(HeaderName::from_static("prefer"))
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| p.starts_with("return="))
        .map(str::to_owned)
        .collect();
    headers.remove(HeaderName::from_static("prefer"));
    if let Some(value) = prefer
        .first()
        .and_then(|p| HeaderValue::try_from(p.as_str()).ok())
    {
        headers.insert(HeaderName::from_static("prefer"), value);
    }
    // Compressed or non-JSON answers could not be checked and rewritten: ask for plain JSON.
    headers.remove(header::ACCEPT_ENCODING);
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/fhir+json"),
    );
    if let Some(ip) = client_ip
        && let Ok(value) = HeaderValue::try_from(ip.to_string())
    {
        headers.insert(HeaderName::from_static("x-forwarded-for"), value);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("https"),
    );
    if let Some(host) = public_host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
}

/// Prepares backend response headers for the client: only those it may see remain, no cache
/// keeps the answer (it may be filtered for this caller, withheld from by citizens' blocks, and
/// is health data: RFC 9111 §5.2.2.5), and no browser runs or sniffs it.
pub fn sanitize_response(headers: &mut HeaderMap) {
    // The fixed hop-by-hop names are not in the allow list; those `Connection` names may be.
    remove_named_in_connection(headers);
    let other: Vec<HeaderName> = headers
        .keys()
        .filter(|name| !BACKEND_RESPONSE_HEADERS.contains(&name.as_str()))
        .cloned()
        .collect();
    for name in other {
        headers.remove(name);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // A Binary's document (which may be HTML) is not run in the gateway's origin, nor read as
    // another type than it says.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
}

/// Whether `location` (a `Location` or `Content-Location` the backend sent) is a relative
/// reference that resolves below the gateway's URL of the request: a path without a leading
/// slash (`Patient/1/_history/1`) or a query, nothing else. No scheme, no network-path
/// (`//host`) or absolute path (`/`, which would name the backend's own base path and another
/// route of the gateway's), no dot segment, no backslash (which browsers read as a slash),
/// and no white space or control character (browsers drop a tab or a newline from a URL
/// before reading it, so `/<tab>/host` would name another host). An absolute URL is only
/// passed rewritten to point at the gateway.
pub fn is_relative_location(location: &str) -> bool {
    let scheme_ends = location.find([':', '/', '?', '#']);
    let has_scheme = scheme_ends.is_some_and(|at| location.as_bytes()[at] == b':');
    // A dot segment climbs out of the request's base to another route of the gateway's
    // (`../../admin`), in any spelling a browser decodes (`%2e%2E`).
    let path = location.split(['?', '#']).next().unwrap_or_default();
    let climbs = path.split('/').any(|segment| {
        let segment = segment.to_ascii_lowercase().replace("%2e", ".");
        segment == "." || segment == ".."
    });
    !location.is_empty()
        && !has_scheme
        && !climbs
        && !location.starts_with(['/', '#'])
        && location.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn identity_and_hop_by_hop_headers_do_not_reach_the_backend() {
        let mut headers = map(&[
            ("connection", "x-secret, keep-alive"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-user", "admin"),
            ("forwarded", "for=10.0.0.1"),
            ("x-ssl-client-cert", "-----BEGIN"),
            ("x-portvagt-principal", "admin"),
            ("authorization", "Bearer abc"),
            ("host", "evil.example"),
            ("x-http-method-override", "DELETE"),
            ("if-none-match", "W/\"1\""),
            ("x-cascade", "delete"),
            ("prefer", "handling=lenient, return=minimal"),
            ("accept", "application/fhir+xml"),
            ("accept-encoding", "gzip, br"),
        ]);
        sanitize_request(
            &mut headers,
            false,
            Some("192.0.2.7".parse().unwrap()),
            Some(&HeaderValue::from_static("fhir.example.dk")),
        );
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "prefer",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(headers["accept"], "application/fhir+json");
        assert_eq!(headers["prefer"], "return=minimal");
        assert_eq!(headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(headers["x-forwarded-host"], "fhir.example.dk");
    }

    #[test]
    fn authorization_can_be_forwarded_on_request() {
        let mut headers = map(&[("authorization", "Bearer abc")]);
        sanitize_request(&mut headers, true, None, None);
        assert_eq!(headers["authorization"], "Bearer abc");
    }

    /// The names of the headers left once `headers` are prepared for the client, sorted.
    fn left_for_the_client(mut headers: HeaderMap) -> Vec<String> {
        sanitize_response(&mut headers);
        let mut names: Vec<String> = headers.keys().map(|n| n.as_str().to_owned()).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn backend_software_is_not_disclosed() {
        let headers = map(&[
            ("server", "Kestrel"),
            ("x-powered-by", "Express"),
            ("set-cookie", "JSESSIONID=abc"),
            ("content-type", "application/fhir+json"),
        ]);
        assert_eq!(
            left_for_the_client(headers),
            [
                "cache-control",
                "content-security-policy",
                "content-type",
                "x-content-type-options"
            ]
        );
    }

    /// Deny by default: only the headers a FHIR client needs pass, whatever else a backend
    /// (or a platform in front of it) adds.
    #[test]
    fn only_the_headers_a_client_needs_pass() {
        let passing = [
            ("content-type", "application/fhir+json"),
            ("content-length", "12"),
            ("etag", "W/\"3\""),
            ("last-modified", "Sat, 05 Dec 2026 06:00:00 GMT"),
            ("location", "Patient/1/_history/1"),
            ("retry-after", "5"),
            ("x-progress", "50%"),
            ("preference-applied", "return=minimal"),
            ("cache-control", "no-store"),
            ("x-content-type-options", "nosniff"),
            ("content-security-policy", "sandbox; default-src 'none'"),
        ];
        let mut headers = map(&passing);
        for (name, value) in [
            ("www-authenticate", "Bearer realm=\"backend\""),
            ("access-control-allow-origin", "*"),
            ("access-control-allow-credentials", "true"),
            ("x-request-id", "backend-7"),
            ("x-ms-request-charge", "4.2"),
            ("x-anything-new", "secret"),
            ("proxy-authenticate", "Basic"),
            ("alt-svc", "h3=\":443\""),
            ("strict-transport-security", "max-age=0"),
            ("expires", "Sat, 05 Dec 2027 06:00:00 GMT"),
            ("pragma", "cache"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        // The backend's own caching rules do not pass: the answer says `no-store` whatever
        // the backend said.
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=600"),
        );
        let mut prepared = headers.clone();
        sanitize_response(&mut prepared);
        assert_eq!(prepared[header::CACHE_CONTROL], "no-store");
        let mut expected: Vec<&str> = passing.iter().map(|(name, _)| *name).collect();
        expected.sort_unstable();
        assert_eq!(left_for_the_client(headers), expected);
    }

    #[test]
    fn counts_and_backend_links_beside_the_body_do_not_pass() {
        let headers = map(&[
            (
                "link",
                "<http://backend:8080/fhir?_getpages=x&_getpagesoffset=340>; rel=\"last\"",
            ),
            ("x-total-count", "347"),
            ("content-range", "items 0-9/347"),
            ("accept-ranges", "bytes"),
            ("etag", "W/\"3\""),
            ("content-type", "application/fhir+json"),
        ]);
        assert_eq!(
            left_for_the_client(headers),
            [
                "cache-control",
                "content-security-policy",
                "content-type",
                "etag",
                "x-content-type-options"
            ]
        );
    }

    #[test]
    fn the_backend_is_asked_for_whole_answers() {
        let mut headers = map(&[
            ("range", "bytes=0-99"),
            ("if-range", "W/\"1\""),
            ("if-modified-since", "Sat, 05 Dec 2026 06:00:00 GMT"),
        ]);
        sanitize_request(&mut headers, false, None, None);
        for name in ["range", "if-range", "if-modified-since"] {
            assert!(!headers.contains_key(name), "{name} passed");
        }
    }
}
