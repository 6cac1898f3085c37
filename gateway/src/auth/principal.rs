//! The authenticated caller.

use std::sync::Arc;

use portvagt_policy::{Caller, Channel, ScopeSet, Subject};

use crate::tls::PeerIdentity;

/// Who is calling: the verified token's claims and the verified client certificate. Only
/// [`crate::auth::TokenVerifier`] makes one, so a `Principal` in the request extensions proves
/// authentication happened.
#[derive(Debug, Clone)]
pub struct Principal {
    pub(crate) subject: String,
    pub(crate) issuer: String,
    pub(crate) client_id: Option<String>,
    pub(crate) jti: Option<String>,
    pub(crate) scopes: ScopeSet,
    pub(crate) patient: Option<String>,
    pub(crate) fhir_user: Option<String>,
    pub(crate) certificate_bound: bool,
    pub(crate) expires_at: u64,
    pub(crate) roles: Vec<String>,
    pub(crate) purpose_of_use: Option<String>,
    pub(crate) identity: Identity,
    pub(crate) peer: Arc<PeerIdentity>,
}

/// Who the user is, as far as the token says (Danish claims from SAML token exchange, or the
/// OpenID Connect `name`): what an audit record names. Empty for system tokens.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// `name`, else `given_name` + `family_name`.
    pub name: Option<String>,
    /// `cpr`: the user's CPR number.
    pub cpr: Option<String>,
    /// `authorization_id`: the Autorisationsregister id.
    pub authorization_id: Option<String>,
    /// `care_provider`: the organisation the user or system acts for.
    pub organisation: Option<Organisation>,
    /// `on_behalf_of`: whom a secretary acts for.
    pub on_behalf_of: Option<String>,
    /// `system_name`: the calling IT system.
    pub system_name: Option<String>,
    /// `break_glass_reason`: why an emergency access sets a consent block aside (the
    /// `X-Portvagt-Break-Glass-Reason` header may say it instead).
    pub break_glass_reason: Option<String>,
}

/// An organisation by identifier kind (`medcom:cvrnumber`, `medcom:sor`, `urn:oid:...`).
#[derive(Debug, Clone)]
pub struct Organisation {
    /// The identifier kind.
    pub kind: String,
    /// The identifier.
    pub id: String,
    /// The name, if given.
    pub name: Option<String>,
}

impl Organisation {
    /// The FHIR identifier system of the identifier kind (DGWS `medcom:*` names, XUA OIDs).
    pub fn system(&self) -> String {
        match self.kind.as_str() {
            "medcom:cvrnumber" => "http://cvr.dk".into(),
            "medcom:sor" => "urn:oid:1.2.208.176.1.1".into(),
            "medcom:ynumber" => "urn:oid:1.2.208.176.1.4".into(),
            "medcom:skscode" => "urn:oid:1.2.208.176.2.3".into(),
            other if other.starts_with("urn:") || other.starts_with("http") => other.into(),
            other => format!("urn:portvagt:identifier:{other}"),
        }
    }
}

impl Principal {
    /// The token's `sub`.
    pub fn subject(&self) -> &str {
        &self.subject
    }
    /// The token's `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
    /// The OAuth client (`client_id`, else `azp`).
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }
    /// The token id (`jti`).
    pub fn jti(&self) -> Option<&str> {
        self.jti.as_deref()
    }
    /// The SMART resource scopes granted.
    pub fn scopes(&self) -> &ScopeSet {
        &self.scopes
    }
    /// The patient launch context (`patient` claim).
    pub fn patient(&self) -> Option<&str> {
        self.patient.as_deref()
    }
    /// The user's FHIR resource (`fhirUser` claim), e.g. `Practitioner/123`.
    pub fn fhir_user(&self) -> Option<&str> {
        self.fhir_user.as_deref()
    }
    /// Whether the token was bound to this connection's client certificate (RFC 8705).
    pub fn certificate_bound(&self) -> bool {
        self.certificate_bound
    }
    /// `exp`, seconds since the epoch.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }
    /// Profession codes (`role` claim; a string or a list).
    pub fn roles(&self) -> &[String] {
        &self.roles
    }
    /// Purpose of use (`purpose_of_use` claim), e.g. `TREATMENT`.
    pub fn purpose_of_use(&self) -> Option<&str> {
        self.purpose_of_use.as_deref()
    }
    /// Who the user is, for audit records.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
    /// What operator rules need to know.
    pub fn caller(&self) -> Caller<'_> {
        Caller {
            roles: &self.roles,
            purpose: self.purpose_of_use.as_deref(),
            client_id: self.client_id.as_deref(),
            organisation: self.peer.cvr(),
        }
    }
    /// The client certificate the call came with.
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }
    /// What the policy engine needs, for a request that came through `channel`.
    pub fn policy_subject<'a>(&'a self, channel: Channel<'a>) -> Subject<'a> {
        Subject {
            scopes: &self.scopes,
            patient: self.patient.as_deref(),
            fhir_user: self.fhir_user.as_deref(),
            channel,
        }
    }
}
