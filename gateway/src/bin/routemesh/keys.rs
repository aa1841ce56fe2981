//! `routemesh keys`: API keys stored in Redis (add, revoke, list), which gateways accept with
//! `gateway.auth.redis: true`.

use anyhow::bail;
use clap::Subcommand;
use routemesh_gateway::Config;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key for a tenant and print it (once: only its SHA-256 is stored).
    Add {
        #[arg(long)]
        tenant: String,
        /// The key stops working after this long, e.g. 30d, 12h.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
        /// A label shown by `keys list`.
        #[arg(long)]
        name: Option<String>,
        /// Print the key and its details as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a key: give the key, its SHA-256, or a unique prefix of the
    /// SHA-256 (8+ hex digits, as `keys list` shows). Gateways stop accepting
    /// it within `gateway.auth.cache_ttl`.
    Revoke { key: String },
    /// List stored keys (by SHA-256 prefix, never the key).
    List {
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `keys` subcommand against the key store of `config`'s registry.
pub async fn run(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    let Some(redis) = &config.registry.redis else {
        bail!("`routemesh keys` manages keys in Redis: the configuration needs `registry.redis`");
    };
    let store =
        routemesh_gateway::tenancy::keys::RedisKeys::connect(redis.endpoint(), &redis.mesh).await?;
    let now = routemesh_telemetry::record::now_ms();
    let when = |ms: u64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string()
    };
    match command {
        KeysCommand::Add {
            tenant,
            expires_in,
            name,
            json,
        } => {
            let (key, listed) = store.add(&tenant, name.as_deref(), expires_in, now).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"key": key, "sha256": listed.sha256, "tenant": listed.tenant,
                                       "expires_ms": listed.expires_ms})
                );
            } else {
                println!("{key}");
                eprintln!(
                    "key {} for tenant {tenant:?}{}; it is shown only now",
                    &listed.sha256[..12],
                    listed
                        .expires_ms
                        .map_or(", no expiry".to_string(), |e| format!(
                            ", expires {}",
                            when(e)
                        ))
                );
                if !config.gateway.auth.redis {
                    eprintln!(
                        "note: this configuration's gateways do not read keys from Redis (set gateway.auth.redis: true)"
                    );
                }
            }
        }
        KeysCommand::Revoke { key } => {
            let revoked = store.revoke(&key).await?;
            eprintln!(
                "revoked key {} of tenant {:?}; gateways refuse it within {}",
                &revoked.sha256[..12],
                revoked.tenant,
                humantime::format_duration(config.gateway.auth.cache_ttl)
            );
        }
        KeysCommand::List { json } => {
            let keys = store.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!(
                    "{:<14} {:<20} {:<16} {:<22} {:<22}",
                    "SHA256", "TENANT", "NAME", "CREATED", "EXPIRES"
                );
                for k in keys {
                    let expires = match k.expires_ms {
                        None => "never".to_string(),
                        Some(e) if e <= now => format!("{} (expired)", when(e)),
                        Some(e) => when(e),
                    };
                    println!(
                        "{:<14} {:<20} {:<16} {:<22} {expires}",
                        &k.sha256[..12],
                        k.tenant,
                        k.name.as_deref().unwrap_or("-"),
                        when(k.created_ms),
                    );
                }
            }
        }
    }
    Ok(())
}
