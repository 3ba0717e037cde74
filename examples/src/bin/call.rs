//! A tiny client: `call URL SERVICE JSON` prints the reply.

use kernel_sdk::{Client, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let service = args.next().unwrap_or_else(|| "greet.hello".into());
    let body = args.next().unwrap_or_else(|| r#"{"name":"world"}"#.into());
    let client = Client::connect(&url)?.with_plugin("cli");
    let reply = client.call(&service, body).await?;
    println!("{}", String::from_utf8_lossy(&reply));
    Ok(())
}
