//! The common shape of a Reference read without building a tree: `{"reference":"Patient/1"}`,
//! perhaps with other members whose values are plain strings (`display`, `type`), or a list of
//! such objects. Reading whose data a searchset holds meets this shape on nearly every entry,
//! and parsing it into a tree was the largest part of that reading.
//!
//! The text given was already read as JSON (it is a raw value serde_json has checked), so this
//! reader only has to recognise the shape, never to judge whether JSON is well formed. Anything
//! else (an escape in a key or a value, a member that is not a string, a key given twice, a
//! Reference without a `reference`, a blank one) is `None`, and the caller reads the tree as
//! before: the fast path answers only where the answer cannot differ.

/// The `reference` of each object, in order, when `text` is one such object or a list of them
/// (an empty list: none).
pub(super) fn flat_references(text: &str) -> Option<References<'_>> {
    let mut cursor = Cursor {
        text,
        at: skip_space(text.as_bytes(), 0),
    };
    let references = match cursor.peek()? {
        b'{' => References::One(cursor.object()?),
        b'[' => {
            let start = cursor.at;
            cursor.list(&mut |_| {})?;
            References::List(&text[start..cursor.at])
        }
        _ => return None,
    };
    cursor.space();
    (cursor.at == text.len()).then_some(references)
}

/// What [`flat_references`] read: one Reference's `reference` (the usual `subject`), or a
/// list of them, as its text (read through once more when visited: no allocation for it).
#[derive(Debug)]
pub(super) enum References<'a> {
    One(&'a str),
    List(&'a str),
}

impl<'a> References<'a> {
    /// Each reference handed to `visit`, in order.
    pub(super) fn visit(&self, visit: &mut dyn FnMut(&'a str)) {
        match self {
            References::One(reference) => visit(reference),
            // (Read whole once already: it reads so again.)
            References::List(list) => {
                let _ = Cursor { text: list, at: 0 }.list(visit);
            }
        }
    }
}

/// At most this many members in an object read here (a Reference has four).
const MAX_MEMBERS: usize = 8;

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// The next byte that is not white space, taken.
    fn next(&mut self) -> Option<u8> {
        self.space();
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn space(&mut self) {
        self.at = skip_space(self.text.as_bytes(), self.at);
    }

    /// A string without escapes, its quotes taken.
    fn string(&mut self) -> Option<&'a str> {
        if self.next()? != b'"' {
            return None;
        }
        let rest = &self.text.as_bytes()[self.at..];
        // The text is JSON: without a backslash in it, a string ends at the next quote.
        let end = memchr::memchr2(b'"', b'\\', rest)?;
        if rest[end] != b'"' {
            return None;
        }
        let start = self.at;
        self.at += end + 1;
        // (A quote is ASCII: both ends are on character boundaries.)
        Some(&self.text[start..start + end])
    }

    /// A list of objects as [`Self::object`] reads them, each one's reference handed to
    /// `visit` as it is read (so only a list read whole before may be visited).
    fn list(&mut self, visit: &mut dyn FnMut(&'a str)) -> Option<()> {
        if self.next()? != b'[' {
            return None;
        }
        self.space();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            visit(self.object()?);
            match self.next()? {
                b',' => self.space(),
                b']' => return Some(()),
                _ => return None,
            }
        }
    }

    /// An object whose members are all strings without escapes, keys plain and given once, with
    /// a `reference` that is not blank: that reference.
    fn object(&mut self) -> Option<&'a str> {
        if self.next()? != b'{' {
            return None;
        }
        let mut keys: [&str; MAX_MEMBERS] = [""; MAX_MEMBERS];
        let mut count = 0;
        let mut reference = None;
        loop {
            let key = self.string()?;
            // Only names as FHIR writes them: no look-alike of serde_json's raw value token.
            let plain = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric());
            if !plain || count == MAX_MEMBERS || keys[..count].contains(&key) {
                return None;
            }
            keys[count] = key;
            count += 1;
            if self.next()? != b':' {
                return None;
            }
            let value = self.string()?;
            if key == "reference" {
                reference = Some(value);
            }
            match self.next()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
        // A blank reference is read by the tree's rules (what else the Reference says).
        reference.filter(|reference| !reference.trim().is_empty())
    }
}

fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while bytes
        .get(at)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    /// [`super::flat_references`] as a list.
    fn flat_references(text: &str) -> Option<Vec<&str>> {
        let mut found = Vec::new();
        super::flat_references(text)?.visit(&mut |reference| found.push(reference));
        Some(found)
    }

    /// What the tree reads of `text` as a Reference at a path's end, or that it refuses it.
    fn by_the_tree(text: &str) -> Option<Vec<String>> {
        let tree = crate::strict_json::tree_unique_str(text).ok()?;
        let mut steps = "subject".split('.');
        steps.next();
        let mut found = Vec::new();
        super::super::walk(&tree, steps, &mut |r| found.push(r.to_owned()));
        Some(found)
    }

    /// Every object of up to three members from these names and values (a name given twice
    /// among them), alone, in a list, and two in a list, with and without white space: wherever
    /// the fast path answers, the tree gives the same answer; and it does answer for the
    /// plain shapes.
    #[test]
    fn the_fast_path_agrees_with_the_tree_everywhere_it_answers() {
        let names = ["reference", "display", "type", "identifier"];
        let values = [
            r#""Patient/anne""#,
            r#""Practitioner/1""#,
            r##""#://x/Patient/anne""##,
            r#"" ""#,
            "\"\u{a0}\"",
            r#""\u00a0""#,
            r#""""#,
            "7",
            "{}",
        ];
        let mut objects = vec![String::from("{}")];
        let mut last = vec![Vec::<String>::new()];
        for _ in 0..3 {
            let mut next = Vec::new();
            for members in &last {
                for name in names {
                    for value in values {
                        let mut more = members.clone();
                        more.push(format!("\"{name}\":{value}"));
                        next.push(more);
                    }
                }
            }
            objects.extend(next.iter().map(|m| format!("{{{}}}", m.join(","))));
            last = next;
        }
        let (mut answered, mut checked) = (0, 0);
        let mut check = |text: String| {
            checked += 1;
            if let Some(fast) = flat_references(&text) {
                answered += 1;
                let fast: Vec<String> = fast.into_iter().map(str::to_owned).collect();
                assert_eq!(Some(fast), by_the_tree(&text), "{text}");
            }
        };
        for (index, object) in objects.iter().enumerate() {
            check(object.clone());
            check(format!(" [ {} ]\n", object.replace(',', " ,\n ")));
            // Two in a list: each with a few partners, not all pairs.
            for partner in objects.iter().skip(index % 97).step_by(4099) {
                check(format!("[{object},{partner}]"));
            }
        }
        assert!(checked > 100_000, "{checked} checked");
        assert!(answered > 1_000, "the fast path answered {answered} times");
    }

    #[test]
    fn the_common_shapes_are_read() {
        let one = r#"{"reference":"Patient/anne"}"#;
        assert_eq!(flat_references(one), Some(vec!["Patient/anne"]));
        let spaced = " { \"reference\" : \"Patient/anne\" ,\n\"display\":\"Anne\" } ";
        assert_eq!(flat_references(spaced), Some(vec!["Patient/anne"]));
        let list = r#"[{"display":"Dr","reference":"Practitioner/1"},{"reference":"Patient/bo"}]"#;
        assert_eq!(
            flat_references(list),
            Some(vec!["Practitioner/1", "Patient/bo"])
        );
        assert_eq!(flat_references("[ ]"), Some(vec![]));
    }

    #[test]
    fn anything_else_is_left_to_the_tree() {
        for text in [
            // Escapes, in the value or in a key.
            r#"{"reference":"Patient\/anne"}"#,
            r#"{"reference":"Patient/a\"nne"}"#,
            r#"{"refer\u0065nce":"Patient/anne"}"#,
            // A key given twice; serde_json's raw value token; an empty key.
            r#"{"reference":"Patient/anne","reference":"Patient/bo"}"#,
            r#"{"$serde_json::private::RawValue":"{}","reference":"Patient/anne"}"#,
            r#"{"":"x","reference":"Patient/anne"}"#,
            // No reference, a blank one, one that is not a string, other members not strings.
            r#"{"display":"Anne"}"#,
            r#"{"reference":"  "}"#,
            r#"{}"#,
            r#"{"reference":7}"#,
            r#"{"reference":"Patient/anne","identifier":{"value":"1"}}"#,
            r#"{"reference":"Patient/anne","extension":[]}"#,
            // Lists holding anything but such objects; other values; something after.
            r#"[{"reference":"Patient/anne"},"Patient/bo"]"#,
            r#"[{"reference":"Patient/anne"},[]]"#,
            r#""Patient/anne""#,
            r#"null"#,
            r#"{"reference":"Patient/anne"} {}"#,
            r#"{"a":"1","b":"2","c":"3","d":"4","e":"5","f":"6","g":"7","h":"8","reference":"Patient/anne"}"#,
        ] {
            assert_eq!(flat_references(text), None, "{text}");
        }
    }
}
