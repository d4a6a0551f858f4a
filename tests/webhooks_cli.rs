//! `dearsync webhooks register|list|delete` against the DEAR simulator, as an operator runs them.

use std::process::{Command, Output};

use dear_sim::SimServer;
use dear_sim::seed::SeedSpec;

const SECRET: &str = "inbound-secret-never-printed";

fn dearsync(sim: &SimServer, dir: &std::path::Path, secret: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dearsync"));
    cmd.args(args)
        .current_dir(dir)
        .env("DEAR_BASE_URL", sim.base_url())
        .env("DEAR_ACCOUNT_ID", dear_sim::DEFAULT_ACCOUNT_ID)
        .env("DEAR_API_KEY", dear_sim::DEFAULT_API_KEY)
        .env_remove("DEARSYNC_STATE_DIR")
        .env_remove("DEARSYNC_CONFIG")
        .env_remove("DEARSYNC_INBOUND_SECRET");
    if let Some(s) = secret {
        cmd.env("DEARSYNC_INBOUND_SECRET", s);
    }
    cmd.output().expect("run dearsync")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A subscription as the simulator holds it: event type, URL, headers.
type Subscription = (String, String, Vec<(String, String)>);

/// Every subscription in the simulator.
fn subscriptions(sim: &SimServer) -> Vec<Subscription> {
    sim.sim
        .with_data(dear_sim::DEFAULT_ACCOUNT_ID, |d| {
            d.webhooks
                .iter()
                .map(|w| (w.event_type.clone(), w.url.clone(), w.headers.clone()))
                .collect()
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_registered_once_listed_without_secrets_and_deleted() {
    let spec = SeedSpec {
        sales: 5,
        products: 5,
        ..Default::default()
    };
    let sim = dear_sim::start_seeded(dear_sim::SimConfig::default(), &spec)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("acme.toml"),
        "[order_download]\nsale_status = \"PICKED\"\n",
    )
    .unwrap();
    let url = "https://abc123.lambda-url.us-east-1.on.aws/";
    let register = [
        "webhooks",
        "register",
        "--url",
        url,
        "--tenant",
        "acme",
        "--config",
        "acme.toml",
    ];
    let target = "https://abc123.lambda-url.us-east-1.on.aws/dear/acme";

    // Without the tenant's inbound secret the function would refuse every delivery: refused here.
    let out = dearsync(&sim, dir.path(), None, &register);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("DEARSYNC_INBOUND_SECRET"),
        "{}",
        text(&out)
    );
    assert!(subscriptions(&sim).is_empty());

    // The settings' status picks the event; the secret travels as a header.
    let out = dearsync(&sim, dir.path(), Some(SECRET), &register);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("created"), "{}", text(&out));
    let subs = subscriptions(&sim);
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].0, "Sale/PickAuthorised");
    assert_eq!(subs[0].1, target);
    assert_eq!(
        subs[0].2,
        vec![("x-dearsync-secret".to_owned(), SECRET.to_owned())]
    );

    // Registering again updates (a rotated secret) rather than adding a second subscription.
    let out = dearsync(&sim, dir.path(), Some("rotated-secret"), &register);
    assert!(text(&out).contains("updated"), "{}", text(&out));
    let subs = subscriptions(&sim);
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].2[0].1, "rotated-secret");

    // Explicit events.
    let out = dearsync(
        &sim,
        dir.path(),
        Some(SECRET),
        &[
            "webhooks",
            "register",
            "--url",
            url,
            "--tenant",
            "acme",
            "--event",
            "Sale/OrderAuthorised",
            "--event",
            "Sale/Voided",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(subscriptions(&sim).len(), 3);

    // http is refused except to localhost.
    let out = dearsync(
        &sim,
        dir.path(),
        Some(SECRET),
        &[
            "webhooks",
            "register",
            "--url",
            "http://example.com/",
            "--tenant",
            "acme",
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("https"), "{}", text(&out));

    let out = dearsync(&sim, dir.path(), None, &["webhooks", "list"]);
    assert!(out.status.success(), "{}", text(&out));
    let listing = text(&out);
    assert_eq!(listing.matches(target).count(), 3, "{listing}");
    assert!(!listing.contains(SECRET) && !listing.contains("rotated-secret"));

    let out = dearsync(
        &sim,
        dir.path(),
        None,
        &["webhooks", "delete", "--url", target],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).matches("deleted").count(), 3);
    assert!(subscriptions(&sim).is_empty());
    let out = dearsync(
        &sim,
        dir.path(),
        None,
        &["webhooks", "delete", "--url", target],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("no webhook delivers to"));
}
