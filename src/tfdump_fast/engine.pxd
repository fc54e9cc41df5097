# Declarations for csrc/engine.h (the TF-free capture engine).
from libc.stdint cimport uint8_t, uint32_t, int32_t, uint64_t, int64_t
from libcpp cimport bool
from libcpp.memory cimport unique_ptr
from libcpp.string cimport string
from libcpp.vector cimport vector

from tfdump_fast.engine_api cimport tfdump_engine_api, tfdump_tensor_in
from tfdump_fast.format cimport TableWriter

cdef extern from "engine.h" namespace "tfdump" nogil:
    cdef enum class Backpressure(int):
        kBlock
        kDrop

    cdef cppclass EngineOptions:
        uint64_t queue_bytes
        Backpressure policy
        int workers
        uint64_t frame_bytes
        bool shuffle
        uint64_t zero_copy_threshold
        bool discard
        uint64_t dedup_max_entries
        bool defer_during_runs
        uint32_t keep_last
        uint64_t keep_bytes
        bool persist_on_nonfinite

    cdef cppclass FlightChange:
        uint32_t run_id
        bool released
        uint64_t tensors, bytes
        bool executing

    cdef cppclass RunCounters:
        uint64_t tensors, bytes, dropped_tensors, dropped_bytes

    cdef cppclass LateDrop:
        uint32_t run_id
        uint64_t tensors, bytes
        int reason

    int kDropReasonMuted

    cdef cppclass EngineStats:
        uint64_t tensors_accepted, bytes_accepted, tensors_dropped, bytes_dropped
        uint64_t tensors_written, payload_bytes_stored, payload_bytes_deduped, frames
        uint64_t payloads_aliased
        uint64_t queued_bytes, queue_high_water, records_outstanding
        uint64_t worker_boosts
        bool workers_boosted
        uint64_t producers_waiting
        int worker_background
        uint64_t held_bytes, held_runs, held_runs_evicted, held_tensors_evicted
        uint64_t held_runs_released, held_overflow_tensors, nonfinite_triggers

    cdef enum WorkerBackground:
        kBackgroundUnset
        kBackgroundNormal
        kBackgroundIdle
        kBackgroundNice
        kBackgroundBatch

    cdef cppclass Frame:
        int worker
        TableWriter table
        vector[uint8_t] data
        uint32_t n_tensors

    cdef cppclass Engine:
        Engine(const EngineOptions& options)
        const tfdump_engine_api* api()
        uint32_t InternKey(const char* device, size_t device_len, const char* node, size_t node_len,
                           int32_t slot, const char* debug_op, size_t debug_op_len)
        int Submit(const tfdump_tensor_in& inp)
        void BeginRun(uint32_t run_id, bool hold)
        RunCounters EndRun(uint32_t run_id, bool persist)
        size_t Persist()
        void EvictAll()
        vector[FlightChange] TakeFlightChanges()
        bool NonfiniteOf(uint32_t run_id, uint32_t* key_id, uint64_t* seq)
        bool KeyName(uint32_t key_id, string* device, string* node, int32_t* slot, string* debug_op)
        bool RunProgress(uint32_t run_id, uint64_t* accepted, uint64_t* committed)
        unique_ptr[Frame] NextFrame(int worker, int timeout_ms, bool* finished)
        void CommitFrame(unique_ptr[Frame] frame, int status)
        void Kick()
        bool WaitIdle(int timeout_ms)
        void Shutdown()
        void SetError(int code)
        int error()
        void EnterWorker(int worker, int background_nice, bool background_idle)
        void LeaveWorker(int worker)
        EngineStats Stats()
        vector[LateDrop] TakeLateDrops()
