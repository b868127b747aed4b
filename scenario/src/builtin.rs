//! The built-in scenarios, embedded from `scenarios/*.toml`, and loading a scenario by built-in name or
//! by path.

use std::path::Path;

use super::spec::{parse, Scenario, SpecError};

/// Every built-in scenario as `(name, file text)`, in the order `broker scenario list` shows them.
pub const BUILTINS: &[(&str, &str)] = &[
    ("pipeline", include_str!("../../scenarios/pipeline.toml")),
    ("sensor-hub", include_str!("../../scenarios/sensor-hub.toml")),
    ("ui-toolkit", include_str!("../../scenarios/ui-toolkit.toml")),
    ("mixed-trust", include_str!("../../scenarios/mixed-trust.toml")),
    ("noisy-neighbor", include_str!("../../scenarios/noisy-neighbor.toml")),
    ("wasi-app", include_str!("../../scenarios/wasi-app.toml")),
    ("cross-node", include_str!("../../scenarios/cross-node.toml")),
];

/// The scenario `broker scenario run` uses when none is named.
pub const DEFAULT: &str = "pipeline";

/// A scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Neither a built-in name nor a readable file.
    #[error("{name:?} is neither a built-in scenario ({known}) nor a readable file: {source}")]
    NotFound {
        /// What was asked for.
        name: String,
        /// The built-in names.
        known: String,
        /// Why the file could not be read.
        source: std::io::Error,
    },
    /// The file does not validate.
    #[error(transparent)]
    Spec(#[from] SpecError),
}

/// The text of a built-in scenario.
pub fn builtin_text(name: &str) -> Option<&'static str> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, text)| *text)
}

/// Loads a built-in scenario by name, or a scenario file by path.
///
/// # Errors
/// [`LoadError`].
pub fn load(name_or_path: &str) -> Result<Scenario, LoadError> {
    if let Some(text) = builtin_text(name_or_path) {
        return Ok(parse(text, &format!("scenarios/{name_or_path}.toml"), None)?);
    }
    let path = Path::new(name_or_path);
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::NotFound {
        name: name_or_path.to_owned(),
        known: BUILTINS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        source,
    })?;
    Ok(parse(&text, &path.display().to_string(), path.parent())?)
}
