//! `everestctl`: the command line. Parsing and printing only; the work is in the library.
//!
//! Exit status: 0 when all is well, 1 on an error, 3 when the command finished but something
//! needs attention (volumes not migrated, attachments that disagree, stranded volumes left).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use everestctl::age::Age;
use everestctl::cluster::Cluster;
use everestctl::migration::{self, Options, Snapshot};
use everestctl::orphans::{self, PvIndex};
use everestctl::output::{self, Format};
use everestctl::status::{self, ClusterView};
use everestctl::targets::{KindValue, Targets};
use everestctl::{DEFAULT_DRIVER_NAME, Error, apply, cloud, deletion};

/// Operate Everest in a cluster: migrate from CCE's FlexVolume drivers, compare the cluster
/// with the cloud, find volumes stranded without a PV.
#[derive(Debug, Parser)]
#[command(name = "everestctl", version)]
struct Cli {
    /// The kubeconfig to use (default: $KUBECONFIG, which may list several files,
    /// ~/.kube/config, or in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// The CSI driver name Everest is registered under.
    #[arg(long, global = true, default_value = DEFAULT_DRIVER_NAME)]
    driver_name: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Move volumes from other drivers to Everest.
    Migrate {
        #[command(subcommand)]
        from: MigrateFrom,
    },
    /// Volumes and attachments per backend and node, cluster and cloud side by side.
    Status {
        /// The daemons' configuration file (the controller's), for the cloud side.
        #[arg(long, env = "EVEREST_CONFIG")]
        config: PathBuf,
    },
    /// Backend volumes Everest created for this cluster whose PersistentVolume is gone.
    Orphans(OrphansArgs),
}

#[derive(Debug, clap::Args)]
struct OrphansArgs {
    /// The daemons' configuration file (the controller's): backends, credentials, cluster_id.
    #[arg(long, env = "EVEREST_CONFIG")]
    config: PathBuf,
    /// List only volumes at least this old (e.g. 30m, 1h, 2d; 0 for all): a volume being
    /// provisioned has no PV for a moment.
    #[arg(long, default_value = "1h")]
    min_age: Age,
    /// Delete the listed volumes through their backend, after a confirmation.
    #[arg(long)]
    delete: bool,
    /// Confirm `--delete` without asking (for scripts).
    #[arg(long, requires = "delete")]
    yes: bool,
}

#[derive(Debug, Subcommand)]
enum MigrateFrom {
    /// PVs of Huawei CCE's FlexVolume drivers (fuxivol, fuxiefs, fuxiobs; fuxinfs is reported).
    Flexvolume(FlexvolumeArgs),
}

#[derive(Debug, clap::Args)]
struct FlexvolumeArgs {
    /// Carry the plan out (without it, only print it).
    #[arg(long)]
    apply: bool,
    /// The backend instance for a kind, e.g. `evs=evs-default` (repeat, or separate with commas).
    #[arg(long, value_delimiter = ',')]
    backend: Vec<KindValue>,
    /// An Everest StorageClass whose backend instance a kind goes to, e.g. `obs=everest-obs`.
    #[arg(long, value_delimiter = ',')]
    storage_class: Vec<KindValue>,
    /// The Secret (`namespace/name`) with the object storage keys the node stages OBS volumes with.
    #[arg(long)]
    obs_secret: Option<String>,
    /// Migrate claims that running pods use (their pods keep the old mount until restarted).
    #[arg(long)]
    force_in_use: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("everestctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command; `Ok(false)` when it finished but something needs attention.
async fn run(cli: Cli) -> Result<bool, Error> {
    let cluster = Cluster::connect(cli.kubeconfig.as_deref()).await?;
    let mut out = std::io::stdout().lock();
    let mut progress = std::io::stderr();
    match cli.command {
        Command::Migrate {
            from: MigrateFrom::Flexvolume(args),
        } => {
            let targets = Targets::resolve(
                &cluster,
                &cli.driver_name,
                &args.backend,
                &args.storage_class,
                args.obs_secret.as_deref(),
            )
            .await?;
            let options = Options {
                driver_name: cli.driver_name.clone(),
                force_in_use: args.force_in_use,
            };
            let mut plan = migration::plan(&Snapshot::read(&cluster).await?, &targets, &options);
            if args.apply {
                let done = apply::apply(&cluster, &plan, &mut progress).await?;
                writeln!(progress, "migrated {done} volume(s)")?;
                plan = migration::plan(&Snapshot::read(&cluster).await?, &targets, &options);
            }
            match cli.output {
                Format::Json => output::json(&mut out, &plan)?,
                Format::Table => output::plan_table(&mut out, &plan)?,
            }
            Ok(!plan.needs_attention() || !args.apply)
        }
        Command::Status { config } => {
            let cloud = cloud::read(&config, &mut progress).await?;
            writeln!(progress, "reading the cluster")?;
            let report = status::compare(
                &ClusterView::read(&cluster).await?,
                &cloud,
                &cli.driver_name,
            );
            match cli.output {
                Format::Json => output::json(&mut out, &report)?,
                Format::Table => output::status_table(&mut out, &report)?,
            }
            Ok(report.disagreements == 0)
        }
        Command::Orphans(args) => {
            let config = cloud::load_config(&args.config)?;
            let cloud = cloud::read_with(&config, cloud::Reach::Everything, &mut progress).await?;
            writeln!(progress, "reading the cluster")?;
            let pvs = PvIndex::new(&cluster.persistent_volumes().await?);
            let options = orphans::Options {
                cluster: config.controller.cluster_id.clone(),
                min_age: args.min_age,
                now: chrono::Utc::now(),
            };
            let mut report = orphans::find(&cloud, &pvs, &options);
            let print = |out: &mut dyn Write, report: &orphans::Report| match cli.output {
                Format::Json => output::json(out, report),
                Format::Table => output::orphans_table(out, report),
            };
            if !args.delete || report.orphans.is_empty() {
                print(&mut out, &report)?;
                return Ok(!report.needs_attention());
            }
            // The list the confirmation is about, before the question (on stderr when stdout
            // carries the one JSON document).
            match cli.output {
                Format::Table => {
                    print(&mut out, &report)?;
                    writeln!(out)?;
                    out.flush()?;
                }
                Format::Json => {
                    for o in &report.orphans {
                        writeln!(progress, "orphan: {}", o.volume_handle)?;
                    }
                }
            }
            let count = deletion::deletable(&report);
            if count > 0 {
                confirm(count, args.yes)?;
            } else {
                writeln!(
                    progress,
                    "every listed volume is attached, retained, or of unknown delete policy: nothing to delete"
                )?;
            }
            writeln!(progress, "reading the cluster again")?;
            let pvs = PvIndex::new(&cluster.persistent_volumes().await?);
            deletion::delete(&config, &mut report, &pvs, &mut progress).await?;
            print(&mut out, &report)?;
            Ok(!report.needs_attention())
        }
    }
}

/// The explicit confirmation `--delete` needs: `--yes`, or the count typed back on a terminal.
/// Without either nothing is deleted.
fn confirm(count: usize, yes: bool) -> Result<(), Error> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Error::Refused(format!(
            "--delete would delete {count} volume(s) and needs a confirmation: run it on a terminal and type the number, or add --yes"
        )));
    }
    if deletion::confirm(count, &mut stdin.lock(), &mut std::io::stderr())? {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "the answer was not {count}: nothing deleted"
        )))
    }
}
