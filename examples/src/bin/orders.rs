//! The orders plugin, out-of-process: `orders.create` reserves stock
//! through `inventory.reserve` and emits `order.created` inside a
//! transaction scope (published only when the order is complete).
//! Connects to `KERNEL_URL` (set by the node that supervises it).

use kernel_sdk::{CancellationToken, Context, Error, Plugin};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Create {
    sku: String,
    qty: u32,
}

#[derive(Serialize)]
struct Order {
    id: String,
    sku: String,
    qty: u32,
    /// This call's context path; the reservation's is one level below.
    context: String,
    reservation: serde_json::Value,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("KERNEL_URL").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let plugin =
        Plugin::new("orders").provide_json("orders.create", |ctx: Context, c: Create| async move {
            let reservation: serde_json::Value = ctx
                .call_json(
                    "inventory.reserve",
                    &serde_json::json!({"sku": c.sku, "qty": c.qty}),
                )
                .await?;
            let order = Order {
                // The order is named after its context tree, unique per request.
                id: format!("o-{}", ctx.path().split('.').next().unwrap_or("0")),
                sku: c.sku,
                qty: c.qty,
                context: ctx.path().to_owned(),
                reservation,
            };
            let mut tx = ctx.begin();
            tx.emit("order.created", serde_json::to_vec(&order)?);
            tx.commit().await.map_err(|(_, e)| e)?;
            Ok(order)
        });
    let stop = CancellationToken::new();
    let on_term = stop.clone();
    tokio::spawn(async move {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            on_term.cancel();
        }
    });
    plugin.serve(&url, stop).await?;
    Ok(())
}
