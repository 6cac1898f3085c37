//! Signed paging links. A backend's next and previous links say how IT continues a search:
//! an offset the gateway could narrow again, but also a cursor or a search id (`_getpages`)
//! that says nothing about whose data the next page holds. So no backend link reaches a
//! client: each is handed out as `<base>/_page/<token>`, where the token (signed with the
//! gateway's key) holds the backend's link, the request the client made and was allowed, who
//! the client is and when the link expires. Following one, the gateway checks the signature,
//! the client and the time, decides the ORIGINAL request again for the caller as they are now
//! (scopes, consent, compartment), and sends the backend its own link: the page is checked and
//! audited as the search it continues.
//!
//! A token is `base64url(claims JSON) "." base64url(HMAC-SHA-256)`; the claims are not secret
//! (they hold the backend's link, which says what the backend was asked) but cannot be
//! changed. Who the client is enters as a digest made with the key ([`Pager::open`]'s
//! `holder`), so the claims do not tell who it is.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, PagingConfig};

/// The path segment below a FHIR base that paging links live under.
pub const PAGE_SEGMENT: &str = "_page";

/// The shortest key accepted, in bytes.
const MIN_KEY_BYTES: usize = 32;
/// The longest token opened; anything longer is not one of ours.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Domain separation: a MAC over these bytes is a paging link and nothing else.
const CONTEXT: &[u8] = b"portvagt paging link v1\0";

/// The request a search began with, as the client made it and the policy allowed it (before
/// the gateway narrowed it): what a page is decided as again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageOrigin {
    /// The FHIR base on the gateway (which route).
    #[serde(rename = "b")]
    pub base: String,
    /// `POST _search`: `query` is its form; otherwise a `GET` with this query.
    #[serde(rename = "s", default, skip_serializing_if = "is_false")]
    pub post_search: bool,
    /// The path relative to the base (`Observation`, `Patient/1/$everything`).
    #[serde(rename = "p")]
    pub relative: String,
    /// The query string (or form) as the client sent it, `_format` taken out.
    #[serde(rename = "q", default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Who may follow the link: a digest of the caller (`Principal::fingerprint`).
    #[serde(rename = "h")]
    pub holder: String,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// An opened link: the request it continues, and the backend's link to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageFollow {
    /// What the page is decided as.
    pub origin: PageOrigin,
    /// The backend's link below its base (`/Observation?...`, `?_getpages=...`).
    pub link: String,
    /// What the link is to.
    pub kind: LinkKind,
}

/// What a signed link is to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum LinkKind {
    /// Another page of a searchset or history.
    #[default]
    #[serde(rename = "p")]
    Page,
    /// A Bulk Data export's status (polled; `DELETE` cancels the export).
    #[serde(rename = "s")]
    ExportStatus,
    /// A Bulk Data export's file (NDJSON).
    #[serde(rename = "f")]
    ExportFile,
}

impl LinkKind {
    fn is_page(&self) -> bool {
        *self == LinkKind::Page
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    #[serde(rename = "o")]
    origin: PageOrigin,
    #[serde(rename = "l")]
    link: String,
    #[serde(rename = "e")]
    expires: u64,
    #[serde(rename = "k", default, skip_serializing_if = "LinkKind::is_page")]
    kind: LinkKind,
}

/// Why a link is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PageLinkError {
    /// Not made by this gateway, or changed since (403).
    #[error("this paging link was not made by this gateway, or it was changed")]
    Invalid,
    /// Made for another client, or for another FHIR base (403).
    #[error("this paging link was given to another client")]
    NotYours,
    /// Past its lifetime (410): repeat the search.
    #[error("this paging link has expired: repeat the search")]
    Expired,
    /// Only `GET` (or `HEAD`) follows a link, and `DELETE` cancels an export (405).
    #[error(
        "a paging link is followed with GET (an export's status link is cancelled with DELETE)"
    )]
    Method,
    /// A link is followed as it was given: parameters added to it would be ignored (400).
    #[error("a paging link is followed as it was given, without parameters")]
    Parameters,
}

impl PageLinkError {
    /// The stable detail code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Invalid => "page-link-invalid",
            Self::NotYours => "page-link-not-yours",
            Self::Expired => "page-link-expired",
            Self::Method => "page-link-method",
            Self::Parameters => "page-link-parameters",
        }
    }
}

/// Makes and opens paging links with one key.
pub struct Pager {
    key: hmac::Key,
    lifetime: Duration,
    /// How long an export's status and file links live (exports take long).
    export_lifetime: Duration,
    /// The key came from a file (replicas can share it), not made at start.
    from_file: bool,
}

impl std::fmt::Debug for Pager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pager")
            .field("lifetime", &self.lifetime)
            .field("export_lifetime", &self.export_lifetime)
            .field("from_file", &self.from_file)
            .finish_non_exhaustive()
    }
}

impl Pager {
    /// A pager with `key` (at least 32 bytes) whose links, an export's too, live `lifetime`.
    pub fn new(key: &[u8], lifetime: Duration) -> Result<Self, String> {
        if key.len() < MIN_KEY_BYTES {
            return Err(format!(
                "the key has {} bytes; at least {MIN_KEY_BYTES} are needed",
                key.len()
            ));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            lifetime,
            export_lifetime: lifetime,
            from_file: false,
        })
    }

    /// The pager `[paging]` describes: the key from `key_file`, or a fresh random one.
    pub fn from_config(config: &PagingConfig) -> Result<Self, ConfigError> {
        let lifetime = config.link_lifetime;
        for (field, value) in [
            ("paging.link_lifetime", lifetime),
            ("paging.export_link_lifetime", config.export_link_lifetime),
        ] {
            if value < Duration::from_secs(1) || value > Duration::from_secs(7 * 24 * 3600) {
                return Err(ConfigError::new(field, "must be between 1 s and 7 days"));
            }
        }
        let mut pager = match &config.key_file {
            None => {
                let mut key = [0u8; MIN_KEY_BYTES];
                aws_lc_rs::rand::fill(&mut key)
                    .map_err(|_| ConfigError::new("paging", "no random key could be made"))?;
                Self::new(&key, lifetime).map_err(|e| ConfigError::new("paging", e))?
            }
            Some(path) => {
                let field = "paging.key_file";
                let bytes = std::fs::read(path).map_err(|e| {
                    ConfigError::new(field, format!("cannot read {}: {e}", path.display()))
                })?;
                let mut pager = Self::new(&key_bytes(&bytes), lifetime)
                    .map_err(|e| ConfigError::new(field, e))?;
                pager.from_file = true;
                pager
            }
        };
        pager.export_lifetime = config.export_link_lifetime;
        Ok(pager)
    }

    /// Whether the key came from a file, so other replicas with that file accept the links.
    pub fn shares_key(&self) -> bool {
        self.from_file
    }

    /// A token for the backend's `link` (below its base) continuing `origin`, good from now
    /// for the lifetime; none if it would be longer than a token is allowed to be.
    pub fn mint(&self, origin: &PageOrigin, link: &str, kind: LinkKind) -> Option<String> {
        self.mint_at(origin, link, kind, unix_now())
    }

    /// [`Pager::mint`] at `now` (seconds since the epoch).
    pub fn mint_at(
        &self,
        origin: &PageOrigin,
        link: &str,
        kind: LinkKind,
        now: u64,
    ) -> Option<String> {
        let lifetime = match kind {
            LinkKind::Page => self.lifetime,
            LinkKind::ExportStatus | LinkKind::ExportFile => self.export_lifetime,
        };
        // Who holds it, as a digest only this key makes: the claims can be read by anyone who
        // sees the link, and a plain digest of a token's subject could be reversed.
        let origin = PageOrigin {
            holder: self.keyed_holder(&origin.holder),
            ..origin.clone()
        };
        let claims = Claims {
            origin,
            link: link.to_owned(),
            expires: now.saturating_add(lifetime.as_secs()),
            kind,
        };
        // Serialising plain strings and numbers cannot fail.
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let tag = self.tag(payload.as_bytes());
        let token = format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        (token.len() <= MAX_TOKEN_BYTES).then_some(token)
    }

    /// Opens `token` for the caller whose fingerprint is `holder`, under the FHIR `base` it was
    /// sent to.
    pub fn open(&self, token: &str, base: &str, holder: &str) -> Result<PageFollow, PageLinkError> {
        self.open_at(token, base, holder, unix_now())
    }

    /// [`Pager::open`] at `now` (seconds since the epoch).
    pub fn open_at(
        &self,
        token: &str,
        base: &str,
        holder: &str,
        now: u64,
    ) -> Result<PageFollow, PageLinkError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(PageLinkError::Invalid);
        }
        let (payload, tag) = token.split_once('.').ok_or(PageLinkError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| PageLinkError::Invalid)?;
        let mut signed = CONTEXT.to_vec();
        signed.extend_from_slice(payload.as_bytes());
        hmac::verify(&self.key, &signed, &tag).map_err(|_| PageLinkError::Invalid)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(PageLinkError::Invalid)?;
        if claims.origin.holder != self.keyed_holder(holder) || claims.origin.base != base {
            return Err(PageLinkError::NotYours);
        }
        if now >= claims.expires {
            return Err(PageLinkError::Expired);
        }
        Ok(PageFollow {
            origin: PageOrigin {
                holder: holder.to_owned(),
                ..claims.origin
            },
            link: claims.link,
            kind: claims.kind,
        })
    }

    fn keyed_holder(&self, holder: &str) -> String {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(b"portvagt paging holder v1\0");
        context.update(holder.as_bytes());
        URL_SAFE_NO_PAD.encode(&context.sign().as_ref()[..16])
    }

    fn tag(&self, payload: &[u8]) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(CONTEXT);
        context.update(payload);
        context.sign()
    }
}

/// A key file's bytes: base64 text if it is that, else the bytes as they are.
fn key_bytes(file: &[u8]) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(file).map(str::trim) else {
        return file.to_vec();
    };
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
        .ok()
        .filter(|key| !key.is_empty())
        .unwrap_or_else(|| file.to_vec())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pager() -> Pager {
        Pager::new(&[7u8; 32], Duration::from_secs(600)).unwrap()
    }

    fn origin() -> PageOrigin {
        PageOrigin {
            base: "/fhir".into(),
            post_search: false,
            relative: "Observation".into(),
            query: Some("code=1234-5&_count=2".into()),
            holder: "anne's app".into(),
        }
    }

    const LINK: &str = "?_getpages=9f1c&_getpagesoffset=2&_count=2";

    #[test]
    fn a_link_opens_for_its_holder_under_its_base_until_it_expires() {
        let token = pager()
            .mint_at(&origin(), LINK, LinkKind::Page, 1_000)
            .unwrap();
        let opened = pager()
            .open_at(&token, "/fhir", "anne's app", 1_599)
            .unwrap();
        assert_eq!(opened.origin, origin());
        assert_eq!(opened.link, LINK);
        assert_eq!(
            pager().open_at(&token, "/fhir", "anne's app", 1_600),
            Err(PageLinkError::Expired)
        );
        assert_eq!(
            pager().open_at(&token, "/fhir", "bo's app", 1_001),
            Err(PageLinkError::NotYours)
        );
        assert_eq!(
            pager().open_at(&token, "/fhir/regionh", "anne's app", 1_001),
            Err(PageLinkError::NotYours)
        );
    }

    #[test]
    fn an_export_link_says_what_it_is_to_and_lives_longer() {
        let mut pager = pager();
        pager.export_lifetime = Duration::from_secs(3_600);
        for kind in [LinkKind::Page, LinkKind::ExportStatus, LinkKind::ExportFile] {
            let token = pager.mint_at(&origin(), LINK, kind, 1_000).unwrap();
            let opened = pager.open_at(&token, "/fhir", "anne's app", 1_599).unwrap();
            assert_eq!(opened.kind, kind);
            let later = pager.open_at(&token, "/fhir", "anne's app", 2_000);
            assert_eq!(later.is_ok(), kind != LinkKind::Page, "{kind:?}");
        }
    }

    #[test]
    fn the_claims_do_not_tell_who_holds_the_link() {
        let token = pager()
            .mint_at(&origin(), LINK, LinkKind::Page, 1_000)
            .unwrap();
        let payload = token.split_once('.').unwrap().0;
        let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert!(!claims.contains("anne"), "{claims}");
        // Another key makes another digest of the same holder.
        let other = Pager::new(&[8u8; 32], Duration::from_secs(600)).unwrap();
        assert_ne!(
            pager().keyed_holder("anne's app"),
            other.keyed_holder("anne's app")
        );
    }

    #[test]
    fn a_changed_or_foreign_link_is_refused() {
        let token = pager()
            .mint_at(&origin(), LINK, LinkKind::Page, 1_000)
            .unwrap();
        let (payload, tag) = token.split_once('.').unwrap();
        // Each byte of the payload or the tag changed: refused.
        for at in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            if bytes[at] == b'.' {
                continue;
            }
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).unwrap();
            if changed == token {
                continue;
            }
            assert_eq!(
                pager().open_at(&changed, "/fhir", "anne's app", 1_001),
                Err(PageLinkError::Invalid),
                "{changed}"
            );
        }
        // Claims of one's own choosing, with the old tag or none: refused.
        let mut forged: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        forged["o"]["h"] = "bo's app".into();
        let forged = URL_SAFE_NO_PAD.encode(forged.to_string());
        for token in [
            format!("{forged}.{tag}"),
            forged.clone(),
            format!("{forged}."),
        ] {
            assert_eq!(
                pager().open_at(&token, "/fhir", "bo's app", 1_001),
                Err(PageLinkError::Invalid)
            );
        }
        // Another key's link, garbage, and a huge token: refused.
        let other = Pager::new(&[8u8; 32], Duration::from_secs(600)).unwrap();
        let theirs = other
            .mint_at(&origin(), LINK, LinkKind::Page, 1_000)
            .unwrap();
        // A backend link too long for a token makes none (the link is not handed out).
        assert_eq!(
            pager().mint_at(&origin(), &"x".repeat(MAX_TOKEN_BYTES), LinkKind::Page, 0),
            None
        );
        for token in [
            theirs,
            "x".into(),
            ".".into(),
            "a".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert_eq!(
                pager().open_at(&token, "/fhir", "anne's app", 1_001),
                Err(PageLinkError::Invalid)
            );
        }
    }

    #[test]
    fn a_link_is_a_url_path_segment_as_it_is() {
        let token = pager()
            .mint_at(
                &origin(),
                "/Observation?patient=a%2Fb&x=æ",
                LinkKind::Page,
                0,
            )
            .unwrap();
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'),
            "{token}"
        );
    }

    #[test]
    fn keys_are_read_as_base64_or_raw_and_must_be_long_enough() {
        assert_eq!(key_bytes(STANDARD.encode([1u8; 32]).as_bytes()), [1u8; 32]);
        assert_eq!(
            key_bytes(format!("{}\n", URL_SAFE_NO_PAD.encode([2u8; 40])).as_bytes()),
            [2u8; 40]
        );
        assert_eq!(key_bytes(&[0xffu8; 33]), [0xffu8; 33]);
        assert!(Pager::new(&[1u8; 31], Duration::from_secs(1)).is_err());
        let short = PagingConfig {
            link_lifetime: Duration::from_millis(10),
            ..PagingConfig::default()
        };
        assert_eq!(
            Pager::from_config(&short).unwrap_err().field,
            "paging.link_lifetime"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("paging.key");
        std::fs::write(&file, "too short").unwrap();
        let config = PagingConfig {
            key_file: Some(file.clone()),
            link_lifetime: Duration::from_secs(60),
            ..PagingConfig::default()
        };
        assert_eq!(
            Pager::from_config(&config).unwrap_err().field,
            "paging.key_file"
        );
        std::fs::write(&file, STANDARD.encode([3u8; 32])).unwrap();
        let pager = Pager::from_config(&config).unwrap();
        assert!(pager.shares_key());
        let twin = Pager::from_config(&config).unwrap();
        let token = pager.mint(&origin(), LINK, LinkKind::Page).unwrap();
        assert!(twin.open(&token, "/fhir", "anne's app").is_ok());
        assert!(
            !Pager::from_config(&PagingConfig::default())
                .unwrap()
                .shares_key()
        );
    }
}
