//! Test support: an AWS emulator (moto's server mode) on 127.0.0.1, and SDK clients pointed at it.
//!
//! One `moto_server` is started per test binary, on a free port, unless `DEARSYNC_AWS_ENDPOINT`
//! names one already running. It is started through a small Python wrapper that stops it when the
//! test binary's end of a pipe closes, so no server outlives the tests, even when they crash.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::config::{Credentials, Region};

/// The variable naming an already running emulator (e.g. `http://127.0.0.1:5000`).
pub const ENDPOINT_VAR: &str = "DEARSYNC_AWS_ENDPOINT";

struct Emulator {
    endpoint: String,
    // Kept so the wrapper's stdin stays open for the life of the test binary.
    _child: Option<Child>,
}

static EMULATOR: OnceLock<Emulator> = OnceLock::new();

const WRAPPER: &str = "import subprocess, sys\n\
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n\
sys.stdin.read()\n\
p.terminate()\n\
p.wait()\n";

fn start() -> Emulator {
    if let Ok(endpoint) = std::env::var(ENDPOINT_VAR) {
        return Emulator {
            endpoint,
            _child: None,
        };
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1");
    let mut child = Command::new("python3")
        .args([
            "-c",
            WRAPPER,
            "moto_server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed to run the AWS emulator");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!(
                "the AWS emulator exited ({status}): {err}\n\
                 Install it with: pip install 'moto[server]' (scripts/test.sh does this)"
            );
        }
        assert!(
            Instant::now() < deadline,
            "moto_server did not listen on {addr} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Emulator {
        endpoint: format!("http://{addr}"),
        _child: Some(child),
    }
}

/// The emulator's endpoint, starting it on first use.
pub fn endpoint() -> &'static str {
    &EMULATOR.get_or_init(start).endpoint
}

/// SDK configuration for the emulator: fixed region and dummy credentials.
pub fn sdk_config() -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint())
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            Credentials::new("testing", "testing", None, None, "dearsync-tests"),
        ))
        .build()
}

/// A DynamoDB client on the emulator.
pub fn dynamodb() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config())
}

/// A Secrets Manager client on the emulator.
pub fn secrets_manager() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&sdk_config())
}

/// A fresh, empty state table with a unique name.
pub async fn fresh_table() -> String {
    let name = format!("dearsync-test-{}", dearsync_core::memory::new_token());
    crate::create_table(&dynamodb(), &name)
        .await
        .expect("create a state table on the emulator");
    name
}

/// A state table and one queue named as CloudFormation names a stack's resources
/// (`<stack>-StateTable-…`, `<stack>-TenantRunQueue-…`), and a queue of another stack whose name
/// starts with this one's: the table's name, the stack's queue's URL.
pub async fn fresh_stack() -> (String, String) {
    let stack = format!("dearsync-stack-{}", dearsync_core::memory::new_token());
    let table = format!("{stack}-StateTable-T1");
    crate::create_table(&dynamodb(), &table)
        .await
        .expect("create a state table on the emulator");
    let url = sqs()
        .create_queue()
        .queue_name(format!("{stack}-TenantRunQueue-Q1"))
        .send()
        .await
        .expect("create a queue on the emulator")
        .queue_url()
        .expect("the emulator answers the queue's URL")
        .to_owned();
    // Another stack whose name only starts with this one's: not this stack's queue.
    sqs()
        .create_queue()
        .queue_name(format!("{stack}-staging-TenantRunQueue-Q2"))
        .send()
        .await
        .expect("create a queue on the emulator");
    (table, url)
}

/// An SQS client on the emulator.
pub fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&sdk_config())
}

/// A fresh, empty queue with a unique name; its URL.
pub async fn fresh_queue() -> String {
    let name = format!("dearsync-test-{}", dearsync_core::memory::new_token());
    sqs()
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("create a queue on the emulator")
        .queue_url()
        .expect("the emulator answers the queue's URL")
        .to_owned()
}

/// Receives what the queue holds now (up to ten messages), as SQS hands them to Lambda: the
/// records of an SQS event.
pub async fn receive_as_event(url: &str) -> serde_json::Value {
    let answer = sqs()
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .send()
        .await
        .expect("receive from the emulator");
    let records: Vec<serde_json::Value> = answer
        .messages()
        .iter()
        .map(|m| {
            serde_json::json!({
                "messageId": m.message_id(), "receiptHandle": m.receipt_handle(),
                "body": m.body(), "eventSource": "aws:sqs", "awsRegion": "us-east-1",
            })
        })
        .collect();
    serde_json::json!({ "Records": records })
}

/// The lanes of `account`'s rate bucket in `table`, as stored (none when it was never written):
/// which lanes have been served lately.
pub async fn bucket_lanes(table: &str, account: &str) -> dearsync_core::state::LaneState {
    use aws_sdk_dynamodb::types::AttributeValue;
    let out = dynamodb()
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(format!("A#{account}")))
        .key("sk", AttributeValue::S("BUCKET".to_owned()))
        .consistent_read(true)
        .send()
        .await
        .expect("read the rate bucket");
    let text = out
        .item()
        .and_then(|item| item.get("lanes"))
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_default();
    dearsync_core::state::LaneState::decode(&text).expect("a readable lanes attribute")
}
