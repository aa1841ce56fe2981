//! Request validation never panics, whatever bytes arrive as a protobuf
//! GenerateRequest: decoding refuses malformed input, and every decoded
//! request is either accepted within the configured limits or refused with
//! an error that names a field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use routemesh_gateway::GatewayConfig;
use routemesh_gateway::request::validate;
use routemesh_proto::v1::GenerateRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = GenerateRequest::decode(data) else {
        return;
    };
    // Small limits, so the fuzzer reaches them.
    let config = GatewayConfig {
        max_prompt_chars: 64,
        max_messages: 4,
        max_tokens_limit: 100,
        default_max_tokens: 10,
        ..GatewayConfig::default()
    };
    match validate(request, &config, &["small-model", "large-model"]) {
        Ok(valid) => {
            assert!(valid.prompt_chars <= config.max_prompt_chars);
            assert!(valid.messages.len() <= config.max_messages);
            assert!(valid.max_tokens() <= config.max_tokens_limit);
            let _ = valid.prompt_tokens_estimate();
            let _ = valid.routing_prompt();
        }
        Err(e) => {
            let _ = (e.code(), e.side(), e.to_string());
        }
    }
});
