//! The chain's anchor outside the gateway: with every batch that reaches a seal, the shipper
//! also stores, in the audit repository (which takes writes from the gateway alone), one
//! `Provenance` per chain (a spool's id, kept across restarts and renamed pods) whose
//! signature is that seal and whose target is the last event shipped. The spool may be cut back while the gateway is down, shipped.json with it;
//! the anchor says how far the chain reached, signed, somewhere the spool's writer cannot
//! reach. The gateway checks it at start, and `audit verify --repository` checks it too.

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;
use serde_json::{Value, json};

use super::spool::sha256_hex;
use crate::https::HttpsClient;

/// The repository id of the anchor of the chain `chain`.
pub fn anchor_id(chain: &str) -> String {
    let hash = sha256_hex(chain.as_bytes());
    format!("portvagt-chain-{}", &hash[..32])
}

/// The anchor resource: the last seal shipped (`seal`, a JWS), over the last event shipped.
pub fn anchor_resource(
    chain: &str,
    observer: &str,
    seal: &str,
    last_event: &str,
    time: &str,
) -> Value {
    let data = base64::engine::general_purpose::STANDARD.encode(seal);
    json!({
        "resourceType": "Provenance",
        "id": anchor_id(chain),
        "target": [{ "reference": format!("AuditEvent/{last_event}") }],
        "recorded": time,
        "agent": [{ "who": { "display": observer } }],
        "signature": [{
            "type": [{
                "system": "urn:iso-astm:E1762-95:2013",
                "code": "1.2.840.10065.1.12.1.5",
                "display": "Verification Signature",
            }],
            "when": time,
            "who": { "display": observer },
            "sigFormat": "application/jose",
            "data": data,
        }],
    })
}

/// The seal (JWS) an anchor resource carries.
pub fn anchor_seal(resource: &Value) -> Option<String> {
    let data = resource.pointer("/signature/0/data")?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// `GET {base}/{path}` in the audit repository: the resource, `None` when it holds none (404,
/// 410), or why it could not be asked (any other answer, or none).
pub async fn repository_get(
    client: &HttpsClient,
    base: &str,
    path: &str,
) -> Result<Option<Value>, String> {
    let request = Request::get(format!("{}/{path}", base.trim_end_matches('/')))
        .header(header::ACCEPT, "application/fhir+json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let answer = client.send(request).await?;
    match answer.status().as_u16() {
        200..=299 => Ok(Some(
            serde_json::from_slice(answer.body()).unwrap_or_default(),
        )),
        404 | 410 => Ok(None),
        status => Err(format!("the repository answered {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_anchor_carries_its_seal_and_one_id_per_chain() {
        let resource = anchor_resource(
            "c1",
            "portvagt@a",
            "h.p.s",
            &"a".repeat(64),
            "2026-12-03T00:00:00Z",
        );
        assert_eq!(anchor_seal(&resource).as_deref(), Some("h.p.s"));
        assert_eq!(resource["id"], anchor_id("c1"));
        assert_ne!(anchor_id("c1"), anchor_id("c2"));
        assert!(anchor_id("x").len() <= 64, "a FHIR id");
    }
}
