//! Reading Meta's JSON tolerantly, with the path of every value, so that a problem
//! names exactly what is wrong (`entry[0].changes[1].value.messages[2].id`).
//!
//! Meta's type quirks are absorbed here: timestamps and ids may be strings or
//! integers; `null` counts as absent.

use serde_json::{Map, Value};
use wabridge_events::Timestamp;

/// What is wrong with one part of a body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Problem(pub String);

/// A JSON object with its path in the body.
#[derive(Clone)]
pub struct Node<'a> {
    /// Path from the body root, e.g. `entry[0].changes[1].value`.
    pub path: String,
    /// The object.
    pub map: &'a Map<String, Value>,
}

impl<'a> Node<'a> {
    /// The object at `path`; anything else is a problem naming the path.
    pub fn new(value: &'a Value, path: String) -> Result<Self, Problem> {
        match value.as_object() {
            Some(map) => Ok(Node { path, map }),
            None => Err(Problem(format!("`{}` is not an object", shown(&path)))),
        }
    }

    /// The member `key`, treating `null` as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// The path of a member.
    pub fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The problem of a required member that is absent or of the wrong type.
    pub fn missing(&self, key: &str, what: &str) -> Problem {
        Problem(format!(
            "`{}` is missing or not {what}",
            join(&self.path, key)
        ))
    }

    /// A required string (integers are accepted and rendered as text).
    pub fn req_text(&self, key: &str) -> Result<String, Problem> {
        self.opt_text(key)
            .ok_or_else(|| self.missing(key, "a string"))
    }

    /// An optional non-empty string (integers are accepted and rendered as text).
    pub fn opt_text(&self, key: &str) -> Option<String> {
        self.get(key).and_then(text).filter(|s| !s.is_empty())
    }

    /// A required integer (a string of digits is accepted).
    pub fn req_int(&self, key: &str) -> Result<i64, Problem> {
        self.get(key)
            .and_then(integer)
            .ok_or_else(|| self.missing(key, "an integer"))
    }

    /// A required Unix-seconds time (string or integer).
    pub fn req_time(&self, key: &str) -> Result<Timestamp, Problem> {
        self.opt_time(key)?
            .ok_or_else(|| self.missing(key, "Unix seconds"))
    }

    /// An optional Unix-seconds time (string or integer); present but invalid is a problem.
    pub fn opt_time(&self, key: &str) -> Result<Option<Timestamp>, Problem> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => integer(v)
                .and_then(Timestamp::from_unix_seconds)
                .map(Some)
                .ok_or_else(|| self.missing(key, "Unix seconds")),
        }
    }

    /// An optional sub-object; absent or not an object gives `None`.
    pub fn sub(&self, key: &str) -> Option<Node<'a>> {
        let map = self.get(key)?.as_object()?;
        Some(Node {
            path: join(&self.path, key),
            map,
        })
    }

    /// The elements of an optional array (absent is empty), each with its path;
    /// an element that is not an object is a problem of its own.
    pub fn list(&self, key: &str) -> Result<Vec<Result<Node<'a>, Problem>>, Problem> {
        let elements = match self.get(key) {
            None => return Ok(Vec::new()),
            Some(Value::Array(elements)) => elements,
            Some(_) => return Err(self.missing(key, "an array")),
        };
        let path = join(&self.path, key);
        Ok(elements
            .iter()
            .enumerate()
            .map(|(i, element)| Node::new(element, format!("{path}[{i}]")))
            .collect())
    }

    /// The object as an owned JSON value.
    pub fn to_value(&self) -> Value {
        Value::Object(self.map.clone())
    }

    /// The object as JSON text (no copy of its tree).
    pub fn to_raw(&self) -> wabridge_events::types::RawJson {
        wabridge_events::types::RawJson::object(self.map)
    }
}

fn shown(path: &str) -> &str {
    if path.is_empty() {
        "the body"
    } else {
        path
    }
}

/// `path.key`, or `key` at the root.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A string, or an integer rendered as text.
pub fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// An integer, or a string holding one.
pub fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Whether `value` is an array with at least one element.
pub fn non_empty_array(value: Option<&Value>) -> bool {
    value
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}
