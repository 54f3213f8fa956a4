//! `yoi-host plugins new`: writes a starter plugin in Rust, Python or
//! JavaScript. A starter offers one small tool, carries its own copy of the
//! WIT contract, a build script, a README and a pod manifest for trying it,
//! and loads unchanged once built.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::plugin::WIT_VERSION;

/// The componentize-py release the Python starter and examples are built with.
pub const COMPONENTIZE_PY: &str = "0.25.1";
/// The componentize-js release the JavaScript starter and examples are built with.
pub const COMPONENTIZE_JS: &str = "0.23.0";
/// componentize-js loads this at run time without depending on it.
pub const PREVIEW2_SHIM: &str = "0.25.0";

/// A starter's language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    /// Rust with wit-bindgen.
    Rust,
    /// Python with componentize-py.
    Python,
    /// JavaScript with componentize-js.
    Js,
}

struct Template {
    path: &'static str,
    text: &'static str,
    executable: bool,
}

const fn file(path: &'static str, text: &'static str) -> Template {
    Template { path, text, executable: false }
}

const fn script(path: &'static str, text: &'static str) -> Template {
    Template { path, text, executable: true }
}

const COMMON: &[Template] = &[
    file("README.md", include_str!("../templates/common/README.md")),
    file("pod.toml", include_str!("../templates/common/pod.toml")),
    file(".gitignore", include_str!("../templates/common/gitignore")),
    file("wit/plugin.wit", include_str!("../../wit/plugin.wit")),
];

const RUST: &[Template] = &[
    file("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
    file("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
    script("build.sh", include_str!("../templates/rust/build.sh")),
];

const PYTHON: &[Template] = &[
    file("app.py", include_str!("../templates/python/app.py")),
    script("build.sh", include_str!("../templates/python/build.sh")),
];

const JS: &[Template] = &[
    file("index.js", include_str!("../templates/js/index.js")),
    file("package.json", include_str!("../templates/js/package.json")),
    script("build.sh", include_str!("../templates/js/build.sh")),
];

impl Language {
    fn templates(self) -> &'static [Template] {
        match self {
            Language::Rust => RUST,
            Language::Python => PYTHON,
            Language::Js => JS,
        }
    }

    fn language(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::Python => "Python",
            Language::Js => "JavaScript",
        }
    }

    fn source(self) -> &'static str {
        match self {
            Language::Rust => "src/lib.rs",
            Language::Python => "app.py",
            Language::Js => "index.js",
        }
    }

    fn build(self) -> String {
        match self {
            Language::Rust => "```sh\nrustup target add wasm32-wasip2   # once\n./build.sh\n```".to_string(),
            Language::Python => {
                format!("```sh\npip install componentize-py=={COMPONENTIZE_PY}   # once\n./build.sh\n```")
            }
            Language::Js => {
                "```sh\nnpm install   # once: brings componentize-js\n./build.sh    # or: npm run build\n```".into()
            }
        }
    }
}

/// The names a starter uses, from the one the user gave.
struct Names {
    /// `my-tool`: package name.
    package: String,
    /// `my_tool`: the component's file name (and so the plugin's name).
    file: String,
    /// `MyTool`: the tool's name.
    tool: String,
}

impl Names {
    fn from(name: &str) -> anyhow::Result<Names> {
        let parts: Vec<&str> = name.split(['-', '_']).collect();
        let valid = name.len() <= 48
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        if !valid {
            bail!(
                "{name:?} is not a plugin name: use lower-case letters and digits, words joined by - or _ \
                 (such as word-count), at most 48 characters"
            );
        }
        let tool = parts
            .iter()
            .map(|p| {
                let mut chars = p.chars();
                let first = chars.next().unwrap().to_ascii_uppercase();
                std::iter::once(first).chain(chars).collect::<String>()
            })
            .collect();
        Ok(Names { package: parts.join("-"), file: parts.join("_"), tool })
    }
}

/// Writes a starter plugin named `name` in `language` into `dir` (which
/// must not exist or be empty) and returns the files written.
pub fn create(language: Language, name: &str, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let names = Names::from(name)?;
    if dir.exists() && dir.read_dir().with_context(|| dir.display().to_string())?.next().is_some() {
        bail!("{} already exists and is not empty", dir.display());
    }
    let fill = |text: &str| {
        text.replace("{{crate}}", &names.package)
            .replace("{{name}}", &names.file)
            .replace("{{tool}}", &names.tool)
            .replace("{{language}}", language.language())
            .replace("{{source}}", language.source())
            .replace("{{build}}", &language.build())
            .replace("{{wit_version}}", WIT_VERSION)
            .replace("{{componentize_py}}", COMPONENTIZE_PY)
            .replace("{{componentize_js}}", COMPONENTIZE_JS)
            .replace("{{preview2_shim}}", PREVIEW2_SHIM)
    };
    let mut written = Vec::new();
    for template in COMMON.iter().chain(language.templates()) {
        let path = dir.join(template.path);
        std::fs::create_dir_all(path.parent().unwrap()).with_context(|| path.display().to_string())?;
        std::fs::write(&path, fill(template.text)).with_context(|| path.display().to_string())?;
        if template.executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| path.display().to_string())?;
        }
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_each_convention() {
        let n = Names::from("word-count2").unwrap();
        assert_eq!(
            (n.package.as_str(), n.file.as_str(), n.tool.as_str()),
            ("word-count2", "word_count2", "WordCount2")
        );
        for bad in ["", "Word", "2words", "a--b", "a b", "a/b", "ünï", "x-"] {
            assert!(Names::from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for language in [Language::Rust, Language::Python, Language::Js] {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("starter");
            for path in create(language, "word-count", &target).unwrap() {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(!text.contains("{{"), "{} keeps a placeholder", path.display());
            }
            assert!(create(language, "word-count", &target).unwrap_err().to_string().contains("not empty"));
        }
    }

    /// The versions the starters name are those the test suite builds with.
    #[test]
    fn toolchain_pins_agree() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/examples/toolchains");
        let requirements = std::fs::read_to_string(root.join("requirements.txt")).unwrap();
        assert!(requirements.contains(&format!("componentize-py=={COMPONENTIZE_PY}")), "{requirements}");
        let package: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("package.json")).unwrap()).unwrap();
        assert_eq!(package["devDependencies"]["@bytecodealliance/componentize-js"], COMPONENTIZE_JS);
        assert_eq!(package["devDependencies"]["@bytecodealliance/preview2-shim"], PREVIEW2_SHIM);
    }
}
