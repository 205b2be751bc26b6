//! The one place bincode is used (it is pinned at `=2.0.1`; see REFERENCE.md). Every decode runs
//! under a size limit and must consume its whole input, so bytes from a socket or a file can
//! never make the process allocate without bound or accept trailing garbage.

use serde::{de::DeserializeOwned, Serialize};

/// The largest value any decode may allocate for, in bytes.
pub const MAX_DECODE_BYTES: usize = 256 << 20;

type Limited = bincode::config::Configuration<
    bincode::config::BigEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_DECODE_BYTES>,
>;

fn config() -> Limited {
    bincode::config::standard()
        .with_big_endian()
        .with_limit::<MAX_DECODE_BYTES>()
}

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not a valid encoding of the expected type, or exceed the limit.
    #[error("codec: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// The bytes held a valid value followed by more bytes.
    #[error("codec: {0} trailing bytes after the value")]
    Trailing(usize),
}

/// Encodes a value. Encoding flotilla's own types cannot fail short of a bug.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, config()).expect("codec: encoding a flotilla type failed")
}

/// Decodes a value from untrusted bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(bytes, config())?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_trailing_bytes() {
        let v: (u64, Vec<u8>) = (7, b"abc".to_vec());
        let bytes = encode(&v);
        assert_eq!(decode::<(u64, Vec<u8>)>(&bytes).unwrap(), v);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode::<(u64, Vec<u8>)>(&longer),
            Err(CodecError::Trailing(1))
        ));
    }

    #[test]
    fn a_crafted_huge_length_is_refused_without_allocating() {
        // A varint length prefix of u64::MAX for a String: without the limit this aborts the
        // process trying to allocate.
        let crafted = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(decode::<String>(&crafted).is_err());
        assert!(decode::<Vec<Vec<u8>>>(&crafted).is_err());
    }
}
