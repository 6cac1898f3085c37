//! SMART App Launch scopes, v1 and v2 (SMART App Launch 2.2 §3 "Scopes and Launch Context").
//!
//! `<context>/<type|*>.<permissions>[?query]` where context is `patient`, `user` or `system`;
//! v1 permissions are `read`, `write` and `*`, v2 permissions are the letters `c r u d s` in
//! that order. Scopes that are not resource scopes (`openid`, `launch/patient`, ...) or that do
//! not parse are kept out of the set: an unreadable scope grants nothing.

use std::fmt;

use crate::resource_type::ResourceType;

/// Who the scope speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeContext {
    /// `patient/`: data about the patient in the token's `patient` claim.
    Patient,
    /// `user/`: whatever the user may see.
    User,
    /// `system/`: a backend service with no user.
    System,
}

/// A set of SMART v2 permission letters (`c r u d s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Permissions(u8);

impl Permissions {
    /// `c`: create.
    pub const CREATE: Permissions = Permissions(1);
    /// `r`: read and vread.
    pub const READ: Permissions = Permissions(2);
    /// `u`: update and patch.
    pub const UPDATE: Permissions = Permissions(4);
    /// `d`: delete.
    pub const DELETE: Permissions = Permissions(8);
    /// `s`: search and history.
    pub const SEARCH: Permissions = Permissions(16);

    /// Whether every permission in `other` is in `self`.
    pub fn contains(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets together.
    pub fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    fn parse(text: &str) -> Option<Permissions> {
        let all = Permissions(31);
        match text {
            "read" => return Some(Self::READ.union(Self::SEARCH)),
            "write" => return Some(Self::CREATE.union(Self::UPDATE).union(Self::DELETE)),
            "*" => return Some(all),
            _ => {}
        }
        // v2: letters in the order c r u d s, each at most once, at least one.
        let mut next = 0;
        let mut permissions = Permissions::default();
        for ch in text.chars() {
            let index = "cruds".find(ch)?;
            if index < next {
                return None;
            }
            permissions = permissions.union(Permissions(1 << index));
            next = index + 1;
        }
        (permissions.0 != 0).then_some(permissions)
    }
}

/// Which resource types a scope covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeResource {
    /// `*`
    Any,
    /// One type.
    Type(ResourceType),
}

/// One parsed SMART resource scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    context: ScopeContext,
    resource: ScopeResource,
    permissions: Permissions,
    query: Option<String>,
    text: String,
}

impl Scope {
    /// Parses one scope token; `None` when it is not a well-formed resource scope.
    pub fn parse(text: &str) -> Option<Scope> {
        let (context, rest) = text.split_once('/')?;
        let context = match context {
            "patient" => ScopeContext::Patient,
            "user" => ScopeContext::User,
            "system" => ScopeContext::System,
            _ => return None,
        };
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) if !query.is_empty() => (rest, Some(query.to_owned())),
            Some(_) => return None,
            None => (rest, None),
        };
        let (resource, permissions) = rest.rsplit_once('.')?;
        let resource = match resource {
            "*" => ScopeResource::Any,
            name => ScopeResource::Type(ResourceType::parse(name)?),
        };
        Some(Scope {
            context,
            resource,
            permissions: Permissions::parse(permissions)?,
            query,
            text: text.to_owned(),
        })
    }

    /// The context (`patient`, `user`, `system`).
    pub fn context(&self) -> ScopeContext {
        self.context
    }
    /// The permissions granted.
    pub fn permissions(&self) -> Permissions {
        self.permissions
    }
    /// The v2 granular query restriction (`?category=...`), if any.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
    /// The scope as written in the token.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this scope is for every type (`*`).
    pub fn covers_every_type(&self) -> bool {
        self.resource == ScopeResource::Any
    }

    /// Whether this scope names `resource_type` (or `*`) and grants all of `needed`.
    pub fn covers(&self, resource_type: Option<ResourceType>, needed: Permissions) -> bool {
        let type_matches = match (self.resource, resource_type) {
            (ScopeResource::Any, _) => true,
            (ScopeResource::Type(granted), Some(asked)) => granted == asked,
            (ScopeResource::Type(_), None) => false,
        };
        type_matches && self.permissions.contains(needed)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The resource scopes of one token, parsed once when the token is verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    scopes: Vec<Scope>,
}

impl ScopeSet {
    /// Parses a space-separated `scope` claim; what is not a resource scope is left out.
    pub fn parse(claim: &str) -> ScopeSet {
        Self::from_tokens(claim.split_ascii_whitespace())
    }

    /// Parses scope tokens given one by one (e.g. an `scp` array claim).
    pub fn from_tokens<'a>(tokens: impl IntoIterator<Item = &'a str>) -> ScopeSet {
        ScopeSet {
            scopes: tokens.into_iter().filter_map(Scope::parse).collect(),
        }
    }

    /// The parsed resource scopes.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.scopes.iter()
    }

    /// Whether no resource scope was granted.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(letters: &str) -> Permissions {
        Permissions::parse(letters).unwrap()
    }

    #[test]
    fn v1_and_v2_permissions_parse() {
        let cases: &[(&str, &str)] = &[
            ("read", "rs"),
            ("write", "cud"),
            ("*", "cruds"),
            ("rs", "rs"),
            ("c", "c"),
            ("cruds", "cruds"),
            ("cud", "cud"),
        ];
        for (text, letters) in cases {
            let expected = letters
                .chars()
                .map(|c| Permissions(1 << "cruds".find(c).unwrap()))
                .fold(Permissions::default(), Permissions::union);
            assert_eq!(Permissions::parse(text), Some(expected), "{text}");
        }
    }

    #[test]
    fn malformed_permissions_are_rejected() {
        for text in ["", "sr", "rr", "x", "crudsx", "Read", "READ", "rw"] {
            assert_eq!(Permissions::parse(text), None, "{text}");
        }
    }

    #[test]
    fn scopes_parse_with_context_type_and_query() {
        let scope = Scope::parse("patient/Observation.rs?category=laboratory").unwrap();
        assert_eq!(scope.context(), ScopeContext::Patient);
        assert_eq!(scope.query(), Some("category=laboratory"));
        assert!(scope.covers(ResourceType::parse("Observation"), perms("r")));
        assert!(!scope.covers(ResourceType::parse("Observation"), perms("c")));
        assert!(!scope.covers(ResourceType::parse("Condition"), perms("r")));

        let any = Scope::parse("system/*.cruds").unwrap();
        assert_eq!(any.context(), ScopeContext::System);
        assert!(any.covers(None, perms("s")));
        assert!(any.covers(ResourceType::parse("Patient"), perms("d")));
    }

    #[test]
    fn non_resource_and_broken_scopes_grant_nothing() {
        let set = ScopeSet::parse(
            "openid fhirUser launch/patient offline_access patient/patient.read user/Observation \
             admin/Observation.read user/Observation.rs? user/Observation.sr",
        );
        assert!(set.is_empty(), "{set:?}");
    }

    #[test]
    fn scope_set_keeps_resource_scopes() {
        let set = ScopeSet::parse("openid user/Patient.read  user/Observation.cruds\tlaunch");
        let texts: Vec<&str> = set.iter().map(Scope::as_str).collect();
        assert_eq!(texts, ["user/Patient.read", "user/Observation.cruds"]);
    }
}
