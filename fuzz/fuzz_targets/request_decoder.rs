//! The socket's request decoder never panics, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = kleene_rdr::proto::decode_request(data) {
        let _ = req.op();
    }
});
