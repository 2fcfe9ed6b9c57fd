//! What the parsers produce: settings as found in a source, before they are given a type,
//! and the problems found with them.

/// One setting as found in a source.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Dotted key as written (HOCON path or key=value key).
    pub key: String,
    pub value: Raw,
    /// 1-based line in the source, when known.
    pub line: Option<usize>,
}

/// A value before it is given a type.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Str(String),
    /// A number as written, to be read as an integer or a float.
    Num(String),
    Bool(bool),
    Null,
    List(Vec<Raw>),
    Object(Vec<(String, Raw)>),
}

/// A problem with one setting: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The file (or `environment`, `command line`), set by whoever knows it.
    pub source: Option<String>,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(source) = &self.source {
            write!(f, "{source}")?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": ")?;
        } else if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigIssue {}

impl ConfigIssue {
    pub(super) fn at(entry: &Entry, message: impl Into<String>) -> ConfigIssue {
        ConfigIssue {
            source: None,
            line: entry.line,
            key: Some(entry.key.clone()),
            message: message.into(),
        }
    }

    /// Names the source (file path, `environment`, ...).
    pub fn in_source(mut self, source: &str) -> ConfigIssue {
        self.source = Some(source.to_owned());
        self
    }
}

/// Which format a source is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Hocon,
    KeyValue,
}
