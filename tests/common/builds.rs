//! Builds guest plugins in other languages for the tests and benchmarks: the
//! pinned toolchains (`scripts/guest-toolchains`), the example plugins, and
//! starters written by `yoi-host plugins new`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// PATH with the guest toolchains in front, installed once per process.
pub fn toolchain_path() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let out = Command::new(repo().join("scripts/guest-toolchains")).output().unwrap();
        assert!(out.status.success(), "installing the toolchains failed: {}", String::from_utf8_lossy(&out.stderr));
        let dirs: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
        format!("{}:{}", dirs.join(":"), std::env::var("PATH").unwrap_or_default())
    })
}

/// Runs a build script with the toolchains on PATH, the repository's Rust
/// toolchain, and none of the outer cargo's settings.
pub fn run_build(script: &Path, args: &[&Path]) {
    let channel = std::fs::read_to_string(repo().join("rust-toolchain.toml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("channel = ").map(|v| v.trim_matches('"').to_string()))
        .unwrap();
    let mut cmd = Command::new(script);
    cmd.args(args).env("PATH", toolchain_path()).env("RUSTUP_TOOLCHAIN", channel);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME") || key == "RUSTFLAGS" {
            cmd.env_remove(key);
        }
    }
    // One target directory for every run, so the Rust starter's
    // dependencies build once.
    cmd.env("CARGO_TARGET_DIR", Path::new(env!("CARGO_TARGET_TMPDIR")).join("starter-build"));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{} failed:\n{}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The three example plugins (`csv_stats` in Python, `json_query` in
/// JavaScript, `http_get` in Rust), built into one directory once per process.
pub fn examples() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let examples = repo().join("plugins/examples");
        run_build(&examples.join("csv-stats/build.sh"), &[dir.path()]);
        run_build(&examples.join("json-query/build.sh"), &[dir.path()]);
        // The Rust example is a member of the plugins workspace, which the
        // host's build has built already.
        let guest = Path::new(env!("YOI_GUEST_DIR")).join("http_get.wasm");
        std::fs::copy(guest, dir.path().join("http_get.wasm")).unwrap();
        std::fs::copy(examples.join("http-get/capabilities.toml"), dir.path().join("http_get.toml")).unwrap();
        dir
    })
    .path()
}

/// Writes a starter with `yoi-host plugins new` into `dir` (run from
/// `yoi_host`, the binary) and builds it; its component lands in `dir/dist`.
pub fn build_starter(yoi_host: &Path, lang: &str, name: &str, dir: &Path) {
    let out = Command::new(yoi_host).args(["plugins", "new", "--lang", lang, name]).arg(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    run_build(&dir.join("build.sh"), &[]);
}
