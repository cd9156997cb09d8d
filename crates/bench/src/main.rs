//! `linen-bench [--quick] [--out DIR] [--only SECTION,...]`: runs the benchmarks on a lab
//! of its own, writes DIR/BENCHMARKS.md and DIR/bench/{results.json,*.svg}, prints the
//! targets. Exits 1 if a section failed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use linen_bench::{Plan, Section};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Linen benchmarks, each figure next to a peer measured in the same run"
)]
struct Args {
    /// A reduced run (about a minute or two), as CI runs it.
    #[arg(long)]
    quick: bool,
    /// Where to write BENCHMARKS.md and bench/ (results.json, SVGs).
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Run only these sections (cni, vteps, churn, dataplane, convergence, disruption).
    #[arg(long, value_delimiter = ',', value_parser = parse_section)]
    only: Vec<Section>,
    /// Measure nothing: render the report and figures again from this results.json (e.g.
    /// after editing bench/NOTES.md, the hand-written analysis appended to the report).
    #[arg(long, value_name = "RESULTS_JSON", conflicts_with_all = ["quick", "only"])]
    render: Option<PathBuf>,
    /// With --only: merge the sections measured into this results.json (the others are kept
    /// from it) and write the report from the merged results.
    #[arg(
        long,
        value_name = "RESULTS_JSON",
        requires = "only",
        conflicts_with = "render"
    )]
    merge: Option<PathBuf>,
}

fn parse_section(s: &str) -> Result<Section, String> {
    Section::parse(s).ok_or_else(|| {
        let all: Vec<&str> = Section::ALL.iter().map(|s| s.name()).collect();
        format!("unknown section {s:?} (one of {})", all.join(", "))
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = linen_bench::stop::install() {
        eprintln!("linen-bench: cannot install signal handling: {e:#}");
        return ExitCode::FAILURE;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LINEN_BENCH_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    if !args.only.is_empty() {
        plan.sections = args.only;
    }
    let measured = match &args.render {
        Some(path) => linen_bench::read_results(path),
        None => linen_bench::run(&plan),
    };
    let measured = match (&args.merge, measured) {
        (Some(path), Ok(later)) => {
            linen_bench::read_results(path).map(|earlier| earlier.merge(later, &plan.sections))
        }
        (_, m) => m,
    };
    let report = match measured {
        Ok(r) => r,
        Err(e) => {
            eprintln!("linen-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let path = match linen_bench::write(&report, &args.out) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("linen-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    for t in &report.targets {
        let v = t.value.map_or("-".into(), |v| format!("{v:.3}"));
        let met = t
            .met
            .map_or("not measured", |m| if m { "met" } else { "MISSED" });
        println!("target: {} (goal {}): {v} {met}", t.name, t.goal);
    }
    println!("report: {}", path.display());
    let failures = report.failures();
    for (name, e) in &failures {
        eprintln!("linen-bench: section {name} failed: {e}");
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
