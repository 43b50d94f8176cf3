//! keepalived's lexical syntax, as its parser (`lib/parser.c`) reads it: physical lines, `#` and
//! `!` comments (not inside `"..."`; `\#` and `\!` escape them), a trailing `\` joining the next
//! line, words split at blanks, `"..."` as one word, and `{` / `}` as words of their own wherever
//! they stand (keepalived splits a line at a brace, so `url { path / }` is three lines to it).
//!
//! Lines that keepalived expands before parsing are recognised here too: `include` lines become
//! [`Tok::Include`]; conditional lines (`@id ...`), parameter definitions (`$NAME=...`) and
//! sequence/list lines (`~SEQ(...)`, `~LST(...)`) are reported as [`Skipped`], since what they
//! expand to depends on the node keepalived runs on.

/// One token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok {
    /// A word, quotes removed.
    Word(String),
    /// `{`.
    Open,
    /// `}`.
    Close,
    /// The end of a logical line: ends a statement.
    Eol,
    /// `include PATTERN` (and its variants `includer`, `includem`, ...): the pattern as written.
    Include(String),
}

/// A token and the physical line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub line: usize,
}

/// A line left out because it needs expansion that only keepalived can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Skipped {
    pub line: usize,
    pub message: String,
}

/// A file's tokens and the lines left out.
#[derive(Debug, Default)]
pub(crate) struct Lexed {
    pub tokens: Vec<Token>,
    pub skipped: Vec<Skipped>,
}

/// A lexical error and its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LexError {
    pub line: usize,
    pub message: String,
}

/// The include keyword and its variants (`includer` etc. only differ in which errors keepalived
/// reports).
const INCLUDE_KEYWORDS: [&str; 6] = [
    "include", "includer", "includem", "includew", "includeb", "includea",
];

/// Splits `text` into tokens.
pub(crate) fn lex(text: &str) -> Result<Lexed, LexError> {
    let mut out = Lexed::default();
    // A logical line: characters with the physical line each came from.
    let mut logical: Vec<(char, usize)> = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let continued = decomment(raw, line, &mut logical)?;
        if !continued {
            logical_line(&logical, &mut out)?;
            logical.clear();
        }
    }
    logical_line(&logical, &mut out)?;
    Ok(out)
}

/// Appends the part of `raw` before any comment to `logical`; returns whether the line ends in
/// a `\` that joins the next one.
fn decomment(raw: &str, line: usize, logical: &mut Vec<(char, usize)>) -> Result<bool, LexError> {
    let mut quote = false;
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quote = !quote;
                logical.push((c, line));
            }
            '\\' => match chars.next() {
                // An escaped comment character outside quotes is the character itself.
                Some(n @ ('#' | '!')) if !quote => logical.push((n, line)),
                // Other escapes stay as written: the tokenizer reads those inside quotes.
                Some(n) => {
                    logical.push(('\\', line));
                    logical.push((n, line));
                }
                None => {
                    if quote {
                        return Err(unterminated(line));
                    }
                    return Ok(true);
                }
            },
            '#' | '!' if !quote => break,
            _ => logical.push((c, line)),
        }
    }
    if quote {
        return Err(unterminated(line));
    }
    Ok(false)
}

fn unterminated(line: usize) -> LexError {
    LexError {
        line,
        message: "unterminated quoted string (a '\"' without its closing '\"' on the same line)"
            .into(),
    }
}

/// Tokenizes one logical line (comments removed, continuations joined).
fn logical_line(chars: &[(char, usize)], out: &mut Lexed) -> Result<(), LexError> {
    let start = chars
        .iter()
        .position(|(c, _)| !c.is_whitespace())
        .unwrap_or(chars.len());
    let chars = chars.get(start..).unwrap_or_default();
    let Some(&(first, line)) = chars.first() else {
        return Ok(());
    };
    let text: String = chars.iter().map(|(c, _)| *c).collect();
    let text = text.trim_end();

    if first == '@' {
        let id: String = text.chars().take_while(|c| !c.is_whitespace()).collect();
        out.skipped.push(Skipped {
            line,
            message: format!(
                "conditional line ({id}) not converted: it applies only on the node keepalived runs with that config id; \
                 lbd has one config per node, so write that node's setting without the condition"
            ),
        });
        return Ok(());
    }
    if first == '$' && is_parameter_definition(text) {
        out.skipped.push(Skipped {
            line,
            message: "parameter definition not converted: lb-import does not expand keepalived's $PARAMETER substitution; \
                      expand it by hand (references to it are left as written)"
                .into(),
        });
        return Ok(());
    }
    if text.starts_with("~SEQ") || text.starts_with("~LST") {
        out.skipped.push(Skipped {
            line,
            message: "sequence/list line (~SEQ/~LST) not converted: lb-import does not expand it; write the lines it generates"
                .into(),
        });
        return Ok(());
    }
    let keyword: String = text.chars().take_while(|c| !c.is_whitespace()).collect();
    if INCLUDE_KEYWORDS.contains(&keyword.as_str()) {
        let pattern = text.get(keyword.len()..).unwrap_or_default().trim();
        let pattern = pattern
            .strip_prefix('"')
            .and_then(|p| p.strip_suffix('"'))
            .unwrap_or(pattern);
        out.tokens.push(Token {
            tok: Tok::Include(pattern.to_owned()),
            line,
        });
        out.tokens.push(Token {
            tok: Tok::Eol,
            line,
        });
        return Ok(());
    }

    let mut i = 0;
    while let Some(&(c, line)) = chars.get(i) {
        match c {
            c if c.is_whitespace() => i += 1,
            '{' | '}' => {
                let tok = if c == '{' { Tok::Open } else { Tok::Close };
                out.tokens.push(Token { tok, line });
                i += 1;
            }
            '"' => {
                // A quoted word: up to the next unescaped '"'; `\"` and `\\` are the character.
                let mut word = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(unterminated(line)),
                        Some(('"', _)) => {
                            i += 1;
                            break;
                        }
                        Some(('\\', _)) => match chars.get(i + 1) {
                            Some((n @ ('"' | '\\'), _)) => {
                                word.push(*n);
                                i += 2;
                            }
                            _ => {
                                word.push('\\');
                                i += 1;
                            }
                        },
                        Some((c, _)) => {
                            word.push(*c);
                            i += 1;
                        }
                    }
                }
                out.tokens.push(Token {
                    tok: Tok::Word(word),
                    line,
                });
            }
            _ => {
                let mut word = String::new();
                while let Some(&(c, _)) = chars.get(i) {
                    if c.is_whitespace() || matches!(c, '"' | '{' | '}') {
                        break;
                    }
                    word.push(c);
                    i += 1;
                }
                out.tokens.push(Token {
                    tok: Tok::Word(word),
                    line,
                });
            }
        }
    }
    let last = chars.last().map_or(line, |(_, l)| *l);
    out.tokens.push(Token {
        tok: Tok::Eol,
        line: last,
    });
    Ok(())
}

/// `$NAME=...` with NAME made of `A-Za-z0-9_`, not starting with a digit.
fn is_parameter_definition(text: &str) -> bool {
    let Some(rest) = text.strip_prefix('$') else {
        return false;
    };
    let name: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && rest.get(name.len()..).is_some_and(|r| r.starts_with('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        lex(text)
            .unwrap()
            .tokens
            .into_iter()
            .map(|t| match t.tok {
                Tok::Word(w) => w,
                Tok::Open => "{".into(),
                Tok::Close => "}".into(),
                Tok::Eol => ";".into(),
                Tok::Include(p) => format!("include<{p}>"),
            })
            .collect()
    }

    #[test]
    fn tokens_comments_quotes_and_braces() {
        let cases: &[(&str, &[&str])] = &[
            ("a b  c", &["a", "b", "c", ";"]),
            ("url { path / }", &["url", "{", "path", "/", "}", ";"]),
            ("x{y}z", &["x", "{", "y", "}", "z", ";"]),
            ("a # comment { }", &["a", ";"]),
            ("a ! comment", &["a", ";"]),
            ("auth_pass k@l!ve1", &["auth_pass", "k@l", ";"]),
            (r"a \#b", &["a", "#b", ";"]),
            (
                r#"notify "/bin/x  arg # not a comment" user"#,
                &["notify", "/bin/x  arg # not a comment", "user", ";"],
            ),
            (r#"a "{ }""#, &["a", "{ }", ";"]),
            (r#"a "q\"x""#, &["a", "q\"x", ";"]),
            ("a \\\n  b\nc", &["a", "b", ";", "c", ";"]),
            (
                "include  conf.d/*.conf  # x",
                &["include<conf.d/*.conf>", ";"],
            ),
            ("includea \"x y\"", &["include<x y>", ";"]),
            ("a\r\nb\r\n", &["a", ";", "b", ";"]),
            ("", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(words(text), *want, "{text:?}");
        }
    }

    #[test]
    fn line_numbers_follow_physical_lines() {
        let lexed = lex("a\n\n  b {\n}\n").unwrap();
        let lines: Vec<usize> = lexed.tokens.iter().map(|t| t.line).collect();
        assert_eq!(lines, [1, 1, 3, 3, 3, 4, 4]);
        let lexed = lex("a \\\nb").unwrap();
        assert_eq!(lexed.tokens.get(1).map(|t| t.line), Some(2));
    }

    #[test]
    fn expansion_lines_are_skipped_with_a_reason() {
        let lexed = lex("@high priority 150\n$P=1\n~SEQ(I, 1, 3) x\n$P rest\n").unwrap();
        let lines: Vec<usize> = lexed.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [1, 2, 3]);
        assert!(lexed.skipped[0].message.contains("(@high)"));
        assert_eq!(words("$P rest"), ["$P", "rest", ";"]);
    }

    #[test]
    fn unterminated_quotes_are_errors_with_the_line() {
        for text in ["a\nb \"open", "a\n\"x\\", "a\nb \"x # y"] {
            let e = lex(text).unwrap_err();
            assert_eq!(e.line, 2, "{text:?}");
            assert!(e.message.contains("unterminated"), "{}", e.message);
        }
    }
}
