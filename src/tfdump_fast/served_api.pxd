# Declarations for csrc/served_api.h, the served-capture C ABI of the TF
# bridge library (looked up with dlsym by tfdump_fast._bridge).
from libc.stdint cimport int64_t, uint32_t, uint64_t

from tfdump_fast.engine_api cimport tfdump_engine_api

cdef extern from "served_api.h":
    int TFDUMP_SERVED_API_VERSION

    ctypedef struct tfdump_served_stats:
        uint64_t tensors_submitted
        uint64_t tensors_no_run
        uint64_t tensors_failed
        uint64_t steps_bound

    ctypedef struct tfdump_served_api:
        int api_version
        int (*start)(const tfdump_engine_api* engine) nogil
        void (*add_runs)(const uint32_t* run_ids, int n) nogil
        int (*take_idle)(int64_t idle_us, int64_t* step_ids, uint32_t* run_ids, int cap) nogil
        int (*take_unused)(uint32_t* run_ids, int cap) nogil
        void (*stop)() nogil
        void (*get_stats)(tfdump_served_stats* out) nogil
        int64_t (*take_slot_step)(int slot) nogil

ctypedef const tfdump_served_api* (*tfdump_served_get_api_fn)() noexcept nogil
