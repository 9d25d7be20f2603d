//! `{name}` substitution for generic profiles: commands, config files,
//! health probes and endpoint URLs name ports and directories that are only
//! known once the run directory exists and ports are chosen.
//!
//! A reference to an unknown variable is an error listing the variables
//! that do exist, so a typo cannot render into a config silently. `{{` and
//! `}}` stand for literal braces.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown variable {{{name}}} in {context}; known: {known}")]
    Unknown {
        name: String,
        context: String,
        known: String,
    },
    #[error("unclosed '{{' in {context}")]
    Unclosed { context: String },
}

/// Variables visible to one rendering.
#[derive(Debug, Clone, Default)]
pub struct Vars(BTreeMap<String, String>);

impl Vars {
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.insert(name.into(), value.into());
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A copy with `other`'s variables added (and winning on conflicts).
    pub fn with(&self, other: &Vars) -> Vars {
        let mut v = self.clone();
        v.0.extend(other.0.iter().map(|(k, x)| (k.clone(), x.clone())));
        v
    }

    /// Substitutes every `{name}` in `text`; `context` names the source in errors.
    pub fn render(&self, text: &str, context: &str) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                out.push_str(&tail[..1]);
                rest = &tail[2..];
            } else if let Some(after) = tail.strip_prefix('}') {
                out.push('}');
                rest = after;
            } else {
                let end = tail.find('}').ok_or_else(|| TemplateError::Unclosed {
                    context: context.to_string(),
                })?;
                let name = &tail[1..end];
                let value = self.get(name).ok_or_else(|| TemplateError::Unknown {
                    name: name.to_string(),
                    context: context.to_string(),
                    known: self
                        .0
                        .keys()
                        .map(|k| format!("{{{k}}}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                })?;
                out.push_str(value);
                rest = &tail[end + 1..];
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    pub fn render_all(
        &self,
        items: &[String],
        context: &str,
    ) -> Result<Vec<String>, TemplateError> {
        items.iter().map(|s| self.render(s, context)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        let mut v = Vars::default();
        v.set("dir", "/run/n1");
        v.set("port.s3", "3900");
        v
    }

    #[test]
    fn substitutes_known_variables() {
        let out = vars()
            .render("data_dir = \"{dir}/data\"\nport = {port.s3}", "t")
            .unwrap();
        assert_eq!(out, "data_dir = \"/run/n1/data\"\nport = 3900");
    }

    #[test]
    fn doubled_braces_are_literal() {
        assert_eq!(vars().render("{{x}} {dir}", "t").unwrap(), "{x} /run/n1");
    }

    #[test]
    fn unknown_variable_lists_the_known_ones() {
        let err = vars()
            .render("{port.rpc}", "roles[0].command")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "unknown variable {port.rpc} in roles[0].command; known: {dir} {port.s3}"
        );
    }

    #[test]
    fn unclosed_brace_is_an_error() {
        assert!(matches!(
            vars().render("{dir", "t"),
            Err(TemplateError::Unclosed { .. })
        ));
    }
}
