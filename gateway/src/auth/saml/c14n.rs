//! Exclusive XML canonicalization without comments
//! ([xml-exc-c14n](https://www.w3.org/TR/xml-exc-c14n/)), for the subset SAML signatures use:
//! one element subtree (the signed assertion or `ds:SignedInfo`), optionally minus one
//! descendant (the enveloped `ds:Signature`, [XML-DSig §6.6.4]), with an optional
//! `InclusiveNamespaces PrefixList`.
//!
//! What the spec asks, in short: elements are written with start and end tags (no `<a/>`);
//! a namespace declaration appears on an element only where the element or one of its
//! attributes visibly uses the prefix (or the prefix is on the inclusive list) and the nearest
//! output ancestor did not already declare it with the same URI; declarations are sorted by
//! prefix (default first), attributes by namespace URI then local name; text and attribute
//! values are escaped as the spec says; comments are dropped. The parser (roxmltree) has
//! already normalized line ends and attribute values and expanded character references, which
//! is the XPath data model canonicalization is defined on.
//!
//! [XML-DSig §6.6.4]: https://www.w3.org/TR/xmldsig-core1/#sec-EnvelopedSignature

use roxmltree::{Node, NodeId};

/// Canonicalizes `apex` and its descendants, leaving out the subtree `excluded` (if given), with
/// the prefixes of an `InclusiveNamespaces PrefixList` (`#default` names the default
/// namespace) treated as in inclusive canonicalization.
pub(crate) fn canonicalize(
    apex: Node<'_, '_>,
    excluded: Option<NodeId>,
    inclusive: &[&str],
) -> Vec<u8> {
    let mut writer = Writer {
        out: Vec::with_capacity(apex.range().len()),
        rendered: Vec::new(),
        inclusive,
        excluded,
    };
    writer.element(apex);
    writer.out
}

struct Writer<'p> {
    out: Vec<u8>,
    /// Namespace declarations written by output ancestors, innermost last: (prefix, URI).
    /// The empty prefix is the default namespace.
    rendered: Vec<(String, String)>,
    inclusive: &'p [&'p str],
    excluded: Option<NodeId>,
}

impl Writer<'_> {
    fn element(&mut self, node: Node<'_, '_>) {
        let prefix = element_prefix(node);
        let name = qualified(prefix, node.tag_name().name());
        self.out.push(b'<');
        self.out.extend_from_slice(name.as_bytes());

        let declared_before = self.rendered.len();
        let mut declarations = self.declarations(node, prefix);
        declarations.sort_by(|a, b| a.0.cmp(&b.0));
        for (prefix, uri) in declarations {
            if prefix.is_empty() {
                self.out.extend_from_slice(b" xmlns=\"");
            } else {
                self.out.extend_from_slice(b" xmlns:");
                self.out.extend_from_slice(prefix.as_bytes());
                self.out.extend_from_slice(b"=\"");
            }
            escape_attribute(&uri, &mut self.out);
            self.out.push(b'"');
            self.rendered.push((prefix, uri));
        }

        let mut attributes: Vec<_> = node.attributes().collect();
        attributes.sort_by(|a, b| {
            (a.namespace().unwrap_or(""), a.name()).cmp(&(b.namespace().unwrap_or(""), b.name()))
        });
        for attribute in attributes {
            self.out.push(b' ');
            let prefix = attribute_prefix(node, &attribute);
            self.out
                .extend_from_slice(qualified(prefix, attribute.name()).as_bytes());
            self.out.extend_from_slice(b"=\"");
            escape_attribute(attribute.value(), &mut self.out);
            self.out.push(b'"');
        }
        self.out.push(b'>');

        for child in node.children() {
            if Some(child.id()) == self.excluded {
                continue;
            }
            if child.is_element() {
                self.element(child);
            } else if child.is_text() {
                escape_text(child.text().unwrap_or_default(), &mut self.out);
            } else if let Some(pi) = child.pi() {
                self.out.extend_from_slice(b"<?");
                self.out.extend_from_slice(pi.target.as_bytes());
                if let Some(value) = pi.value.filter(|v| !v.is_empty()) {
                    self.out.push(b' ');
                    self.out.extend_from_slice(value.as_bytes());
                }
                self.out.extend_from_slice(b"?>");
            }
            // Comments are not part of the canonical form "without comments".
        }

        self.out.extend_from_slice(b"</");
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'>');
        self.rendered.truncate(declared_before);
    }

    /// The namespace declarations `node` must carry: visibly used (or inclusive) prefixes
    /// whose binding differs from what output ancestors declared.
    fn declarations(&self, node: Node<'_, '_>, prefix: &str) -> Vec<(String, String)> {
        let mut needed: Vec<&str> = vec![prefix];
        for attribute in node.attributes() {
            let attribute_prefix = attribute_prefix(node, &attribute);
            if !attribute_prefix.is_empty() && !needed.contains(&attribute_prefix) {
                needed.push(attribute_prefix);
            }
        }
        for &listed in self.inclusive {
            let listed = if listed == "#default" { "" } else { listed };
            if !needed.contains(&listed) && in_scope(node, listed).is_some() {
                needed.push(listed);
            }
        }
        let mut declarations = Vec::new();
        for prefix in needed {
            // The `xml` prefix is bound implicitly and never declared.
            if prefix == "xml" {
                continue;
            }
            let uri = in_scope(node, prefix).unwrap_or_default();
            let declared = self
                .rendered
                .iter()
                .rev()
                .find(|(p, _)| p == prefix)
                .map(|(_, u)| u.as_str());
            let already = match declared {
                Some(declared) => declared == uri,
                // Nothing declared yet: an empty default namespace needs no `xmlns=""`.
                None => prefix.is_empty() && uri.is_empty(),
            };
            if !already {
                declarations.push((prefix.to_owned(), uri.to_owned()));
            }
        }
        declarations
    }
}

/// Whether every element's and attribute's prefix, as written, is bound to the namespace the
/// parser gave it. Canonicalization writes prefixes from the text and the reader matches
/// namespaces from the parser; if the two could disagree, unsigned meaning could hide behind
/// signed bytes, so such a document is refused.
pub(crate) fn prefixes_consistent(document: &roxmltree::Document<'_>) -> bool {
    document
        .descendants()
        .filter(|n| n.is_element())
        .all(|node| {
            let prefix = element_prefix(node);
            let element_ok = in_scope(node, prefix) == node.tag_name().namespace();
            element_ok
                && node.attributes().all(|attribute| {
                    let qname = node
                        .document()
                        .input_text()
                        .get(attribute.range_qname())
                        .unwrap_or_default();
                    // roxmltree keeps at most 65535 bytes of a qname: a longer one is not read back.
                    let whole = qname == attribute.name()
                        || qname
                            .strip_suffix(attribute.name())
                            .is_some_and(|prefix| prefix.ends_with(':'));
                    if !whole {
                        return false;
                    }
                    match attribute_prefix(node, &attribute) {
                        "" => attribute.namespace().is_none(),
                        "xml" => {
                            attribute.namespace() == Some("http://www.w3.org/XML/1998/namespace")
                        }
                        prefix => in_scope(node, prefix) == attribute.namespace(),
                    }
                })
        })
}

/// The URI `prefix` is bound to at `node` (the empty prefix: the default namespace).
fn in_scope<'a>(node: Node<'a, '_>, prefix: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        return node.default_namespace();
    }
    node.namespaces()
        .find(|ns| ns.name() == Some(prefix))
        .map(|ns| ns.uri())
}

/// The prefix an element was written with, read from the document text (roxmltree keeps URIs,
/// not prefixes, and one URI may be bound to several prefixes).
fn element_prefix<'i>(node: Node<'_, 'i>) -> &'i str {
    let text = node.document().input_text();
    let start = node.range().start + 1;
    let rest = text.get(start..).unwrap_or_default();
    // XML's whitespace only: other Unicode spaces (U+1680, ...) are name characters in XML,
    // and cutting there would hide a prefix.
    let end = rest
        .find([' ', '\t', '\r', '\n', '>', '/'])
        .unwrap_or(rest.len());
    match rest[..end].split_once(':') {
        Some((prefix, _)) => prefix,
        None => "",
    }
}

/// The prefix an attribute was written with.
fn attribute_prefix<'i>(node: Node<'_, 'i>, attribute: &roxmltree::Attribute<'_, 'i>) -> &'i str {
    let text = node.document().input_text();
    let qname = text.get(attribute.range_qname()).unwrap_or_default();
    match qname.split_once(':') {
        Some((prefix, _)) => prefix,
        None => "",
    }
}

fn qualified(prefix: &str, local: &str) -> String {
    if prefix.is_empty() {
        local.to_owned()
    } else {
        format!("{prefix}:{local}")
    }
}

fn escape_text(text: &str, out: &mut Vec<u8>) {
    for byte in text.bytes() {
        match byte {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'\r' => out.extend_from_slice(b"&#xD;"),
            other => out.push(other),
        }
    }
}

fn escape_attribute(value: &str, out: &mut Vec<u8>) {
    for byte in value.bytes() {
        match byte {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'"' => out.extend_from_slice(b"&quot;"),
            b'\t' => out.extend_from_slice(b"&#x9;"),
            b'\n' => out.extend_from_slice(b"&#xA;"),
            b'\r' => out.extend_from_slice(b"&#xD;"),
            other => out.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c14n(xml: &str, inclusive: &[&str]) -> String {
        let doc = roxmltree::Document::parse(xml).unwrap();
        String::from_utf8(canonicalize(doc.root_element(), None, inclusive)).unwrap()
    }

    fn c14n_of(xml: &str, local_name: &str) -> String {
        let doc = roxmltree::Document::parse(xml).unwrap();
        let node = doc
            .descendants()
            .find(|n| n.tag_name().name() == local_name)
            .unwrap();
        String::from_utf8(canonicalize(node, None, &[])).unwrap()
    }

    #[test]
    fn empty_elements_get_end_tags_and_attributes_are_sorted() {
        assert_eq!(
            c14n(r#"<a z="1" b='2' xmlns:p="urn:p" p:c="3"><e/></a>"#, &[]),
            r#"<a xmlns:p="urn:p" b="2" z="1" p:c="3"><e></e></a>"#
        );
    }

    #[test]
    fn unused_namespaces_are_dropped_and_used_ones_pushed_down() {
        // exc-c14n §3: only visibly utilized prefixes are output, where they are used.
        let xml =
            r#"<r:root xmlns:r="urn:r" xmlns:u="urn:unused" xmlns:s="urn:s"><s:child/></r:root>"#;
        assert_eq!(
            c14n(xml, &[]),
            r#"<r:root xmlns:r="urn:r"><s:child xmlns:s="urn:s"></s:child></r:root>"#
        );
    }

    #[test]
    fn a_subtree_declares_what_its_ancestors_declared_in_the_document() {
        let xml = r#"<ds:Signature xmlns:ds="urn:ds"><ds:SignedInfo><ds:X A="1"/></ds:SignedInfo></ds:Signature>"#;
        assert_eq!(
            c14n_of(xml, "SignedInfo"),
            r#"<ds:SignedInfo xmlns:ds="urn:ds"><ds:X A="1"></ds:X></ds:SignedInfo>"#
        );
    }

    #[test]
    fn inclusive_prefixes_are_declared_even_when_only_used_in_content() {
        let xml = r#"<a:r xmlns:a="urn:a" xmlns:xs="urn:xs"><a:v>xs:string</a:v></a:r>"#;
        assert_eq!(
            c14n(xml, &["xs"]),
            r#"<a:r xmlns:a="urn:a" xmlns:xs="urn:xs"><a:v>xs:string</a:v></a:r>"#
        );
    }

    #[test]
    fn default_namespace_is_undeclared_when_a_child_leaves_it() {
        let xml = r#"<r xmlns="urn:d"><c xmlns=""/></r>"#;
        assert_eq!(c14n(xml, &[]), r#"<r xmlns="urn:d"><c xmlns=""></c></r>"#);
    }

    #[test]
    fn redeclaring_the_same_binding_is_not_repeated() {
        let xml = r#"<p:r xmlns:p="urn:p"><p:c xmlns:p="urn:p"/><p:c xmlns:p="urn:other"/></p:r>"#;
        assert_eq!(
            c14n(xml, &[]),
            r#"<p:r xmlns:p="urn:p"><p:c></p:c><p:c xmlns:p="urn:other"></p:c></p:r>"#
        );
    }

    #[test]
    fn text_and_attribute_values_are_escaped_per_the_spec() {
        let xml =
            "<a v=\"&quot;&lt;&gt;&amp;&#9;&#10;&#13;\">&lt;&gt;&amp;&#13;\"'<![CDATA[<x>]]></a>";
        assert_eq!(
            c14n(xml, &[]),
            "<a v=\"&quot;&lt;>&amp;&#x9;&#xA;&#xD;\">&lt;&gt;&amp;&#xD;\"'&lt;x&gt;</a>"
        );
    }

    #[test]
    fn comments_are_dropped_and_line_ends_normalized() {
        assert_eq!(c14n("<a>x<!-- c -->y\r\nz</a>", &[]), "<a>xy\nz</a>");
    }

    #[test]
    fn excluded_subtree_is_left_out() {
        let xml = r#"<a><keep/><drop><x/></drop><keep2/></a>"#;
        let doc = roxmltree::Document::parse(xml).unwrap();
        let drop = doc
            .descendants()
            .find(|n| n.has_tag_name("drop"))
            .unwrap()
            .id();
        let out = canonicalize(doc.root_element(), Some(drop), &[]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<a><keep></keep><keep2></keep2></a>"
        );
    }

    #[test]
    fn xml_prefixed_attributes_keep_their_prefix_without_a_declaration() {
        assert_eq!(
            c14n(r#"<a xml:lang="da" b="1"/>"#, &[]),
            r#"<a b="1" xml:lang="da"></a>"#
        );
    }
}
