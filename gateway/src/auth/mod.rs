//! Authentication: who is calling, from the OAuth access token and the client certificate.
//!
//! [`jwt::TokenVerifier`] checks an access token against the configured issuers: a JWT by its
//! signature (RFC 7519, RFC 9068 claims), an opaque token by introspection (RFC 7662), both
//! with RFC 8705 certificate binding, and is the only maker of a [`Principal`] (through
//! [`claims::ClaimMapping`]).

pub mod claims;
pub mod introspection;
/// ES256 signing keys live on the ground floor (the backends sign identity assertions too).
pub use crate::issuer_key;
pub mod jwks;
pub mod jwt;
pub mod principal;
pub mod remote_jwks;
pub mod saml;
mod verified_cache;

pub use jwt::TokenVerifier;
pub use principal::Principal;

/// Why a request could not be authenticated. Each variant is one distinct cause; the detail
/// code ([`AuthnError::code`]) is stable for integrators and metric labels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token was presented")]
    MissingToken,
    /// Not three base64url parts with JSON header and claims.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// `alg` is not on the issuer's allow-list (this includes `none` and HMAC).
    #[error("the token's signing algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// `iss` names no configured issuer.
    #[error("the token's issuer is not trusted")]
    UnknownIssuer,
    /// No key of the issuer matches the token's `kid` and algorithm.
    #[error("the token's signing key is not known")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `aud` names none of the accepted audiences.
    #[error("the token is not meant for this audience")]
    WrongAudience,
    /// A required claim (`exp`, `iss`, `aud`, `sub`) is missing or malformed.
    #[error("the token lacks a required claim")]
    MissingClaim,
    /// A claim has a value it may not have (e.g. a `patient` that is not a FHIR id).
    #[error("a token claim has an invalid value")]
    InvalidClaim,
    /// `cnf` carries a confirmation method other than `x5t#S256` (e.g. DPoP `jkt`).
    #[error("the token's proof-of-possession method is not supported")]
    UnsupportedConfirmation,
    /// `cnf.x5t#S256` does not match the client certificate (RFC 8705 §3).
    #[error("the token is bound to another client certificate")]
    CertificateMismatch,
    /// The issuer requires certificate-bound tokens and this one carries no `cnf.x5t#S256`.
    #[error("the token is not bound to the client certificate")]
    CertificateBindingRequired,
    /// The connection has no verified client certificate.
    #[error("no verified client certificate")]
    NoClientCertificate,
    /// The `Authorization` scheme is not one the gateway accepts (`DPoP`, `Basic`, ...).
    #[error("the authorization scheme is not supported; send a certificate-bound Bearer token")]
    UnsupportedScheme,
    /// Introspection (RFC 7662) says the token is not active: revoked, expired or unknown.
    #[error("the token is not active")]
    Inactive,
    /// The introspection endpoint could not be asked; the token may be fine (answered 503).
    #[error("the authorization server could not be reached to check the token")]
    IntrospectionUnavailable,
    /// The JOSE header names critical extensions (`crit`, RFC 7515 §4.1.11), none of which
    /// the gateway understands.
    #[error("the token's header names critical extensions this gateway does not understand")]
    CriticalHeader,
    /// The header or the claims give a member name twice (RFC 7519 §4 allows refusing them;
    /// parsers differ on which of the two counts).
    #[error("the token's header or claims give a member name twice")]
    DuplicateMember,
    /// The issuer requires RFC 9068 access tokens and the header's `typ` is not `at+jwt`.
    #[error("the token is not an access token (its typ must be at+jwt)")]
    WrongTokenType,
}

impl AuthnError {
    /// The stable detail code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthnError::MissingToken => "missing-token",
            AuthnError::Malformed => "malformed-token",
            AuthnError::AlgorithmNotAllowed => "algorithm-not-allowed",
            AuthnError::UnknownIssuer => "unknown-issuer",
            AuthnError::UnknownKey => "unknown-key",
            AuthnError::BadSignature => "bad-signature",
            AuthnError::Expired => "token-expired",
            AuthnError::NotYetValid => "token-not-yet-valid",
            AuthnError::WrongAudience => "wrong-audience",
            AuthnError::MissingClaim => "missing-claim",
            AuthnError::InvalidClaim => "invalid-claim",
            AuthnError::UnsupportedConfirmation => "unsupported-confirmation",
            AuthnError::CertificateMismatch => "certificate-binding-mismatch",
            AuthnError::CertificateBindingRequired => "certificate-binding-required",
            AuthnError::NoClientCertificate => "no-client-certificate",
            AuthnError::UnsupportedScheme => "unsupported-scheme",
            AuthnError::Inactive => "token-inactive",
            AuthnError::IntrospectionUnavailable => "introspection-unavailable",
            AuthnError::CriticalHeader => "unsupported-critical-header",
            AuthnError::DuplicateMember => "duplicate-member",
            AuthnError::WrongTokenType => "wrong-token-type",
        }
    }
}
