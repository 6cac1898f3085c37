//! Which representation a client is answered in: FHIR JSON (the default) or FHIR XML (R4
//! §3.1.0.1.9: the `_format` parameter, else `Accept`, else the representation of the request
//! body). The backend is always asked for JSON and the policy always decides on JSON: XML
//! exists only between the client and the gateway ([`portvagt_fhir`] converts). Pure functions
//! only; the layer that applies them is [`crate::layers::format`].

use http::HeaderMap;
use http::header::{ACCEPT, CONTENT_TYPE};

/// At most this many conversions between XML and JSON at once, each on a blocking thread: the
/// element model costs about 70 µs per Bundle entry, and must neither hold up the workers
/// that serve everyone else nor take every core.
const CONVERSIONS_AT_ONCE: usize = 2;

static CONVERSIONS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONVERSIONS_AT_ONCE);

/// `convert` (an XML/JSON conversion) on a blocking thread, once one of
/// [`CONVERSIONS_AT_ONCE`] permits is free.
pub async fn convert<T: Send + 'static>(
    convert: impl FnOnce() -> T + Send + 'static,
) -> Result<T, crate::body::BoxError> {
    let _permit = CONVERSIONS.acquire().await?;
    Ok(tokio::task::spawn_blocking(convert).await?)
}

/// The FHIR XML content type of the gateway's XML answers.
pub const FHIR_XML: &str = "application/fhir+xml; charset=utf-8";

/// A representation of FHIR resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    /// FHIR JSON: what the backend is asked for and what policy reads.
    Json,
    /// FHIR XML, converted at the edge.
    Xml,
}

/// The media type without parameters, lower case.
fn essence(media_type: &str) -> String {
    media_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether the essence of `media_type` (without parameters, in any case) is one of `names`
/// (lower case): asked of every answer, so nothing is allocated.
fn essence_is(media_type: &str, names: &[&str]) -> bool {
    let essence = media_type.split(';').next().unwrap_or("").trim();
    names.iter().any(|name| essence.eq_ignore_ascii_case(name))
}

/// Whether `media_type` (a `Content-Type` value) names FHIR XML: `application/fhir+xml`, or the
/// generic `application/xml` and `text/xml` that XML clients send.
pub fn is_xml(media_type: &str) -> bool {
    essence_is(
        media_type,
        &[
            "application/fhir+xml",
            "application/xml",
            "text/xml",
            "application/xml+fhir",
        ],
    )
}

/// Whether `media_type` names JSON, as FHIR servers answer it (`application/fhir+json`, or the
/// generic `application/json`).
pub fn is_json(media_type: &str) -> bool {
    essence_is(
        media_type,
        &[
            "application/fhir+json",
            "application/json",
            "application/json+fhir",
        ],
    )
}

/// The representation a `_format` value asks for (R4 §3.1.0.1.9: `xml`, `json`, or a MIME
/// type; `+` may arrive as a space, since query strings are form-encoded). `None`: a value the
/// gateway does not produce (the classifier refuses it, 406).
pub fn format_param(raw: &str) -> Option<Representation> {
    let decoded = raw
        .replace("%2B", "+")
        .replace("%2b", "+")
        .replace("%2F", "/")
        .replace("%2f", "/")
        .replace("%20", "+")
        .replace(' ', "+");
    match essence(&decoded).as_str() {
        "xml" | "text/xml" | "application/xml" | "application/fhir+xml" => {
            Some(Representation::Xml)
        }
        "json" | "application/json" | "application/fhir+json" => Some(Representation::Json),
        _ => None,
    }
}

/// The query without the `_format` parameters the gateway answers itself (`None` when there
/// are none). The backend is asked for JSON whatever the client wants, and the classifier sees
/// the request its JSON twin would be; a `_format` the gateway does not produce stays, for the
/// classifier to refuse.
pub fn without_format(query: &str) -> Option<String> {
    if !query.contains("_format") {
        return None;
    }
    let mut removed = false;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let answered = name == "_format" && format_param(value).is_some();
            removed |= answered;
            !answered
        })
        .collect();
    removed.then(|| kept.join("&"))
}

/// The highest `q` the `Accept` header gives a media range that `matches`.
fn best_q(accept: &str, matches: impl Fn(&str) -> bool) -> f32 {
    accept
        .split(',')
        .filter_map(|range| {
            let mut parts = range.split(';');
            let media = parts.next()?.trim().to_ascii_lowercase();
            if !matches(&media) {
                return None;
            }
            let q = parts
                .filter_map(|param| param.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            Some(q)
        })
        .fold(0.0, f32::max)
}

/// The representation the client asked for: `_format` first, then `Accept` (XML only when it
/// ranks an XML type above every JSON type and wildcard), then the request's own body (a client
/// that sends XML and states no preference gets XML). JSON otherwise.
pub fn negotiate(headers: &HeaderMap, query: Option<&str>) -> Representation {
    if let Some(query) = query
        && let Some(asked) = query
            .split('&')
            .filter_map(|pair| pair.strip_prefix("_format="))
            .find_map(format_param)
    {
        return asked;
    }
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    if let Some(accept) = accept
        && accept
            .as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"xml"))
    {
        let xml = best_q(accept, is_xml);
        let json = best_q(accept, |media| {
            is_json(media) || media == "*/*" || media == "application/*"
        });
        return if xml > json {
            Representation::Xml
        } else {
            Representation::Json
        };
    }
    let sent_xml = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_xml);
    let states_a_preference = accept.is_some_and(|accept| best_q(accept, is_json) > 0.0);
    if sent_xml && !states_a_preference {
        Representation::Xml
    } else {
        Representation::Json
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn format_wins_then_accept_then_the_body() {
        use Representation::{Json, Xml};
        let none = HeaderMap::new();
        assert_eq!(negotiate(&none, None), Json);
        assert_eq!(negotiate(&none, Some("code=x")), Json);
        for value in [
            "xml",
            "text/xml",
            "application/xml",
            "application/fhir+xml",
            "application/fhir%2Bxml",
            "application%2Ffhir%2Bxml",
            "application/fhir%2bxml;fhirVersion=4.0",
        ] {
            assert_eq!(
                negotiate(&none, Some(&format!("code=x&_format={value}"))),
                Xml,
                "{value}"
            );
        }
        let accepts_xml = headers(&[("accept", "application/fhir+xml")]);
        assert_eq!(negotiate(&accepts_xml, None), Xml);
        assert_eq!(negotiate(&accepts_xml, Some("_format=json")), Json);
        // q-values: XML only when it ranks above every JSON type and wildcard.
        for (accept, expected) in [
            ("application/fhir+json, application/fhir+xml;q=0.9", Json),
            ("application/fhir+xml, application/fhir+json;q=0.9", Xml),
            ("application/xml, */*;q=0.1", Xml),
            ("text/xml;q=0.5, */*", Json),
            ("application/fhir+xml;q=0.5, application/json;q=0.5", Json),
            ("TEXT/XML", Xml),
            (
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
                Xml,
            ),
        ] {
            let mut map = HeaderMap::new();
            map.insert(ACCEPT, HeaderValue::from_static(accept));
            assert_eq!(negotiate(&map, None), expected, "{accept}");
        }
        // A client that sends XML and says nothing else gets XML; one that asks for JSON, JSON.
        let sends_xml = headers(&[("content-type", "application/fhir+xml; charset=utf-8")]);
        assert_eq!(negotiate(&sends_xml, None), Xml);
        let sends_xml_wants_json = headers(&[
            ("content-type", "application/fhir+xml"),
            ("accept", "application/fhir+json"),
        ]);
        assert_eq!(negotiate(&sends_xml_wants_json, None), Json);
        let sends_xml_accepts_anything =
            headers(&[("content-type", "text/xml"), ("accept", "*/*")]);
        assert_eq!(negotiate(&sends_xml_accepts_anything, None), Xml);
    }

    #[test]
    fn only_the_formats_the_gateway_answers_are_taken_out_of_the_query() {
        assert_eq!(without_format("code=x"), None);
        assert_eq!(
            without_format("code=x&_format=xml&_count=5"),
            Some("code=x&_count=5".to_owned())
        );
        assert_eq!(without_format("_format=json"), Some(String::new()));
        assert_eq!(
            without_format("_format=application/fhir+xml&_format=xml"),
            Some(String::new())
        );
        // Not one the gateway produces: left for the classifier to refuse (406).
        assert_eq!(without_format("_format=turtle"), None);
        assert_eq!(
            without_format("_format=turtle&_format=xml"),
            Some("_format=turtle".to_owned())
        );
        // A parameter that merely looks alike is not touched.
        assert_eq!(without_format("x_format=xml"), None);
    }

    #[test]
    fn media_types_are_told_apart_without_their_parameters() {
        assert!(is_xml("application/fhir+xml; charset=utf-8"));
        assert!(is_xml("Application/XML"));
        assert!(is_xml("text/xml;charset=UTF-8"));
        assert!(!is_xml("application/fhir+json"));
        assert!(!is_xml("application/xhtml+xml"));
        assert!(!is_xml("application/xml-patch+xml"));
        assert!(is_json("application/fhir+json;fhirVersion=4.0"));
        assert!(is_json("application/json"));
        assert!(!is_json("application/json-patch+json"));
    }
}
