//! Recovering the message of a failing `Serialize`.
//!
//! postcard turns every `serde::ser::Error::custom(msg)` into its unit variant `SerdeSerCustom`
//! ("Serde Serialization Error"), so the user's own message is lost. When postcard reports that,
//! [`serialize_error`] serializes the value once more into [`Probe`], a serializer that writes
//! nothing and whose error keeps the message, and reports that message instead. This runs only
//! on the failure path.

use std::fmt;

use serde::Serialize;
use serde::ser::{self, Serializer};

/// Why serializing `value` failed, given postcard's error for it: the serializer's own message,
/// and the user's `Error::custom` message when postcard dropped it.
pub(crate) fn serialize_error<T: Serialize + ?Sized>(e: &postcard::Error, value: &T) -> String {
    if matches!(e, postcard::Error::SerdeSerCustom)
        && let Err(ProbeError(msg)) = value.serialize(Probe)
    {
        return msg;
    }
    e.to_string()
}

/// The error of [`Probe`]: the message given to `custom`.
#[derive(Debug)]
struct ProbeError(String);

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProbeError {}

impl ser::Error for ProbeError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        ProbeError(msg.to_string())
    }
}

/// A serializer that accepts everything and writes nothing (see the module docs).
struct Probe;

type R = Result<(), ProbeError>;

macro_rules! accept {
    ($($name:ident($ty:ty)),* $(,)?) => {
        $(fn $name(self, _: $ty) -> R { Ok(()) })*
    };
}

impl Serializer for Probe {
    type Ok = ();
    type Error = ProbeError;
    type SerializeSeq = Probe;
    type SerializeTuple = Probe;
    type SerializeTupleStruct = Probe;
    type SerializeTupleVariant = Probe;
    type SerializeMap = Probe;
    type SerializeStruct = Probe;
    type SerializeStructVariant = Probe;

    accept!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str),
    );

    fn serialize_none(self) -> R {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> R {
        v.serialize(Probe)
    }
    fn serialize_unit(self) -> R {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> R {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> R {
        v.serialize(Probe)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        v: &T,
    ) -> R {
        v.serialize(Probe)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
    fn serialize_tuple(self, _: usize) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
}

macro_rules! compound {
    ($($tr:ident :: $method:ident),* $(,)?) => {
        $(impl ser::$tr for Probe {
            type Ok = ();
            type Error = ProbeError;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> R {
                v.serialize(Probe)
            }
            fn end(self) -> R {
                Ok(())
            }
        })*
    };
}

compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

impl ser::SerializeMap for Probe {
    type Ok = ();
    type Error = ProbeError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> R {
        k.serialize(Probe)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> R {
        v.serialize(Probe)
    }
    fn end(self) -> R {
        Ok(())
    }
}

impl ser::SerializeStruct for Probe {
    type Ok = ();
    type Error = ProbeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, _: &'static str, v: &T) -> R {
        v.serialize(Probe)
    }
    fn end(self) -> R {
        Ok(())
    }
}

impl ser::SerializeStructVariant for Probe {
    type Ok = ();
    type Error = ProbeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, _: &'static str, v: &T) -> R {
        v.serialize(Probe)
    }
    fn end(self) -> R {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Refuses;

    impl Serialize for Refuses {
        fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(ser::Error::custom("refuses to cross: reason 42"))
        }
    }

    #[test]
    fn the_users_custom_message_survives_postcard() {
        let value = (1u8, vec![Some(Refuses)]);
        let e = postcard::to_allocvec(&value).unwrap_err();
        assert_eq!(e, postcard::Error::SerdeSerCustom);
        assert_eq!(serialize_error(&e, &value), "refuses to cross: reason 42");
        // postcard's own errors keep postcard's message.
        let e = postcard::Error::SerializeSeqLengthUnknown;
        assert_eq!(serialize_error(&e, &1u8), e.to_string());
    }
}
