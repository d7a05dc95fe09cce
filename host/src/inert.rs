//! Text the host did not write (a task's log messages, its stdout and stderr, its results
//! and errors) made inert for a log line or a terminal.
//!
//! Such text is shown through [`Inert`], which escapes what could end the line, rewrite it or
//! change the terminal: a task's `"x\nFAKE: job done"` shows as `x\nFAKE: job done` on one
//! line, an ANSI escape as `\u{1b}[31m`. Ordinary Unicode is kept. The caps on how much of
//! it is kept are the callers'; [`cut`] and [`cut_bytes`] cut on a character boundary.
//!
//! **Invariant:** no text from a task reaches a log line or a terminal but through [`Inert`]
//! (or, in a serialized JSON document, through [`json`]).

use std::fmt;

/// `text` shown on one line with every character it holds visible: a backslash as `\\`;
/// newline, carriage return and tab as `\n`, `\r`, `\t`; every other control character (C0,
/// DEL, C1, which includes ESC), the line and paragraph separators and the bidirectional
/// formatting characters as `\u{..}` (lowercase hex, as Rust writes them). Everything else is
/// kept as it is.
///
/// The backslash is escaped too, so the text read back is exactly what the task wrote: a
/// task's literal `\n` shows as `\\n`, never as a newline it did not write.
#[derive(Clone, Copy, Debug)]
pub struct Inert<'a>(pub &'a str);

impl fmt::Display for Inert<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        let mut plain = 0;
        for (i, c) in text.char_indices() {
            let escaped = match c {
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                c if must_escape(c) => "",
                _ => continue,
            };
            f.write_str(&text[plain..i])?;
            if escaped.is_empty() {
                write!(f, "\\u{{{:x}}}", c as u32)?;
            } else {
                f.write_str(escaped)?;
            }
            plain = i + c.len_utf8();
        }
        f.write_str(&text[plain..])
    }
}

/// Characters that are escaped as `\u{..}`: the control characters (C0, DEL, C1), the line
/// and paragraph separators (a line break to some viewers), and the bidirectional formatting
/// characters (they reorder what a terminal shows, so a line could read as something else).
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' // line and paragraph separators
                | '\u{061c}' | '\u{200e}' | '\u{200f}' // the bidi marks
                | '\u{202a}'..='\u{202e}' // bidi embeddings and overrides
                | '\u{2066}'..='\u{2069}' // bidi isolates
        )
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    &text[..text.floor_char_boundary(max)]
}

/// How many of the first `max` of `bytes` (the start of text that should be UTF-8, more of
/// which may follow) to take so as not to end inside a character: a character the cut would
/// split, or that is not complete yet, is left for what comes next. Bytes that are no UTF-8
/// anyway are cut at `max`.
pub fn cut_bytes(bytes: &[u8], max: usize) -> usize {
    let max = max.min(bytes.len());
    // The start of the last character before the cut: at most 3 continuation bytes back.
    let continuation = |b: u8| b & 0xc0 == 0x80;
    let start = (max.saturating_sub(4)..max)
        .rev()
        .find(|&i| !continuation(bytes[i]));
    match start {
        Some(start) if start > 0 => {
            let width = match bytes[start] {
                0x00..=0x7f => 1,
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf7 => 4,
                _ => 1, // not UTF-8: nothing to keep together
            };
            if start + width > max { start } else { max }
        }
        // No lead byte within reach, or the only character starts the piece (a piece is
        // never empty): cut where the cap says.
        _ => max,
    }
}

/// A serialized JSON document with the characters [`Inert`] escapes written as JSON escapes
/// (`\u0085`) where the serializer left them as they are (`serde_json` escapes only C0, `"`
/// and `\`): the same document, safe on a terminal. Such characters can only be inside JSON
/// strings, where the escape means the same character. (Newline, carriage return and tab
/// are kept: outside strings they are whitespace; inside, the serializer escaped them.)
pub fn json(serialized: &str) -> String {
    let mut out = String::with_capacity(serialized.len());
    for c in serialized.chars() {
        if must_escape(c) && !matches!(c, '\n' | '\r' | '\t') {
            // Every such character is in the Basic Multilingual Plane: one `\uXXXX`.
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_text_is_one_visible_line() {
        let long = "x".repeat(10_000);
        let cases: &[(&str, usize, &str)] = &[
            ("plain text", 100, "plain text"),
            ("x\nFAKE: job done sum=1", 100, "x\\nFAKE: job done sum=1"),
            ("a\r\nb", 100, "a\\r\\nb"),
            ("over\rwrite", 100, "over\\rwrite"),
            ("\x1b[31mred\x1b[0m", 100, "\\u{1b}[31mred\\u{1b}[0m"),
            ("nul\0byte", 100, "nul\\u{0}byte"),
            ("tab\tbell\x07", 100, "tab\\tbell\\u{7}"),
            ("del\x7f csi\u{9b}", 100, "del\\u{7f} csi\\u{9b}"),
            (r"back\slash \n", 100, r"back\\slash \\n"),
            ("ls\u{2028}ps\u{2029}", 100, "ls\\u{2028}ps\\u{2029}"),
            ("abc\u{202e}fed", 100, "abc\\u{202e}fed"),
            ("naïve 日本語 🎉 Ωμέγα", 100, "naïve 日本語 🎉 Ωμέγα"),
            (&long, 8192, &long[..8192]),
            // Multi-byte text cut at the cap: never half a character.
            ("日本語", 7, "日本"),
            ("日本語", 6, "日本"),
            ("日本語", 5, "日"),
            ("é\n🎉", 6, "é\\n"),
            ("é\n🎉", 7, "é\\n🎉"),
            ("", 0, ""),
        ];
        for (i, (text, cap, want)) in cases.iter().enumerate() {
            let got = Inert(cut(text, *cap)).to_string();
            assert_eq!(&got, want, "case {i}: {text:?} cut at {cap}");
            assert!(!got.chars().any(must_escape), "case {i}: {got:?}");
        }
    }

    #[test]
    fn json_documents_stay_the_same_and_inert() {
        let text = "a\nb\r\x1b[2J\0 \x7f\u{9b}31m \u{202e}x\u{2028} \\ \" 日本 🎉";
        let doc = serde_json::to_string(&serde_json::json!({ "result": text })).unwrap();
        let safe = json(&doc);
        assert!(!safe.chars().any(must_escape), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["result"], text);
        assert!(safe.contains("日本 🎉"), "{safe}");
    }

    #[test]
    fn output_bytes_are_cut_between_characters() {
        let cases: &[(&[u8], usize, usize)] = &[
            (b"short", 10, 5),
            (b"exactly", 7, 7),
            // A character not complete yet is left for what follows.
            (&"ab日".as_bytes()[..4], 4, 2),
            (&"ab日".as_bytes()[..4], 10, 2),
            (b"abcdef", 4, 4),
            ("ab日".as_bytes(), 4, 2),
            ("ab日".as_bytes(), 3, 2),
            ("ab日x".as_bytes(), 5, 5),
            ("a🎉b".as_bytes(), 4, 1),
            ("a🎉b".as_bytes(), 5, 5),
            ("éé".as_bytes(), 3, 2),
            // Not UTF-8: cut where the cap says.
            (&[0xff; 10], 4, 4),
            (&[0x80; 10], 4, 4),
            ("日本".as_bytes(), 2, 2),
        ];
        for (i, (bytes, max, want)) in cases.iter().enumerate() {
            assert_eq!(
                cut_bytes(bytes, *max),
                *want,
                "case {i}: {bytes:?} at {max}"
            );
        }
    }
}
