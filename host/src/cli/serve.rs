//! `yoi-host serve` and `yoi-host tenant`: the server, and the operator's
//! administration of its tenants (which works whether the server runs or
//! not: a running server picks changes up at once).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::serve::ServeConfig;
use crate::serve::quota::{KEYS, Overrides};
use crate::serve::tenants::TenantStore;

/// Where the server's configuration is.
#[derive(Args, Debug)]
pub struct ConfigArg {
    /// The server's configuration file.
    #[arg(long, env = "YOI_SERVE_CONFIG")]
    config: PathBuf,
}

/// `yoi-host tenant ...`
#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Add a tenant and print its API token (shown only this once).
    Add {
        #[command(flatten)]
        config: ConfigArg,
        /// The tenant's name (a-z 0-9 -).
        name: String,
        /// A quota of its own, KEY=VALUE (may be given more than once).
        #[arg(long = "quota", value_name = "KEY=VALUE")]
        quotas: Vec<String>,
    },
    /// List the tenants and their quotas.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove a tenant: its pods stop, and its directory is deleted.
    Rm {
        #[command(flatten)]
        config: ConfigArg,
        /// The tenant.
        name: String,
    },
    /// Manage a tenant's token.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage a tenant's quotas.
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Make a new admin token for the `/v1/admin/` API and print it once
    /// (the old one stops working).
    AdminToken {
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// `yoi-host tenant token ...`
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Give the tenant a new token and print it once; the old one stops working.
    Rotate {
        #[command(flatten)]
        config: ConfigArg,
        /// The tenant.
        name: String,
    },
}

/// `yoi-host tenant quota ...`
#[derive(Subcommand, Debug)]
pub enum QuotaCommand {
    /// Set quotas of the tenant's own, KEY=VALUE each.
    Set {
        #[command(flatten)]
        config: ConfigArg,
        /// The tenant.
        name: String,
        /// KEY=VALUE, one or more.
        #[arg(required = true)]
        values: Vec<String>,
    },
}

fn store(config: &ConfigArg) -> anyhow::Result<(ServeConfig, TenantStore)> {
    let config = ServeConfig::load(&config.config)?;
    let store = TenantStore::open(&config.data_dir)?;
    Ok((config, store))
}

/// `yoi-host serve`
pub async fn serve(config: &ConfigArg) -> anyhow::Result<ExitCode> {
    let config = ServeConfig::load(&config.config)?;
    crate::serve::serve(config).await?;
    Ok(ExitCode::SUCCESS)
}

/// `yoi-host tenant ...`
pub fn tenant(command: TenantCommand) -> anyhow::Result<ExitCode> {
    match command {
        TenantCommand::Add { config, name, quotas } => {
            let (_, store) = store(&config)?;
            let mut overrides = Overrides::default();
            for q in &quotas {
                overrides.set(q)?;
            }
            let token = store.add(&name, overrides)?;
            eprintln!("yoi-host: tenant {name} added; its token (shown only now):");
            println!("{token}");
        }
        TenantCommand::List { config } => {
            let (config, store) = store(&config)?;
            println!("{:<24} {}", "TENANT", KEYS.join(" "));
            for (name, record) in store.list()? {
                let quotas = config.quotas.with(&record.quotas);
                let values: Vec<String> = KEYS.iter().map(|k| quotas.get(k).unwrap_or_default().to_string()).collect();
                println!("{name:<24} {}", values.join(" "));
            }
        }
        TenantCommand::Rm { config, name } => {
            let (_, store) = store(&config)?;
            store.remove(&name)?;
            eprintln!("yoi-host: tenant {name} removed");
        }
        TenantCommand::Token(TokenCommand::Rotate { config, name }) => {
            let (_, store) = store(&config)?;
            let token = store.rotate(&name)?;
            eprintln!("yoi-host: tenant {name} has a new token (shown only now); the old one no longer works:");
            println!("{token}");
        }
        TenantCommand::Quota(QuotaCommand::Set { config, name, values }) => {
            let (config, store) = store(&config)?;
            let overrides = store.set_quotas(&name, &values)?;
            let quotas = config.quotas.with(&overrides);
            for key in KEYS {
                println!("{key} = {}", quotas.get(key).unwrap_or_default());
            }
        }
        TenantCommand::AdminToken { config } => {
            let (_, store) = store(&config)?;
            let token = store.rotate_admin()?;
            eprintln!("yoi-host: a new admin token (shown only now); the old one no longer works:");
            println!("{token}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
