//! The node and a plugin in one process: the call goes through the kernel
//! pipeline with no HTTP/2 and no encoding.

use kernel_core::{Config, Kernel};
use kernel_sdk::{Bytes, Client, Error, Plugin};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let kernel = Kernel::new(Config::default());
    let _registration = Plugin::new("upper")
        .provide("text.upper", |_ctx, p: Bytes| async move {
            Ok(Bytes::from(String::from_utf8_lossy(&p).to_uppercase()))
        })
        .attach(&kernel)?;
    let client = Client::in_process(kernel);
    let reply = client.call("text.upper", "in-process call").await?;
    println!("{}", String::from_utf8_lossy(&reply));
    Ok(())
}
