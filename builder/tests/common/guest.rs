//! A running `kiln test --json` whose guest the test logs in to over the forwarded SSH port
//! (tests/site.rs, tests/flash.rs). Readiness comes from the guest agent's KILN-READY on the
//! serial console; the recipe's checks keep the machine up until the test has left its mark.
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `kiln test TARGET --json --timeout 1200 --serial-log LOG EXTRA...`, started.
pub struct Guest {
    child: Child,
    /// The 127.0.0.1 port forwarded to the guest's SSH (read from kiln's stderr).
    pub port: u16,
    rest: JoinHandle<String>,
}

impl Guest {
    pub fn start(target: &Path, log: &Path, extra: &[&str]) -> Guest {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["test", target.to_str().unwrap(), "--json", "--timeout", "1200"])
            .arg("--serial-log")
            .arg(log)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        let port = loop {
            let line = lines.next().unwrap_or_else(|| panic!("kiln test printed no SSH port:\n{seen}")).unwrap();
            seen += &format!("{line}\n");
            if let Some(rest) = line.split("ssh -p ").nth(1) {
                break rest.split_whitespace().next().unwrap().parse::<u16>().unwrap();
            }
        };
        let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
        Guest { child, port, rest }
    }

    /// Wait for the guest agent's KILN-READY on the serial console (the boot has finished).
    pub fn wait_ready(&mut self, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(1200);
        loop {
            if std::fs::read_to_string(log).unwrap_or_default().contains("KILN-READY") {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                let tail: Vec<String> =
                    std::fs::read_to_string(log).unwrap_or_default().lines().rev().take(15).map(String::from).collect();
                panic!(
                    "kiln test ended ({status}) before the guest was ready; serial log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            assert!(Instant::now() < deadline, "guest not ready within 1200s");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `ssh -p PORT -i KEY USER@127.0.0.1 SCRIPT` (batch mode, no host key bookkeeping).
    pub fn ssh(&self, key: &Path, user: &str, script: &str) -> Output {
        Command::new("ssh")
            .args(["-p", &self.port.to_string(), "-i", key.to_str().unwrap(), "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=30"])
            .arg(format!("{user}@127.0.0.1"))
            .arg(script)
            .output()
            .unwrap()
    }

    /// Wait for `kiln test` to end; its --json document (asserting it passed).
    pub fn finish(self) -> serde_json::Value {
        let out = self.child.wait_with_output().unwrap();
        let stderr = self.rest.join().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("kiln test --json: {e}\n{}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
        assert!(out.status.success(), "kiln test failed: {json:#}\n{stderr}");
        json
    }
}
