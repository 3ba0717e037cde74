//! The inventory plugin, in-process: stock levels by SKU.

use std::collections::HashMap;
use std::sync::Arc;

use kernel_sdk::{Context, Error, Plugin};
use serde::{Deserialize, Serialize};

/// `inventory.check_stock` arguments.
#[derive(Debug, Deserialize)]
pub struct Check {
    /// The item.
    pub sku: String,
}

/// `inventory.check_stock` reply.
#[derive(Debug, Serialize)]
pub struct Stock {
    /// The item.
    pub sku: String,
    /// Units on hand.
    pub available: u32,
}

/// `inventory.reserve` arguments.
#[derive(Debug, Deserialize)]
pub struct Reserve {
    /// The item.
    pub sku: String,
    /// Units to take.
    pub qty: u32,
}

/// `inventory.reserve` reply.
#[derive(Debug, Serialize)]
pub struct Reserved {
    /// The item.
    pub sku: String,
    /// Units taken.
    pub qty: u32,
    /// Units left.
    pub left: u32,
    /// Where the reservation ran in the context tree.
    pub context: String,
}

/// The plugin over `stock` (SKU → units).
pub fn plugin(stock: HashMap<String, u32>) -> Plugin {
    let stock = Arc::new(levels::Stock::new(stock));
    let checks = stock.clone();
    Plugin::new("inventory")
        .provide_json("inventory.check_stock", move |_ctx: Context, c: Check| {
            let stock = checks.clone();
            async move {
                Ok(Stock {
                    available: stock.level(&c.sku),
                    sku: c.sku,
                })
            }
        })
        .provide_json("inventory.reserve", move |ctx: Context, r: Reserve| {
            let stock = stock.clone();
            async move {
                let left = stock.take(&r.sku, r.qty).ok_or_else(|| {
                    Error::new(
                        kernel_sdk::Code::FailedPrecondition,
                        format!("not enough `{}` in stock for {}", r.sku, r.qty),
                    )
                })?;
                Ok(Reserved {
                    sku: r.sku,
                    qty: r.qty,
                    left,
                    context: ctx.path().to_owned(),
                })
            }
        })
}

/// Stock levels behind a std mutex (held for a map lookup, never across an
/// await).
mod levels {
    use std::collections::HashMap;
    use std::sync::Mutex;

    pub(super) struct Stock(Mutex<HashMap<String, u32>>);

    impl Stock {
        pub(super) fn new(levels: HashMap<String, u32>) -> Stock {
            Stock(Mutex::new(levels))
        }

        pub(super) fn level(&self, sku: &str) -> u32 {
            self.0
                .lock()
                .map(|m| m.get(sku).copied().unwrap_or(0))
                .unwrap_or(0)
        }

        /// Takes `qty`; the units left, or None when there are not enough.
        pub(super) fn take(&self, sku: &str, qty: u32) -> Option<u32> {
            let mut m = self.0.lock().ok()?;
            let have = m.get_mut(sku)?;
            *have = have.checked_sub(qty)?;
            Some(*have)
        }
    }
}
