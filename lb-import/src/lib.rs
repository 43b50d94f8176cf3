//! lb-import converts a keepalived configuration into an lbd config (`lbctl import keepalived`).
//!
//! The input goes through four steps, one module each:
//! - `lexer`: keepalived's lexical syntax (comments, quotes, braces, line continuations), with
//!   the line of every token;
//! - `include`: `include` patterns (globs and braces, relative to the including file), spliced
//!   in as keepalived does, with loops, depth and sizes bounded;
//! - `parser`: the syntax tree of statements and `{ }` blocks;
//! - `convert`: `vrrp_instance` → `[vrrp]` (an IPv4 and an IPv6 instance with matching
//!   settings merge into one, lbd running a virtual router per family), `virtual_server` →
//!   `[[service]]` (IPv4 or IPv6), checkers → `health`, and `emit`: the TOML text.
//!
//! Nothing is dropped silently: every keepalived setting that has no lbd equivalent becomes a
//! `# keepalived FILE:LINE: ... not converted: reason` comment in the TOML and a [`Warning`];
//! with [`Options::strict`] the first one is an [`ImportError::Unsupported`] instead. How a
//! setting was mapped where lbd differs (schedulers, timers) is said in a comment too.
//!
//! ```
//! let text = "virtual_server 198.18.0.100 80 {\n lb_kind DR\n lb_algo wrr\n \
//!             real_server 198.18.0.21 80 {\n weight 2\n TCP_CHECK {\n connect_timeout 3\n }\n }\n}\n";
//! let import = lb_import::import_str(text, "keepalived.conf".as_ref(), &lb_import::Options::default())?;
//! assert!(import.toml.contains("vip = \"198.18.0.100:80\""));
//! assert!(import.toml.contains("scheduler = \"maglev\""));
//!
//! let v6 = "virtual_server 2001:db8::100 80 {\n lb_kind DR\n real_server 2001:db8::21 80 {\n }\n}\n";
//! let import = lb_import::import_str(v6, "keepalived.conf".as_ref(), &lb_import::Options::default())?;
//! assert!(import.toml.contains("vip = \"[2001:db8::100]:80\""));
//! # Ok::<(), lb_import::ImportError>(())
//! ```

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

mod convert;
mod emit;
mod include;
mod lexer;
mod parser;

use include::{FileSystem, MemFs, RealFs};

/// How to import.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Fail on the first keepalived setting that does not carry over, instead of warning.
    pub strict: bool,
}

/// The result of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// The lbd config, with comments on where each part came from and what was not converted.
    pub toml: String,
    /// What did not carry over, in the order of the keepalived configuration.
    pub warnings: Vec<Warning>,
}

/// A keepalived setting that did not carry over, or carried over with different behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The file it is in (as named in the import or in the `include` that read it).
    pub file: PathBuf,
    /// Its line, from 1.
    pub line: usize,
    /// What and why, e.g. `lb_kind NAT not converted: ...`.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The configuration file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file is larger than lb-import reads.
    #[error("{}: larger than {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// The configuration is not valid keepalived syntax.
    #[error("{}:{line}: {message}", file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// An `include` could not be followed: a loop, too deep, a file that cannot be read.
    #[error("{}:{line}: {message}", file.display())]
    Include {
        /// The file with the `include`.
        file: PathBuf,
        /// Its line.
        line: usize,
        /// What went wrong.
        message: String,
    },
    /// With [`Options::strict`]: a setting that does not carry over.
    #[error("{}:{line}: {message} (strict import)", file.display())]
    Unsupported {
        /// The file.
        file: PathBuf,
        /// The line.
        line: usize,
        /// What and why.
        message: String,
    },
    /// No `vrrp_instance` or `virtual_server` has an lbd equivalent.
    #[error("{}: nothing to convert: {reason}", file.display())]
    NothingToConvert {
        /// The configuration file.
        file: PathBuf,
        /// Why, naming the first thing refused.
        reason: String,
        /// Everything that was refused.
        warnings: Vec<Warning>,
    },
}

/// Imports the keepalived configuration at `path`, following its `include`s.
pub fn import_file(path: &Path, opts: &Options) -> Result<Import, ImportError> {
    let text = RealFs
        .read(path, include::MAX_FILE_BYTES)
        .map_err(|e| match e {
            include::ReadError::Io(source) => ImportError::Io {
                path: path.to_owned(),
                source,
            },
            include::ReadError::TooLarge => ImportError::TooLarge {
                path: path.to_owned(),
                limit: include::MAX_FILE_BYTES,
            },
            include::ReadError::NotUtf8 => ImportError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
            },
        })?;
    run(&text, path, opts, &RealFs)
}

/// Imports keepalived configuration text named `name`; `include`s are read from the file system,
/// relative to `name`'s directory.
pub fn import_str(text: &str, name: &Path, opts: &Options) -> Result<Import, ImportError> {
    run(text, name, opts, &RealFs)
}

/// Like [`import_str`], but `include`s match only among `files` (paths compared after removing
/// `.` and `..`), never the file system: for tests and fuzzing.
pub fn import_str_with_files(
    text: &str,
    name: &Path,
    files: &BTreeMap<PathBuf, String>,
    opts: &Options,
) -> Result<Import, ImportError> {
    run(text, name, opts, &MemFs::new(files))
}

fn run(
    text: &str,
    name: &Path,
    opts: &Options,
    fs: &dyn FileSystem,
) -> Result<Import, ImportError> {
    let source = include::load(text, name, fs)?;
    let nodes = parser::parse(&source)?;
    let convert::Converted {
        config,
        warnings,
        refusals,
    } = convert::convert(&source, &nodes, &name.display().to_string());
    if opts.strict
        && let Some(first) = warnings.first()
    {
        return Err(ImportError::Unsupported {
            file: first.file.clone(),
            line: first.line,
            message: first.message.clone(),
        });
    }
    if config.services.is_empty() && config.vrrp.is_none() {
        let reason = if refusals.is_empty() {
            "the configuration has no vrrp_instance or virtual_server".to_owned()
        } else {
            let list: Vec<String> = refusals.iter().map(ToString::to_string).collect();
            format!(
                "no vrrp_instance or virtual_server has an lbd equivalent: {}",
                list.join("; ")
            )
        };
        return Err(ImportError::NothingToConvert {
            file: name.to_owned(),
            reason,
            warnings,
        });
    }
    Ok(Import {
        toml: config.to_toml(),
        warnings,
    })
}
