//! The one place bincode is used (it is pinned at `=2.0.1`; see REFERENCE.md). Every decode runs
//! under a size limit and must consume its whole input, so bytes from a socket or a file can
//! never make the process allocate without bound or accept trailing garbage.

use bincode::enc::write::{SizeWriter, Writer};
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
///
/// Two passes: the first counts the bytes, so that the second writes them into a vector of
/// exactly that size. (bincode's serde `encode_to_vec` grows its vector as it goes: a SET of
/// a 100-byte value reallocated and copied it three times, 5% of the Store's thread under
/// SETs.)
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut size = SizeWriter::default();
    encode_into(value, &mut size);
    let mut out = VecWriter(Vec::with_capacity(size.bytes_written));
    encode_into(value, &mut out);
    debug_assert_eq!(out.0.len(), size.bytes_written);
    out.0
}

fn encode_into<T: Serialize, W: Writer>(value: &T, writer: W) {
    bincode::serde::encode_into_writer(value, writer, config())
        .expect("codec: encoding a flotilla type failed")
}

/// Appends to a vector (bincode's own `VecWriter` cannot be made with a capacity).
struct VecWriter(Vec<u8>);

impl Writer for VecWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Decodes a value from untrusted bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(bytes, config())?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// Byte strings in serde types: `#[serde(with = "serde_bytes")]` for a `Vec<u8>`, and these
/// modules for collections of them. serde otherwise encodes a `Vec<u8>` as a sequence of `u8`s
/// and decodes it one byte at a time; as bytes, it is one copy. The encoding is the same (a
/// length, then the bytes), so data written either way reads back either way.
pub mod byte_lists {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| Bytes::new(b)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v = Vec::<ByteBuf>::deserialize(d)?;
        Ok(v.into_iter().map(ByteBuf::into_vec).collect())
    }
}

/// `(Vec<u8>, Vec<u8>)` pairs as bytes (see [`byte_lists`]).
pub mod byte_pairs {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    pub fn serialize<S: Serializer>(v: &Pairs, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(a, b)| (Bytes::new(a), Bytes::new(b))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Pairs, D::Error> {
        let v = Vec::<(ByteBuf, ByteBuf)>::deserialize(d)?;
        Ok(v.into_iter()
            .map(|(a, b)| (a.into_vec(), b.into_vec()))
            .collect())
    }
}

/// `(u64, Vec<u8>)` pairs as bytes (see [`byte_lists`]).
pub mod numbered_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(v: &[(u64, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(n, b)| (n, Bytes::new(b))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u64, Vec<u8>)>, D::Error> {
        let v = Vec::<(u64, ByteBuf)>::deserialize(d)?;
        Ok(v.into_iter().map(|(n, b)| (n, b.into_vec())).collect())
    }
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

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct AsSequences {
        one: Vec<u8>,
        maybe: Option<Vec<u8>>,
        lists: Vec<Vec<u8>>,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        numbered: Vec<(u64, Vec<u8>)>,
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct AsBytes {
        #[serde(with = "serde_bytes")]
        one: Vec<u8>,
        #[serde(with = "serde_bytes")]
        maybe: Option<Vec<u8>>,
        #[serde(with = "byte_lists")]
        lists: Vec<Vec<u8>>,
        #[serde(with = "byte_pairs")]
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        #[serde(with = "numbered_bytes")]
        numbered: Vec<(u64, Vec<u8>)>,
    }

    /// Data directories and peers of earlier builds encoded byte strings as sequences: the
    /// byte encoding must be the same, both ways.
    #[test]
    fn byte_strings_encode_as_their_sequences_did() {
        let b = |s: &str| s.as_bytes().to_vec();
        let old = AsSequences {
            one: b("value"),
            maybe: Some((0..=255).collect()),
            lists: vec![b("k1"), vec![], b("k3")],
            pairs: vec![(b("a"), b("1")), (b("b"), vec![0; 300])],
            numbered: vec![(7, b("raft message")), (u64::MAX, vec![])],
        };
        let new = AsBytes {
            one: old.one.clone(),
            maybe: old.maybe.clone(),
            lists: old.lists.clone(),
            pairs: old.pairs.clone(),
            numbered: old.numbered.clone(),
        };
        assert_eq!(encode(&old), encode(&new));
        assert_eq!(decode::<AsBytes>(&encode(&old)).unwrap(), new);
        assert_eq!(decode::<AsSequences>(&encode(&new)).unwrap(), old);
        let mut truncated = encode(&new);
        truncated.pop();
        assert!(decode::<AsBytes>(&truncated).is_err());
    }

    #[test]
    fn a_crafted_huge_length_is_refused_without_allocating() {
        // A varint length prefix of u64::MAX for a String: without the limit this aborts the
        // process trying to allocate.
        let crafted = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(decode::<String>(&crafted).is_err());
        assert!(decode::<Vec<Vec<u8>>>(&crafted).is_err());
        assert!(decode::<serde_bytes::ByteBuf>(&crafted).is_err());
    }
}
