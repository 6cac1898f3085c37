//! What Portvagt tells clients about its security: the SMART configuration document (SMART
//! App Launch 2.2 §2.1, `/.well-known/smart-configuration`) and the `rest.security` section of
//! the backend's CapabilityStatement (`/metadata`), filled from `[smart]` and, where that is
//! silent, from the authorization server's discovery document.
//!
//! Both never advertise what the gateway or SMART 2.x forbid: PKCE is `S256` only (never
//! `plain`), and capabilities that need an endpoint nobody named are left out.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::auth::remote_jwks::RemoteJwks;
use crate::config::{Config, SmartConfig};

/// The code system of `CapabilityStatement.rest.security.service`.
const SECURITY_SERVICE_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/restful-security-service";
/// SMART's extension carrying the OAuth endpoints in a CapabilityStatement.
const OAUTH_URIS: &str = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris";

/// The grant types SMART defines.
const SMART_GRANTS: &[&str] = &["authorization_code", "client_credentials"];

/// Renders both documents.
#[derive(Debug)]
pub struct SmartDocuments {
    smart: SmartConfig,
    issuer: Option<String>,
    discovery: Option<Arc<RemoteJwks>>,
}

impl SmartDocuments {
    /// Uses `[smart]`; `discovery` is the key source of the SMART issuer when it is found by
    /// discovery (its document fills what `[smart]` leaves out).
    pub fn new(config: &Config, discovery: Option<Arc<RemoteJwks>>) -> SmartDocuments {
        SmartDocuments {
            smart: config.smart.clone(),
            issuer: config.smart_issuer().map(str::to_owned),
            discovery,
        }
    }

    /// The SMART configuration document.
    pub fn configuration(&self) -> Value {
        let discovered = self
            .discovery
            .as_ref()
            .and_then(|remote| remote.discovery_document());
        let found = |name: &str| -> Option<String> {
            discovered
                .as_deref()
                .and_then(|document| document.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let smart = &self.smart;
        let issuer = self.issuer.clone();
        let jwks_uri = smart.jwks_uri.clone().or_else(|| found("jwks_uri"));
        let authorization_endpoint = smart
            .authorization_endpoint
            .clone()
            .or_else(|| found("authorization_endpoint"));
        let token_endpoint = smart
            .token_endpoint
            .clone()
            .or_else(|| found("token_endpoint"));
        let introspection_endpoint = smart
            .introspection_endpoint
            .clone()
            .or_else(|| found("introspection_endpoint"));
        let revocation_endpoint = found("revocation_endpoint");
        let grant_types = smart.grant_types_supported.clone().unwrap_or_else(|| {
            let from_discovery: Vec<String> = discovered
                .as_deref()
                .and_then(|d| d.get("grant_types_supported"))
                .and_then(Value::as_array)
                .map(|grants| {
                    grants
                        .iter()
                        .filter_map(Value::as_str)
                        .filter(|grant| SMART_GRANTS.contains(grant))
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            if from_discovery.is_empty() {
                strings(SMART_GRANTS)
            } else {
                from_discovery
            }
        });
        let auth_methods = discovered
            .as_deref()
            .and_then(|d| d.get("token_endpoint_auth_methods_supported"))
            .cloned()
            .unwrap_or_else(|| json!(["private_key_jwt", "tls_client_auth"]));
        let mut capabilities = smart.capabilities.clone().unwrap_or_else(|| {
            strings(&[
                "launch-standalone",
                "client-public",
                "client-confidential-asymmetric",
                "context-standalone-patient",
                "permission-patient",
                "permission-user",
                "permission-v1",
                "permission-v2",
                "sso-openid-connect",
            ])
        });
        // A capability whose endpoint is unknown would send clients to nowhere.
        capabilities.retain(|capability| match capability.as_str() {
            "launch-standalone" | "launch-ehr" => authorization_endpoint.is_some(),
            "sso-openid-connect" => issuer.is_some() && jwks_uri.is_some(),
            _ => true,
        });
        let mut document = json!({
            "issuer": issuer,
            "jwks_uri": jwks_uri,
            "authorization_endpoint": authorization_endpoint,
            "token_endpoint": token_endpoint,
            "introspection_endpoint": introspection_endpoint,
            "revocation_endpoint": revocation_endpoint,
            "grant_types_supported": grant_types,
            "token_endpoint_auth_methods_supported": auth_methods,
            "scopes_supported": smart.scopes_supported.clone().unwrap_or_else(|| strings(&[
                "openid", "fhirUser", "launch/patient", "patient/*.rs", "user/*.cruds", "system/*.cruds",
            ])),
            "response_types_supported": ["code"],
            "capabilities": capabilities,
            "code_challenge_methods_supported": ["S256"],
        });
        if let Some(object) = document.as_object_mut() {
            object.retain(|_, value| !value.is_null());
        }
        document
    }

    /// `CapabilityStatement.rest.security` describing the gateway: SMART-on-FHIR over mutual
    /// TLS, with the OAuth endpoints.
    pub fn capability_security(&self) -> Value {
        let configuration = self.configuration();
        let mut uris = Vec::new();
        for (name, member) in [
            ("token", "token_endpoint"),
            ("authorize", "authorization_endpoint"),
            ("introspect", "introspection_endpoint"),
            ("revoke", "revocation_endpoint"),
        ] {
            if let Some(uri) = configuration.get(member).and_then(Value::as_str) {
                uris.push(json!({ "url": name, "valueUri": uri }));
            }
        }
        json!({
            "cors": false,
            "service": [
                { "coding": [{ "system": SECURITY_SERVICE_SYSTEM, "code": "SMART-on-FHIR" }], "text": "OAuth2 using SMART-on-FHIR profile" },
                { "coding": [{ "system": SECURITY_SERVICE_SYSTEM, "code": "Certificates" }], "text": "Mutual TLS with a client certificate" },
            ],
            "extension": [{ "url": OAUTH_URIS, "extension": uris }],
            "description": "Requests need a client certificate (mutual TLS) and an OAuth 2.0 access token (Authorization: Bearer), with SMART App Launch scopes; this CapabilityStatement and the SMART configuration are read without a token. Tokens bound to the certificate (RFC 8705) are checked against it.",
        })
    }

    /// Replaces `rest[*].security` of a CapabilityStatement with [`Self::capability_security`],
    /// and what it says of the backend behind the gateway: its `implementation.url` (the
    /// backend's own address) becomes the gateway's base clients reach, every other URL below
    /// the backend's base is rewritten to the gateway's, and `software` (which product and
    /// version answers behind it) becomes Portvagt, without a version. A TerminologyCapabilities
    /// (`metadata?mode=terminology`) is told of the same way, without security; an
    /// OperationOutcome is rebuilt of what it says ([`crate::outcome::backend_outcome_rebuilt`]).
    /// Returns the new body, or `None` when `body` is none of these or cannot be read
    /// as strictly as every check reads (a member given twice, serde_json's raw value token,
    /// a `rest` that is no list): such an answer does not leave with the backend's words in it.
    pub fn rewrite_capability_statement(
        &self,
        body: &[u8],
        rewriter: &crate::backend::rewrite::UrlRewriter,
    ) -> Option<Vec<u8>> {
        let mut statement = crate::strict_json::tree_unique(body).ok()?;
        let describes_security = match statement.get("resourceType").and_then(Value::as_str)? {
            "CapabilityStatement" => true,
            "TerminologyCapabilities" => false,
            "OperationOutcome" => {
                return crate::outcome::backend_outcome_rebuilt(
                    &statement,
                    false,
                    rewriter.backend_base(),
                    rewriter.public_base(),
                );
            }
            _ => return None,
        };
        rewrite_urls(&mut statement, rewriter);
        let public_base = rewriter.public_base();
        if let Some(implementation) = statement
            .get_mut("implementation")
            .and_then(Value::as_object_mut)
        {
            implementation.insert("url".to_owned(), Value::String(public_base.to_owned()));
            // Required, and the backend's words for itself ("HAPI FHIR R4 Server").
            implementation.insert(
                "description".to_owned(),
                Value::String("Portvagt FHIR gateway".to_owned()),
            );
        }
        if let Some(statement) = statement.as_object_mut()
            && statement.contains_key("software")
        {
            statement.insert("software".to_owned(), json!({ "name": "Portvagt" }));
        }
        if describes_security && let Some(rests) = statement.get_mut("rest") {
            let security = self.capability_security();
            for rest in rests.as_array_mut()? {
                if let Some(rest) = rest.as_object_mut() {
                    rest.insert("security".to_owned(), security.clone());
                }
            }
        }
        serde_json::to_vec(&statement).ok()
    }
}

/// Every string in `value` that is a URL below the backend's base, made the gateway's.
fn rewrite_urls(value: &mut Value, rewriter: &crate::backend::rewrite::UrlRewriter) {
    match value {
        Value::String(text) => {
            if let Some(public) = rewriter.rewrite(text) {
                *text = public;
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| rewrite_urls(item, rewriter)),
        Value::Object(object) => object
            .values_mut()
            .for_each(|item| rewrite_urls(item, rewriter)),
        _ => {}
    }
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|s| (*s).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn documents(extra: &str) -> SmartDocuments {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[tls]\ncert = \"a\"\nkey = \"b\"\nclient_ca = \"c\"\n\
             [[issuer]]\nissuer = \"https://as.example.dk\"\naudiences = [\"x\"]\njwks_file = \"j\"\n\
             [backend]\nurl = \"http://127.0.0.1:1/fhir\"\n{extra}"
        );
        SmartDocuments::new(&Config::parse(&text).unwrap(), None)
    }

    #[test]
    fn capabilities_without_their_endpoints_are_not_advertised() {
        let bare = documents("").configuration();
        let capabilities = bare["capabilities"].as_array().unwrap();
        assert!(!capabilities.contains(&json!("launch-standalone")));
        assert!(!capabilities.contains(&json!("sso-openid-connect")));
        assert_eq!(bare["code_challenge_methods_supported"], json!(["S256"]));

        let full = documents(
            "[smart]\nauthorization_endpoint = \"https://as.example.dk/auth\"\n\
             token_endpoint = \"https://as.example.dk/token\"\njwks_uri = \"https://as.example.dk/jwks\"\n",
        )
        .configuration();
        let capabilities = full["capabilities"].as_array().unwrap();
        assert!(capabilities.contains(&json!("launch-standalone")));
        assert!(capabilities.contains(&json!("sso-openid-connect")));
        assert_eq!(full["issuer"], "https://as.example.dk");
    }

    #[test]
    fn the_capability_statement_gets_the_gateways_security() {
        let documents = documents("[smart]\ntoken_endpoint = \"https://as.example.dk/token\"\n");
        let body = json!({ "resourceType": "CapabilityStatement",
            "software": { "name": "HAPI FHIR Server", "version": "6.4.0", "releaseDate": "2023-02-16" },
            "implementation": { "description": "x", "url": "http://fhir-backend:8080/fhir" },
            "rest": [{ "mode": "server", "security": { "cors": true, "description": "backend's own" },
                "resource": [{ "type": "Patient",
                    "operation": [{ "name": "everything",
                        "definition": "http://fhir-backend:8080/fhir/OperationDefinition/Patient-everything" }] }] }] });
        let public = "https://fhir.example.dk/fhir";
        let rewriter =
            crate::backend::rewrite::UrlRewriter::new("http://fhir-backend:8080/fhir", public);
        let rewritten: Value = serde_json::from_slice(
            &documents
                .rewrite_capability_statement(body.to_string().as_bytes(), &rewriter)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            rewritten["implementation"],
            json!({ "description": "Portvagt FHIR gateway", "url": public })
        );
        // Neither the backend's product and version nor its address is told.
        assert_eq!(rewritten["software"], json!({ "name": "Portvagt" }));
        assert!(
            !rewritten.to_string().contains("fhir-backend"),
            "{rewritten}"
        );
        assert_eq!(
            rewritten["rest"][0]["resource"][0]["operation"][0]["definition"],
            "https://fhir.example.dk/fhir/OperationDefinition/Patient-everything"
        );
        let security = &rewritten["rest"][0]["security"];
        assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
        assert_eq!(
            security["extension"][0]["extension"][0],
            json!({ "url": "token", "valueUri": "https://as.example.dk/token" })
        );
        assert_eq!(rewritten["rest"][0]["mode"], "server");
        // A TerminologyCapabilities is told of the same way, without security.
        let terminology = json!({ "resourceType": "TerminologyCapabilities",
            "software": { "name": "HAPI FHIR Server", "version": "7.2.0" },
            "implementation": { "url": "http://fhir-backend:8080/fhir" } });
        let told: Value = serde_json::from_slice(
            &documents
                .rewrite_capability_statement(terminology.to_string().as_bytes(), &rewriter)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(told["software"], json!({ "name": "Portvagt" }));
        assert!(!told.to_string().contains("fhir-backend"), "{told}");
        // Anything else does not leave as the backend wrote it: another resource, a `rest`
        // that is no list, a member given twice or hidden in serde_json's raw value token.
        for other in [
            r#"{"resourceType":"Patient"}"#,
            r#"{"resourceType":"CapabilityStatement","rest":{"mode":"server"},"software":{"name":"HAPI"}}"#,
            r#"{"resourceType":"CapabilityStatement","software":{"name":"HAPI"},"software":{"name":"x"}}"#,
            r#"{"resourceType":"CapabilityStatement","software":{"$serde_json::private::RawValue":"{}"}}"#,
            "<html></html>",
        ] {
            assert!(
                documents
                    .rewrite_capability_statement(other.as_bytes(), &rewriter)
                    .is_none(),
                "{other}"
            );
        }
    }
}
