//! The `lifeboat` binary: parse, set up tracing, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use lifeboat::cli::{self, Cli};

fn main() -> ExitCode {
    let args = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("LIFEBOAT_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(match args.global.verbose {
            0 => "warn",
            1 => "info,aws=warn",
            _ => "debug,aws=info,hyper=info",
        })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            eprintln!("error: {}", one_line(&anyhow::Error::from(e)));
            ExitCode::from(code)
        }
    }
}

/// The error and its causes on one line, each cause only once: most messages already name
/// their cause (`cannot read source X: No such file`), and printing the chain again would
/// repeat it.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}
