//! A worker's record as read back from Redis (JSON written by any version,
//! or corrupted): it decodes or is refused, and a record that decodes goes
//! through the same checks the gateway applies before routing to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use routemesh_mesh::WorkerRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = serde_json::from_slice::<WorkerRecord>(data) {
        let _ = routemesh_mesh::check_model_identity(record.router_model.as_deref(), record.params_b);
        let _ = routemesh_mesh::check_declared_speed(
            record.expected_ttft_ms,
            record.expected_tokens_per_second,
        );
        let _ = serde_json::to_vec(&record);
    }
});
