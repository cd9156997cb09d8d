//! The `linen` CNI plugin binary: logging to stderr (stdout is the protocol), then the
//! CNI dispatcher.

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LINEN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_ansi(false)
        .init();
    cni::plugin::run(
        &linen::plugin::Linen,
        concat!("linen v", env!("CARGO_PKG_VERSION")),
    );
}
