//! The custom resources users write and read.

/// All CRDs as one multi-document YAML stream (what `plugin-operator crds` prints).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    Ok(String::new())
}
