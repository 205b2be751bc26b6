//! Every decoder of untrusted bytes, on random input (the fuzz targets' properties, run briefly
//! on every `cargo test`; `fuzz/` runs them for as long as one likes): requests or an error,
//! frames or an error, a config or a one-line error — never a panic, never past a limit.

use bytes::BytesMut;
use flotilla::config::Config;
use flotilla::peers::{decode_frame, decode_message, Frame};
use flotilla::resp::{parse_request, Limits};
use proptest::prelude::*;

/// Bytes that look like RESP often enough to get past the first byte.
fn resp_like() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"*".to_vec()),
        Just(b"$".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"-1".to_vec()),
        Just(b"3".to_vec()),
        Just(b"99999999999999999999".to_vec()),
        Just(b"SET".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(piece, 0..32).prop_map(|p| p.concat())
}

proptest! {
    // A failure prints its minimal input; nothing is written into the source tree.
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn resp_requests_or_an_error(data in resp_like(), split in any::<usize>()) {
        let limits = Limits::new(64);
        let split = split % (data.len() + 1);
        let mut buf = BytesMut::from(&data[..split]);
        let mut rest = &data[split..];
        loop {
            match parse_request(&mut buf, &limits) {
                Ok(Some(args)) => {
                    prop_assert!(args.len() <= limits.max_args);
                    prop_assert!(args.iter().all(|a| a.len() <= limits.max_bulk_bytes));
                }
                Ok(None) if !rest.is_empty() => {
                    buf.extend_from_slice(rest);
                    rest = &[];
                }
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn frames_or_an_error(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        match decode_frame(&data) {
            Ok(Frame::Batch { messages, .. }) => {
                for (_, bytes) in messages {
                    let _ = decode_message(&bytes);
                }
            }
            Ok(Frame::SnapshotChunk { message: Some(header), .. }) => {
                let _ = decode_message(&header);
            }
            Ok(_) | Err(_) => {}
        }
    }

    #[test]
    fn a_config_or_a_one_line_error(text in "[a-z_ =\"\\[\\]0-9.:\n#,-]{0,200}") {
        if let Err(e) = Config::parse("random.toml", &text) {
            prop_assert!(!e.to_string().contains('\n'), "multi-line error: {}", e);
        }
    }
}
