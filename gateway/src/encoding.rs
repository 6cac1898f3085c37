//! Percent-encoding for query strings and form bodies.

/// Percent-encodes everything but RFC 3986 unreserved characters: safe in a query string and
/// as an `application/x-www-form-urlencoded` value.
pub(crate) fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes an `application/x-www-form-urlencoded` body into name/value pairs (WHATWG URL
/// §5.1: `+` is a space, `%XX` a byte). A bad escape or invalid UTF-8 gives `None`.
pub(crate) fn form_decode(body: &[u8]) -> Option<Vec<(String, String)>> {
    fn decode(part: &[u8]) -> Option<String> {
        let mut out = Vec::with_capacity(part.len());
        let mut bytes = part.iter();
        while let Some(&byte) = bytes.next() {
            match byte {
                b'+' => out.push(b' '),
                b'%' => {
                    let high = char::from(*bytes.next()?).to_digit(16)?;
                    let low = char::from(*bytes.next()?).to_digit(16)?;
                    out.push(u8::try_from(high * 16 + low).ok()?);
                }
                other => out.push(other),
            }
        }
        String::from_utf8(out).ok()
    }
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut halves = pair.splitn(2, |&b| b == b'=');
            let name = decode(halves.next().unwrap_or_default())?;
            let value = decode(halves.next().unwrap_or_default())?;
            Some((name, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_are_decoded() {
        let pairs = form_decode(b"a=1+2&b=%2Fx%3D&&c=&d").unwrap();
        let expected = [("a", "1 2"), ("b", "/x="), ("c", ""), ("d", "")];
        assert_eq!(
            pairs,
            expected.map(|(n, v)| (n.to_owned(), v.to_owned())).to_vec()
        );
        assert_eq!(form_decode(b"a=%zz"), None);
        assert_eq!(form_decode(b"a=%C3"), None);
        assert_eq!(
            form_decode(form_encode("æ ø/å").as_bytes()).unwrap(),
            vec![("æ ø/å".to_owned(), String::new())]
        );
    }

    #[test]
    fn form_values_are_encoded() {
        assert_eq!(form_encode("a b&c=d/é~"), "a%20b%26c%3Dd%2F%C3%A9~");
    }
}
