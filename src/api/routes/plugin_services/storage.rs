//! Answers seed 003: the key/value storage of a plugin or of one install
//! (`/api/v2/plugin-services/storage`), kept in ConfigMaps.
use std::collections::BTreeMap;

use axum::{
    Json,
    extract::{Request, State},
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Resource, ResourceExt,
    api::{ObjectMeta, PostParams},
};
use serde_json::{Map, Value, json};

use crate::{
    api::{
        ApiState,
        error::{ApiError, Issue},
        extract::{json_object, type_name},
    },
    resources::names::{self, FIELD_MANAGER, labels},
    runtime::call::with_timeout,
};

use super::{Data, ErrorBody, Result, ServiceCaller, kube_failed, plugin_name};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value (as JSON), in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Largest storage (all keys and values as JSON), in bytes: a ConfigMap holds at most 1 MiB.
pub const MAX_STORAGE_BYTES: usize = 900 * 1024;
/// Most commands per request.
pub const MAX_COMMANDS: usize = 100;
/// The ConfigMap key that holds the storage (a JSON object).
pub const STORAGE_KEY: &str = "storage.json";
/// On a storage ConfigMap: `install/<name>` or `plugin/<name>`.
pub const STORAGE_SCOPE_ANNOTATION: &str = "plugin-operator.dev/storage-scope";

/// Whose storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageScope {
    /// Shared by every install of the plugin in the namespace.
    Plugin(String),
    /// One install's.
    Install(String),
}

/// The ConfigMap of a storage: `<plugin>-plugin-storage` or `<install>-storage`.
pub fn storage_config_map_name(scope: &StorageScope) -> String {
    match scope {
        StorageScope::Plugin(plugin) => format!("{plugin}-plugin-storage"),
        StorageScope::Install(install) => format!("{install}-storage"),
    }
}

fn scope_marker(scope: &StorageScope) -> String {
    match scope {
        StorageScope::Plugin(p) => format!("plugin/{p}"),
        StorageScope::Install(i) => format!("install/{i}"),
    }
}

/// One storage command.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Get(String),
    Set(String, Value),
    Unset(String),
    List(String),
}

/// Reads the commands; every issue names `commands[i].field`.
pub fn parse_commands(body: &Map<String, Value>) -> std::result::Result<Vec<Command>, ApiError> {
    let Some(commands) = body.get("commands").filter(|v| !v.is_null()) else {
        return Err(ApiError::invalid("commands", "required"));
    };
    let Value::Array(commands) = commands else {
        return Err(ApiError::invalid(
            "commands",
            format!("expected an array, got {}", type_name(commands)),
        ));
    };
    if commands.len() > MAX_COMMANDS {
        return Err(ApiError::invalid(
            "commands",
            format!("at most {MAX_COMMANDS} commands per request"),
        ));
    }
    let mut issues = Vec::new();
    let mut parsed = Vec::new();
    for (index, command) in commands.iter().enumerate() {
        let at = |name: &str| format!("commands[{index}].{name}");
        let Value::Object(command) = command else {
            issues.push(Issue::new(
                format!("commands[{index}]"),
                "expected an object",
            ));
            continue;
        };
        let action = command.get("action").and_then(Value::as_str);
        let key = match command.get("key") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(other) => {
                issues.push(Issue::new(
                    at("key"),
                    format!("expected a string, got {}", type_name(other)),
                ));
                continue;
            }
        };
        if let Some(k) = &key
            && k.len() > MAX_KEY_BYTES
        {
            issues.push(Issue::new(
                at("key"),
                format!("longer than {MAX_KEY_BYTES} bytes"),
            ));
            continue;
        }
        let needs_key = |issues: &mut Vec<Issue>| match &key {
            Some(k) if !k.is_empty() => Some(k.clone()),
            _ => {
                issues.push(Issue::new(at("key"), "required"));
                None
            }
        };
        match action {
            Some("get") => parsed.extend(needs_key(&mut issues).map(Command::Get)),
            Some("unset") => parsed.extend(needs_key(&mut issues).map(Command::Unset)),
            Some("list") => parsed.push(Command::List(key.clone().unwrap_or_default())),
            Some("set") => {
                let key = needs_key(&mut issues);
                match command.get("value") {
                    None | Some(Value::Null) => {
                        issues.push(Issue::new(at("value"), "required (unset removes a key)"));
                    }
                    Some(value) => {
                        // JSON read from a request always writes back: the size is never the fallback.
                        let size = serde_json::to_vec(value).map_or(0, |v| v.len());
                        if size > MAX_VALUE_BYTES {
                            issues.push(Issue::new(
                                at("value"),
                                format!("{size} bytes: at most {MAX_VALUE_BYTES}"),
                            ));
                        } else if let Some(key) = key {
                            parsed.push(Command::Set(key, value.clone()));
                        }
                    }
                }
            }
            Some(other) => issues.push(Issue::new(
                at("action"),
                format!("{other:?}: one of get, set, unset, list"),
            )),
            None => issues.push(Issue::new(
                at("action"),
                "required: get, set, unset or list",
            )),
        }
    }
    if issues.is_empty() {
        Ok(parsed)
    } else {
        Err(ApiError::Invalid(issues))
    }
}

/// Runs the commands on a storage; answers one item per command and whether it changed.
pub fn run_commands(storage: &mut Map<String, Value>, commands: &[Command]) -> (Vec<Value>, bool) {
    let mut changed = false;
    let items = commands
        .iter()
        .map(|command| match command {
            Command::Get(key) => {
                json!({"key": key, "value": storage.get(key).cloned().unwrap_or(Value::Null)})
            }
            Command::Set(key, value) => {
                changed |= storage.get(key) != Some(value);
                storage.insert(key.clone(), value.clone());
                json!({"key": key, "value": value})
            }
            Command::Unset(key) => {
                let previous = storage.remove(key);
                changed |= previous.is_some();
                json!({"key": key, "value": previous.unwrap_or(Value::Null)})
            }
            Command::List(prefix) => {
                let keys: Vec<&String> = storage
                    .keys()
                    .filter(|k| k.starts_with(prefix.as_str()))
                    .collect();
                json!({"key": prefix, "value": keys})
            }
        })
        .collect();
    (items, changed)
}

/// Send commands to the key/value storage.
///
/// Needs a plugin token. Without `install_id` the storage is the plugin's (shared by its
/// installs in the namespace; ConfigMap `<plugin>-plugin-storage`), with it the install's
/// (`<install>-storage`, owned by the install; only the token's own install). Commands run in
/// order: `get` → the value or null, `set` → the value set, `unset` → the previous value or null,
/// `list` → the keys starting with `key`. Keys ≤ 256 bytes, values ≤ 64 KiB (400), the whole
/// storage ≤ 900 KiB (422). Writes carry the ConfigMap's resourceVersion; a concurrent write
/// makes the commands run again on the new state.
#[utoipa::path(
    post,
    path = "/api/v2/plugin-services/storage",
    tag = "seed 003",
    request_body(content = Object, description = "`{install_id?, commands: [{action, key, value}]}`"),
    responses(
        (status = 200, body = Object, description = "`{data: [{key, value}, …]}`"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn storage(
    State(state): State<ApiState>,
    caller: ServiceCaller,
    request: Request,
) -> Result<Json<Data<Vec<Value>>>> {
    let own = caller.own_install(&state, "the storage")?;
    let body = json_object(request).await?;
    let commands = parse_commands(&body)?;
    let namespace = own.namespace().unwrap_or_default();
    let scope = match body.get("install_id") {
        None | Some(Value::Null) => {
            let plugin = state.plugin_of(&own).ok_or_else(|| {
                ApiError::NotFound(format!(
                    "the plugin of install {} is not available",
                    own.name_any()
                ))
            })?;
            StorageScope::Plugin(plugin.name_any())
        }
        Some(Value::String(id)) => {
            caller
                .install(&state, "install_id", id, "get", "plugininstalls")
                .await?;
            StorageScope::Install(own.name_any())
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "install_id",
                format!("expected a string, got {}", type_name(other)),
            )
            .into());
        }
    };
    let name = storage_config_map_name(&scope);
    let api: Api<ConfigMap> = Api::namespaced(state.client().clone(), &namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    for _ in 0..20 {
        let existing = with_timeout(api.get_opt(&name))
            .await
            .map_err(kube_failed("get the storage ConfigMap"))?;
        if let Some(cm) = &existing
            && cm.annotations().get(STORAGE_SCOPE_ANNOTATION) != Some(&scope_marker(&scope))
        {
            return Err(ApiError::Conflict(format!(
                "the ConfigMap {name} exists and is not this storage"
            ))
            .into());
        }
        // A storage that does not read is an error, not an empty storage: the write that follows
        // would lose what it holds.
        let mut data: Map<String, Value> = match existing
            .as_ref()
            .and_then(|cm| cm.data.as_ref())
            .and_then(|d| d.get(STORAGE_KEY))
        {
            None => Map::new(),
            Some(text) => serde_json::from_str(text).map_err(|err| {
                ApiError::Internal(format!(
                    "the ConfigMap {name} does not hold a JSON object under {STORAGE_KEY}: {err}"
                ))
            })?,
        };
        let (items, changed) = run_commands(&mut data, &commands);
        if !changed {
            return Ok(Json(Data { data: items }));
        }
        let text = serde_json::to_string(&data)
            .map_err(|err| ApiError::Internal(format!("the storage cannot be written: {err}")))?;
        if text.len() > MAX_STORAGE_BYTES {
            return Err(ApiError::LimitExceeded(format!(
                "the storage would hold {} bytes: at most {MAX_STORAGE_BYTES}; unset some keys",
                text.len()
            ))
            .into());
        }
        let written = match existing {
            Some(mut cm) => {
                cm.data
                    .get_or_insert_with(Default::default)
                    .insert(STORAGE_KEY.to_owned(), text);
                with_timeout(api.replace(&name, &params, &cm)).await
            }
            None => {
                let (labels, owners) = match &scope {
                    StorageScope::Install(install) => (
                        names::child_labels(&plugin_name(&state, &own), install),
                        own.controller_owner_ref(&()).map(|r| vec![r]),
                    ),
                    StorageScope::Plugin(plugin) => (
                        BTreeMap::from([
                            (
                                labels::MANAGED_BY.to_owned(),
                                labels::MANAGED_BY_VALUE.to_owned(),
                            ),
                            (labels::PLUGIN.to_owned(), plugin.clone()),
                        ]),
                        None,
                    ),
                };
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.clone()),
                        labels: Some(labels),
                        annotations: Some(BTreeMap::from([(
                            STORAGE_SCOPE_ANNOTATION.to_owned(),
                            scope_marker(&scope),
                        )])),
                        owner_references: owners,
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([(STORAGE_KEY.to_owned(), text)])),
                    ..Default::default()
                };
                with_timeout(api.create(&params, &cm)).await
            }
        };
        match written {
            Ok(_) => return Ok(Json(Data { data: items })),
            Err(err) if err.is_conflict() => {}
            Err(err) => return Err(kube_failed("write the storage ConfigMap")(err)),
        }
    }
    Err(ApiError::Conflict("the storage changed concurrently too often; send again".into()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(o) => o,
            _ => panic!("an object"),
        }
    }

    #[test]
    fn storage_commands_run_in_order() {
        let commands = parse_commands(&object(json!({"commands": [
            {"action": "set", "key": "a/1", "value": "x"},
            {"action": "set", "key": "a/2", "value": {"n": 2}},
            {"action": "set", "key": "b", "value": 3},
            {"action": "get", "key": "a/1"},
            {"action": "list", "key": "a/"},
            {"action": "unset", "key": "a/1"},
            {"action": "unset", "key": "a/1"},
            {"action": "get", "key": "nope"},
        ]})))
        .expect("valid");
        let mut storage = Map::new();
        let (items, changed) = run_commands(&mut storage, &commands);
        assert!(changed);
        let values: Vec<Value> = items.iter().map(|i| i["value"].clone()).collect();
        assert_eq!(
            values,
            [
                json!("x"),
                json!({"n": 2}),
                json!(3),
                json!("x"),
                json!(["a/1", "a/2"]),
                json!("x"),
                Value::Null,
                Value::Null
            ]
        );
        let (_, changed) = run_commands(&mut storage, &[Command::Get("b".into())]);
        assert!(!changed);
    }

    #[test]
    fn bad_storage_commands_name_their_field() {
        let field = |body: Value| {
            parse_commands(&object(body))
                .expect_err("invalid")
                .field()
                .map(str::to_owned)
        };
        assert_eq!(field(json!({})).as_deref(), Some("commands"));
        assert_eq!(field(json!({"commands": {}})).as_deref(), Some("commands"));
        assert_eq!(
            field(json!({"commands": [{"action": "drop", "key": "a"}]})).as_deref(),
            Some("commands[0].action")
        );
        assert_eq!(
            field(json!({"commands": [{"action": "get"}]})).as_deref(),
            Some("commands[0].key")
        );
        assert_eq!(
            field(json!({"commands": [{"action": "set", "key": "a"}]})).as_deref(),
            Some("commands[0].value")
        );
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(
            field(json!({"commands": [{"action": "get", "key": long}]})).as_deref(),
            Some("commands[0].key")
        );
        let big = "v".repeat(MAX_VALUE_BYTES);
        assert_eq!(
            field(json!({"commands": [{"action": "set", "key": "a", "value": big}]})).as_deref(),
            Some("commands[0].value")
        );
    }

    #[test]
    fn storage_config_map_names() {
        assert_eq!(
            storage_config_map_name(&StorageScope::Plugin("p".into())),
            "p-plugin-storage"
        );
        assert_eq!(
            storage_config_map_name(&StorageScope::Install("i".into())),
            "i-storage"
        );
    }
}
