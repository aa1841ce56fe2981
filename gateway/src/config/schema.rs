//! The configuration file's JSON Schema (draft-07), derived from the types
//! serde reads it into, so it cannot say other than the parser: `routemesh
//! config-schema` prints it (for editors and CI checks of config files), and
//! the Helm chart's `values.schema.json` embeds its definitions (a test here
//! fails when the two drift).
//!
//! What serde cannot see stays the parser's: cross-field rules and ranges
//! (`Config::validate`) are checked by `routemesh check-config`, which the
//! chart's init container runs on every rendered configuration.

use schemars::generate::SchemaSettings;

use super::Config;

/// The whole configuration file's schema: `definitions` holds one entry per
/// section type (`GatewayConfig`, `WorkerConfig`, ...).
pub fn config_schema() -> serde_json::Value {
    let generator = SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<Config>();
    schema.insert("title".into(), "routemesh configuration file".into());
    let mut value = schema.to_value();
    plain_enums(&mut value);
    value
}

/// Rewrites the `oneOf` of documented string constants that schemars makes
/// for an enum into a plain `enum`, the variants' docs appended to the
/// description: a validator then says "value must be one of 'utility',
/// 'least-loaded'" instead of one failure per variant.
fn plain_enums(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let variants = match map.get("oneOf") {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| {
                        let only_const = item.as_object().is_some_and(|o| {
                            o.keys()
                                .all(|k| ["const", "description", "type"].contains(&k.as_str()))
                        });
                        match (only_const, item.get("const")) {
                            (true, Some(Value::String(name))) => Some((
                                name.clone(),
                                item.get("description")
                                    .and_then(Value::as_str)
                                    .map(str::to_owned),
                            )),
                            _ => None,
                        }
                    })
                    .collect::<Option<Vec<_>>>(),
                _ => None,
            };
            if let Some(variants) = variants {
                map.remove("oneOf");
                let mut description = map
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                for (name, doc) in variants.iter().filter_map(|(n, d)| Some((n, d.as_ref()?))) {
                    if !description.is_empty() {
                        description.push('\n');
                    }
                    description.push_str(&format!("- `{name}`: {doc}"));
                }
                if !description.is_empty() {
                    map.insert("description".into(), description.into());
                }
                map.insert("type".into(), "string".into());
                map.insert(
                    "enum".into(),
                    variants
                        .into_iter()
                        .map(|(n, _)| Value::String(n))
                        .collect(),
                );
            }
            map.values_mut().for_each(plain_enums);
        }
        Value::Array(items) => items.iter_mut().for_each(plain_enums),
        _ => {}
    }
}

/// The definitions a document embedding the schema needs, the root as
/// `Config`: what the Helm chart's `values.schema.json` holds beside its own
/// (lower-case) definitions.
pub fn embedded_definitions() -> serde_json::Map<String, serde_json::Value> {
    let mut root = match config_schema() {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    let mut definitions = match root.remove("definitions") {
        Some(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    root.remove("$schema");
    definitions.insert("Config".into(), serde_json::Value::Object(root));
    definitions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart_schema() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/helm/routemesh/values.schema.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The chart accepts exactly the configuration the binary reads: its
    /// schema embeds these types' definitions, unchanged. Generated type
    /// definitions start with a capital; the chart's own are lower-case.
    #[test]
    fn the_chart_schema_embeds_the_config_types() {
        let chart = chart_schema();
        let in_chart = chart["definitions"].as_object().unwrap();
        let generated = embedded_definitions();
        let stale: Vec<&String> = in_chart
            .keys()
            .filter(|k| k.starts_with(char::is_uppercase) && !generated.contains_key(*k))
            .collect();
        let drifted: Vec<&String> = generated
            .iter()
            .filter(|(name, schema)| in_chart.get(*name) != Some(schema))
            .map(|(name, _)| name)
            .collect();
        assert!(
            stale.is_empty() && drifted.is_empty(),
            "deploy/helm/routemesh/values.schema.json is out of date with the config types \
             (differs: {drifted:?}; no longer generated: {stale:?}): run \
             `cargo build --bin routemesh && scripts/update-chart-schema.py` and commit the result"
        );
    }

    /// Durations are humantime strings, unknown keys are refused, and the
    /// chart-facing sections are where the chart's templates look.
    #[test]
    fn the_schema_says_what_the_parser_reads() {
        let defs = embedded_definitions();
        let gateway = &defs["GatewayConfig"];
        assert_eq!(gateway["additionalProperties"], false);
        assert_eq!(gateway["properties"]["request_timeout"]["type"], "string");
        assert_eq!(gateway["properties"]["request_timeout"]["default"], "2m");
        assert_eq!(
            gateway["properties"]["request_timeout"]["pattern"],
            routemesh_mesh::config_schema::DURATION_PATTERN
        );
        let sim = &defs["SimConfig"];
        assert_eq!(
            sim["properties"]["stall_for"]["type"],
            serde_json::json!(["string", "null"])
        );
        let worker = &defs["WorkerConfig"];
        let required: Vec<&str> = worker["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(required, ["model", "tier", "backend"]);
        for name in ["Config", "RedisRegistryConfig", "RedisTls", "TracingConfig"] {
            assert_eq!(defs[name]["additionalProperties"], false, "{name}");
        }
        // Enums are plain, their variants' docs kept in the description.
        let policy = &defs["PolicyKind"];
        assert_eq!(
            policy["enum"],
            serde_json::json!(["utility", "least-loaded"])
        );
        assert!(policy.get("oneOf").is_none());
        assert!(
            policy["description"]
                .as_str()
                .unwrap()
                .contains("- `least-loaded`: The least loaded"),
            "{policy}"
        );
    }
}
