//! `celsius`: the seed's first connector application.
//!
//! Input (from the `celsius_feed` source connector): a big-endian `f32` Celsius value per
//! message. Output (to the `fahrenheit_conversion` sink connector): the Fahrenheit value as
//! text, e.g. `32`, `33.8`.

use std::process::ExitCode;

use bytes::Bytes;
use clap::Parser;
use engine::{App, EngineArgs};

/// Converts Celsius readings to Fahrenheit (see examples/celsius/celsius.toml).
#[derive(Parser)]
#[command(name = "celsius", version)]
struct Cli {
    #[command(flatten)]
    args: EngineArgs,
}

/// Decodes the feed's payload: exactly four bytes, a big-endian `f32`.
fn decode_feed(data: &[u8]) -> Result<f32, String> {
    <[u8; 4]>::try_from(data)
        .map(f32::from_be_bytes)
        .map_err(|_| format!("expected a 4-byte big-endian f32, got {} bytes", data.len()))
}

/// The computation: Celsius to Fahrenheit, rounded to six decimals so `33.8` prints as such.
fn to_fahrenheit(celsius: f32) -> Option<f64> {
    let f = f64::from(celsius) * 1.8 + 32.0;
    Some((f * 1e6).round() / 1e6)
}

/// Encodes the output as text, with no key.
fn encode_conversion(f: &f64) -> (Bytes, Bytes) {
    (Bytes::new(), Bytes::from(f.to_string()))
}

fn application() -> App {
    let mut app = App::new();
    app.pipeline("celsius_feed")
        .decode(decode_feed)
        .to(to_fahrenheit)
        .encode(encode_conversion)
        .to_sink("fahrenheit_conversion");
    app
}

fn main() -> ExitCode {
    telemetry::init_logging();
    let cli = Cli::parse();
    let config = match cli.args.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("celsius: {e}");
            return ExitCode::from(2);
        }
    };
    match engine::run(application(), config, cli.args.options()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("celsius: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_like_the_seed() {
        let out: Vec<String> = (0..4)
            .map(|c| {
                let f = to_fahrenheit(decode_feed(&(c as f32).to_be_bytes()).unwrap()).unwrap();
                String::from_utf8(encode_conversion(&f).1.to_vec()).unwrap()
            })
            .collect();
        assert_eq!(out, vec!["32", "33.8", "35.6", "37.4"]);
        assert!(decode_feed(b"abc").is_err());
    }
}
