//! The tenant's job, built from its stored settings and secret: the webhook sink and DEAR.

use std::sync::Arc;
use std::time::Duration;

use dearsync_core::{Lane, TenantId};
use dearsync_function_support::{Deps, TenantContext};
use dearsync_order_download::{OrderDownload, OrderSink, WebhookSink};

use crate::NotRun;

/// Builds the tenant's job from its stored settings and secret.
pub(crate) async fn job_for(deps: &Deps, tenant: &TenantId) -> Result<OrderDownload, NotRun> {
    job_from(deps, deps.tenant(tenant).await?, Lane::Poll)
}

/// Builds the job from a loaded tenant: its webhook sink and DEAR client.
/// Its DEAR calls are for work of `lane`: polls, or the one sale a webhook named.
pub(crate) fn job_from(
    deps: &Deps,
    ctx: TenantContext,
    lane: Lane,
) -> Result<OrderDownload, NotRun> {
    let tenant = &ctx.tenant;
    let fail = |why: &'static str| NotRun::NoSink {
        tenant: tenant.clone(),
        why,
    };
    let od = &ctx.settings.order_download;
    let url = od
        .webhook_url
        .as_deref()
        .ok_or_else(|| fail("order_download.webhook_url is not set: nowhere to deliver orders"))?;
    let secret = ctx
        .credentials
        .order_webhook_secret
        .as_ref()
        .ok_or_else(|| {
            fail("the tenant secret has no \"order_webhook_secret\" to sign orders with")
        })?;
    let sink: Arc<dyn OrderSink> = Arc::new(
        WebhookSink::new(
            url,
            secret.expose().as_bytes(),
            Duration::from_secs(u64::from(od.webhook_timeout_secs)),
            od.webhook_attempts,
            deps.outbound,
        )
        .map_err(|source| NotRun::Sink {
            tenant: tenant.clone(),
            source,
        })?,
    );
    Ok(OrderDownload {
        ctx: ctx.job_context(deps).in_lane(lane),
        settings: ctx.settings.order_download,
        sink,
    })
}
