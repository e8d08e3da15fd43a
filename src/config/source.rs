//! From file text to a [`FileConfig`]: TOML syntax, `${VAR}` substitution, schema checks, and the line of every
//! problem.
//!
//! Every problem found is collected; a key that is unknown or of the wrong type is reported and removed so the
//! rest of the file is still checked. This module does not apply defaults or interpret values (`validate` does).

use std::collections::HashMap;

use toml::Value;

use super::file::FileConfig;
use super::problem::{Problem, ProblemKind, Problems};

/// Upper bound on schema passes: each pass removes one bad key, so this caps the report of a wildly wrong file.
const MAX_SCHEMA_PASSES: usize = 64;

/// Parses the text, substitutes variables from `env`, and deserializes the schema.
///
/// Returns the model and the problems found so far (syntax errors leave no model).
pub fn parse(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> Option<FileConfig> {
    let mut table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let line = e.span().map(|s| line_of(text, s.start));
            problems.items_mut().push(Problem {
                path: String::new(),
                line,
                kind: ProblemKind::Syntax {
                    message: e.message().to_owned(),
                },
            });
            return None;
        }
    };
    for (key, value) in table.iter_mut() {
        substitute_value(value, key, env, problems);
    }
    let mut value = Value::Table(table);
    for _ in 0..MAX_SCHEMA_PASSES {
        match serde_path_to_error::deserialize::<_, FileConfig>(value.clone()) {
            Ok(cfg) => return Some(cfg),
            Err(err) => {
                let mut segments = path_segments(err.path());
                let message = err.into_inner().message().to_owned();
                let kind = match parse_unknown_field(&message) {
                    Some((key, expected)) => {
                        if segments.last().map(String::as_str) != Some(key.as_str()) {
                            segments.push(key.clone());
                        }
                        let suggestion = closest(&key, &expected);
                        ProblemKind::UnknownKey { key, suggestion }
                    }
                    None => ProblemKind::WrongType { message },
                };
                problems.push(segments.join("."), kind);
                if !remove_path(&mut value, &segments) {
                    return None;
                }
            }
        }
    }
    None
}

/// Fills in the line of every problem whose key path can be found in the text.
pub fn locate(text: &str, problems: &mut Problems) {
    let Ok(doc) = text.parse::<toml_edit::ImDocument<String>>() else {
        return;
    };
    let mut cache: HashMap<String, Option<usize>> = HashMap::new();
    for p in problems.items_mut() {
        if p.line.is_some() || p.path.is_empty() {
            continue;
        }
        let line = *cache
            .entry(p.path.clone())
            .or_insert_with(|| find_offset(&doc, &p.path).map(|off| line_of(text, off)));
        p.line = line;
    }
    problems
        .items_mut()
        .sort_by_key(|p| p.line.unwrap_or(usize::MAX));
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Byte offset of the deepest part of `path` present in the document (a key, or the table holding it).
fn find_offset(doc: &toml_edit::ImDocument<String>, path: &str) -> Option<usize> {
    let segs: Vec<&str> = path.split('.').collect();
    offset_in_item(doc.as_item(), &segs, None)
}

fn offset_in_item(item: &toml_edit::Item, segs: &[&str], best: Option<usize>) -> Option<usize> {
    let Some((seg, rest)) = segs.split_first() else {
        return best;
    };
    match item {
        toml_edit::Item::Table(t) => {
            let here = t.key(seg).and_then(|k| k.span()).map(|s| s.start).or(best);
            match t.get(seg) {
                Some(next) => offset_in_item(next, rest, here),
                None => here,
            }
        }
        toml_edit::Item::ArrayOfTables(a) => {
            let Some(t) = seg.parse().ok().and_then(|i: usize| a.get(i)) else {
                return best;
            };
            let here = t.span().map(|s| s.start).or(best);
            offset_in_table(t, rest, here)
        }
        toml_edit::Item::Value(v) => offset_in_value(v, segs, best),
        toml_edit::Item::None => best,
    }
}

fn offset_in_table(t: &toml_edit::Table, segs: &[&str], best: Option<usize>) -> Option<usize> {
    let Some((seg, rest)) = segs.split_first() else {
        return best;
    };
    let here = t.key(seg).and_then(|k| k.span()).map(|s| s.start).or(best);
    match t.get(seg) {
        Some(next) => offset_in_item(next, rest, here),
        None => here,
    }
}

fn offset_in_value(v: &toml_edit::Value, segs: &[&str], best: Option<usize>) -> Option<usize> {
    let Some((seg, rest)) = segs.split_first() else {
        return best;
    };
    match v {
        toml_edit::Value::InlineTable(t) => {
            let here = t.key(seg).and_then(|k| k.span()).map(|s| s.start).or(best);
            match t.get(seg) {
                Some(next) => offset_in_value(next, rest, here),
                None => here,
            }
        }
        toml_edit::Value::Array(a) => match seg.parse().ok().and_then(|i: usize| a.get(i)) {
            Some(next) => offset_in_value(next, rest, next.span().map(|s| s.start).or(best)),
            None => best,
        },
        _ => best,
    }
}

fn path_segments(path: &serde_path_to_error::Path) -> Vec<String> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.clone()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect()
}

/// Reads serde's `unknown field `x`, expected one of `a`, `b`` message.
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((key.to_owned(), expected))
}

/// The valid key closest to `key`, when it is plausibly a typo of it.
pub(crate) fn closest(key: &str, candidates: &[String]) -> Option<String> {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['-', '_'], "");
    candidates
        .iter()
        .map(|c| {
            let score = if norm(c) == norm(key) {
                1.0
            } else {
                strsim::jaro_winkler(&key.to_ascii_lowercase(), c)
            };
            (score, c)
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.clone())
}

fn remove_path(value: &mut Value, segments: &[String]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut cur = value;
    for seg in parents {
        cur = match cur {
            Value::Table(t) => match t.get_mut(seg) {
                Some(v) => v,
                None => return false,
            },
            Value::Array(a) => match seg.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match cur {
        Value::Table(t) => t.remove(last).is_some(),
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => {
                // Keep indices stable for the paths of later problems.
                a[i] = Value::Table(toml::Table::new());
                true
            }
            _ => false,
        },
        _ => false,
    }
}

fn substitute_value(
    value: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) {
    match value {
        Value::String(s) => {
            if s.contains('$') {
                match substitute(s, env) {
                    Ok(new) => *s = new,
                    Err(kind) => problems.push(path, kind),
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                substitute_value(v, &format!("{path}.{i}"), env, problems);
            }
        }
        Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                substitute_value(v, &format!("{path}.{k}"), env, problems);
            }
        }
        Value::Integer(_) | Value::Float(_) | Value::Boolean(_) | Value::Datetime(_) => {}
    }
}

/// Expands `${NAME}` and `${NAME:-default}`; `$${` is a literal `${`. A `$` not followed by `{` is kept.
///
/// # Errors
/// An unset variable without a default, an unterminated reference or an invalid name.
pub fn substitute(
    input: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ProblemKind> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix("${") {
            out.push_str("${");
            rest = stripped;
            continue;
        }
        let Some(body_start) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(end) = body_start.find('}') else {
            return Err(ProblemKind::BadReference {
                value: input.to_owned(),
                reason: "missing closing `}`",
            });
        };
        let body = &body_start[..end];
        let (name, default) = match body.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(ProblemKind::BadReference {
                value: input.to_owned(),
                reason: "variable names are letters, digits and `_`, not starting with a digit",
            });
        }
        match (env(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(ProblemKind::UnsetVariable {
                    name: name.to_owned(),
                })
            }
        }
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("up.internal".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn parse_str(text: &str) -> (Option<FileConfig>, Vec<String>) {
        let mut p = Problems::default();
        let cfg = parse(text, &env, &mut p);
        locate(text, &mut p);
        (cfg, p.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn substitution_forms() {
        assert_eq!(
            substitute("http://${HOST}:80", &env).ok().as_deref(),
            Some("http://up.internal:80")
        );
        assert_eq!(
            substitute("${NOPE:-dflt}", &env).ok().as_deref(),
            Some("dflt")
        );
        assert_eq!(substitute("a${EMPTY}b", &env).ok().as_deref(), Some("ab"));
        assert_eq!(
            substitute("$${HOST} $5", &env).ok().as_deref(),
            Some("${HOST} $5")
        );
        assert!(
            matches!(substitute("${NOPE}", &env), Err(ProblemKind::UnsetVariable { name }) if name == "NOPE")
        );
        assert!(matches!(
            substitute("${HOST", &env),
            Err(ProblemKind::BadReference { .. })
        ));
        assert!(matches!(
            substitute("${1X}", &env),
            Err(ProblemKind::BadReference { .. })
        ));
    }

    #[test]
    fn unset_variable_is_reported_with_path_and_line() {
        let (_, errs) =
            parse_str("domain = \"a.test\"\n[services.x]\nupstream = \"${MISSING_UPSTREAM}\"\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("line 3")
                && errs[0].contains("services.x.upstream")
                && errs[0].contains("MISSING_UPSTREAM"),
            "{errs:?}"
        );
    }

    #[test]
    fn every_unknown_key_is_reported_with_a_suggestion() {
        let text = "domian = \"a\"\n[server]\nhttps = \"127.0.0.1:1\"\nadmn = \"x\"\n[services.a]\nupstream = \"http://x:1\"\nbypass_ath = true\n";
        let (_, errs) = parse_str(text);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].contains("line 1") && errs[0].contains("did you mean `domain`"),
            "{errs:?}"
        );
        assert!(
            errs[1].contains("line 4")
                && errs[1].contains("server.admn")
                && errs[1].contains("`admin`"),
            "{errs:?}"
        );
        assert!(
            errs[2].contains("line 7")
                && errs[2].contains("services.a.bypass_ath")
                && errs[2].contains("`bypass_auth`"),
            "{errs:?}"
        );
    }

    #[test]
    fn nix_spelling_bypass_auth_is_accepted() {
        let (cfg, errs) = parse_str("[services.a]\nupstream = \"http://x:1\"\nbypassAuth = true\n");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            cfg.and_then(|c| c.services.get("a").and_then(|s| s.bypass_auth)),
            Some(true)
        );
    }

    #[test]
    fn wrong_type_is_reported_and_the_rest_still_checked() {
        let (_, errs) = parse_str("[services.a]\nupstream = 5\n[services.b]\nupstreem = \"x\"\n");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].contains("line 2") && errs[0].contains("services.a.upstream"),
            "{errs:?}"
        );
        assert!(
            errs[1].contains("line 4") && errs[1].contains("`upstream`"),
            "{errs:?}"
        );
    }

    #[test]
    fn syntax_error_has_a_line() {
        let (cfg, errs) = parse_str("domain = \"a\"\n[server\n");
        assert!(cfg.is_none());
        assert!(errs[0].contains("line 2"), "{errs:?}");
    }

    #[test]
    fn unknown_key_in_array_of_tables() {
        let text = "[[auth.issuers]]\nissuer = \"https://a\"\n[[auth.issuers]]\nissuer = \"https://b\"\naudience = [\"x\"]\n";
        let (_, errs) = parse_str(text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("line 5")
                && errs[0].contains("auth.issuers.1.audience")
                && errs[0].contains("`audiences`"),
            "{errs:?}"
        );
    }
}
