//! The syntax tree: statements (`keyword args...`), each with an optional `{ ... }` block of
//! statements, every word with its file and line.
//!
//! As in keepalived, a `{` opens the block of the statement before it, on the same line or at the
//! start of the next one; a `}` closes the innermost block, and what follows it on the line is a
//! new statement.

use crate::ImportError;
use crate::include::{At, Source};
use crate::lexer::Tok;

/// Deepest block nesting accepted (keepalived's deepest is 5: `virtual_server` → `real_server`
/// → `HTTP_GET` → `url`, plus `vrrp_sync_group` → `group`).
pub(crate) const MAX_DEPTH: usize = 32;

/// A word and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Word {
    pub text: String,
    pub at: At,
}

/// A statement: its keyword, arguments and block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub keyword: Word,
    pub args: Vec<Word>,
    pub block: Option<Vec<Node>>,
}

impl Node {
    /// The keyword's text.
    pub(crate) fn key(&self) -> &str {
        &self.keyword.text
    }

    /// Where the statement starts.
    pub(crate) fn at(&self) -> At {
        self.keyword.at
    }

    /// The argument texts.
    pub(crate) fn arg(&self, i: usize) -> Option<&str> {
        self.args.get(i).map(|w| w.text.as_str())
    }

    /// The statement as written, for messages: keyword and arguments.
    pub(crate) fn line(&self) -> String {
        let mut s = self.keyword.text.clone();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.text);
        }
        s
    }

    /// The statements of the block (none when there is no block).
    pub(crate) fn children(&self) -> &[Node] {
        self.block.as_deref().unwrap_or_default()
    }
}

/// Builds the tree of `source`'s tokens.
pub(crate) fn parse(source: &Source) -> Result<Vec<Node>, ImportError> {
    let mut parser = Parser {
        source,
        pos: 0,
        open: Vec::new(),
    };
    let nodes = parser.block(None)?;
    Ok(nodes)
}

struct Parser<'a> {
    source: &'a Source,
    pos: usize,
    /// Where each open block's `{` stands, outermost first.
    open: Vec<At>,
}

impl Parser<'_> {
    fn error(&self, at: At, message: String) -> ImportError {
        ImportError::Syntax {
            file: self.source.files.get(at.file).cloned().unwrap_or_default(),
            line: at.line,
            message,
        }
    }

    /// Reads statements up to the `}` closing the block opened at `opened` (or to the end of input
    /// at the top level).
    fn block(&mut self, opened: Option<At>) -> Result<Vec<Node>, ImportError> {
        let mut nodes: Vec<Node> = Vec::new();
        // Whether the last statement ended at a line end, so that a `{` starting the next line
        // may still open its block.
        let mut may_take_block = false;
        loop {
            let Some((tok, at)) = self.source.tokens.get(self.pos) else {
                return match opened {
                    None => Ok(nodes),
                    Some(at) => Err(self.error(
                        at,
                        "'{' is never closed: a '}' is missing before the end of the configuration"
                            .into(),
                    )),
                };
            };
            let at = *at;
            match tok {
                Tok::Eol | Tok::Include(_) => self.pos += 1,
                Tok::Close => {
                    self.pos += 1;
                    return match opened {
                        Some(_) => Ok(nodes),
                        None => Err(self.error(at, "'}' without a matching '{'".into())),
                    };
                }
                Tok::Open => {
                    let Some(last) = nodes
                        .last_mut()
                        .filter(|n| may_take_block && n.block.is_none())
                    else {
                        return Err(self.error(at, "'{' without a keyword before it".into()));
                    };
                    self.pos += 1;
                    let block = self.nested(at)?;
                    last.block = Some(block);
                    may_take_block = false;
                }
                Tok::Word(_) => {
                    let (node, ended_by_eol) = self.statement()?;
                    nodes.push(node);
                    may_take_block = ended_by_eol;
                }
            }
        }
    }

    fn nested(&mut self, at: At) -> Result<Vec<Node>, ImportError> {
        if self.open.len() >= MAX_DEPTH {
            return Err(self.error(at, format!("blocks nest deeper than {MAX_DEPTH} levels")));
        }
        self.open.push(at);
        let block = self.block(Some(at))?;
        self.open.pop();
        Ok(block)
    }

    /// Reads `keyword args... [{ block }]`; returns the node and whether it ended at a line end
    /// without a block.
    fn statement(&mut self) -> Result<(Node, bool), ImportError> {
        let mut words = Vec::new();
        loop {
            match self.source.tokens.get(self.pos) {
                Some((Tok::Word(w), at)) => {
                    words.push(Word {
                        text: w.clone(),
                        at: *at,
                    });
                    self.pos += 1;
                }
                Some((Tok::Open, at)) => {
                    let at = *at;
                    self.pos += 1;
                    let block = self.nested(at)?;
                    return Ok((node(words, Some(block)), false));
                }
                Some((Tok::Eol, _)) => {
                    self.pos += 1;
                    return Ok((node(words, None), true));
                }
                // A `}` or the end ends the statement; the caller handles it.
                _ => return Ok((node(words, None), false)),
            }
        }
    }
}

fn node(mut words: Vec<Word>, block: Option<Vec<Node>>) -> Node {
    // Only called with at least one word: a statement starts at a word.
    let keyword = if words.is_empty() {
        Word {
            text: String::new(),
            at: At::default(),
        }
    } else {
        words.remove(0)
    };
    Node {
        keyword,
        args: words,
        block,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::include::{MemFs, load};

    fn tree(text: &str) -> Result<Vec<Node>, ImportError> {
        let files = Default::default();
        let source = load(text, Path::new("k.conf"), &MemFs::new(&files))?;
        parse(&source)
    }

    /// The tree in a compact form: `key arg {child; child}`.
    fn show(nodes: &[Node]) -> String {
        nodes
            .iter()
            .map(|n| match &n.block {
                Some(b) => format!("{}@{} {{{}}}", n.line(), n.at().line, show(b)),
                None => format!("{}@{}", n.line(), n.at().line),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    #[test]
    fn blocks_on_same_or_next_line_and_several_on_one_line() {
        let cases = [
            ("a {\n b 1\n}\n", "a@1 {b 1@2}"),
            ("a\n{\n b\n}\n", "a@1 {b@3}"),
            ("a { b { c } }\n", "a@1 {b@1 {c@1}}"),
            ("a { b } c { d }\n", "a@1 {b@1}; c@1 {d@1}"),
            ("x\ny\n", "x@1; y@2"),
            (
                "real_server 1.2.3.4 80 {\n weight 1\n TCP_CHECK {\n }\n}\n",
                "real_server 1.2.3.4 80@1 {weight 1@2; TCP_CHECK@3 {}}",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(show(&tree(text).unwrap()), want, "{text:?}");
        }
    }

    #[test]
    fn unbalanced_braces_give_file_and_line() {
        let cases = [
            ("a {\n b\n", 1, "never closed"),
            ("a {\n}\n}\n", 3, "without a matching"),
            ("\n{\n", 2, "without a keyword"),
            ("a { }\n{ }\n", 2, "without a keyword"),
        ];
        for (text, line, want) in cases {
            let e = tree(text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("k.conf:{line}: ")), "{text:?}: {e}");
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn nesting_is_capped() {
        let deep = "a {\n".repeat(MAX_DEPTH + 1) + &"}\n".repeat(MAX_DEPTH + 1);
        let e = tree(&deep).unwrap_err().to_string();
        assert!(e.contains("nest deeper"), "{e}");
        let ok = "a {\n".repeat(MAX_DEPTH) + &"}\n".repeat(MAX_DEPTH);
        assert!(tree(&ok).is_ok());
    }
}
