//! The demo page in real headless Chromium (Debian's `chromium`, driven by playwright-core),
//! against the real server, both inside a network namespace that has only `lo`: three people
//! hold a video call, mute, share a screen, reconnect and leave (see `tests/e2e/demo.mjs`).

mod support;

#[test]
fn demo_video_room_works_in_chromium() {
    let output = std::process::Command::new("bash")
        .arg("tests/e2e/run-in-netns.sh")
        .arg(support::server_bin())
        .current_dir(support::repo_path(""))
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "browser e2e failed; screenshots in artifacts/e2e/"
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.contains("passed"))
        .unwrap_or_default();
    assert!(
        last.ends_with(" 0 failed") && !last.starts_with("0 passed"),
        "{last}"
    );
}
