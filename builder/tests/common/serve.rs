//! Test servers on 127.0.0.1: a static HTTP server (python3 -m http.server) and a signed apt
//! repository built here with the real tools (dpkg-deb, apt-ftparchive, gpg with a throwaway key).
use super::run;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `python3 -m http.server` serving `dir` on a free loopback port; stopped when dropped.
pub struct HttpServer {
    child: Child,
    pub port: u16,
}

impl HttpServer {
    pub fn start(dir: &Path) -> HttpServer {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting python3 -m http.server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "http.server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        HttpServer { child, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, path.trim_start_matches('/'))
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on (just freed by us).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A throwaway OpenPGP signing key in its own GnuPG home.
pub struct TestKey {
    pub home: tempfile::TempDir,
    pub fingerprint: String,
}

impl TestKey {
    pub fn new(uid: &str) -> TestKey {
        let home = tempfile::tempdir().unwrap();
        let h = home.path().to_str().unwrap().to_string();
        run(
            "gpg",
            &["--homedir", &h, "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
        );
        let colons = run("gpg", &["--homedir", &h, "--batch", "--with-colons", "--list-keys"]);
        let fingerprint =
            colons.lines().find(|l| l.starts_with("fpr:")).unwrap().split(':').nth(9).unwrap().to_string();
        TestKey { home, fingerprint }
    }

    fn gpg(&self, args: &[&str]) -> String {
        let mut all = vec!["--homedir", self.home.path().to_str().unwrap(), "--batch"];
        all.extend(args);
        run("gpg", &all)
    }

    /// Write the armored public key to `dest`.
    pub fn export(&self, dest: &Path) {
        self.gpg(&["--yes", "--armor", "--output", dest.to_str().unwrap(), "--export", &self.fingerprint]);
    }
}

impl Drop for TestKey {
    fn drop(&mut self) {
        // gpg may have started an agent for this home; stop exactly that one.
        let _ = Command::new("gpgconf").arg("--homedir").arg(self.home.path()).args(["--kill", "gpg-agent"]).status();
    }
}

/// A one-package apt repository (suite `kiln`, component `main`, amd64 + all) below `dir`,
/// its InRelease signed by `key`. The package installs /usr/share/kiln-test-hello/hello.txt.
pub fn make_repo(dir: &Path, key: &TestKey, hello: &str) -> PathBuf {
    let pkg = dir.join("build/kiln-test-hello");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/share/kiln-test-hello")).unwrap();
    std::fs::write(pkg.join("DEBIAN/control"), "Package: kiln-test-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: kiln tests <test@kiln.invalid>\nDescription: kiln test package from a test repository\n").unwrap();
    std::fs::write(pkg.join("usr/share/kiln-test-hello/hello.txt"), hello).unwrap();
    let repo = dir.join("repo");
    std::fs::create_dir_all(repo.join("pool/main")).unwrap();
    std::fs::create_dir_all(repo.join("dists/kiln/main/binary-amd64")).unwrap();
    run(
        "dpkg-deb",
        &[
            "--root-owner-group",
            "--build",
            pkg.to_str().unwrap(),
            repo.join("pool/main/kiln-test-hello_1.0_all.deb").to_str().unwrap(),
        ],
    );
    let packages = Command::new("apt-ftparchive").args(["packages", "pool"]).current_dir(&repo).output().unwrap();
    assert!(packages.status.success());
    std::fs::write(repo.join("dists/kiln/main/binary-amd64/Packages"), &packages.stdout).unwrap();
    let release = Command::new("apt-ftparchive")
        .args([
            "-o",
            "APT::FTPArchive::Release::Suite=kiln",
            "-o",
            "APT::FTPArchive::Release::Codename=kiln",
            "-o",
            "APT::FTPArchive::Release::Components=main",
            "-o",
            "APT::FTPArchive::Release::Architectures=amd64 all",
            "release",
            "dists/kiln",
        ])
        .current_dir(&repo)
        .output()
        .unwrap();
    assert!(release.status.success());
    std::fs::write(repo.join("dists/kiln/Release"), &release.stdout).unwrap();
    key.gpg(&[
        "--yes",
        "--local-user",
        &key.fingerprint,
        "--clearsign",
        "--output",
        repo.join("dists/kiln/InRelease").to_str().unwrap(),
        repo.join("dists/kiln/Release").to_str().unwrap(),
    ]);
    repo
}

/// An HTTP server on loopback that serves one body at every path, but closes the connection
/// halfway through the body for its first `broken` full (non-range) requests: a download that
/// ends mid-file. Range requests (reachability probes) are always answered whole. Counts the
/// full requests. Runs until the test process ends.
pub struct HalfServer {
    pub port: u16,
    full_requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl HalfServer {
    pub fn start(body: Vec<u8>, broken: usize) -> HalfServer {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let full_requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = full_requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut range = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    range |= line.to_ascii_lowercase().starts_with("range:");
                }
                let mut stream = stream;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let n = if range { 0 } else { count.fetch_add(1, Ordering::SeqCst) + 1 };
                if !range && n <= broken {
                    let _ = stream.write_all(&body[..body.len() / 2]);
                    let _ = stream.flush();
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let _ = stream.write_all(&body);
            }
        });
        HalfServer { port, full_requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, path.trim_start_matches('/'))
    }

    /// Full (non-range) requests answered so far, broken ones included.
    pub fn full_requests(&self) -> usize {
        self.full_requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}
