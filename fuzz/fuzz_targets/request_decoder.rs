//! The socket's request decoder never panics, whatever the bytes; and what it accepts is a
//! request that travels unchanged: encoded again, it decodes to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;

use kleene_rdr::proto::{decode_request, encode_request};

fuzz_target!(|data: &[u8]| {
    match decode_request(data) {
        Ok(req) => {
            let again = decode_request(encode_request(&req).as_bytes());
            assert_eq!(again.as_ref(), Ok(&req), "{req:?} does not survive encoding");
            let _ = req.op();
        }
        Err(e) => assert!(!e.message.is_empty()),
    }
});
