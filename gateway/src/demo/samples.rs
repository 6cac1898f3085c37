//! The demo's sample data for the access log: Anne's block of nurse Jonas Holm written to the
//! backend, then a few accesses made through the gateway like any client's. It goes in by the
//! gateway's front door only; it never writes the audit trail itself.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

/// Anne blocks nurse Jonas Holm (authorisation ZK482) in the backend, then the `samples`
/// (token, break-the-glass reason, path) are requested through the gateway at `public_url`.
pub(super) async fn sample_accesses(
    pki: PathBuf,
    public_url: String,
    backend_url: String,
    samples: Vec<(String, Option<&'static str>, &'static str)>,
) {
    use http_body_util::Full;
    let block = json!({
        "resourceType": "Consent",
        "id": "consent-anne-blocks-zk482",
        "status": "active",
        "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy" }] },
        "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }],
        "patient": { "reference": "Patient/pat-anne" },
        "policyRule": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT" }] },
        "provision": { "type": "deny", "actor": [{
            "role": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP" }] },
            "reference": { "identifier": { "system": "https://autregweb.sst.dk", "value": "ZK482" }, "display": "Jonas Holm" }
        }]}
    });
    let run = async {
        let plain =
            crate::https::HttpsClient::allowing_plain_http(None, None, Duration::from_secs(10))?;
        let put = http::Request::put(format!("{backend_url}/Consent/consent-anne-blocks-zk482"))
            .header(http::header::CONTENT_TYPE, "application/fhir+json")
            .body(Full::new(bytes::Bytes::from(block.to_string())))
            .map_err(|e| e.to_string())?;
        plain.send(put).await?;
        let (cert, key) = (pki.join("client.crt"), pki.join("client.key"));
        let client = crate::https::HttpsClient::new(
            Some(&pki.join("ca.crt")),
            Some(crate::https::ClientIdentity {
                cert: &cert,
                key: &key,
            }),
            Duration::from_secs(10),
        )?;
        for (token, reason, path) in samples {
            let request = || {
                let mut request = http::Request::get(format!("{public_url}/{path}"))
                    .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
                if let Some(reason) = reason {
                    // UTF-8 (obs-text on the wire), as the gateway reads it.
                    request = request.header(
                        crate::consent::BREAK_GLASS_HEADER,
                        http::HeaderValue::from_bytes(reason.as_bytes())
                            .map_err(|e| e.to_string())?,
                    );
                }
                request
                    .body(Full::new(bytes::Bytes::new()))
                    .map_err(|e| e.to_string())
            };
            // The first attempt may come before the listener accepts.
            for _ in 0..50 {
                match client.send(request()?).await {
                    Ok(_) => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        Ok::<(), String>(())
    };
    if let Err(error) = run.await {
        eprintln!("the demo's sample accesses failed: {error}");
    }
}
