//! Memory hygiene around configuration loads.
//!
//! Parsing a large config (10 000 integrations) builds a YAML tree and intermediate
//! structs that are freed straight away. mimalloc defers returning such pages to the OS
//! until the freeing thread allocates again, and the thread that loads configs then goes
//! idle — so tens of MB would stay resident for good. After a load we ask mimalloc to
//! collect now.

/// Returns memory freed so far by this thread (and abandoned segments) to the OS.
#[allow(unsafe_code, reason = "a single FFI call into the allocator")]
pub fn release_freed() {
    // SAFETY: `mi_collect` takes no pointers, has no preconditions and may be called from
    // any thread at any time; it only frees pages mimalloc itself owns and no longer uses.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
