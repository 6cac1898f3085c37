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
    /// `aud`, as the token names it (one or several).
    pub(crate) audiences: Vec<String>,
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
    /// `aud`: whom the token is for.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
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
    /// Who this caller is, as one value that changes when any part of it does: the issuer and
    /// subject, the OAuth client, the patient context, the `fhirUser` and the client
    /// certificate (none on the citizen listener). Something handed to one caller (a paging
    /// link) is bound to it; a new token for the same caller in the same context keeps it.
    pub fn fingerprint(&self) -> String {
        let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let certificate = self
            .peer
            .has_certificate()
            .then(|| self.peer.thumbprint_sha256());
        for part in [
            Some(self.issuer.as_str()),
            Some(self.subject.as_str()),
            self.client_id.as_deref(),
            self.patient.as_deref(),
            self.fhir_user.as_deref(),
            certificate,
        ] {
            // Length-prefixed, and absent apart from empty: no two callers run together.
            match part {
                Some(part) => {
                    digest.update(&(part.len() as u64 + 1).to_be_bytes());
                    digest.update(part.as_bytes());
                }
                None => digest.update(&0u64.to_be_bytes()),
            }
        }
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            digest.finish().as_ref(),
        )
    }
    /// The patient the token's user is, when it is a citizen's own token (`fhirUser` names the
    /// Patient of its `patient` context): not a professional launched in her context.
    pub fn own_patient(&self) -> Option<&str> {
        self.policy_subject(Channel::Professional)
            .is_the_patient()
            .then_some(self.patient.as_deref())
            .flatten()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal {
            subject: "anne".into(),
            issuer: "https://issuer".into(),
            client_id: Some("app".into()),
            jti: Some("1".into()),
            scopes: ScopeSet::parse("patient/*.rs"),
            patient: Some("pat-anne".into()),
            fhir_user: None,
            certificate_bound: false,
            expires_at: 1,
            roles: Vec::new(),
            purpose_of_use: None,
            audiences: Vec::new(),
            identity: Identity::default(),
            peer: Arc::new(PeerIdentity::without_certificate()),
        }
    }

    #[test]
    fn the_fingerprint_changes_with_who_and_in_which_context_but_not_with_the_token() {
        let anne = principal();
        let renewed = Principal {
            jti: Some("2".into()),
            expires_at: 2,
            scopes: ScopeSet::parse("patient/Observation.rs"),
            ..principal()
        };
        assert_eq!(anne.fingerprint(), renewed.fingerprint());
        let others = [
            Principal {
                subject: "bo".into(),
                ..principal()
            },
            Principal {
                issuer: "https://other".into(),
                ..principal()
            },
            Principal {
                client_id: None,
                ..principal()
            },
            Principal {
                patient: Some("pat-bo".into()),
                ..principal()
            },
            Principal {
                fhir_user: Some("Patient/pat-anne".into()),
                ..principal()
            },
            // Parts that run together differently are different callers.
            Principal {
                subject: "ann".into(),
                client_id: Some("eapp".into()),
                ..principal()
            },
            Principal {
                client_id: Some(String::new()),
                ..principal()
            },
        ];
        for other in others {
            assert_ne!(anne.fingerprint(), other.fingerprint(), "{other:?}");
        }
    }
}
