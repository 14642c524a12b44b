//! The `lifeboat` binary: parse, set up tracing, run, map the outcome to an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use lifeboat::cli::{self, Cli};

fn main() -> ExitCode {
    // A closed pipe (`lifeboat backup list | head -1`) ends the process quietly, as it ends
    // `cat`, instead of a panic in `println!`.
    // SAFETY: setting a signal's disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = match Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // Help and version are not failures; a rejected command line with --json still
            // gives its JSON error object on stdout.
            if e.use_stderr() && std::env::args().any(|a| a == "--json") {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or_default();
                let message = first.strip_prefix("error: ").unwrap_or(first);
                let json = cli::json_error(message, 2, false);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json).expect("serialises")
                );
            }
            e.exit()
        }
    };
    // The AWS SDK's own warnings (each credential provider it tried, with its full error) and
    // the Kubernetes client's own error lines only from -vv: lifeboat reports the failure
    // itself, once.
    let filter = tracing_subscriber::EnvFilter::try_from_env("LIFEBOAT_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(match args.global.verbose {
            0 => "warn,aws=error,kube_client=off",
            1 => "info,aws=error,kube_client=off",
            _ => "debug,aws=info,hyper=info",
        })
    });
    // Colour only on a terminal, and never with NO_COLOR set (https://no-color.org).
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    match cli::run_to_end(args) {
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            let code = e.exit_code();
            match cli::interrupted_by() {
                Some(_) => eprintln!("interrupted: {}", e.one_line()),
                None => eprintln!("error: {}", e.one_line()),
            }
            ExitCode::from(code)
        }
    }
}
