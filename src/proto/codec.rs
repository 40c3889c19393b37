//! The gRPC codec of the public services: prost encoding and decoding, except that a
//! request that does not decode is answered INVALID_ARGUMENT naming the field at fault (for
//! example a string field holding invalid UTF-8), where tonic's prost codec answers INTERNAL
//! with the decoder's details.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// A prost codec whose decode failures are INVALID_ARGUMENT (see [`invalid_message`]).
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = MessageEncoder<T>;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        MessageEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder(PhantomData)
    }
}

/// Encodes `T` with prost.
#[derive(Debug)]
pub struct MessageEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for MessageEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|_| Status::internal("internal error"))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Decodes `U` with prost; a failure is [`invalid_message`].
#[derive(Debug)]
pub struct MessageDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| invalid_message(&e))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// INVALID_ARGUMENT for a message that does not decode, naming the top-level field at fault
/// (`field: not valid UTF-8`, `field: malformed`), or `message: malformed` when the
/// decoder could not tell which field. Nothing else of the decoder's report is passed on.
///
/// prost reports the fields it was decoding innermost first, as `Message.field: ` segments
/// before its description; the last segment is the request's own field.
pub fn invalid_message(error: &prost::DecodeError) -> Status {
    let text = error.to_string();
    let fields = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or_default()
        .split(": ")
        .take_while(|segment| {
            segment.contains('.')
                && segment
                    .chars()
                    .all(|c| c == '.' || c == '_' || c.is_ascii_alphanumeric())
        });
    let field = fields
        .last()
        .and_then(|segment| segment.rsplit('.').next())
        .unwrap_or("message");
    let reason = if text.ends_with("not UTF-8 encoded") {
        "not valid UTF-8"
    } else {
        "malformed"
    };
    Status::invalid_argument(format!("{field}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::{CreateSessionRequest, LookupRequest};

    /// A length-delimited field `tag` holding `bytes`.
    fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
        [&[tag << 3 | 2, bytes.len() as u8][..], bytes].concat()
    }

    #[test]
    fn invalid_utf8_names_the_field_and_nothing_else() {
        let wire = [field(1, b"acme"), field(2, b"al\xffce")].concat();
        let error = CreateSessionRequest::decode(wire.as_slice()).unwrap_err();
        let status = invalid_message(&error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "user_id: not valid UTF-8");
    }

    #[test]
    fn a_nested_field_is_named_by_the_request_field_that_holds_it() {
        // attributes (map entry, tag 9) whose value (tag 2) is not UTF-8.
        let entry = [field(1, b"role"), field(2, b"\xc3\x28")].concat();
        let wire = field(9, &entry);
        let error = CreateSessionRequest::decode(wire.as_slice()).unwrap_err();
        assert_eq!(
            invalid_message(&error).message(),
            "attributes: not valid UTF-8"
        );
        let wire = field(3, b"sdr1_\xff");
        let error = LookupRequest::decode(wire.as_slice()).unwrap_err();
        assert_eq!(invalid_message(&error).message(), "key: not valid UTF-8");
    }

    #[test]
    fn other_damage_is_malformed() {
        let error = CreateSessionRequest::decode(&[0x12, 0x40, b'a'][..]).unwrap_err();
        assert_eq!(invalid_message(&error).code(), tonic::Code::InvalidArgument);
        assert!(invalid_message(&error).message().ends_with(": malformed"));
    }
}
