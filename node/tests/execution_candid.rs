//! The node's Candid decoder against the official Candid test suite
//! (`shared/testdata/candid/*.test.did`, dfinity/candid `test/`).
//!
//! Every binary assertion (`assert blob "…" : (types)`, `!:`, and `blob == blob` /
//! `blob != blob`) is checked. Assertions whose input is *textual* Candid are counted
//! but not checked: the node never parses textual Candid. For `blob == "text"` the blob
//! side must decode.

use node::candid::{decode_args, field_id, FuncType, Type, TypeEnv, Value};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata/candid");

// ---- a small lexer and parser for the test-file grammar ----

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Id(String),
    Text(Vec<u8>),
    Num(u64),
    Sym(&'static str),
}

fn lex(src: &str) -> Vec<Tok> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'"' {
            i += 1;
            let mut s = Vec::new();
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                    match b[i] {
                        b'n' => s.push(b'\n'),
                        b'r' => s.push(b'\r'),
                        b't' => s.push(b'\t'),
                        b'\\' => s.push(b'\\'),
                        b'"' => s.push(b'"'),
                        b'\'' => s.push(b'\''),
                        b'u' => {
                            // \u{XXXX}
                            let end = i + b[i..].iter().position(|x| *x == b'}').expect("}");
                            let hex = std::str::from_utf8(&b[i + 2..end]).expect("utf8");
                            let cp = u32::from_str_radix(hex, 16).expect("hex");
                            let ch = char::from_u32(cp).expect("char");
                            let mut buf = [0u8; 4];
                            s.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                            i = end;
                        }
                        _ => {
                            let hex = std::str::from_utf8(&b[i..i + 2]).expect("utf8");
                            s.push(u8::from_str_radix(hex, 16).expect("hex escape"));
                            i += 1;
                        }
                    }
                    i += 1;
                } else {
                    s.push(b[i]);
                    i += 1;
                }
            }
            i += 1;
            out.push(Tok::Text(s));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
                i += 1;
            }
            let t: String = src[start..i].chars().filter(|c| *c != '_').collect();
            out.push(Tok::Num(t.parse().expect("number")));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Id(src[start..i].into()));
        } else {
            let sym = [
                "!:", "==", "!=", "->", ":", ";", "(", ")", "{", "}", ",", "=", "-", "+", ".",
            ]
            .into_iter()
            .find(|s| b[i..].starts_with(s.as_bytes()))
            .unwrap_or_else(|| panic!("unexpected character {:?}", c as char));
            i += sym.len();
            out.push(Tok::Sym(sym));
        }
    }
    out
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    names: Vec<String>,
    env: TypeEnv,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Tok {
        self.pos += 1;
        self.toks[self.pos - 1].clone()
    }
    fn eat(&mut self, s: &str) -> bool {
        if self.peek() == Some(&Tok::Sym(static_sym(s))) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, s: &str) {
        assert!(self.eat(s), "expected {s} at {:?}", self.peek());
    }
    fn is_id(&self, s: &str) -> bool {
        matches!(self.peek(), Some(Tok::Id(x)) if x == s)
    }

    fn var(&mut self, name: &str) -> Type {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Type::Var(i as u32);
        }
        self.names.push(name.into());
        self.env.defs.push(Type::Null);
        Type::Var(self.names.len() as u32 - 1)
    }

    fn ty(&mut self) -> Type {
        let Tok::Id(id) = self.next() else {
            panic!(
                "type expected at {:?}",
                &self.toks[self.pos.saturating_sub(12)..(self.pos + 3).min(self.toks.len())]
            );
        };
        match id.as_str() {
            "null" => Type::Null,
            "bool" => Type::Bool,
            "nat" => Type::Nat,
            "int" => Type::Int,
            "nat8" => Type::Nat8,
            "nat16" => Type::Nat16,
            "nat32" => Type::Nat32,
            "nat64" => Type::Nat64,
            "int8" => Type::Int8,
            "int16" => Type::Int16,
            "int32" => Type::Int32,
            "int64" => Type::Int64,
            "float32" => Type::Float32,
            "float64" => Type::Float64,
            "text" => Type::Text,
            "reserved" => Type::Reserved,
            "empty" => Type::Empty,
            "principal" => Type::Principal,
            "blob" => Type::Vec(Box::new(Type::Nat8)),
            "opt" => Type::Opt(Box::new(self.ty())),
            "vec" => Type::Vec(Box::new(self.ty())),
            "record" => Type::Record(self.fields(true)),
            "variant" => Type::Variant(self.fields(false)),
            "func" => Type::Func(Box::new(self.func_sig())),
            "service" => Type::Service(self.methods()),
            name => self.var(name),
        }
    }

    fn fields(&mut self, record: bool) -> Vec<(u32, Type)> {
        self.expect("{");
        let mut out = Vec::new();
        let mut next_index = 0u32;
        while !self.eat("}") {
            let save = self.pos;
            let label = match self.next() {
                Tok::Id(n) if self.eat(":") => Some(field_id(&n)),
                Tok::Text(n) if self.eat(":") => {
                    Some(field_id(std::str::from_utf8(&n).expect("utf8")))
                }
                Tok::Num(n) if self.eat(":") => Some(n as u32),
                Tok::Id(n) if !record && (self.eat(";") || self.peek() == Some(&Tok::Sym("}"))) => {
                    out.push((field_id(&n), Type::Null));
                    continue;
                }
                Tok::Text(n)
                    if !record && (self.eat(";") || self.peek() == Some(&Tok::Sym("}"))) =>
                {
                    out.push((field_id(std::str::from_utf8(&n).expect("utf8")), Type::Null));
                    continue;
                }
                Tok::Num(n)
                    if !record && (self.eat(";") || self.peek() == Some(&Tok::Sym("}"))) =>
                {
                    out.push((n as u32, Type::Null));
                    continue;
                }
                _ => {
                    self.pos = save;
                    None
                }
            };
            let id = label.unwrap_or(next_index);
            next_index = id.wrapping_add(1);
            let t = self.ty();
            out.push((id, t));
            self.eat(";");
        }
        out.sort_by_key(|(i, _)| *i);
        out
    }

    fn tuple(&mut self) -> Vec<Type> {
        self.expect("(");
        let mut out = Vec::new();
        while !self.eat(")") {
            // Argument names: `name : type`.
            if matches!(self.peek(), Some(Tok::Id(_)))
                && self.toks.get(self.pos + 1) == Some(&Tok::Sym(":"))
            {
                self.pos += 2;
            }
            out.push(self.ty());
            self.eat(",");
        }
        out
    }

    fn func_sig(&mut self) -> FuncType {
        let args = self.tuple();
        self.expect("->");
        let results = self.tuple();
        let mut modes = Vec::new();
        loop {
            if self.is_id("query") {
                modes.push(1);
            } else if self.is_id("oneway") {
                modes.push(2);
            } else if self.is_id("composite_query") {
                modes.push(3);
            } else {
                break;
            }
            self.pos += 1;
        }
        FuncType {
            args,
            results,
            modes,
        }
    }

    fn methods(&mut self) -> Vec<(String, Type)> {
        self.expect("{");
        let mut out = Vec::new();
        while !self.eat("}") {
            let name = match self.next() {
                Tok::Id(n) => n,
                Tok::Text(t) => String::from_utf8(t).expect("utf8"),
                t => panic!("method name expected, got {t:?}"),
            };
            self.expect(":");
            let t = if matches!(self.peek(), Some(Tok::Sym("("))) {
                Type::Func(Box::new(self.func_sig()))
            } else {
                self.ty()
            };
            out.push((name, t));
            self.eat(";");
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// `blob "…"` or a textual value (skipped to the matching token).
    fn input(&mut self) -> Option<Vec<u8>> {
        if self.is_id("blob") {
            self.pos += 1;
            let Tok::Text(b) = self.next() else {
                panic!("blob text")
            };
            return Some(b);
        }
        let Tok::Text(_) = self.next() else {
            panic!("input expected")
        };
        None
    }
}

fn static_sym(s: &str) -> &'static str {
    [
        "!:", "==", "!=", "->", ":", ";", "(", ")", "{", "}", ",", "=", "-", "+", ".",
    ]
    .into_iter()
    .find(|x| *x == s)
    .expect("known symbol")
}

#[derive(Debug)]
enum Check {
    Decodes(Vec<u8>),
    Fails(Vec<u8>),
    Equal(Vec<u8>, Vec<u8>),
    Differ(Vec<u8>, Vec<u8>),
    Textual,
}

fn parse_file(name: &str) -> (TypeEnv, Vec<(Check, Vec<Type>, String)>) {
    let src = std::fs::read_to_string(format!("{DIR}/{name}")).expect("read");
    let mut p = Parser {
        toks: lex(&src),
        pos: 0,
        names: Vec::new(),
        env: TypeEnv::default(),
    };
    let mut tests = Vec::new();
    while p.pos < p.toks.len() {
        if p.is_id("type") {
            p.pos += 1;
            let Tok::Id(name) = p.next() else {
                panic!("type name")
            };
            p.expect("=");
            let t = p.ty();
            let Type::Var(i) = p.var(&name) else {
                unreachable!()
            };
            p.env.defs[i as usize] = t;
            p.eat(";");
            continue;
        }
        if p.is_id("import") {
            while !p.eat(";") {
                p.pos += 1;
            }
            continue;
        }
        assert!(p.is_id("assert"), "assert expected at {:?}", p.peek());
        p.pos += 1;
        let left = p.input();
        let check = if p.eat("!:") {
            left.map(Check::Fails)
        } else if p.eat("==") || p.eat("!=") {
            let equal = p.toks[p.pos - 1] == Tok::Sym("==");
            let right = p.input();
            p.expect(":");
            match (left, right, equal) {
                (Some(l), Some(r), true) => Some(Check::Equal(l, r)),
                (Some(l), Some(r), false) => Some(Check::Differ(l, r)),
                (Some(l), None, true) => Some(Check::Decodes(l)),
                _ => None,
            }
        } else {
            p.expect(":");
            left.map(Check::Decodes)
        };
        let types = p.tuple();
        let desc = match p.peek() {
            Some(Tok::Text(t)) => {
                let d = String::from_utf8_lossy(t).into_owned();
                p.pos += 1;
                d
            }
            _ => String::new(),
        };
        p.eat(";");
        tests.push((check.unwrap_or(Check::Textual), types, desc));
    }
    (p.env, tests)
}

/// Runs one file; returns (checked, textual-skipped, failures).
fn run_file(name: &str) -> (usize, usize, Vec<String>) {
    let (env, tests) = parse_file(name);
    let mut checked = 0;
    let mut textual = 0;
    let mut failures = Vec::new();
    for (check, types, desc) in tests {
        let dec = |b: &[u8]| decode_args(b, &types, &env);
        let ok = match &check {
            Check::Decodes(b) => dec(b).is_ok(),
            Check::Fails(b) => dec(b).is_err(),
            Check::Equal(a, b) => matches!((dec(a), dec(b)), (Ok(x), Ok(y)) if same(&x, &y)),
            Check::Differ(a, b) => !matches!((dec(a), dec(b)), (Ok(x), Ok(y)) if same(&x, &y)),
            Check::Textual => {
                textual += 1;
                continue;
            }
        };
        checked += 1;
        if !ok {
            failures.push(format!("{name}: {desc} ({check:?} : {types:?})"));
        }
    }
    (checked, textual, failures)
}

fn same(a: &[Value], b: &[Value]) -> bool {
    a == b
}

#[test]
fn candid_test_suite() {
    let mut failures = Vec::new();
    let mut total = 0;
    let mut skipped = 0;
    for f in [
        "prim.test.did",
        "construct.test.did",
        "overshoot.test.did",
        "spacebomb.test.did",
        "reference.test.did",
        "subtypes.test.did",
    ] {
        let (n, t, fails) = run_file(f);
        eprintln!(
            "{f}: {} of {n} binary assertions hold ({t} textual skipped)",
            n - fails.len()
        );
        total += n;
        skipped += t;
        failures.extend(fails);
    }
    for f in &failures {
        eprintln!("FAIL {f}");
    }
    eprintln!(
        "candid: {} of {total} binary assertions hold, {skipped} textual skipped",
        total - failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} Candid assertions fail",
        failures.len()
    );
}
