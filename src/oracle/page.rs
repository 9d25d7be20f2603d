//! Reading a LIST page's detail (`history::ListDetail` as JSON in
//! `ops.detail`): only what the check needs, borrowed from the text where
//! it can be. The check reads every page of a run, about one operation in
//! ten, so this is on its hottest path.
//!
//! `parse` first tries `scan`, a reader of the one shape the workload
//! writes (plain keys, ETags with escaped quotes, scalars elsewhere); on
//! anything else it gives up and serde_json reads the page. `scan` never
//! answers differently from serde_json: where it answers at all, the
//! result is the same (tested on generated and hand-made pages). serde
//! took 2 us a page here against 0.5 us for the scan, about an eighth of
//! the whole check.

use std::borrow::Cow;

use serde::Deserialize;

use super::etag_core;

/// The parts of a LIST page's `ListDetail` the check reads.
#[derive(Debug, PartialEq, Deserialize)]
pub(super) struct PageView<'a> {
    #[serde(borrow)]
    pub after: Option<Str<'a>>,
    #[serde(borrow, deserialize_with = "page_entries")]
    pub keys: Vec<PageEntry<'a>>,
    pub truncated: bool,
}

pub(super) type PageEntry<'a> = (Str<'a>, u64, Option<ETag<'a>>);

/// Entries a page is read into before it has to grow (the workload asks
/// for 25 keys a page).
pub(super) const PAGE_ENTRIES: usize = 32;

/// Reads a page's detail; `None` if it is not one.
pub(super) fn parse(detail: &str) -> Option<PageView<'_>> {
    scan(detail).or_else(|| serde_json::from_str(detail).ok())
}

/// A page's entries in one allocation: serde's own `Vec` starts at 4 and
/// grows as entries arrive, three reallocations for every page of 25.
fn page_entries<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PageEntry<'de>>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<PageEntry<'de>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of LIST entries")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(PAGE_ENTRIES));
            while let Some(e) = seq.next_element()? {
                entries.push(e);
            }
            Ok(entries)
        }
    }
    d.deserialize_seq(V)
}

/// A JSON string borrowed when it has no escape (keys the workload
/// writes), copied when it has one. serde's own `Cow<str>` borrows only as
/// a struct's field, never inside a tuple, so every key of every page was
/// copied.
#[derive(Debug, PartialEq)]
pub(super) struct Str<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A listed ETag's core (`etag_core`), borrowed from the page's JSON,
/// where its quotes are escaped (`"\"…\""`): unescaping it copied every
/// ETag of every page.
#[derive(Debug, PartialEq)]
pub(super) struct ETag<'a>(pub Cow<'a, str>);

impl std::ops::Deref for ETag<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for ETag<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&serde_json::value::RawValue>::deserialize(d)?.get();
        if let Some(core) = plain_etag(raw) {
            return Ok(ETag(Cow::Borrowed(core)));
        }
        let text: String = serde_json::from_str(raw).map_err(serde::de::Error::custom)?;
        Ok(ETag(Cow::Owned(etag_core(&text).to_string())))
    }
}

/// The core of an ETag written as the JSON string `raw` (quotes
/// included), if it needs no unescaping: `"\"core\""` or `"core"`.
fn plain_etag(raw: &str) -> Option<&str> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    let core = inner
        .strip_prefix("\\\"")
        .and_then(|c| c.strip_suffix("\\\""))
        .unwrap_or(inner);
    plain(core.as_bytes()).then_some(core)
}

/// Text a JSON string holds as it is: no quote, escape or control byte.
fn plain(bytes: &[u8]) -> bool {
    !bytes.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20)
}

/// The page, if `json` has the shape the workload writes.
fn scan(json: &str) -> Option<PageView<'_>> {
    let mut s = Scanner { text: json, at: 0 };
    s.expect(b'{')?;
    let (mut after, mut keys, mut truncated) = (None, None, None);
    loop {
        let name = s.plain_string()?;
        s.expect(b':')?;
        match name {
            "after" if after.is_none() => after = Some(s.plain_or_null()?),
            "keys" if keys.is_none() => keys = Some(s.entries()?),
            "truncated" if truncated.is_none() => truncated = Some(s.boolean()?),
            "after" | "keys" | "truncated" => return None,
            _ => s.skip_scalar()?,
        }
        match s.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    s.space();
    if s.at != json.len() {
        return None;
    }
    Some(PageView {
        after: after?.map(|a| Str(Cow::Borrowed(a))),
        keys: keys?,
        truncated: truncated?,
    })
}

/// A cursor over JSON text; every method skips the whitespace before its
/// token and gives up (`None`) on anything unexpected.
struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn space(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.bytes().get(self.at) {
            self.at += 1;
        }
    }

    /// The next token's first byte, consumed.
    fn next(&mut self) -> Option<u8> {
        self.space();
        let b = *self.bytes().get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        (self.next()? == b).then_some(())
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        self.space();
        self.bytes()[self.at..]
            .starts_with(word.as_bytes())
            .then(|| self.at += word.len())
    }

    /// A string token with its quotes, escapes left as they are.
    fn raw_string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at - 1;
        loop {
            let rest = &self.bytes()[self.at..];
            let i = memchr::memchr2(b'"', b'\\', rest)?;
            self.at += i + 1;
            if rest[i] == b'"' {
                return Some(&self.text[start..self.at]);
            }
            // An escape: the byte after the backslash is part of it.
            self.at += 1;
        }
    }

    /// A string whose text needs no unescaping, read in one pass: it
    /// ends at the first quote, and a backslash or control byte before
    /// that is not plain.
    fn plain_string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let len = self.bytes()[start..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if self.bytes()[start + len] != b'"' {
            return None;
        }
        self.at = start + len + 1;
        Some(&self.text[start..start + len])
    }

    /// A listed ETag's core (`plain_etag`); the workload's shape,
    /// `"\"core\""` with a plain core, in one pass, anything else as
    /// `plain_etag` reads it. The pass took pages of 25 entries with ETags
    /// from 1.2 to 0.95 us.
    fn etag(&mut self) -> Option<&'a str> {
        self.space();
        let token = self.at;
        let bytes = self.bytes();
        if bytes[token..].starts_with(b"\"\\\"") {
            let start = token + 3;
            if let Some(len) = bytes[start..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                && bytes[start + len..].starts_with(b"\\\"\"")
            {
                self.at = start + len + 3;
                return Some(&self.text[start..start + len]);
            }
        }
        plain_etag(self.raw_string()?)
    }

    fn plain_or_null(&mut self) -> Option<Option<&'a str>> {
        if self.literal("null").is_some() {
            return Some(None);
        }
        self.plain_string().map(Some)
    }

    fn boolean(&mut self) -> Option<bool> {
        if self.literal("true").is_some() {
            Some(true)
        } else {
            self.literal("false").map(|()| false)
        }
    }

    /// A non-negative integer that fits a u64, in JSON's form.
    fn number(&mut self) -> Option<u64> {
        self.space();
        let digits = &self.bytes()[self.at..];
        let mut value = 0u64;
        let mut n = 0;
        while let Some(&d) = digits.get(n)
            && d.is_ascii_digit()
        {
            value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            n += 1;
        }
        if n == 0 || (n > 1 && digits[0] == b'0') {
            return None;
        }
        // A fraction or exponent is not an integer.
        if let Some(b'.' | b'e' | b'E') = digits.get(n) {
            return None;
        }
        self.at += n;
        Some(value)
    }

    /// Any plain string, number, boolean or null (a field the check
    /// ignores; serde_json would still reject a bad escape in it).
    fn skip_scalar(&mut self) -> Option<()> {
        self.space();
        match *self.bytes().get(self.at)? {
            b'"' => self.plain_string().map(drop),
            b'n' => self.literal("null"),
            b't' | b'f' => self.boolean().map(drop),
            _ => self.number().map(drop),
        }
    }

    /// `[["key", size, "\"etag\"" or null], ...]`.
    fn entries(&mut self) -> Option<Vec<PageEntry<'a>>> {
        let mut entries = Vec::with_capacity(PAGE_ENTRIES);
        self.expect(b'[')?;
        self.space();
        if self.bytes().get(self.at) == Some(&b']') {
            self.at += 1;
            return Some(entries);
        }
        loop {
            self.expect(b'[')?;
            let key = self.plain_string()?;
            self.expect(b',')?;
            let size = self.number()?;
            self.expect(b',')?;
            let etag = if self.literal("null").is_some() {
                None
            } else {
                Some(ETag(Cow::Borrowed(self.etag()?)))
            };
            self.expect(b']')?;
            entries.push((Str(Cow::Borrowed(key)), size, etag));
            match self.next()? {
                b',' => {}
                b']' => return Some(entries),
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::history::ListDetail;

    /// `scan` answers only where serde_json does, and the same.
    fn agrees(json: &str) -> bool {
        let fast = scan(json);
        let slow: Option<PageView<'_>> = serde_json::from_str(json).ok();
        if let Some(f) = &fast {
            assert_eq!(Some(f), slow.as_ref(), "{json}");
        }
        fast.is_some()
    }

    fn page(rng: &mut ChaCha8Rng) -> ListDetail {
        let key = |rng: &mut ChaCha8Rng| {
            format!(
                "faultline/20261123T134507Z-25/w{:03}/k{:05}",
                rng.random_range(0..24),
                rng.random_range(0..100)
            )
        };
        let mut keys: Vec<_> = (0..rng.random_range(0..26))
            .map(|_| {
                let etag = rng
                    .random_bool(0.9)
                    .then(|| format!("\"{:032x}\"", rng.random::<u128>()));
                (key(rng), rng.random_range(0..10_000_000u64), etag)
            })
            .collect();
        keys.sort();
        ListDetail {
            page: rng.random_range(0..9),
            after: rng.random_bool(0.7).then(|| key(rng)),
            start_after: rng.random_bool(0.3).then(|| key(rng)),
            continuation: rng.random_bool(0.5).then(|| "AAAbase64+/=".to_string()),
            max_keys: 25,
            keys,
            truncated: rng.random_bool(0.5),
            next: rng.random_bool(0.5).then(|| "token".to_string()),
        }
    }

    #[test]
    fn the_workloads_pages_are_scanned_as_serde_reads_them() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..2_000 {
            let json = serde_json::to_string(&page(&mut rng)).unwrap();
            assert!(agrees(&json), "the scan gave up on {json}");
        }
    }

    #[test]
    fn the_scan_gives_up_where_the_page_is_unusual_and_never_disagrees() {
        let e = r#"["p/a",1,"\"ab\""]"#;
        let answered = [
            format!(r#"{{"after":null,"keys":[{e}],"truncated":false}}"#),
            format!(" {{ \"after\" : \"p/\" ,\n\"keys\" : [ {e} ] , \"truncated\" : true }} "),
            r#"{"keys":[],"truncated":true,"after":"x","next":null,"page":0}"#.into(),
            r#"{"after":null,"keys":[["p/a",0,"ab"]],"truncated":false}"#.into(),
            r#"{"after":null,"keys":[["p/a",0,null]],"truncated":false}"#.into(),
        ];
        let given_up = [
            // Escapes: serde's turn.
            r#"{"after":"p\/a","keys":[],"truncated":false}"#,
            r#"{"after":null,"keys":[["p/\u00e9",1,null]],"truncated":false}"#,
            r#"{"af\u0074er":null,"keys":[],"truncated":false}"#,
            r#"{"after":null,"keys":[["p/a",1,"\"a\u0062\""]],"truncated":false}"#,
            r#"{"after":null,"keys":[],"truncated":false,"next":"a\"b"}"#,
            "{\"after\":\"p/\ta\",\"keys\":[],\"truncated\":false}",
            // Not a page, or not quite.
            r#"{"after":null,"keys":[],"truncated":false} x"#,
            r#"{"after":null,"after":null,"keys":[],"truncated":false}"#,
            r#"{"after":null,"keys":[],"truncated":false,}"#,
            r#"{"after":null,"keys":[["p/a",01,null]],"truncated":false}"#,
            r#"{"after":null,"keys":[["p/a",-1,null]],"truncated":false}"#,
            r#"{"after":null,"keys":[["p/a",1.0,null]],"truncated":false}"#,
            r#"{"after":null,"keys":[["p/a",1e3,null]],"truncated":false}"#,
            r#"{"after":null,"keys":[["p/a",18446744073709551616,null]],"truncated":false}"#,
            r#"{"after":null,"keys":[["p/a",1,null,2]],"truncated":false}"#,
            r#"{"after":null,"keys":[["p/a",1,7]],"truncated":false}"#,
            r#"{"after":null,"keys":[],"truncated":false,"extra":{"a":1}}"#,
            r#"{"after":null,"keys":[]}"#,
            r#"{"after":null,"keys":[],"truncated":nul}"#,
            "",
        ];
        for json in &answered {
            assert!(agrees(json), "{json}");
        }
        for json in given_up {
            assert!(!agrees(json), "{json}");
        }
        let big = r#"{"after":null,"keys":[["p/a",18446744073709551615,null]],"truncated":false}"#;
        assert_eq!(scan(big).unwrap().keys[0].1, u64::MAX);
    }

    #[test]
    fn mangled_pages_never_make_the_scan_disagree() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let alphabet = br#"{}[]",:\ 0123456789-.eEtrufalsn/u"#;
        let mut answered = 0;
        for _ in 0..20_000 {
            let mut json = serde_json::to_vec(&page(&mut rng)).unwrap();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..json.len());
                let b = alphabet[rng.random_range(0..alphabet.len())];
                match rng.random_range(0..3) {
                    0 => json[at] = b,
                    1 => json.insert(at, b),
                    _ => drop(json.remove(at)),
                }
            }
            if let Ok(json) = String::from_utf8(json) {
                answered += usize::from(agrees(&json));
            }
        }
        // Most edits land in a key, a size or an ETag and leave a page.
        assert!(answered > 1_000, "{answered}");
    }

    #[test]
    fn listed_etags_are_compared_without_their_quotes_however_escaped() {
        let parse = |json: &str| {
            let (_, _, etag): PageEntry<'_> = serde_json::from_str(json).unwrap();
            etag.map(|e| (e.to_string(), matches!(e.0, Cow::Borrowed(_))))
        };
        // As the workload stores them: quoted, the quotes escaped; borrowed.
        assert_eq!(
            parse(r#"["k", 3, "\"ab12\""]"#),
            Some(("ab12".into(), true))
        );
        assert_eq!(
            parse(r#"["k", 3, "ab12-2"]"#),
            Some(("ab12-2".into(), true))
        );
        // Any other escape is undone, not compared raw.
        assert_eq!(
            parse(r#"["k", 3, "\"a\u0062\""]"#),
            Some(("ab".into(), false))
        );
        assert_eq!(parse(r#"["k", 3, null]"#), None);
        assert_eq!(etag_core("\"ab12\""), "ab12");
    }
}
