//! JSON Schema (what OpenAI and Anthropic clients write for tool parameters and structured
//! answers) to the OpenAPI 3.0 subset Gemini's `Schema` accepts. Gemini refuses unknown
//! keywords with a 400, so only its own are kept:
//!
//! - kept: `type`, `format` (only Gemini's: `float`, `double`, `int32`, `int64`, `enum`,
//!   `date-time`), `title`, `description`, `nullable`, `enum` (strings only), `items`,
//!   `minItems`, `maxItems`, `properties`, `required` (only names that are properties),
//!   `minProperties`, `maxProperties`, `minLength`, `maxLength`, `pattern`, `minimum`,
//!   `maximum`, `default`, `example`, `anyOf`, `propertyOrdering`;
//! - rewritten: a type list (`["string","null"]`) becomes the type plus `nullable: true` (several
//!   non-null types: `anyOf`); `oneOf` becomes `anyOf`; a string `const` becomes a one-value
//!   `enum`; a local `$ref` (`#/$defs/...`, `#/definitions/...`) is replaced by what it points
//!   at (at most [`SCHEMA_DEPTH_MAX`] levels: deeper parts become `{"type":"object"}`); an
//!   `allOf` of one schema is that schema;
//! - dropped: everything else (`additionalProperties`, `$schema`, `$id`, `$defs`, `strict`,
//!   `examples`, `exclusiveMinimum`, `multipleOf`, `uniqueItems`, `not`, `if`/`then`/`else`, an
//!   `allOf` of several schemas, non-string `enum`/`const`, other `format`s, ...). An object's
//!   empty `properties` are left out (Gemini refuses an empty map).

use serde_json::{Map, Value};

/// Deepest nesting followed (through `$ref`s too); deeper schemas are cut.
pub const SCHEMA_DEPTH_MAX: usize = 32;

/// Keywords whose value is copied as it is.
const COPIED: [&str; 15] = [
    "title",
    "description",
    "nullable",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "default",
    "example",
    "propertyOrdering",
];

/// The `format`s Gemini accepts.
const FORMATS: [&str; 6] = ["float", "double", "int32", "int64", "enum", "date-time"];

/// `schema` (JSON text) for Gemini, or `None` when it is not JSON.
pub fn to_gemini_schema(schema: &str) -> Option<Value> {
    let root: Value = serde_json::from_str(schema).ok()?;
    Some(convert(&root, &root, 0))
}

fn convert(s: &Value, root: &Value, depth: usize) -> Value {
    if depth > SCHEMA_DEPTH_MAX {
        return cut();
    }
    let Some(obj) = s.as_object() else {
        // `true` / `false` schemas and anything else: no constraint Gemini can express.
        return Value::Object(Map::new());
    };
    if let Some(target) = obj.get("$ref").and_then(Value::as_str) {
        return match resolve(target, root) {
            Some(t) => convert(t, root, depth + 1),
            None => cut(),
        };
    }
    if let Some([only]) = obj
        .get("allOf")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        return convert(only, root, depth + 1);
    }
    let mut out = Map::new();
    for key in COPIED {
        if let Some(v) = obj.get(key) {
            out.insert(key.to_owned(), v.clone());
        }
    }
    match obj.get("type") {
        Some(Value::String(t)) => {
            out.insert("type".into(), Value::String(t.clone()));
        }
        Some(Value::Array(types)) => {
            let named: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
            let real: Vec<&str> = named.iter().copied().filter(|t| *t != "null").collect();
            if real.len() < named.len() {
                out.insert("nullable".into(), Value::Bool(true));
            }
            match real.as_slice() {
                [] => {}
                [one] => {
                    out.insert("type".into(), Value::String((*one).to_owned()));
                }
                several => {
                    let branches = several
                        .iter()
                        .map(|t| {
                            let mut b = Map::new();
                            b.insert("type".into(), Value::String((*t).to_owned()));
                            Value::Object(b)
                        })
                        .collect();
                    out.insert("anyOf".into(), Value::Array(branches));
                }
            }
        }
        _ => {}
    }
    if let Some(f) = obj.get("format").and_then(Value::as_str) {
        if FORMATS.contains(&f) {
            out.insert("format".into(), Value::String(f.to_owned()));
        }
    }
    let strings = |v: &Vec<Value>| v.iter().all(Value::is_string);
    if let Some(e) = obj
        .get("enum")
        .and_then(Value::as_array)
        .filter(|e| strings(e))
    {
        out.insert("enum".into(), Value::Array(e.clone()));
    } else if let Some(c) = obj.get("const").filter(|c| c.is_string()) {
        out.insert("enum".into(), Value::Array(vec![c.clone()]));
        out.entry("type")
            .or_insert_with(|| Value::String("string".into()));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        if !props.is_empty() {
            let converted: Map<String, Value> = props
                .iter()
                .map(|(k, v)| (k.clone(), convert(v, root, depth + 1)))
                .collect();
            if let Some(req) = obj.get("required").and_then(Value::as_array) {
                let known: Vec<Value> = req
                    .iter()
                    .filter(|r| r.as_str().is_some_and(|n| converted.contains_key(n)))
                    .cloned()
                    .collect();
                if !known.is_empty() {
                    out.insert("required".into(), Value::Array(known));
                }
            }
            out.insert("properties".into(), Value::Object(converted));
        }
    }
    if let Some(items) = obj.get("items") {
        out.insert("items".into(), convert(items, root, depth + 1));
    }
    let branches = obj
        .get("anyOf")
        .or_else(|| obj.get("oneOf"))
        .and_then(Value::as_array);
    if let Some(branches) = branches {
        let converted = branches
            .iter()
            .map(|b| convert(b, root, depth + 1))
            .collect();
        out.insert("anyOf".into(), Value::Array(converted));
    }
    Value::Object(out)
}

/// What a local `$ref` points at: `#/$defs/<name>` or `#/definitions/<name>` (a JSON pointer
/// into the root).
fn resolve<'a>(target: &str, root: &'a Value) -> Option<&'a Value> {
    let pointer = target.strip_prefix('#')?;
    root.pointer(pointer)
}

/// What a schema cut at the depth bound becomes.
fn cut() -> Value {
    let mut m = Map::new();
    m.insert("type".into(), Value::String("object".into()));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conv(v: Value) -> Value {
        to_gemini_schema(&v.to_string()).unwrap()
    }

    #[test]
    fn strips_what_gemini_refuses() {
        let got = conv(json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "additionalProperties": false,
            "strict": true,
            "properties": {
                "city": {"type": "string", "description": "City", "format": "uri"},
                "days": {"type": "integer", "minimum": 1, "exclusiveMaximum": 10, "format": "int32"},
                "unit": {"type": ["string", "null"], "enum": ["c", "f"]},
                "level": {"enum": [1, 2]},
                "kind": {"const": "x"},
                "any": {"type": ["string", "integer"]}
            },
            "required": ["city", "ghost"]
        }));
        assert_eq!(
            got,
            json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City"},
                    "days": {"type": "integer", "minimum": 1, "format": "int32"},
                    "unit": {"type": "string", "nullable": true, "enum": ["c", "f"]},
                    "level": {},
                    "kind": {"type": "string", "enum": ["x"]},
                    "any": {"anyOf": [{"type": "string"}, {"type": "integer"}]}
                },
                "required": ["city"]
            })
        );
    }

    #[test]
    fn local_refs_are_inlined_and_bounded() {
        let got = conv(json!({
            "$defs": {"Step": {"type": "object", "properties": {"n": {"type": "integer"}}}},
            "type": "object",
            "properties": {"steps": {"type": "array", "items": {"$ref": "#/$defs/Step"}}},
            "oneOf": [{"required": ["steps"]}],
        }));
        assert_eq!(
            got["properties"]["steps"]["items"],
            json!({"type": "object", "properties": {"n": {"type": "integer"}}})
        );
        assert_eq!(got["anyOf"], json!([{}]));
        // A schema that refers to itself stops at the bound.
        let got = conv(
            json!({"$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}},
                             "$ref": "#/$defs/N"}),
        );
        let mut v = &got;
        let mut depth = 0;
        while let Some(next) = v.pointer("/properties/next") {
            v = next;
            depth += 1;
        }
        assert!(depth > 10 && depth <= SCHEMA_DEPTH_MAX, "{depth}");
        assert_eq!(*v, json!({"type": "object"}));
        assert_eq!(
            conv(json!({"type": "object", "properties": {}})),
            json!({"type": "object"})
        );
        assert!(to_gemini_schema("{").is_none());
    }
}
