//! The OpenAI edge never panics, whatever bytes arrive as a chat-completions
//! body: the typed parser refuses what it cannot read with a message, and
//! whatever it accepts then passes or fails validation with a named field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use routemesh_gateway::GatewayConfig;
use routemesh_gateway::parse_chat_body;
use routemesh_gateway::request::validate;

fuzz_target!(|data: &[u8]| {
    for lenient in [false, true] {
        match parse_chat_body(data, lenient) {
            Ok(request) => {
                let config = GatewayConfig {
                    max_prompt_chars: 256,
                    max_messages: 8,
                    ..GatewayConfig::default()
                };
                if let Ok(valid) = validate(request, &config, &["small-model", "large-model"]) {
                    let _ = valid.routing_prompt();
                    let _ = valid.needs;
                }
            }
            Err(message) => assert!(!message.is_empty()),
        }
    }
});
