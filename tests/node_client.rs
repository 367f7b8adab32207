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
    // The spec reporter ends with summary lines such as `ℹ pass 27`.
    let passed: u32 = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("ℹ pass "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the suite printed its pass count");
    assert!(passed > 0, "the suite ran no test");
}
