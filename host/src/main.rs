//! The `yoi-host` binary; everything lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    yoi_host::cli::main()
}
