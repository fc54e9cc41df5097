# Declarations for csrc/bridge_api.h, the C ABI of the TensorFlow bridge
# library (libtfdump_tf_bridge.so) that tfdump_fast._bridge dlopen()s.
from libc.stdint cimport uint32_t, uint64_t

from tfdump_fast.engine_api cimport tfdump_engine_api

cdef extern from "bridge_api.h":
    int TFDUMP_BRIDGE_API_VERSION

    ctypedef struct tfdump_bridge_stats:
        uint64_t tensors_forwarded
        uint64_t tensors_orphaned
        uint64_t tensors_failed
        uint64_t summaries_submitted
        uint64_t summaries_skipped
        uint64_t summaries_muted

    ctypedef struct tfdump_bridge_api:
        int api_version
        const char* tf_version
        const char* tf_git_version
        int max_slots
        int (*acquire_slot)(const tfdump_engine_api* engine, uint32_t run_id,
                            char* url_out, size_t url_cap) nogil
        void (*release_slot)(int slot) nogil
        void (*get_stats)(tfdump_bridge_stats* out) nogil

# Type of the one symbol the library exports, tfdump_bridge_get_api (looked
# up with dlsym, so it is declared here rather than linked).
ctypedef const tfdump_bridge_api* (*tfdump_bridge_get_api_fn)() noexcept nogil
