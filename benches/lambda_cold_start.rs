//! Lambda cold start of the three function binaries (a benchmark, not a timed test): the time from
//! process start to the runtime's first poll (`GET …/runtime/invocation/next`), and the resident
//! memory at that moment. A minimal Runtime API on 127.0.0.1 records the poll; the binary builds its
//! real dependencies first (AWS SDK config, DynamoDB and Secrets Manager clients), as in Lambda.
//! Results: docs/benchmarks.md.
//!
//! CARGO_TARGET_DIR=/tmp/lambda-target cargo build --release -p order-download -p shipment-confirmation -p inventory-sync
//! DEARSYNC_FUNCTIONS_DIR=/tmp/lambda-target/release cargo bench --bench lambda_cold_start -- [RUNS]
//!
//! Without DEARSYNC_FUNCTIONS_DIR the binaries next to this one's build folder are used (the debug
//! builds under `cargo test --all-targets`, which runs a quick smoke pass of this file).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FUNCTIONS: [&str; 3] = ["order-download", "shipment-confirmation", "inventory-sync"];

fn functions_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DEARSYNC_FUNCTIONS_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("this binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>/deps")
        .to_path_buf()
}

/// Resident memory of `pid` in KiB (Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// One cold start: (time to the first poll, RSS then).
fn cold_start(binary: &Path) -> (Duration, Option<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port on 127.0.0.1");
    let addr = listener.local_addr().unwrap();
    let started = Instant::now();
    let mut child = Command::new(binary)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("STATE_TABLE", "bench-table")
        .env("SECRET_PREFIX", "dear-sync/")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
    let (stream, _) = listener.accept().expect("the runtime connects");
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let elapsed = started.elapsed();
    assert!(
        request_line.contains("/runtime/invocation/next"),
        "the first request is the poll: {request_line}"
    );
    let rss = rss_kib(child.id());
    let _ = (&stream).write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n");
    let _ = child.kill();
    let _ = child.wait();
    (elapsed, rss)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let runs: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if bench { 30 } else { 2 });
    let dir = functions_dir();
    println!("binaries in {} ({runs} runs each)", dir.display());
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>12}",
        "function", "median ms", "p90 ms", "max ms", "RSS KiB"
    );
    for name in FUNCTIONS {
        let binary = dir.join(name);
        if !binary.exists() {
            panic!(
                "{} is not built (see the build command at the top of benches/lambda_cold_start.rs)",
                binary.display()
            );
        }
        let mut times = Vec::new();
        let mut rss = Vec::new();
        for _ in 0..runs {
            let (t, r) = cold_start(&binary);
            times.push(t);
            rss.extend(r);
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        println!(
            "{name:<24} {:>10.1} {:>10.1} {:>10.1} {:>12}",
            ms(at(0.5)),
            ms(at(0.9)),
            ms(*times.last().unwrap()),
            rss.iter().max().copied().unwrap_or(0)
        );
    }
}
