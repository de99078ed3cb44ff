//! `crds/` is what the code generates, and the CRDs name the kinds as the SPEC says. No cluster
//! needed: `just unit` runs this.

use std::path::{Path, PathBuf};

use plugin_operator::resources;

fn crds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            found.push(path);
        }
    }
    found.sort();
    found
}

#[test]
fn committed_crds_are_what_the_code_generates() {
    let dir = crds_dir();
    let expected = resources::crd_files().expect("CRDs serialize");
    let mut stale = Vec::new();
    for (path, text) in &expected {
        match std::fs::read_to_string(dir.join(path)) {
            Ok(committed) if &committed == text => {}
            Ok(_) => stale.push(format!("{} differs", path.display())),
            Err(err) => stale.push(format!("{} is missing ({err})", path.display())),
        }
    }
    let wanted: Vec<PathBuf> = expected.iter().map(|(p, _)| dir.join(p)).collect();
    for file in yaml_files(&dir) {
        if !wanted.contains(&file) {
            stale.push(format!("{} is not generated any more", file.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "crds/ is stale, run `just crds`: {}",
        stale.join("; ")
    );
}

#[test]
fn crds_name_the_kinds_as_the_spec_says() {
    let crds = resources::crds();
    let names: Vec<(&str, &str, &str)> = crds
        .iter()
        .map(|c| {
            let names = &c.spec.names;
            let short = names
                .short_names
                .as_ref()
                .and_then(|s| s.first())
                .map_or("", |s| s);
            (
                c.metadata.name.as_deref().unwrap_or(""),
                names.kind.as_str(),
                short,
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("plugins.plugin-operator.dev", "Plugin", "plg"),
            (
                "pluginversions.plugin-operator.dev",
                "PluginVersion",
                "plgv"
            ),
            (
                "plugininstalls.plugin-operator.dev",
                "PluginInstall",
                "plgi"
            ),
            ("pluginjobs.plugin-operator.dev", "PluginJob", "plgj"),
        ]
    );
    for crd in &crds {
        assert_eq!(crd.spec.group, resources::GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["plugins".to_owned()][..])
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, resources::VERSION);
        assert!(
            version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some())
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        let expected: &[&str] = match crd.spec.names.kind.as_str() {
            "Plugin" => &["Type", "Latest", "Installs", "Age"],
            "PluginVersion" => &["Plugin", "Version", "Attribution", "Accepted", "Age"],
            "PluginJob" => &["Install", "Name", "Status", "Age"],
            _ => &["Plugin", "Version", "Phase", "Available", "Age"],
        };
        assert_eq!(columns, expected, "{}", crd.spec.names.kind);
    }
}
