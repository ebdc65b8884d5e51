//! Typed reading of a parsed YAML document that records every problem with its location and
//! keeps going, so one `slo-probe check` shows all of them. Parsing itself is marked-yaml's; this
//! module is the schema layer on top: known keys per table, leaf conversions, `${ENV}` and
//! `*_file` secret references.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, LoaderOptions, Node, Span};

use super::diag::{Diagnostics, Loc};

/// One file being read: where problems go and how they are located.
pub struct Doc<'d> {
    pub file: Arc<Path>,
    pub diags: &'d mut Diagnostics,
}

impl Doc<'_> {
    pub fn loc(&self, span: &Span) -> Loc {
        Loc::at(&self.file, span)
    }

    pub fn error(&mut self, span: &Span, message: impl Into<String>) {
        let loc = self.loc(span);
        self.diags.push(loc, message);
    }

    /// Parses the text; a syntax error is recorded and yields `None`.
    pub fn parse(&mut self, text: &str) -> Option<Node> {
        // The YAML scanner takes a NUL for the end of the text: whatever follows one would be
        // dropped without a word (a file cut short by a bad copy would still load). YAML text
        // holds no NUL, so one is an error, where it is.
        if let Some(at) = text.find('\0') {
            let before = &text[..at];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            let loc = Loc {
                file: Arc::clone(&self.file),
                line,
                column,
            };
            self.diags.push(
                loc,
                "a NUL byte: YAML text cannot hold one (everything after it would be ignored)",
            );
            return None;
        }
        let options = LoaderOptions::default().error_on_duplicate_keys(true);
        match marked_yaml::parse_yaml_with_options(0, text, options) {
            Ok(node) => Some(node),
            Err(e) => {
                let (marker, message) = match &e {
                    LoadError::TopLevelMustBeMapping(m) => (
                        Some(*m),
                        "the file must be a YAML mapping of fields".to_string(),
                    ),
                    LoadError::TopLevelMustBeSequence(m) => {
                        (Some(*m), "expected a sequence".into())
                    }
                    LoadError::UnexpectedAnchor(m) => (
                        Some(*m),
                        "YAML anchors and aliases are not supported".into(),
                    ),
                    LoadError::MappingKeyMustBeScalar(m) => {
                        (Some(*m), "mapping keys must be plain strings".into())
                    }
                    LoadError::UnexpectedTag(m) => (Some(*m), "YAML tags are not supported".into()),
                    LoadError::ScanError(m, scan) => {
                        (Some(*m), format!("invalid YAML: {}", scan.info()))
                    }
                    LoadError::DuplicateKey(inner) => {
                        let first = inner
                            .prev_key
                            .span()
                            .start()
                            .map(|m| format!("{}:{}", m.line(), m.column()))
                            .unwrap_or_default();
                        (
                            inner.key.span().start().copied(),
                            format!("duplicate key `{}` (first at {first})", inner.key.as_str()),
                        )
                    }
                };
                let span = marker.map(Span::new_start).unwrap_or_else(Span::new_blank);
                self.error(&span, message);
                None
            }
        }
    }

    /// Checks that `node` is a mapping whose keys are all in `known`, reporting each unknown key
    /// (with a suggestion when one is close). Returns the mapping to read fields from.
    pub fn table<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        known: &[&str],
    ) -> Option<&'n MarkedMappingNode> {
        let Some(map) = node.as_mapping() else {
            self.error(node.span(), format!("{what} must be a mapping"));
            return None;
        };
        for key in map.keys() {
            let k = key.as_str();
            if !known.contains(&k) {
                self.error(key.span(), unknown_field(k, what, known));
            }
        }
        Some(map)
    }

    /// A field that must be present; a missing one is reported at the start of its table.
    pub fn required<'n>(
        &mut self,
        map: &'n MarkedMappingNode,
        key: &str,
        what: &str,
    ) -> Option<&'n Node> {
        let node = map.get_node(key);
        if node.is_none() {
            self.error(
                &table_start(map),
                format!("missing field `{key}` in {what}"),
            );
        }
        node
    }

    pub fn scalar<'n>(&mut self, node: &'n Node, field: &str) -> Option<&'n MarkedScalarNode> {
        let s = node.as_scalar();
        if s.is_none() {
            self.error(
                node.span(),
                format!("`{field}` must be a single value, not a list or mapping"),
            );
        }
        s
    }

    pub fn string(&mut self, node: &Node, field: &str) -> Option<String> {
        self.scalar(node, field).map(|s| s.as_str().to_string())
    }

    /// A string that users see as a name (probe, slo, cluster): non-empty, `[A-Za-z0-9._-]`.
    pub fn name(&mut self, node: &Node, field: &str) -> Option<String> {
        let s = self.string(node, field)?;
        if let Err(why) = check_name(&s) {
            self.error(node.span(), format!("`{field}` {why}, got `{s}`"));
            return None;
        }
        Some(s)
    }

    pub fn boolean(&mut self, node: &Node, field: &str) -> Option<bool> {
        let s = self.scalar(node, field)?;
        let v = s.as_bool();
        if v.is_none() {
            self.error(
                node.span(),
                format!("`{field}` must be true or false, got `{}`", s.as_str()),
            );
        }
        v
    }

    pub fn integer<T: std::str::FromStr>(
        &mut self,
        node: &Node,
        field: &str,
        kind: &str,
    ) -> Option<T> {
        let s = self.scalar(node, field)?;
        match s.as_str().trim().parse::<T>() {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(
                    node.span(),
                    format!("`{field}` must be {kind}, got `{}`", s.as_str()),
                );
                None
            }
        }
    }

    /// A humantime duration (`10s`, `1m30s`, `500ms`) that must be greater than zero.
    pub fn duration(&mut self, node: &Node, field: &str) -> Option<Duration> {
        let s = self.scalar(node, field)?;
        let text = s.as_str().trim();
        if text.starts_with('-') {
            self.error(
                node.span(),
                format!("`{field}` must be positive, got `{text}`"),
            );
            return None;
        }
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.error(
                    node.span(),
                    format!("`{field}` must be greater than zero, got `{text}`"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    node.span(),
                    format!(
                        "`{field}` is not a duration (`{text}`: {e}); use e.g. 10s, 1m30s, 500ms"
                    ),
                );
                None
            }
        }
    }

    /// An SLO objective: a percentage with its sign (`99.9%`), strictly between 0 and 100, or
    /// an explicit ratio (`{ ratio: 0.999 }`), strictly between 0 and 1. Returned as a ratio.
    /// A bare number is refused: `0.999` would be 0.999 % to some readers and 99.9 % to others.
    pub fn objective(&mut self, node: &Node, field: &str) -> Option<f64> {
        if node.as_mapping().is_some() {
            let map = self.table(node, &format!("`{field}`"), &["ratio"])?;
            let ratio_node = self.required(map, "ratio", &format!("`{field}`"))?;
            let s = self.scalar(ratio_node, &format!("{field}.ratio"))?;
            let text = s.as_str().trim();
            return match text.parse::<f64>() {
                Ok(r) if r > 0.0 && r < 1.0 => Some(r),
                _ => {
                    self.error(
                        ratio_node.span(),
                        format!("`{field}.ratio` must be a number between 0 and 1 (both excluded), like 0.999, got `{text}`"),
                    );
                    None
                }
            };
        }
        let s = self.scalar(node, field)?;
        let text = s.as_str().trim();
        let Some(number) = text.strip_suffix('%') else {
            let message = match text.parse::<f64>() {
                Ok(r) if r > 0.0 && r < 1.0 => format!(
                    "`{field}` needs a `%` sign (or `{{ ratio: {text} }}`): `{text}` is {text}%; did you mean {}%?",
                    plain_number(r * 100.0)
                ),
                Ok(p) if (1.0..100.0).contains(&p) => {
                    format!("`{field}` needs a `%` sign: did you mean {text}%?")
                }
                Ok(_) => format!(
                    "`{field}` must be a percentage between 0% and 100% (both excluded) like 99.9%, got `{text}`"
                ),
                Err(_) => format!("`{field}` must be a percentage like 99.9%, got `{text}`"),
            };
            self.error(node.span(), message);
            return None;
        };
        match number.trim().parse::<f64>() {
            Ok(p) if p > 0.0 && p < 100.0 => Some(p / 100.0),
            Ok(_) => {
                self.error(
                    node.span(),
                    format!("`{field}` must be between 0% and 100% (both excluded), got `{text}`"),
                );
                None
            }
            Err(_) => {
                self.error(
                    node.span(),
                    format!("`{field}` must be a percentage like 99.9%, got `{text}`"),
                );
                None
            }
        }
    }

    /// A mapping of plain values to strings (tags, librdkafka properties). Values may use
    /// `${ENV_VAR}`; when `secrets` is set, a key ending in `_file` reads the value from that
    /// file and stores it under the key without the suffix.
    pub fn string_map(
        &mut self,
        node: &Node,
        field: &str,
        secrets: bool,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(map) = node.as_mapping() else {
            self.error(
                node.span(),
                format!("`{field}` must be a mapping of names to values"),
            );
            return out;
        };
        for (key, value) in map.iter() {
            let k = key.as_str();
            let what = format!("{field}.{k}");
            let Some(raw) = self.scalar(value, &what) else {
                continue;
            };
            let Some(expanded) = self.expand_env(raw, &what) else {
                continue;
            };
            if secrets && let Some(base) = k.strip_suffix("_file") {
                if let Some(secret) =
                    self.read_secret_file(raw.span(), &expanded, raw.as_str(), &what)
                {
                    out.insert(base.to_string(), secret);
                }
            } else {
                out.insert(k.to_string(), expanded);
            }
        }
        out
    }

    /// Replaces `${NAME}` with the environment variable's value (`$$` is a literal `$`).
    pub fn expand_env(&mut self, scalar: &MarkedScalarNode, field: &str) -> Option<String> {
        match expand_env_str(scalar.as_str(), |name| std::env::var(name).ok()) {
            Ok(s) => Some(s),
            Err(e) => {
                self.error(scalar.span(), format!("`{field}`: {e}"));
                None
            }
        }
    }

    /// A secret from the file at `path` (as expanded; `written` is the path as the file has
    /// it, which messages show): a regular file (or a link to one, as Kubernetes mounts
    /// secrets) of at most [`MAX_SECRET_BYTES`], its trailing newline removed.
    pub fn read_secret_file(
        &mut self,
        span: &Span,
        path: &str,
        written: &str,
        field: &str,
    ) -> Option<String> {
        match read_capped(Path::new(path), MAX_SECRET_BYTES, "secret file") {
            Ok(s) => Some(s.trim_end_matches(['\n', '\r']).to_string()),
            Err(e) => {
                self.error(span, format!("`{field}`: {written}: {e}"));
                None
            }
        }
    }
}

/// Largest secret file read (`*_file`): a password, a key, a DSN.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;
/// Largest agent or probe file read.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Reads the regular file (or link to one) at `path`, refusing anything larger than `max`
/// bytes (`what` names it in messages): a device (`/dev/zero`) or a FIFO is never opened, and
/// a file that grows while read is cut at `max` and refused.
pub fn read_capped(path: &Path, max: u64, what: &str) -> Result<String, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {what}: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "cannot read {what}: not a regular file (a directory, device or pipe)"
        ));
    }
    if meta.len() > max {
        return Err(format!(
            "cannot read {what}: it has {} bytes, more than the {max} allowed",
            meta.len()
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {what}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {what}: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!(
            "cannot read {what}: it grew past the {max} bytes allowed while read"
        ));
    }
    String::from_utf8(bytes).map_err(|_| format!("cannot read {what}: it is not UTF-8 text"))
}

/// A parser's `message` about a value written as `known[0]` (before `${ENV}` expansion, or the
/// name of the file it was read from) and other `known` text (the field's name): every quoted
/// fragment (`` `...` `` or `"..."`) found in none of them is hidden, since it came from the
/// environment or a file and may be part of a secret.
pub fn hide_expanded(message: &str, known: &[&str]) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest[open..].chars().next().unwrap_or('`');
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        match after.find(quote) {
            Some(close) => {
                let fragment = &after[..close];
                if fragment.is_empty() || known.iter().any(|k| k.contains(fragment)) {
                    out.push_str(fragment);
                } else {
                    out.push_str("(hidden: from the environment or a file)");
                }
                out.push(quote);
                rest = &after[close + 1..];
            }
            None => {
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Where a table begins for messages about the whole table: its first key (marked-yaml starts
/// a block mapping's span after that key).
pub fn table_start(map: &MarkedMappingNode) -> Span {
    map.keys().next().map_or(*map.span(), |k| *k.span())
}

/// Expands `${NAME}` references; `$$` escapes a dollar sign.
pub fn expand_env_str(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or("unterminated `${` (expected `${NAME}`)")?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{name}}}` is not a valid environment variable reference"
                ));
            }
            let value =
                lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A number without float noise (99.9, not 99.90000000000001).
pub fn plain_number(x: f64) -> String {
    format!("{}", (x * 1e9).round() / 1e9)
}

/// Names go into metric labels, record headers and log lines: keep them plain.
pub fn check_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("must not be empty");
    }
    if s.len() > 128 {
        return Err("must be at most 128 characters");
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err("may only contain letters, digits, `.`, `_` and `-`");
    }
    Ok(())
}

fn unknown_field(key: &str, what: &str, known: &[&str]) -> String {
    let close = known
        .iter()
        .map(|k| (strsim::jaro_winkler(key, k), *k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match close {
        Some((_, k)) => format!("unknown field `{key}` in {what}, did you mean `{k}`?"),
        None => format!(
            "unknown field `{key}` in {what}; expected one of: {}",
            known.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `tests/properties.rs`: the scanner ended the text at a NUL, so
    /// `timeout: 5s<NUL>` and everything after it loaded as if cut there.
    #[test]
    fn a_nul_byte_is_an_error_where_it_is_never_the_end_of_the_file() {
        for (text, line, column) in [
            ("name: p\ninterval: 1s\ntimeout: 5s\0\n", 3, 12),
            ("name: p\0\ninterval: 1s\n", 1, 8),
            ("\0", 1, 1),
        ] {
            let mut diags = Diagnostics::default();
            let mut doc = Doc {
                file: Arc::from(Path::new("p.yaml")),
                diags: &mut diags,
            };
            assert!(doc.parse(text).is_none(), "{text:?}");
            let d = diags.iter().next().unwrap();
            assert_eq!((d.loc.line, d.loc.column), (line, column), "{d}");
            assert!(d.message.contains("NUL"), "{d}");
        }
    }

    #[test]
    fn env_expansion() {
        let env = |n: &str| (n == "PW").then(|| "s3cret".to_string());
        assert_eq!(expand_env_str("a${PW}b", env).unwrap(), "as3cretb");
        assert_eq!(
            expand_env_str("cost $$5 and $x", env).unwrap(),
            "cost $5 and $x"
        );
        assert_eq!(
            expand_env_str("${NOPE}", env).unwrap_err(),
            "environment variable NOPE is not set"
        );
        assert!(
            expand_env_str("${PW", env)
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(
            expand_env_str("${P W}", env)
                .unwrap_err()
                .contains("not a valid")
        );
    }

    #[test]
    fn quoted_fragments_from_outside_the_template_are_hidden() {
        let template = "host=db ${PG_PASSWORD_PART}";
        assert_eq!(
            hide_expanded("unknown option `s3cr3t-tail`", &[template]),
            "unknown option `(hidden: from the environment or a file)`"
        );
        assert_eq!(
            hide_expanded("invalid value for option `port`", &["port=x"]),
            "invalid value for option `port`"
        );
        assert_eq!(
            hide_expanded(
                r#"Invalid value "hunter2" for configuration property "sasl.mechanism""#,
                &["${MECH}", "sasl.mechanism"]
            ),
            r#"Invalid value "(hidden: from the environment or a file)" for configuration property "sasl.mechanism""#
        );
    }

    #[test]
    fn suggestions_for_typos() {
        let msg = unknown_field("intreval", "probe", &["name", "interval", "timeout"]);
        assert_eq!(
            msg,
            "unknown field `intreval` in probe, did you mean `interval`?"
        );
        let msg = unknown_field("zzz", "probe", &["name", "interval"]);
        assert_eq!(
            msg,
            "unknown field `zzz` in probe; expected one of: name, interval"
        );
    }
}
