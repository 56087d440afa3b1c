//! How values cross between processes.
//!
//! Arguments and results are encoded with [postcard](https://docs.rs/postcard) (a compact,
//! maintained serde format; bincode is unmaintained, RUSTSEC-2025-0141) straight into the shared
//! arenas and decoded on the other side: integers, floats, `bool`, `char`, `String`, `Vec<u8>`,
//! `PathBuf`, `Vec<T>`, arrays, tuples, `Option` and any `Serialize + DeserializeOwned` type.
//! Bulk numeric data that should not be encoded at all belongs in a shared segment instead.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value that can be an argument or a result of a task. Implemented for every
/// `Serialize + DeserializeOwned + Send + 'static` type.
///
/// # Examples
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Job { name: String, weights: Vec<f64> }
///
/// let pool = shmpool::Pool::new(1)?;
/// let total = pool.apply(|j: Job| j.weights.iter().sum::<f64>(), Job { name: "a".into(), weights: vec![1.5, 2.5] })?;
/// assert_eq!(total, 4.0);
/// # Ok::<(), shmpool::Error>(())
/// ```
pub trait Payload: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> Payload for T {}
