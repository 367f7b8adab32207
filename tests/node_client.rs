//! Runs the npm `socket.io-client` suite (`tests/node/`) against the real server binary, so
//! the one test command covers the client browsers actually use.

mod support;

#[test]
fn socket_io_client_suite_passes() {
    let output = std::process::Command::new("node")
        .args(["--test", "--test-reporter=spec", "tests/node/"])
        .current_dir(support::repo_path(""))
        .env("RTCIO_SIGNAL_BIN", support::server_bin())
        .env_remove("SERVER_URL")
        .output()
        .expect("node is installed (run scripts/setup)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(output.status.success(), "node --test tests/node/ failed");
    assert!(stdout.contains("pass"), "the suite ran no test");
}
