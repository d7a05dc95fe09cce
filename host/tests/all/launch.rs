//! The worker container's entrypoint, `launch.sh`: runs its bash test, `tests/launch_test.sh`
//! (a fake worker binary stands in for `taskhost`, so no build, Docker or cloud is needed).

use std::path::Path;
use std::process::Command;

#[test]
fn launch_sh_passes_its_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("tests/launch_test.sh"))
        .current_dir(&root)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success() && last.ends_with(" 0 failed"),
        "tests/launch_test.sh failed ({}); last line: {last:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}
