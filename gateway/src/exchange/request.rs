//! The token request read from its form body: an RFC 8693 token exchange or OIO IDWS REST's
//! `saml-token=` form, with the assertion decoded from base64 or base64url. It only reads what
//! the client sent: verifying the assertion and issuing the token are [`super::TokenExchange`]'s.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::answer::TokenError;
use crate::encoding::form_decode;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const SAML2: &str = "urn:ietf:params:oauth:token-type:saml2";
pub(super) const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// RFC 8693 defines nine parameters; more is not a token request.
const MAX_PARAMETERS: usize = 16;
/// RFC 8693 asks for base64url; OIO IDWS sends base64; padding varies. Accept all of it.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(false),
);

/// What the client asked for, in either form.
#[derive(Debug)]
pub(super) struct ExchangeRequest {
    pub(super) assertion: String,
    pub(super) oio_form: bool,
    pub(super) scope: Option<String>,
    pub(super) audience: Option<String>,
}

impl ExchangeRequest {
    pub(super) fn parse(body: &[u8]) -> Result<ExchangeRequest, TokenError> {
        let pairs = form_decode(body).ok_or_else(|| {
            TokenError::new(
                "invalid_request",
                "malformed-form",
                "the form body is not valid",
            )
        })?;
        if pairs.len() > MAX_PARAMETERS {
            return Err(TokenError::new(
                "invalid_request",
                "too-many-parameters",
                format!("a token request has at most {MAX_PARAMETERS} parameters"),
            ));
        }
        // RFC 6749 §3.2: parameters must not be repeated.
        let mut seen = std::collections::HashSet::new();
        if let Some((name, _)) = pairs.iter().find(|(name, _)| !seen.insert(name.as_str())) {
            return Err(TokenError::new(
                "invalid_request",
                "repeated-parameter",
                format!("{name} is given more than once"),
            ));
        }
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let scope = get("scope");
        let audience = get("audience").or_else(|| get("resource"));
        match (get("saml-token"), get("grant_type")) {
            (Some(_), Some(_)) => Err(TokenError::new(
                "invalid_request",
                "ambiguous-request",
                "send either saml-token or an RFC 8693 grant, not both",
            )),
            (Some(assertion), None) => Ok(ExchangeRequest {
                assertion,
                oio_form: true,
                scope,
                audience,
            }),
            (None, Some(grant)) if grant == TOKEN_EXCHANGE => {
                let assertion = get("subject_token").ok_or_else(|| {
                    TokenError::new(
                        "invalid_request",
                        "missing-subject-token",
                        "subject_token is required",
                    )
                })?;
                match get("subject_token_type").as_deref() {
                    Some(SAML2) => {}
                    Some(_) => {
                        return Err(TokenError::new(
                            "invalid_request",
                            "unsupported-token-type",
                            format!("subject_token_type must be {SAML2}"),
                        ));
                    }
                    None => {
                        return Err(TokenError::new(
                            "invalid_request",
                            "missing-subject-token-type",
                            "subject_token_type is required",
                        ));
                    }
                }
                if let Some(requested) = get("requested_token_type")
                    && requested != ACCESS_TOKEN
                    && requested != JWT
                {
                    return Err(TokenError::new(
                        "invalid_request",
                        "unsupported-token-type",
                        format!("requested_token_type can only be {ACCESS_TOKEN}"),
                    ));
                }
                if get("actor_token").is_some() {
                    return Err(TokenError::new(
                        "invalid_request",
                        "delegation-not-supported",
                        "actor_token (delegation) is not supported",
                    ));
                }
                Ok(ExchangeRequest {
                    assertion,
                    oio_form: false,
                    scope,
                    audience,
                })
            }
            (None, Some(_)) => Err(TokenError::new(
                "unsupported_grant_type",
                "unsupported-grant-type",
                format!("only {TOKEN_EXCHANGE} (or the OIO IDWS saml-token form) is supported"),
            )),
            (None, None) => Err(TokenError::new(
                "invalid_request",
                "missing-grant",
                "send grant_type (RFC 8693) or saml-token (OIO IDWS REST)",
            )),
        }
    }
}

/// The assertion's bytes from base64 or base64url, padded or not, line-wrapped or not.
pub(super) fn decode_assertion(text: &str) -> Option<Vec<u8>> {
    let normalized: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|b| match b {
            b'-' => b'+',
            b'_' => b'/',
            other => other,
        })
        .collect();
    LENIENT.decode(normalized).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ExchangeRequest, &'static str> {
        ExchangeRequest::parse(body.as_bytes()).map_err(|e| e.code)
    }

    #[test]
    fn both_request_forms_are_read_and_everything_else_told_apart() {
        let rfc8693 = format!(
            "grant_type={}&subject_token=abc&subject_token_type={}&scope=user%2F*.rs",
            crate::encoding::form_encode(TOKEN_EXCHANGE),
            crate::encoding::form_encode(SAML2)
        );
        let request = parse(&rfc8693).unwrap();
        assert!(!request.oio_form);
        assert_eq!(request.scope.as_deref(), Some("user/*.rs"));
        assert!(parse("saml-token=abc%2B").unwrap().oio_form);
        assert_eq!(parse("saml-token=abc").unwrap().assertion, "abc");

        let too_many = "a=&".repeat(17);
        let cases = [
            ("", "missing-grant"),
            ("grant_type=client_credentials", "unsupported-grant-type"),
            ("saml-token=a&grant_type=x", "ambiguous-request"),
            ("saml-token=a&saml-token=b", "repeated-parameter"),
            (too_many.as_str(), "too-many-parameters"),
            ("saml-token=%zz", "malformed-form"),
        ];
        for (body, code) in cases {
            assert_eq!(parse(body).unwrap_err(), code, "{body}");
        }
        let grant = crate::encoding::form_encode(TOKEN_EXCHANGE);
        assert_eq!(
            parse(&format!("grant_type={grant}&subject_token_type=x")).unwrap_err(),
            "missing-subject-token"
        );
        assert_eq!(
            parse(&format!("grant_type={grant}&subject_token=a")).unwrap_err(),
            "missing-subject-token-type"
        );
        assert_eq!(
            parse(&format!(
                "grant_type={grant}&subject_token=a&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Asaml1"
            ))
            .unwrap_err(),
            "unsupported-token-type"
        );
    }

    #[test]
    fn base64_and_base64url_with_or_without_padding_decode_alike() {
        let data = b"<saml:Assertion>\xff\xfe</saml:Assertion>";
        let standard = base64::engine::general_purpose::STANDARD.encode(data);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data);
        let wrapped = format!("{}\r\n{}", &standard[..8], &standard[8..]);
        for text in [standard, url, wrapped] {
            assert_eq!(decode_assertion(&text).unwrap(), data);
        }
        assert_eq!(decode_assertion("not base64!"), None);
    }
}
