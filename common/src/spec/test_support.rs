//! What the spec tests share: the seed file, a temporary folder, and short ways to write
//! definitions and read their errors.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{parse, SpecError};

pub(super) const SEED: &str = r#"
usable-functions:
  example-faas:
    name: "example-faas-name"
    version: 0.1
    configuration:
      programing_language: "python"
      base_function_file_name: "example.py"
      function_folder: "example"
      extra_dependencies: ""
"#;

/// A folder under the system temp dir, removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("roost-spec-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub(super) fn file(&self, path: &str, text: &str) -> PathBuf {
        let path = self.0.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A python function definition with extra lines appended at the function's level.
pub(super) fn python_fn(key: &str, extra: &str) -> String {
    format!(
        "  {key}:\n    version: 1\n    configuration:\n      \
         base_function_file_name: main.py\n      function_folder: {key}\n{extra}"
    )
}

pub(super) fn with_functions(functions: &[String]) -> String {
    format!("usable-functions:\n{}", functions.concat())
}

pub(super) fn errors(yaml: &str) -> Vec<SpecError> {
    parse(yaml).expect_err("expected errors").0
}

/// The (function, field) of each field error.
pub(super) fn fields(errors: &[SpecError]) -> Vec<(String, String)> {
    errors
        .iter()
        .map(|e| match e {
            SpecError::Field { function, field, .. } => (function.clone().unwrap_or_default(), field.clone()),
            other => panic!("not a field error: {other}"),
        })
        .collect()
}

pub(super) fn one_error(yaml: &str) -> (String, String, String) {
    let errors = errors(yaml);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (function, field) = fields(&errors).remove(0);
    (function, field, errors[0].to_string())
}
