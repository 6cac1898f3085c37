//! Rewrites backend URLs to the gateway's public base URL, so clients never see (or follow) the
//! backend's address: `Location`, `Content-Location`, and in Bundles `link[].url`,
//! `entry[].fullUrl` and `entry[].response.location` (FHIR R4 §2.36 Bundle).

// The parts rewritten as trees are read as strictly as the fallback reads the whole Bundle: a
// raw value token in them would be expanded into other JSON by a plain tree.
use portvagt_policy::raw::{
    BundleField, OrderedRaw, RawBundle, RawEntry, from_body, plain, write_key,
};
use portvagt_policy::strict_json::tree_unique_str;
use serde_json::Value;
use serde_json::value::RawValue;
use serde_json::value::to_raw_value;

/// How a Bundle's paging links are handed out: the relations that page, and the public link
/// made of what follows the backend base in one.
pub struct Paging<'a> {
    /// Whether `self` is handed out as a paging link too (on a page reached by one); every
    /// other relation always is, whatever its spelling.
    pub sign_self: bool,
    /// The public URL for the part of a backend link below the backend base, if one can be
    /// made (else the link is dropped).
    pub link: &'a dyn Fn(&str) -> Option<String>,
}

impl std::fmt::Debug for Paging<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paging")
            .field("sign_self", &self.sign_self)
            .finish_non_exhaustive()
    }
}

/// A Bundle entry as the rewriter reads it: its fields, the resource left whole
/// ([`OrderedRaw`]) or read as its own fields ([`RawEntry`]).
trait EntryFields {
    fn text(&self, key: &str) -> Option<std::borrow::Cow<'_, str>>;
    fn raw(&self, key: &str) -> Option<&RawValue>;
    fn put(&mut self, key: &str, value: Box<RawValue>);
    /// The entry as JSON, `with` a field's value written as the JSON text given; `text`, the
    /// Bundle's, is what it was read from.
    fn write(&self, out: &mut Vec<u8>, with: Option<(&str, &str)>, text: &[u8]);
}

/// Both readings of an entry have the same field methods of their own.
macro_rules! entry_fields {
    ($($reading:ident),*) => {$(
        impl EntryFields for $reading<'_> {
            fn text(&self, key: &str) -> Option<std::borrow::Cow<'_, str>> {
                self.get_str(key)
            }
            fn raw(&self, key: &str) -> Option<&RawValue> {
                self.get(key)
            }
            fn put(&mut self, key: &str, value: Box<RawValue>) {
                self.replace(key, value);
            }
            fn write(&self, out: &mut Vec<u8>, with: Option<(&str, &str)>, text: &[u8]) {
                self.write_json_with(out, with, Some(text));
            }
        }
    )*};
}

entry_fields!(OrderedRaw, RawEntry);

/// Whose data an answer's entries hold, when read along the way: `None` not read,
/// `Some(None)` it takes more than the bytes (read the tree), `Some(Some(ids))` these patients.
pub type FoundPatients = Option<Option<Vec<String>>>;

/// A Bundle rewritten from its bytes ([`UrlRewriter::rewrite_bundle_bytes`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Rewritten {
    /// The Bundle as it leaves.
    pub bytes: Vec<u8>,
    /// Whose data its entries hold, when asked for.
    pub patients: FoundPatients,
}

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

    /// The same backend base, its public URL's origin (`https://host:port`) `from` swapped for
    /// `to`: the answers of a listener clients reach at another address.
    pub fn with_origin(&self, from: &str, to: &str) -> UrlRewriter {
        let public = match self.public.strip_prefix(from) {
            Some(rest) => format!("{to}{rest}"),
            None => self.public.clone(),
        };
        UrlRewriter {
            backend: self.backend.clone(),
            public,
        }
    }

    /// The public URL for `url`, if `url` is below the backend base.
    pub fn rewrite(&self, url: &str) -> Option<String> {
        self.below(url).map(|rest| format!("{}{rest}", self.public))
    }

    /// What follows the backend base in `url` (`/Patient/1`, `?_getpages=x`, or nothing), if
    /// `url` is below it.
    pub fn below<'a>(&self, url: &'a str) -> Option<&'a str> {
        let rest = url.strip_prefix(&self.backend)?;
        (rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')).then_some(rest)
    }

    /// The gateway's public base URL for this backend.
    pub fn public_base(&self) -> &str {
        &self.public
    }

    /// The backend's base, as the rewriter was made with it (no trailing slash).
    pub fn backend_base(&self) -> &str {
        &self.backend
    }

    /// Rewrites the URLs of a Bundle in place; returns whether `value` was a Bundle. With
    /// `paging`, every link but `self` (relations compared without case, RFC 8288; `self` too
    /// when `paging` says so) is replaced by what `paging` makes of the part of it below the
    /// backend base, and dropped if it is not below the base or none can be made (a link the
    /// gateway cannot vouch for does not reach the client).
    pub fn rewrite_bundle(&self, value: &mut Value, paging: Option<&Paging<'_>>) -> bool {
        if value.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return false;
        }
        if let Some(links) = value.get_mut("link").and_then(Value::as_array_mut) {
            self.rewrite_links(links, paging);
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

    /// [`Self::rewrite_bundle`] on a Bundle's bytes, without building its tree: the bytes are
    /// read once into the Bundle's fields and its entries' fields; only `link` and each entry's
    /// `fullUrl` and `response` are parsed, and everything else is written back as it came.
    /// With `patients`, each entry's resource is read as its fields in that same scan, and whose
    /// data the entries hold found from them
    /// ([`portvagt_policy::compartment::patients_in_entries`]: what `patients_in_body` would find
    /// in the bytes returned). `Ok(None)`: not a Bundle, nothing to rewrite. `Err(Unread)`: the
    /// answer cannot be read so (not a JSON object, a key given twice, an `entry` that is not a
    /// list of objects; with `patients`, a `resource` that is not one); rewrite its parsed tree
    /// instead.
    pub fn rewrite_bundle_bytes(
        &self,
        body: &[u8],
        paging: Option<&Paging<'_>>,
        patients: bool,
    ) -> Result<Option<Rewritten>, Unread> {
        if patients {
            self.rewrite_entries::<RawEntry<'_>>(body, paging, |entries| {
                Some(portvagt_policy::compartment::patients_in_entries(entries))
            })
        } else {
            self.rewrite_entries::<OrderedRaw<'_>>(body, paging, |_| None)
        }
    }

    /// [`Self::rewrite_bundle_bytes`] with entries read as `E`, and `found` made of them.
    fn rewrite_entries<'a, E>(
        &self,
        body: &'a [u8],
        paging: Option<&Paging<'_>>,
        found: impl Fn(&[E]) -> FoundPatients,
    ) -> Result<Option<Rewritten>, Unread>
    where
        E: EntryFields + serde::Deserialize<'a>,
    {
        let mut bundle: RawBundle<'a, E> = from_body(body).ok_or(Unread)?;
        if bundle.get_str("resourceType").as_deref() != Some("Bundle") {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(body.len() + 512);
        // (A Bundle without entries holds nobody's data.)
        let mut patients = found(&[]);
        out.push(b'{');
        for (index, (key, field)) in bundle.fields_mut().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_key(&mut out, key);
            out.push(b':');
            match field {
                BundleField::Raw(raw) if key == "link" => {
                    let mut links = tree_unique_str(raw.get()).map_err(|_| Unread)?;
                    if let Some(list) = links.as_array_mut() {
                        self.rewrite_links(list, paging);
                    }
                    serde_json::to_writer(&mut out, &links).map_err(|_| Unread)?;
                }
                BundleField::Raw(raw) => out.extend_from_slice(raw.get().as_bytes()),
                BundleField::Entries(entries) => {
                    out.push(b'[');
                    // An entry's rewritten `fullUrl` as JSON, made here for each in turn
                    // (when the public base needs no escape).
                    let mut full_url = plain(&self.public).then(String::new);
                    for (index, entry) in entries.iter_mut().enumerate() {
                        let made = self.rewrite_entry(entry, full_url.as_mut())?;
                        if index > 0 {
                            out.push(b',');
                        }
                        entry.write(&mut out, made.map(|json| ("fullUrl", json)), body);
                    }
                    out.push(b']');
                    patients = found(entries);
                }
            }
        }
        out.push(b'}');
        Ok(Some(Rewritten {
            bytes: out,
            patients,
        }))
    }

    /// An entry's `fullUrl` and `response.location` rewritten. A `fullUrl` written without an
    /// escape below the backend base (every one a FHIR server writes) is made as JSON text in
    /// `full_url` (given when the public base needs no escape either) and returned, for the entry
    /// to be written with: the same text serde_json would write, without a string and a raw
    /// value made for each entry. Any other is rewritten in the entry itself.
    fn rewrite_entry<'b>(
        &self,
        entry: &mut impl EntryFields,
        full_url: Option<&'b mut String>,
    ) -> Result<Option<&'b str>, Unread> {
        let made = match (entry.text("fullUrl"), full_url) {
            // Borrowed: no escape in it, so none needed in what is made of it.
            (Some(std::borrow::Cow::Borrowed(url)), Some(full_url)) => {
                self.below(url).map(|rest| {
                    full_url.clear();
                    full_url.push('"');
                    full_url.push_str(&self.public);
                    full_url.push_str(rest);
                    full_url.push('"');
                    &**full_url
                })
            }
            (Some(url), _) => {
                if let Some(url) = self.rewrite(&url) {
                    entry.put("fullUrl", to_raw_value(&url).map_err(|_| Unread)?);
                }
                None
            }
            (None, _) => None,
        };
        let response = match entry.raw("response") {
            Some(raw) => {
                let mut response = tree_unique_str(raw.get()).map_err(|_| Unread)?;
                self.rewrite_field(&mut response, "location")
                    .then(|| to_raw_value(&response))
                    .transpose()
                    .map_err(|_| Unread)?
            }
            None => None,
        };
        if let Some(response) = response {
            entry.put("response", response);
        }
        Ok(made)
    }

    /// A Bundle's links rewritten, or with `paging` handed out as it makes them (see
    /// [`Self::rewrite_bundle`]).
    fn rewrite_links(&self, links: &mut Vec<Value>, paging: Option<&Paging<'_>>) {
        links.retain_mut(|link| {
            // Without paging (a stored Bundle read, a write's answer) links are the resource's
            // data: rewritten below the backend's base, else kept.
            let Some(paging) = paging else {
                self.rewrite_field(link, "url");
                return true;
            };
            // With paging, only a link that is `self` in ASCII keeps the backend's query
            // (rewritten to the gateway's base, never as it came); any other is signed or
            // dropped.
            if !paging.sign_self
                && link
                    .get("relation")
                    .and_then(Value::as_str)
                    .is_some_and(|relation| {
                        portvagt_policy::filter::names_relation(relation, "self")
                    })
            {
                return self.rewrite_field(link, "url");
            }
            let made = link
                .get("url")
                .and_then(Value::as_str)
                .and_then(|url| self.below(url))
                .and_then(paging.link);
            match made {
                Some(url) => {
                    link["url"] = Value::String(url);
                    true
                }
                None => false,
            }
        });
    }

    /// Rewrites `object[field]` if it is a URL below the backend base; whether it was.
    fn rewrite_field(&self, object: &mut Value, field: &str) -> bool {
        if let Some(slot) = object.get_mut(field)
            && let Some(rewritten) = slot.as_str().and_then(|url| self.rewrite(url))
        {
            *slot = Value::String(rewritten);
            return true;
        }
        false
    }
}

/// A Bundle that cannot be rewritten from its bytes alone (see
/// [`UrlRewriter::rewrite_bundle_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unread;

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
        assert!(rewriter().rewrite_bundle(&mut bundle, None));
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

    /// Without paging (a stored Bundle read, a write's answer) links are the resource's data:
    /// the backend's rewritten, every other kept as the Bundle holds it.
    #[test]
    fn a_stored_bundles_links_are_kept() {
        let mut bundle = json!({
            "resourceType": "Bundle",
            "type": "document",
            "link": [
                { "relation": "self", "url": "https://other.example/fhir/Bundle/doc1" },
                { "relation": "alternate", "url": "urn:uuid:1234" },
                { "relation": "related", "url": "http://10.0.0.5:8080/fhir/R4/Composition/c1" }
            ]
        });
        assert!(rewriter().rewrite_bundle(&mut bundle, None));
        assert_eq!(
            bundle["link"],
            json!([
                { "relation": "self", "url": "https://other.example/fhir/Bundle/doc1" },
                { "relation": "alternate", "url": "urn:uuid:1234" },
                { "relation": "related", "url": "https://fhir.example.dk/fhir/Composition/c1" }
            ])
        );
    }

    #[test]
    fn paging_links_are_handed_out_as_paging_makes_them_or_not_at_all() {
        let bundle = json!({
            "resourceType": "Bundle",
            "link": [
                { "relation": "self", "url": "http://10.0.0.5:8080/fhir/R4/Observation?patient=1" },
                { "relation": "next", "url": "http://10.0.0.5:8080/fhir/R4?_getpages=abc&_getpagesoffset=10" },
                { "relation": "previous", "url": "http://10.0.0.5:8080/fhir/R4/Observation?patient=1&_offset=0" },
                { "relation": "last", "url": "http://elsewhere.example/fhir/Observation?page=9" },
                { "relation": "previous", "url": "http://10.0.0.5:8080/fhir/R4?drop" },
                { "relation": "next", "url": 7 }
            ]
        });
        let link = |rest: &str| (!rest.contains("drop")).then(|| format!("signed<{rest}>"));
        let rewritten_links = |mut bundle: Value, sign_self: bool| {
            let paging = Paging {
                sign_self,
                link: &link,
            };
            assert!(rewriter().rewrite_bundle(&mut bundle, Some(&paging)));
            bundle["link"].clone()
        };
        assert_eq!(
            rewritten_links(bundle, false),
            json!([
                { "relation": "self", "url": "https://fhir.example.dk/fhir/Observation?patient=1" },
                { "relation": "next", "url": "signed<?_getpages=abc&_getpagesoffset=10>" },
                { "relation": "previous", "url": "signed</Observation?patient=1&_offset=0>" }
            ])
        );
        // Only `self` in ASCII keeps the backend's query, and only below the backend's base:
        // a relation some client may fold into another (`prevıous`), or a self link elsewhere,
        // is signed or dropped like any other link, never passed on as it came.
        let bundle = json!({
            "resourceType": "Bundle",
            "link": [
                { "relation": "prev\u{131}ous", "url": "http://hapi-internal:9090/x?_getpagesoffset=20" },
                { "relation": "\u{ff53}elf", "url": "http://10.0.0.5:8080/fhir/R4/Observation?o=1" },
                { "relation": "self", "url": "http://hapi-internal:9090/fhir/Observation?patient=1" }
            ]
        });
        assert_eq!(
            rewritten_links(bundle, false),
            json!([{ "relation": "\u{ff53}elf", "url": "signed</Observation?o=1>" }])
        );
        // Any other spelling or relation is signed too (or dropped); `self` when asked.
        let bundle = json!({
            "resourceType": "Bundle",
            "link": [
                { "relation": "SELF", "url": "http://10.0.0.5:8080/fhir/R4?_getpages=abc" },
                { "relation": "Next", "url": "http://10.0.0.5:8080/fhir/R4?_getpages=abc&o=2" },
                { "relation": "page-9", "url": "http://10.0.0.5:8080/fhir/R4?_getpages=abc&o=9" },
                { "relation": "next", "url": "?_getpages=relative" },
                { "url": "http://10.0.0.5:8080/fhir/R4?_getpages=abc&o=3" }
            ]
        });
        assert_eq!(
            rewritten_links(bundle, true),
            json!([
                { "relation": "SELF", "url": "signed<?_getpages=abc>" },
                { "relation": "Next", "url": "signed<?_getpages=abc&o=2>" },
                { "relation": "page-9", "url": "signed<?_getpages=abc&o=9>" },
                { "url": "signed<?_getpages=abc&o=3>" }
            ])
        );
    }

    /// Both readings of a Bundle: from its bytes, and from its parsed tree.
    fn both_ways(
        body: &str,
        paging: Option<&Paging<'_>>,
    ) -> (Result<Option<Value>, Unread>, Value) {
        let shallow = rewriter()
            .rewrite_bundle_bytes(body.as_bytes(), paging, false)
            .map(|out| out.map(|out| serde_json::from_slice(&out.bytes).unwrap()));
        let mut tree: Value = serde_json::from_str(body).unwrap();
        rewriter().rewrite_bundle(&mut tree, paging);
        (shallow, tree)
    }

    #[test]
    fn a_bundle_rewritten_from_its_bytes_is_the_bundle_rewritten_from_its_tree() {
        let link = |rest: &str| (!rest.contains("drop")).then(|| format!("signed<{rest}>"));
        let paging = Paging {
            sign_self: false,
            link: &link,
        };
        let bundles = [
            r#"{"resourceType":"Bundle","type":"searchset","total":2,
                "link":[{"relation":"self","url":"http://10.0.0.5:8080/fhir/R4/Observation?patient=1"},
                        {"relation":"next","url":"http://10.0.0.5:8080/fhir/R4?_getpages=abc"},
                        {"relation":"next","url":"http://10.0.0.5:8080/fhir/R4?drop"}],
                "entry":[{"fullUrl":"http://10.0.0.5:8080/fhir/R4/Observation/1","resource":{"resourceType":"Observation","id":"1","valueQuantity":{"value":1.50}},"search":{"mode":"match"}},
                         {"fullUrl":"http:\/\/10.0.0.5:8080\/fhir\/R4\/Observation\/2","resource":{"resourceType":"Observation","id":"2"}},
                         {"fullUrl":"urn:uuid:1234","response":{"status":"201","location":"http://10.0.0.5:8080/fhir/R4/Patient/2/_history/1"}},
                         {"fullUrl":7,"response":"odd"},
                         {}]}"#,
            r#"{"resourceType":"Bundle","link":{"url":"http://10.0.0.5:8080/fhir/R4"},"entry":[]}"#,
            r#"{"resourceType":"Bundle","link":null}"#,
            r#"{"entry":[{"fullUrl":"http://10.0.0.5:8080/fhir/R4/Patient/1"}],"resourceType":"Bundle"}"#,
            // White space everywhere, resources with escaped names (first or not), empty ones.
            "{ \"resourceType\" : \"Bundle\" , \"entry\" : [ { \"resource\" : { \"resourceType\" :\n \"Observation\" ,\t\"subject\" : { \"reference\" : \"Patient/1\" } } , \"fullUrl\" : \"http://10.0.0.5:8080/fhir/R4/Observation/4\" } ,\n {\"resource\":{\"resourceT\\u0079pe\":\"Observation\",\"id\":\"5\"}}, {\"resource\":{\"resourceType\":\"Observation\",\"\\u0069d\":\"6\", \"note\": [ {\"text\":\"a \\\"b\\\"\"} ] }}, {\"resource\":{}} ] }",
            // Escaped keys and values, links that are not objects or have odd relations.
            r#"{"resourceType":"Bundl\u0065","l\u0069nk":[1,{"relation":7,"url":"http://10.0.0.5:8080/fhir/R4?_getpages=b"},{"relation":"s\u0065lf","url":"http://10.0.0.5:8080/fhir/R4/Observation"}],
                "entr\u0079":[{"fullUr\u006c":"http://10.0.0.5:8080/fhir/R4/Observation/3","response":{"locati\u006fn":"http://10.0.0.5:8080/fhir/R4/Observation/3/_history/1"}}]}"#,
        ];
        let signing_self = Paging {
            sign_self: true,
            link: &link,
        };
        for body in bundles {
            for paging in [None, Some(&paging), Some(&signing_self)] {
                let (shallow, tree) = both_ways(body, paging);
                assert_eq!(shallow, Ok(Some(tree.clone())), "{body}");
                // Read with the resources as their fields (copied from the text as they came).
                let with_patients = rewriter()
                    .rewrite_bundle_bytes(body.as_bytes(), paging, true)
                    .map(|out| out.map(|out| serde_json::from_slice::<Value>(&out.bytes).unwrap()));
                assert_eq!(with_patients, Ok(Some(tree)), "{body}");
            }
        }
        // The resources are copied as they came: a number keeps its spelling.
        let out = rewriter()
            .rewrite_bundle_bytes(bundles[0].as_bytes(), None, false)
            .unwrap()
            .unwrap();
        assert!(
            String::from_utf8(out.bytes)
                .unwrap()
                .contains(r#"{"value":1.50}"#)
        );
    }

    /// A `fullUrl` made as text beside its entry is the text serde_json writes for the URL the
    /// tree gets, whatever the public base and the backend's spelling (an escape in either takes
    /// the other way), read with the resources or not.
    #[test]
    fn a_full_url_made_as_text_is_written_as_serde_json_writes_it() {
        let full_urls = [
            (
                "http://10.0.0.5:8080/fhir/R4/Observation/1",
                Some("/Observation/1"),
            ),
            ("http://10.0.0.5:8080/fhir/R4", Some("")),
            (
                "http://10.0.0.5:8080/fhir/R4?_getpages=x",
                Some("?_getpages=x"),
            ),
            (
                "http://10.0.0.5:8080/fhir/R4/Observation/æ",
                Some("/Observation/æ"),
            ),
            (
                r"http:\/\/10.0.0.5:8080\/fhir\/R4\/Observation\/2",
                Some("/Observation/2"),
            ),
            (
                r"http://10.0.0.5:8080/fhir/R4/Observation/\u0022",
                Some("/Observation/\""),
            ),
            ("http://10.0.0.5:8080/fhir/R40/Observation/3", None),
            ("urn:uuid:1234", None),
        ];
        for public in [
            "https://fhir.example.dk/fhir",
            "https://fhir.example.dk/næste",
            r#"https://fhir.example.dk/a"b\c"#,
        ] {
            let rewriter = UrlRewriter::new("http://10.0.0.5:8080/fhir/R4", public);
            for (full_url, below) in full_urls {
                let body = format!(
                    r#"{{"resourceType":"Bundle","entry":[{{"fullUrl":"{full_url}","resource":{{"resourceType":"Observation","id":"1"}}}}]}}"#
                );
                let expected = match below {
                    Some(rest) => serde_json::to_string(&format!("{public}{rest}")).unwrap(),
                    None => format!(r#""{full_url}""#),
                };
                for patients in [false, true] {
                    let out = rewriter
                        .rewrite_bundle_bytes(body.as_bytes(), None, patients)
                        .unwrap()
                        .unwrap();
                    let text = String::from_utf8(out.bytes).unwrap();
                    assert!(
                        text.contains(&format!(r#"{{"fullUrl":{expected},"resource""#)),
                        "{public} {full_url}: {text}"
                    );
                }
            }
        }
    }

    /// Whose data a Bundle holds, read in the scan that rewrites it, is what reading the bytes
    /// it leaves as finds: by id, in nested Bundles, a Patient itself; and nothing decided where
    /// that takes more than the bytes (a patient named by identifier only).
    #[test]
    fn the_patients_read_while_rewriting_are_those_of_what_leaves() {
        let bundles = [
            r#"{"resourceType":"Bundle","type":"searchset","link":[{"relation":"next","url":"http://10.0.0.5:8080/fhir/R4?_getpages=a"}],
                "entry":[{"fullUrl":"http://10.0.0.5:8080/fhir/R4/Observation/1","resource":{"resourceType":"Observation","id":"1","subject":{"reference":"Patient/pat-anne"},"performer":[{"reference":"Patient/pat-bo"}]}},
                         {"resource":{"resourceType":"Patient","id":"pat-carla"}},
                         {"resource":{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Condition","subject":{"reference":"http://10.0.0.5:8080/fhir/R4/Patient/pat-dan"}}}]}},
                         {"resource":{"resourceType":"Practitioner","id":"p"}},
                         {"search":{"mode":"outcome"}}]}"#,
            r#"{"resourceType":"Bundle","entry":[]}"#,
            r#"{"resourceType":"Bundle","type":"searchset"}"#,
            r#"{"resourceType":"Bundle","entry":[{"fullUrl":"http://10.0.0.5:8080/fhir/R4/Observation/9","resource":{"resourceType":"Observation","subject":{"identifier":{"system":"urn:oid:1.2.208.176.1.2","value":"1111111118"}}}}]}"#,
        ];
        for body in bundles {
            let out = rewriter()
                .rewrite_bundle_bytes(body.as_bytes(), None, true)
                .unwrap()
                .unwrap();
            assert_eq!(
                out.patients,
                Some(portvagt_policy::compartment::patients_in_body(&out.bytes)),
                "{body}"
            );
        }
        let first = rewriter()
            .rewrite_bundle_bytes(bundles[0].as_bytes(), None, true)
            .unwrap()
            .unwrap();
        assert_eq!(
            first.patients.unwrap().unwrap(),
            ["pat-anne", "pat-bo", "pat-carla", "pat-dan"]
        );
        // Not asked for, not read.
        let out = rewriter()
            .rewrite_bundle_bytes(bundles[0].as_bytes(), None, false)
            .unwrap()
            .unwrap();
        assert_eq!(out.patients, None);
    }

    #[test]
    fn what_cannot_be_read_from_the_bytes_is_left_to_the_tree() {
        for body in [
            // A key given twice, at the top or in an entry.
            r#"{"resourceType":"Bundle","link":[],"link":[{"url":"http://10.0.0.5:8080/fhir/R4/x"}]}"#,
            r#"{"resourceType":"Bundle","entry":[{"fullUrl":"urn:uuid:1","fullUrl":"http://10.0.0.5:8080/fhir/R4/x"}]}"#,
            // An entry that is not an object, entries that are not a list.
            r#"{"resourceType":"Bundle","entry":[1,{"fullUrl":"http://10.0.0.5:8080/fhir/R4/x"}]}"#,
            r#"{"resourceType":"Bundle","entry":{"fullUrl":"http://10.0.0.5:8080/fhir/R4/x"}}"#,
            r#"{"resourceType":"Bundle","entry":null}"#,
            // A resource that is not an object, or gives a key twice.
            r#"{"resourceType":"Bundle","entry":[{"resource":null}]}"#,
            // A member a tree built by serde_json would read as other JSON.
            r#"{"resourceType":"Bundle","entry":[{"resource":{"$serde_json::private::RawValue":"{\"resourceType\":\"Observation\",\"subject\":{\"reference\":\"Patient/victim\"}}"}}]}"#,
            r#"{"resourceType":"Bundle","\u0024serde_json::private::RawValue":"{}"}"#,
            // The same inside the parts rewritten as trees, a link or an entry's response.
            r#"{"resourceType":"Bundle","link":[{"relation":"next","url":{"$serde_json::private::RawValue":"\"http://10.0.0.5:8080/fhir/R4?x\""}}]}"#,
            r#"{"resourceType":"Bundle","entry":[{"response":{"status":"200","outcome":{"$serde_json::private::RawValue":"{}"}}}]}"#,
            r#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Observation","subject":{"reference":"Patient/a"},"subject":{"reference":"Patient/b"}}}]}"#,
            "not json",
        ] {
            assert_eq!(
                rewriter().rewrite_bundle_bytes(body.as_bytes(), None, true),
                Err(Unread),
                "{body}"
            );
        }
        for body in [
            r#"{"resourceType":"Patient","link":[{"url":"http://10.0.0.5:8080/fhir/R4/x"}]}"#,
            r#"{"resourceType":7}"#,
        ] {
            assert_eq!(
                rewriter().rewrite_bundle_bytes(body.as_bytes(), None, true),
                Ok(None)
            );
        }
    }

    #[test]
    fn non_bundles_are_left_alone() {
        let mut patient = json!({ "resourceType": "Patient", "link": [{ "url": "http://10.0.0.5:8080/fhir/R4/x" }] });
        assert!(!rewriter().rewrite_bundle(&mut patient, None));
        assert_eq!(patient["link"][0]["url"], "http://10.0.0.5:8080/fhir/R4/x");
    }
}
