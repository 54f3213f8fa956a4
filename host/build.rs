//! Builds the guest plugins in `plugins/` for `wasm32-wasip2` and embeds the
//! builtin ones in the host binary.
//!
//! The guests are a cargo workspace of their own. They are built with the
//! same cargo (and so the pinned toolchain) into `<target>/wasm-plugins`, a
//! directory beside the host's profile directories, so debug and release
//! builds of the host share one guest build.
//!
//! Outputs:
//! - `$OUT_DIR/builtin_plugins.rs`: `BUILTIN_PLUGINS: &[(&str, &[u8], Option<&str>)]`, the
//!   components every host carries (file name, bytes, capability file).
//! - `YOI_GUEST_DIR` (compile-time env): where all built guests live, for
//!   tests and benchmarks that need the testing plugins.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Plugins compiled into every host, by crate name.
const BUILTIN: &[&str] = &["fs-tools", "pod-tools"];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let plugins = root.join("plugins");
    println!("cargo:rerun-if-changed={}", plugins.join("Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", plugins.join("Cargo.lock").display());
    for dir in ["sdk", "scope-rules", "testing", "examples", "fs-tools", "pod-tools"] {
        println!("cargo:rerun-if-changed={}", plugins.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let target_dir = guest_target_dir(&out_dir);
    build_guests(&plugins, &target_dir);

    let guest_dir = target_dir.join("wasm32-wasip2").join("release");
    println!("cargo:rustc-env=YOI_GUEST_DIR={}", guest_dir.display());

    let mut table = String::from("/// Builtin plugin components: (file name, bytes, capability file).\n");
    table.push_str("pub const BUILTIN_PLUGINS: &[(&str, &[u8], Option<&str>)] = &[\n");
    for name in BUILTIN {
        let file = format!("{}.wasm", name.replace('-', "_"));
        let path = guest_dir.join(&file);
        assert!(path.exists(), "guest build did not produce {}", path.display());
        let caps = plugins.join(name).join("capabilities.toml");
        let caps = if caps.exists() {
            format!("Some(include_str!({:?}))", caps.display().to_string())
        } else {
            "None".to_string()
        };
        table.push_str(&format!("    ({file:?}, include_bytes!({:?}), {caps}),\n", path.display().to_string()));
    }
    table.push_str("];\n");
    std::fs::write(out_dir.join("builtin_plugins.rs"), table).unwrap();
}

/// `<target>/wasm-plugins`, found from `OUT_DIR` (`<target>/<profile>/build/<pkg>/out`).
fn guest_target_dir(out_dir: &Path) -> PathBuf {
    let profile_dir = out_dir
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(Path::parent)
        .expect("OUT_DIR lies under <target>/<profile>/build");
    profile_dir.parent().unwrap().join("wasm-plugins")
}

fn build_guests(plugins: &Path, target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(plugins)
        .args(["build", "--release", "--workspace", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(target_dir)
        // Anything on stdout would be read as build-script directives.
        .stdout(std::io::stderr());
    // The outer build's settings are meant for the host, not the guests.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_")
            && key != "CARGO_HOME"
            && key != "CARGO_MAKEFLAGS"
            && !key.starts_with("CARGO_REGISTRIES_")
            && !key.starts_with("CARGO_NET_")
            && !key.starts_with("CARGO_HTTP_")
        {
            cmd.env_remove(&*key);
        }
    }
    for key in ["RUSTFLAGS", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTDOCFLAGS", "RUSTC"] {
        cmd.env_remove(key);
    }
    let status = cmd.status().expect("could not run cargo to build the guest plugins");
    assert!(
        status.success(),
        "building the guest plugins failed; run `cargo build --release --target wasm32-wasip2` in plugins/ \
         (the README's setup installs that target)"
    );
}
