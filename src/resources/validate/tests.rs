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

#[test]
fn install_names_must_be_able_to_name_services_and_labels() {
    for good in ["a", "billing-export", "x1", &"a".repeat(63)] {
        assert_eq!(validate_install_name(good), Ok(()), "{good}");
    }
    for bad in ["billing.export", &"a".repeat(64), "1abc", "abc-", "Abc", ""] {
        let error = validate_install_name(bad).expect_err(bad);
        assert_eq!(error.field, "metadata.name");
        assert!(
            error.message.contains("DNS-1035 label"),
            "{}",
            error.message
        );
    }
}
