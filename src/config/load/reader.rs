//! The reader: a [`Section`] per table, which converts values, records every problem under
//! its dotted key and reports the keys nobody read as unknown.

use std::cell::RefCell;

use figment::Figment;
use figment::value::{Dict, Value};

use super::convert::{Convert, kind};
use super::env::env_var_name;
use super::{MISSING, Problem};

/// Keys documented in operations.md that belong to later versions: said so in the "unknown key"
/// message, so an operator who copied the documented file knows it is not a typo.
const NOT_YET: &[&str] = &[];

/// Owns the problem list shared by every [`Section`].
pub(super) struct Reader<'a> {
    pub(super) figment: &'a Figment,
    pub(super) problems: RefCell<Vec<Problem>>,
}

impl Reader<'_> {
    pub(super) fn problem(&self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.borrow_mut().push(Problem::new(key, message));
    }

    /// A problem with a value as written. Names the variable when the value came from the
    /// environment: operators look in the file first.
    pub(super) fn bad_value(&self, key: &str, value: &Value, message: &str) {
        let from_env = self
            .figment
            .get_metadata(value.tag())
            .is_some_and(|metadata| metadata.name.contains("environment variable"));
        if from_env && !key.contains('[') {
            self.problem(key, format!("{message} (from {})", env_var_name(key)));
        } else {
            self.problem(key, message);
        }
    }
}

/// A view of one table. Records which keys were read; the rest are reported as unknown when
/// it is dropped, so a section can't forget to check.
pub(super) struct Section<'a> {
    pub(super) reader: &'a Reader<'a>,
    pub(super) path: String,
    /// `None` when absent, or not a table (already reported).
    pub(super) dict: Option<&'a Dict>,
    pub(super) read: Vec<&'static str>,
}

impl<'a> Section<'a> {
    pub(super) fn key(&self, name: &str) -> String {
        let name = toml_key(name);
        if self.path.is_empty() {
            name
        } else {
            format!("{}.{name}", self.path)
        }
    }

    pub(super) fn take(&mut self, name: &'static str) -> Option<&'a Value> {
        self.read.push(name);
        self.dict?
            .get(name)
            .filter(|value| !matches!(value, Value::Empty(..)))
    }

    /// Is `name` set (to anything but empty)? Reads nothing: an optional table is then taken
    /// with [`Section::section`].
    pub(super) fn has(&self, name: &str) -> bool {
        self.dict
            .and_then(|d| d.get(name))
            .is_some_and(|value| !matches!(value, Value::Empty(..)))
    }

    pub(super) fn convert<T>(&self, name: &str, value: &Value, convert: Convert<T>) -> Option<T> {
        convert(value)
            .map_err(|message| self.reader.bad_value(&self.key(name), value, &message))
            .ok()
    }

    pub(super) fn opt<T>(&mut self, name: &'static str, convert: Convert<T>) -> Option<T> {
        let value = self.take(name)?;
        self.convert(name, value, convert)
    }

    /// The value, or `default` when absent or invalid (invalid is reported).
    pub(super) fn get<T>(&mut self, name: &'static str, default: T, convert: Convert<T>) -> T {
        self.opt(name, convert).unwrap_or(default)
    }

    pub(super) fn required<T>(&mut self, name: &'static str, convert: Convert<T>) -> Option<T> {
        match self.take(name) {
            Some(value) => self.convert(name, value, convert),
            None => {
                self.problem(name, MISSING);
                None
            }
        }
    }

    pub(super) fn problem(&self, name: &str, message: impl Into<String>) {
        self.reader.problem(self.key(name), message);
    }

    /// Reports `message` on `name` unless `ok`.
    pub(super) fn check(&self, name: &str, ok: bool, message: &str) {
        if !ok {
            self.problem(name, message);
        }
    }

    pub(super) fn section(&mut self, name: &'static str) -> Section<'a> {
        let path = self.key(name);
        let dict = match self.take(name) {
            None => None,
            Some(Value::Dict(_, dict)) => Some(dict),
            Some(other) => {
                let message = format!("expected a table, found {}", kind(other));
                self.reader.bad_value(&path, other, &message);
                None
            }
        };
        Section {
            reader: self.reader,
            path,
            dict,
            read: Vec::new(),
        }
    }

    /// An array of tables (`[[name]]`); entries that are not tables are reported and skipped.
    pub(super) fn tables(&mut self, name: &'static str) -> Vec<Section<'a>> {
        let path = self.key(name);
        let items = match self.take(name) {
            None => return Vec::new(),
            Some(Value::Array(_, items)) => items,
            Some(other) => {
                let message = format!(
                    "expected an array of tables ([[{name}]]), found {}",
                    kind(other)
                );
                self.reader.bad_value(&path, other, &message);
                return Vec::new();
            }
        };
        let mut sections = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let path = format!("{path}[{index}]");
            match item {
                Value::Dict(_, dict) => sections.push(Section {
                    reader: self.reader,
                    path,
                    dict: Some(dict),
                    read: Vec::new(),
                }),
                other => {
                    let message = format!("expected a table, found {}", kind(other));
                    self.reader.bad_value(&path, other, &message);
                }
            }
        }
        sections
    }

    /// A required, non-empty array; each element converted and reported under `name[i]`.
    pub(super) fn required_list<T>(&mut self, name: &'static str, convert: Convert<T>) -> Vec<T> {
        let key = self.key(name);
        let items = match self.take(name) {
            None => {
                self.reader.problem(key, MISSING);
                return Vec::new();
            }
            Some(Value::Array(_, items)) => items,
            Some(other) => {
                let message = format!("expected an array, found {}", kind(other));
                self.reader.bad_value(&key, other, &message);
                return Vec::new();
            }
        };
        if items.is_empty() {
            self.reader.problem(key.clone(), "must not be empty");
        }
        let mut converted = Vec::new();
        for (index, item) in items.iter().enumerate() {
            match convert(item) {
                Ok(value) => converted.push(value),
                Err(message) => self
                    .reader
                    .bad_value(&format!("{key}[{index}]"), item, &message),
            }
        }
        converted
    }
}

impl Drop for Section<'_> {
    fn drop(&mut self) {
        let Some(dict) = self.dict else { return };
        for (name, value) in dict {
            if self.read.contains(&name.as_str()) {
                continue;
            }
            let key = self.key(name);
            let message = if NOT_YET.contains(&without_indices(&key).as_str()) {
                "unknown key (not supported in this version)"
            } else {
                "unknown key"
            };
            self.reader.bad_value(&key, value, message);
        }
    }
}

/// A key as TOML writes it: bare when it can be, else quoted, so that an unknown key `""` is
/// not reported under an empty name, nor `"a.b"` as the nested `a.b`.
fn toml_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

/// `upstreams[3].retries` -> `upstreams.retries`.
fn without_indices(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut in_index = false;
    for c in key.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            _ if !in_index => out.push(c),
            _ => {}
        }
    }
    out
}
