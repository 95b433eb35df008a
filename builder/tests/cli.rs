//! The command line around the commands: `--json` where it needs no image (tests/e2e.rs has the rest).
mod common;
use common::kiln;

#[test]
fn verify_json_on_a_missing_image_is_an_error_document() {
    let out = kiln(&["verify", "--json", "/nonexistent/kiln-missing-1.0-x86_64.img"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(doc["command"], "verify");
    assert_eq!(doc["result"], "error");
    assert!(doc["error"].as_str().unwrap().contains("not found"), "{doc}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("kiln: error:"), "the error is on stderr too");
}

#[test]
fn verify_json_lists_findings() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("lone-1.0-x86_64.img");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    let out = kiln(&["verify", "--json", image.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(doc["result"], "fail");
    assert_eq!(doc["signature_checked"], false);
    assert_eq!(doc["image"], image.to_str().unwrap());
    let finding = &doc["findings"][0];
    assert_eq!(finding["status"], "fail");
    assert_eq!(finding["subject"], "SHA256SUMS");
    assert!(finding["detail"].as_str().unwrap().contains("cannot be read"), "{doc}");
    assert_eq!(doc["failed"], serde_json::json!(["SHA256SUMS"]));
    // Without --json: the lines as before.
    let out = kiln(&["verify", image.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("FAIL SHA256SUMS: cannot be read") && text.contains("result: FAIL: SHA256SUMS"), "{text}");
}
