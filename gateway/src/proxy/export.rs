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
use crate::paging::LinkKind;

/// Whether resources of `resource_type` leave in an export limited to `only` (`_type=T`):
/// that type, or any, but never the audit log (`AuditEvent`), whoever may read it otherwise.
pub(super) fn exported(only: Option<&str>, resource_type: &str) -> bool {
    resource_type != "AuditEvent" && only.is_none_or(|only| only == resource_type)
}

/// The locations of an export's answers: the `Content-Location` of a kick-off's `202` (the
/// backend's status URL) as the gateway's signed status link when `kick_off` signs it, and
/// removed otherwise, as is every `Location` and `Link` of an export answer (a file's own
/// location, a redirect to storage elsewhere: nothing the gateway could vouch for, nor a link
/// `DELETE` could be sent to).
pub(super) fn only_signed_locations(
    headers: &mut HeaderMap,
    rewriter: &UrlRewriter,
    kick_off: Option<&PageSigning<'_>>,
) {
    let status = kick_off.and_then(|signing| {
        let location = headers
            .get(header::CONTENT_LOCATION)
            .and_then(|v| v.to_str().ok())?;
        let url = signing.url(rewriter, location, LinkKind::ExportStatus)?;
        HeaderValue::try_from(url).ok()
    });
    for name in [header::CONTENT_LOCATION, header::LOCATION, header::LINK] {
        headers.remove(name);
    }
    if let Some(status) = status {
        headers.insert(header::CONTENT_LOCATION, status);
    }
}

/// What is withheld from the caller of an export, for [`signed_manifest`].
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Withholding {
    /// Citizens' blocks apply: counts would tell what they withhold.
    pub(super) counts: bool,
    /// Anything at all is withheld: an OperationOutcome says only its codes.
    pub(super) anything: bool,
}

/// Whether `fields` (an object without `resourceType`) is an export manifest: it has any of
/// the members only a manifest has. Anything else without `resourceType` from an export is no
/// FHIR resource the gateway could check either.
fn is_manifest(fields: &serde_json::Map<String, Value>) -> bool {
    [
        "output",
        "error",
        "deleted",
        "link",
        "transactionTime",
        "request",
    ]
    .iter()
    .any(|name| fields.contains_key(*name))
}

/// A completed export's manifest, rebuilt from what the gateway vouches for
/// (deny by default): `transactionTime`, `requiresAccessToken`, `request` pointing at the
/// gateway, and every `output`, `error` and `deleted` file with its `type`, its URL as the
/// gateway's signed link (a file not below the backend's base is left out, and with it an
/// output of a type not `exported`), and its `count` unless citizens' blocks apply
/// (`withholding.counts`: it would tell what they withheld); `requiresAccessToken` is always
/// true (the signed links open only for the caller's token). Nothing else of the backend's
/// passes. An OperationOutcome is rebuilt of what it says (as an answer that is no success
/// is), and no body at all (a status still in progress) stays none. What is not JSON, another
/// resource, and JSON that is neither an OperationOutcome nor a manifest, is refused. A
/// manifest that cannot be rebuilt so (a list that is no list, a file that is no object) is
/// refused, as is one a plain tree would read otherwise than every check (a
/// member given twice, serde_json's raw value token), or one paged by the server (`link`):
/// its next page could not be shown to be a manifest of this export, and a manifest handed
/// out without it would look whole.
pub(super) fn signed_manifest(
    bytes: Bytes,
    rewriter: &UrlRewriter,
    signing: &PageSigning<'_>,
    exported: &dyn Fn(&str) -> bool,
    withholding: Withholding,
) -> Result<Bytes, ProxyError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(bytes);
    }
    let manifest = portvagt_policy::strict_json::tree_unique(&bytes)
        .map_err(|_| ProxyError::UnreadableAnswer)?;
    let Some(fields) = manifest.as_object() else {
        return Err(ProxyError::UnreadableAnswer);
    };
    // An OperationOutcome passes for the checks every answer gets; no other resource is an
    // export's answer (a manifest written with a `resourceType` of its own is not signed).
    match fields.get("resourceType").and_then(Value::as_str) {
        Some("OperationOutcome") => {
            return crate::outcome::backend_outcome_rebuilt(
                &manifest,
                withholding.anything,
                rewriter.backend_base(),
                rewriter.public_base(),
            )
            .map(Bytes::from)
            .ok_or(ProxyError::UnreadableAnswer);
        }
        Some(_) => return Err(ProxyError::UnreadableAnswer),
        None if fields.contains_key("resourceType") => return Err(ProxyError::UnreadableAnswer),
        None => {}
    }
    if !is_manifest(fields) {
        return Err(ProxyError::UnreadableAnswer);
    }
    if fields
        .get("link")
        .is_some_and(|link| link.as_array().is_none_or(|links| !links.is_empty()))
    {
        return Err(ProxyError::UnreadableAnswer);
    }
    let mut rebuilt = serde_json::Map::new();
    if let Some(time) = fields.get("transactionTime").filter(|t| t.is_string()) {
        rebuilt.insert("transactionTime".into(), time.clone());
    }
    if let Some(request) = fields.get("request") {
        let request = request
            .as_str()
            .and_then(|url| rewriter.rewrite(url))
            .map_or(Value::Null, Value::String);
        rebuilt.insert("request".into(), request);
    }
    // The files are the gateway's signed links, which it opens only for the caller's token.
    rebuilt.insert("requiresAccessToken".into(), Value::Bool(true));
    for list in ["output", "error", "deleted"] {
        let Some(files) = fields.get(list) else {
            continue;
        };
        let files = files.as_array().ok_or(ProxyError::UnreadableAnswer)?;
        let mut kept = Vec::with_capacity(files.len());
        for file in files {
            let file = file.as_object().ok_or(ProxyError::UnreadableAnswer)?;
            let file_type = file.get("type").and_then(Value::as_str);
            if list == "output" && !file_type.is_some_and(exported) {
                continue;
            }
            let Some(url) = file
                .get("url")
                .and_then(Value::as_str)
                .and_then(|url| signing.url(rewriter, url, LinkKind::ExportFile))
            else {
                continue;
            };
            let mut signed = serde_json::Map::new();
            if let Some(file_type) = file_type {
                signed.insert("type".into(), Value::String(file_type.to_owned()));
            }
            signed.insert("url".into(), Value::String(url));
            if let Some(count) = file
                .get("count")
                .filter(|c| c.is_u64() && !withholding.counts)
            {
                signed.insert("count".into(), count.clone());
            }
            kept.push(Value::Object(signed));
        }
        rebuilt.insert(list.into(), Value::Array(kept));
    }
    serde_json::to_vec(&rebuilt)
        .map(Bytes::from)
        .map_err(|_| ProxyError::UnreadableAnswer)
}

/// The resources of an NDJSON file as the entries of a `collection` Bundle (blank lines
/// skipped; resources of a type not `exported` left out). An OperationOutcome (a line of an
/// `error` file) is rebuilt of what it says, only its codes while anything is withheld
/// ([`crate::outcome::backend_outcome_tree`]); one that cannot be rebuilt so is no resource.
pub(super) fn ndjson_as_bundle(
    bytes: &[u8],
    exported: &dyn Fn(&str) -> bool,
    rewriter: &UrlRewriter,
    withheld: bool,
) -> Result<Bytes, ProxyError> {
    let mut entries = Vec::new();
    for line in bytes.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut resource = portvagt_policy::strict_json::tree_unique(line)
            .map_err(|_| ProxyError::UnreadableExport)?;
        if resource.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome") {
            resource = crate::outcome::backend_outcome_tree(
                &resource,
                withheld,
                rewriter.backend_base(),
                rewriter.public_base(),
            )
            .ok_or(ProxyError::UnreadableExport)?;
        }
        let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
            return Err(ProxyError::UnreadableExport);
        };
        // A Binary (an earlier export's output kept by the backend, a document) that may hold
        // AuditEvents does not leave in an export either, as a read of it would not.
        if !exported(resource_type)
            || (resource_type == "Binary" && portvagt_policy::filter::holds_audit_event(line))
        {
            continue;
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
    let bundle: Value =
        crate::strict_json::tree_unique(bytes).map_err(|_| ProxyError::UnreadableExport)?;
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
    use crate::paging::{PageFollow, PageOrigin, Pager};

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
            followed: None,
        };
        check(&signing, &pager);
    }

    fn withholding(consent: bool) -> Withholding {
        Withholding {
            counts: consent,
            anything: consent,
        }
    }

    fn opened(pager: &Pager, url: &str) -> PageFollow {
        let token = url
            .strip_prefix("https://gw.example/fhir/_page/")
            .unwrap_or_else(|| panic!("not a signed link: {url}"));
        pager.open(token, "/fhir", "backend-service").unwrap()
    }

    #[test]
    fn only_a_kick_offs_status_location_is_handed_out_signed() {
        with_signing(|signing, pager| {
            let headers = |location: &'static str| {
                let mut headers = HeaderMap::new();
                headers.insert(header::CONTENT_LOCATION, HeaderValue::from_static(location));
                headers.insert(header::LOCATION, HeaderValue::from_static(location));
                headers.insert(header::LINK, HeaderValue::from_static("<x>; rel=next"));
                headers
            };
            let mut kick_off = headers("http://backend:8080/fhir/R4/_bulk/status/j1");
            only_signed_locations(&mut kick_off, &rewriter(), Some(signing));
            let status = opened(pager, kick_off[header::CONTENT_LOCATION].to_str().unwrap());
            assert_eq!(status.link, "/_bulk/status/j1");
            assert_eq!(status.kind, LinkKind::ExportStatus);
            assert!(!kick_off.contains_key(header::LOCATION));
            assert!(!kick_off.contains_key(header::LINK));
            // Elsewhere than below the backend's base, or not a kick-off: removed.
            let mut foreign = headers("https://s3.example/bucket/j1");
            only_signed_locations(&mut foreign, &rewriter(), Some(signing));
            let mut file = headers("http://backend:8080/fhir/R4/Binary/b1");
            only_signed_locations(&mut file, &rewriter(), None);
            for headers in [foreign, file] {
                assert!(headers.is_empty(), "{headers:?}");
            }
        });
    }

    #[test]
    fn manifest_files_are_signed_and_foreign_or_other_types_left_out() {
        with_signing(|signing, pager| {
            let manifest = json!({
                "transactionTime": "2026-12-03T10:00:00Z",
                "request": "http://backend:8080/fhir/R4/$export?_type=Observation",
                "requiresAccessToken": false,
                "output": [
                    { "type": "Observation", "url": "http://backend:8080/fhir/R4/_bulk/file/j1/Observation.ndjson", "count": 9 },
                    { "type": "Patient", "url": "https://s3.example/bucket/Patient.ndjson" }
                ],
                "error": [{ "type": "OperationOutcome", "url": "http://backend:8080/fhir/R4/_bulk/file/j1/errors.ndjson",
                            "extension": { "note": "http://backend:8080/internal" } }],
                "link": [],
                "extension": { "backend": "http://backend:8080/fhir/R4/_bulk/jobs" }
            });
            let signed = |only: Option<&str>, consent: bool| -> Value {
                let bytes = Bytes::from(manifest.to_string());
                let exported = |t: &str| exported(only, t);
                serde_json::from_slice(
                    &signed_manifest(bytes, &rewriter(), signing, &exported, withholding(consent))
                        .unwrap(),
                )
                .unwrap()
            };
            let all = signed(None, false);
            assert_eq!(all["output"].as_array().unwrap().len(), 1);
            let file = opened(pager, all["output"][0]["url"].as_str().unwrap());
            assert_eq!(file.link, "/_bulk/file/j1/Observation.ndjson");
            assert_eq!(file.kind, LinkKind::ExportFile);
            assert_eq!(all["output"][0]["count"], 9);
            let errors = opened(pager, all["error"][0]["url"].as_str().unwrap());
            assert_eq!(errors.link, "/_bulk/file/j1/errors.ndjson");
            assert_eq!(
                all["request"],
                "https://gw.example/fhir/$export?_type=Observation"
            );
            // Only what the gateway vouches for is handed out: no member of the backend's own.
            assert!(!all.to_string().contains("backend:8080"), "{all}");
            assert!(!all.to_string().contains("s3.example"), "{all}");
            assert_eq!(
                all["requiresAccessToken"], true,
                "the gateway's links need the token"
            );
            let mut members: Vec<&str> = all
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            members.sort_unstable();
            assert_eq!(
                members,
                [
                    "error",
                    "output",
                    "request",
                    "requiresAccessToken",
                    "transactionTime"
                ]
            );
            assert!(
                all.get("extension").is_none() && all.get("link").is_none(),
                "{all}"
            );
            assert!(all["error"][0].get("extension").is_none(), "{all}");
            // One type exported: another type's file is not handed out; under blocks no counts.
            let only = signed(Some("Patient"), true);
            assert!(only["output"].as_array().unwrap().is_empty(), "{only}");
            let counted = signed(Some("Observation"), true);
            assert!(counted["output"][0].get("count").is_none(), "{counted}");
            // An OperationOutcome is no manifest: it leaves rebuilt of what it says, without
            // anything a manifest would carry.
            let outcome = Bytes::from_static(
                br#"{"resourceType":"OperationOutcome","issue":[{"severity":"information","code":"informational"}],"output":[{"url":"http://backend:8080/fhir/R4/_bulk/file/j1/p.ndjson","count":812}]}"#,
            );
            let told: Value = serde_json::from_slice(
                &signed_manifest(outcome, &rewriter(), signing, &|_| true, withholding(false))
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(
                told,
                json!({ "resourceType": "OperationOutcome",
                        "issue": [{ "severity": "information", "code": "informational" }] })
            );
            // While anything is withheld, only its codes.
            let worded = Bytes::from_static(
                br#"{"resourceType":"OperationOutcome","issue":[{"severity":"information","code":"informational","diagnostics":"812 Patients, 3 blocked"}]}"#,
            );
            let told = signed_manifest(
                worded,
                &rewriter(),
                signing,
                &|_| true,
                Withholding {
                    counts: false,
                    anything: true,
                },
            )
            .unwrap();
            assert!(!String::from_utf8_lossy(&told).contains("812"), "{told:?}");
            // No body (a status in progress) stays none.
            assert_eq!(
                signed_manifest(
                    Bytes::new(),
                    &rewriter(),
                    signing,
                    &|_| true,
                    withholding(false)
                )
                .unwrap(),
                Bytes::new()
            );
            // A manifest read one way by a plain tree and another by a strict reader (its files
            // given twice, a URL hidden in serde_json's raw value token) is refused: returned
            // as it came it would hand out the backend's URLs unsigned.
            // Nor is one that cannot be rebuilt from what the gateway vouches for: refused.
            for manifest in [
                // Paged by the server: its next page could not be shown to be this export's.
                r#"{"output":[],"link":[{"relation":"next","url":"http://backend:8080/fhir/R4/_bulk/status/j1?page=2"}]}"#,
                r#"{"output":[],"link":{"relation":"next"}}"#,
                // A list that is no list, a file that is no object.
                r#"{"output":{"type":"Patient","url":"http://backend:8080/fhir/R4/_bulk/file/j1/p.ndjson","count":812}}"#,
                r#"{"error":"http://backend:8080/fhir/R4/_bulk/file/j1/e.ndjson"}"#,
                r#"{"deleted":["http://backend:8080/fhir/R4/_bulk/file/j1/d.ndjson"]}"#,
                // A manifest with a resource type of its own (as an example in the IG writes
                // it), or another resource: not signed, so refused.
                r#"{"resourceType":"Parameters","output":[{"type":"Patient","url":"http://backend:8080/fhir/R4/_bulk/file/j1/p.ndjson","count":812}]}"#,
                r#"{"resourceType":"http://hl7.org/fhir/uv/bulkdata/BulkDataManifest","output":[]}"#,
                r#"{"resourceType":7,"output":[]}"#,
                // Neither a resource nor a manifest, or not JSON at all.
                r#"["http://backend:8080/fhir/R4/_bulk/file/j1/e.ndjson"]"#,
                r#""http://backend:8080/fhir/R4/_bulk/file/j1/e.ndjson""#,
                r#"{"files":["http://backend:8080/fhir/R4/_bulk/file/j1/e.ndjson"]}"#,
                "<html>busy</html>",
                // Read one way by a plain tree and another by every check.
                r#"{"output":[{"type":"Observation","url":"http://backend:8080/fhir/R4/_bulk/file/j1/a.ndjson"}],"output":[]}"#,
                r#"{"output":[{"type":"Observation","url":{"$serde_json::private::RawValue":"\"http://backend:8080/fhir/R4/_bulk/file/j1/a.ndjson\""}}]}"#,
            ] {
                assert!(
                    matches!(
                        signed_manifest(
                            Bytes::from(manifest),
                            &rewriter(),
                            signing,
                            &|_| true,
                            withholding(false)
                        ),
                        Err(ProxyError::UnreadableAnswer)
                    ),
                    "{manifest}"
                );
            }
        });
    }

    #[test]
    fn ndjson_goes_through_a_bundle_and_back() {
        let file = b"{\"resourceType\":\"Observation\",\"id\":\"1\"}\n\n{\"resourceType\":\"Patient\",\"id\":\"p\"}\n";
        let all = |t: &str| exported(None, t);
        let bundle = ndjson_as_bundle(file, &all, &rewriter(), false).unwrap();
        let value: Value = serde_json::from_slice(&bundle).unwrap();
        assert_eq!(value["entry"].as_array().unwrap().len(), 2);
        assert_eq!(value["entry"][1]["resource"]["id"], "p");
        assert_eq!(
            &bundle_as_ndjson(&bundle).unwrap()[..],
            b"{\"resourceType\":\"Observation\",\"id\":\"1\"}\n{\"resourceType\":\"Patient\",\"id\":\"p\"}\n"
        );
        for bad in [
            &b"{\"id\":\"1\"}\n"[..],
            b"not json\n",
            b"[1]\n",
            // Read one way by a plain tree, another by every check: not read at all.
            b"{\"resourceType\":\"Observation\",\"id\":\"1\",\"id\":\"2\"}\n",
            b"{\"resourceType\":{\"$serde_json::private::RawValue\":\"\\\"Patient\\\"\"},\"id\":\"p\"}\n",
        ] {
            assert!(ndjson_as_bundle(bad, &all, &rewriter(), false).is_err());
        }
        // An error file's OperationOutcome leaves rebuilt: only its codes while anything is
        // withheld, its words (the backend's base as the gateway's) otherwise.
        let errors = b"{\"resourceType\":\"OperationOutcome\",\"contained\":[{\"resourceType\":\"Patient\",\"id\":\"bo\"}],\"issue\":[{\"severity\":\"error\",\"code\":\"processing\",\"diagnostics\":\"failed http://backend:8080/fhir/R4/Observation/5\"}]}\n";
        let told = |withheld: bool| -> Value {
            serde_json::from_slice(&ndjson_as_bundle(errors, &all, &rewriter(), withheld).unwrap())
                .unwrap()
        };
        assert_eq!(
            told(true)["entry"][0]["resource"],
            json!({ "resourceType": "OperationOutcome",
                    "issue": [{ "severity": "error", "code": "processing" }] })
        );
        assert_eq!(
            told(false)["entry"][0]["resource"]["issue"][0]["diagnostics"],
            "failed https://gw.example/fhir/Observation/5"
        );
        assert!(!told(false).to_string().contains("\"bo\""));
        // One type exported: a line of another type does not leave.
        let only: Value = serde_json::from_slice(
            &ndjson_as_bundle(
                file,
                &|t: &str| exported(Some("Patient"), t),
                &rewriter(),
                false,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(only["entry"].as_array().unwrap().len(), 1);
        assert_eq!(only["entry"][0]["resource"]["resourceType"], "Patient");
        // The audit log never leaves in an export, whatever was asked.
        let logs = b"{\"resourceType\":\"AuditEvent\",\"id\":\"a\"}\n";
        for only in [None, Some("AuditEvent")] {
            let asked = |t: &str| exported(only, t);
            let kept: Value = serde_json::from_slice(
                &ndjson_as_bundle(logs, &asked, &rewriter(), false).unwrap(),
            )
            .unwrap();
            assert!(kept["entry"].as_array().unwrap().is_empty(), "{kept}");
        }
        // Nor inside a Binary: an earlier export's NDJSON kept as one, or content naming the
        // type. A document's bytes leave.
        let logged = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "{\"resourceType\":\"AuditEvent\"}",
        );
        let pdf = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "%PDF-1.7");
        let binaries = format!(
            "{{\"resourceType\":\"Binary\",\"id\":\"out\",\"contentType\":\"application/fhir+ndjson\",\"data\":\"e30=\"}}\n\
             {{\"resourceType\":\"Binary\",\"id\":\"named\",\"contentType\":\"application/json\",\"data\":\"{logged}\"}}\n\
             {{\"resourceType\":\"Binary\",\"id\":\"doc\",\"contentType\":\"application/pdf\",\"data\":\"{pdf}\"}}\n"
        );
        let kept: Value = serde_json::from_slice(
            &ndjson_as_bundle(
                binaries.as_bytes(),
                &|t: &str| exported(None, t),
                &rewriter(),
                false,
            )
            .unwrap(),
        )
        .unwrap();
        let ids: Vec<&str> = kept["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|entry| entry["resource"]["id"].as_str())
            .collect();
        assert_eq!(ids, ["doc"]);
    }
}
