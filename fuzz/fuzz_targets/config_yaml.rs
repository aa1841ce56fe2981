//! Any bytes as a configuration file: loading answers with a configuration
//! or an error naming the key at fault; it never panics (check-config and
//! every subcommand load through the same path).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match routemesh_gateway::Config::from_yaml(text, "fuzz input") {
        Ok(config) => {
            let _ = config.gateway.connections.check();
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
