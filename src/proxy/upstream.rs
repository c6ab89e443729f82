//! Upstream clusters: their instances, the balancer, and one pooled keep-alive client each.

use std::time::Duration;

use axum::body::Body;
use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::balance::RoundRobin;
use crate::config::UpstreamConfig;

/// How long an idle pooled connection to an upstream is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// One backend instance, with its URI parts pre-parsed for the hot path.
#[derive(Debug, Clone)]
pub struct Instance {
    pub scheme: Scheme,
    pub authority: Authority,
}

pub struct Cluster {
    pub name: String,
    pub instances: Vec<Instance>,
    pub response_timeout: Duration,
    pub client: Client<HttpConnector, Body>,
    balancer: RoundRobin,
}

#[derive(Debug, thiserror::Error)]
#[error("upstream {cluster}: instance {instance} is not a usable http:// URL")]
pub struct BadInstance {
    cluster: String,
    instance: String,
}

impl Cluster {
    pub fn new(config: &UpstreamConfig) -> Result<Cluster, BadInstance> {
        let instances = config
            .instances
            .iter()
            .map(|url| {
                let authority = url[url::Position::BeforeHost..url::Position::AfterPort]
                    .parse::<Authority>()
                    .map_err(|_| BadInstance {
                        cluster: config.name.clone(),
                        instance: url.to_string(),
                    })?;
                Ok(Instance {
                    scheme: Scheme::HTTP,
                    authority,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        // Proxied requests are small and latency-bound: never wait for Nagle.
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);

        Ok(Cluster {
            name: config.name.clone(),
            instances,
            response_timeout: config.response_timeout,
            client,
            balancer: RoundRobin::default(),
        })
    }

    pub fn pick(&self) -> Option<&Instance> {
        self.balancer
            .pick(self.instances.len())
            .map(|i| &self.instances[i])
    }
}
