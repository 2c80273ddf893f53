//! Memory hygiene around configuration loads.
//!
//! Parsing a large config (10 000 integrations) builds a YAML tree and intermediate
//! structs that are freed straight away. mimalloc hands freed pages back to the OS only
//! after a delay (`purge_delay`, 1 s in mimalloc 3, acted on only when a thread
//! allocates or frees again), and the threads that load a config then go idle — so
//! ~10 MB would stay resident for good (10 000 integrations: 36 MB at ready with the
//! delay, 26 MB without). While a config loads, [`PromptRelease`] turns the delay off;
//! the request path keeps it.

use std::os::raw::c_long;

use libmimalloc_sys::mi_option_t;

/// `mi_option_purge_delay` in mimalloc 3.x's `mi_option_e` (not exported by
/// libmimalloc-sys; the test below checks it reads the default, 1000 ms, set in
/// mimalloc's `src/options.c` — the header's comment still says 10).
const PURGE_DELAY: mi_option_t = 15;

/// Frees go back to the OS at once while this lives; on drop the delay is restored and
/// whatever is still pending is collected.
#[must_use = "the delay is restored when this is dropped"]
pub struct PromptRelease {
    delay: c_long,
}

impl PromptRelease {
    #[allow(unsafe_code, reason = "FFI calls into the allocator's option table")]
    pub fn start() -> Self {
        // SAFETY: mi_option_get/mi_option_set take an option index and a value, no
        // pointers; mimalloc allows changing options at any time from any thread.
        let delay = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) };
        PromptRelease { delay }
    }
}

impl Drop for PromptRelease {
    #[allow(unsafe_code, reason = "an FFI call into the allocator's option table")]
    fn drop(&mut self) {
        // SAFETY: as in `start`.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, self.delay) };
        release_freed();
    }
}

/// Returns memory freed so far by this thread (and abandoned segments) to the OS.
#[allow(unsafe_code, reason = "a single FFI call into the allocator")]
pub fn release_freed() {
    // SAFETY: `mi_collect` takes no pointers, has no preconditions and may be called from
    // any thread at any time; it only frees pages mimalloc itself owns and no longer uses.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code, reason = "reads an allocator option")]
    fn the_purge_delay_option_is_the_one_we_set_and_it_is_restored() {
        // SAFETY: as in `PromptRelease::start`.
        let get = || unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        assert_eq!(
            get(),
            1000,
            "mimalloc 3's purge_delay default (src/options.c)"
        );
        {
            let _release = PromptRelease::start();
            assert_eq!(get(), 0);
        }
        assert_eq!(get(), 1000);
    }
}
