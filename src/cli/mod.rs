//! The subcommands of the `qwen-scope` binary, one file each.

pub mod attributes;
pub mod bench;
pub mod forward;
pub mod inspect;
pub mod sweep;

/// The model a results folder was made from: its name as given, and each file's
/// fingerprint, recorded in run.json so that `--resume` refuses weights changed in place.
pub struct RunModel {
    pub name: String,
    pub files: Vec<(String, String)>,
}

impl RunModel {
    /// The run.json entries naming the model and the tool that made the results.
    pub fn record(&self) -> serde_json::Value {
        let files: serde_json::Map<String, serde_json::Value> = self
            .files
            .iter()
            .map(|(n, f)| (n.clone(), f.clone().into()))
            .collect();
        serde_json::json!({
            "name": self.name,
            "files": files,
            "qwen_scope_version": env!("CARGO_PKG_VERSION"),
        })
    }
}
