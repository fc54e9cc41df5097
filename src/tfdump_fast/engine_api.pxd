# Declarations for csrc/engine_api.h (the C ABI between bridge and engine).
from libc.stdint cimport uint32_t, int32_t, int64_t, uint64_t

cdef extern from "engine_api.h":
    int TFDUMP_ENGINE_API_VERSION
    int TFDUMP_SUBMIT_OK
    int TFDUMP_SUBMIT_DROPPED
    int TFDUMP_SUBMIT_BAD_RUN
    int TFDUMP_ENCODE_OK
    int TFDUMP_ENCODE_FAILED
    int TFDUMP_ENCODE_MUTED

    ctypedef void (*tfdump_release_fn)(void* owner)
    ctypedef struct tfdump_encode_sink:
        pass
    ctypedef int (*tfdump_encode_fn)(void* owner, tfdump_encode_sink* sink)

    ctypedef struct tfdump_tensor_in:
        uint32_t run_id
        uint32_t key_id
        int32_t dtype
        uint32_t flags
        int32_t ndims
        const int64_t* dims
        uint32_t elem_size
        const void* data
        size_t size
        tfdump_encode_fn encode
        void* owner
        tfdump_release_fn release
        uint64_t charge_bytes
        int64_t wall_us

    ctypedef struct tfdump_engine_api:
        int api_version
        void* engine
        uint64_t zero_copy_threshold
