//! The gRPC `AggregatedDiscoveryService`: one task per Envoy stream, feeding requests and
//! snapshots to the pure state machines in [`crate::ads`] and sending what they answer.

use crate::ads::{delta::DeltaStream, sotw::SotwStream, StreamStatus};
use crate::registry::Registry;
use crate::resources::{Kind, Snapshot};
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_server::{AggregatedDiscoveryService, AggregatedDiscoveryServiceServer},
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use prost::Message;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn, Instrument};

/// Responses buffered per stream before the stream task waits for Envoy to read.
const STREAM_BUFFER: usize = 16;

/// The ADS server.
#[derive(Debug, Clone)]
pub struct XdsServer {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    confirmed: watch::Receiver<bool>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
}

impl XdsServer {
    /// A server publishing `snapshots` and reporting streams to `registry`; a stream is
    /// held, unanswered, until `confirmed` is true; streams end when `shutdown` is cancelled.
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        confirmed: watch::Receiver<bool>,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) -> Self {
        XdsServer { snapshots, confirmed, registry, shutdown }
    }

    /// The tonic service to add to a server.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self).max_decoding_message_size(16 * 1024 * 1024).max_encoding_message_size(256 * 1024 * 1024)
    }

    fn spawn<P: Protocol>(&self, peer: String, inbound: Streaming<P::Request>, proto: P) -> ReceiverStream<Result<P::Response, Status>> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let span = tracing::info_span!("ads", peer = %peer, protocol = P::NAME);
        let task = StreamTask {
            proto,
            inbound,
            tx,
            snapshots: self.snapshots.clone(),
            confirmed: self.confirmed.clone(),
            registry: self.registry.clone(),
            shutdown: self.shutdown.clone(),
            peer,
        };
        tokio::spawn(task.run().instrument(span));
        ReceiverStream::new(rx)
    }
}

fn peer_of<T>(req: &Request<T>) -> String {
    req.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "unknown".into())
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = peer_of(&request);
        Ok(Response::new(self.spawn(peer, request.into_inner(), SotwStream::new())))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = peer_of(&request);
        Ok(Response::new(self.spawn(peer, request.into_inner(), DeltaStream::new())))
    }
}

/// What the stream task needs of a protocol's state machine.
trait Protocol: Send + 'static {
    type Request: Message + Default + Send + 'static;
    type Response: Message + Send + 'static;
    const NAME: &'static str;
    fn on_request(&mut self, req: &Self::Request, snapshot: &Snapshot) -> Vec<Self::Response>;
    fn on_snapshot(&mut self, snapshot: &Snapshot) -> Vec<Self::Response>;
    fn status(&self, snapshot: &Snapshot) -> StreamStatus;
    /// Type URL, nonce and NACK text of a request, for logs.
    fn describe(req: &Self::Request) -> (&str, &str, Option<&str>);
}

impl Protocol for SotwStream {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const NAME: &'static str = "sotw";
    fn on_request(&mut self, req: &DiscoveryRequest, snapshot: &Snapshot) -> Vec<DiscoveryResponse> {
        SotwStream::on_request(self, req, snapshot)
    }
    fn on_snapshot(&mut self, snapshot: &Snapshot) -> Vec<DiscoveryResponse> {
        SotwStream::on_snapshot(self, snapshot)
    }
    fn status(&self, snapshot: &Snapshot) -> StreamStatus {
        SotwStream::status(self, snapshot)
    }
    fn describe(req: &DiscoveryRequest) -> (&str, &str, Option<&str>) {
        (&req.type_url, &req.response_nonce, req.error_detail.as_ref().map(|e| e.message.as_str()))
    }
}

impl Protocol for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";
    fn on_request(&mut self, req: &DeltaDiscoveryRequest, snapshot: &Snapshot) -> Vec<DeltaDiscoveryResponse> {
        DeltaStream::on_request(self, req, snapshot)
    }
    fn on_snapshot(&mut self, snapshot: &Snapshot) -> Vec<DeltaDiscoveryResponse> {
        DeltaStream::on_snapshot(self, snapshot)
    }
    fn status(&self, snapshot: &Snapshot) -> StreamStatus {
        DeltaStream::status(self, snapshot)
    }
    fn describe(req: &DeltaDiscoveryRequest) -> (&str, &str, Option<&str>) {
        (&req.type_url, &req.response_nonce, req.error_detail.as_ref().map(|e| e.message.as_str()))
    }
}

struct StreamTask<P: Protocol> {
    proto: P,
    inbound: Streaming<P::Request>,
    tx: mpsc::Sender<Result<P::Response, Status>>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    confirmed: watch::Receiver<bool>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    peer: String,
}

impl<P: Protocol> StreamTask<P> {
    async fn run(mut self) {
        // An unconfirmed model is not sent: Envoy's requests wait unread (it keeps the
        // configuration it has) until the orchestrator confirms what runs.
        if !*self.confirmed.borrow() {
            info!("Envoy connected; its stream is held until the orchestrator confirms the model");
            self.registry.holding(1);
            let confirmed = tokio::select! {
                _ = self.shutdown.cancelled() => false,
                r = self.confirmed.wait_for(|c| *c) => r.is_ok(),
            };
            self.registry.holding(-1);
            if !confirmed {
                return;
            }
        }
        let mut snapshot = self.snapshots.borrow_and_update().clone();
        let handle = self.registry.register(self.peer.clone(), self.proto.status(&snapshot));
        info!("Envoy connected");
        loop {
            let out = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                msg = self.inbound.message() => match msg {
                    Ok(Some(req)) => {
                        let out = self.proto.on_request(&req, &snapshot);
                        self.log_request(&req, &snapshot);
                        out
                    }
                    Ok(None) => { info!("Envoy closed the stream"); break }
                    Err(status) => { info!(code = ?status.code(), error = %status.message(), "stream ended"); break }
                },
                changed = self.snapshots.changed() => {
                    if changed.is_err() { break }
                    snapshot = self.snapshots.borrow_and_update().clone();
                    self.proto.on_snapshot(&snapshot)
                }
            };
            let (mut bytes, responses) = (0u64, out.len() as u64);
            for resp in out {
                bytes += resp.encoded_len() as u64;
                if self.tx.send(Ok(resp)).await.is_err() {
                    info!("Envoy went away");
                    return;
                }
            }
            self.registry.update(handle.id, self.proto.status(&snapshot), bytes, responses);
        }
    }

    fn log_request(&self, req: &P::Request, snapshot: &Snapshot) {
        let (type_url, nonce, error) = P::describe(req);
        let kind = Kind::from_type_url(type_url).map(Kind::short).unwrap_or("unknown");
        match error {
            Some(error) => {
                let status = self.proto.status(snapshot);
                warn!(node = %status.node_id, kind, nonce, error, "Envoy rejected a configuration (NACK); it keeps its last good one");
                if let Some(nack) = status.nack {
                    self.registry.record_nack(&status.node_id, nack);
                }
            }
            None if kind == "unknown" => warn!(type_url, "request for a type Roost does not serve"),
            None => debug!(kind, nonce, "request"),
        }
    }
}
