//! Crossing processes: a queue serializes as its registry key.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeTuple, Serializer};

use crate::encoding::payload::Payload;

use super::handle::Queue;
use super::protocol::Key;
use super::registry::lookup;

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&self.shared.key.pid)?;
        t.serialize_element(&self.shared.key.serial)?;
        t.end()
    }
}

impl<'de, T: Payload> Deserialize<'de> for Queue<T> {
    /// Looks the queue up in this process's registry. Fails with a serde error naming the
    /// problem when this process does not map the queue (it was created after the pool was
    /// built, or dropped) or it holds another item type.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a shmpool queue id (pid, serial)")
            }

            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut tuple: A,
            ) -> std::result::Result<Key, A::Error> {
                let pid = tuple
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let serial = tuple
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                Ok(Key { pid, serial })
            }
        }

        let key = deserializer.deserialize_tuple(2, KeyVisitor)?;
        match lookup::<T>(key) {
            Ok(shared) => Ok(Queue {
                shared,
                _item: PhantomData,
            }),
            Err(msg) => {
                // postcard drops custom messages; keep this one for the task's error.
                crate::encoding::task::note_decode_detail(&msg.to_string());
                Err(de::Error::custom(msg))
            }
        }
    }
}
