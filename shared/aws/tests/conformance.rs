//! The conformance suite against DynamoDB on the AWS emulator. Each check gets its own table; the
//! peer is a second client (a second process, as far as the table can tell).

use std::sync::Arc;

use async_trait::async_trait;
use dearsync_aws::{DynamoStore, testing};
use dearsync_core::ManualClock;
use dearsync_core::conformance::{Factory, Fixture};

struct DynamoFactory;

#[async_trait]
impl Factory for DynamoFactory {
    async fn fixture(&self) -> Fixture {
        let table = testing::fresh_table().await;
        let clock = Arc::new(ManualClock::fixed());
        Fixture {
            store: Arc::new(DynamoStore::new(testing::dynamodb(), &table, clock.clone())),
            peer: Arc::new(DynamoStore::new(testing::dynamodb(), &table, clock.clone())),
            clock,
            keep_alive: Box::new(()),
        }
    }
}

dearsync_core::conformance_suite!(DynamoFactory);
