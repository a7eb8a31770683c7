//! A Prometheus Pushgateway (Debian's `prometheus-pushgateway`) on a
//! loopback port, for the tests of metrics pushed by `visage-dr run`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pg::free_port;

/// A running Pushgateway, stopped when dropped.
pub struct Pushgateway {
    child: Child,
    pub base: String,
}

fn get(url: String) -> Option<String> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let response = reqwest::get(url).await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            response.text().await.ok()
        })
    })
    .join()
    .unwrap()
}

impl Pushgateway {
    /// Starts one, or returns `None` outside CI when the binary is missing.
    pub fn start() -> Option<Pushgateway> {
        let bin = Path::new("/usr/bin/prometheus-pushgateway");
        if !bin.exists() {
            assert!(std::env::var_os("CI").is_none(), "{} is missing: scripts/install-deps installs it", bin.display());
            eprintln!("note: {} is missing, so the Pushgateway test is skipped", bin.display());
            return None;
        }
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let gateway = Pushgateway { child, base: format!("http://127.0.0.1:{port}") };
        let start = Instant::now();
        while get(format!("{}/-/ready", gateway.base)).is_none() {
            assert!(start.elapsed() < Duration::from_secs(20), "the Pushgateway did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(gateway)
    }

    /// Returns everything the Pushgateway exports.
    pub fn metrics(&self) -> String {
        get(format!("{}/metrics", self.base)).expect("the Pushgateway answers")
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
