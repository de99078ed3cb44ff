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
/// An install's name names its children: its Service (a DNS-1035 label: at most 63 lowercase
/// letters, digits and `-`, starting with a letter, ending with a letter or digit) and the
/// `plugin-operator.dev/install` label on each of them (at most 63 characters). The API server
/// takes longer names and dots for the install itself, so the rule is checked here.
pub fn validate_install_name(name: &str) -> Result<(), FieldError> {
    let starts = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    let ends = name
        .chars()
        .last()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if name.len() <= 63 && starts && ends && chars {
        return Ok(());
    }
    Err(FieldError::new(
        "metadata.name",
        format!(
            "{name:?} cannot name the install's Service and labels: use at most 63 lowercase \
             letters, digits and '-', starting with a letter and ending with a letter or digit \
             (a DNS-1035 label)"
        ),
    ))
}

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
mod tests;
