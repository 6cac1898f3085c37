//! Bulk Data `$export` answers (HL7 FHIR Bulk Data Access IG v2): the status URL of a
//! kick-off (`Content-Location`) and the file URLs of a manifest become links the gateway
//! signs for the client that started the export (so only it can poll and download, and only
//! through the gateway); an NDJSON file is read as the entries of a Bundle, so every resource
//! in it is checked, withheld under citizens' blocks and audited by its patients the way a
//! searchset's entries are, and written back as NDJSON.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use serde_json::{Value, json};

use super::PageSigning;
use crate::backend::ProxyError;
use crate::backend::rewrite::UrlRewriter;

/// `Content-Location` of a kick-off's `202`: the backend's status URL, as the gateway's signed
/// link; a status URL not below the backend's base is removed (it could not be vouched for).
pub(super) fn sign_status_location(
    headers: &mut HeaderMap,
    rewriter: &UrlRewriter,
    signing: &PageSigning<'_>,
) {
    let Some(location) = headers
        .get(header::CONTENT_LOCATION)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    match signing
        .cancellable_url(rewriter, location)
        .and_then(|url| HeaderValue::try_from(url).ok())
    {
        Some(signed) => {
            headers.insert(header::CONTENT_LOCATION, signed);
        }
        None => {
            headers.remove(header::CONTENT_LOCATION);
        }
    }
}

/// A completed export's manifest with the URL of every `output`, `error` and `deleted` file as
/// the gateway's signed link (a file not below the backend's base is left out), and `request`
/// pointing at the gateway. Anything else is returned as it came.
pub(super) fn signed_manifest(
    bytes: Bytes,
    rewriter: &UrlRewriter,
    signing: &PageSigning<'_>,
) -> Bytes {
    let Ok(mut manifest) = serde_json::from_slice::<Value>(&bytes) else {
        return bytes;
    };
    let Some(fields) = manifest.as_object_mut() else {
        return bytes;
    };
    if !fields.contains_key("output") || fields.contains_key("resourceType") {
        return bytes;
    }
    for list in ["output", "error", "deleted"] {
        if let Some(files) = fields.get_mut(list).and_then(Value::as_array_mut) {
            files.retain_mut(|file| {
                let signed = file
                    .get("url")
                    .and_then(Value::as_str)
                    .and_then(|url| signing.url(rewriter, url));
                match signed {
                    Some(url) => {
                        file["url"] = Value::String(url);
                        true
                    }
                    None => false,
                }
            });
        }
    }
    if let Some(request) = fields.get_mut("request") {
        *request = request
            .as_str()
            .and_then(|url| rewriter.rewrite(url))
            .map_or(Value::Null, Value::String);
    }
    serde_json::to_vec(&manifest).map_or(bytes, Bytes::from)
}

/// Whether an answer is NDJSON (`application/fhir+ndjson`, `application/ndjson`).
pub(super) fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().to_ascii_lowercase().ends_with("ndjson"))
}

/// The resources of an NDJSON file as the entries of a `collection` Bundle (blank lines
/// skipped).
pub(super) fn ndjson_as_bundle(bytes: &[u8]) -> Result<Bytes, ProxyError> {
    let mut entries = Vec::new();
    for line in bytes.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let resource: Value =
            serde_json::from_slice(line).map_err(|_| ProxyError::UnreadableExport)?;
        if resource
            .get("resourceType")
            .and_then(Value::as_str)
            .is_none()
        {
            return Err(ProxyError::UnreadableExport);
        }
        entries.push(json!({ "resource": resource }));
    }
    let bundle = json!({ "resourceType": "Bundle", "type": "collection", "entry": entries });
    serde_json::to_vec(&bundle)
        .map(Bytes::from)
        .map_err(|_| ProxyError::UnreadableExport)
}

/// The entries of a Bundle made by [`ndjson_as_bundle`] (after checks took some out) as NDJSON
/// again, one resource per line.
pub(super) fn bundle_as_ndjson(bytes: &[u8]) -> Result<Bytes, ProxyError> {
    let bundle: Value = serde_json::from_slice(bytes).map_err(|_| ProxyError::UnreadableExport)?;
    let mut out = Vec::with_capacity(bytes.len());
    for entry in bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(resource) = entry.get("resource") else {
            continue;
        };
        serde_json::to_writer(&mut out, resource).map_err(|_| ProxyError::UnreadableExport)?;
        out.push(b'\n');
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::paging::{PageOrigin, Pager};

    fn rewriter() -> UrlRewriter {
        UrlRewriter::new("http://backend:8080/fhir/R4", "https://gw.example/fhir")
    }

    fn with_signing(check: impl FnOnce(&PageSigning<'_>, &Pager)) {
        let pager = Pager::new(&[5u8; 32], Duration::from_secs(60)).unwrap();
        let origin = PageOrigin {
            base: "/fhir".into(),
            post_search: false,
            relative: "$export".into(),
            query: Some("_type=Observation".into()),
            holder: "backend-service".into(),
        };
        let signing = PageSigning {
            pager: &pager,
            origin: &origin,
            followed: false,
        };
        check(&signing, &pager);
    }

    fn opened(pager: &Pager, url: &str) -> String {
        let token = url
            .strip_prefix("https://gw.example/fhir/_page/")
            .unwrap_or_else(|| panic!("not a signed link: {url}"));
        pager.open(token, "/fhir", "backend-service").unwrap().link
    }

    #[test]
    fn the_status_location_is_signed_or_removed() {
        with_signing(|signing, pager| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_LOCATION,
                HeaderValue::from_static("http://backend:8080/fhir/R4/_bulk/status/j1"),
            );
            sign_status_location(&mut headers, &rewriter(), signing);
            let signed = headers[header::CONTENT_LOCATION].to_str().unwrap();
            assert_eq!(opened(pager, signed), "/_bulk/status/j1");

            headers.insert(
                header::CONTENT_LOCATION,
                HeaderValue::from_static("https://s3.example/bucket/j1"),
            );
            sign_status_location(&mut headers, &rewriter(), signing);
            assert!(!headers.contains_key(header::CONTENT_LOCATION));
        });
    }

    #[test]
    fn manifest_files_are_signed_and_foreign_ones_left_out() {
        with_signing(|signing, pager| {
            let manifest = json!({
                "transactionTime": "2026-12-03T10:00:00Z",
                "request": "http://backend:8080/fhir/R4/$export?_type=Observation",
                "requiresAccessToken": true,
                "output": [
                    { "type": "Observation", "url": "http://backend:8080/fhir/R4/_bulk/file/j1/Observation.ndjson", "count": 9 },
                    { "type": "Patient", "url": "https://s3.example/bucket/Patient.ndjson" }
                ],
                "error": [{ "type": "OperationOutcome", "url": "http://backend:8080/fhir/R4/_bulk/file/j1/errors.ndjson" }]
            });
            let signed: Value = serde_json::from_slice(&signed_manifest(
                Bytes::from(manifest.to_string()),
                &rewriter(),
                signing,
            ))
            .unwrap();
            assert_eq!(signed["output"].as_array().unwrap().len(), 1);
            assert_eq!(
                opened(pager, signed["output"][0]["url"].as_str().unwrap()),
                "/_bulk/file/j1/Observation.ndjson"
            );
            assert_eq!(
                opened(pager, signed["error"][0]["url"].as_str().unwrap()),
                "/_bulk/file/j1/errors.ndjson"
            );
            assert_eq!(
                signed["request"],
                "https://gw.example/fhir/$export?_type=Observation"
            );
            assert!(!signed.to_string().contains("backend:8080"), "{signed}");
            // A FHIR resource is no manifest.
            let outcome = Bytes::from_static(br#"{"resourceType":"OperationOutcome","output":[]}"#);
            assert_eq!(
                signed_manifest(outcome.clone(), &rewriter(), signing),
                outcome
            );
        });
    }

    #[test]
    fn ndjson_goes_through_a_bundle_and_back() {
        let file = b"{\"resourceType\":\"Observation\",\"id\":\"1\"}\n\n{\"resourceType\":\"Patient\",\"id\":\"p\"}\n";
        let bundle = ndjson_as_bundle(file).unwrap();
        let value: Value = serde_json::from_slice(&bundle).unwrap();
        assert_eq!(value["entry"].as_array().unwrap().len(), 2);
        assert_eq!(value["entry"][1]["resource"]["id"], "p");
        assert_eq!(
            &bundle_as_ndjson(&bundle).unwrap()[..],
            b"{\"resourceType\":\"Observation\",\"id\":\"1\"}\n{\"resourceType\":\"Patient\",\"id\":\"p\"}\n"
        );
        for bad in [&b"{\"id\":\"1\"}\n"[..], b"not json\n", b"[1]\n"] {
            assert!(ndjson_as_bundle(bad).is_err());
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/fhir+ndjson; charset=utf-8"),
        );
        assert!(is_ndjson(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(!is_ndjson(&headers));
    }
}
