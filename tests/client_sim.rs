//! The DEAR client against the DEAR simulator, over HTTP on 127.0.0.1.

use std::collections::HashSet;
use std::time::Duration;

use dear_client::*;
use dear_sim::seed::SeedSpec;
use dear_sim::{Fault, FaultRule, SimConfig, SimServer};
use futures::TryStreamExt;
use rust_decimal::Decimal;

const ACCOUNT: &str = dear_sim::DEFAULT_ACCOUNT_ID;

async fn sim(sales: usize, config: SimConfig) -> SimServer {
    let spec = SeedSpec {
        seed: 42,
        sales,
        products: 60,
        ..Default::default()
    };
    dear_sim::start_seeded(config, &spec)
        .await
        .expect("simulator starts")
}

fn unlimited() -> SimConfig {
    SimConfig {
        rate_limit: 0,
        hang_ms: 3_000,
        ..Default::default()
    }
}

fn client_for(server: &SimServer, key: &str) -> DearClient {
    let mut config = DearConfig::new(ACCOUNT, ApiKey::new(key))
        .with_base_url(&server.base_url())
        .expect("valid URL");
    config.calls_per_minute = 0;
    config.retry = RetryPolicy {
        max_read_retries: 3,
        max_throttle_retries: 3,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        throttle_pause: Duration::from_millis(50),
        request_timeout: Duration::from_millis(1_000),
    };
    DearClient::new(config).expect("valid config")
}

fn client(server: &SimServer) -> DearClient {
    client_for(server, dear_sim::DEFAULT_API_KEY)
}

/// Every row of every page of a list.
async fn rows<T>(pages: impl futures::Stream<Item = Result<ListPage<T>, DearError>>) -> Vec<T> {
    let pages: Vec<ListPage<T>> = pages.try_collect().await.expect("list pages");
    pages.into_iter().flat_map(|p| p.items).collect()
}

async fn all_sales(c: &DearClient, q: &SaleListQuery, limit: u32) -> Vec<SaleListItem> {
    rows(c.sale_list(q, limit)).await
}

#[tokio::test]
async fn sale_list_pages_through_everything_once_and_filters() {
    let server = sim(2_000, unlimited()).await;
    let c = client(&server);
    let all = all_sales(&c, &SaleListQuery::default(), 1000).await;
    assert_eq!(all.len(), 2_000);
    let ids: HashSet<_> = all.iter().map(|s| s.sale_id).collect();
    assert_eq!(ids.len(), 2_000, "no duplicates across pages");
    // Not ordered by Updated.
    let updated: Vec<_> = all.iter().map(|s| s.updated.expect("Updated")).collect();
    assert!(updated.windows(2).any(|w| w[0] > w[1]));
    // Small pages give the same set.
    let small = all_sales(&c, &SaleListQuery::default(), 137).await;
    assert_eq!(small.iter().map(|s| s.sale_id).collect::<HashSet<_>>(), ids);

    let picked_q = SaleListQuery {
        status: Some(SaleStatus::Picked),
        ..Default::default()
    };
    let picked = all_sales(&c, &picked_q, 1000).await;
    assert!(!picked.is_empty());
    assert!(
        picked
            .iter()
            .all(|s| s.status == SaleStatus::Picked && s.sale_type == SaleType::Simple)
    );
    let want = all
        .iter()
        .filter(|s| s.status == SaleStatus::Picked)
        .count();
    assert_eq!(picked.len(), want);

    // Advanced sales never show PICKED in Status; the combined status finds them.
    let combined_q = SaleListQuery {
        combined_pick_status: Some("PICKED".into()),
        ..Default::default()
    };
    let combined = all_sales(&c, &combined_q, 1000).await;
    assert!(
        combined
            .iter()
            .any(|s| s.sale_type == SaleType::Advanced && s.status != SaleStatus::Picked)
    );

    let cutoff = updated.iter().copied().max().expect("some");
    let since_q = SaleListQuery {
        updated_since: Some(cutoff),
        ..Default::default()
    };
    assert!(
        all_sales(&c, &since_q, 1000).await.is_empty(),
        "UpdatedSince is strictly after"
    );
}

#[tokio::test]
async fn sale_detail_reads_every_part() {
    let server = sim(300, unlimited()).await;
    let c = client(&server);
    let rows = all_sales(
        &c,
        &SaleListQuery {
            status: Some(SaleStatus::Completed),
            ..Default::default()
        },
        1000,
    )
    .await;
    let row = rows.first().expect("a completed sale");
    let sale = c.sale(row.sale_id).await.expect("sale");
    assert_eq!(sale.id, row.sale_id);
    assert_eq!(sale.order_number(), row.order_number.as_deref());
    assert!(!sale.order.as_ref().expect("order").lines.is_empty());
    assert_eq!(sale.fulfilments.len(), 1);
    assert_eq!(
        sale.fulfilments[0].task_id, sale.id,
        "a simple sale's first TaskID is its SaleID"
    );
    assert_eq!(sale.fulfilments[0].ship.status, StageStatus::Authorised);
    assert!(!sale.invoices.is_empty());
    assert!(sale.additional_attribute(1).is_some());
    let shipping = sale.shipping_address.expect("shipping address");
    assert!(shipping.line1.is_some());
    // Unknown ID → DEAR's 400 Error Model.
    let err = c.sale(uuid::Uuid::new_v4()).await.unwrap_err();
    assert!(
        matches!(err, DearError::Rejected { status: 400, .. }),
        "{err}"
    );
}

fn line(
    sku: &str,
    qty: Decimal,
    location: &str,
    r#box: Option<&str>,
    batch: Option<String>,
) -> FulfilmentLine {
    FulfilmentLine {
        sku: Some(sku.into()),
        quantity: qty,
        location: Some(location.into()),
        r#box: r#box.map(Into::into),
        batch_sn: batch,
        ..Default::default()
    }
}

#[tokio::test]
async fn fulfilment_pick_pack_ship_with_every_rejection() {
    let server = sim(300, unlimited()).await;
    let c = client(&server);
    let ordered = all_sales(
        &c,
        &SaleListQuery {
            status: Some(SaleStatus::Ordered),
            ..Default::default()
        },
        1000,
    )
    .await;
    // A sale with two or more units of a non-batch product, to ship in two boxes.
    let mut chosen = None;
    for row in &ordered {
        let sale = c.sale(row.sale_id).await.unwrap();
        let products: Vec<Product> = rows(c.products(&ProductQuery::default(), 1000)).await;
        let lines = sale.order.clone().unwrap().lines;
        let simple = lines.iter().all(|l| {
            products
                .iter()
                .any(|p| Some(p.id) == l.product_id && !p.is_batch_tracked())
        });
        if simple && sale.sale_type == SaleType::Simple {
            chosen = Some(sale);
            break;
        }
    }
    let sale = chosen.expect("an ORDERED simple sale without batch products");
    let task = sale.fulfilments[0].task_id;
    let location = sale.location.clone().unwrap();
    let lines = sale.order.clone().unwrap().lines;

    // Pack before pick → rejected.
    let pack_first = PickPack {
        task_id: Some(task),
        status: StageStatus::Authorised,
        lines: vec![],
        ..Default::default()
    };
    let err = c.write_pack(&pack_first, false).await.unwrap_err();
    assert!(
        err.rejection_message().unwrap().contains("Pick status"),
        "{err}"
    );
    // Ship before pack → rejected.
    let ship_first = Ship {
        task_id: Some(task),
        status: StageStatus::Authorised,
        ..Default::default()
    };
    let err = c.write_ship(&ship_first, false).await.unwrap_err();
    assert!(
        err.rejection_message().unwrap().contains("PackStatus"),
        "{err}"
    );
    // Picking more than ordered → rejected.
    let too_much: Vec<_> = lines
        .iter()
        .map(|l| {
            line(
                l.sku.as_deref().unwrap(),
                l.quantity + Decimal::ONE,
                &location,
                None,
                None,
            )
        })
        .collect();
    let err = c
        .write_pick(
            &PickPack {
                task_id: Some(task),
                status: StageStatus::Authorised,
                lines: too_much,
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap_err();
    assert!(
        err.rejection_message().unwrap().contains("exceeds"),
        "{err}"
    );
    // A pick line without a location → rejected.
    let mut no_loc = line(
        lines[0].sku.as_deref().unwrap(),
        Decimal::ONE,
        &location,
        None,
        None,
    );
    no_loc.location = None;
    let err = c
        .write_pick(
            &PickPack {
                task_id: Some(task),
                status: StageStatus::Draft,
                lines: vec![no_loc],
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap_err();
    assert!(
        err.rejection_message().unwrap().contains("Location"),
        "{err}"
    );

    // The real pick.
    let pick_lines: Vec<_> = lines
        .iter()
        .map(|l| line(l.sku.as_deref().unwrap(), l.quantity, &location, None, None))
        .collect();
    let pick = c
        .write_pick(
            &PickPack {
                task_id: Some(task),
                status: StageStatus::Authorised,
                lines: pick_lines.clone(),
                ..Default::default()
            },
            false,
        )
        .await
        .expect("pick");
    assert_eq!(pick.status, StageStatus::Authorised);
    // Repeating an authorised pick → rejected.
    let err = c
        .write_pick(
            &PickPack {
                task_id: Some(task),
                status: StageStatus::Authorised,
                lines: pick_lines.clone(),
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap_err();
    assert!(
        err.rejection_message()
            .unwrap()
            .contains("Pick status is AUTHORISED"),
        "{err}"
    );
    let after_pick = c.sale(sale.id).await.unwrap();
    assert_eq!(after_pick.status, SaleStatus::Picked);

    // Pack: first line in Box 1, the rest in Box 2 (when there are more lines).
    let pack_lines: Vec<_> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let b = if i == 0 { "Box 1" } else { "Box 2" };
            line(
                l.sku.as_deref().unwrap(),
                l.quantity,
                &location,
                Some(b),
                None,
            )
        })
        .collect();
    let pack = c
        .write_pack(
            &PickPack {
                task_id: Some(task),
                status: StageStatus::Authorised,
                lines: pack_lines,
                ..Default::default()
            },
            false,
        )
        .await
        .expect("pack");
    assert_eq!(pack.status, StageStatus::Authorised);
    assert_eq!(c.sale(sale.id).await.unwrap().status, SaleStatus::Packed);

    let ship_line = |b: &str, tracking: &str| ShipLine {
        shipment_date: Some(DearDateTime::now()),
        carrier: Some("UPS".into()),
        r#box: Some(b.into()),
        tracking_number: Some(tracking.into()),
        is_shipped: true,
        ..Default::default()
    };
    // An unpacked box → rejected.
    let err = c
        .write_ship(
            &Ship {
                task_id: Some(task),
                status: StageStatus::Authorised,
                lines: vec![ship_line("Box 9", "X")],
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap_err();
    assert!(
        err.rejection_message().unwrap().contains("not packed"),
        "{err}"
    );

    let two_boxes = lines.len() > 1;
    let shipped = c
        .write_ship(
            &Ship {
                task_id: Some(task),
                status: StageStatus::Authorised,
                lines: vec![ship_line("Box 1", "1Z-A")],
                ..Default::default()
            },
            false,
        )
        .await
        .expect("ship");
    if two_boxes {
        assert_eq!(
            shipped.status,
            StageStatus::PartiallyAuthorised,
            "one of two boxes shipped"
        );
        // Further ship writes are refused once partially authorised.
        let err = c
            .write_ship(
                &Ship {
                    task_id: Some(task),
                    status: StageStatus::Authorised,
                    lines: vec![ship_line("Box 2", "1Z-B")],
                    ..Default::default()
                },
                false,
            )
            .await
            .unwrap_err();
        assert!(
            err.rejection_message().unwrap().contains("ShipmentStatus"),
            "{err}"
        );
    } else {
        assert_eq!(shipped.status, StageStatus::Authorised);
    }
    assert_eq!(
        shipped.lines[0].r#box.as_deref(),
        Some("Box 1"),
        "Boxes read back into box"
    );
    assert!(shipped.lines[0].id.is_some());

    // Late tracking on the authorised shipment.
    let mut edit = Ship {
        task_id: Some(task),
        status: shipped.status.clone(),
        add_tracking_numbers: Some(true),
        lines: vec![ship_line("Box 1", "1Z-NEW")],
        ..Default::default()
    };
    edit.lines[0].carrier = Some("FedEx".into());
    let edited = c.write_ship(&edit, true).await.expect("tracking edit");
    assert_eq!(edited.lines[0].tracking_number.as_deref(), Some("1Z-NEW"));
    assert_eq!(edited.lines[0].carrier.as_deref(), Some("FedEx"));
    let after = c.sale(sale.id).await.unwrap();
    assert!(after.combined_tracking_numbers.unwrap().contains("1Z-NEW"));
    let want_ship = if two_boxes {
        "PARTIALLY SHIPPED"
    } else {
        "SHIPPED"
    };
    assert_eq!(after.combined_shipping_status.as_deref(), Some(want_ship));
}

#[tokio::test]
async fn second_fulfilment_makes_the_sale_advanced() {
    let server = sim(300, unlimited()).await;
    let c = client(&server);
    let ordered = all_sales(
        &c,
        &SaleListQuery {
            status: Some(SaleStatus::Ordered),
            ..Default::default()
        },
        1000,
    )
    .await;
    let sale = c.sale(ordered[0].sale_id).await.unwrap();
    let task = sale.fulfilments[0].task_id;
    // Not while the first pick is not authorised.
    let err = c.create_fulfilment(sale.id).await.unwrap_err();
    assert!(
        err.rejection_message()
            .unwrap()
            .contains("non AUTHORISED Pick"),
        "{err}"
    );
    let auto = PickPack {
        task_id: Some(task),
        auto_pick_mode: Some("AUTOPICK".into()),
        ..Default::default()
    };
    c.write_pick(&auto, false).await.expect("autopick");
    let all = c
        .create_fulfilment(sale.id)
        .await
        .expect("second fulfilment");
    assert_eq!(all.fulfilments.len(), 2);
    assert_ne!(all.fulfilments[1].task_id, sale.id);
    assert_eq!(c.sale(sale.id).await.unwrap().sale_type, SaleType::Advanced);
    // Undo of an authorised fulfilment is a no-op that answers 200.
    c.delete_fulfilment(task, false)
        .await
        .expect("no-op delete");
    assert_eq!(c.pick(task).await.unwrap().status, StageStatus::Authorised);
}

#[tokio::test]
async fn stock_adjustment_sets_absolute_targets() {
    // DEAR's documented reading: UnitCost is needed only where the product has no stock (the
    // reference's, on every line, is checked at the end).
    let docs_reading = SimConfig {
        unit_cost_on_every_line: false,
        ..unlimited()
    };
    let server = sim(50, docs_reading).await;
    let c = client(&server);
    let q = AvailabilityQuery {
        location: Some("Main Warehouse".into()),
        ..Default::default()
    };
    let stock: Vec<ProductAvailability> = rows(c.product_availability(&q, 1000)).await;
    let row = stock
        .iter()
        .find(|r| r.batch.is_none() && r.on_hand > Decimal::ZERO)
        .expect("a stocked FIFO row");
    let target = row.on_hand + Decimal::new(125, 1); // +12.5
    let adj = StockAdjustmentWrite {
        effective_date: Some(DearDateTime::now()),
        status: AdjustmentStatus::Completed,
        reference: Some("test-run-1".into()),
        update_on_hand: Some(true),
        lines: vec![StockAdjustmentLineWrite {
            sku: row.sku.clone(),
            quantity: target,
            location: Some("Main Warehouse".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let done = c.create_stock_adjustment(&adj).await.expect("adjustment");
    assert_eq!(done.status, AdjustmentStatus::Completed);
    assert!(done.stocktake_number.unwrap().starts_with("ST-"));
    assert_eq!(done.existing_stock_lines.len(), 1);
    assert_eq!(done.existing_stock_lines[0].adjustment, target);
    let q1 = AvailabilityQuery {
        id: Some(row.id),
        location: Some("Main Warehouse".into()),
        ..Default::default()
    };
    let now: Vec<ListPage<ProductAvailability>> =
        c.product_availability(&q1, 10).try_collect().await.unwrap();
    assert_eq!(
        now[0].items[0].on_hand, target,
        "exact decimal target applied"
    );

    // A product with no stock there needs a unit cost.
    let east = AvailabilityQuery {
        location: Some("West Warehouse".into()),
        ..Default::default()
    };
    let stocked_west: HashSet<String> = rows(c.product_availability(&east, 1000))
        .await
        .into_iter()
        .filter_map(|r| r.sku)
        .collect();
    let products: Vec<Product> = rows(c.products(&ProductQuery::default(), 1000)).await;
    let empty = products
        .iter()
        .find(|p| !p.is_batch_tracked() && !stocked_west.contains(p.sku.as_deref().unwrap()))
        .expect("a product with no West stock");
    let mut zero = adj.clone();
    zero.lines = vec![StockAdjustmentLineWrite {
        sku: empty.sku.clone(),
        quantity: Decimal::from(7),
        location: Some("West Warehouse".into()),
        ..Default::default()
    }];
    let err = c.create_stock_adjustment(&zero).await.unwrap_err();
    assert!(
        err.rejection_message().unwrap().contains("UnitCost"),
        "{err}"
    );
    zero.lines[0].unit_cost = Some(Decimal::new(325, 2));
    let ok = c
        .create_stock_adjustment(&zero)
        .await
        .expect("with unit cost");
    assert_eq!(ok.new_stock_lines.len(), 1);
    assert_eq!(ok.new_stock_lines[0].unit_cost, Some(Decimal::new(325, 2)));
    // Unknown SKU → rejected, nothing applied.
    zero.lines[0].sku = Some("NO-SUCH-SKU".into());
    let err = c.create_stock_adjustment(&zero).await.unwrap_err();
    assert!(
        err.rejection_message().unwrap().contains("NO-SUCH-SKU"),
        "{err}"
    );
    // The reference's reading (the simulator's default): a line without UnitCost is refused even
    // for stock the location holds, as reported live.
    let strict = sim(50, unlimited()).await;
    let err = client(&strict)
        .create_stock_adjustment(&adj)
        .await
        .unwrap_err();
    assert_eq!(
        err.rejection_message(),
        Some("Line 1: 'UnitCost' attribute is required."),
        "{err}"
    );
}

#[tokio::test]
async fn reference_endpoints_and_webhooks() {
    let server = sim(10, unlimited()).await;
    let c = client(&server);
    assert!(c.me().await.unwrap().company.unwrap().contains("Simulated"));
    let tiers = c.price_tiers().await.unwrap();
    assert_eq!(tiers.len(), 10);
    assert_eq!(tiers[1].name.as_deref(), Some("Wholesale"));
    let locations: Vec<ListPage<Location>> = c.locations(None, 100).try_collect().await.unwrap();
    assert_eq!(locations[0].items.len(), 3);
    assert!(
        locations[0].items[0]
            .bins
            .as_ref()
            .is_some_and(|b| b.len() == 2)
    );
    let created = c.create_carrier("DHL Express").await.unwrap();
    assert_eq!(created.description.as_deref(), Some("DHL Express"));
    let carriers: Vec<ListPage<Carrier>> = c.carriers(100).try_collect().await.unwrap();
    assert!(
        carriers[0]
            .items
            .iter()
            .any(|x| x.carrier_id == created.carrier_id)
    );

    let hook = Webhook {
        event_type: "Sale/OrderAuthorised".into(),
        is_active: true,
        external_url: "http://127.0.0.1:9/hook".into(),
        external_authorization_type: "noauth".into(),
        external_headers: vec![WebhookHeader {
            key: "x-secret".into(),
            value: "s3cr3t".into(),
        }],
        ..Default::default()
    };
    let made = c.create_webhook(&hook).await.unwrap();
    assert!(made.id.is_some());
    assert!(
        !format!("{made:?}").contains("s3cr3t"),
        "Debug hides header values"
    );
    assert_eq!(c.webhooks().await.unwrap().len(), 1);
    for _ in 0..4 {
        c.create_webhook(&hook).await.unwrap();
    }
    let err = c.create_webhook(&hook).await.unwrap_err();
    assert!(
        err.rejection_message().unwrap().contains("Maximum of 5"),
        "{err}"
    );
    c.delete_webhook(made.id.unwrap()).await.unwrap();
    assert_eq!(c.webhooks().await.unwrap().len(), 4);
}

#[tokio::test]
async fn bad_credentials_and_unknown_paths_are_clear_errors() {
    let server = sim(5, unlimited()).await;
    let err = client_for(&server, "wrong-key").me().await.unwrap_err();
    assert!(matches!(err, DearError::Credentials { .. }), "{err}");
    assert!(err.to_string().contains("Account ID"));
    assert!(
        !err.to_string().contains("wrong-key"),
        "the key never appears in errors"
    );

    // An HTML page with 200 (a proxy's page; DEAR's own for unknown paths): retried as an
    // outage, and when it persists the error names the page.
    server.sim.add_fault(
        ACCOUNT,
        FaultRule {
            route: "me".into(),
            sequence: [Fault::Html200].into(),
            ..Default::default()
        },
    );
    client(&server).me().await.expect("one page is retried");
    server.sim.add_fault(
        ACCOUNT,
        FaultRule {
            route: "me".into(),
            probability: 1.0,
            fault: Some(Fault::Html200),
            ..Default::default()
        },
    );
    let err = client(&server).me().await.unwrap_err();
    assert!(matches!(err, DearError::Unavailable { .. }), "{err}");
    assert!(
        err.to_string().contains("GET me") && err.to_string().contains("non-JSON body"),
        "{err}"
    );
}

#[tokio::test]
async fn reads_are_retried_through_faults() {
    let server = sim(20, unlimited()).await;
    let c = client(&server);
    let faults = [
        Fault::Status(500),
        Fault::Drop,
        Fault::ErrorModel200(500),
        Fault::Status(503),
        Fault::Status(429),
    ];
    server.sim.add_fault(
        ACCOUNT,
        FaultRule {
            route: "me".into(),
            sequence: faults.into(),
            ..Default::default()
        },
    );
    c.me().await.expect("read succeeds after faults");
    let calls = server.sim.calls(ACCOUNT).unwrap();
    assert_eq!(calls.by_route["GET me"], 6);
    // The client counts what the simulator saw.
    let stats = c.stats();
    assert_eq!(stats.calls, 6);
    assert_eq!(stats.throttled, 2);
    assert_eq!(stats.failed_attempts, 3);

    server.sim.add_fault(
        ACCOUNT,
        FaultRule {
            route: "me".into(),
            sequence: [Fault::Timeout].into(),
            ..Default::default()
        },
    );
    c.me().await.expect("read succeeds after a timeout");

    // Persistent failure → Unavailable after the retry budget.
    server.sim.clear_faults(ACCOUNT);
    server.sim.add_fault(
        ACCOUNT,
        FaultRule {
            route: "me".into(),
            probability: 1.0,
            fault: Some(Fault::Status(500)),
            ..Default::default()
        },
    );
    let err = c.me().await.unwrap_err();
    assert!(
        matches!(err, DearError::Unavailable { attempts: 4, .. }),
        "{err}"
    );
    // Persistent throttling → Throttled.
    server.sim.clear_faults(ACCOUNT);
    server.sim.add_fault(
        ACCOUNT,
        FaultRule {
            route: "me".into(),
            probability: 1.0,
            fault: Some(Fault::Status(503)),
            ..Default::default()
        },
    );
    let err = c.me().await.unwrap_err();
    assert!(
        matches!(err, DearError::Throttled { status: 503, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn writes_are_never_repeated_blindly() {
    let server = sim(20, unlimited()).await;
    let c = client(&server);
    // The carrier is created, then the answer times out: the client says the outcome is unknown.
    server.sim.add_fault(
        ACCOUNT,
        FaultRule {
            route: "ref/carrier".into(),
            method: Some("POST".into()),
            sequence: [Fault::Timeout].into(),
            after_apply: true,
            ..Default::default()
        },
    );
    let err = c.create_carrier("Applied Anyway").await.unwrap_err();
    assert!(err.is_outcome_unknown(), "{err}");
    assert_eq!(
        server.sim.calls(ACCOUNT).unwrap().by_route["POST ref/carrier"],
        1,
        "not retried"
    );
    let carriers: Vec<ListPage<Carrier>> = c.carriers(100).try_collect().await.unwrap();
    assert!(
        carriers[0]
            .items
            .iter()
            .any(|x| x.description.as_deref() == Some("Applied Anyway"))
    );

    // A 500 on a write: unknown as well, one attempt.
    server.sim.add_fault(
        ACCOUNT,
        FaultRule {
            route: "ref/carrier".into(),
            method: Some("POST".into()),
            sequence: [Fault::Status(500)].into(),
            ..Default::default()
        },
    );
    assert!(
        c.create_carrier("Other")
            .await
            .unwrap_err()
            .is_outcome_unknown()
    );
    assert_eq!(
        server.sim.calls(ACCOUNT).unwrap().by_route["POST ref/carrier"],
        2
    );

    // A throttled write may have been applied (a 503 from in front of DEAR, after it): not resent,
    // its outcome is unknown, whichever reading holds.
    for applied in [false, true] {
        let name = format!("Throttled {applied}");
        server.sim.add_fault(
            ACCOUNT,
            FaultRule {
                route: "ref/carrier".into(),
                method: Some("POST".into()),
                sequence: [Fault::Status(429)].into(),
                after_apply: applied,
                ..Default::default()
            },
        );
        let before = server.sim.calls(ACCOUNT).unwrap().by_route["POST ref/carrier"];
        let err = c.create_carrier(&name).await.unwrap_err();
        assert!(err.is_outcome_unknown(), "{err}");
        assert!(err.to_string().contains("throttled"), "{err}");
        assert_eq!(
            server.sim.calls(ACCOUNT).unwrap().by_route["POST ref/carrier"],
            before + 1,
            "not resent"
        );
        let carriers: Vec<ListPage<Carrier>> = c.carriers(100).try_collect().await.unwrap();
        let n = carriers[0]
            .items
            .iter()
            .filter(|x| x.description.as_deref() == Some(name.as_str()))
            .count();
        assert_eq!(n, usize::from(applied), "{name}");
    }

    // Error Model with 200 on a write is a rejection, not a success.
    server.sim.add_fault(
        ACCOUNT,
        FaultRule {
            route: "ref/carrier".into(),
            method: Some("POST".into()),
            sequence: [Fault::ErrorModel200(400)].into(),
            ..Default::default()
        },
    );
    let err = c.create_carrier("Rejected").await.unwrap_err();
    assert!(
        matches!(
            err,
            DearError::Rejected {
                status: 200,
                code: 400,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_write_over_the_limit_has_an_unknown_outcome_under_both_readings_of_throttling() {
    // The docs: a throttled call is not processed. The other reading (the simulator's switch): a
    // limiter or gateway in front of DEAR answers 429 after the write was applied.
    for applied in [false, true] {
        let server = sim(
            5,
            SimConfig {
                rate_limit: 1,
                throttled_writes_applied: applied,
                ..unlimited()
            },
        )
        .await;
        let c = client(&server);
        c.create_carrier("Within")
            .await
            .expect("the first call passes");
        let err = c.create_carrier("Over").await.unwrap_err();
        assert!(err.is_outcome_unknown(), "{err}");
        let calls = server.sim.calls(ACCOUNT).unwrap();
        assert_eq!(calls.by_route["POST ref/carrier"], 2, "not resent");
        assert_eq!(calls.throttled, 1);
        let over = server
            .sim
            .with_data(ACCOUNT, |d| {
                d.carriers.iter().filter(|(_, name)| name == "Over").count()
            })
            .unwrap();
        assert_eq!(over, usize::from(applied), "applied: {applied}");
    }
}

#[tokio::test]
async fn the_budget_keeps_the_client_under_the_simulators_limit() {
    // Simulator allows 12 per minute; the client's budget 10: 10 calls pass with no throttling.
    let server = sim(
        5,
        SimConfig {
            rate_limit: 12,
            ..unlimited()
        },
    )
    .await;
    let mut config = DearConfig::new(ACCOUNT, ApiKey::new(dear_sim::DEFAULT_API_KEY))
        .with_base_url(&server.base_url())
        .unwrap();
    config.calls_per_minute = 10;
    let c = DearClient::new(config).unwrap();
    for _ in 0..10 {
        c.me().await.unwrap();
    }
    let stats = server.sim.calls(ACCOUNT).unwrap();
    assert_eq!(stats.throttled, 0);
    assert_eq!(stats.max_in_window, 10);
    // The 11th call must wait for the window: it does not complete within a second.
    let next = tokio::time::timeout(Duration::from_secs(1), c.me()).await;
    assert!(next.is_err(), "the budget held the 11th call back");
    assert_eq!(server.sim.calls(ACCOUNT).unwrap().total, 10);

    // Without a budget the simulator throttles the 13th call.
    let raw = client(&server);
    let mut throttled = false;
    for _ in 0..3 {
        if let Err(DearError::Throttled { .. }) = raw.me().await {
            throttled = true;
        }
    }
    assert!(throttled || server.sim.calls(ACCOUNT).unwrap().throttled > 0);
}

#[tokio::test]
async fn webhooks_are_delivered_retried_and_deactivated() {
    use std::sync::{Arc, Mutex};
    let server = sim(
        200,
        SimConfig {
            webhook_time_scale: 0.0001,
            ..unlimited()
        },
    )
    .await;
    let c = client(&server);
    // A receiver on 127.0.0.1 that fails twice, then accepts.
    let hits: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    let seen = hits.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, axum::Json(v): axum::Json<serde_json::Value>| {
                let seen = seen.clone();
                async move {
                    let secret = headers
                        .get("x-secret")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let mut s = seen.lock().unwrap();
                    s.push((secret, v));
                    if s.len() <= 2 {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let hook = |url: String, ty: &str| Webhook {
        event_type: ty.into(),
        is_active: true,
        external_url: url,
        external_authorization_type: "noauth".into(),
        external_headers: vec![WebhookHeader {
            key: "x-secret".into(),
            value: "s3cr3t".into(),
        }],
        ..Default::default()
    };
    c.create_webhook(&hook(format!("http://{addr}/hook"), "Sale/OrderAuthorised"))
        .await
        .unwrap();
    // Nothing listens on this one: six failures deactivate it.
    let dead = c
        .create_webhook(&hook(
            "http://127.0.0.1:9/hook".into(),
            "Sale/OrderAuthorised",
        ))
        .await
        .unwrap();

    let ordering = all_sales(
        &c,
        &SaleListQuery {
            status: Some(SaleStatus::Ordering),
            ..Default::default()
        },
        1000,
    )
    .await;
    let target = ordering[0].sale_id;
    let edit = dear_sim::SaleEdit {
        authorise_order: true,
        ..Default::default()
    };
    server.sim.edit_sale(ACCOUNT, target, &edit).unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let hooks = c.webhooks().await.unwrap();
        let dead_now = hooks.iter().find(|h| h.id == dead.id).unwrap();
        if hits.lock().unwrap().len() >= 3 && !dead_now.is_active {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hits = hits.lock().unwrap().clone();
    assert_eq!(
        hits.len(),
        3,
        "two failures, then one success, then no more"
    );
    assert_eq!(hits[2].0, "s3cr3t");
    let id: uuid::Uuid = hits[2].1["SaleID"].as_str().unwrap().parse().unwrap();
    assert_eq!(id, target);
    assert_eq!(hits[2].1["EventType"], "Sale/OrderAuthorised");
    let failed = server
        .sim
        .deliveries()
        .iter()
        .filter(|d| Some(d.webhook_id) == dead.id)
        .count();
    assert_eq!(failed, 6);
    // The sale moved on in DEAR and its Updated changed.
    let after = c.sale(target).await.unwrap();
    assert!(matches!(
        after.status,
        SaleStatus::Ordered | SaleStatus::Backordered
    ));
    assert!(after.last_modified_on.unwrap() > ordering[0].updated.unwrap());
}

#[tokio::test]
async fn stock_adjustment_draft_complete_list_and_void() {
    let server = sim(30, unlimited()).await;
    let c = client(&server);
    let q = AvailabilityQuery {
        location: Some("East Warehouse".into()),
        ..Default::default()
    };
    let stock: Vec<ProductAvailability> = rows(c.product_availability(&q, 1000)).await;
    let row = stock
        .iter()
        .find(|r| r.batch.is_none() && r.on_hand > Decimal::ZERO)
        .expect("stocked row")
        .clone();
    let before = row.on_hand;
    let mut write = StockAdjustmentWrite {
        effective_date: Some(DearDateTime::now()),
        status: AdjustmentStatus::Draft,
        reference: Some("dear-sync:snap-1".into()),
        update_on_hand: Some(true),
        lines: vec![StockAdjustmentLineWrite {
            product_id: Some(row.id),
            quantity: Decimal::ZERO,
            unit_cost: Some(Decimal::ONE),
            location: Some("East Warehouse".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let draft = c.create_stock_adjustment(&write).await.unwrap();
    assert_eq!(draft.status, AdjustmentStatus::Draft);
    let on_hand = |c: DearClient, id| async move {
        let q = AvailabilityQuery {
            id: Some(id),
            location: Some("East Warehouse".into()),
            ..Default::default()
        };
        let pages: Vec<ListPage<ProductAvailability>> =
            c.product_availability(&q, 10).try_collect().await.unwrap();
        pages
            .into_iter()
            .flat_map(|p| p.items)
            .map(|r| r.on_hand)
            .sum::<Decimal>()
    };
    assert_eq!(
        on_hand(c.clone(), row.id).await,
        before,
        "a DRAFT changes nothing"
    );

    write.task_id = Some(draft.task_id);
    write.status = AdjustmentStatus::Completed;
    let done = c.update_stock_adjustment(&write).await.unwrap();
    assert_eq!(done.status, AdjustmentStatus::Completed);
    assert_eq!(
        done.stocktake_number, draft.stocktake_number,
        "same ST- number"
    );
    assert_eq!(
        on_hand(c.clone(), row.id).await,
        Decimal::ZERO,
        "written off by a zero target"
    );
    assert!(!done.transactions.is_empty());
    // A completed adjustment cannot be edited.
    let err = c.update_stock_adjustment(&write).await.unwrap_err();
    assert!(
        err.rejection_message().unwrap().contains("COMPLETED"),
        "{err}"
    );

    let got = c.stock_adjustment(draft.task_id).await.unwrap();
    assert_eq!(got.reference.as_deref(), Some("dear-sync:snap-1"));
    let listed: Vec<ListPage<StockAdjustmentListItem>> = c
        .stock_adjustment_list(Some(AdjustmentStatus::Completed), 100)
        .try_collect()
        .await
        .unwrap();
    assert!(listed[0].items.iter().any(|a| a.task_id == draft.task_id));

    let voided = c
        .delete_stock_adjustment(draft.task_id, true)
        .await
        .unwrap();
    assert_eq!(voided.status, AdjustmentStatus::Voided);
    assert_eq!(
        on_hand(c.clone(), row.id).await,
        before,
        "voiding reverses the change"
    );
}

#[tokio::test]
async fn stage_reads_and_order_state_rejections() {
    let server = sim(300, unlimited()).await;
    let c = client(&server);
    // A packed simple sale: its stages read back.
    let packed = all_sales(
        &c,
        &SaleListQuery {
            status: Some(SaleStatus::Packed),
            ..Default::default()
        },
        1000,
    )
    .await;
    let sale = c.sale(packed[0].sale_id).await.unwrap();
    let task = sale.fulfilments[0].task_id;
    assert_eq!(c.pick(task).await.unwrap().status, StageStatus::Authorised);
    let pack = c.pack(task).await.unwrap();
    assert_eq!(pack.status, StageStatus::Authorised);
    assert!(
        pack.lines
            .iter()
            .all(|l| l.r#box.is_some() && l.location.is_some())
    );
    let ship = c.ship(task).await.unwrap();
    assert!(ship.shipping_address.is_some());
    let fulfilments = c.fulfilments(sale.id).await.unwrap();
    assert_eq!(fulfilments.fulfilments[0].task_id, task);
    // Packing again once authorised → rejected.
    let again = PickPack {
        task_id: Some(task),
        status: StageStatus::Authorised,
        lines: pack.lines.clone(),
        ..Default::default()
    };
    let err = c.write_pack(&again, false).await.unwrap_err();
    assert!(
        err.rejection_message()
            .unwrap()
            .contains("Pack status is AUTHORISED"),
        "{err}"
    );

    // A sale whose order is only a draft cannot be picked or get another fulfilment.
    let ordering = all_sales(
        &c,
        &SaleListQuery {
            status: Some(SaleStatus::Ordering),
            ..Default::default()
        },
        1000,
    )
    .await;
    let draft = c.sale(ordering[0].sale_id).await.unwrap();
    let err = c.create_fulfilment(draft.id).await.unwrap_err();
    assert!(
        err.rejection_message().unwrap().contains("not AUTHORISED"),
        "{err}"
    );
    // A voided sale neither.
    let voided = all_sales(
        &c,
        &SaleListQuery {
            status: Some(SaleStatus::Voided),
            ..Default::default()
        },
        1000,
    )
    .await;
    let err = c.create_fulfilment(voided[0].sale_id).await.unwrap_err();
    assert!(err.rejection_message().unwrap().contains("VOIDED"), "{err}");
    // An unknown task.
    let err = c.pick(uuid::Uuid::new_v4()).await.unwrap_err();
    assert!(
        err.rejection_message().unwrap().contains("not found"),
        "{err}"
    );
}

#[tokio::test]
async fn a_write_answered_with_a_page_instead_of_json_has_an_unknown_outcome() {
    // A proxy's HTML page with 200 after DEAR applied the write: not a refusal, and not repeated.
    let server = sim(20, unlimited()).await;
    let c = client(&server);
    server.sim.add_fault(
        ACCOUNT,
        FaultRule {
            route: "ref/carrier".into(),
            method: Some("POST".into()),
            sequence: [Fault::Html200].into(),
            after_apply: true,
            ..Default::default()
        },
    );
    let err = c.create_carrier("Behind A Proxy").await.unwrap_err();
    assert!(err.is_outcome_unknown(), "{err}");
    assert!(err.to_string().contains("non-JSON"), "{err}");
    assert_eq!(
        server.sim.calls(ACCOUNT).unwrap().by_route["POST ref/carrier"],
        1,
        "not retried"
    );
    // DEAR's own refusal stays a refusal.
    server.sim.add_fault(
        ACCOUNT,
        FaultRule {
            route: "ref/carrier".into(),
            method: Some("POST".into()),
            sequence: [Fault::ErrorModel200(400)].into(),
            ..Default::default()
        },
    );
    let err = c.create_carrier("Refused").await.unwrap_err();
    assert!(matches!(err, DearError::Rejected { .. }), "{err}");
}

#[tokio::test]
async fn me_reads_its_quantity_places_in_both_formats() {
    // DEAR's reference shows "N2" (a format string); a number is the other reading.
    for as_text in [true, false] {
        let server = sim(
            2,
            SimConfig {
                quantity_places_as_text: as_text,
                ..unlimited()
            },
        )
        .await;
        let me = client(&server).me().await.unwrap();
        assert_eq!(
            me.maximum_decimal_places_in_quantity,
            Some(4),
            "as text: {as_text}"
        );
    }
}

#[tokio::test]
async fn the_error_model_is_read_as_an_array_or_as_one_object() {
    // The reference shows `[{ErrorCode, Exception}]`; one object is reported live. Both are a
    // refusal naming DEAR's message, with any HTTP status, 200 included.
    for as_object in [false, true] {
        let server = sim(
            2,
            SimConfig {
                errors_as_object: as_object,
                ..unlimited()
            },
        )
        .await;
        let c = client(&server);
        let err = c.sale(uuid::Uuid::new_v4()).await.unwrap_err();
        assert!(
            matches!(&err, DearError::Rejected { status: 400, .. })
                && err.rejection_message().unwrap().contains("not found"),
            "as object: {as_object}: {err}"
        );
        server.sim.add_fault(
            ACCOUNT,
            FaultRule {
                route: "ref/carrier".into(),
                method: Some("POST".into()),
                sequence: [Fault::ErrorModel200(400)].into(),
                ..Default::default()
            },
        );
        let err = c.create_carrier("Refused").await.unwrap_err();
        assert!(
            matches!(
                &err,
                DearError::Rejected {
                    status: 200,
                    code: 400,
                    ..
                }
            ),
            "as object: {as_object}: {err}"
        );
    }
}
