//! Child processes: the direct tonic echo server, the kernel plugin, the NATS
//! responder.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use kernel_proto::v1::{self as pb, kernel_server::KernelServer};
use kernel_sdk::{Bytes, CancellationToken, Plugin};
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A tonic server that echoes CallStream frames: the "no kernel" baseline,
/// speaking the same protocol so the same client measures both.
struct Echo;

#[tonic::async_trait]
impl pb::kernel_server::Kernel for Echo {
    type RegisterStream = BoxStream<pb::ProviderDown>;
    type CallStreamStream = BoxStream<pb::CallStreamDown>;
    type PublishStreamStream = BoxStream<pb::PublishStreamDown>;
    type SubscribeStream = BoxStream<pb::SubscribeDown>;

    async fn register(
        &self,
        _: Request<Streaming<pb::ProviderUp>>,
    ) -> Result<Response<Self::RegisterStream>, Status> {
        Err(Status::unimplemented("echo baseline"))
    }
    async fn call(
        &self,
        r: Request<pb::CallRequest>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        Ok(Response::new(pb::CallResponse {
            payload: r.into_inner().payload,
            content_type: String::new(),
        }))
    }
    async fn call_stream(
        &self,
        r: Request<Streaming<pb::CallStreamUp>>,
    ) -> Result<Response<Self::CallStreamStream>, Status> {
        let s = r.into_inner().map(|f| {
            f.map(|f| pb::CallStreamDown {
                replies: f
                    .calls
                    .into_iter()
                    .map(|c| pb::CallReply {
                        id: c.id,
                        payload: c.payload,
                        ..Default::default()
                    })
                    .collect(),
            })
        });
        Ok(Response::new(Box::pin(s)))
    }
    async fn publish(
        &self,
        _: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        Err(Status::unimplemented("echo baseline"))
    }
    async fn publish_stream(
        &self,
        _: Request<Streaming<pb::PublishStreamUp>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        Err(Status::unimplemented("echo baseline"))
    }
    async fn subscribe(
        &self,
        _: Request<Streaming<pb::SubscribeUp>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("echo baseline"))
    }
    async fn charge(
        &self,
        _: Request<pb::ChargeRequest>,
    ) -> Result<Response<pb::ChargeResponse>, Status> {
        Err(Status::unimplemented("echo baseline"))
    }
}

pub(crate) async fn echo_server(listen: &str) {
    let addr = listen.parse().expect("listen address");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(KernelServer::new(Echo))
        .serve(addr)
        .await
        .expect("echo server");
}

pub(crate) async fn provider(url: &str) {
    let plugin =
        Plugin::new("bench-provider").provide("bench.echo", |_ctx, p: Bytes| async move { Ok(p) });
    let _ = plugin.serve(url, CancellationToken::new()).await;
}

pub(crate) async fn nats_responder() {
    let Ok(client) = async_nats::connect("127.0.0.1:4222").await else {
        return;
    };
    let Ok(mut sub) = client.subscribe("bench.echo").await else {
        return;
    };
    println!("READY");
    while let Some(msg) = sub.next().await {
        if let Some(reply) = msg.reply {
            let _ = client.publish(reply, msg.payload).await;
        }
    }
}
