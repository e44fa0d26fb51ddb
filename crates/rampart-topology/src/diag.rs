//! Positions and errors for configuration files.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// One problem in a config file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line; 0 when the problem has no position (e.g. the file is missing).
    pub line: usize,
    /// 1-based column (in characters).
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

/// All the problems found in a config; never empty.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub fn single(d: Diagnostic) -> Self {
        ConfigError {
            diagnostics: vec![d],
        }
    }
}

/// A config file's text with its name, for turning byte spans into positions.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: PathBuf,
    pub text: String,
}

impl Source {
    pub fn new(file: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Source {
            file: file.into(),
            text: text.into(),
        }
    }

    /// Read a file; a missing or unreadable file is a `ConfigError` too.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Source::new(path, text)),
            Err(e) => Err(ConfigError::single(Diagnostic {
                file: path.to_path_buf(),
                line: 0,
                col: 0,
                message: format!("cannot read config file: {e}"),
            })),
        }
    }

    /// 1-based (line, col) of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(&self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    /// A diagnostic at the start of `span`.
    pub fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        let (line, col) = self.position(span.start);
        Diagnostic {
            file: self.file.clone(),
            line,
            col,
            message: message.into(),
        }
    }

    /// A diagnostic without a position in this file.
    pub fn error(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line: 0,
            col: 0,
            message: message.into(),
        }
    }

    /// Deserialize the whole file; syntax and shape errors carry their position.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str::<T>(&self.text).map_err(|e| {
            let mut message = e.message().trim().to_string();
            if message.is_empty() {
                // toml says nothing of some errors, e.g. a control character in a comment
                // (found by fuzz/'s topology target with "#\0").
                message = "invalid TOML here (a control character?)".to_string();
            }
            let d = match e.span() {
                Some(span) => self.error_at(span, message),
                None => self.error(message),
            };
            ConfigError::single(d)
        })
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn a_syntax_error_always_says_something() {
        for text in ["#\u{0}", "a = 1 # \u{7f}", "a = \"\u{1}\""] {
            let e = Source::new("f.toml", text)
                .parse::<toml::Table>()
                .unwrap_err();
            let d = &e.diagnostics[0];
            assert!(
                !d.message.is_empty() && d.line == 1 && d.col > 1,
                "{text:?}: {e}"
            );
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        a: u32,
    }

    #[test]
    fn positions_are_one_based() {
        let s = Source::new("x.toml", "a = 1\nbé = 2\n");
        assert_eq!(s.position(0), (1, 1));
        assert_eq!(s.position(6), (2, 1));
        assert_eq!(s.position(9), (2, 3));
    }

    #[test]
    fn unknown_field_names_line_and_column() {
        let s = Source::new("x.toml", "a = 1\nb = 2\n");
        let err = s.parse::<T>().unwrap_err();
        let d = &err.diagnostics[0];
        assert_eq!((d.line, d.col), (2, 1), "{d}");
        assert!(d.message.contains("unknown field"), "{d}");
        assert!(err.to_string().starts_with("x.toml:2:1: "), "{err}");
    }

    #[test]
    fn wrong_type_names_the_value() {
        let s = Source::new("x.toml", "a = \"one\"\n");
        let err = s.parse::<T>().unwrap_err();
        assert_eq!(err.diagnostics[0].line, 1);
        assert_eq!(err.diagnostics[0].col, 5);
    }
}
