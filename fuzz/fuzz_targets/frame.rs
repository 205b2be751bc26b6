//! The raft transport's frame decoder on arbitrary bytes (a frame's body after its length):
//! a frame, its raft messages and a snapshot chunk's message decode or fail, never panic.
#![no_main]

use flotilla::peers::{decode_frame, decode_message, Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_frame(data) {
        Ok(Frame::Batch { messages, .. }) => {
            for (_, bytes) in messages {
                let _ = decode_message(&bytes);
            }
        }
        Ok(Frame::SnapshotChunk {
            message: Some(header),
            ..
        }) => {
            let _ = decode_message(&header);
        }
        Ok(_) | Err(_) => {}
    }
});
