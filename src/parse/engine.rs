//! The one streaming pass: quick-xml events → the dialect's trie → builders and bronze records.
//!
//! Per element the engine does one trie lookup, keeps a path buffer for bronze keys, counts repeated siblings
//! and gathers the element's own text. Nothing is allocated per element except the values it keeps.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use quick_xml::XmlVersion;
use quick_xml::errors::Error as XmlError;
use quick_xml::escape::EscapeError;
use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

use super::ParseOptions;
use super::builder::{FileDefaults, TxBuilder, ValueError};
use super::error::{ParseError, Position};
use super::plan::{Action, NodeId, Plan, ROOT, Role, name_print, print_bit};
use crate::dialect::{Dialect, Field, RootInfo};
use crate::model::{BronzeCapacity, BronzeRecord, Transaction, TransactionType, VoidedTicket};

/// What the pass yields, before file facts are added.
pub(crate) struct Output {
    pub dialect: Dialect,
    pub transactions: Vec<Transaction>,
    pub envelope: BronzeRecord,
    pub site: Option<String>,
}

struct Frame {
    node: Option<NodeId>,
    role: Role,
    /// Lengths of the shared buffers before this element: restored when it closes.
    path_len: usize,
    counters_len: usize,
    names_len: usize,
    text_start: usize,
    captures_len: usize,
    has_children: bool,
    /// Bronze holds an attribute of it (so an element without text is not lost).
    has_attrs: bool,
    /// The [`print_bit`]s of its children's names so far: a child whose bit is not set is the first of its name,
    /// without a scan of the counters.
    child_bits: u64,
}

/// How many children of one name an open element has had so far.
struct Counter {
    /// The name's [`name_print`], compared before the name.
    print: u64,
    /// The name, in `Engine::names`.
    start: u32,
    end: u32,
    count: u32,
}

/// A pending "this element's text fills that field".
struct Capture {
    field: Field,
}

pub(crate) struct Engine<'a> {
    file: &'a str,
    text: &'a str,
    opts: &'a ParseOptions,
    plan: Option<&'static Plan>,
    root_seen: bool,
    frames: Vec<Frame>,
    /// Bronze key of the current element: `/`-joined local names, repeats numbered.
    path: String,
    /// Child-name counters of the open elements (stack discipline, like `frames`).
    counters: Vec<Counter>,
    names: Vec<u8>,
    /// Text of the open elements, innermost last.
    text_buf: String,
    captures: Vec<Capture>,
    defaults: FileDefaults,
    envelope: BronzeRecord,
    tx: Option<TxBuilder>,
    tx_count: u32,
    /// Sizes of the largest bronze record so far: the next one reserves that much at once.
    bronze_hint: BronzeCapacity,
    /// Bytes the file's bronze records may still take (see [`bronze_limit`]).
    bronze_left: usize,
    /// Child-name counters of elements with many distinct child names, by depth: name → index into `counters`.
    /// A linear scan is fastest for the few names real elements have, but would make N distinct names cost N².
    wide: Vec<(usize, ChildIndex)>,
    done: Vec<Transaction>,
    /// Transactions waiting for the file's business date, with where each ended.
    deferred: Vec<(TxBuilder, u64)>,
}

impl<'a> Engine<'a> {
    pub fn new(file: &'a str, text: &'a str, opts: &'a ParseOptions) -> Self {
        Engine {
            file,
            text,
            opts,
            plan: None,
            root_seen: false,
            frames: Vec::with_capacity(32),
            path: String::with_capacity(256),
            counters: Vec::with_capacity(64),
            names: Vec::with_capacity(1024),
            text_buf: String::with_capacity(1024),
            captures: Vec::with_capacity(16),
            defaults: FileDefaults::default(),
            envelope: BronzeRecord::default(),
            tx: None,
            tx_count: 0,
            bronze_hint: (0, 0, 0),
            bronze_left: bronze_limit(text.len()),
            wide: Vec::new(),
            done: Vec::with_capacity(64),
            deferred: Vec::new(),
        }
    }

    pub fn run(mut self) -> Result<Output, ParseError> {
        let mut reader = Reader::from_str(self.text);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.expand_empty_elements = false;
        config.trim_text(false);

        loop {
            // Whitespace before an element's first text is formatting (values are trimmed): let quick-xml skip it
            // before it makes and UTF-8-checks an event of it. Once the element has text, whitespace is content,
            // as in `A &amp; B`, where the space after the reference belongs to the value.
            reader.config_mut().trim_text_start = !self.has_text();
            let result = reader.read_event();
            let pos = reader.buffer_position();
            // Matched where it lies: moving the event out of its `Result` first (`?`) stalled on reading it back.
            match result {
                Ok(Event::Start(e)) => self.start(&e, pos)?,
                Ok(Event::Empty(e)) => {
                    self.start(&e, pos)?;
                    self.end(pos)?;
                }
                Ok(Event::End(_)) => self.end(pos)?,
                // Indentation never arrives here: quick-xml skipped it (above).
                Ok(Event::Text(t)) => {
                    let text = self.content(&t, || t.xml10_content(), pos)?;
                    self.push_text(&text, pos)?;
                }
                Ok(Event::CData(t)) => {
                    let raw = self.content(&t, || t.xml10_content(), pos)?;
                    if self.frames.is_empty() {
                        return Err(self.malformed(pos, "character data outside the root element".into()));
                    }
                    self.append_text(&raw, pos)?;
                }
                Ok(Event::GeneralRef(r)) => {
                    let mut buf = [0u8; 4];
                    let resolved: &str = if r.is_char_ref() {
                        match r.resolve_char_ref() {
                            Ok(Some(c)) => c.encode_utf8(&mut buf),
                            _ => {
                                let name = String::from_utf8_lossy(&r);
                                return Err(self.malformed(pos, format!("invalid character reference &{name};")));
                            }
                        }
                    } else {
                        match &*r {
                            b"lt" => "<",
                            b"gt" => ">",
                            b"amp" => "&",
                            b"apos" => "'",
                            b"quot" => "\"",
                            other => {
                                return Err(ParseError::UnknownEntity {
                                    file: self.file.to_owned(),
                                    position: self.locate(pos),
                                    name: clip(&String::from_utf8_lossy(other)),
                                });
                            }
                        }
                    };
                    if self.frames.is_empty() {
                        return Err(self.malformed(pos, "reference outside the root element".into()));
                    }
                    self.append_text(resolved, pos)?;
                }
                Ok(Event::DocType(d)) => {
                    if d.windows(8).any(|w| w == b"<!ENTITY") {
                        return Err(ParseError::EntityDeclaration {
                            file: self.file.to_owned(),
                            position: self.locate(pos),
                        });
                    }
                }
                Ok(Event::Decl(_) | Event::PI(_) | Event::Comment(_)) => {}
                Ok(Event::Eof) => break,
                Err(e) => return Err(self.xml_error(e, reader.error_position())),
            }
        }
        let end = self.text.len() as u64;
        if let Some(frame) = self.frames.last() {
            let innermost = clip(self.path[frame.path_len..].trim_start_matches('/'));
            return Err(ParseError::Truncated {
                file: self.file.to_owned(),
                position: self.locate(end),
                open: self.frames.len(),
                innermost,
            });
        }
        let Some(plan) = self.plan else {
            if self.text.trim().is_empty() {
                return Err(ParseError::Empty { file: self.file.to_owned() });
            }
            return Err(self.malformed(end, "no root element".into()));
        };
        for (tx, pos) in std::mem::take(&mut self.deferred) {
            self.land(tx, pos)?;
        }
        let site = self.defaults.site.clone().or_else(|| self.done.first().map(|t| t.header.key.site.clone()));
        Ok(Output { dialect: plan.spec.dialect, transactions: self.done, envelope: self.envelope, site })
    }

    fn start(&mut self, e: &BytesStart<'_>, pos: u64) -> Result<(), ParseError> {
        if e.name().into_inner().len() > MAX_NAME_BYTES {
            return Err(self.too_long_name("an element", e.name().into_inner().len(), pos));
        }
        let name = self.str_of(local_name(e.name().into_inner()), pos)?;
        let print = name_print(name.as_bytes());
        if self.frames.len() >= self.opts.max_depth {
            return Err(ParseError::TooDeep {
                file: self.file.to_owned(),
                position: self.locate(pos),
                limit: self.opts.max_depth,
            });
        }

        let (plan, node) = match self.frames.last_mut() {
            None => {
                if self.root_seen {
                    return Err(self.malformed(pos, "content after the root element".into()));
                }
                self.root_seen = true;
                let plan = self.choose_dialect(e, name, pos)?;
                (plan, Some(ROOT))
            }
            Some(parent) => {
                parent.has_children = true;
                let plan = self.plan.ok_or_else(|| self.malformed(pos, "no dialect".into()))?;
                let parent_node = self.frames.last().and_then(|f| f.node);
                (plan, parent_node.and_then(|n| plan.child(n, name.as_bytes(), print)))
            }
        };
        let mut role = node.and_then(|n| plan.nodes[n as usize].role).unwrap_or(Role::Plain);
        if role == Role::Transaction && self.tx.is_some() {
            // A transaction element inside a transaction is only data of the outer one.
            role = Role::Plain;
        }

        // Count this element among its parent's children first: its own counters start after that entry, so
        // closing it keeps the parent's count of its name.
        let occurrence = self.count_child(name, print);
        let frame = Frame {
            node,
            role,
            path_len: self.path.len(),
            counters_len: self.counters.len(),
            names_len: self.names.len(),
            text_start: self.text_buf.len(),
            captures_len: self.captures.len(),
            has_children: false,
            has_attrs: false,
            child_bits: 0,
        };
        if !self.path.is_empty() {
            self.path.push('/');
        }
        let segment_start = self.path.len();
        self.path.push_str(name);
        // A transaction's own segment is its bronze root: it carries no number.
        if occurrence > 1 && role != Role::Transaction {
            push_index(&mut self.path, occurrence);
        }
        self.frames.push(frame);

        match role {
            Role::Transaction => {
                if self.tx.is_none() {
                    self.tx_count += 1;
                    let mut tx = TxBuilder::new(self.tx_count, segment_start, self.bronze_hint);
                    if plan.spec.type_from_element_name {
                        tx.apply(Field::TypeRaw, name).map_err(|v| self.invalid(pos, v, name))?;
                    }
                    self.tx = Some(tx);
                }
            }
            Role::Line => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.begin_line();
                }
            }
            Role::Discount => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.begin_discount();
                }
            }
            Role::Plain => {}
        }

        let actions: &'static [Action] = node.map_or(&[], |n| &plan.nodes[n as usize].actions);
        // Most tags have no attributes: they skip the attribute loop's set-up. quick-xml yields no attribute from
        // whitespace alone, so this is exactly the loop's result.
        let preds_held = if e.attributes_raw().iter().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
            0
        } else {
            self.attributes(e, actions, pos)?
        };
        for (i, action) in actions.iter().enumerate() {
            match *action {
                Action::Text { field, pred } if pred.is_none() || preds_held & (1 << i.min(63)) != 0 => {
                    self.captures.push(Capture { field });
                }
                Action::Mark { field, value, pred } if pred.is_none() || preds_held & (1 << i.min(63)) != 0 => {
                    self.apply(field, value).map_err(|err| self.invalid(pos, err, value))?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Keys a start tag's attributes in bronze and applies the actions that read them; returns bit i set where the
    /// predicate of action i holds (actions per element are few).
    #[inline(never)]
    fn attributes(&mut self, e: &BytesStart<'_>, actions: &[Action], pos: u64) -> Result<u64, ParseError> {
        let mut preds_held: u64 = 0;
        let mut names = AttrNames::default();
        // Local names already keyed in bronze: a second attribute of the same local name (`VoidFlag` beside
        // `dtv:VoidFlag`) is keyed by its qualified name, so the two entries can be told apart.
        let mut locals = AttrNames::default();
        // The element's unprefixed attribute names, gathered (in one more pass) at its first prefixed attribute: a
        // prefixed one whose local name an unprefixed one has is keyed by its qualified name even when it comes
        // first, so that the unprefixed one keeps the plain key.
        let mut plain: Option<AttrNames> = None;
        // quick-xml's own duplicate check allocates a list per element; `names` does it on the stack.
        for attr in e.attributes().with_checks(false) {
            let attr = attr.map_err(|err| self.malformed(pos, format!("bad attribute: {err}")))?;
            let raw = attr.key.into_inner();
            if raw.len() > MAX_NAME_BYTES {
                return Err(self.too_long_name("an attribute", raw.len(), pos));
            }
            if !names.insert(raw) {
                let raw = String::from_utf8_lossy(raw);
                return Err(self.malformed(pos, format!("attribute {raw} appears twice")));
            }
            if raw.strip_prefix(b"xmlns").is_some_and(|rest| rest.is_empty() || rest.starts_with(b":")) {
                continue;
            }
            let local = local_name(raw);
            let attr_name = self.str_of(local, pos)?;
            let prefixed = local.len() != raw.len();
            let twin = prefixed && plain.get_or_insert_with(|| unprefixed_names(e)).contains(local);
            let bronze_name = if !twin && locals.insert(local) { attr_name } else { self.str_of(raw, pos)? };
            // Normalization (XML 1.0, 3.3.3) only replaces references and tab, CR and LF: without them the value
            // is the input's own text.
            let value = match &attr.value {
                Cow::Borrowed(v) if !v.iter().any(|b| matches!(b, b'&' | b'\t' | b'\n' | b'\r' | b'<')) => {
                    Cow::Borrowed(self.str_of(v, pos)?)
                }
                // XML 1.0 (3.1, AttValue) allows no raw `<` in a value; quick-xml reads one, so it is refused here.
                v if v.contains(&b'<') => {
                    let raw = String::from_utf8_lossy(raw);
                    return Err(self.malformed(pos, format!("attribute {raw} holds a raw '<' (write it as &lt;)")));
                }
                _ => attr.normalized_value(XmlVersion::Implicit1_0).map_err(|err| self.xml_error(err, pos))?,
            };
            let value = trim(&value);
            if value.len() > self.opts.max_text_bytes {
                return Err(ParseError::TextTooLarge {
                    file: self.file.to_owned(),
                    position: self.locate(pos),
                    limit: self.opts.max_text_bytes,
                });
            }
            self.charge(self.path.len() + "_attr_".len() + bronze_name.len() + value.len(), pos)?;
            let (bronze, key_start) = bronze_target(&mut self.tx, &mut self.envelope);
            bronze.push3(&self.path[key_start..], "_attr_", bronze_name, value);
            if let Some(frame) = self.frames.last_mut() {
                frame.has_attrs = true;
            }
            for (i, action) in actions.iter().enumerate() {
                match *action {
                    Action::Attr { name: want, field, constant } if want == attr_name => {
                        let v = constant.unwrap_or(value);
                        if !v.is_empty() {
                            self.apply(field, v).map_err(|err| self.invalid(pos, err, v))?;
                        }
                    }
                    Action::Text { pred: Some((k, want)), .. } | Action::Mark { pred: Some((k, want)), .. }
                        if k == attr_name && predicate_holds(want, value) && i < 64 =>
                    {
                        preds_held |= 1 << i;
                    }
                    _ => {}
                }
            }
        }
        Ok(preds_held)
    }

    fn end(&mut self, pos: u64) -> Result<(), ParseError> {
        let Some(frame) = self.frames.pop() else {
            return Err(self.malformed(pos, "closing tag without an open element".into()));
        };
        // Take the text out so that the builders can be borrowed mutably while it is read.
        let text = std::mem::take(&mut self.text_buf);
        let value = trim(&text[frame.text_start..]);
        let mut result = Ok(());
        if value.is_empty() && !frame.has_children && !frame.has_attrs {
            // An empty element (`<NoSale/>`) is data too: its presence is its value.
            if let Err(e) = self.charge(self.path.len(), pos) {
                self.text_buf = text;
                return Err(e);
            }
            let (bronze, key_start) = bronze_target(&mut self.tx, &mut self.envelope);
            bronze.push(&self.path[key_start..], "");
        } else if !value.is_empty() {
            if let Err(e) = self.charge(self.path.len() + "_tagvalue".len() + value.len(), pos) {
                self.text_buf = text;
                return Err(e);
            }
            let (bronze, key_start) = bronze_target(&mut self.tx, &mut self.envelope);
            let key = &self.path[key_start..];
            if frame.has_children {
                bronze.push3(key, "_tagvalue", "", value);
            } else {
                bronze.push(key, value);
            }
            for i in frame.captures_len..self.captures.len() {
                let field = self.captures[i].field;
                if let Err(err) = self.apply(field, value) {
                    result = Err(self.invalid(pos, err, value));
                    break;
                }
            }
        }
        self.text_buf = text;
        result?;
        self.captures.truncate(frame.captures_len);
        self.text_buf.truncate(frame.text_start);
        self.path.truncate(frame.path_len);
        self.counters.truncate(frame.counters_len);
        self.names.truncate(frame.names_len);
        // The closed element's children were counted at the depth it leaves.
        if self.wide.last().is_some_and(|(depth, _)| *depth == self.frames.len() + 1) {
            self.wide.pop();
        }

        let Some(plan) = self.plan else { return Ok(()) };
        match frame.role {
            Role::Line => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.end_line(plan.spec);
                }
            }
            Role::Discount => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.end_discount(plan.spec);
                }
            }
            Role::Transaction => {
                if let Some(tx) = self.tx.take() {
                    let (keys, values, entries) = tx.bronze.capacity_hint();
                    let hint = self.bronze_hint;
                    self.bronze_hint = (hint.0.max(keys), hint.1.max(values), hint.2.max(entries));
                    // A file whose business date follows its transactions (Verifone's `openedTime` after the
                    // `trans` records): they, and every one after them (to keep the file's order), wait for the
                    // end of the file.
                    let waits = !self.deferred.is_empty()
                        || (tx.lacks_business_date()
                            && self.defaults.business_date.is_none()
                            && plan.spec.file.iter().any(|r| r.field == Field::BusinessDate));
                    if waits {
                        self.deferred.push((tx, pos));
                    } else {
                        self.land(tx, pos)?;
                    }
                }
            }
            Role::Plain => {}
        }
        Ok(())
    }

    /// Finishes a transaction and keeps it; a record that voids a ticket earlier in the file flags that ticket.
    fn land(&mut self, tx: TxBuilder, pos: u64) -> Result<(), ParseError> {
        let Some(plan) = self.plan else { return Ok(()) };
        let ordinal = tx.ordinal;
        let done = tx.finish(plan.spec, &self.defaults).map_err(|missing| ParseError::MissingField {
            file: self.file.to_owned(),
            position: self.locate(pos),
            transaction: ordinal,
            field: missing.0,
        })?;
        if let Some(voided) = &done.header.voids {
            mark_voided(&mut self.done, voided);
        }
        self.done.push(done);
        Ok(())
    }

    /// Whether the innermost open element has gathered text already (then even whitespace belongs to it).
    fn has_text(&self) -> bool {
        self.frames.last().is_some_and(|f| self.text_buf.len() > f.text_start)
    }

    fn push_text(&mut self, text: &str, pos: u64) -> Result<(), ParseError> {
        if self.frames.is_empty() {
            if text.trim().is_empty() {
                return Ok(());
            }
            return Err(self.malformed(pos, "text outside the root element".into()));
        }
        // Whitespace before an element's first text is formatting: values are trimmed, so skip the copy.
        let start = self.frames.last().map_or(0, |f| f.text_start);
        if self.text_buf.len() == start && text.bytes().all(|b| b.is_ascii_whitespace()) {
            return Ok(());
        }
        self.append_text(text, pos)
    }

    fn append_text(&mut self, text: &str, pos: u64) -> Result<(), ParseError> {
        let start = self.frames.last().map_or(0, |f| f.text_start);
        if self.text_buf.len() - start + text.len() > self.opts.max_text_bytes {
            return Err(ParseError::TextTooLarge {
                file: self.file.to_owned(),
                position: self.locate(pos),
                limit: self.opts.max_text_bytes,
            });
        }
        self.text_buf.push_str(text);
        Ok(())
    }

    /// Counts `name` among the current element's children; returns its occurrence number (1 for the first).
    fn count_child(&mut self, name: &str, print: u64) -> u32 {
        let depth = self.frames.len();
        if self.wide.last().is_some_and(|(d, _)| *d == depth) {
            return self.count_wide_child(name, print);
        }
        let bit = print_bit(print);
        let (from, seen) = match self.frames.last_mut() {
            Some(parent) => {
                let seen = parent.child_bits & bit != 0;
                parent.child_bits |= bit;
                (parent.counters_len, seen)
            }
            None => (0, true),
        };
        // Counters of the current element are those pushed since it opened, at its depth only: the children's
        // own counters were truncated when they closed.
        if seen {
            for c in &mut self.counters[from..] {
                if c.print == print && &self.names[c.start as usize..c.end as usize] == name.as_bytes() {
                    c.count += 1;
                    return c.count;
                }
            }
        }
        self.push_counter(name, print);
        if self.counters.len() - from == WIDE {
            self.index_children(from, depth);
        }
        1
    }

    fn push_counter(&mut self, name: &str, print: u64) {
        let start = self.names.len() as u32;
        self.names.extend_from_slice(name.as_bytes());
        self.counters.push(Counter { print, start, end: self.names.len() as u32, count: 1 });
    }

    /// [`Self::count_child`] for an element with many distinct child names (out of line: real files rarely come
    /// here, and the parser's hot loop stays small).
    #[inline(never)]
    fn count_wide_child(&mut self, name: &str, print: u64) -> u32 {
        let at = self.counters.len();
        if let Some((_, index)) = self.wide.last_mut() {
            if let Some(&i) = index.get(name.as_bytes()) {
                self.counters[i].count += 1;
                return self.counters[i].count;
            }
            index.insert(name.as_bytes().into(), at);
        }
        self.push_counter(name, print);
        1
    }

    /// Indexes the current element's child counters (from `from`) by name, at `depth`.
    #[cold]
    #[inline(never)]
    fn index_children(&mut self, from: usize, depth: usize) {
        let index = (from..self.counters.len())
            .map(|i| {
                let c = &self.counters[i];
                (self.names[c.start as usize..c.end as usize].into(), i)
            })
            .collect();
        self.wide.push((depth, index));
    }

    /// Takes `bytes` of bronze from what the file may still use.
    #[inline]
    fn charge(&mut self, bytes: usize, pos: u64) -> Result<(), ParseError> {
        match self.bronze_left.checked_sub(bytes) {
            Some(left) => {
                self.bronze_left = left;
                Ok(())
            }
            None => Err(self.record_too_large(pos)),
        }
    }

    #[cold]
    #[inline(never)]
    fn record_too_large(&self, pos: u64) -> ParseError {
        ParseError::RecordTooLarge {
            file: self.file.to_owned(),
            position: self.locate(pos),
            limit: bronze_limit(self.text.len()),
        }
    }

    fn choose_dialect(&mut self, e: &BytesStart<'_>, name: &str, pos: u64) -> Result<&'static Plan, ParseError> {
        let mut info = RootInfo { local_name: name, ..RootInfo::default() };
        let mut default_ns = None;
        let attrs: Vec<_> = e.attributes().filter_map(Result::ok).collect();
        for a in &attrs {
            let key = a.key;
            let v = self.str_of(&a.value, pos)?;
            if key.as_ref() == b"xmlns" {
                default_ns = Some(v);
                info.namespaces.push(v);
            } else if key.prefix().is_some_and(|p| p.as_ref() == b"xmlns") {
                info.namespaces.push(v);
            } else {
                info.attributes.push((self.str_of(key.local_name().into_inner(), pos)?, v));
            }
        }
        let dialect = match self.opts.dialect {
            Some(forced) => {
                let root_ok =
                    forced.spec().detect.iter().any(|c| matches!(c, crate::dialect::Detect::Root(r) if *r == name));
                if !root_ok {
                    return Err(ParseError::DialectMismatch {
                        file: self.file.to_owned(),
                        position: self.locate(pos),
                        dialect: forced.id(),
                        root: clip(name),
                    });
                }
                forced
            }
            None => Dialect::detect(&info).ok_or_else(|| ParseError::UnknownDialect {
                file: self.file.to_owned(),
                position: self.locate(pos),
                root: clip(name),
                namespace: default_ns.map(clip),
            })?,
        };
        let plan = Plan::for_dialect(dialect);
        self.plan = Some(plan);
        Ok(plan)
    }

    /// `bytes` as text. quick-xml hands out bytes; the whole file was checked (or transcoded) to UTF-8 once, in
    /// `input`, and quick-xml cuts the input only at ASCII delimiters, so bytes it borrowed from the input are
    /// taken as the input's own text (`str::get` still refuses a cut off a character boundary) with no second
    /// UTF-8 check. quick-xml 0.42 checked every event's bytes again: about a tenth of a parse.
    #[inline]
    fn str_of<'b>(&self, bytes: &'b [u8], pos: u64) -> Result<&'b str, ParseError>
    where
        'a: 'b,
    {
        let within = (bytes.as_ptr() as usize).checked_sub(self.text.as_ptr() as usize);
        match within.and_then(|start| self.text.get(start..start.checked_add(bytes.len())?)) {
            Some(s) => Ok(s),
            // Not the input's bytes (a copy quick-xml made): check them.
            None => std::str::from_utf8(bytes).map_err(|e| self.malformed(pos, format!("not UTF-8: {e}"))),
        }
    }

    /// Text or CDATA content with XML 1.0 line ends: the input's own text unless it holds a carriage return,
    /// which quick-xml's `normalized` turns into line feeds.
    fn content<'b>(
        &self,
        raw: &'b [u8],
        normalized: impl FnOnce() -> Result<Cow<'b, str>, quick_xml::encoding::EncodingError>,
        pos: u64,
    ) -> Result<Cow<'b, str>, ParseError>
    where
        'a: 'b,
    {
        if raw.contains(&b'\r') {
            return normalized().map_err(|e| self.malformed(pos, format!("not UTF-8: {e}")));
        }
        self.str_of(raw, pos).map(Cow::Borrowed)
    }

    fn apply(&mut self, field: Field, value: &str) -> Result<(), ValueError> {
        match self.tx.as_mut() {
            Some(tx) => tx.apply(field, value),
            None => self.defaults.apply(field, value),
        }
    }

    fn locate(&self, offset: u64) -> Position {
        Position::locate(self.text, offset)
    }

    /// What went wrong, quoting the input no further than [`MAX_QUOTED_CHARS`]: a reason is stored, logged and
    /// printed, and an audit saw one of 200 MiB (a root element's name, quoted whole).
    fn malformed(&self, offset: u64, reason: String) -> ParseError {
        ParseError::Malformed { file: self.file.to_owned(), position: self.locate(offset), reason: clip(&reason) }
    }

    fn too_long_name(&self, what: &str, len: usize, offset: u64) -> ParseError {
        self.malformed(offset, format!("{what} name of {len} bytes, longer than the limit of {MAX_NAME_BYTES}"))
    }

    fn invalid(&self, offset: u64, (field, reason): ValueError, value: &str) -> ParseError {
        ParseError::InvalidValue {
            file: self.file.to_owned(),
            position: self.locate(offset),
            field,
            value: value.chars().take(64).collect(),
            reason,
        }
    }

    fn xml_error(&self, err: XmlError, offset: u64) -> ParseError {
        use quick_xml::errors::SyntaxError;
        match err {
            // Input that ends inside a tag, comment, CDATA section or declaration was cut short.
            XmlError::Syntax(
                SyntaxError::UnclosedTag
                | SyntaxError::UnclosedComment
                | SyntaxError::UnclosedCData
                | SyntaxError::UnclosedDoctype
                | SyntaxError::UnclosedPI
                | SyntaxError::UnclosedXmlDecl,
            ) if !self.frames.is_empty() => {
                let innermost =
                    self.frames.last().map_or(String::new(), |f| clip(self.path[f.path_len..].trim_start_matches('/')));
                ParseError::Truncated {
                    file: self.file.to_owned(),
                    position: self.locate(self.text.len() as u64),
                    open: self.frames.len(),
                    innermost,
                }
            }
            XmlError::Escape(EscapeError::UnrecognizedEntity(_, name)) => ParseError::UnknownEntity {
                file: self.file.to_owned(),
                position: self.locate(offset),
                name: clip(&name),
            },
            other => self.malformed(offset, other.to_string()),
        }
    }
}

/// Longest element or attribute name accepted, in bytes. POS names are tens of bytes; the file limit alone let a
/// 200 MiB name through, into a bronze key and an error's reason.
const MAX_NAME_BYTES: usize = 1024;

/// Most characters of the input an error quotes.
const MAX_QUOTED_CHARS: usize = 200;

/// `text` within [`MAX_QUOTED_CHARS`], marked as cut when it is.
fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}… ({} bytes in all)", &text[..end], text.len()),
    }
}

/// The ticket a record voids (a rollback mirror's original, a post-void's linked ticket), if earlier in this file,
/// is flagged voided too: sales figures leave out the pair. For a rollback that is every earlier record of the file
/// with the mirror's key (with its "shadow" copies, which share the key; the one that lands is the first). A ticket
/// in another file is left as it landed; `sales_voids` and the `sales_header_current` view name it.
fn mark_voided(done: &mut [Transaction], voided: &VoidedTicket) {
    for t in done.iter_mut().filter(|t| voided.is(&t.header.key)) {
        void(t);
    }
}

fn void(t: &mut Transaction) {
    t.header.flags.voided = true;
    if matches!(t.header.transaction_type, TransactionType::Sale | TransactionType::Refund) {
        t.header.transaction_type = TransactionType::Void;
    }
}

/// Whether an attribute's value meets a predicate's: equal ignoring ASCII case and a namespace prefix on either
/// side (`dtv:CancelOrphaned`, `xstore:CancelOrphaned`, `CancelOrphaned`; `true`, `True`).
fn predicate_holds(want: &str, value: &str) -> bool {
    // Bytes, not `rsplit_once`: a `char` pattern searched from the end cost more than the comparison (this runs for
    // every attribute a predicate names, on every element that has it).
    fn local(v: &[u8]) -> &[u8] {
        v.iter().rposition(|&b| b == b':').map_or(v, |i| &v[i + 1..])
    }
    let (want, value) = (want.as_bytes(), value.as_bytes());
    want.eq_ignore_ascii_case(value) || local(want).eq_ignore_ascii_case(local(value))
}

/// The record an element's values go to: its transaction's, or the envelope's outside transactions; and where
/// its bronze key starts in the path buffer.
fn bronze_target<'b>(tx: &'b mut Option<TxBuilder>, envelope: &'b mut BronzeRecord) -> (&'b mut BronzeRecord, usize) {
    match tx.as_mut() {
        Some(tx) => (&mut tx.bronze, tx.key_start),
        None => (envelope, 0),
    }
}

/// `str::trim`, with ASCII whitespace stripped first by bytes: values rarely end in other white space, and
/// `str::trim` decodes every character it looks at. A value that, once stripped so, starts or ends with a non-ASCII
/// byte gets `str::trim` itself, so the result is always `str::trim`'s.
#[inline]
fn trim(s: &str) -> &str {
    // `char::is_whitespace` of ASCII: space, tab, line feed, vertical tab, form feed, carriage return.
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r');
    let bytes = s.as_bytes();
    let start = bytes.iter().position(|b| !ws(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    // Both cuts are next to ASCII bytes, so on character boundaries.
    let cut = &s[start..end.max(start)];
    match (cut.as_bytes().first(), cut.as_bytes().last()) {
        (Some(a), Some(z)) if *a >= 0x80 || *z >= 0x80 => cut.trim(),
        _ => cut,
    }
}

/// The name after its prefix, if any. Names are short: a byte loop beat `str::find`'s searcher here (session 11),
/// and a search eight bytes at a time cost more than it (session 24).
fn local_name(qname: &[u8]) -> &[u8] {
    match qname.iter().position(|&b| b == b':') {
        Some(i) => &qname[i + 1..],
        None => qname,
    }
}

/// An element's child names → their counters' index in `Engine::counters`.
type ChildIndex = HashMap<Box<[u8]>, usize>;

/// Distinct child names past which an element's counters are indexed by a hash map.
const WIDE: usize = 32;

/// The most bronze a file may make: 32 times its text (real files make about as much bronze as text; a
/// pathological but valid one a few times more), plus 1 MiB, and never over 1 GiB (a record's offsets are 32-bit,
/// and one file must not take the memory of a whole pipeline).
fn bronze_limit(text_bytes: usize) -> usize {
    text_bytes.saturating_mul(32).saturating_add(1 << 20).min(1 << 30)
}

/// The raw attribute names of one start tag, to refuse a name given twice (not well-formed XML). Most tags with
/// attributes have one: only a second one sets up the list (setting it up for every tag was about 2% of a parse).
#[derive(Default)]
struct AttrNames<'a> {
    first: Option<&'a [u8]>,
    rest: Option<AttrSet<'a>>,
}

/// The names of `e`'s attributes that have no prefix (a bad attribute is left to the caller's own pass).
fn unprefixed_names<'a>(e: &'a BytesStart<'_>) -> AttrNames<'a> {
    let mut names = AttrNames::default();
    for attr in e.attributes().with_checks(false).flatten() {
        let raw = attr.key.into_inner();
        if !raw.contains(&b':') && raw != b"xmlns" {
            names.insert(raw);
        }
    }
    names
}

impl<'a> AttrNames<'a> {
    fn contains(&self, name: &[u8]) -> bool {
        match (self.first, &self.rest) {
            (None, _) => false,
            (Some(first), None) => first == name,
            (Some(_), Some(set)) => set.contains(name),
        }
    }

    /// False if `name` was inserted before.
    #[inline]
    fn insert(&mut self, name: &'a [u8]) -> bool {
        match (self.first, &mut self.rest) {
            (None, _) => {
                self.first = Some(name);
                true
            }
            (Some(first), None) => {
                if first == name {
                    return false;
                }
                let mut set = AttrSet::default();
                set.insert(first);
                set.insert(name);
                self.rest = Some(set);
                true
            }
            (Some(_), Some(set)) => set.insert(name),
        }
    }
}

/// [`AttrNames`] past the first: the first [`AttrSet::INLINE`] stay on the stack, and past [`AttrSet::LISTED`]
/// they go in a hash set (a list would make a tag of N attributes cost N²).
#[derive(Default)]
struct AttrSet<'a> {
    inline: [&'a [u8]; AttrSet::INLINE],
    len: usize,
    more: Vec<&'a [u8]>,
    /// Made only for a tag with many attributes: most tags never pay for a hasher.
    many: Option<HashSet<&'a [u8]>>,
}

impl<'a> AttrSet<'a> {
    const INLINE: usize = 8;
    const LISTED: usize = 32;

    fn contains(&self, name: &[u8]) -> bool {
        match &self.many {
            Some(many) => many.contains(name),
            None => self.inline[..self.len.min(Self::INLINE)].contains(&name) || self.more.contains(&name),
        }
    }

    /// False if `name` was inserted before.
    fn insert(&mut self, name: &'a [u8]) -> bool {
        if self.len >= Self::LISTED {
            return self.insert_many(name);
        }
        let known = &self.inline[..self.len.min(Self::INLINE)];
        if known.contains(&name) || self.more.contains(&name) {
            return false;
        }
        if self.len < Self::INLINE {
            self.inline[self.len] = name;
        } else {
            self.more.push(name);
        }
        self.len += 1;
        true
    }

    #[inline(never)]
    fn insert_many(&mut self, name: &'a [u8]) -> bool {
        let many = self.many.get_or_insert_with(|| self.inline.iter().copied().chain(self.more.drain(..)).collect());
        let new = many.insert(name);
        self.len += usize::from(new);
        new
    }
}

/// Appends `[n]` without the formatting machinery (this runs for every repeated sibling).
fn push_index(path: &mut String, n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    path.push('[');
    for &d in &digits[i..] {
        path.push(d as char);
    }
    path.push(']');
}

#[cfg(test)]
mod tests {
    #[test]
    fn predicates_ignore_case_and_a_prefix_on_either_side() {
        assert!(super::predicate_holds("cancel", "CANCEL"));
        assert!(super::predicate_holds("dtv:CancelOrphaned", "xstore:cancelorphaned"));
        assert!(super::predicate_holds("CancelOrphaned", "xstore:CancelOrphaned"));
        assert!(super::predicate_holds("a:", "b:"), "empty local names are equal");
        assert!(!super::predicate_holds("cancel", "normal"));
        assert!(!super::predicate_holds("cancel", "cancelled"));
        assert!(!super::predicate_holds("x:cancel", "cancel:x"));
    }

    /// The byte trim gives `str::trim`'s result, Unicode white space and multi-byte values included.
    #[test]
    fn trim_is_str_trim() {
        let pieces = [
            "", " ", "\t", "\r\n", "\u{0B}", "\u{0C}", "\u{A0}", "\u{85}", "\u{2003}", "\u{3000}", "a", "é", "日本",
            "x y",
        ];
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    let s = format!("{a}{b}{c}{a}");
                    assert_eq!(super::trim(&s), s.trim(), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn local_names() {
        assert_eq!(super::local_name(b"dtv:Total"), b"Total");
        assert_eq!(super::local_name(b"Total"), b"Total");
        assert_eq!(super::local_name(b"a:b:c"), b"b:c");
        assert_eq!(super::local_name("é:ü".as_bytes()), "ü".as_bytes());
    }

    #[test]
    fn attribute_names_given_twice_are_found_past_the_inline_ones() {
        let names: Vec<String> = (0..12).map(|i| format!("a{i}")).collect();
        let mut set = super::AttrNames::default();
        for n in &names {
            assert!(set.insert(n.as_bytes()));
        }
        assert!(!set.insert(b"a3"));
        assert!(!set.insert(b"a10"));
        assert!(set.insert(b"a12"));
    }

    #[test]
    fn index_suffix() {
        let mut s = String::from("a");
        super::push_index(&mut s, 2);
        super::push_index(&mut s, 1234);
        assert_eq!(s, "a[2][1234]");
    }
}
