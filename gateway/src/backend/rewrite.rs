//! Rewrites backend URLs to the gateway's public base URL, so clients never see (or follow) the
//! backend's address: `Location`, `Content-Location`, and in Bundles `link[].url`,
//! `entry[].fullUrl` and `entry[].response.location` (FHIR R4 §2.36 Bundle).

use serde_json::Value;

/// Maps URLs below the backend base to the same path below the public base.
#[derive(Debug, Clone)]
pub struct UrlRewriter {
    backend: String,
    public: String,
}

impl UrlRewriter {
    /// Both bases without a trailing slash.
    pub fn new(backend_base: &str, public_base: &str) -> Self {
        Self {
            backend: backend_base.trim_end_matches('/').to_owned(),
            public: public_base.trim_end_matches('/').to_owned(),
        }
    }

    /// The public URL for `url`, if `url` is below the backend base.
    pub fn rewrite(&self, url: &str) -> Option<String> {
        let rest = url.strip_prefix(&self.backend)?;
        if rest.is_empty() || rest.starts_with('/') || rest.starts_with('?') {
            Some(format!("{}{rest}", self.public))
        } else {
            None
        }
    }

    /// Rewrites the URLs of a Bundle in place; returns whether `value` was a Bundle.
    pub fn rewrite_bundle(&self, value: &mut Value) -> bool {
        if value.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return false;
        }
        if let Some(links) = value.get_mut("link").and_then(Value::as_array_mut) {
            for link in links {
                self.rewrite_field(link, "url");
            }
        }
        if let Some(entries) = value.get_mut("entry").and_then(Value::as_array_mut) {
            for entry in entries {
                self.rewrite_field(entry, "fullUrl");
                if let Some(response) = entry.get_mut("response") {
                    self.rewrite_field(response, "location");
                }
            }
        }
        true
    }

    fn rewrite_field(&self, object: &mut Value, field: &str) {
        if let Some(slot) = object.get_mut(field)
            && let Some(rewritten) = slot.as_str().and_then(|url| self.rewrite(url))
        {
            *slot = Value::String(rewritten);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rewriter() -> UrlRewriter {
        UrlRewriter::new(
            "http://10.0.0.5:8080/fhir/R4/",
            "https://fhir.example.dk/fhir",
        )
    }

    #[test]
    fn urls_below_the_backend_base_are_rewritten() {
        let r = rewriter();
        assert_eq!(
            r.rewrite("http://10.0.0.5:8080/fhir/R4/Patient/1")
                .as_deref(),
            Some("https://fhir.example.dk/fhir/Patient/1")
        );
        assert_eq!(
            r.rewrite("http://10.0.0.5:8080/fhir/R4?_getpages=x")
                .as_deref(),
            Some("https://fhir.example.dk/fhir?_getpages=x")
        );
        assert_eq!(
            r.rewrite("http://10.0.0.5:8080/fhir/R4").as_deref(),
            Some("https://fhir.example.dk/fhir")
        );
        assert_eq!(r.rewrite("http://10.0.0.5:8080/fhir/R44/Patient"), None);
        assert_eq!(r.rewrite("http://other/fhir/R4/Patient/1"), None);
    }

    #[test]
    fn bundle_links_full_urls_and_locations_are_rewritten() {
        let mut bundle = json!({
            "resourceType": "Bundle",
            "link": [{ "relation": "self", "url": "http://10.0.0.5:8080/fhir/R4/Observation?patient=1" }],
            "entry": [
                { "fullUrl": "http://10.0.0.5:8080/fhir/R4/Observation/1", "resource": { "resourceType": "Observation", "id": "1" } },
                { "fullUrl": "urn:uuid:1234", "response": { "status": "201", "location": "http://10.0.0.5:8080/fhir/R4/Patient/2/_history/1" } }
            ]
        });
        assert!(rewriter().rewrite_bundle(&mut bundle));
        assert_eq!(
            bundle["link"][0]["url"],
            "https://fhir.example.dk/fhir/Observation?patient=1"
        );
        assert_eq!(
            bundle["entry"][0]["fullUrl"],
            "https://fhir.example.dk/fhir/Observation/1"
        );
        assert_eq!(bundle["entry"][1]["fullUrl"], "urn:uuid:1234");
        assert_eq!(
            bundle["entry"][1]["response"]["location"],
            "https://fhir.example.dk/fhir/Patient/2/_history/1"
        );
    }

    #[test]
    fn non_bundles_are_left_alone() {
        let mut patient = json!({ "resourceType": "Patient", "link": [{ "url": "http://10.0.0.5:8080/fhir/R4/x" }] });
        assert!(!rewriter().rewrite_bundle(&mut patient));
        assert_eq!(patient["link"][0]["url"], "http://10.0.0.5:8080/fhir/R4/x");
    }
}
