//! Located configuration problems. Loading never stops at the first one: every problem found
//! in every file is collected and reported together, one `file:line:col: message` line each.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use marked_yaml::Span;

/// A position in a configuration file (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    /// The file, as the user named it (relative paths stay relative so messages stay short).
    pub file: Arc<Path>,
    /// 1-based; 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based; 0 when the problem concerns the whole file.
    pub column: usize,
}

impl Loc {
    /// The whole file.
    pub fn file(file: &Arc<Path>) -> Self {
        Loc {
            file: Arc::clone(file),
            line: 0,
            column: 0,
        }
    }

    /// Where `span` starts in `file`.
    pub fn at(file: &Arc<Path>, span: &Span) -> Self {
        match span.start() {
            Some(m) => Loc {
                file: Arc::clone(file),
                line: m.line(),
                column: m.column(),
            },
            None => Loc::file(file),
        }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
        }
    }
}

/// One problem in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where.
    pub loc: Loc,
    /// What is wrong, as a sentence.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.loc, self.message)
    }
}

/// Every problem found while loading a configuration, in file order.
#[derive(Debug, Default, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Records a problem at `loc`.
    pub fn push(&mut self, loc: Loc, message: impl Into<String>) {
        self.0.push(Diagnostic {
            loc,
            message: message.into(),
        });
    }

    /// A problem that concerns a whole file or directory (unreadable, empty...).
    pub fn push_path(&mut self, path: &Path, message: impl Into<String>) {
        self.push(Loc::file(&Arc::from(path)), message);
    }

    /// Whether no problem was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The problems, in the order found (or sorted).
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    /// Orders problems by position within each file; files keep the order they were read in.
    pub fn sort(&mut self) {
        let mut files: Vec<Arc<Path>> = Vec::new();
        for d in &self.0 {
            if !files.contains(&d.loc.file) {
                files.push(Arc::clone(&d.loc.file));
            }
        }
        let rank = |f: &Arc<Path>| files.iter().position(|x| x == f).unwrap_or(usize::MAX);
        self.0
            .sort_by_key(|d| (rank(&d.loc.file), d.loc.line, d.loc.column));
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
