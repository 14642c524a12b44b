//! `demo` (the whole flow on generated data, told step by step) and the hidden `demo-data`
//! (generated volume data for the benchmark and scripts).

use std::path::PathBuf;

use clap::Subcommand;
use indicatif::ProgressBar;

use super::{human, Ctx, Error};
use crate::demo::{self, DemoError, DemoOptions, DemoStep, Narrator};

#[derive(Debug, Subcommand)]
pub enum DemoDataCommand {
    /// Write a sparse image of mixed content (holes, duplicates, text-like, random).
    Generate {
        out: PathBuf,
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Overwrite a fraction of an image with random data in aligned extents; write the
    /// changed ranges as a --changed-ranges file.
    Mutate {
        image: PathBuf,
        #[arg(long, default_value_t = 0.01)]
        fraction: f64,
        #[arg(long, default_value_t = 64)]
        extent_kib: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        ranges_out: PathBuf,
    },
}

pub(super) fn demo_data(cmd: &DemoDataCommand) -> Result<(), Error> {
    let failed = |path: &PathBuf| {
        let what = path.display().to_string();
        move |error| DemoError::Io { what, error }
    };
    match cmd {
        DemoDataCommand::Generate {
            out,
            size_mib,
            seed,
        } => demo::generate_image(out, size_mib << 20, *seed).map_err(failed(out))?,
        DemoDataCommand::Mutate {
            image,
            fraction,
            extent_kib,
            seed,
            ranges_out,
        } => {
            demo::mutate_into(image, *fraction, extent_kib << 10, *seed, ranges_out)
                .map_err(failed(image))?;
        }
    }
    Ok(())
}

/// Tells the demo's steps on standard output (nothing with `--json`).
struct Told<'a>(&'a Ctx<'a>);

impl Narrator for Told<'_> {
    fn step(&self, step: DemoStep<'_>) {
        if !self.0.g.json {
            println!("{}", step_line(step));
        }
    }

    fn progress(&self, what: &str) -> ProgressBar {
        self.0.progress(what)
    }
}

fn step_line(step: DemoStep<'_>) -> String {
    match step {
        DemoStep::Started { dir } => {
            format!("lifeboat demo in {} (password \"demo\")", dir.display())
        }
        DemoStep::Generated { size_mib } => format!(
            "1. generated a {size_mib} MiB volume of mixed content (holes, text, random, duplicates)"
        ),
        DemoStep::RepositoryCreated { at } => {
            format!("2. created an encrypted repository at {}", at.display())
        }
        DemoStep::FullBackup(full) => format!(
            "3. full backup {}: read {}, stored {} ({:.2}s)",
            full.snapshot_id.short(),
            human(full.stats.bytes_read),
            human(full.stats.bytes_uploaded),
            full.stats.duration_seconds
        ),
        DemoStep::IncrementalBackup(inc) => format!(
            "4. changed 1% in 64 KiB extents; incremental backup {}: read {}, stored {} ({:.2}s)",
            inc.snapshot_id.short(),
            human(inc.stats.bytes_read),
            human(inc.stats.bytes_uploaded),
            inc.stats.duration_seconds
        ),
        DemoStep::Restored {
            to,
            stats,
            identical,
        } => format!(
            "5. restored demo-volume:latest to {} ({:.2}s): {}",
            to.display(),
            stats.duration_seconds,
            if identical {
                "bit-identical to the source"
            } else {
                "DIFFERS from the source"
            }
        ),
        DemoStep::Checked { ok, packs_read } => format!(
            "6. repo check --read-data: {} ({packs_read} packs verified)",
            if ok { "no damage" } else { "DAMAGE FOUND" }
        ),
    }
}

pub(super) async fn demo(ctx: &Ctx<'_>, dir: Option<PathBuf>, size_mib: u64) -> Result<(), Error> {
    let opts = DemoOptions {
        dir,
        size_mib,
        store: ctx.store_options(),
        cancel: ctx.cancel.clone(),
    };
    let report = demo::run(&opts, &Told(ctx)).await?;
    if ctx.g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serialises")
        );
    }
    if !report.identical {
        return Err(DemoError::Differs.into());
    }
    if !report.check_ok {
        return Err(Error::CheckFailed(report.check_errors));
    }
    Ok(())
}
