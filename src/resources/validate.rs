//! The rules of the CRDs, enforced by the operator itself: pure functions of a spec.
//!
//! The API server enforces what it can when an object is written (schema, patterns, and CEL rules
//! on servers that run them); these functions check the same and more (semantic versions, ranges,
//! config schemas), so that a cluster without CEL, or an object written before a rule existed,
//! still gets a clear error that names the field.

use std::fmt;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::plugin::{ConnectionMode, PluginSpec};
use super::plugin_install::{PluginInstallSpec, PluginReference};
use super::plugin_version::{ExecutionType, PluginVersionSpec};
use super::version_range::VersionSelector;

/// One problem in a spec: the field (a path such as `spec.connection.endpoint`) and what is
/// wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

/// All errors as one line, `; `-separated (for a condition message).
pub fn join_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn done(errors: Vec<FieldError>) -> Result<(), Vec<FieldError>> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Whether `name` is a valid Kubernetes object name (DNS subdomain, at most 253 characters).
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn check_name(errors: &mut Vec<FieldError>, field: &str, name: &str) {
    if name.is_empty() {
        errors.push(FieldError::new(field, "required"));
    } else if !is_dns_subdomain(name) {
        errors.push(FieldError::new(
            field,
            format!("{name:?} is not a valid object name (lowercase letters, digits, '-' and '.')"),
        ));
    }
}

fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    rest.is_some_and(|rest| {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        !host.is_empty() && !url.chars().any(char::is_whitespace)
    })
}

/// Checks a Plugin's spec.
pub fn validate_plugin(spec: &PluginSpec) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let endpoint = spec
        .connection
        .endpoint
        .as_deref()
        .filter(|e| !e.is_empty());
    match (spec.connection.mode, endpoint) {
        (ConnectionMode::External, None) => errors.push(FieldError::new(
            "spec.connection.endpoint",
            "required when connection.mode is external",
        )),
        (_, Some(endpoint)) if !is_http_url(endpoint) => errors.push(FieldError::new(
            "spec.connection.endpoint",
            format!("{endpoint:?} is not an http:// or https:// URL"),
        )),
        _ => {}
    }
    done(errors)
}

/// Checks a PluginVersion's spec on its own (that its Plugin exists and its number is unique
/// needs the other objects). `accepted_spec_hash` is `status.acceptedSpecHash`: once a formal
/// version was accepted, its spec must keep that hash.
pub fn validate_version(
    spec: &PluginVersionSpec,
    accepted_spec_hash: Option<&str>,
) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    check_name(&mut errors, "spec.plugin", &spec.plugin);
    if let Err(err) = semver::Version::parse(&spec.version) {
        errors.push(FieldError::new(
            "spec.version",
            format!(
                "{:?} is not a semantic version MAJOR.MINOR.PATCH such as 1.4.0: {err}",
                spec.version
            ),
        ));
    }
    if let Some(execution) = &spec.execution {
        let image = execution.image.as_deref().filter(|i| !i.trim().is_empty());
        if execution.execution_type == ExecutionType::Container && image.is_none() {
            errors.push(FieldError::new(
                "spec.execution.image",
                "required when execution.type is Container",
            ));
        }
        if !(1..=65535).contains(&execution.port) {
            errors.push(FieldError::new(
                "spec.execution.port",
                format!("{} is not a port number (1-65535)", execution.port),
            ));
        }
        if let Some(path) = &execution.health_path
            && !path.starts_with('/')
        {
            errors.push(FieldError::new(
                "spec.execution.healthPath",
                format!("{path:?} must start with '/'"),
            ));
        }
    }
    if let Some(schema) = &spec.config_schema
        && let Err(err) = compile_config_schema(schema)
    {
        errors.push(err);
    }
    if let Some(accepted) = accepted_spec_hash
        && spec_hash(spec) != accepted
    {
        errors.push(FieldError::new(
            "spec",
            "the spec of a formal PluginVersion is immutable and changed after it was accepted: \
             restore it, or create a new PluginVersion",
        ));
    }
    done(errors)
}

/// Checks a PluginInstall's spec on its own (whether the plugin and a matching version exist,
/// and whether the config satisfies the version's schema, needs the other objects).
pub fn validate_install(spec: &PluginInstallSpec) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    match &spec.plugin {
        PluginReference::Name(name) => check_name(&mut errors, "spec.plugin", name),
        PluginReference::Ref(r) => {
            check_name(&mut errors, "spec.plugin.name", &r.name);
            if let Some(ns) = r.namespace.as_deref().filter(|ns| !ns.is_empty())
                && !(is_dns_subdomain(ns) && !ns.contains('.') && ns.len() <= 63)
            {
                errors.push(FieldError::new(
                    "spec.plugin.namespace",
                    format!("{ns:?} is not a valid namespace name"),
                ));
            }
        }
        PluginReference::Invalid(value) => errors.push(FieldError::new(
            "spec.plugin",
            format!("must be the name of a Plugin or {{name, namespace}}, not {value}"),
        )),
    }
    if let Err(err) = VersionSelector::parse(&spec.version) {
        errors.push(FieldError::new("spec.version", err));
    }
    if let Some(approved) = &spec.approved_version
        && let Err(err) = semver::Version::parse(approved)
    {
        errors.push(FieldError::new(
            "spec.approvedVersion",
            format!("{approved:?} is not a semantic version MAJOR.MINOR.PATCH: {err}"),
        ));
    }
    if spec.replicas < 0 {
        errors.push(FieldError::new("spec.replicas", "must be 0 or more"));
    }
    if spec.progress_deadline_seconds < 1 {
        errors.push(FieldError::new(
            "spec.progressDeadlineSeconds",
            "must be 1 or more",
        ));
    }
    if let Some(config) = &spec.config
        && !config.is_object()
    {
        errors.push(FieldError::new("spec.config", "must be an object"));
    }
    for (i, source) in spec.config_from.iter().enumerate() {
        check_name(
            &mut errors,
            &format!("spec.configFrom[{i}].name"),
            &source.name,
        );
    }
    done(errors)
}

/// Fingerprint of a PluginVersion spec: hex SHA-256 of its JSON with object keys sorted. Equal
/// specs have equal hashes whatever the key order they were written in.
pub fn spec_hash(spec: &PluginVersionSpec) -> String {
    // A spec of strings, numbers, string-keyed maps and JSON values always serializes; the
    // fallback never hashes.
    let value = serde_json::to_value(spec).unwrap_or(Value::Null);
    let mut canonical = String::new();
    write_canonical(&value, &mut canonical);
    let digest = Sha256::digest(canonical.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Compiles a version's `configSchema`. The error names `spec.configSchema`.
pub fn compile_config_schema(schema: &Value) -> Result<jsonschema::Validator, FieldError> {
    jsonschema::validator_for(schema).map_err(|err| {
        let at = err.instance_path().as_str();
        let field = if at.is_empty() {
            "spec.configSchema".to_owned()
        } else {
            format!("spec.configSchema{}", pointer_to_path(at))
        };
        FieldError::new(field, format!("not a valid JSON Schema: {err}"))
    })
}

/// Checks an install's config (with its defaults applied) against a compiled configSchema. Each
/// error names the field under `spec.config`; values are not repeated in messages, since config
/// may hold values from Secrets.
pub fn validate_config(
    schema: &jsonschema::Validator,
    config: &Value,
) -> Result<(), Vec<FieldError>> {
    let errors = schema
        .iter_errors(config)
        .map(|err| {
            let field = format!(
                "spec.config{}",
                pointer_to_path(err.instance_path().as_str())
            );
            FieldError::new(field, err.masked().to_string())
        })
        .collect();
    done(errors)
}

/// Fills in the `default`s that `schema` declares for properties missing from `config`, at
/// every level of nested objects (seed 004: an input item's default value).
pub fn apply_config_defaults(schema: &Value, config: &mut Value) {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    let Some(object) = config.as_object_mut() else {
        return;
    };
    for (name, property) in properties {
        if !object.contains_key(name)
            && let Some(default) = property.get("default")
        {
            object.insert(name.clone(), default.clone());
        }
        if let Some(child) = object.get_mut(name) {
            apply_config_defaults(property, child);
        }
    }
}

/// `/a/0/b~1c` → `.a[0].b/c`.
fn pointer_to_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            path.push_str(&format!("[{segment}]"));
        } else {
            path.push('.');
            path.push_str(&segment);
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::plugin::{PluginAttribution, PluginConnection};
    use crate::resources::plugin_install::{ConfigFromSecret, PluginRef};
    use crate::resources::plugin_version::{Execution, VersionAttribution};
    use serde_json::json;

    fn fields(result: Result<(), Vec<FieldError>>) -> Vec<String> {
        result
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    fn messages(result: Result<(), Vec<FieldError>>) -> Vec<String> {
        result
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn version() -> PluginVersionSpec {
        PluginVersionSpec {
            plugin: "billing".into(),
            version: "1.4.0".into(),
            execution: Some(Execution {
                image: Some("billing:1.4.0".into()),
                ..Execution::default()
            }),
            config_schema: Some(json!({
                "type": "object",
                "required": ["url"],
                "properties": {
                    "url": {"type": "string", "pattern": "^https://"},
                    "retries": {"type": "integer", "default": 3, "minimum": 0},
                    "tls": {"type": "object", "properties": {"verify": {"type": "boolean", "default": true}}}
                }
            })),
            ..PluginVersionSpec::default()
        }
    }

    #[test]
    fn a_supervised_plugin_needs_nothing() {
        assert_eq!(validate_plugin(&PluginSpec::default()), Ok(()));
    }

    #[test]
    fn an_external_plugin_needs_an_endpoint() {
        let mut spec = PluginSpec {
            connection: PluginConnection {
                mode: ConnectionMode::External,
                endpoint: None,
            },
            ..PluginSpec::default()
        };
        assert_eq!(
            messages(validate_plugin(&spec)),
            ["spec.connection.endpoint: required when connection.mode is external"]
        );
        spec.connection.endpoint = Some(String::new());
        assert_eq!(fields(validate_plugin(&spec)), ["spec.connection.endpoint"]);
        spec.connection.endpoint = Some("https://plugins.example.com/billing".into());
        assert_eq!(validate_plugin(&spec), Ok(()));
    }

    #[test]
    fn an_endpoint_must_be_an_http_url() {
        for bad in ["plugins.example.com", "ftp://x", "http://", "https://a b"] {
            let spec = PluginSpec {
                attribution: PluginAttribution::Official,
                connection: PluginConnection {
                    mode: ConnectionMode::External,
                    endpoint: Some(bad.into()),
                },
                ..PluginSpec::default()
            };
            assert_eq!(
                fields(validate_plugin(&spec)),
                ["spec.connection.endpoint"],
                "{bad}"
            );
        }
    }

    #[test]
    fn a_good_version_passes() {
        assert_eq!(validate_version(&version(), None), Ok(()));
        let external = PluginVersionSpec {
            execution: None,
            config_schema: None,
            ..version()
        };
        assert_eq!(validate_version(&external, None), Ok(()));
    }

    #[test]
    fn version_plugin_name_and_number() {
        let spec = PluginVersionSpec {
            plugin: String::new(),
            version: "1.4".into(),
            ..version()
        };
        assert_eq!(
            fields(validate_version(&spec, None)),
            ["spec.plugin", "spec.version"]
        );
        let spec = PluginVersionSpec {
            plugin: "Billing_X".into(),
            ..version()
        };
        assert_eq!(fields(validate_version(&spec, None)), ["spec.plugin"]);
        let spec = PluginVersionSpec {
            version: "1.4.0-rc.1+b7".into(),
            ..version()
        };
        assert_eq!(validate_version(&spec, None), Ok(()));
    }

    #[test]
    fn version_execution() {
        let mut spec = version();
        let execution = spec.execution.as_mut().expect("execution");
        execution.image = None;
        execution.port = 0;
        execution.health_path = Some("healthz".into());
        assert_eq!(
            messages(validate_version(&spec, None)),
            [
                "spec.execution.image: required when execution.type is Container",
                "spec.execution.port: 0 is not a port number (1-65535)",
                "spec.execution.healthPath: \"healthz\" must start with '/'",
            ]
        );
        let shell = Execution {
            execution_type: ExecutionType::Shell,
            ..Execution::default()
        };
        let spec = PluginVersionSpec {
            execution: Some(shell),
            ..version()
        };
        assert_eq!(
            validate_version(&spec, None),
            Ok(()),
            "only a Container needs an image"
        );
    }

    #[test]
    fn version_config_schema_must_compile() {
        let spec = PluginVersionSpec {
            config_schema: Some(
                json!({"type": "object", "properties": {"n": {"type": "no-such-type"}}}),
            ),
            ..version()
        };
        let errors = validate_version(&spec, None).expect_err("invalid schema");
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].field.starts_with("spec.configSchema"),
            "{}",
            errors[0]
        );
        assert!(
            errors[0].message.starts_with("not a valid JSON Schema"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn a_formal_version_keeps_its_accepted_spec() {
        let accepted = version();
        let hash = spec_hash(&accepted);
        assert_eq!(validate_version(&accepted, Some(&hash)), Ok(()));
        let mut edited = accepted.clone();
        edited.description = Some("edited".into());
        let errors = validate_version(&edited, Some(&hash)).expect_err("edited");
        assert_eq!(errors[0].field, "spec");
        assert!(errors[0].message.contains("immutable"));
        let demoted = PluginVersionSpec {
            attribution: VersionAttribution::Draft,
            ..accepted
        };
        assert!(
            validate_version(&demoted, Some(&hash)).is_err(),
            "a formal version stays formal"
        );
    }

    #[test]
    fn spec_hash_is_stable_and_ignores_key_order() {
        let a = version();
        let mut b = version();
        b.config_schema = Some(json!({
            "properties": {
                "tls": {"properties": {"verify": {"default": true, "type": "boolean"}}, "type": "object"},
                "retries": {"minimum": 0, "default": 3, "type": "integer"},
                "url": {"pattern": "^https://", "type": "string"}
            },
            "required": ["url"],
            "type": "object"
        }));
        assert_eq!(spec_hash(&a), spec_hash(&b));
        assert_eq!(spec_hash(&a).len(), 64);
        let parsed: PluginVersionSpec =
            serde_json::from_value(serde_json::to_value(&a).expect("serializes")).expect("parses");
        assert_eq!(
            spec_hash(&a),
            spec_hash(&parsed),
            "a round trip keeps the hash"
        );
        let mut c = version();
        c.version = "1.4.1".into();
        assert_ne!(spec_hash(&a), spec_hash(&c));
    }

    #[test]
    fn spec_hash_of_a_known_spec() {
        // Changing this hash breaks every accepted formal version in existing clusters.
        let spec = PluginVersionSpec {
            plugin: "p".into(),
            version: "1.0.0".into(),
            ..PluginVersionSpec::default()
        };
        let mut canonical = String::new();
        write_canonical(
            &serde_json::to_value(&spec).expect("serializes"),
            &mut canonical,
        );
        assert_eq!(
            canonical,
            r#"{"attribution":"formal","composition":"single","plugin":"p","version":"1.0.0"}"#
        );
        let digest = Sha256::digest(canonical.as_bytes());
        let expected: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(spec_hash(&spec), expected);
    }

    #[test]
    fn a_default_install_passes() {
        assert_eq!(
            validate_install(&PluginInstallSpec::for_plugin("billing")),
            Ok(())
        );
        let spec = PluginInstallSpec {
            version: ">=1.2 <2".into(),
            approved_version: Some("1.4.0".into()),
            config: Some(json!({"url": "https://x"})),
            config_from: vec![ConfigFromSecret {
                name: "billing-secrets".into(),
                ..Default::default()
            }],
            replicas: 0,
            ..PluginInstallSpec::for_plugin(PluginRef {
                name: "billing".into(),
                namespace: Some("plugin-catalog".into()),
            })
        };
        assert_eq!(validate_install(&spec), Ok(()));
    }

    #[test]
    fn install_errors_name_their_fields() {
        let spec = PluginInstallSpec {
            version: "latest".into(),
            approved_version: Some("1.4".into()),
            config: Some(json!(["not", "an", "object"])),
            config_from: vec![ConfigFromSecret::default()],
            replicas: -1,
            progress_deadline_seconds: 0,
            ..PluginInstallSpec::for_plugin("")
        };
        assert_eq!(
            fields(validate_install(&spec)),
            [
                "spec.plugin",
                "spec.version",
                "spec.approvedVersion",
                "spec.replicas",
                "spec.progressDeadlineSeconds",
                "spec.config",
                "spec.configFrom[0].name",
            ]
        );
        let spec = PluginInstallSpec::for_plugin(PluginRef {
            name: String::new(),
            namespace: Some("Not.A.Namespace".into()),
        });
        assert_eq!(
            fields(validate_install(&spec)),
            ["spec.plugin.name", "spec.plugin.namespace"]
        );
    }

    #[test]
    fn config_is_checked_against_the_schema_with_field_paths() {
        let spec = version();
        let schema = spec.config_schema.as_ref().expect("schema");
        let validator = compile_config_schema(schema).expect("compiles");
        assert_eq!(
            validate_config(&validator, &json!({"url": "https://billing"})),
            Ok(())
        );
        let errors = validate_config(
            &validator,
            &json!({"url": "http://secret-value", "retries": -1, "tls": {"verify": "yes"}}),
        )
        .expect_err("invalid");
        let mut found: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        found.sort();
        assert_eq!(
            found,
            [
                "spec.config.retries",
                "spec.config.tls.verify",
                "spec.config.url"
            ]
        );
        assert!(
            errors.iter().all(|e| !e.message.contains("secret-value")),
            "values are not echoed: {errors:?}"
        );
        let missing = validate_config(&validator, &json!({})).expect_err("url is required");
        assert_eq!(missing[0].field, "spec.config");
        assert!(missing[0].message.contains("url"), "{}", missing[0]);
    }

    #[test]
    fn config_defaults_fill_in_missing_values_only() {
        let spec = version();
        let schema = spec.config_schema.as_ref().expect("schema");
        let mut config = json!({"url": "https://x", "tls": {}});
        apply_config_defaults(schema, &mut config);
        assert_eq!(
            config,
            json!({"url": "https://x", "retries": 3, "tls": {"verify": true}})
        );
        let mut config = json!({"retries": 0, "tls": {"verify": false}});
        apply_config_defaults(schema, &mut config);
        assert_eq!(config, json!({"retries": 0, "tls": {"verify": false}}));
    }

    #[test]
    fn pointers_become_field_paths() {
        assert_eq!(pointer_to_path(""), "");
        assert_eq!(pointer_to_path("/a/0/b~1c/d~0e"), ".a[0].b/c.d~e");
    }

    #[test]
    fn dns_names() {
        for good in ["a", "billing", "plugin-catalog", "a.b-c.d", "0x"] {
            assert!(is_dns_subdomain(good), "{good}");
        }
        for bad in ["", "A", "-a", "a-", "a..b", "a_b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
