//! `cargo xtask attest`: owned by the attestation work (issue 9), which replaces this file.

/// Entry point for `cargo xtask attest ARGS…`.
pub fn run(args: &[String]) -> std::process::ExitCode {
    let _ = args;
    eprintln!("attest: not implemented yet");
    std::process::ExitCode::from(2)
}
