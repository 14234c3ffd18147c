//! A small gRPC server for tests: Envoy's rate limit service (a unary call whose types
//! ship with envoy-types, so no protoc is needed), answering OK to every request over
//! h2c. A request whose `domain` is `slow` is answered after `--slow` (a call held in
//! flight). Writes its pid to `--pid-file` so tests can see it start and stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::{Request, Response, Status};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// How long a `slow` request takes.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    slow: Duration,
}

struct Limiter {
    slow: Duration,
}

#[tonic::async_trait]
impl RateLimitService for Limiter {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        if request.get_ref().domain == "slow" {
            tokio::time::sleep(self.slow).await;
        }
        Ok(Response::new(RateLimitResponse {
            overall_code: Code::Ok as i32,
            ..Default::default()
        }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    if let Some(p) = &args.pid_file {
        std::fs::write(p, std::process::id().to_string())?;
    }
    eprintln!(
        "zenvoy-grpc listening on {} (pid {})",
        args.listen,
        std::process::id()
    );
    tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(Limiter { slow: args.slow }))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}
