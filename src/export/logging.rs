//! Log output: human text or one JSON object per line, on stderr (stdout is for verdicts).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `level` is an `EnvFilter` directive (`info`,
/// `slo_probe=debug,librdkafka=warn`). Safe to call more than once (later calls do nothing).
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// A line for the operator on stderr that is not a log event (smoke progress, why a command
/// could not run), printed whatever the log level. As text: `text`. With `--log-format json`:
/// one JSON object shaped like the log lines (`timestamp`, `level`, `target`, `message`, then
/// `fields`), so that every stderr line of a JSON run parses.
pub fn say(
    format: LogFormat,
    level: tracing::Level,
    text: &str,
    message: &str,
    fields: serde_json::Value,
) {
    match format {
        LogFormat::Text => eprintln!("{text}"),
        LogFormat::Json => {
            let mut line = serde_json::json!({
                "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
                "level": level.as_str(),
                "target": "slo_probe",
                "message": message,
            });
            if let (Some(line), serde_json::Value::Object(fields)) = (line.as_object_mut(), fields)
            {
                line.extend(fields);
            }
            eprintln!("{line}");
        }
    }
}
