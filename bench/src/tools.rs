//! What the mock answers when a request offers tools or asks for structured output: the trigger
//! that makes it call a tool, which offered tool it calls, and the JSON values it builds from a
//! JSON Schema (tool arguments, `response_format: json_schema` answers).

use serde_json::{Map, Value};

/// The text that, in the last user message, makes the mock call a tool (matched case-insensitively).
pub const TOOL_TRIGGER: &str = "use tool";
/// Deepest nesting of schemas followed when building a value; deeper parts become `null`.
pub const SCHEMA_DEPTH_MAX: usize = 16;
/// Most items put in an array whose schema has `minItems`.
pub const SCHEMA_ARRAY_ITEMS_MAX: u64 = 8;

/// Whether `text` holds the tool trigger.
pub fn has_trigger(text: &str) -> bool {
    text.to_ascii_lowercase().contains(TOOL_TRIGGER)
}

/// The tool to call among `names` (in the order offered): the first one named in `text` as a whole
/// word, else the first offered; `None` when none is offered.
pub fn pick_tool<'a>(names: &[&'a str], text: &str) -> Option<&'a str> {
    names
        .iter()
        .copied()
        .find(|name| !name.is_empty() && mentions(text, name))
        .or_else(|| names.first().copied())
}

/// `word` occurs in `text` not preceded or followed by an identifier character.
fn mentions(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// A value satisfying the simple parts of `schema`: `const`, `default` or the first `enum` value
/// when given; for an object, its `required` properties only, each built the same way; an
/// array gets `minItems` items (at most [`SCHEMA_ARRAY_ITEMS_MAX`]); a string is `text`; an integer
/// or number its `minimum`, else 1; a boolean `true`. `anyOf`/`oneOf`/`allOf` take their first
/// branch; a type list its first non-null type. Nothing is fetched (`$ref` is not followed: a
/// string).
pub fn instance_of(schema: &Value, text: &str) -> Value {
    build(schema, text, 0)
}

fn build(schema: &Value, text: &str, depth: usize) -> Value {
    if depth > SCHEMA_DEPTH_MAX {
        return Value::Null;
    }
    let Some(s) = schema.as_object() else {
        return Value::String(text.to_string());
    };
    for key in ["const", "default"] {
        if let Some(v) = s.get(key) {
            return v.clone();
        }
    }
    if let Some(first) = s
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = s.get(key).and_then(Value::as_array).and_then(|b| b.first()) {
            return build(first, text, depth + 1);
        }
    }
    let kind = match s.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if s.contains_key("properties") => "object",
        _ if s.contains_key("items") => "array",
        _ => "string",
    };
    match kind {
        "object" => {
            let props = s.get("properties").and_then(Value::as_object);
            let mut out = Map::new();
            for name in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                let prop = props.and_then(|p| p.get(name)).unwrap_or(&Value::Null);
                out.insert(name.to_string(), build(prop, text, depth + 1));
            }
            Value::Object(out)
        }
        "array" => {
            let n = s
                .get("minItems")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(SCHEMA_ARRAY_ITEMS_MAX);
            let items = s.get("items").unwrap_or(&Value::Null);
            Value::Array((0..n).map(|_| build(items, text, depth + 1)).collect())
        }
        "integer" => s
            .get("minimum")
            .and_then(Value::as_f64)
            .map_or(Value::from(1), |m| Value::from(m.ceil() as i64)),
        "number" => s.get("minimum").cloned().unwrap_or(Value::from(1)),
        "boolean" => Value::Bool(true),
        "null" => Value::Null,
        _ => Value::String(text.to_string()),
    }
}

/// `json` cut into `n` consecutive non-empty pieces (fewer when it is shorter), for streaming tool
/// arguments as several deltas; together they are exactly `json`.
pub fn fragments(json: &str, n: usize) -> Vec<&str> {
    let n = n.clamp(1, json.chars().count().max(1));
    crate::completion::split_even(json, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trigger_and_tool_choice() {
        assert!(has_trigger("please Use Tool now"));
        assert!(!has_trigger("use a tool"));
        let names = ["Agent", "Bash", "Read"];
        assert_eq!(pick_tool(&names, "use tool Bash: echo"), Some("Bash"));
        assert_eq!(pick_tool(&names, "use tool"), Some("Agent"));
        // a name inside a longer word is not a mention
        assert_eq!(pick_tool(&names, "use tool Bashful"), Some("Agent"));
        assert_eq!(pick_tool(&names, "use tool (Read)."), Some("Read"));
        assert_eq!(pick_tool(&[], "use tool"), None);
    }

    #[test]
    fn instances_follow_required_properties() {
        let schema = json!({
            "type": "object",
            "properties": {
                "command": {"type": "string"},
                "timeout": {"type": "number"},
                "mode": {"type": "string", "enum": ["fast", "slow"]},
                "n": {"type": "integer", "minimum": 3},
                "flags": {"type": "array", "items": {"type": "boolean"}, "minItems": 2},
                "opt": {"type": ["null", "object"], "properties": {"k": {"const": 7}}, "required": ["k"]},
                "pick": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                "untyped": {}
            },
            "required": ["command", "mode", "n", "flags", "opt", "pick", "untyped", "missing"]
        });
        let v = instance_of(&schema, "echo hi");
        assert_eq!(
            v,
            json!({"command": "echo hi", "mode": "fast", "n": 3, "flags": [true, true],
                   "opt": {"k": 7}, "pick": 1, "untyped": "echo hi", "missing": "echo hi"})
        );
        assert_eq!(instance_of(&json!({"type": "object"}), "x"), json!({}));
        assert_eq!(
            instance_of(&json!({"type": "array", "minItems": 1000}), "x")
                .as_array()
                .unwrap()
                .len(),
            SCHEMA_ARRAY_ITEMS_MAX as usize
        );
    }

    #[test]
    fn deep_schemas_stop_at_the_bound() {
        let mut schema = json!({"type": "string"});
        for _ in 0..100 {
            schema = json!({"type": "object", "properties": {"a": schema}, "required": ["a"]});
        }
        let mut v = &instance_of(&schema, "x");
        let mut depth = 0;
        while let Some(inner) = v.get("a") {
            v = inner;
            depth += 1;
        }
        assert_eq!(depth, SCHEMA_DEPTH_MAX + 1);
        assert_eq!(*v, Value::Null);
    }

    #[test]
    fn fragments_are_non_empty_and_whole() {
        let json = r#"{"command":"echo hi"}"#;
        let parts = fragments(json, 4);
        assert_eq!(parts.len(), 4);
        assert_eq!(parts.concat(), json);
        assert!(parts.iter().all(|p| !p.is_empty()));
        assert_eq!(fragments("{}", 16), vec!["{", "}"]);
        assert_eq!(fragments("", 3), vec![""]);
    }
}
