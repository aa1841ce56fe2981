//! Where Redis is: one server (`url`) or a Redis Cluster reached through
//! one or more seed nodes (`cluster: true` with `url` or `urls`), and for
//! `rediss://` the TLS files; what the binary can do with it is checked
//! here, and the redis crate's clients are built from it.

use std::path::PathBuf;
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use serde::{Deserialize, Serialize};

use super::Patience;

/// TLS towards Redis beyond what a `rediss://` URL gives by itself (the
/// system's trusted roots): the CA that signed the server's certificate,
/// and a client certificate for servers that ask for one. The files are
/// read again every `reload_interval`; a change opens a new connection
/// with them (see [`super::RedisConn`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisTls {
    /// PEM CA the server's certificate must chain to (instead of the
    /// system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain, for mutual TLS (with `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// How often the files are read for changes.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    #[schemars(schema_with = "crate::config_schema::duration")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

impl Default for RedisTls {
    fn default() -> Self {
        Self {
            ca: None,
            cert: None,
            key: None,
            reload_interval: default_reload_interval(),
        }
    }
}

impl RedisTls {
    fn has_files(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// The bytes of the TLS files, compared to notice a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TlsMaterial {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsMaterial {
    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca.clone(),
        }
    }
}

/// Where Redis is: its URL (or a cluster's seed URLs) and, for
/// `rediss://`, the TLS material.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisEndpoint {
    /// One server, or one seed node of a cluster.
    pub url: String,
    /// Several seed nodes of a cluster (with `cluster`), instead of `url`.
    pub urls: Option<Vec<String>>,
    /// A Redis Cluster: commands go to the node that owns their keys' slot.
    pub cluster: bool,
    pub tls: Option<RedisTls>,
}

impl From<&str> for RedisEndpoint {
    fn from(url: &str) -> Self {
        Self {
            url: url.to_string(),
            ..Self::default()
        }
    }
}

impl From<&String> for RedisEndpoint {
    fn from(url: &String) -> Self {
        url.as_str().into()
    }
}

impl From<&RedisEndpoint> for RedisEndpoint {
    fn from(endpoint: &RedisEndpoint) -> Self {
        endpoint.clone()
    }
}

/// A configuration error: the key at fault (relative to the section holding
/// `url`) and why.
type Refusal = (String, String);

fn refuse(key: impl Into<String>, why: impl Into<String>) -> Refusal {
    (key.into(), why.into())
}

impl RedisEndpoint {
    /// A cluster reached through seed `urls`.
    pub fn cluster<S: AsRef<str>>(urls: &[S]) -> Self {
        Self {
            urls: Some(urls.iter().map(|u| u.as_ref().to_string()).collect()),
            cluster: true,
            ..Self::default()
        }
    }

    /// The URLs given, each with the key it came from.
    fn given_urls(&self) -> Vec<(String, &str)> {
        match &self.urls {
            Some(urls) => urls
                .iter()
                .enumerate()
                .map(|(i, u)| (format!("urls[{i}]"), u.as_str()))
                .collect(),
            None => vec![("url".to_string(), self.url.as_str())],
        }
    }

    fn is_tls(&self) -> bool {
        self.given_urls()
            .first()
            .is_some_and(|(_, u)| u.starts_with("rediss://"))
    }

    /// Checks what the binary can do with it, naming the key at fault
    /// (relative to the section holding `url` and `tls`).
    pub fn check(&self) -> Result<(), Refusal> {
        match (&self.urls, self.url.is_empty(), self.cluster) {
            (Some(_), _, false) => {
                return Err(refuse(
                    "urls",
                    "several seed nodes are for a Redis Cluster: set `cluster: true`, or give one server as `url`",
                ));
            }
            (Some(_), false, true) => {
                return Err(refuse(
                    "urls",
                    "give one seed node as `url` or several as `urls`, not both",
                ));
            }
            (Some(urls), true, true) if urls.is_empty() => {
                return Err(refuse("urls", "is empty: list at least one seed node"));
            }
            (None, true, _) => return Err(refuse("url", "is missing")),
            _ => {}
        }
        for (key, url) in self.given_urls() {
            check_url(&key, url, self.cluster)?;
            if url.starts_with("rediss://") != self.is_tls() {
                return Err(refuse(
                    key,
                    "every seed node takes the same scheme (all rediss:// or all redis://)",
                ));
            }
        }
        if let Some(tls) = &self.tls {
            if !self.is_tls() {
                return Err(refuse("tls", "needs a rediss:// url (TLS)"));
            }
            if tls.cert.is_some() != tls.key.is_some() {
                return Err(refuse(
                    "tls",
                    "a client certificate needs both cert and key",
                ));
            }
            if tls.reload_interval < Duration::from_millis(10) {
                return Err(refuse("tls.reload_interval", "must be at least 10ms"));
            }
        }
        Ok(())
    }

    /// The TLS files' contents, read now (`None` without files).
    pub(super) async fn read_tls(&self) -> Result<Option<TlsMaterial>, redis::RedisError> {
        let Some(tls) = self.tls.as_ref().filter(|t| t.has_files()) else {
            return Ok(None);
        };
        let read = |path: &PathBuf, what: &'static str| {
            let path = path.clone();
            async move {
                tokio::fs::read(&path).await.map_err(|e| {
                    redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        what,
                        format!("{}: {e}", path.display()),
                    ))
                })
            }
        };
        let ca = match &tls.ca {
            Some(ca) => Some(read(ca, "cannot read registry.redis.tls.ca").await?),
            None => None,
        };
        let client = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => Some((
                read(cert, "cannot read registry.redis.tls.cert").await?,
                read(key, "cannot read registry.redis.tls.key").await?,
            )),
            _ => None,
        };
        Ok(Some(TlsMaterial { ca, client }))
    }

    /// How often the TLS files are read for changes (`None`: no files).
    pub(super) fn reload_interval(&self) -> Option<Duration> {
        self.tls
            .as_ref()
            .filter(|t| t.has_files())
            .map(|t| t.reload_interval)
    }

    /// A client for one server, with the CA and client certificate given.
    pub(super) fn single_client(
        &self,
        tls: Option<&TlsMaterial>,
    ) -> Result<redis::Client, redis::RedisError> {
        match tls {
            None => redis::Client::open(self.url.as_str()),
            Some(tls) => redis::Client::build_with_tls(self.url.as_str(), tls.certificates()),
        }
    }

    /// A client for a cluster: its seeds, timeouts and TLS material (used
    /// for every node it discovers).
    pub(super) fn cluster_client(
        &self,
        tls: Option<&TlsMaterial>,
        patience: Patience,
    ) -> Result<ClusterClient, redis::RedisError> {
        let seeds: Vec<&str> = self.given_urls().into_iter().map(|(_, u)| u).collect();
        let mut builder = ClusterClientBuilder::new(seeds)
            .connection_timeout(patience.connect_timeout)
            .response_timeout(patience.response_timeout)
            // A redirect (MOVED/ASK) after a slot moved counts as a retry:
            // allow at least one even to callers that never retry.
            .retries(u32::try_from(patience.retries.max(1)).unwrap_or(u32::MAX));
        if let Some(delay) = patience.max_retry_delay {
            builder = builder.max_retry_wait(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        }
        if let Some(tls) = tls {
            builder = builder.certs(tls.certificates());
        }
        builder.build()
    }
}

/// Checks one URL (the server's, or one seed's) under `key`.
fn check_url(key: &str, url: &str, cluster: bool) -> Result<(), Refusal> {
    let schemes: &[&str] = if cluster {
        &["redis://", "rediss://"]
    } else {
        &["redis://", "rediss://", "unix://", "redis+unix://"]
    };
    if !schemes.iter().any(|scheme| url.starts_with(scheme)) {
        let why = if cluster && (url.starts_with("unix://") || url.starts_with("redis+unix://")) {
            "a Redis Cluster is reached over TCP (its nodes announce host and port): use redis:// or rediss://".to_string()
        } else if cluster {
            format!(
                "{:?} is not a redis:// or rediss:// (TLS) URL",
                redacted(url)
            )
        } else {
            format!(
                "{:?} is not a redis://, rediss:// (TLS) or unix:// URL",
                redacted(url)
            )
        };
        return Err(refuse(key, why));
    }
    let parsed = redis::parse_redis_url(url)
        .ok_or_else(|| refuse(key, format!("{:?} is not a valid URL", redacted(url))))?;
    if cluster && !matches!(parsed.path().trim_matches('/'), "" | "0") {
        return Err(refuse(
            key,
            format!("{:?}: a Redis Cluster has only database 0", redacted(url)),
        ));
    }
    Ok(())
}

/// A URL with its password (if any) hidden, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(endpoint: &RedisEndpoint) -> String {
        let (key, why) = endpoint.check().unwrap_err();
        format!("{key}: {why}")
    }

    #[test]
    fn one_server_takes_any_scheme() {
        for url in [
            "redis://127.0.0.1:6379/2",
            "rediss://cache:6380",
            "unix:///run/redis.sock",
        ] {
            assert_eq!(RedisEndpoint::from(url).check(), Ok(()), "{url}");
        }
        assert!(refusal(&"http://x".into()).starts_with("url: "));
        assert_eq!(refusal(&RedisEndpoint::default()), "url: is missing");
    }

    #[test]
    fn a_cluster_takes_tcp_seeds_on_database_0() {
        let mut one = RedisEndpoint::from("redis://10.0.0.1:7000");
        one.cluster = true;
        assert_eq!(one.check(), Ok(()));
        assert_eq!(
            RedisEndpoint::cluster(&["rediss://a:7000", "rediss://b:7000"]).check(),
            Ok(())
        );
        let mut unix = RedisEndpoint::from("unix:///run/redis.sock");
        unix.cluster = true;
        assert!(refusal(&unix).starts_with("url: a Redis Cluster is reached over TCP"));
        assert!(
            refusal(&RedisEndpoint::cluster(&["redis://a:7000", "unix:///s"]))
                .starts_with("urls[1]: a Redis Cluster is reached over TCP")
        );
        assert!(
            refusal(&RedisEndpoint::cluster(&["redis://a:7000/3"]))
                .contains("urls[0]: \"redis://a:7000/3\": a Redis Cluster has only database 0")
        );
        assert!(
            refusal(&RedisEndpoint::cluster(&[
                "redis://a:7000",
                "rediss://b:7000"
            ]))
            .starts_with("urls[1]: every seed node takes the same scheme")
        );
    }

    #[test]
    fn urls_need_a_cluster_and_at_least_one_seed() {
        let mut plain = RedisEndpoint::cluster(&["redis://a:7000"]);
        plain.cluster = false;
        assert!(refusal(&plain).starts_with("urls: several seed nodes are for a Redis Cluster"));
        let empty = RedisEndpoint::cluster::<&str>(&[]);
        assert_eq!(
            refusal(&empty),
            "urls: is empty: list at least one seed node"
        );
        let mut both = RedisEndpoint::cluster(&["redis://a:7000"]);
        both.url = "redis://b:7000".into();
        assert!(refusal(&both).starts_with("urls: give one seed node as `url`"));
    }

    #[test]
    fn tls_needs_rediss_and_a_whole_client_certificate() {
        let mut e = RedisEndpoint::cluster(&["redis://a:7000"]);
        e.tls = Some(RedisTls::default());
        assert_eq!(refusal(&e), "tls: needs a rediss:// url (TLS)");
        e.urls = Some(vec!["rediss://a:7000".into()]);
        e.tls = Some(RedisTls {
            cert: Some("c.pem".into()),
            ..RedisTls::default()
        });
        assert_eq!(
            refusal(&e),
            "tls: a client certificate needs both cert and key"
        );
        e.tls = Some(RedisTls {
            reload_interval: Duration::from_millis(1),
            ..RedisTls::default()
        });
        assert_eq!(refusal(&e), "tls.reload_interval: must be at least 10ms");
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redacted("redis://u:secret@h:1"), "redis://***@h:1");
    }
}
