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
/// struct Order { name: String, weights: Vec<f64> }
///
/// let pool = shmpool::Pool::new(1)?;
/// let total = pool.apply(|j: Order| j.weights.iter().sum::<f64>(), Order { name: "a".into(), weights: vec![1.5, 2.5] })?;
/// assert_eq!(total, 4.0);
/// # Ok::<(), shmpool::Error>(())
/// ```
pub trait Payload: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> Payload for T {}

/// The bytes of a byte-vector payload (`Vec<u8>`, `Box<[u8]>`), or `None` for any other type.
///
/// Serde has no special case for them: `Vec<u8>` is a sequence, and postcard writes and reads it
/// one `u8` call at a time (~0.5 GB/s). Its wire form, though, is exactly that of a byte string
/// (a varint length, then the bytes), so a byte vector can be written with one copy
/// ([`write_bytes`]) and read with one ([`read_byte_payload`]) in *postcard's own format*: each
/// side may take the fast path or not, and the other side still agrees. (`String` needs no such
/// path: serde already hands postcard a `&str`, written and read with one copy.) A byte vector
/// nested in another type goes through serde as usual; mark the field
/// `#[serde(with = "serde_bytes")]` to get the same speed there.
pub(crate) fn byte_payload<T: 'static>(v: &T) -> Option<&[u8]> {
    let any: &dyn std::any::Any = v;
    if let Some(v) = any.downcast_ref::<Vec<u8>>() {
        return Some(v);
    }
    any.downcast_ref::<Box<[u8]>>().map(|b| &**b)
}

/// Whether `T` is a byte vector that [`read_byte_payload`] can make.
pub(crate) fn is_byte_payload<T: 'static>() -> bool {
    use std::any::TypeId;
    let t = TypeId::of::<T>();
    t == TypeId::of::<Vec<u8>>() || t == TypeId::of::<Box<[u8]>>()
}

/// Appends `bytes` as postcard writes a byte string: LEB128 varint length, then the bytes.
pub(crate) fn write_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    let mut prefix = [0u8; 10];
    let n = varint(bytes.len() as u64, &mut prefix);
    out.reserve(n + bytes.len());
    out.extend_from_slice(&prefix[..n]);
    out.extend_from_slice(bytes);
}

/// Writes `v` as a LEB128 varint into `buf`; returns how many bytes it took.
pub(crate) fn varint(mut v: u64, buf: &mut [u8; 10]) -> usize {
    let mut i = 0;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf[i] = byte;
            return i + 1;
        }
        buf[i] = byte | 0x80;
        i += 1;
    }
}

/// Reads a LEB128 varint `usize` from the front of `bytes`: `(value, bytes used)`.
fn read_varint(bytes: &[u8]) -> Result<(usize, usize), String> {
    let mut v: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(b & 0x7f);
        if i == 9 && b > 1 {
            return Err("length varint overflows 64 bits".into());
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            let v = usize::try_from(v).map_err(|_| "length out of range".to_string())?;
            return Ok((v, i + 1));
        }
    }
    Err("truncated length varint".into())
}

/// Reads one byte string (as [`write_bytes`] wrote it) from the front of `bytes`: the bytes and
/// how much of the input they took. Every length is checked against what is there.
fn read_bytes(bytes: &[u8]) -> Result<(&[u8], usize), String> {
    let (len, used) = read_varint(bytes)?;
    let rest = &bytes[used..];
    if len > rest.len() {
        return Err(format!(
            "byte string of {len} bytes, but only {} remain",
            rest.len()
        ));
    }
    Ok((&rest[..len], used + len))
}

/// Makes a `T` from the bytes of a byte string when `T` is a byte vector (one copy); `None` for
/// any other `T`. The counterpart of [`byte_payload`], in the same postcard-compatible format.
pub(crate) fn read_byte_payload<T: 'static>(bytes: &[u8]) -> Option<Result<T, String>> {
    if !is_byte_payload::<T>() {
        return None;
    }
    Some(read_bytes(bytes).map(|(b, _)| byte_vector::<T>(b)))
}

/// A `T` (`Vec<u8>` or `Box<[u8]>`, checked by the caller) holding a copy of `b`.
fn byte_vector<T: 'static>(b: &[u8]) -> T {
    let mut v = bytes_with_capacity(b.len());
    v.extend_from_slice(b);
    byte_vector_from(v)
}

/// `v` as a `T` (`Vec<u8>` or `Box<[u8]>`, checked by the caller).
fn byte_vector_from<T: 'static>(v: Vec<u8>) -> T {
    let mut out: Option<T> = None;
    let any: &mut dyn std::any::Any = &mut out;
    if let Some(dst) = any.downcast_mut::<Option<Vec<u8>>>() {
        *dst = Some(v);
    } else if let Some(dst) = any.downcast_mut::<Option<Box<[u8]>>>() {
        *dst = Some(v.into_boxed_slice());
    }
    out.expect("byte_vector_from is only called for byte-vector types")
}

/// One byte vector's allocation kept for reuse (`bigpayload`, "Reuse of byte vectors"): a
/// vector the pool already owns and has finished with (a big `Vec<u8>` argument once it was
/// written to its segment, in the parent; a big `Vec<u8>` result once it was shipped, in a
/// worker), into which the next large byte vector is decoded instead of into fresh memory.
///
/// Bounds: one vector; kept only when its capacity is at least `min` (an eighth of the arena)
/// and at most `max` (16 arena sizes); reused only for a length `len >= min` with
/// `len <= capacity <= 2 * len`, so nobody receives a vector much larger than asked for.
#[derive(Debug)]
pub(crate) struct SpareBytes {
    min: usize,
    max: usize,
    slot: std::sync::Mutex<Option<Vec<u8>>>,
}

impl SpareBytes {
    /// The spare of a pool (or worker) whose arenas hold `arena_cap` bytes.
    pub(crate) fn new(arena_cap: usize) -> SpareBytes {
        SpareBytes {
            min: (arena_cap / 8).max(1),
            max: arena_cap.saturating_mul(crate::encoding::bigpayload::REUSE_MAX_ARENAS),
            slot: std::sync::Mutex::new(None),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `v`'s allocation if `T` is a byte vector within the bounds (replacing the spare
    /// held so far); any other value is simply dropped. The replaced vector is freed after the
    /// lock. While a fork server is being forked ([`spares_dropped_for_fork`]) nothing is kept.
    pub(crate) fn keep<T: 'static>(&self, v: T) {
        let Ok(bytes) = into_byte_vector(v) else {
            return;
        };
        if !self.suits_keeping(&bytes) {
            return;
        }
        // Held while the spare goes in, so a fork cannot start between this check and the
        // insertion (the fork holds it across `fork`, having emptied every pool's spare).
        let registry = match POOL_SPARES.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        self.put(bytes, registry);
    }

    /// Makes `bytes` the spare while `registry` (the lock of [`POOL_SPARES`]) is held; the
    /// replaced spare is freed after the lock.
    fn put(
        &self,
        bytes: Vec<u8>,
        registry: std::sync::MutexGuard<'_, Vec<std::sync::Weak<SpareBytes>>>,
    ) {
        let old = self.slot().replace(bytes);
        drop(registry);
        drop(old);
    }

    /// Whether [`keep`](Self::keep) would keep `v`.
    fn suits_keeping(&self, v: &Vec<u8>) -> bool {
        (self.min..=self.max).contains(&v.capacity())
    }

    /// Whether `v`'s allocation may receive a vector of `len` bytes (see the bounds above).
    fn suits_reuse(&self, v: &Vec<u8>, len: usize) -> bool {
        len >= self.min && v.capacity() >= len && v.capacity() <= len.saturating_mul(2)
    }

    /// The spare, emptied, if it suits a vector of `len` bytes (see the bounds above); otherwise
    /// it stays for a later vector it suits.
    fn take_for(&self, len: usize) -> Option<Vec<u8>> {
        if len < self.min {
            return None;
        }
        let mut slot = self.slot();
        if !slot.as_ref().is_some_and(|v| self.suits_reuse(v, len)) {
            return None;
        }
        let mut v = slot.take()?;
        drop(slot);
        v.clear();
        Some(v)
    }

    /// Like [`read_byte_payload`], decoding into the spare when it suits the length.
    pub(crate) fn read<T: 'static>(&self, bytes: &[u8]) -> Option<Result<T, String>> {
        if !is_byte_payload::<T>() {
            return None;
        }
        Some(
            read_bytes(bytes).map(|(b, _)| match self.take_for(b.len()) {
                Some(mut v) => {
                    v.extend_from_slice(b);
                    byte_vector_from(v)
                }
                None => byte_vector::<T>(b),
            }),
        )
    }
}

/// Every pool's spare byte vector (`Pool`'s `spare_bytes`), so that a fork server about to be
/// forked for another pool can drop them first ([`spares_dropped_for_fork`]).
static POOL_SPARES: std::sync::Mutex<Vec<std::sync::Weak<SpareBytes>>> =
    std::sync::Mutex::new(Vec::new());

/// Registers a pool's spare (see [`spares_dropped_for_fork`]).
pub(crate) fn register_pool_spare(spare: &std::sync::Arc<SpareBytes>) {
    let mut all = POOL_SPARES.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|w| w.strong_count() > 0);
    all.push(std::sync::Arc::downgrade(spare));
}

/// Empties every pool's spare byte vector (freeing them) and keeps them empty until the
/// returned guard is dropped: held across the fork of a fork server. A spare is private heap
/// memory: one inherited by another pool's fork server (and its workers) would stay allocated
/// there, copy-on-write, for that pool's whole life, even after its own pool reused it (each
/// page then copied on the write) or was dropped: up to 16 arena sizes per pool
/// (`bigpayload`, "Reuse of byte vectors"; `tests/result_segments.rs`).
pub(crate) fn spares_dropped_for_fork()
-> std::sync::MutexGuard<'static, Vec<std::sync::Weak<SpareBytes>>> {
    let all = POOL_SPARES.lock().unwrap_or_else(|e| e.into_inner());
    for spare in all.iter().filter_map(std::sync::Weak::upgrade) {
        // `try_lock`: never wait on a slot here (a copy of this process made by a fork, a
        // worker building a pool of its own, could hold a slot locked for good). A slot that
        // is busy is being taken by a result (`take_for`); `keep` keeps nothing while this guard
        // is held (it gives up on the registry's lock instead of waiting).
        let v = match spare.slot.try_lock() {
            Ok(mut slot) => slot.take(),
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().take(),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        if let Some(v) = v {
            discard_pages(v);
        }
    }
    all
}

/// Frees `v`, giving its whole pages back to the kernel first: the allocator may keep a freed
/// block (dirty) for later allocations rather than unmap it, and a fork would then copy it
/// all the same.
fn discard_pages(v: Vec<u8>) {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = (v.as_ptr() as usize).next_multiple_of(page);
    let end = (v.as_ptr() as usize + v.capacity()) & !(page - 1);
    if end > start {
        // SAFETY: `start..end` lies inside `v`'s allocation (aligned inward, so no allocator
        // metadata around it), which we own alone and free right after: its contents are never
        // read again. MADV_DONTNEED on private anonymous memory only drops the pages (a later
        // touch, by the allocator's next user, sees zeros, valid for any use of fresh memory).
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
    drop(v);
}

/// `v` as a byte vector, or `v` back if `T` is not one.
pub(crate) fn into_byte_vector<T: 'static>(v: T) -> Result<Vec<u8>, T> {
    let mut v = Some(v);
    let any: &mut dyn std::any::Any = &mut v;
    if let Some(b) = any.downcast_mut::<Option<Vec<u8>>>() {
        return Ok(b.take().expect("just set"));
    }
    if let Some(b) = any.downcast_mut::<Option<Box<[u8]>>>() {
        return Ok(Vec::from(b.take().expect("just set")));
    }
    Err(v.expect("not taken"))
}

/// What one call whose result is a byte vector decodes into: its own argument's allocation
/// when that was a large byte vector (lent until the result arrives), else the pool's spare
/// (`bigpayload`, "Reuse of byte vectors"). Lending it to the call itself, rather than to the
/// pool once the call is submitted, means the call's result always finds it, even when the
/// result is decoded before `submit` returns. Whatever is left of it goes to the pool's spare.
#[derive(Debug)]
pub(crate) struct CallSpare {
    pool: std::sync::Arc<SpareBytes>,
    own: std::sync::Mutex<Option<Vec<u8>>>,
}

impl CallSpare {
    /// A call's spare, lending it `arg`'s allocation if `arg` is a byte vector the pool's spare
    /// may keep; otherwise `arg` is handed back.
    pub(crate) fn lend<A: 'static>(
        pool: &std::sync::Arc<SpareBytes>,
        arg: A,
    ) -> (std::sync::Arc<CallSpare>, Option<A>) {
        let (own, back) = match into_byte_vector(arg) {
            Ok(v) if pool.suits_keeping(&v) => (Some(v), None),
            Ok(v) => (None, Some(byte_vector_from::<A>(v))),
            Err(arg) => (None, Some(arg)),
        };
        let spare = CallSpare {
            pool: std::sync::Arc::clone(pool),
            own: std::sync::Mutex::new(own),
        };
        (std::sync::Arc::new(spare), back)
    }

    fn own(&self) -> Option<Vec<u8>> {
        self.own.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The lent argument back (the call was refused before any task ran); `None` if nothing
    /// was lent.
    pub(crate) fn take_back<A: 'static>(&self) -> Option<A> {
        self.own().map(byte_vector_from::<A>)
    }

    /// Like [`read_byte_payload`], into the call's own allocation or the pool's spare when one
    /// suits the length.
    pub(crate) fn read<T: 'static>(&self, bytes: &[u8]) -> Option<Result<T, String>> {
        if !is_byte_payload::<T>() {
            return None;
        }
        Some(read_bytes(bytes).map(|(b, _)| {
            let mut v = self.vec_for(b.len());
            v.extend_from_slice(b);
            byte_vector_from(v)
        }))
    }
}

impl CallSpare {
    /// An empty vector with room for `len` bytes: the call's own allocation when it suits
    /// (taken straight from the call, so no other call can take it first), else the pool's
    /// spare when that suits, else a fresh one. An own allocation that does not suit goes to
    /// the pool's spare.
    fn vec_for(&self, len: usize) -> Vec<u8> {
        if let Some(mut v) = self.own() {
            if self.pool.suits_reuse(&v, len) {
                v.clear();
                return v;
            }
            self.pool.keep(v);
        }
        self.pool
            .take_for(len)
            .unwrap_or_else(|| bytes_with_capacity(len))
    }

    /// Makes a `T` when `T` is a byte vector (`None` for any other `T`) from bytes another
    /// process may write while we read them (a reused result segment): the length prefix is
    /// copied out and read once, checked against the bytes there, then the bytes are copied
    /// straight into the vector (into `spare`'s when it suits), which is the whole decode.
    pub(crate) fn read_shared<T: 'static>(
        spare: Option<&CallSpare>,
        src: &crate::encoding::bigpayload::SharedBytes<'_>,
    ) -> Option<Result<T, String>> {
        if !is_byte_payload::<T>() {
            return None;
        }
        let (prefix, n) = src.copy_head::<10>(0);
        let prefix = &prefix[..n];
        Some((|| {
            let (len, used) = read_varint(prefix)?;
            if len > src.len() - used {
                return Err(format!(
                    "byte string of {len} bytes, but only {} remain",
                    src.len() - used
                ));
            }
            let mut v = match spare {
                Some(spare) => spare.vec_for(len),
                None => bytes_with_capacity(len),
            };
            v.clear();
            v.reserve_exact(len);
            src.copy_to(used, &mut v.spare_capacity_mut()[..len])
                .expect("checked above");
            // SAFETY: `copy_to` initialized the first `len` bytes of the spare capacity.
            unsafe { v.set_len(len) };
            Ok(byte_vector_from::<T>(v))
        })())
    }
}

impl Drop for CallSpare {
    fn drop(&mut self) {
        // A call that failed, or whose result did not take its argument's allocation.
        if let Some(v) = self.own() {
            self.pool.keep(v);
        }
    }
}

/// From this size on, a fresh byte vector's pages are allocated in one call before it is filled
/// (see [`bytes_with_capacity`]).
const PREFAULT_MIN: usize = 8 << 20;

/// An empty vector with room for exactly `n` bytes, about to be filled. A large one (from
/// [`PREFAULT_MIN`]) has its pages allocated first, in one `madvise(MADV_POPULATE_WRITE)` call
/// over the page-aligned interior of the allocation, instead of one page fault per 4 KiB while
/// it is filled.
///
/// Why, and why not huge pages: filling fresh memory is most of what a large payload costs in a
/// VM like this one (Firecracker, with free page reporting: a page the guest freed a while ago
/// faults on the host too when touched again), and a pool's first large call fills the worker's
/// `Vec` fresh. With transparent huge pages (`MADV_HUGEPAGE`, used here before) that was fast
/// when it was fast, but often 0.5–1.3 s slower; 4 KiB pages populated in one call were
/// steadier: in the sets that measured both side by side, the first 300 MiB round trip of a
/// process was under 1 s in 17 of 20 processes, against 13 of 20 with huge pages (BENCHMARKS.md,
/// "First touch of a round trip's fresh memory"). So no huge-page advice. (Neither avoids the
/// host's own first touch of pages the guest has not used for a while: that is why a first
/// large call can still be slow.)
///
/// The populate call is an optimization only: a kernel without it (before 5.14: `EINVAL`), or
/// one short of memory (`ENOMEM`, `EAGAIN`), leaves the pages to fault in as they are written,
/// exactly as without the call; its result is ignored. Nothing is zeroed here beyond what the
/// kernel does for fresh pages: the caller fills the spare capacity.
pub(crate) fn bytes_with_capacity(n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = Vec::with_capacity(n);
    if n >= PREFAULT_MIN {
        populate(v.spare_capacity_mut());
    }
    v
}

/// Allocates the pages of `range` in one `madvise(MADV_POPULATE_WRITE)` call over its
/// page-aligned interior (the whole pages inside it), as a write to each would, without
/// writing: no byte changes. An optimization only (see [`bytes_with_capacity`]): a failure is
/// ignored and the pages fault in when written.
fn populate(range: &mut [std::mem::MaybeUninit<u8>]) {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let at = range.as_mut_ptr() as usize;
    let start = at.next_multiple_of(page);
    let end = (at + range.len()) & !(page - 1);
    if end > start {
        // SAFETY: `start..end` lies inside `range` (aligned inward to whole pages, so no byte
        // outside it, such as allocator metadata, is in it), which we borrow mutably: writable
        // memory nobody else reads or writes meanwhile. MADV_POPULATE_WRITE only faults the
        // pages in as a write would (for private anonymous memory: zero-filled, the same
        // contents a first write would find; for any other, the contents it has); it changes
        // no byte. Its failure is ignored (see above).
        unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                end - start,
                libc::MADV_POPULATE_WRITE,
            )
        };
    }
}

/// Encodes one value (an argument or a result) in postcard's format, byte vectors with one copy.
pub(crate) fn encode_value<T: Serialize + 'static>(
    value: &T,
    out: Vec<u8>,
) -> Result<Vec<u8>, postcard::Error> {
    if let Some(b) = byte_payload(value) {
        let mut out = out;
        write_bytes(b, &mut out);
        return Ok(out);
    }
    postcard::to_extend(value, out)
}

/// Whether `T` is a primitive number: no padding, every bit pattern valid, so a slice of it can
/// cross as its raw bytes.
pub(crate) fn is_plain_number<T: 'static>() -> bool {
    use std::any::TypeId;
    let t = TypeId::of::<T>();
    [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<u128>(),
        TypeId::of::<usize>(),
        TypeId::of::<i8>(),
        TypeId::of::<i16>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
        TypeId::of::<i128>(),
        TypeId::of::<isize>(),
        TypeId::of::<f32>(),
        TypeId::of::<f64>(),
    ]
    .contains(&t)
}

/// Appends a sequence of items in the chunk wire format: the raw bytes of the slice when `T` is
/// a primitive number (one `memcpy`; this is what makes `map` over numbers fast), postcard
/// otherwise. Both sides of a chunk are monomorphized for the same `T`, so they agree.
pub(crate) fn encode_list<T: Serialize + 'static>(
    items: &[T],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    if is_plain_number::<T>() {
        // SAFETY: `T` is a primitive number (checked above): no padding bytes, so the slice's
        // memory is `size_of_val(items)` initialized bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(items.as_ptr().cast::<u8>(), std::mem::size_of_val(items))
        };
        out.extend_from_slice(bytes);
        return Ok(());
    }
    if is_byte_payload::<T>() {
        // Postcard's format for a sequence of byte strings: the count, then each one.
        let mut prefix = [0u8; 10];
        let n = varint(items.len() as u64, &mut prefix);
        out.extend_from_slice(&prefix[..n]);
        for item in items {
            write_bytes(byte_payload(item).expect("checked above"), out);
        }
        return Ok(());
    }
    let taken = std::mem::take(out);
    *out = postcard::to_extend(items, taken)
        .map_err(|e| crate::encoding::ser_probe::serialize_error(&e, items))?;
    Ok(())
}

/// Appends every item of `items` like [`encode_list`] (the same bytes as for a slice of them),
/// without collecting primitive numbers into a `Vec` first; returns how many items there were.
pub(crate) fn encode_list_from<T: Serialize + 'static>(
    items: impl Iterator<Item = T>,
    out: &mut Vec<u8>,
) -> Result<usize, String> {
    if is_plain_number::<T>() {
        let mut n = 0;
        for item in items {
            // SAFETY: `T` is a primitive number (checked above): its `size_of::<T>()` bytes are
            // all initialized, and `item` lives until the end of this block.
            let bytes = unsafe {
                std::slice::from_raw_parts(std::ptr::from_ref(&item).cast::<u8>(), size_of::<T>())
            };
            out.extend_from_slice(bytes);
            n += 1;
        }
        return Ok(n);
    }
    let items: Vec<T> = items.collect();
    encode_list(&items, out)?;
    Ok(items.len())
}

/// Decodes what [`encode_list`] wrote (the whole of `bytes`).
pub(crate) fn decode_list<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<Vec<T>, String> {
    if is_plain_number::<T>() {
        let n = plain_count::<T>(bytes)?;
        let mut v: Vec<T> = Vec::with_capacity(n);
        // SAFETY: `v` has room for `n` items = `bytes.len()` bytes; the regions cannot overlap (a
        // fresh allocation); every bit pattern is a valid primitive number, so after the copy the
        // first `n` items are initialized and `set_len` is sound.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr().cast::<u8>(), bytes.len());
            v.set_len(n);
        }
        return Ok(v);
    }
    if is_byte_payload::<T>() {
        let (n, mut at) = read_varint(bytes)?;
        // Every item takes at least its one-byte length: a count beyond that is a lie, and must
        // not size an allocation.
        if n > bytes.len() - at {
            return Err(format!(
                "{n} byte strings cannot fit in {} bytes",
                bytes.len()
            ));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let (b, used) = read_bytes(&bytes[at..])?;
            v.push(byte_vector::<T>(b));
            at += used;
        }
        return Ok(v);
    }
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}

/// How many `T`s (a primitive number) `bytes` holds, or why it is not a whole number of them.
fn plain_count<T>(bytes: &[u8]) -> Result<usize, String> {
    let size = size_of::<T>();
    if !bytes.len().is_multiple_of(size) {
        return Err(format!(
            "{} bytes is not a whole number of {size}-byte items",
            bytes.len()
        ));
    }
    Ok(bytes.len() / size)
}

/// Calls `f` with each item of what [`encode_list`] wrote, in order. Primitive numbers are read
/// in place (no `Vec` of them is made: a worker walks the argument arena directly).
pub(crate) fn for_each_in_list<T: DeserializeOwned + 'static>(
    bytes: &[u8],
    mut f: impl FnMut(T),
) -> Result<(), String> {
    if is_plain_number::<T>() {
        plain_count::<T>(bytes)?;
        for item in bytes.chunks_exact(size_of::<T>()) {
            // SAFETY: `item` is `size_of::<T>()` readable bytes (`chunks_exact`), read without
            // assuming alignment, and every bit pattern is a valid primitive number.
            f(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) });
        }
        return Ok(());
    }
    decode_list::<T>(bytes)?.into_iter().for_each(f);
    Ok(())
}

/// What a chunk trampoline ships back: the results of the items that returned, in item order,
/// and `(index, panic message)` for each item that panicked. Kept flat (not one `Result` per
/// item) so that the common all-good chunk encodes and decodes as a bare `Vec<R>`.
pub(crate) type ChunkOut<R> = (Vec<R>, Vec<(u32, String)>);

/// Writes a chunk's results in the chunk wire format (`[len of values: u64 LE][values
/// (encode_list)][postcard failures]`, read by [`decode_chunk_out`]) as they are produced: a
/// primitive number goes straight into `out` (no `Vec<R>` in between), other types are held and
/// encoded together by [`finish`](ChunkOutWriter::finish).
pub(crate) struct ChunkOutWriter<'a, R> {
    out: &'a mut Vec<u8>,
    plain: bool,
    held: Vec<R>,
    failures: Vec<(u32, String)>,
}

impl<'a, R: Serialize + 'static> ChunkOutWriter<'a, R> {
    /// Starts a chunk's results in `out` (cleared first).
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        out.clear();
        out.extend_from_slice(&[0u8; 8]);
        ChunkOutWriter {
            out,
            plain: is_plain_number::<R>(),
            held: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// The next item's result.
    #[inline]
    pub(crate) fn value(&mut self, r: R) {
        if self.plain {
            // SAFETY: `R` is a primitive number (`plain`): its `size_of::<R>()` bytes are all
            // initialized (no padding), and `r` lives until the end of this block.
            let bytes = unsafe {
                std::slice::from_raw_parts(std::ptr::from_ref(&r).cast::<u8>(), size_of::<R>())
            };
            self.out.extend_from_slice(bytes);
        } else {
            self.held.push(r);
        }
    }

    /// The item at `index` (in the chunk) panicked with `message`.
    pub(crate) fn failure(&mut self, index: u32, message: String) {
        self.failures.push((index, message));
    }

    /// Completes the format in `out`.
    pub(crate) fn finish(self) -> Result<(), String> {
        let ChunkOutWriter {
            out,
            plain,
            held,
            failures,
        } = self;
        if !plain {
            encode_list(&held, out)?;
        }
        let len = (out.len() - 8) as u64;
        out[..8].copy_from_slice(&len.to_le_bytes());
        let taken = std::mem::take(out);
        *out = postcard::to_extend(&failures, taken).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// A chunk's results in the wire format: `[len of values: u64 LE][values (encode_list)]
/// [postcard failures]`.
#[cfg(test)]
pub(crate) fn encode_chunk_out<R: Serialize + Clone + 'static>(
    values: &[R],
    failures: &[(u32, String)],
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut w = ChunkOutWriter::new(&mut out);
    for v in values {
        w.value(v.clone());
    }
    for (i, m) in failures {
        w.failure(*i, m.clone());
    }
    w.finish()?;
    Ok(out)
}

/// Decodes what a [`ChunkOutWriter`] wrote (the test helper `encode_chunk_out` writes the same).
pub(crate) fn decode_chunk_out<R: DeserializeOwned + 'static>(
    bytes: &[u8],
) -> Result<ChunkOut<R>, String> {
    let Some((len, rest)) = bytes.split_first_chunk::<8>() else {
        return Err("chunk result shorter than its header".into());
    };
    let len = u64::from_le_bytes(*len);
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= rest.len())
        .ok_or("chunk result length out of range")?;
    let values = decode_list(&rest[..len])?;
    let failures = postcard::from_bytes(&rest[len..]).map_err(|e| e.to_string())?;
    Ok((values, failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<
        T: Serialize + DeserializeOwned + PartialEq + Clone + std::fmt::Debug + 'static,
    >(
        v: Vec<T>,
    ) {
        let mut bytes = Vec::new();
        encode_list(&v, &mut bytes).unwrap();
        assert_eq!(decode_list::<T>(&bytes).unwrap(), v);
        let mut streamed = Vec::new();
        assert_eq!(
            encode_list_from(v.iter().cloned(), &mut streamed),
            Ok(v.len())
        );
        assert_eq!(streamed, bytes);
        let mut walked = Vec::new();
        for_each_in_list::<T>(&bytes, |x| walked.push(x)).unwrap();
        assert_eq!(walked, v);
        let failures = vec![(3u32, "boom".to_string())];
        let out = encode_chunk_out(&v, &failures).unwrap();
        assert_eq!(decode_chunk_out::<T>(&out).unwrap(), (v, failures));
    }

    #[test]
    fn sequences_round_trip_raw_and_encoded() {
        round_trip(vec![0u64, 1, u64::MAX]);
        round_trip(vec![-1.5f64, f64::INFINITY, 0.0]);
        round_trip(vec![1u8, 2, 3]);
        round_trip(vec![i128::MIN, 7]);
        round_trip(Vec::<u32>::new());
        round_trip(vec!["a".to_string(), String::new()]);
        round_trip(vec![(1u8, true), (2, false)]);
        round_trip(vec![Some('x'), None]);
    }

    #[test]
    fn numbers_cross_as_their_raw_bytes() {
        let mut bytes = Vec::new();
        encode_list(&[1u32, 2], &mut bytes).unwrap();
        assert_eq!(bytes, [1, 0, 0, 0, 2, 0, 0, 0]);
        assert!(decode_list::<u32>(&bytes[..7]).is_err());
        assert!(for_each_in_list::<u32>(&bytes[..7], |_| panic!("no item")).is_err());
        // Read in place from any alignment.
        let mut shifted = vec![0u8];
        encode_list(&[u64::MAX - 1, 5], &mut shifted).unwrap();
        let mut walked = Vec::new();
        for_each_in_list::<u64>(&shifted[1..], |x| walked.push(x)).unwrap();
        assert_eq!(walked, [u64::MAX - 1, 5]);
    }

    #[test]
    fn byte_vectors_take_the_fast_path_in_postcards_own_format() {
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000, 2_097_152] {
            let v: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let fast = encode_value(&v, Vec::new()).unwrap();
            assert_eq!(fast, postcard::to_allocvec(&v).unwrap(), "len {len}");
            let back: Vec<u8> = read_byte_payload(&fast).unwrap().unwrap();
            assert_eq!(back, v);
            let boxed: Box<[u8]> = read_byte_payload(&fast).unwrap().unwrap();
            assert_eq!(&*boxed, &v[..]);
            assert_eq!(postcard::from_bytes::<Vec<u8>>(&fast).unwrap(), v);
            // Sequences of them too (map's chunks).
            let items = vec![v.clone(), Vec::new(), v[..len / 2].to_vec()];
            let mut list = Vec::new();
            encode_list(&items, &mut list).unwrap();
            assert_eq!(list, postcard::to_allocvec(&items).unwrap());
            assert_eq!(decode_list::<Vec<u8>>(&list).unwrap(), items);
        }
        assert!(read_byte_payload::<String>(&[0]).is_none());
        // Lies about lengths are errors, never reads past the end or huge allocations.
        assert!(read_byte_payload::<Vec<u8>>(&[5, 1, 2]).unwrap().is_err());
        assert!(read_byte_payload::<Vec<u8>>(&[0xff; 11]).unwrap().is_err());
        assert!(read_byte_payload::<Vec<u8>>(&[0x80]).unwrap().is_err());
        assert!(decode_list::<Vec<u8>>(&[0xff, 0xff, 0xff, 0x7f, 0]).is_err());
        round_trip(vec![vec![1u8, 2], vec![], vec![3]]);
    }

    #[test]
    fn a_broken_chunk_result_is_an_error_not_a_panic() {
        assert!(decode_chunk_out::<u64>(&[1, 2]).is_err());
        assert!(decode_chunk_out::<u64>(&[255, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
    }

    /// How many of the whole pages inside `ptr .. ptr + len` (mapped) are resident
    /// (`mincore`), of how many.
    fn resident_pages(ptr: *const u8, len: usize) -> (usize, usize) {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap();
        let start = (ptr as usize).next_multiple_of(page);
        let end = (ptr as usize + len) & !(page - 1);
        let n = (end - start) / page;
        let mut vec = vec![0u8; n];
        // SAFETY: `start..end` is page-aligned and lies in the caller's mapping; `vec` has one
        // byte per page of it, as mincore(2) writes.
        let rc =
            unsafe { libc::mincore(start as *mut libc::c_void, end - start, vec.as_mut_ptr()) };
        assert_eq!(rc, 0);
        (vec.iter().filter(|&&b| b & 1 != 0).count(), n)
    }

    #[test]
    fn populate_allocates_every_page_of_its_range_at_once() {
        // A fresh private anonymous mapping (not from the allocator, whose arenas may hold
        // resident pages already): no page resident before, every one after.
        let len = 16 << 20;
        let mut map = memmap2::MmapMut::map_anon(len).unwrap();
        let ptr = map.as_mut_ptr();
        assert_eq!(resident_pages(ptr, len).0, 0, "fresh: nothing resident");
        // SAFETY: the mapping's `len` bytes, borrowed mutably through `map` for this call only;
        // `MaybeUninit<u8>` has the layout of `u8`, and `populate` writes no byte.
        let range =
            unsafe { std::slice::from_raw_parts_mut(ptr.cast::<std::mem::MaybeUninit<u8>>(), len) };
        populate(range);
        let (resident, pages) = resident_pages(ptr, len);
        assert!(pages > 0);
        assert_eq!(resident, pages, "populated in one call");
        assert!(map.iter().all(|&b| b == 0), "no byte changed");
    }

    #[test]
    fn a_fresh_byte_vector_has_exactly_the_room_asked_for() {
        // Empty, with exactly the room asked for, either way (whether its pages are resident
        // depends on the allocator's history too; `populate` itself is tested above).
        for n in [PREFAULT_MIN - 1, PREFAULT_MIN + 4097] {
            let v = bytes_with_capacity(n);
            assert!(v.is_empty());
            assert_eq!(v.capacity(), n);
        }
    }

    /// The spare's address and capacity, if one is kept.
    fn spare_of(s: &SpareBytes) -> Option<(usize, usize)> {
        s.slot()
            .as_ref()
            .map(|v| (v.as_ptr() as usize, v.capacity()))
    }

    /// [`SpareBytes::keep`] of a byte vector that suits keeping, except that it waits for the
    /// registry's lock where `keep` gives up: other tests of this binary build pools, and so
    /// fork fork servers, at any time (holding that lock), and a `keep` that meets one keeps
    /// nothing, by design. (With plain `keep`, `--test-threads 8` failed this test.)
    fn keep_surely<T: 'static>(s: &SpareBytes, v: T) {
        let bytes = into_byte_vector(v).ok().expect("a byte vector");
        assert!(s.suits_keeping(&bytes));
        s.put(bytes, POOL_SPARES.lock().unwrap_or_else(|e| e.into_inner()));
    }

    #[test]
    fn a_spare_byte_vector_is_reused_only_within_its_bounds() {
        // Arena of 8 KiB: kept from 1 KiB to 128 KiB of capacity.
        let spares = SpareBytes::new(8192);
        let enc = |len: usize, seed: u8| encode_value(&vec![seed; len], Vec::new()).unwrap();
        // Too small or too large to keep; other types are dropped.
        spares.keep(vec![1u8; 1000]);
        spares.keep(Vec::<u8>::with_capacity(128 * 1024 + 1));
        spares.keep(String::from("x"));
        assert_eq!(spare_of(&spares), None);
        // Kept, then used for a length it suits: the same allocation comes back, filled.
        let mut v = Vec::with_capacity(10_000);
        v.extend_from_slice(&[9u8; 7000]);
        let (ptr, cap) = (v.as_ptr() as usize, v.capacity());
        keep_surely(&spares, v);
        assert_eq!(spare_of(&spares), Some((ptr, cap)));
        // Not for a vector it cannot hold, nor one less than half its size (a user must not get
        // a capacity much larger than the length), nor one under the threshold: it stays.
        for len in [10_001, 4999, 900] {
            let back: Vec<u8> = spares.read(&enc(len, 1)).unwrap().unwrap();
            assert_eq!((back.len(), back.capacity()), (len, len));
            assert_eq!(spare_of(&spares), Some((ptr, cap)), "len {len}");
        }
        let back: Vec<u8> = spares.read(&enc(5000, 2)).unwrap().unwrap();
        assert_eq!((back.as_ptr() as usize, back.capacity()), (ptr, cap));
        assert_eq!(back, vec![2u8; 5000], "only the new bytes, none of the old");
        assert_eq!(spare_of(&spares), None, "taken");
        // A boxed slice keeps exactly its length (the spare is shrunk into it).
        keep_surely(&spares, back);
        let boxed: Box<[u8]> = spares.read(&enc(6000, 3)).unwrap().unwrap();
        assert_eq!(&*boxed, &[3u8; 6000][..]);
        // A newer vector replaces the spare; a boxed slice is kept too.
        keep_surely(&spares, vec![0u8; 2000]);
        keep_surely(&spares, vec![0u8; 3000].into_boxed_slice());
        assert_eq!(spare_of(&spares).map(|s| s.1), Some(3000));
        // A length that lies is an error, and the spare is left alone.
        assert!(
            spares
                .read::<Vec<u8>>(&[0xb8, 0x17, 1, 2])
                .unwrap()
                .is_err()
        );
        assert_eq!(spare_of(&spares).map(|s| s.1), Some(3000));
        assert!(spares.read::<String>(&enc(2000, 0)).is_none());
    }
}
