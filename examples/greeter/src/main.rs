//! An out-of-process plugin: `greeter http://127.0.0.1:50051`.

use kernel_sdk::{CancellationToken, Context, Error, Plugin};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Hello {
    name: String,
}

#[derive(Serialize)]
struct Greeting {
    text: String,
    context: String,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let plugin =
        Plugin::new("greeter").provide_json("greet.hello", |ctx: Context, h: Hello| async move {
            ctx.emit("greet.said", h.name.clone()).await?;
            Ok(Greeting {
                text: format!("hello, {}", h.name),
                context: ctx.path().to_owned(),
            })
        });
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.cancel();
    });
    plugin.serve(&url, stop).await?;
    Ok(())
}
