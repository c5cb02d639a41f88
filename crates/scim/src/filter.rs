//! The SCIM filter parser (RFC 7644 §3.4.2.2) and the PATCH path parser
//! (RFC 7644 §3.5.2): client text in, [`crate::ast`] out.
//!
//! This module owns syntax only. It does no IO and knows nothing about
//! schemas: names are kept as written and resolved later by
//! [`crate::schema`], so the same parser serves Users and Groups, the SQL
//! renderer and the in-memory evaluator.
//!
//! It is a hand-written recursive-descent parser over a byte cursor. Every
//! error carries the byte offset of the offending token, so the service can
//! answer `400 invalidFilter` with a message a client developer can act on.
//! The parser never panics: all slicing goes through checked accessors, and
//! nesting and the number of terms are bounded so that hostile input cannot
//! exhaust the stack of the parser or of the code that walks the tree.

use std::str::FromStr;

use serde_json::Number;

use crate::ast::{AttrPath, CompValue, CompareOp, Filter, PatchPath};

/// A syntax error, with the byte offset in the input where it was detected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at position {position}")]
pub struct FilterError {
    pub message: String,
    pub position: usize,
}

impl FilterError {
    pub(crate) fn new(message: impl Into<String>, position: usize) -> Self {
        FilterError {
            message: message.into(),
            position,
        }
    }
}

/// Deepest nesting of parentheses, `not` and value filters accepted. Real
/// filters nest a handful of levels; the bound keeps recursion (here and in
/// every consumer of the tree) far from the stack limit.
const MAX_DEPTH: usize = 32;

/// Most attribute expressions accepted in one filter. `and`/`or` chains are
/// built as left-deep trees, so this also bounds the depth of the tree.
const MAX_TERMS: usize = 500;

/// Parses a complete filter, e.g. `userName eq "bjensen" and not (emails pr)`.
pub fn parse_filter(input: &str) -> Result<Filter, FilterError> {
    let mut p = Parser::new(input);
    p.skip_ws();
    if p.at_end() {
        return Err(FilterError::new("empty filter", p.pos));
    }
    let filter = p.parse_or()?;
    p.skip_ws();
    p.expect_end("filter")?;
    Ok(filter)
}

/// Parses a PATCH `path`: `attrPath` or `valuePath ["." subAttr]`, e.g.
/// `members[value eq "2819c223"]`, `emails[type eq "work"].value`,
/// `name.familyName`. Surrounding whitespace is tolerated.
pub fn parse_patch_path(input: &str) -> Result<PatchPath, FilterError> {
    let mut p = Parser::new(input);
    p.skip_ws();
    if p.at_end() {
        return Err(FilterError::new("empty path", p.pos));
    }
    let start = p.pos;
    let attr = p.parse_attr_path()?;
    let mut filter = None;
    let mut sub_attr = None;
    if p.peek() == Some(b'[') {
        if attr.sub_attr.is_some() {
            return Err(FilterError::new(
                format!("a value filter cannot follow the sub-attribute path '{attr}'"),
                p.pos,
            ));
        }
        filter = Some(p.parse_brackets(start)?);
        if p.peek() == Some(b'.') {
            p.pos += 1;
            let name_pos = p.pos;
            let name = p.parse_name()?;
            if matches!(p.peek(), Some(b'.')) {
                return Err(FilterError::new(
                    format!("unexpected '.' after sub-attribute '{name}'"),
                    p.pos,
                ));
            }
            debug_assert!(name_pos < p.pos);
            sub_attr = Some(name);
        }
    }
    p.skip_ws();
    p.expect_end("path")?;
    Ok(PatchPath {
        attr,
        filter,
        sub_attr,
    })
}

/// Parses a bare attribute path: `userName`, `name.givenName`,
/// `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value`.
/// Used for `sortBy`, `attributes=` lists and dotted keys in PATCH values.
pub fn parse_attr_path(input: &str) -> Result<AttrPath, FilterError> {
    let mut p = Parser::new(input);
    p.skip_ws();
    if p.at_end() {
        return Err(FilterError::new("empty attribute path", p.pos));
    }
    let path = p.parse_attr_path()?;
    p.skip_ws();
    p.expect_end("attribute path")?;
    Ok(path)
}

/// A cursor over the input. `pos` is always on a char boundary: it only
/// moves over ASCII bytes or whole chars.
struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
    terms: usize,
    /// Inside `attr[...]`, where another value filter is not allowed.
    in_brackets: bool,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Bytes that end a URN-qualified path: the URN itself may contain anything
/// else (`:`, `.`, digits).
fn ends_path(b: u8) -> bool {
    is_ws(b) || matches!(b, b'[' | b']' | b'(' | b')' | b'"')
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        Parser {
            src,
            pos: 0,
            depth: 0,
            terms: 0,
            in_brackets: false,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn rest(&self) -> &'a str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn skip_ws(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_ws) {
            self.pos += 1;
        }
        self.pos > start
    }

    /// The token at `pos`, for error messages: a single delimiter, or the run
    /// of characters up to the next whitespace or delimiter (at most 32 chars).
    fn token_at(&self, pos: usize) -> String {
        let rest = self.src.get(pos..).unwrap_or("");
        let mut chars = rest.chars();
        match chars.next() {
            None => "end of input".to_string(),
            Some(c) if matches!(c, '(' | ')' | '[' | ']' | '.') => format!("'{c}'"),
            Some(_) => {
                let tok: String = rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && !matches!(c, '(' | ')' | '[' | ']'))
                    .take(32)
                    .collect();
                if tok.is_empty() {
                    format!("'{}'", rest.chars().take(1).collect::<String>())
                } else {
                    format!("'{tok}'")
                }
            }
        }
    }

    fn expect_end(&self, what: &str) -> Result<(), FilterError> {
        match self.peek() {
            None => Ok(()),
            Some(b')') => Err(FilterError::new("unbalanced ')'", self.pos)),
            Some(b']') => Err(FilterError::new("unbalanced ']'", self.pos)),
            Some(_) => Err(FilterError::new(
                format!("unexpected {} after {what}", self.token_at(self.pos)),
                self.pos,
            )),
        }
    }

    /// Whether the input at the cursor is the keyword `kw` (ASCII
    /// case-insensitive) followed by something that cannot continue a name.
    fn at_keyword(&self, kw: &str) -> bool {
        let rest = self.rest().as_bytes();
        let Some(head) = rest.get(..kw.len()) else {
            return false;
        };
        head.eq_ignore_ascii_case(kw.as_bytes())
            && !rest
                .get(kw.len())
                .is_some_and(|&b| is_name_char(b) || matches!(b, b'.' | b':' | b'$' | b'"'))
    }

    fn enter(&mut self, at: usize) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(FilterError::new(
                format!("filter nests more than {MAX_DEPTH} levels deep"),
                at,
            ));
        }
        Ok(())
    }

    /// `filter = andExpr *("or" andExpr)`: `or` binds loosest.
    fn parse_or(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.parse_and()?;
        loop {
            let save = self.pos;
            self.skip_ws();
            if self.at_keyword("or") {
                self.pos += 2;
                let right = self.parse_and()?;
                left = Filter::Or(Box::new(left), Box::new(right));
            } else {
                self.pos = save;
                return Ok(left);
            }
        }
    }

    /// `andExpr = unary *("and" unary)`.
    fn parse_and(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.parse_unary()?;
        loop {
            let save = self.pos;
            self.skip_ws();
            if self.at_keyword("and") {
                self.pos += 3;
                let right = self.parse_unary()?;
                left = Filter::And(Box::new(left), Box::new(right));
            } else {
                self.pos = save;
                return Ok(left);
            }
        }
    }

    /// `unary = "not" "(" filter ")" / "(" filter ")" / attrExp / valuePath`.
    fn parse_unary(&mut self) -> Result<Filter, FilterError> {
        self.skip_ws();
        let start = self.pos;
        match self.peek() {
            None => Err(FilterError::new(
                "expected an expression, found end of input",
                start,
            )),
            Some(b'(') => {
                self.enter(start)?;
                let inner = self.parse_group()?;
                self.depth -= 1;
                Ok(inner)
            }
            Some(b')' | b']') => Err(FilterError::new(
                format!("expected an expression, found {}", self.token_at(start)),
                start,
            )),
            Some(_) if self.at_keyword("not") => {
                self.enter(start)?;
                self.pos += 3;
                self.skip_ws();
                if self.peek() != Some(b'(') {
                    return Err(FilterError::new(
                        format!(
                            "expected '(' after 'not', found {}",
                            self.token_at(self.pos)
                        ),
                        self.pos,
                    ));
                }
                let inner = self.parse_group()?;
                self.depth -= 1;
                Ok(Filter::Not(Box::new(inner)))
            }
            Some(_) => self.parse_attr_expr(),
        }
    }

    /// `"(" filter ")"`, with the cursor on the `(`.
    fn parse_group(&mut self) -> Result<Filter, FilterError> {
        let open = self.pos;
        self.pos += 1;
        let inner = self.parse_or()?;
        self.skip_ws();
        match self.peek() {
            Some(b')') => {
                self.pos += 1;
                Ok(inner)
            }
            _ => Err(FilterError::new(
                format!(
                    "expected ')' to close '(' at position {open}, found {}",
                    self.token_at(self.pos)
                ),
                self.pos,
            )),
        }
    }

    /// `attrPath "pr" / attrPath compareOp compValue / attrPath "[" valFilter "]"`.
    fn parse_attr_expr(&mut self) -> Result<Filter, FilterError> {
        let start = self.pos;
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(FilterError::new(
                format!("filter has more than {MAX_TERMS} expressions"),
                start,
            ));
        }
        let path = self.parse_attr_path()?;
        if self.peek() == Some(b'[') {
            if self.in_brackets {
                return Err(FilterError::new(
                    format!("nested value filter on '{path}' is not allowed"),
                    self.pos,
                ));
            }
            if path.sub_attr.is_some() {
                return Err(FilterError::new(
                    format!("a value filter cannot follow the sub-attribute path '{path}'"),
                    self.pos,
                ));
            }
            self.enter(start)?;
            let inner = self.parse_brackets(start)?;
            self.depth -= 1;
            if self.peek() == Some(b'.') {
                return self.parse_value_path_test(path, inner);
            }
            return Ok(Filter::ValuePath(path, Box::new(inner)));
        }
        self.parse_test(path)
    }

    /// A documented extension to the RFC 7644 grammar:
    /// `attr[valFilter].subAttr op value` (or `pr`), with the cursor on the
    /// `.`. Entra ID sends it when an admin picks `emails[type eq
    /// "work"].value` as the matching attribute. It means the test applies
    /// to the same element as `valFilter`, so it becomes
    /// `attr[valFilter and subAttr op value]`.
    fn parse_value_path_test(
        &mut self,
        path: AttrPath,
        inner: Filter,
    ) -> Result<Filter, FilterError> {
        self.pos += 1;
        let name_start = self.pos;
        while self.peek().is_some_and(is_name_char) {
            self.pos += 1;
        }
        let name = self.src.get(name_start..self.pos).unwrap_or("");
        if !name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()) {
            return Err(FilterError::new(
                format!(
                    "expected a sub-attribute name after '{path}[...].', found {}",
                    self.token_at(name_start)
                ),
                name_start,
            ));
        }
        if matches!(self.peek(), Some(b'.' | b':' | b'[')) {
            return Err(FilterError::new(
                format!(
                    "only one sub-attribute may follow the value filter of '{path}', found {}",
                    self.token_at(self.pos)
                ),
                self.pos,
            ));
        }
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(FilterError::new(
                format!("filter has more than {MAX_TERMS} expressions"),
                name_start,
            ));
        }
        let test = self.parse_test(AttrPath::simple(name))?;
        Ok(Filter::ValuePath(
            path,
            Box::new(Filter::And(Box::new(inner), Box::new(test))),
        ))
    }

    /// `"pr" / compareOp compValue` after `path`, with the cursor after the
    /// path.
    fn parse_test(&mut self, path: AttrPath) -> Result<Filter, FilterError> {
        self.skip_ws();
        let op_pos = self.pos;
        let op: String = self
            .rest()
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .map(|b| char::from(b.to_ascii_lowercase()))
            .collect();
        if op.is_empty() {
            return Err(FilterError::new(
                format!(
                    "expected an operator after '{path}', found {}",
                    self.token_at(op_pos)
                ),
                op_pos,
            ));
        }
        if self
            .src
            .as_bytes()
            .get(op_pos + op.len())
            .is_some_and(|&b| is_name_char(b) || b == b'.' || b == b':')
        {
            return Err(FilterError::new(
                format!("unknown operator {}", self.token_at(op_pos)),
                op_pos,
            ));
        }
        let op = match op.as_str() {
            "pr" => {
                self.pos += 2;
                self.reject_value_after_pr()?;
                return Ok(Filter::Present(path));
            }
            "eq" => CompareOp::Eq,
            "ne" => CompareOp::Ne,
            "co" => CompareOp::Co,
            "sw" => CompareOp::Sw,
            "ew" => CompareOp::Ew,
            "gt" => CompareOp::Gt,
            "ge" => CompareOp::Ge,
            "lt" => CompareOp::Lt,
            "le" => CompareOp::Le,
            _ => {
                return Err(FilterError::new(
                    format!("unknown operator {}", self.token_at(op_pos)),
                    op_pos,
                ))
            }
        };
        self.pos += 2;
        let op_text = self.src.get(op_pos..self.pos).unwrap_or("");
        self.skip_ws();
        let value = self.parse_value(op_text)?;
        Ok(Filter::Compare(path, op, value))
    }

    /// `pr` takes no value: a helpful error beats "unexpected token".
    fn reject_value_after_pr(&mut self) -> Result<(), FilterError> {
        let save = self.pos;
        self.skip_ws();
        let looks_like_value = match self.peek() {
            Some(b'"' | b'-' | b'0'..=b'9') => true,
            Some(_) => ["true", "false", "null"]
                .iter()
                .any(|kw| self.at_keyword(kw)),
            None => false,
        };
        if looks_like_value {
            return Err(FilterError::new(
                format!(
                    "operator 'pr' takes no value, found {}",
                    self.token_at(self.pos)
                ),
                self.pos,
            ));
        }
        self.pos = save;
        Ok(())
    }

    /// `"[" valFilter "]"` with the cursor on `[`; `start` is the start of
    /// the attribute path, for the error message.
    fn parse_brackets(&mut self, start: usize) -> Result<Filter, FilterError> {
        let open = self.pos;
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b']') {
            return Err(FilterError::new("empty value filter", self.pos));
        }
        let was = std::mem::replace(&mut self.in_brackets, true);
        let inner = self.parse_or();
        self.in_brackets = was;
        let inner = inner?;
        self.skip_ws();
        match self.peek() {
            Some(b']') => {
                self.pos += 1;
                Ok(inner)
            }
            _ => Err(FilterError::new(
                format!(
                    "expected ']' to close '[' at position {open} (value filter of '{}'), found {}",
                    self.src.get(start..open).unwrap_or(""),
                    self.token_at(self.pos)
                ),
                self.pos,
            )),
        }
    }

    /// `attrPath = [URI ":"] ATTRNAME *1subAttr`. A path starting with
    /// `urn:` is split at its last `:` (URNs contain dots, as in `2.0`),
    /// then the remainder at `.`.
    fn parse_attr_path(&mut self) -> Result<AttrPath, FilterError> {
        let start = self.pos;
        let is_urn = self
            .rest()
            .as_bytes()
            .get(..4)
            .is_some_and(|h| h.eq_ignore_ascii_case(b"urn:"));
        let schema = if is_urn {
            let len = self
                .rest()
                .bytes()
                .position(ends_path)
                .unwrap_or(self.rest().len());
            let token = self.src.get(start..start + len).unwrap_or("");
            let Some(colon) = token.rfind(':') else {
                return Err(FilterError::new("malformed urn", start));
            };
            if colon <= 4 {
                return Err(FilterError::new(
                    format!("missing schema urn before attribute in '{token}'"),
                    start,
                ));
            }
            self.pos = start + colon + 1;
            Some(token.get(..colon).unwrap_or("").to_string())
        } else {
            None
        };
        let attr = self.parse_name()?;
        let sub_attr = if self.peek() == Some(b'.') {
            self.pos += 1;
            Some(self.parse_name()?)
        } else {
            None
        };
        match self.peek() {
            Some(b'.') => Err(FilterError::new(
                "an attribute path has at most one sub-attribute",
                self.pos,
            )),
            Some(b':') if !is_urn => Err(FilterError::new(
                format!(
                    "schema-qualified attribute paths must start with 'urn:', found {}",
                    self.token_at(start)
                ),
                start,
            )),
            Some(b) if !ends_path(b) => Err(FilterError::new(
                format!(
                    "invalid character {} in attribute path",
                    self.token_at(self.pos)
                ),
                self.pos,
            )),
            _ => Ok(AttrPath {
                schema,
                attr,
                sub_attr,
            }),
        }
    }

    /// `ATTRNAME = ALPHA *(ALPHA / DIGIT / "-" / "_")`, plus the leading `$`
    /// of `$ref`.
    fn parse_name(&mut self) -> Result<String, FilterError> {
        let start = self.pos;
        let bytes = self.rest().as_bytes();
        let mut len = usize::from(bytes.first() == Some(&b'$'));
        if !bytes.get(len).is_some_and(u8::is_ascii_alphabetic) {
            return Err(FilterError::new(
                format!("expected an attribute name, found {}", self.token_at(start)),
                start,
            ));
        }
        while bytes.get(len).copied().is_some_and(is_name_char) {
            len += 1;
        }
        self.pos += len;
        Ok(self.src.get(start..start + len).unwrap_or("").to_string())
    }

    /// `compValue = false / null / true / number / string`.
    fn parse_value(&mut self, op: &str) -> Result<CompValue, FilterError> {
        let start = self.pos;
        match self.peek() {
            None | Some(b')' | b']') => Err(FilterError::new(
                format!("missing value after operator '{op}'"),
                start,
            )),
            Some(b'"') => self.parse_string().map(CompValue::String),
            Some(b'-' | b'0'..=b'9') => self.parse_number().map(CompValue::Number),
            Some(_) => {
                for (kw, value) in [
                    ("true", CompValue::Bool(true)),
                    ("false", CompValue::Bool(false)),
                    ("null", CompValue::Null),
                ] {
                    if self.at_keyword(kw) {
                        self.pos += kw.len();
                        return Ok(value);
                    }
                }
                Err(FilterError::new(
                    format!(
                        "invalid value {}: expected a double-quoted string, a number, true, false or null",
                        self.token_at(start)
                    ),
                    start,
                ))
            }
        }
    }

    /// A JSON string literal, cursor on the opening quote.
    fn parse_string(&mut self) -> Result<String, FilterError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.rest().chars().next() else {
                return Err(FilterError::new(
                    format!("unterminated string starting at position {open}"),
                    self.pos,
                ));
            };
            let at = self.pos;
            self.pos += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\\' => out.push(self.parse_escape(at)?),
                c if u32::from(c) < 0x20 => {
                    return Err(FilterError::new(
                        "unescaped control character in string",
                        at,
                    ))
                }
                c => out.push(c),
            }
        }
    }

    /// The char after a backslash (`at` is the backslash).
    fn parse_escape(&mut self, at: usize) -> Result<char, FilterError> {
        let Some(e) = self.peek() else {
            return Err(FilterError::new("unterminated escape sequence", at));
        };
        self.pos += 1;
        Ok(match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.parse_hex4(at)?;
                match hi {
                    0xD800..=0xDBFF => {
                        let low_at = self.pos;
                        if !self.rest().starts_with("\\u") {
                            return Err(FilterError::new("unpaired surrogate in \\u escape", at));
                        }
                        self.pos += 2;
                        let lo = self.parse_hex4(low_at)?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return Err(FilterError::new(
                                "invalid low surrogate in \\u escape",
                                low_at,
                            ));
                        }
                        let code = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        char::from_u32(code)
                            .ok_or_else(|| FilterError::new("invalid \\u escape", at))?
                    }
                    0xDC00..=0xDFFF => {
                        return Err(FilterError::new("unpaired surrogate in \\u escape", at))
                    }
                    _ => char::from_u32(hi)
                        .ok_or_else(|| FilterError::new("invalid \\u escape", at))?,
                }
            }
            _ => {
                return Err(FilterError::new(
                    format!(
                        "invalid escape sequence '\\{}'",
                        self.src
                            .get(at + 1..)
                            .and_then(|s| s.chars().next())
                            .unwrap_or(' ')
                    ),
                    at,
                ))
            }
        })
    }

    /// Four hex digits of a `\u` escape; `at` is the backslash.
    fn parse_hex4(&mut self, at: usize) -> Result<u32, FilterError> {
        let digits = self
            .rest()
            .get(..4)
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| FilterError::new("expected four hex digits after '\\u'", at))?;
        let value = u32::from_str_radix(digits, 16)
            .map_err(|_| FilterError::new("expected four hex digits after '\\u'", at))?;
        self.pos += 4;
        Ok(value)
    }

    /// A JSON number: `-? (0 / [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn parse_number(&mut self) -> Result<Number, FilterError> {
        let start = self.pos;
        let bytes = self.rest().as_bytes();
        let digits_from = |mut i: usize| {
            let from = i;
            while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            (i, i > from)
        };
        let invalid =
            || FilterError::new(format!("invalid number {}", self.token_at(start)), start);
        let mut i = usize::from(bytes.first() == Some(&b'-'));
        match bytes.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits_from(i).0,
            _ => return Err(invalid()),
        }
        if bytes.get(i) == Some(&b'.') {
            let (end, any) = digits_from(i + 1);
            if !any {
                return Err(invalid());
            }
            i = end;
        }
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(bytes.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let (end, any) = digits_from(i);
            if !any {
                return Err(invalid());
            }
            i = end;
        }
        if bytes
            .get(i)
            .is_some_and(|&b| is_name_char(b) || matches!(b, b'.' | b'+' | b'-' | b'"'))
        {
            return Err(invalid());
        }
        let text = self.rest().get(..i).unwrap_or("");
        let number = Number::from_str(text).map_err(|_| invalid())?;
        self.pos += i;
        Ok(number)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn p(schema: Option<&str>, attr: &str, sub: Option<&str>) -> AttrPath {
        AttrPath {
            schema: schema.map(str::to_string),
            attr: attr.to_string(),
            sub_attr: sub.map(str::to_string),
        }
    }

    fn cmp(attr: &str, op: CompareOp, v: CompValue) -> Filter {
        Filter::Compare(AttrPath::simple(attr), op, v)
    }

    fn s(v: &str) -> CompValue {
        CompValue::String(v.to_string())
    }

    fn err(input: &str) -> FilterError {
        match parse_filter(input) {
            Ok(f) => panic!("{input:?} parsed as {f:?}"),
            Err(e) => e,
        }
    }

    const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

    #[test]
    fn parses_every_operator_case_insensitively() {
        for (text, op) in [
            ("eq", CompareOp::Eq),
            ("NE", CompareOp::Ne),
            ("Co", CompareOp::Co),
            ("sw", CompareOp::Sw),
            ("eW", CompareOp::Ew),
            ("gt", CompareOp::Gt),
            ("GE", CompareOp::Ge),
            ("lt", CompareOp::Lt),
            ("le", CompareOp::Le),
        ] {
            assert_eq!(
                parse_filter(&format!("userName {text} \"x\"")).unwrap(),
                cmp("userName", op, s("x"))
            );
        }
        assert_eq!(
            parse_filter("title PR").unwrap(),
            Filter::Present(AttrPath::simple("title"))
        );
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        let a = || Filter::Present(AttrPath::simple("a"));
        let b = || Filter::Present(AttrPath::simple("b"));
        let c = || Filter::Present(AttrPath::simple("c"));
        let and = |x, y| Filter::And(Box::new(x), Box::new(y));
        let or = |x, y| Filter::Or(Box::new(x), Box::new(y));
        assert_eq!(
            parse_filter("a pr or b pr and c pr").unwrap(),
            or(a(), and(b(), c()))
        );
        assert_eq!(
            parse_filter("a pr AND b pr OR c pr").unwrap(),
            or(and(a(), b()), c())
        );
        assert_eq!(
            parse_filter("(a pr or b pr) and c pr").unwrap(),
            and(or(a(), b()), c())
        );
        assert_eq!(
            parse_filter("a pr and b pr and c pr").unwrap(),
            and(and(a(), b()), c())
        );
        assert_eq!(
            parse_filter("not (a pr) and NOT(b pr)").unwrap(),
            and(Filter::Not(Box::new(a())), Filter::Not(Box::new(b())))
        );
        assert_eq!(
            parse_filter("  ( (a pr)  )  or   b pr  ").unwrap(),
            or(a(), b())
        );
    }

    #[test]
    fn parses_value_paths_sub_attributes_and_urns() {
        assert_eq!(
            parse_filter(r#"emails[type eq "work" and value co "@x"]"#).unwrap(),
            Filter::ValuePath(
                AttrPath::simple("emails"),
                Box::new(Filter::And(
                    Box::new(cmp("type", CompareOp::Eq, s("work"))),
                    Box::new(cmp("value", CompareOp::Co, s("@x"))),
                ))
            )
        );
        assert!(parse_filter(r#"emails[not (type eq "work") or (primary eq true)]"#).is_ok());
        assert_eq!(
            parse_filter(r#"name.givenName sw "B""#).unwrap(),
            Filter::Compare(p(None, "name", Some("givenName")), CompareOp::Sw, s("B"))
        );
        assert_eq!(
            parse_filter(&format!("{ENT}:employeeNumber eq \"7\"")).unwrap(),
            Filter::Compare(p(Some(ENT), "employeeNumber", None), CompareOp::Eq, s("7"))
        );
        assert_eq!(
            parse_filter(&format!("{ENT}:manager.value pr")).unwrap(),
            Filter::Present(p(Some(ENT), "manager", Some("value")))
        );
        assert_eq!(
            parse_filter("urn:ietf:params:scim:schemas:core:2.0:User:name.familyName eq \"J\"")
                .unwrap(),
            Filter::Compare(
                p(
                    Some("urn:ietf:params:scim:schemas:core:2.0:User"),
                    "name",
                    Some("familyName")
                ),
                CompareOp::Eq,
                s("J")
            )
        );
        assert_eq!(
            parse_filter("groups.$ref pr").unwrap(),
            Filter::Present(p(None, "groups", Some("$ref")))
        );
        assert_eq!(
            parse_filter(&format!("{ENT}:manager[value eq \"m\"]")).unwrap(),
            Filter::ValuePath(
                p(Some(ENT), "manager", None),
                Box::new(cmp("value", CompareOp::Eq, s("m")))
            )
        );
    }

    #[test]
    fn parses_json_values() {
        let v = |text: &str| match parse_filter(&format!("a eq {text}")).unwrap() {
            Filter::Compare(_, _, v) => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(v("TRUE"), CompValue::Bool(true));
        assert_eq!(v("False"), CompValue::Bool(false));
        assert_eq!(v("nuLL"), CompValue::Null);
        assert_eq!(v("42"), CompValue::Number(42.into()));
        assert_eq!(v("-0"), CompValue::Number(Number::from_str("-0").unwrap()));
        assert_eq!(
            v("1.5e3"),
            CompValue::Number(Number::from_str("1.5e3").unwrap())
        );
        assert_eq!(
            v("2.25"),
            CompValue::Number(Number::from_str("2.25").unwrap())
        );
        assert_eq!(
            v(r#""a\"b\\c\/d\b\f\n\r\t""#),
            s("a\"b\\c/d\u{8}\u{c}\n\r\t")
        );
        assert_eq!(v(r#""\u00e9\uD83D\uDE00""#), s("é😀"));
        assert_eq!(v(r#""ünï ""#), s("ünï "));
        assert_eq!(v(r#""and or )""#), s("and or )"));
    }

    #[test]
    fn value_filter_then_sub_attribute_is_one_element_test() {
        // Entra's matching attribute `emails[type eq "work"].value`.
        let f = parse_filter(r#"emails[type eq "work"].value eq "a@x.org""#).unwrap();
        let want = parse_filter(r#"emails[type eq "work" and value eq "a@x.org"]"#).unwrap();
        assert_eq!(f, want);
        let f =
            parse_filter(r#"emails[type eq "work" or primary eq true].value pr and userName pr"#)
                .unwrap();
        let want = parse_filter(
            r#"emails[(type eq "work" or primary eq true) and value pr] and userName pr"#,
        )
        .unwrap();
        assert_eq!(f, want);
    }

    #[test]
    fn reports_precise_errors() {
        let cases: &[(&str, &str, usize)] = &[
            ("", "empty filter", 0),
            ("   ", "empty filter", 3),
            ("userName eq \"x\" garbage", "unexpected 'garbage' after filter", 16),
            ("userName eq \"x\")", "unbalanced ')'", 15),
            ("(userName eq \"x\"", "expected ')' to close '(' at position 0, found end of input", 16),
            ("userName eq", "missing value after operator 'eq'", 11),
            ("userName eq )", "missing value after operator 'eq'", 12),
            ("title pr \"x\"", "operator 'pr' takes no value, found '\"x\"'", 9),
            ("userName eqq \"x\"", "unknown operator 'eqq'", 9),
            ("userName xx \"x\"", "unknown operator 'xx'", 9),
            ("userName", "expected an operator after 'userName', found end of input", 8),
            ("userName eq bjensen", "invalid value 'bjensen': expected a double-quoted string, a number, true, false or null", 12),
            ("userName eq \"abc", "unterminated string starting at position 12", 16),
            ("a eq \"\\x\"", "invalid escape sequence '\\x'", 6),
            ("a eq \"\\uD800\"", "unpaired surrogate in \\u escape", 6),
            ("a eq \"\\u12\"", "expected four hex digits after '\\u'", 6),
            ("a eq 01", "invalid number '01'", 5),
            ("a eq 1.", "invalid number '1.'", 5),
            ("a eq 1e", "invalid number '1e'", 5),
            ("a eq -", "invalid number '-'", 5),
            ("emails[type eq \"work\"", "expected ']' to close '[' at position 6 (value filter of 'emails'), found end of input", 21),
            ("emails[type eq \"work\"]]", "unbalanced ']'", 22),
            ("emails[]", "empty value filter", 7),
            ("emails[x[y pr]]", "nested value filter on 'x' is not allowed", 8),
            ("a pr and", "expected an expression, found end of input", 8),
            ("a pr or )", "expected an expression, found ')'", 8),
            ("not a pr", "expected '(' after 'not', found 'a'", 4),
            ("1abc pr", "expected an attribute name, found '1abc'", 0),
            ("name.givenName.x pr", "an attribute path has at most one sub-attribute", 14),
            ("foo:bar pr", "schema-qualified attribute paths must start with 'urn:', found 'foo:bar'", 0),
            ("a# pr", "invalid character '#' in attribute path", 1),
            ("urn:x pr", "missing schema urn before attribute in 'urn:x'", 0),
            ("emails[type pr].value.x pr", "only one sub-attribute may follow the value filter of 'emails', found '.'", 21),
            ("emails[type pr]. pr", "expected a sub-attribute name after 'emails[...].', found ' '", 16),
            ("emails[type pr].value", "expected an operator after 'value', found end of input", 21),
        ];
        for (input, message, position) in cases {
            let e = err(input);
            assert_eq!(
                (e.message.as_str(), e.position),
                (*message, *position),
                "input {input:?}"
            );
        }
        assert_eq!(
            err("a eq").to_string(),
            "missing value after operator 'eq' at position 4"
        );
    }

    #[test]
    fn bounds_nesting_and_size() {
        let deep = format!("{}a pr{}", "(".repeat(100), ")".repeat(100));
        assert!(err(&deep).message.contains("nests more than"));
        let deep_not = format!("{}a pr{}", "not (".repeat(100), ")".repeat(100));
        assert!(err(&deep_not).message.contains("nests more than"));
        let ok = format!("{}a pr{}", "(".repeat(20), ")".repeat(20));
        assert!(parse_filter(&ok).is_ok());
        let long = vec!["a pr"; MAX_TERMS + 1].join(" or ");
        assert!(err(&long).message.contains("more than"));
        let fine = vec!["a pr"; MAX_TERMS].join(" or ");
        assert!(parse_filter(&fine).is_ok());
    }

    #[test]
    fn parses_patch_paths() {
        let pp = |s: &str| parse_patch_path(s).unwrap();
        assert_eq!(
            pp(r#"members[value eq "2819c223"]"#),
            PatchPath {
                attr: AttrPath::simple("members"),
                filter: Some(cmp("value", CompareOp::Eq, s("2819c223"))),
                sub_attr: None,
            }
        );
        assert_eq!(
            pp(r#"emails[type eq "work"].value"#),
            PatchPath {
                attr: AttrPath::simple("emails"),
                filter: Some(cmp("type", CompareOp::Eq, s("work"))),
                sub_attr: Some("value".into()),
            }
        );
        assert_eq!(
            pp("name.familyName"),
            PatchPath {
                attr: p(None, "name", Some("familyName")),
                filter: None,
                sub_attr: None,
            }
        );
        assert_eq!(
            pp(&format!("{ENT}:manager.value")).attr,
            p(Some(ENT), "manager", Some("value"))
        );
        assert_eq!(pp(" members ").attr, AttrPath::simple("members"));
        for (bad, pos) in [
            (r#"emails[type eq "work"]garbage"#, 22),
            (r#"emails[type eq "work"].value.x"#, 28),
            ("emails[type eq \"work\"].", 23),
            ("members x", 8),
            ("name.givenName[value pr]", 14),
            ("", 0),
            ("emails[", 7),
        ] {
            let e = parse_patch_path(bad).unwrap_err();
            assert_eq!(e.position, pos, "{bad:?}: {e}");
        }
    }

    #[test]
    fn parses_bare_attribute_paths() {
        assert_eq!(
            parse_attr_path("name.givenName").unwrap(),
            p(None, "name", Some("givenName"))
        );
        assert_eq!(
            parse_attr_path(&format!("{ENT}:employeeNumber")).unwrap(),
            p(Some(ENT), "employeeNumber", None)
        );
        assert!(parse_attr_path("meta.created desc").is_err());
        assert!(parse_attr_path("emails[type pr]").is_err());
        assert!(parse_attr_path("").is_err());
    }

    /// Feeds truncations and byte mutations of valid inputs: the parser must
    /// return (Ok or Err), never panic, and report positions inside the input.
    #[test]
    fn never_panics_on_mangled_input() {
        let seeds = [
            r#"emails[type eq "work" and value co "@x"] or not (userName sw "b\u00e9\uD83D\uDE00")"#,
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value eq -1.5e+3",
            "(a pr) and (b.c gt 2011-05-13T04:42:34Z or d le false) and é eq \"ü\"",
            r#"members[value eq "2819c223"].display"#,
        ];
        let inserts = [
            "", "(", ")", "[", "]", "\"", "\\", ".", ":", " ", "é", "\u{0}", "not ", "urn:", "$",
            "-", "e", "\\u", "\\uD83D",
        ];
        let mut count = 0usize;
        for seed in seeds {
            let cuts: Vec<usize> = (0..=seed.len())
                .filter(|&i| seed.is_char_boundary(i))
                .collect();
            for &i in &cuts {
                let prefix = &seed[..i];
                let suffix = &seed[i..];
                for ins in inserts {
                    for input in [
                        format!("{prefix}{ins}"),
                        format!("{prefix}{ins}{suffix}"),
                        format!("{ins}{suffix}"),
                    ] {
                        count += 1;
                        let errors = [
                            parse_filter(&input).err(),
                            parse_patch_path(&input).err(),
                            parse_attr_path(&input).err(),
                        ];
                        for e in errors.into_iter().flatten() {
                            assert!(e.position <= input.len(), "{input:?}: {e}");
                        }
                    }
                }
                // Drop one char.
                if let Some(c) = suffix.chars().next() {
                    let input = format!("{prefix}{}", &suffix[c.len_utf8()..]);
                    let _ = parse_filter(&input);
                    let _ = parse_patch_path(&input);
                }
            }
        }
        assert!(count > 5000);
    }
}
