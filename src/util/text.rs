//! Text from outside, made safe to show.

/// Text from outside (a server's error message, a field of a record read back) made safe to
/// show in a log line, `/status` or a report: control characters (a newline, an ESC starting a
/// terminal sequence) and the invisible characters that reorder or hide text are escaped, so
/// such text can neither forge a log line nor rewrite a terminal; and it is cut to `max`
/// characters.
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        let hidden = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        if c.is_control() || hidden {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Longest outside text kept in one message.
pub const MAX_OUTSIDE_TEXT: usize = 500;

/// An error and its causes on one line (`error sending request: connection refused`): many
/// clients say what failed only in the causes.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_hidden_characters_are_escaped_and_text_is_cut() {
        assert_eq!(
            printable("ok\n2026-11-29 INFO forged\u{1b}[2J\u{202e}", 100),
            "ok\\n2026-11-29 INFO forged\\u{1b}[2J\\u{202e}"
        );
        assert_eq!(printable("abcdef", 3), "abc…");
        assert_eq!(printable("déjà vu", 100), "déjà vu");
    }
}
