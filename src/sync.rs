//! The one door to atomics: `core` normally, `loom` under `cfg(loom)`, so the ring and wake
//! algorithms can be modelled in one process (loom cannot follow a `fork`).
//!
//! The atomic types are `#[repr(transparent)]` newtypes that deref to the real type: the shared
//! memory layout is that of the primitive, and `clippy.toml` can forbid naming the raw types
//! anywhere else (`disallowed-types`), so nothing bypasses this module by accident.
#![allow(clippy::disallowed_types)]
#![cfg_attr(not(loom), allow(unreachable_pub))]

use std::ops::Deref;

#[cfg(not(loom))]
use core::sync::atomic as imp;
#[cfg(loom)]
use loom::sync::atomic as imp;

pub use imp::Ordering;

macro_rules! facade {
    ($name:ident, $prim:ty) => {
        #[doc = concat!("`", stringify!($name), "` from `core` or `loom` (see the module docs).")]
        #[repr(transparent)]
        #[derive(Debug)]
        pub struct $name(imp::$name);

        impl $name {
            /// A new atomic holding `v`.
            #[cfg(not(loom))]
            pub const fn new(v: $prim) -> Self {
                Self(imp::$name::new(v))
            }

            /// A new atomic holding `v`.
            #[cfg(loom)]
            pub fn new(v: $prim) -> Self {
                Self(imp::$name::new(v))
            }
        }

        impl Deref for $name {
            type Target = imp::$name;
            fn deref(&self) -> &imp::$name {
                &self.0
            }
        }
    };
}

facade!(AtomicU32, u32);
facade!(AtomicU64, u64);

/// An `UnsafeCell` with loom's closure API, so the ring's slot accesses are race-checked under loom.
#[cfg(not(loom))]
#[derive(Debug)]
#[repr(transparent)]
pub struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(loom)]
pub use loom::cell::UnsafeCell;
