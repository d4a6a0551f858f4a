//! Every example body of the DEAR reference parses with the client's models, with the values intact.

use dear_client::*;
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;

fn load<T: DeserializeOwned>(name: &str) -> T {
    let path = format!(
        "{}/tests/fixtures/reference/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn sale_list() {
    let page: ListPage<SaleListItem> = load("salelist.get.response");
    assert_eq!(page.total, 2);
    let row = &page.items[0];
    assert_eq!(row.order_number.as_deref(), Some("SO-00091"));
    assert_eq!(row.status, SaleStatus::Backordered);
    assert_eq!(row.order_status, StageStatus::Authorised);
    assert_eq!(row.sale_type, SaleType::Simple);
    assert_eq!(row.updated.unwrap().to_string(), "2017-09-29T03:00:48.043");
    assert_eq!(row.combined_picking_status.as_deref(), Some("NOT PICKED"));
    assert!(row.order_location_id.is_some());
}

#[test]
fn sale_detail() {
    let sale: Sale = load("sale.get.response");
    assert_eq!(sale.order_number(), Some("SO-00001"));
    assert_eq!(sale.sale_type, SaleType::Advanced);
    let order = sale.order.as_ref().unwrap();
    assert_eq!(order.lines[0].sku.as_deref(), Some("Bread"));
    assert_eq!(order.lines[0].price, Decimal::from(8));
    assert_eq!(order.additional_charges[0].price, Decimal::from(350));
    let f = &sale.fulfilments[0];
    assert_eq!(f.fulfillment_number, Some(1));
    assert_eq!(f.pick.status, StageStatus::Draft);
    assert_eq!(f.pack.lines[0].r#box.as_deref(), Some("Box 1"));
    assert_eq!(
        f.ship.lines[0].r#box.as_deref(),
        Some("Box 1"),
        "Boxes in responses"
    );
    assert_eq!(
        sale.invoices[0].additional_charges[0].account.as_deref(),
        Some("200")
    );
    assert_eq!(
        sale.shipping_address.as_ref().unwrap().company.as_deref(),
        Some("DIISR - Small Business Services")
    );
    assert_eq!(
        sale.last_modified_on.unwrap().to_string(),
        "2017-11-22T10:10:49.750"
    );
    assert_eq!(
        sale.additional_attribute(1),
        None,
        "blank attributes read as none"
    );
}

#[test]
fn fulfilment_stages() {
    let all: SaleFulfilments = load("sale-fulfilment.post.response");
    assert_eq!(all.fulfilments.len(), 2);
    assert_eq!(all.fulfilments[1].linked_invoice_number, None);
    let pick: PickPack = load("sale-fulfilment-pick.post.response");
    assert_eq!(pick.status, StageStatus::Authorised);
    assert_eq!(pick.lines[0].batch_sn.as_deref(), Some("PO-00001-1"));
    let pack: PickPack = load("sale-fulfilment-pack.post.response");
    assert_eq!(pack.lines[0].r#box.as_deref(), Some("Box 1"));
    let request: Ship = load("sale-fulfilment-ship.post.request");
    assert_eq!(
        request.lines[0].r#box.as_deref(),
        Some("Box 1"),
        "Box when writing"
    );
    let response: Ship = load("sale-fulfilment-ship.post.response");
    assert!(response.lines[0].id.is_some());
    // What we write uses `Box`, as DEAR expects.
    let written = serde_json::to_string(&request).unwrap();
    assert!(written.contains("\"Box\":\"Box 1\""), "{written}");
}

#[test]
fn stock_adjustment() {
    let request: StockAdjustmentWrite = load("stockadjustment.post.request");
    assert_eq!(request.lines[0].quantity, Decimal::from(600));
    assert_eq!(request.status, AdjustmentStatus::Draft);
    let response: StockAdjustment = load("stockadjustment.post.response");
    assert_eq!(response.stocktake_number.as_deref(), Some("ST-00024"));
    assert_eq!(
        response.existing_stock_lines[0].quantity_on_hand,
        Decimal::from(601)
    );
    assert_eq!(
        response.existing_stock_lines[0].adjustment,
        Decimal::from(600)
    );
    // Decimals are written as exact JSON numbers.
    let mut line = request.lines[0].clone();
    line.quantity = Decimal::new(12345, 4);
    let text = serde_json::to_string(&line).unwrap();
    assert!(text.contains("\"Quantity\":1.2345"), "{text}");
}

#[test]
fn product_availability() {
    let page: ListPage<ProductAvailability> = load("ref-productavailability.get.response");
    assert_eq!(page.total, 4);
    assert_eq!(page.items[0].allocated, Decimal::from(5));
}

#[test]
fn webhook_payloads() {
    // The stock webhook is a bare array of availability rows.
    let rows: Vec<ProductAvailability> = load("webhook.stock-availablestocklevelchanged");
    assert_eq!(rows[0].on_hand, Decimal::from(497));
    assert_eq!(rows[1].bin.as_deref(), Some("Bin 1"));
    let shipment: serde_json::Value = load("webhook.sale-shipmentauthorised");
    let id: uuid::Uuid = shipment["SaleTaskID"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        id.to_string(),
        "91ee7b1d-bd35-4e43-b98a-db86be777624",
        "upper-case GUIDs read"
    );
    let tracking: serde_json::Value = load("webhook.sale-shipmenttrackingnumberchanged");
    let date = DearDateTime::parse(tracking["SaleOrderDate"].as_str().unwrap()).unwrap();
    assert_eq!(date.to_string(), "2018-06-05T00:00:00");
}
