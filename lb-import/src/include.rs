//! `include`: reads the files a configuration includes and splices their tokens in where the
//! `include` line stood, as keepalived does (an included file may hold anything from a whole
//! `vrrp_instance` to a few `real_server`s of a block opened by the including file).
//!
//! Patterns follow keepalived's `glob(3)` call: relative patterns are relative to the directory
//! of the including file, `{a,b}` braces expand, `*`, `?` and `[...]` match within one path
//! component and not a leading `.`, matches come sorted, and directories are skipped. What is
//! read is bounded: include depth, file count, file and total size, directory entries scanned.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    io::{self, Read as _},
    path::{Component, Path, PathBuf},
};

use crate::lexer::{self, Tok};
use crate::{ImportError, Warning};

/// Deepest include nesting (the top file is depth 0).
pub(crate) const MAX_INCLUDE_DEPTH: usize = 16;
/// Most files read in one import.
pub(crate) const MAX_FILES: usize = 256;
/// Largest file read, in bytes.
pub(crate) const MAX_FILE_BYTES: u64 = 4 << 20;
/// Most bytes read in one import, over all files.
pub(crate) const MAX_TOTAL_BYTES: u64 = 16 << 20;
/// Most alternatives one brace pattern expands to.
const MAX_BRACE_EXPANSIONS: usize = 64;
/// Most directory entries looked at for one pattern.
const MAX_DIR_ENTRIES: usize = 10_000;

/// Where included files come from: the real file system, or a set of files in memory.
pub(crate) trait FileSystem {
    /// The text of a regular file of at most `limit` bytes.
    fn read(&self, path: &Path, limit: u64) -> Result<String, ReadError>;
    /// Names of a directory's entries (any order); an error or no directory gives none.
    fn list(&self, dir: &Path) -> Vec<OsString>;
    /// Whether `path` is a regular file.
    fn is_file(&self, path: &Path) -> bool;
    /// A key that is equal for two paths naming the same file (include loop detection).
    fn identity(&self, path: &Path) -> PathBuf;
}

/// Why a file could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    TooLarge,
    NotUtf8,
}

/// The file system of the machine.
pub(crate) struct RealFs;

impl FileSystem for RealFs {
    fn read(&self, path: &Path, limit: u64) -> Result<String, ReadError> {
        let meta = std::fs::metadata(path).map_err(ReadError::Io)?;
        // Only regular files: a FIFO or a device would block or never end.
        if !meta.is_file() {
            return Err(ReadError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        if meta.len() > limit {
            return Err(ReadError::TooLarge);
        }
        let mut bytes = Vec::new();
        // The size may change between stat and read: read at most one byte past the limit.
        std::fs::File::open(path)
            .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
            .map_err(ReadError::Io)?;
        if bytes.len() as u64 > limit {
            return Err(ReadError::TooLarge);
        }
        String::from_utf8(bytes).map_err(|_| ReadError::NotUtf8)
    }

    fn list(&self, dir: &Path) -> Vec<OsString> {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .take(MAX_DIR_ENTRIES)
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn is_file(&self, path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| m.is_file())
    }

    fn identity(&self, path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| normalize(path))
    }
}

/// Files held in memory, keyed by path (compared after removing `.` and `..` components).
pub(crate) struct MemFs<'a> {
    files: BTreeMap<PathBuf, &'a str>,
}

impl<'a> MemFs<'a> {
    pub(crate) fn new(files: &'a BTreeMap<PathBuf, String>) -> Self {
        MemFs {
            files: files
                .iter()
                .map(|(p, t)| (normalize(p), t.as_str()))
                .collect(),
        }
    }
}

impl FileSystem for MemFs<'_> {
    fn read(&self, path: &Path, limit: u64) -> Result<String, ReadError> {
        match self.files.get(&normalize(path)) {
            Some(text) if text.len() as u64 > limit => Err(ReadError::TooLarge),
            Some(text) => Ok((*text).to_owned()),
            None => Err(ReadError::Io(io::ErrorKind::NotFound.into())),
        }
    }

    fn list(&self, dir: &Path) -> Vec<OsString> {
        let dir = normalize(dir);
        let mut names: Vec<OsString> = self
            .files
            .keys()
            .filter_map(|p| p.strip_prefix(&dir).ok())
            .filter_map(|rest| rest.components().next())
            .map(|c| c.as_os_str().to_owned())
            .collect();
        names.dedup();
        names
    }

    fn is_file(&self, path: &Path) -> bool {
        self.files.contains_key(&normalize(path))
    }

    fn identity(&self, path: &Path) -> PathBuf {
        normalize(path)
    }
}

/// `path` with `.` components removed and `..` applied lexically.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            c => out.push(c.as_os_str()),
        }
    }
    out
}

/// A token with its place: the file (index into [`Source::files`]), the line, and its position
/// in the whole spliced stream (which orders warnings as the configuration reads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct At {
    pub seq: usize,
    pub file: usize,
    pub line: usize,
}

/// All tokens of a configuration with its includes spliced in.
#[derive(Debug, Default)]
pub(crate) struct Source {
    /// Every file read, as named (the top file first).
    pub files: Vec<PathBuf>,
    /// The tokens, in reading order.
    pub tokens: Vec<(Tok, At)>,
    /// What could not be taken over while reading: lines only keepalived can expand, includes
    /// that matched nothing.
    pub skipped: Vec<(At, String)>,
}

impl Source {
    pub(crate) fn warning(&self, at: At, message: String) -> Warning {
        Warning {
            file: self.files.get(at.file).cloned().unwrap_or_default(),
            line: at.line,
            message,
        }
    }
}

/// Reads `text` (named `name`) and everything it includes.
pub(crate) fn load(text: &str, name: &Path, fs: &dyn FileSystem) -> Result<Source, ImportError> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ImportError::TooLarge {
            path: name.to_owned(),
            limit: MAX_FILE_BYTES,
        });
    }
    let mut loader = Loader {
        fs,
        source: Source::default(),
        stack: Vec::new(),
        total: text.len() as u64,
    };
    loader.file(text, name, 0)?;
    Ok(loader.source)
}

struct Loader<'a> {
    fs: &'a dyn FileSystem,
    source: Source,
    /// Identities of the files being read, outermost first.
    stack: Vec<PathBuf>,
    total: u64,
}

impl Loader<'_> {
    fn file(&mut self, text: &str, name: &Path, depth: usize) -> Result<(), ImportError> {
        let file = self.source.files.len();
        self.source.files.push(name.to_owned());
        self.stack.push(self.fs.identity(name));
        let lexed = lexer::lex(text).map_err(|e| ImportError::Syntax {
            file: name.to_owned(),
            line: e.line,
            message: e.message,
        })?;
        let mut skipped = lexed.skipped.into_iter().peekable();
        for token in lexed.tokens {
            // Skipped lines are reported where they stood among the tokens.
            while let Some(s) = skipped.next_if(|s| s.line <= token.line) {
                let at = self.at(file, s.line);
                self.source.skipped.push((at, s.message));
            }
            let at = self.at(file, token.line);
            match token.tok {
                Tok::Include(pattern) => self.include(&pattern, name, at, depth)?,
                tok => self.source.tokens.push((tok, at)),
            }
        }
        for s in skipped {
            let at = self.at(file, s.line);
            self.source.skipped.push((at, s.message));
        }
        self.stack.pop();
        Ok(())
    }

    fn at(&self, file: usize, line: usize) -> At {
        At {
            seq: self.source.tokens.len() + self.source.skipped.len(),
            file,
            line,
        }
    }

    fn include(
        &mut self,
        pattern: &str,
        from: &Path,
        at: At,
        depth: usize,
    ) -> Result<(), ImportError> {
        let err = |message: String| ImportError::Include {
            file: from.to_owned(),
            line: at.line,
            message,
        };
        if pattern.is_empty() {
            return Err(err("include without a file name".into()));
        }
        if depth + 1 > MAX_INCLUDE_DEPTH {
            return Err(err(format!(
                "includes nest deeper than {MAX_INCLUDE_DEPTH} files"
            )));
        }
        let base = from.parent().unwrap_or(Path::new(""));
        let paths = expand(pattern, base, self.fs).map_err(err)?;
        if paths.is_empty() {
            self.source.skipped.push((
                at,
                format!("include {pattern} not converted: it matches no file"),
            ));
            return Ok(());
        }
        for path in paths {
            let identity = self.fs.identity(&path);
            if self.stack.contains(&identity) {
                return Err(err(format!(
                    "include loop: {} is already being read (it includes itself, directly or through other files)",
                    path.display()
                )));
            }
            if self.source.files.len() >= MAX_FILES {
                return Err(err(format!("more than {MAX_FILES} files included")));
            }
            let text = self.fs.read(&path, MAX_FILE_BYTES).map_err(|e| match e {
                ReadError::Io(e) => err(format!("cannot read {}: {e}", path.display())),
                ReadError::TooLarge => err(format!(
                    "{} is larger than {MAX_FILE_BYTES} bytes",
                    path.display()
                )),
                ReadError::NotUtf8 => err(format!("{} is not UTF-8 text", path.display())),
            })?;
            self.total += text.len() as u64;
            if self.total > MAX_TOTAL_BYTES {
                return Err(err(format!(
                    "the configuration and its includes exceed {MAX_TOTAL_BYTES} bytes"
                )));
            }
            self.file(&text, &path, depth + 1)?;
        }
        Ok(())
    }
}

/// The regular files `pattern` matches, sorted per brace alternative as glob(3) returns them.
fn expand(pattern: &str, base: &Path, fs: &dyn FileSystem) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for alternative in expand_braces(pattern)? {
        let path = base.join(&alternative);
        let mut candidates = vec![PathBuf::new()];
        let mut scanned = 0usize;
        for component in path.components() {
            let part = component.as_os_str().to_string_lossy();
            let mut next = Vec::new();
            if matches!(component, Component::Normal(_)) && has_wildcard(&part) {
                for dir in &candidates {
                    let mut names: Vec<String> = fs
                        .list(dir)
                        .into_iter()
                        .filter_map(|n| n.into_string().ok())
                        .filter(|n| !n.starts_with('.') || part.starts_with('.'))
                        .filter(|n| wildcard_match(&part, n))
                        .collect();
                    scanned += names.len();
                    if scanned > MAX_DIR_ENTRIES {
                        return Err(format!(
                            "{pattern} matches more than {MAX_DIR_ENTRIES} directory entries"
                        ));
                    }
                    names.sort();
                    next.extend(names.into_iter().map(|n| dir.join(n)));
                }
            } else {
                let literal = unescape(&part);
                next.extend(candidates.iter().map(|dir| dir.join(&literal)));
            }
            candidates = next;
        }
        out.extend(candidates.into_iter().filter(|p| fs.is_file(p)));
        if out.len() > MAX_FILES {
            return Err(format!("{pattern} matches more than {MAX_FILES} files"));
        }
    }
    Ok(out)
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// Expands csh-style braces: `a{b,c{d,e}}f` → `abf`, `acdf`, `acef`. A pattern without a
/// matched pair of braces is itself.
fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    let mut todo = vec![pattern.to_owned()];
    while let Some(p) = todo.pop() {
        match first_brace_group(&p) {
            None => done.push(p),
            Some((open, close, commas)) => {
                let (head, tail) = (&p[..open], &p[close + 1..]);
                let mut start = open + 1;
                for end in commas.into_iter().chain([close]) {
                    todo.push(format!("{head}{}{tail}", &p[start..end]));
                    start = end + 1;
                }
            }
        }
        if done.len() + todo.len() > MAX_BRACE_EXPANSIONS {
            return Err(format!(
                "{pattern} expands to more than {MAX_BRACE_EXPANSIONS} patterns"
            ));
        }
    }
    done.reverse();
    Ok(done)
}

/// The byte offsets of the first outermost `{`, its matching `}` and the top-level commas in
/// between; none when there is no such group with a comma.
fn first_brace_group(p: &str) -> Option<(usize, usize, Vec<usize>)> {
    let bytes = p.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes.get(i) {
            Some(b'\\') => i += 2,
            Some(b'{') => {
                let mut depth = 0usize;
                let mut commas = Vec::new();
                let mut j = i;
                while j < bytes.len() {
                    match bytes.get(j) {
                        Some(b'\\') => j += 1,
                        Some(b'{') => depth += 1,
                        Some(b'}') => {
                            depth -= 1;
                            if depth == 0 {
                                if commas.is_empty() {
                                    break;
                                }
                                return Some((i, j, commas));
                            }
                        }
                        Some(b',') if depth == 1 => commas.push(j),
                        _ => {}
                    }
                    j += 1;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// fnmatch(3) on one path component: `*`, `?`, `[...]` (with `!` or `^` negation and ranges),
/// `\` escaping the next character.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matching with one backtrack point for the last `*`: linear in practice and
    // never recursive.
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some('?') => Some(1),
            Some('[') => match_class(&p, pi, n.get(ni).copied()),
            Some('\\') => match (p.get(pi + 1), n.get(ni)) {
                (Some(a), Some(b)) if a == b => Some(2),
                _ => None,
            },
            Some(c) if Some(c) == n.get(ni) => Some(1),
            _ => None,
        };
        match step {
            Some(len) => {
                pi += len;
                ni += 1;
            }
            None => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).unwrap_or_default().iter().all(|c| *c == '*')
}

/// Matches `c` against the class starting at `p[start] == '['`; the pattern length of the class
/// when it matches. An unclosed `[` matches itself.
fn match_class(p: &[char], start: usize, c: Option<char>) -> Option<usize> {
    let c = c?;
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        match p.get(i) {
            None => return (c == '[').then_some(1),
            Some(']') if !first => break,
            Some(&lo) => {
                if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|h| *h != ']') {
                    let hi = p.get(i + 2).copied().unwrap_or(lo);
                    matched |= lo <= c && c <= hi;
                    i += 3;
                } else {
                    matched |= lo == c;
                    i += 1;
                }
            }
        }
        first = false;
    }
    (matched != negate).then_some(i + 1 - start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        let cases = [
            ("*.conf", "a.conf", true),
            ("*.conf", "a.conf.bak", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[ab]*", "b1", true),
            ("[!ab]*", "b1", false),
            ("[a-c]x", "bx", true),
            ("[a-c]x", "dx", false),
            ("*a*b*", "xaxxbx", true),
            ("*a*b", "xaxxbx", false),
            (r"\*", "*", true),
            (r"\*", "a", false),
            ("[", "[", true),
            ("**", "", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(wildcard_match(p, n), want, "{p} {n}");
        }
    }

    #[test]
    fn braces() {
        assert_eq!(
            expand_braces("{foo/{,cat,dog},bar}").unwrap(),
            ["foo/", "foo/cat", "foo/dog", "bar"]
        );
        assert_eq!(expand_braces("a{b}c").unwrap(), ["a{b}c"]);
        assert_eq!(expand_braces("x").unwrap(), ["x"]);
        assert!(expand_braces("{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}{a,b}").is_err());
    }

    #[test]
    fn memory_file_system_globs() {
        let files: BTreeMap<PathBuf, String> = [
            ("etc/k/main.conf", ""),
            ("etc/k/conf.d/b.conf", ""),
            ("etc/k/conf.d/a.conf", ""),
            ("etc/k/conf.d/.hidden.conf", ""),
            ("etc/k/conf.d/c.txt", ""),
        ]
        .into_iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_owned()))
        .collect();
        let fs = MemFs::new(&files);
        let got = expand("conf.d/*.conf", Path::new("etc/k"), &fs).unwrap();
        assert_eq!(
            got,
            [
                PathBuf::from("etc/k/conf.d/a.conf"),
                PathBuf::from("etc/k/conf.d/b.conf")
            ]
        );
        let got = expand("./conf.d/../main.conf", Path::new("etc/k"), &fs).unwrap();
        assert_eq!(got.len(), 1);
        assert!(
            expand("nothing*", Path::new("etc/k"), &fs)
                .unwrap()
                .is_empty()
        );
    }
}
