//! Responses whose entries were encoded once, when the store accepted the change.
//!
//! A `bytes` field and a message field with the same tag have the same wire format, so
//! `GetReply { entry: bytes }` is read by every client as `GetResponse { entry: Entry }`.
//! Serving a Get is then a reference-count bump and one copy into the output buffer.

use std::marker::PhantomData;

use bytes::Bytes;
use prost::Message;
use serde_json::Value;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstDecoder, ProstEncoder};

use super::proto;
use crate::model::{Key, Revision};

/// Wire-identical to `GetResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct GetReply {
    #[prost(bytes = "bytes", tag = "1")]
    pub entry: Bytes,
    #[prost(uint64, tag = "2")]
    pub revision: u64,
    #[prost(uint64, tag = "3")]
    pub epoch: u64,
}

/// Wire-identical to `BatchGetResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct BatchGetReply {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub entries: Vec<Bytes>,
    #[prost(uint64, tag = "2")]
    pub revision: u64,
    #[prost(string, repeated, tag = "3")]
    pub missing: Vec<String>,
    #[prost(uint64, tag = "4")]
    pub epoch: u64,
}

/// Wire-identical to `WatchResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct WatchReply {
    #[prost(enumeration = "proto::watch_response::Kind", tag = "1")]
    pub kind: i32,
    #[prost(uint64, tag = "2")]
    pub revision: u64,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub entries: Vec<Bytes>,
    #[prost(string, repeated, tag = "4")]
    pub deleted: Vec<String>,
    #[prost(message, repeated, tag = "5")]
    pub rejections: Vec<proto::Rejection>,
    #[prost(uint64, tag = "6")]
    pub epoch: u64,
}

/// The `Entry` message in both value formats: (JSON text, `google.protobuf.Value`).
pub fn encode_entry(key: &Key, value: &Value, mod_revision: Revision) -> (Bytes, Bytes) {
    let as_json =
        proto::Entry { key: key.to_string(), json: Bytes::from(value.to_string()), value: None, mod_revision };
    let as_proto =
        proto::Entry { key: key.to_string(), json: Bytes::new(), value: Some(to_proto_value(value)), mod_revision };
    (as_json.encode_to_vec().into(), as_proto.encode_to_vec().into())
}

pub fn to_proto_value(value: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        Value::Bool(b) => Kind::BoolValue(*b),
        // google.protobuf.Value numbers are doubles; integers beyond 2^53 lose precision
        // there, which is why JSON is the default format.
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.iter().map(to_proto_value).collect() })
        }
        Value::Object(fields) => Kind::StructValue(prost_types::Struct {
            fields: fields.iter().map(|(name, field)| (name.clone(), to_proto_value(field))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// The inverse of [`to_proto_value`], for clients.
pub fn from_proto_value(value: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(list)) => Value::Array(list.values.iter().map(from_proto_value).collect()),
        Some(Kind::StructValue(fields)) => {
            Value::Object(fields.fields.iter().map(|(name, field)| (name.clone(), from_proto_value(field))).collect())
        }
    }
}

/// Protobuf, except that a request that does not decode is the client's fault:
/// InvalidArgument with prost's reason (for example a key that is not UTF-8), where
/// tonic's own codec answers Internal.
#[derive(Debug, Clone)]
pub struct RequestCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        RequestCodec(PhantomData)
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(ProstDecoder::new(BufferSettings::default()))
    }
}

#[derive(Debug)]
pub struct RequestDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0
            .decode(buf)
            .map_err(|status| Status::invalid_argument(format!("malformed request: {}", status.message())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
