//! FHIR XML at Portvagt's edge. The policy decides on FHIR JSON only; this crate turns an R4
//! XML request body into that JSON form before anything looks at it (so an XML request is
//! judged, and forwarded, exactly as its JSON twin), and writes a JSON answer as XML for a
//! client that asked for XML. It decides nothing and does no I/O.
//!
//! The conversion is fhirbolt's R4 element model: it knows from the R4 definitions which
//! elements repeat and which primitives are numbers or booleans, so the JSON is the JSON a
//! FHIR server would write for the same resource. Before it reads anything, [`xml_to_json`]
//! refuses what FHIR XML never holds and a parser could be hurt by: a document type (and with
//! it every entity declaration and external reference), processing instructions, CDATA, and
//! nesting deeper than [`MAX_DEPTH`]. The public functions are concrete (not generic), so the
//! element model is compiled once, here.
//!
//! [`json_to_xml`] reads what it wrote back and refuses XML that would say something else than
//! the JSON (the element model writes some JSON it does not understand as markup of its own),
//! and escapes line breaks in attribute values; the caller then answers in JSON.
//!
//! Known limits: reading XML drops whitespace-only text and comments inside the XHTML narrative
//! (`text.div`) and trims text next to its tags (the narrative only; no coded or referenced
//! data). The element model costs about 70 µs per entry of a typical Observation Bundle either
//! way (`cargo bench -p portvagt-fhir`): XML is for the clients that need it, not the hot path.

use fhirbolt::FhirReleases;
use fhirbolt::element::Element;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use fhirbolt_shared::path::ElementPath;
use serde_json::Value;

/// An R4 resource in fhirbolt's element model.
type R4Resource = Element<{ FhirReleases::R4 }>;

/// The deepest element nesting an XML body may have. Real R4 resources stay far below (the
/// specification's 5,300 examples nest at most 12 objects deep); a parser that recurses per
/// element must not be handed more.
pub const MAX_DEPTH: usize = 100;

/// Why a body could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// A DOCTYPE (and so possibly entity declarations or an external subset).
    #[error("FHIR XML has no document type declaration")]
    DocumentType,
    /// An element repeated where R4 allows it once.
    #[error("`{0}` repeats where R4 allows it once")]
    Repeated(String),
    /// Elements nested deeper than [`MAX_DEPTH`].
    #[error("the XML is nested deeper than {MAX_DEPTH} elements")]
    TooDeep,
    /// Not well-formed XML, or not an R4 resource in the FHIR namespace.
    #[error("not an R4 FHIR resource in XML: {0}")]
    NotFhirXml(String),
    /// A JSON answer that is not an R4 FHIR resource, so has no XML form.
    #[error("not an R4 FHIR resource in JSON: {0}")]
    NotFhirJson(String),
}

fn strict() -> Option<DeserializationConfig> {
    Some(DeserializationConfig {
        mode: DeserializationMode::Strict,
    })
}

/// The most attributes one element may carry (FHIR elements have at most `id`, `url`, `value`
/// and namespace declarations; XHTML in a narrative a few more). The XML reader checks every
/// attribute against all before it, so a million of them would take it minutes.
pub const MAX_ATTRIBUTES: usize = 32;

/// Runs a conversion of the element model; a panic in it (it has `unwrap`s on input it did
/// not expect) is a refusal, never a crashed request.
fn contained<T>(
    convert: impl FnOnce() -> Result<T, XmlError>,
    refused: fn(String) -> XmlError,
) -> Result<T, XmlError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(convert))
        .unwrap_or_else(|_| Err(refused("the element model could not read it".to_owned())))
}

/// An R4 resource in XML (`application/fhir+xml`) as FHIR JSON.
pub fn xml_to_json(xml: &[u8]) -> Result<Vec<u8>, XmlError> {
    if std::str::from_utf8(xml).is_err() {
        return Err(XmlError::NotFhirXml("not UTF-8".to_owned()));
    }
    guard(xml)?;
    let json = contained(
        || {
            let resource: R4Resource = fhirbolt::xml::from_slice(xml, strict())
                .map_err(|error| XmlError::NotFhirXml(error.to_string()))?;
            fhirbolt::json::to_vec(&resource, None)
                .map_err(|error| XmlError::NotFhirXml(error.to_string()))
        },
        XmlError::NotFhirXml,
    )?;
    // The element model reads a repeated element as a list whatever R4 allows: an XML body
    // with two `subject`s (or two `id`s) would become JSON no FHIR server writes, and no
    // check should have to guess at. Refused.
    let value: Value =
        serde_json::from_slice(&json).map_err(|error| XmlError::NotFhirXml(error.to_string()))?;
    let mut path = ElementPath::new(FhirReleases::R4);
    one_where_r4_allows_one(&value, &mut path)?;
    Ok(json)
}

/// An R4 resource in FHIR JSON as XML (`application/fhir+xml`): UTF-8, with the XML
/// declaration, elements in the order of the R4 definitions. The XML is read back and must
/// say what the JSON says (but for narrative whitespace): the element model writes some JSON
/// it does not understand as XML that means something else (a `resourceType` naming no type
/// becomes markup of its own, a narrative is copied unchecked, a too large integer wraps).
/// What fails that is refused, and the caller answers in JSON.
pub fn json_to_xml(json: &[u8]) -> Result<Vec<u8>, XmlError> {
    let xml = contained(|| written_as_xml(json), XmlError::NotFhirJson)?;
    let xml = attribute_controls_escaped(xml)?;
    let says = |bytes: &[u8]| -> Option<Value> {
        serde_json::from_slice::<Value>(bytes)
            .ok()
            .map(|value| narrative_alike(&value))
    };
    let read_back = xml_to_json(&xml)
        .map_err(|error| XmlError::NotFhirJson(format!("its XML does not read back: {error}")))?;
    match (says(json), says(&read_back)) {
        (Some(original), Some(back)) if original == back => Ok(xml),
        _ => Err(XmlError::NotFhirJson(
            "its XML would say something else".to_owned(),
        )),
    }
}

fn written_as_xml(json: &[u8]) -> Result<Vec<u8>, XmlError> {
    let resource: R4Resource = match fhirbolt::json::from_slice(json, strict()) {
        Ok(resource) => resource,
        // The element model learns a resource's type from `resourceType`, so it must come
        // first; JSON does not promise any order, and some writers sort their keys. Only then
        // is the answer read once more, with every `resourceType` moved to the front.
        Err(first) => {
            let reordered =
                type_first(json).ok_or_else(|| XmlError::NotFhirJson(first.to_string()))?;
            fhirbolt::json::from_slice(&reordered, strict())
                .map_err(|error| XmlError::NotFhirJson(error.to_string()))?
        }
    };
    fhirbolt::xml::to_vec(&resource, None).map_err(|error| XmlError::NotFhirJson(error.to_string()))
}

/// Refuses what FHIR XML never holds before the element model reads it: a document type,
/// processing instructions, CDATA, nesting deeper than [`MAX_DEPTH`], and anything but exactly
/// one complete root element (a document cut short, or a second resource after the first,
/// would otherwise be read as far as it goes). The element model checks the rest.
fn guard(xml: &[u8]) -> Result<(), XmlError> {
    use quick_xml::events::Event;
    let not_fhir = |what: &str| Err(XmlError::NotFhirXml(what.to_owned()));
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut depth = 0usize;
    let mut roots = 0usize;
    // Per open element: how many child elements, and whether one was a resource (FHIR names
    // resources in UpperCamelCase, elements in lowerCamelCase). A resource is its wrapper's
    // only child (`<contained><Patient/></contained>`): the element model would read a second
    // one's content into the resource around it.
    let mut children: Vec<(usize, bool)> = Vec::new();
    // An element (start or empty): why it is refused, if it is.
    let element_refused = |element: &quick_xml::events::BytesStart<'_>,
                           children: &mut Vec<(usize, bool)>| {
        if let Some((count, holds_resource)) = children.last_mut() {
            *count += 1;
            *holds_resource |= is_resource_name(element.name().as_ref());
            if *holds_resource && *count > 1 {
                return Some("a resource beside another element in one wrapper");
            }
        }
        let mut attributes = element.attributes();
        attributes
            .with_checks(false)
            .nth(MAX_ATTRIBUTES)
            .map(|_| "too many attributes")
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|error| XmlError::NotFhirXml(error.to_string()))?;
        match event {
            Event::Eof if depth == 0 && roots == 1 => return Ok(()),
            Event::Eof if roots == 0 => return not_fhir("no root element"),
            Event::Eof => return not_fhir("the document ends inside an element"),
            Event::DocType(_) => return Err(XmlError::DocumentType),
            Event::PI(_) => return not_fhir("a processing instruction"),
            Event::CData(_) => return not_fhir("a CDATA section"),
            Event::Start(_) | Event::Empty(_) if depth == 0 && roots > 0 => {
                return not_fhir("more than one root element");
            }
            Event::Start(start) => {
                if let Some(refused) = element_refused(&start, &mut children) {
                    return not_fhir(refused);
                }
                roots += usize::from(depth == 0);
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                children.push((0, false));
            }
            Event::Empty(empty) => {
                if let Some(refused) = element_refused(&empty, &mut children) {
                    return not_fhir(refused);
                }
                // An empty resource in a wrapper: the element model reads past its end.
                if depth > 0 && is_resource_name(empty.name().as_ref()) {
                    return not_fhir("an empty resource");
                }
                roots += usize::from(depth == 0);
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                children.pop();
            }
            Event::Text(text) if depth == 0 && !text.iter().all(u8::is_ascii_whitespace) => {
                return not_fhir("text outside the root element");
            }
            _ => {}
        }
    }
}

/// Whether an element name (prefix aside) is a resource's: FHIR names resources in
/// UpperCamelCase and elements in lowerCamelCase.
fn is_resource_name(name: &[u8]) -> bool {
    name.rsplit(|b| *b == b':')
        .next()
        .and_then(|local| local.first())
        .is_some_and(u8::is_ascii_uppercase)
}

/// The element model writes tab, CR and LF inside attribute values as they are, which XML
/// readers turn into spaces (multi-line text would arrive flattened): written as character
/// references. Other control characters have no XML 1.0 form at all: refused.
fn attribute_controls_escaped(xml: Vec<u8>) -> Result<Vec<u8>, XmlError> {
    let mut out = Vec::with_capacity(xml.len() + 16);
    // Inside a tag, an attribute value runs from its opening quote to the same quote again
    // (a narrative's XHTML may use either).
    let (mut in_tag, mut quote) = (false, None::<u8>);
    for &byte in &xml {
        match (byte, quote) {
            (b'<', None) => in_tag = true,
            (b'>', None) => in_tag = false,
            (b'"' | b'\'', None) if in_tag => quote = Some(byte),
            (_, Some(open)) if byte == open => quote = None,
            _ => {}
        }
        match byte {
            b'\t' | b'\n' | b'\r' if quote.is_some() => {
                out.extend_from_slice(format!("&#{byte};").as_bytes());
            }
            b'\t' | b'\n' | b'\r' => out.push(byte),
            control if control < 0x20 => {
                return Err(XmlError::NotFhirJson(
                    "a control character XML cannot hold".to_owned(),
                ));
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// `value` (FHIR JSON) with every narrative (`div`) in the form it keeps through XML: without
/// the whitespace and comments the XML reader drops (whitespace next to tags, whitespace-only
/// text, comments), line breaks in its attributes as spaces. Two resources that are equal in
/// this form say the same in JSON and in XML.
pub fn narrative_alike(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| match (key.as_str(), value) {
                    ("div", Value::String(xhtml)) => (key.clone(), Value::String(tight(xhtml))),
                    _ => (key.clone(), narrative_alike(value)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(narrative_alike).collect()),
        other => other.clone(),
    }
}

fn tight(xhtml: &str) -> String {
    // A line break in an XHTML attribute is written as a character reference.
    let xhtml = xhtml
        .replace("&#10;", " ")
        .replace("&#13;", " ")
        .replace("&#9;", " ");
    let mut uncommented = String::with_capacity(xhtml.len());
    let mut rest = xhtml.as_str();
    while let Some(start) = rest.find("<!--") {
        uncommented.push_str(&rest[..start]);
        rest = rest[start..]
            .find("-->")
            .map_or("", |end| &rest[start + end + 3..]);
    }
    uncommented.push_str(rest);
    let mut out = String::with_capacity(xhtml.len());
    let mut pending_space = false;
    for c in uncommented.trim().chars() {
        if c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if pending_space && c != '<' && !out.ends_with('>') {
            out.push(' ');
        }
        pending_space = false;
        out.push(c);
    }
    out
}

/// Refuses a list where R4 allows one element, in `value` (a resource) and every resource in
/// it, as the R4 definitions say (`path` follows `value` through the model).
fn one_where_r4_allows_one(value: &Value, path: &mut ElementPath) -> Result<(), XmlError> {
    let Some(resource_type) = value.get("resourceType").and_then(Value::as_str) else {
        return Err(XmlError::NotFhirXml(
            "a resource without its type".to_owned(),
        ));
    };
    path.push(resource_type);
    let checked = fields(value, path);
    path.pop();
    checked
}

fn fields(value: &Value, path: &mut ElementPath) -> Result<(), XmlError> {
    let Value::Object(map) = value else {
        return Ok(());
    };
    for (key, child) in map {
        if key == "resourceType" {
            continue;
        }
        // `_given` carries the ids and extensions of `given`, with its cardinality.
        path.push(key.strip_prefix('_').unwrap_or(key));
        let checked = match child {
            Value::Array(_) if !path.current_element_is_sequence() => {
                Err(XmlError::Repeated(key.clone()))
            }
            Value::Array(items) => items.iter().try_for_each(|item| element(item, path)),
            other => element(other, path),
        };
        path.pop();
        checked?;
    }
    Ok(())
}

fn element(value: &Value, path: &mut ElementPath) -> Result<(), XmlError> {
    if path.current_element_is_resource() {
        one_where_r4_allows_one(value, path)
    } else {
        fields(value, path)
    }
}

/// `json` with `resourceType` first in every object that has one (`None`: not JSON).
fn type_first(json: &[u8]) -> Option<Vec<u8>> {
    fn reorder(value: &mut Value) {
        match value {
            Value::Object(map) => {
                if let Some(resource_type) = map.shift_remove("resourceType") {
                    map.shift_insert(0, "resourceType".to_owned(), resource_type);
                }
                map.values_mut().for_each(reorder);
            }
            Value::Array(items) => items.iter_mut().for_each(reorder),
            _ => {}
        }
    }
    let mut value: Value = serde_json::from_slice(json).ok()?;
    reorder(&mut value);
    serde_json::to_vec(&value).ok()
}
