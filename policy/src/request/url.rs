//! URL syntax: path segments and `application/x-www-form-urlencoded` parameters, decoded
//! strictly (RFC 3986 §2.1 percent-encoding; malformed escapes, non-UTF-8 and control
//! characters refused).

use super::ClassifyError;

pub(super) fn split_path(path: &str) -> Result<Vec<String>, ClassifyError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    path.split('/')
        .map(|raw| {
            if raw.is_empty() {
                return Err(ClassifyError::EmptySegment);
            }
            let lower = raw.to_ascii_lowercase();
            if lower.contains("%2f") || lower.contains("%5c") || raw.contains('\\') {
                return Err(ClassifyError::EncodedSlash);
            }
            let decoded = percent_decode(raw, false)?;
            if decoded == "." || decoded == ".." {
                return Err(ClassifyError::DotSegment);
            }
            Ok(decoded)
        })
        .collect()
}

/// Refuses parameters that make the request mean something else than it says.
pub(super) fn check_params(params: &[(String, String)]) -> Result<(), ClassifyError> {
    for (name, value) in params {
        let well_formed = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if !well_formed {
            return Err(ClassifyError::BadParameterName);
        }
        match name.as_str() {
            "_method" => return Err(ClassifyError::MethodOverride),
            // A cascading delete removes what references its target too, which no check sees.
            "_cascade" => return Err(ClassifyError::MethodOverride),
            "_format"
                if !matches!(
                    value.as_str(),
                    "json" | "application/json" | "application/fhir+json"
                ) =>
            {
                return Err(ClassifyError::UnsupportedFormat);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Parses `application/x-www-form-urlencoded` text (a query string, or a `POST _search` body).
pub fn parse_form(text: &str) -> Result<Vec<(String, String)>, ClassifyError> {
    let params = parse_query(text)?;
    check_params(&params)?;
    Ok(params)
}

pub(super) fn parse_query(query: &str) -> Result<Vec<(String, String)>, ClassifyError> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(name, true)?, percent_decode(value, true)?))
        })
        .collect()
}

/// Decodes `%XX` escapes (and `+` as space in queries); refuses malformed escapes, non-UTF-8
/// results and control characters, which no FHIR path or parameter needs.
pub(crate) fn percent_decode(input: &str, plus_is_space: bool) -> Result<String, ClassifyError> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(ClassifyError::BadEncoding)?;
                let hi = hex_value(hex[0]).ok_or(ClassifyError::BadEncoding)?;
                let lo = hex_value(hex[1]).ok_or(ClassifyError::BadEncoding)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8(out).map_err(|_| ClassifyError::BadEncoding)?;
    if text.chars().any(char::is_control) {
        return Err(ClassifyError::BadEncoding);
    }
    Ok(text)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
