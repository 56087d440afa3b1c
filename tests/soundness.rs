//! Safe calls cannot corrupt memory or hang the pool (issue 8): absurd sizes are errors, user code
//! that panics on a pool thread fails only its own call, and results are answers even when the
//! process that wrote them misbehaves.

mod common;

use shmpool::{Error, Pool};

fn double(x: u64) -> u64 {
    x * 2
}

#[test]
fn absurd_builder_sizes_are_errors_not_mappings_too_small() {
    let _w = common::arm(120);
    // 2 workers x 2 arenas x 2^62 bytes wraps to 0 in usize: it used to build a pool whose
    // first `apply` wrote past the mapping.
    let e = Pool::builder()
        .processes(2)
        .arena_size(1 << 62)
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "invalid argument: 2 workers with arenas of 4611686018427387904 bytes do not fit in the \
         address space"
    );
    // Rounding the arena up to a page overflows.
    let e = Pool::builder()
        .processes(1)
        .arena_size(usize::MAX)
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    // The per-slot words alone overflow (this one segfaulted inside `build` in release).
    let e = Pool::builder().processes(1 << 57).build().unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid argument: processes must be at most 4194304 (Linux's largest pid_max)"
    );
    // Fits usize, not the address space: an error from the kernel or from us, never a pool.
    assert!(
        Pool::builder()
            .processes(2)
            .arena_size(1 << 61)
            .build()
            .is_err()
    );
    // And nothing was left behind that stops a sane pool.
    let pool = Pool::builder()
        .processes(1)
        .arena_size(1 << 16)
        .build()
        .unwrap();
    assert_eq!(pool.apply(double, 21).unwrap(), 42);
}

fn fail(_: ()) -> u64 {
    panic!("no value here")
}

#[test]
fn successful_after_an_err_was_taken_stays_false() {
    let _w = common::arm(60);
    let pool = Pool::new(1).unwrap();
    let mut r = pool.apply_async(fail, ()).unwrap();
    let e = r
        .get_timeout(std::time::Duration::from_secs(50))
        .unwrap_err();
    assert!(matches!(e, Error::TaskPanicked { .. }), "{e:?}");
    // Taking the error does not turn it into a success.
    assert_eq!(r.successful(), Some(false));
    assert!(matches!(
        r.get_timeout(std::time::Duration::from_secs(1)),
        Err(Error::ResultTaken)
    ));
    assert_eq!(r.successful(), Some(false));
    // And a taken success stays a success.
    let mut r = pool.apply_async(double, 1).unwrap();
    assert_eq!(
        r.get_timeout(std::time::Duration::from_secs(50)).unwrap(),
        2
    );
    assert_eq!(r.successful(), Some(true));
}
