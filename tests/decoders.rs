//! Every decoder of untrusted bytes, on random input (the fuzz targets' properties, run briefly
//! on every `cargo test`; `fuzz/` runs them for as long as one likes): requests or an error,
//! frames or an error, a config or a one-line error — never a panic, never past a limit.

use bytes::BytesMut;
use flotilla::config::Config;
use flotilla::peers::{decode_frame, decode_message, Frame};
use flotilla::resp::{Limits, ProtocolError, RequestParser};
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

    /// Requests or an error, within the limits; and, fed in pieces, what the same bytes give
    /// fed whole (a request not yet whole is resumed where it stopped).
    #[test]
    fn resp_requests_or_an_error(data in resp_like(), cuts in proptest::collection::vec(any::<usize>(), 0..4)) {
        let limits = Limits::new(64);
        let whole = requests(&data, &[], &limits);
        for r in whole.0.iter() {
            prop_assert!(r.len() <= limits.max_args);
            prop_assert!(r.iter().all(|a| a.len() <= limits.max_bulk_bytes));
        }
        prop_assert_eq!(requests(&data, &cuts, &limits), whole);
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

/// The requests `data` holds, fed to one parser in pieces cut at `cuts` (taken modulo its
/// length), and the error that stopped them, if one did.
fn requests(
    data: &[u8],
    cuts: &[usize],
    limits: &Limits,
) -> (Vec<Vec<bytes::Bytes>>, Option<ProtocolError>) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.push(data.len());
    cuts.sort_unstable();
    let (mut parser, mut buf, mut fed, mut got) =
        (RequestParser::default(), BytesMut::new(), 0, Vec::new());
    for cut in cuts {
        buf.extend_from_slice(&data[fed..cut]);
        fed = cut;
        loop {
            match parser.parse(&mut buf, limits) {
                Ok(Some(args)) => got.push(args),
                Ok(None) => break,
                Err(e) => return (got, Some(e)),
            }
        }
    }
    (got, None)
}
