//! The transaction Bundle the shipper sends: each spooled event written into it as the bytes it
//! was spooled as, PUT under its record hash, and the chain's anchor beside them. It only writes
//! the Bundle: which events go, and what the answer means, is [`super::Shipper`]'s.

use bytes::Bytes;
use serde_json::Value;

use super::super::spool::sha256_hex;

/// The transaction Bundle for `events`, written as bytes around each spooled event (not parsed
/// and written again: shipping costs a copy, not a parse per event). Each entry PUTs its event
/// under its record hash, which becomes the event's `id`; a spooled event has no `id` of its own
/// (the gateway writes none), so the id is put first into its object.
pub(super) fn transaction(events: &[(String, Bytes)], anchor: Option<&Value>) -> Vec<u8> {
    let size: usize = events.iter().map(|(_, event)| event.len() + 300).sum();
    let mut out = Vec::with_capacity(size + 64);
    out.extend_from_slice(br#"{"resourceType":"Bundle","type":"transaction","entry":["#);
    for (index, (hash, event)) in events.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        // Hashes are lowercase hex: nothing in them needs escaping.
        out.extend_from_slice(br#"{"fullUrl":"urn:uuid:"#);
        out.extend_from_slice(uuid_from_hash(hash).as_bytes());
        out.extend_from_slice(br#"","resource":{"id":""#);
        out.extend_from_slice(hash.as_bytes());
        out.push(b'"');
        // The event is a JSON object (the spool line parsed): what follows its `{`.
        let rest = event
            .trim_ascii_start()
            .strip_prefix(b"{")
            .unwrap_or(b"}")
            .trim_ascii_start();
        if !rest.starts_with(b"}") {
            out.push(b',');
        }
        out.extend_from_slice(rest);
        out.extend_from_slice(br#","request":{"method":"PUT","url":"AuditEvent/"#);
        out.extend_from_slice(hash.as_bytes());
        out.extend_from_slice(b"\"}}");
    }
    if let Some(anchor) = anchor {
        let id = anchor["id"].as_str().unwrap_or_default();
        let entry = serde_json::json!({
            "fullUrl": format!("urn:uuid:{}", uuid_from_hash(&sha256_hex(id.as_bytes()))),
            "resource": anchor,
            "request": { "method": "PUT", "url": format!("Provenance/{id}") },
        });
        if !events.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(entry.to_string().as_bytes());
    }
    out.extend_from_slice(b"]}");
    out
}

/// A UUID-shaped `fullUrl` for a transaction entry, from the record hash.
fn uuid_from_hash(hash: &str) -> String {
    let h = |range: std::ops::Range<usize>| hash.get(range).unwrap_or("0");
    format!(
        "{}-{}-{}-{}-{}",
        h(0..8),
        h(8..12),
        h(12..16),
        h(16..20),
        h(20..32)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    #[test]
    fn the_transaction_puts_each_event_under_its_hash_unchanged_otherwise() {
        let hash = |c: char| c.to_string().repeat(64);
        let events = vec![
            (
                hash('a'),
                raw(
                    r#"{"resourceType":"AuditEvent","action":"R","agent":[{"who":{"display":"A \"B\""}}]}"#,
                ),
            ),
            (hash('b'), raw("{ }")),
            (hash('c'), raw(r#" {"resourceType":"AuditEvent"}"#)),
        ];
        let bundle: Value = serde_json::from_slice(&transaction(&events, None)).unwrap();
        assert_eq!(bundle["resourceType"], "Bundle");
        assert_eq!(bundle["type"], "transaction");
        let entries = bundle["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        for (entry, (hash, event)) in entries.iter().zip(&events) {
            let mut expected: Value = serde_json::from_slice(event).unwrap();
            expected["id"] = Value::String(hash.clone());
            assert_eq!(entry["resource"], expected);
            assert_eq!(entry["request"]["method"], "PUT");
            assert_eq!(entry["request"]["url"], format!("AuditEvent/{hash}"));
            assert_eq!(
                entry["fullUrl"],
                format!("urn:uuid:{}", uuid_from_hash(hash))
            );
        }
        assert_eq!(
            serde_json::from_slice::<Value>(&transaction(&[], None)).unwrap()["entry"],
            serde_json::json!([])
        );
    }
}
