//! What the benchmarks share: a `dearsync sim` process, and this process's CPU time and peak memory.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A simulator running as its own process (killed on drop).
pub struct Sim {
    child: Child,
    pub base_url: String,
    // Kept open: the simulator prints more lines, and a closed pipe would kill it.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `dearsync sim` with `sales` sales, `products` products and a rate limit (0 = off).
pub fn start_sim(sales: usize, products: usize, rate_limit: u32) -> Sim {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dearsync"))
        .args([
            "sim",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--sales",
            &sales.to_string(),
        ])
        .args([
            "--products",
            &products.to_string(),
            "--rate-limit",
            &rate_limit.to_string(),
            "--seed",
            "3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dearsync sim");
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let base_url = line
        .trim()
        .strip_prefix("DEAR_BASE_URL=")
        .expect("the simulator prints its URL")
        .to_owned();
    Sim {
        child,
        base_url,
        _stdout: stdout,
    }
}

/// (user + system CPU seconds, peak resident MB) of this process, from /proc.
pub fn cpu_and_peak() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.split(' ').collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields after the command name: utime is the 12th, stime the 13th (0-based 11, 12); 100 ticks/s.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak_kb = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu, peak_kb / 1024.0)
}
